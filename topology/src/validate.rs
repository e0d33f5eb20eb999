//! Cross-field checks of a topology: uniqueness, references, capacities, link sanity and
//! forwarding loops. Single-field checks live in the model's newtypes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use crate::model::{Link, MAX_RECORD_SIZE_LIMIT, MIN_RECORD_SIZE_LIMIT, Site, Topology};
use crate::source::{FieldPath, Severity};

/// A problem found by validation, located by field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) severity: Severity,
    pub(crate) path: FieldPath,
    pub(crate) message: String,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, path: FieldPath, message: String) {
        self.0.push(Finding { severity: Severity::Error, path, message });
    }

    fn warning(&mut self, path: FieldPath, message: String) {
        self.0.push(Finding { severity: Severity::Warning, path, message });
    }
}

/// Every finding about `topology`, errors and warnings, in file order per check.
pub(crate) fn validate(topology: &Topology) -> Vec<Finding> {
    let mut findings = Findings::default();
    let root = FieldPath::root();
    if topology.sites.is_empty() {
        findings.error(root.key("sites"), "the file defines no site; add a [[sites]] table".into());
    }
    check_sites(topology, &mut findings);
    check_addresses(topology, &mut findings);
    check_links(topology, &mut findings);
    check_forwarding_loops(topology, &mut findings);
    findings.0
}

fn check_sites(topology: &Topology, findings: &mut Findings) {
    let mut names = HashMap::new();
    let mut src_ids = HashMap::new();
    let mut node_ids = HashMap::new();
    for (s, site) in topology.sites.iter().enumerate() {
        let path = FieldPath::root().key("sites").index(s);
        if let Some(first) = names.insert(site.name.as_str(), s) {
            findings.error(
                path.key("name"),
                format!("site name '{}' is already used by sites[{first}]", site.name),
            );
        }
        if let Some(first) = src_ids.insert(site.src_id, s) {
            findings.error(
                path.key("src-id"),
                format!(
                    "src-id {} is already used by site '{}'; site ids must be unique",
                    site.src_id, topology.sites[first].name
                ),
            );
        }
        if site.nodes.is_empty() {
            findings.error(
                path.key("nodes"),
                format!("site '{}' has no node; add a [[sites.nodes]] table", site.name),
            );
        }
        for (n, node) in site.nodes.iter().enumerate() {
            let node_path = path.key("nodes").index(n);
            if let Some(owner) = node_ids.insert(node.id.as_str(), site.name.as_str()) {
                findings.error(
                    node_path.key("id"),
                    format!("node id '{}' is already used in site '{owner}'", node.id),
                );
            }
            check_node_zone(site, n, &node_path, findings);
        }
        check_namespaces(topology, site, &path, findings);
        if site.nodes.len() < 3 {
            findings.warning(
                path.key("nodes"),
                format!(
                    "site '{}' has {} node(s): fewer than 3 runs no membership group, so there \
                     is no automatic takeover: a failed node's partitions (and those it copies) \
                     take no writes until it returns",
                    site.name,
                    site.nodes.len()
                ),
            );
        }
    }
}

fn check_node_zone(site: &Site, n: usize, path: &FieldPath, findings: &mut Findings) {
    let node = &site.nodes[n];
    match &node.zone {
        Some(zone) if !site.zones.contains(zone) => findings.error(
            path.key("zone"),
            format!(
                "node '{}' names zone '{zone}', which site '{}' does not list; known: {}",
                node.id,
                site.name,
                known(site.zones.iter().map(String::as_str))
            ),
        ),
        None if site.zones.len() > 1 => findings.error(
            path.key("zone"),
            format!(
                "node '{}' needs a zone: site '{}' has several ({})",
                node.id,
                site.name,
                known(site.zones.iter().map(String::as_str))
            ),
        ),
        _ => {}
    }
}

fn check_namespaces(topology: &Topology, site: &Site, path: &FieldPath, findings: &mut Findings) {
    let mut seen = HashMap::new();
    for (i, namespace) in site.namespaces.iter().enumerate() {
        let ns_path = path.key("namespaces").index(i);
        if let Some(first) = seen.insert(namespace.name.as_str(), i) {
            findings.error(
                ns_path.key("name"),
                format!(
                    "namespace '{}' is already defined in site '{}' (namespaces[{first}])",
                    namespace.name, site.name
                ),
            );
        }
        let rf = usize::from(namespace.replication_factor);
        if rf == 0 || rf > site.nodes.len() {
            findings.error(
                ns_path.key("replication-factor"),
                format!(
                    "replication-factor {rf} of namespace '{}' needs 1 to {} (the nodes in site '{}')",
                    namespace.name,
                    site.nodes.len(),
                    site.name
                ),
            );
        } else if topology.placement.rack_aware && site.rack_count() < rf {
            findings.warning(
                ns_path.key("replication-factor"),
                format!(
                    "namespace '{}' keeps {rf} copies but site '{}' has {} rack(s): some \
                     partitions will have two copies on one rack",
                    namespace.name,
                    site.name,
                    site.rack_count()
                ),
            );
        }
        if namespace.commit_max_batch == 0 {
            findings.error(
                ns_path.key("commit-max-batch"),
                "commit-max-batch must be at least 1".into(),
            );
        }
        if !(MIN_RECORD_SIZE_LIMIT..=MAX_RECORD_SIZE_LIMIT).contains(&namespace.max_record_size) {
            findings.error(
                ns_path.key("max-record-size"),
                format!(
                    "max-record-size {} must be {MIN_RECORD_SIZE_LIMIT} to {MAX_RECORD_SIZE_LIMIT} bytes",
                    namespace.max_record_size
                ),
            );
        }
    }
}

fn check_addresses(topology: &Topology, findings: &mut Findings) {
    // Every address must be unique across the deployment: on one machine all nodes share
    // loopback, and on many machines a duplicate is still a copy-paste mistake. The XDR endpoint
    // is UDP and the others TCP, so only like with like collides; an unspecified IP (0.0.0.0)
    // collides with every IP on its port.
    let mut used: Vec<(bool, SocketAddr, String)> = Vec::new();
    for (s, site) in topology.sites.iter().enumerate() {
        for (n, node) in site.nodes.iter().enumerate() {
            let path = FieldPath::root().key("sites").index(s).key("nodes").index(n);
            let addresses = [
                ("client", node.client),
                ("fabric", node.fabric),
                ("xdr", node.xdr),
                ("admin", node.admin),
            ];
            for (field, endpoint) in addresses {
                let (udp, addr) = (field == "xdr", endpoint.addr());
                let clash = used.iter().find(|(other_udp, other, _)| {
                    *other_udp == udp
                        && other.port() == addr.port()
                        && (other.ip() == addr.ip()
                            || other.ip().is_unspecified()
                            || addr.ip().is_unspecified())
                });
                if let Some((_, other, owner)) = clash {
                    findings.error(
                        path.key(field),
                        format!("{endpoint} collides with {other}, the {owner}"),
                    );
                }
                used.push((udp, addr, format!("{field} address of node '{}'", node.id)));
            }
        }
    }
}

fn check_links(topology: &Topology, findings: &mut Findings) {
    let site_names = || known(topology.sites.iter().map(|s| s.name.as_str()));
    let mut pairs = HashMap::new();
    for (l, link) in topology.links.iter().enumerate() {
        let path = FieldPath::root().key("links").index(l);
        let from = topology.site(link.from.as_str());
        let to = topology.site(link.to.as_str());
        for (field, name, site) in [("from", &link.from, from), ("to", &link.to, to)] {
            if site.is_none() {
                findings.error(
                    path.key(field),
                    format!(
                        "link names site '{name}', which is not defined; known: {}",
                        site_names()
                    ),
                );
            }
        }
        if link.from == link.to {
            findings.error(
                path.key("to"),
                format!("link from '{}' to itself; a link joins two different sites", link.from),
            );
        }
        if let Some(first) = pairs.insert((link.from.as_str(), link.to.as_str()), l) {
            findings.error(
                path,
                format!("link {} is already defined (links[{first}]); merge them", link.name()),
            );
            continue;
        }
        check_link_settings(link, &path, findings);
        if let (Some(from), Some(to)) = (from, to) {
            check_link_namespaces(link, from, to, &path, findings);
        }
    }
}

fn check_link_settings(link: &Link, path: &FieldPath, findings: &mut Findings) {
    if link.namespaces.is_empty() {
        findings.error(
            path.key("namespaces"),
            format!("link {} ships no namespace; list at least one", link.name()),
        );
    }
    if !(1..=22).contains(&link.compression_level) {
        findings.error(
            path.key("compression-level"),
            format!(
                "compression-level {} is not a zstd level; use 1 to 22",
                link.compression_level
            ),
        );
    }
    if link.max_throughput == 0 {
        findings.error(path.key("max-throughput"), "max-throughput 0 would ship nothing".into());
    }
    if link.period_ms == 0 {
        findings.error(path.key("period-ms"), "period-ms must be at least 1".into());
    }
    if link.ship_only_specified_sets && link.ship_set.is_empty() {
        findings.error(
            path.key("ship-set"),
            format!(
                "link {} has ship-only-specified-sets = true but an empty ship-set: it would ship \
                 nothing",
                link.name()
            ),
        );
    }
    for (field, sets) in [("ship-set", &link.ship_set), ("ignore-set", &link.ignore_set)] {
        for (i, set) in sets.iter().enumerate() {
            if set.is_empty() || set.len() > 63 {
                findings.error(
                    path.key(field).index(i),
                    format!("set name '{set}' must be 1 to 63 bytes long"),
                );
            }
        }
    }
    for (i, set) in link.ship_set.iter().enumerate() {
        if link.ignore_set.contains(set) {
            findings.error(
                path.key("ship-set").index(i),
                format!("set '{set}' is both in ship-set and ignore-set"),
            );
        }
    }
    if let Some(wan) = &link.simulate_wan {
        if !(0.0..1.0).contains(&wan.loss) {
            findings.error(
                path.key("simulate-wan").key("loss"),
                format!("loss {} is not a probability; use 0 up to (not including) 1", wan.loss),
            );
        }
        if wan.rate_mbit == Some(0) {
            findings.error(
                path.key("simulate-wan").key("rate-mbit"),
                "rate-mbit 0 would pass nothing; omit it for no cap".into(),
            );
        }
    }
}

fn check_link_namespaces(
    link: &Link,
    from: &Site,
    to: &Site,
    path: &FieldPath,
    findings: &mut Findings,
) {
    let mut seen = BTreeSet::new();
    for (i, name) in link.namespaces.iter().enumerate() {
        let ns_path = path.key("namespaces").index(i);
        if !seen.insert(name) {
            findings.error(ns_path, format!("namespace '{name}' is listed twice"));
            continue;
        }
        let mut missing_at = Vec::new();
        for site in [from, to] {
            if site.namespace(name.as_str()).is_none() {
                missing_at.push(site);
            }
        }
        match missing_at.as_slice() {
            [] => {}
            [site] => {
                findings.error(
                    ns_path,
                    format!(
                        "link {} names namespace '{name}', which site '{}' does not define; known \
                         there: {}",
                        link.name(),
                        site.name,
                        known(site.namespaces.iter().map(|n| n.name.as_str()))
                    ),
                );
                continue;
            }
            _ => {
                let all: BTreeSet<&str> =
                    from.namespaces.iter().chain(&to.namespaces).map(|n| n.name.as_str()).collect();
                findings.error(
                    ns_path,
                    format!(
                        "link {} names namespace '{name}', which no site defines; known: {}",
                        link.name(),
                        known(all.into_iter())
                    ),
                );
                continue;
            }
        }
        if let (Some(a), Some(b)) = (from.namespace(name.as_str()), to.namespace(name.as_str()))
            && a.conflict_resolution_policy != b.conflict_resolution_policy
        {
            findings.error(
                ns_path,
                format!(
                    "namespace '{name}' resolves conflicts by {} at '{}' but by {} at '{}': \
                         the sites would never converge; use one policy",
                    a.conflict_resolution_policy, from.name, b.conflict_resolution_policy, to.name
                ),
            );
        }
    }
}

/// A record only travels further than one hop over links with `forward = true`. Loop prevention
/// stops a record going straight back to the site it came from, so a cycle of two sites is
/// safe, but a longer cycle whose links all forward would carry a record around and around.
fn check_forwarding_loops(topology: &Topology, findings: &mut Findings) {
    let mut forwarding: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for (l, link) in topology.links.iter().enumerate() {
        if link.forward && link.enabled {
            forwarding.entry(link.from.as_str()).or_default().push((l, link.to.as_str()));
        }
    }
    let mut reported = BTreeSet::new();
    // Start from sites in the order their links appear, so a loop is reported on the first of its
    // links in the file.
    let mut starts: Vec<&str> = Vec::new();
    for link in &topology.links {
        if forwarding.contains_key(link.from.as_str()) && !starts.contains(&link.from.as_str()) {
            starts.push(link.from.as_str());
        }
    }
    for start in &starts {
        let mut stack = vec![(*start, vec![*start], Vec::<usize>::new())];
        while let Some((at, sites, links)) = stack.pop() {
            for &(l, next) in forwarding.get(at).into_iter().flatten() {
                if next == *start && sites.len() >= 3 {
                    let mut cycle = links.clone();
                    cycle.push(l);
                    let mut key = cycle.clone();
                    key.sort_unstable();
                    if reported.insert(key) {
                        let mut route = sites.join("→");
                        route.push('→');
                        route.push_str(start);
                        findings.error(
                            FieldPath::root().key("links").index(cycle[0]).key("forward"),
                            format!(
                                "forwarding loop {route}: every link on it has forward = true, so \
                                 a record would circulate; set forward = false on one of them"
                            ),
                        );
                    }
                } else if !sites.contains(&next) {
                    let mut sites = sites.clone();
                    sites.push(next);
                    let mut links = links.clone();
                    links.push(l);
                    stack.push((next, sites, links));
                }
            }
        }
    }
}

fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() { "(none)".to_owned() } else { names.join(", ") }
}
