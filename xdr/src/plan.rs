//! What one DR link ships and where: derived once from the topology (and again when it
//! changes). Pure: the filters decide per logged change and per record read, and the remote
//! partition maps say which destination node owns each record.

use std::collections::HashMap;
use std::net::SocketAddr;

use ferry_digestlog::{Digest, Entry, Op};
use ferry_topology::Topology;
use ferry_topology::model::{Link, NodeId};
use ferry_topology::placement::{PartitionMap, PlacementError, partition_of};
use ferry_transport::{InvalidName, PeerIdentity};

use crate::admission::peer_identity;

/// A namespace the link ships, with the remote site's map of it.
#[derive(Debug, Clone)]
pub struct ShippedNamespace {
    pub name: String,
    /// The digest log's id of the namespace.
    pub log_id: u32,
    /// The destination site's partition map.
    pub remote_map: PartitionMap,
}

/// A destination node: its id, the identity its certificate must name, its XDR address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationNode {
    pub id: NodeId,
    pub identity: PeerIdentity,
    pub xdr: SocketAddr,
}

/// Everything the shipper of one link needs to know from the topology.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    /// The link as configured.
    pub link: Link,
    /// `src-id` of the shipping site (stamped on batches).
    pub local_site_id: u8,
    /// `src-id` of the destination: versions that came from there never ship back.
    pub remote_site_id: u8,
    pub namespaces: Vec<ShippedNamespace>,
    pub remote_nodes: HashMap<NodeId, DestinationNode>,
}

/// Why a link cannot be planned (the topology was validated, so this means it changed under us).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("link {from} -> {to}: site '{0}' is not in the topology", from = .1, to = .2)]
    UnknownSite(String, String, String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("link {from} -> {to}: {source}")]
    Identity { from: String, to: String, source: InvalidName },
}

/// Why a logged change or a record is not shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A namespace this link does not ship.
    Namespace,
    /// The version came from the destination (loop prevention).
    FromDestination,
    /// The version came from another site and the link does not `forward`.
    NotForwarded,
    /// A set filter (`ship-only-specified-sets`, `ship-set`, `ignore-set`).
    Set,
    /// An expiration, and the link does not `ship-nsup-deletes`.
    Expiration,
}

impl LinkPlan {
    /// The plan of `link` in `topology`.
    pub fn new(topology: &Topology, link: &Link) -> Result<LinkPlan, PlanError> {
        let site = |name: &str| {
            topology.site(name).ok_or_else(|| {
                PlanError::UnknownSite(name.to_owned(), link.from.to_string(), link.to.to_string())
            })
        };
        let (local, remote) = (site(link.from.as_str())?, site(link.to.as_str())?);
        let namespaces = link
            .namespaces
            .iter()
            .map(|ns| {
                Ok(ShippedNamespace {
                    name: ns.to_string(),
                    log_id: ferry_digestlog::namespace_id(ns.as_str()),
                    remote_map: PartitionMap::for_namespace(
                        topology,
                        remote.name.as_str(),
                        ns.as_str(),
                    )?,
                })
            })
            .collect::<Result<_, PlanError>>()?;
        let remote_nodes = remote
            .nodes
            .iter()
            .map(|n| {
                let identity =
                    peer_identity(&remote.name, &n.id).map_err(|source| PlanError::Identity {
                        from: link.from.to_string(),
                        to: link.to.to_string(),
                        source,
                    })?;
                Ok((
                    n.id.clone(),
                    DestinationNode { id: n.id.clone(), identity, xdr: n.xdr.addr() },
                ))
            })
            .collect::<Result<_, PlanError>>()?;
        Ok(LinkPlan {
            link: link.clone(),
            local_site_id: local.src_id.get(),
            remote_site_id: remote.src_id.get(),
            namespaces,
            remote_nodes,
        })
    }

    /// The link's name in stats and commands: the destination site (Aerospike's `dc`).
    pub fn dc(&self) -> &str {
        self.link.to.as_str()
    }

    /// Decides on a logged change before reading the record: `Ok(namespace index)` to ship.
    pub fn admit_entry(&self, entry: &Entry) -> Result<usize, Skip> {
        let ns = self
            .namespaces
            .iter()
            .position(|ns| ns.log_id == entry.namespace)
            .ok_or(Skip::Namespace)?;
        // Client (durable) deletes always ship; expirations only with `ship-nsup-deletes`.
        if entry.op == Op::Expire && !self.link.ship_nsup_deletes {
            return Err(Skip::Expiration);
        }
        self.admit_origin(entry.origin_site)?;
        Ok(ns)
    }

    /// Loop prevention on a version's origin site.
    pub fn admit_origin(&self, origin_site: u8) -> Result<(), Skip> {
        if origin_site == self.remote_site_id {
            Err(Skip::FromDestination)
        } else if origin_site != self.local_site_id && !self.link.forward {
            Err(Skip::NotForwarded)
        } else {
            Ok(())
        }
    }

    /// The set filters.
    pub fn admit_set(&self, set: &str) -> Result<(), Skip> {
        let listed = self.link.ship_set.iter().any(|s| s == set);
        let ignored = self.link.ignore_set.iter().any(|s| s == set);
        if ignored || (self.link.ship_only_specified_sets && !listed) {
            Err(Skip::Set)
        } else {
            Ok(())
        }
    }

    /// The destination node owning `digest` of namespace number `ns`.
    pub fn destination(&self, ns: usize, digest: &Digest) -> Option<&DestinationNode> {
        let map = &self.namespaces.get(ns)?.remote_map;
        self.remote_nodes.get(map.master(partition_of(digest)))
    }
}

/// Test topologies and plans, shared by the tests of the plan and of the shipper's engine.
#[cfg(test)]
pub(crate) mod testing {
    use ferry_tests::{Link, Namespace, Role, Site, TopologyBuilder};
    use ferry_topology::Topology;

    use super::LinkPlan;

    /// Sites `a` (src-id 1, 2 nodes), `b` (src-id 2, 3 nodes) and `c` (src-id 3, 2 nodes), all
    /// active, on two racks, with namespaces `test` (two copies) and `other`, on fixed ports;
    /// and a link `a -> b` shipping `test` with `settings` applied.
    pub(crate) fn topology(settings: impl FnOnce(Link) -> Link) -> Topology {
        let sites = ["a", "b", "c"].into_iter().zip([2, 3, 2]);
        let builder = sites
            .fold(TopologyBuilder::new("plan-test"), |b, (name, nodes)| {
                b.add_site(Site::new(name, nodes).role(Role::Active))
            })
            .namespace(Namespace::new("test").replication_factor(2))
            .namespace(Namespace::new("other"))
            .link(settings(Link::new("a", "b")))
            .ports_from(10_000);
        let text = builder.build().text;
        ferry_topology::parse_topology("t.toml", &text).expect("valid").topology
    }

    /// The plan of the only link of `topology(settings)`, with the topology.
    pub(crate) fn plan_of(settings: impl FnOnce(Link) -> Link) -> (Topology, LinkPlan) {
        let topology = topology(settings);
        let plan = LinkPlan::new(&topology, &topology.links[0]).expect("plan");
        (topology, plan)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::convert::identity;

    use ferry_digestlog::{Op, namespace_id};
    use ferry_topology::placement::PARTITIONS;
    use proptest::prelude::*;

    use super::testing::{plan_of, topology};
    use super::*;

    fn entry(namespace: &str, origin_site: u8) -> Entry {
        Entry {
            digest: Digest([9; 20]),
            namespace: namespace_id(namespace),
            partition: partition_of(&[9; 20]),
            generation: 4,
            lut_ms: 1_700_000_000_000,
            op: Op::Write,
            xdr_applied: origin_site != 1,
            origin_site,
            copy: false,
        }
    }

    fn digest(i: u32) -> Digest {
        let mut digest = [0x5a; 20];
        digest[..4].copy_from_slice(&i.to_le_bytes());
        digest[4..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_be_bytes());
        Digest(digest)
    }

    #[test]
    fn plan_takes_site_ids_namespaces_and_remote_nodes_from_the_topology() {
        let (topology, plan) = plan_of(identity);
        assert_eq!(plan.dc(), "b");
        assert_eq!((plan.local_site_id, plan.remote_site_id), (1, 2));
        assert_eq!(plan.link, topology.links[0]);
        assert_eq!(plan.namespaces.len(), 1);
        assert_eq!(plan.namespaces[0].name, "test");
        assert_eq!(plan.namespaces[0].log_id, namespace_id("test"));
        let expected = PartitionMap::for_namespace(&topology, "b", "test").expect("map");
        assert_eq!(plan.namespaces[0].remote_map, expected);
        let remote = topology.site("b").expect("site b");
        assert_eq!(plan.remote_nodes.len(), remote.nodes.len());
        for node in &remote.nodes {
            let destination = &plan.remote_nodes[&node.id];
            let identity = peer_identity(&remote.name, &node.id).expect("identity");
            let expected = DestinationNode { id: node.id.clone(), identity, xdr: node.xdr.addr() };
            assert_eq!(destination, &expected);
        }
    }

    #[test]
    fn plan_fails_when_the_topology_no_longer_matches_the_link() {
        let topology = topology(identity);
        let mut gone = topology.links[0].clone();
        gone.to = "zz".try_into().expect("site name");
        match LinkPlan::new(&topology, &gone) {
            Err(error @ PlanError::UnknownSite(..)) => {
                assert_eq!(error.to_string(), "link a -> zz: site 'zz' is not in the topology");
            }
            other => panic!("expected UnknownSite, got {other:?}"),
        }
        let mut gone = topology.links[0].clone();
        gone.from = "yy".try_into().expect("site name");
        assert!(matches!(
            LinkPlan::new(&topology, &gone),
            Err(PlanError::UnknownSite(site, ..)) if site == "yy"
        ));
        let mut missing = topology.links[0].clone();
        missing.namespaces.push("absent".try_into().expect("namespace name"));
        assert!(matches!(
            LinkPlan::new(&topology, &missing),
            Err(PlanError::Placement(PlacementError::UnknownNamespace { .. }))
        ));
    }

    #[test]
    fn namespaces_the_link_does_not_ship_are_skipped() {
        let (_, plan) = plan_of(identity);
        assert_eq!(plan.admit_entry(&entry("test", 1)), Ok(0));
        assert_eq!(plan.admit_entry(&entry("other", 1)), Err(Skip::Namespace));
        assert_eq!(plan.admit_entry(&entry("nowhere", 1)), Err(Skip::Namespace));
        // The namespace is decided first: a foreign namespace from the destination is still
        // reported as a namespace skip.
        assert_eq!(plan.admit_entry(&entry("other", 2)), Err(Skip::Namespace));
    }

    #[test]
    fn admit_entry_returns_the_index_of_the_namespace() {
        let topology = topology(identity);
        let mut link = topology.links[0].clone();
        link.namespaces.push("other".try_into().expect("namespace name"));
        let plan = LinkPlan::new(&topology, &link).expect("plan");
        assert_eq!(plan.admit_entry(&entry("test", 1)), Ok(0));
        assert_eq!(plan.admit_entry(&entry("other", 1)), Ok(1));
        assert_eq!(plan.namespaces[1].log_id, namespace_id("other"));
    }

    #[test]
    fn local_writes_and_deletes_ship() {
        let (_, plan) = plan_of(identity);
        let mut delete = entry("test", 1);
        delete.op = Op::Delete;
        assert_eq!(plan.admit_entry(&delete), Ok(0));
        assert_eq!(plan.admit_origin(1), Ok(()));
    }

    #[test]
    fn expirations_ship_only_with_ship_nsup_deletes() {
        let mut expiration = entry("test", 1);
        expiration.op = Op::Expire;
        let (_, plan) = plan_of(identity);
        assert_eq!(plan.admit_entry(&expiration), Err(Skip::Expiration));
        let (_, plan) = plan_of(|l| l.ship_nsup_deletes(true));
        assert_eq!(plan.admit_entry(&expiration), Ok(0));
        // Loop prevention still applies to a shipped expiration.
        expiration.origin_site = 2;
        assert_eq!(plan.admit_entry(&expiration), Err(Skip::FromDestination));
    }

    #[test]
    fn versions_from_the_destination_never_ship_back() {
        for forward in [false, true] {
            let (_, plan) = plan_of(|l| l.forward(forward));
            assert_eq!(plan.admit_entry(&entry("test", 2)), Err(Skip::FromDestination));
            assert_eq!(plan.admit_origin(2), Err(Skip::FromDestination));
        }
    }

    #[test]
    fn versions_from_a_third_site_ship_only_when_forwarding() {
        let (_, plan) = plan_of(identity);
        assert_eq!(plan.admit_entry(&entry("test", 3)), Err(Skip::NotForwarded));
        assert_eq!(plan.admit_origin(3), Err(Skip::NotForwarded));
        // A site id the topology does not know is foreign too.
        assert_eq!(plan.admit_origin(200), Err(Skip::NotForwarded));
        let (_, forwarding) = plan_of(|l| l.forward(true));
        assert_eq!(forwarding.admit_entry(&entry("test", 3)), Ok(0));
        assert_eq!(forwarding.admit_origin(3), Ok(()));
        assert_eq!(forwarding.admit_origin(1), Ok(()));
    }

    #[test]
    fn all_sets_ship_without_set_filters() {
        let (_, plan) = plan_of(identity);
        for set in ["", "users", "carts"] {
            assert_eq!(plan.admit_set(set), Ok(()), "set '{set}'");
        }
    }

    #[test]
    fn ignored_sets_are_skipped() {
        let (_, plan) = plan_of(|l| l.ignore_set(&["audit", "tmp"]));
        assert_eq!(plan.admit_set("audit"), Err(Skip::Set));
        assert_eq!(plan.admit_set("tmp"), Err(Skip::Set));
        assert_eq!(plan.admit_set("users"), Ok(()));
        assert_eq!(plan.admit_set(""), Ok(()));
        // Set names match exactly.
        assert_eq!(plan.admit_set("Audit"), Ok(()));
        assert_eq!(plan.admit_set("audit2"), Ok(()));
    }

    #[test]
    fn ship_set_alone_does_not_restrict() {
        let (_, plan) = plan_of(|l| l.ship_set(&["users"]));
        assert_eq!(plan.admit_set("users"), Ok(()));
        assert_eq!(plan.admit_set("carts"), Ok(()));
        assert_eq!(plan.admit_set(""), Ok(()));
    }

    #[test]
    fn ship_only_specified_sets_ships_only_the_listed_sets() {
        let (_, plan) = plan_of(|l| {
            l.ship_only_specified_sets(true).ship_set(&["users", "orders"]).ignore_set(&["tmp"])
        });
        assert_eq!(plan.admit_set("users"), Ok(()));
        assert_eq!(plan.admit_set("orders"), Ok(()));
        assert_eq!(plan.admit_set("carts"), Err(Skip::Set));
        assert_eq!(plan.admit_set("tmp"), Err(Skip::Set));
        // Records without a set are not in any listed set.
        assert_eq!(plan.admit_set(""), Err(Skip::Set));
    }

    #[test]
    fn ship_only_specified_sets_with_no_listed_set_ships_nothing() {
        // The validator refuses this configuration; the filter still fails closed.
        let topology = topology(identity);
        let mut link = topology.links[0].clone();
        link.ship_only_specified_sets = true;
        let plan = LinkPlan::new(&topology, &link).expect("plan");
        for set in ["", "users"] {
            assert_eq!(plan.admit_set(set), Err(Skip::Set), "set '{set}'");
        }
    }

    #[test]
    fn ignore_set_wins_over_ship_set() {
        // The validator refuses a set in both lists; the filter still lets ignore-set win.
        let topology = topology(identity);
        for only in [false, true] {
            let mut link = topology.links[0].clone();
            link.ship_only_specified_sets = only;
            link.ship_set = vec!["users".into(), "both".into()];
            link.ignore_set = vec!["both".into()];
            let plan = LinkPlan::new(&topology, &link).expect("plan");
            assert_eq!(plan.admit_set("both"), Err(Skip::Set), "only = {only}");
            assert_eq!(plan.admit_set("users"), Ok(()), "only = {only}");
        }
    }

    #[test]
    fn destination_is_the_remote_master_of_the_partition() {
        let (topology, plan) = plan_of(identity);
        let remote = topology.site("b").expect("site b");
        let map = PartitionMap::for_namespace(&topology, "b", "test").expect("map");
        for i in 0..512 {
            let digest = digest(i * 7919);
            let master = map.master(partition_of(&digest));
            let node = remote.nodes.iter().find(|n| n.id == *master).expect("master is a node");
            let destination = plan.destination(0, &digest).expect("destination");
            assert_eq!(destination.id, node.id);
            assert_eq!(destination.xdr, node.xdr.addr());
        }
    }

    #[test]
    fn destination_of_an_unshipped_namespace_index_is_none() {
        let (_, plan) = plan_of(identity);
        assert_eq!(plan.destination(1, &digest(1)), None);
        assert_eq!(plan.destination(usize::MAX, &digest(1)), None);
    }

    #[test]
    fn destinations_spread_over_all_remote_nodes() {
        let (_, plan) = plan_of(identity);
        let mut per_node: HashMap<NodeId, usize> = HashMap::new();
        for partition in 0..u32::from(PARTITIONS) {
            let destination = plan.destination(0, &digest(partition)).expect("destination");
            *per_node.entry(destination.id.clone()).or_default() += 1;
        }
        let reached: BTreeSet<&NodeId> = per_node.keys().collect();
        let all: BTreeSet<&NodeId> = plan.remote_nodes.keys().collect();
        assert_eq!(reached, all);
        // One digest per partition: every node masters about a third of them.
        let share = usize::from(PARTITIONS) / plan.remote_nodes.len();
        for (node, count) in &per_node {
            assert!(count.abs_diff(share) <= share / 10, "{node} masters {count} of {PARTITIONS}");
        }
    }

    proptest! {
        #[test]
        fn admit_origin_is_loop_prevention(origin in any::<u8>(), forward in any::<bool>()) {
            let (_, plan) = plan_of(|l| l.forward(forward));
            let expected = match origin {
                2 => Err(Skip::FromDestination),
                1 => Ok(()),
                _ if forward => Ok(()),
                _ => Err(Skip::NotForwarded),
            };
            prop_assert_eq!(plan.admit_origin(origin), expected);
        }

        #[test]
        fn every_digest_has_a_remote_destination(bytes in any::<[u8; 20]>()) {
            let digest = Digest(bytes);
            let (_, plan) = plan_of(identity);
            let destination = plan.destination(0, &digest).expect("destination");
            let master = plan.namespaces[0].remote_map.master(partition_of(&digest));
            prop_assert_eq!(&destination.id, master);
            prop_assert_eq!(plan.remote_nodes.get(master), Some(destination));
        }
    }
}
