//! Answers to info commands: what clients need to connect and route, and what operators look
//! at. One answer per asked name, in request order; unknown names answer an error value rather
//! than being dropped, so positional parsers stay aligned. Errors take the form servers use
//! since Aerospike 7.2, `ERROR:<result code>:<message>`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use ferry_topology::audit::AuditEvent;

use crate::node::NodeState;
use crate::proto::info;
use crate::security::Caller;
use crate::security::db::{Permission, code as security_code};
use crate::storage::{SetStats, StoreError};

/// The version advertised in `build`: four numeric parts (clients require them) in the range
/// where clients use the modern batch and partition-scan formats.
pub const BUILD: &str = "8.1.0.0";

/// Info error codes: Aerospike's result codes.
const SERVER_ERROR: u8 = 1;
pub(crate) const NOT_FOUND: u8 = 2;
pub(crate) const PARAMETER: u8 = 4;
const NAMESPACE_NOT_FOUND: u8 = 20;

/// An info error answer, `ERROR:<code>:<message>`.
pub(crate) fn error(code: u8, message: impl std::fmt::Display) -> String {
    format!("ERROR:{code}:{message}")
}

/// A storage failure as an info error answer.
fn store_error(failure: &StoreError) -> String {
    match failure {
        StoreError::UnknownNamespace(_) => error(NAMESPACE_NOT_FOUND, failure),
        _ => error(SERVER_ERROR, failure),
    }
}

/// Capabilities the C client (and so the Python client) checks.
const FEATURES: &str = "batch-any;pquery;pscans;peers;replicas;float;truncate-namespace";

/// The info reply body for these names, asked by `caller` (a client, or `None` for a peer of
/// the site). When security is on, a client's command needs what [`needs`] says; a refused
/// one answers `ERROR:80:…` or `ERROR:81:…` and does nothing.
pub fn answer(state: &NodeState, names: &[&str], caller: Option<&Caller>) -> Vec<u8> {
    info::reply(names.iter().map(|&name| {
        let refused = caller.and_then(|caller| {
            let (permission, namespace, set) = needs(name)?;
            let code = state.security.check(caller, permission, &namespace, &set).err()?;
            Some((code, permission))
        });
        let answer = match refused {
            Some((code, _)) if code == security_code::NOT_AUTHENTICATED => {
                error(code, "not authenticated: log in first")
            }
            Some((code, permission)) => {
                error(code, format!("role violation: '{name}' needs {}", permission.privileges()))
            }
            None => value(state, name, caller),
        };
        (name, answer)
    }))
}

/// Info names that only read, answered without a login: what clients tend with, and what
/// `ferry status`, `ferry verify` and the operators' tools read.
const READ_ONLY: &[&str] = &[
    "node",
    "build",
    "version",
    "edition",
    "cluster-name",
    "features",
    "partition-generation",
    "peers-generation",
    "rebalance-generation",
    "peers-clear-std",
    "peers-clear-alt",
    "peers-tls-std",
    "peers-tls-alt",
    "service-clear-std",
    "service-clear-alt",
    "service-tls-std",
    "service-tls-alt",
    "replicas",
    "rack-ids",
    "namespaces",
    "statistics",
    "sets",
    "user-agent-set",
];
/// Prefixes of parameterized info names that only read.
const READ_ONLY_PREFIXES: &[&str] = &[
    "namespace/",
    "sets/",
    "verify-digest:",
    "xdr-conflicts:",
    "xdr-parked:",
    "get-stats:",
    "get-config:",
    "user-agent-set:",
];

/// What an info command needs when security is on: the permission, and the namespace and set
/// it acts on. `None` for those that only read ([`READ_ONLY`]); any other name, one added
/// later included, needs `sys-admin` unless it is a truncation.
pub fn needs(name: &str) -> Option<(Permission, String, String)> {
    if READ_ONLY.contains(&name) || READ_ONLY_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    let (command, args) = name.split_once(':').unwrap_or((name, ""));
    let scoped = |key: &str| {
        args.split(';').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')).unwrap_or("")
    };
    match command {
        "truncate" | "truncate-namespace" | "truncate-local" => {
            Some((Permission::Truncate, scoped("namespace").to_owned(), scoped("set").to_owned()))
        }
        _ => Some((Permission::SysAdmin, String::new(), String::new())),
    }
}

fn value(state: &NodeState, name: &str, caller: Option<&Caller>) -> String {
    let cluster = state.cluster();
    match name {
        "node" => cluster.node().id.to_string(),
        "build" | "version" => BUILD.to_owned(),
        "edition" => "Ferry (Aerospike-compatible)".to_owned(),
        "cluster-name" => cluster.site().name.to_string(),
        "features" => FEATURES.to_owned(),
        "partition-generation" => cluster.partition_generation().to_string(),
        "peers-generation" => cluster.peers_generation().to_string(),
        "rebalance-generation" => cluster.partition_generation().to_string(),
        "peers-clear-std" => cluster.peers(),
        "peers-clear-alt" | "peers-tls-std" | "peers-tls-alt" => {
            format!("{},{},[]", cluster.peers_generation(), cluster.node().client.addr().port())
        }
        "service-clear-std" => cluster.node().client.to_string(),
        "service-clear-alt" | "service-tls-std" | "service-tls-alt" => String::new(),
        "replicas" => cluster.replicas(),
        "rack-ids" => cluster.rack_ids(),
        "namespaces" => state.store.namespace_names().join(";"),
        "statistics" => statistics(state),
        "sets" => sets(state, None, None),
        "user-agent-set" => "ok".to_owned(),
        _ => parameterized(state, name, caller),
    }
}

fn parameterized(state: &NodeState, name: &str, caller: Option<&Caller>) -> String {
    if let Some(ns) = name.strip_prefix("namespace/") {
        let Some(config) = state.namespace(ns) else {
            return error(NAMESPACE_NOT_FOUND, format!("namespace '{ns}' not found"));
        };
        let totals = namespace_totals(state, ns);
        return format!(
            "objects={};tombstones={};replication-factor={};conflict-resolution-policy={};\
             default-ttl={};strong-consistency=false;partitions-owned={}",
            totals.objects,
            totals.tombstones,
            config.replication_factor,
            config.conflict_resolution_policy,
            config.default_ttl,
            state.cluster().owned_partitions(ns),
        );
    }
    if let Some(ns) = name.strip_prefix("verify-digest:namespace=") {
        return verify_digest(state, ns);
    }
    if let Some(limit) = name.strip_prefix("xdr-conflicts:limit=") {
        let Ok(limit) = limit.parse::<usize>() else {
            return error(PARAMETER, format!("limit '{limit}' is not a number"));
        };
        let conflicts = state.xdr.conflicts(limit);
        return conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join(";");
    }
    if let Some(args) = name.strip_prefix("xdr-link:") {
        return xdr_link_command(state, args, caller);
    }
    if let Some(args) = name.strip_prefix("xdr-parked:") {
        return xdr_parked(state, args);
    }
    if let Some(args) = name.strip_prefix("truncate-namespace:") {
        return truncate(state, args, SetParam::Refused);
    }
    if let Some(args) = name.strip_prefix("truncate:") {
        return truncate(state, args, SetParam::Required);
    }
    if let Some(args) = name.strip_prefix("truncate-local:") {
        return truncate_local(state, args);
    }
    if let Some(args) = name.strip_prefix("get-stats:") {
        return xdr_stats(state, args);
    }
    if let Some(args) = name.strip_prefix("get-config:") {
        return crate::xdr_config::get_config(state, args);
    }
    if let Some(args) = name.strip_prefix("set-config:") {
        let answer = crate::xdr_config::set_config(state, args);
        audit_client_command(state, caller, "config.set", args, &answer);
        return answer;
    }
    if let Some(path) = name.strip_prefix("sets/") {
        return match path.split_once('/') {
            Some((ns, set)) => sets(state, Some(ns), Some(set)),
            None => sets(state, Some(path), None),
        };
    }
    if name.starts_with("user-agent-set:") {
        return "ok".to_owned();
    }
    error(PARAMETER, "unrecognized command")
}

fn statistics(state: &NodeState) -> String {
    let stats = &state.stats;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let view = state.cluster();
    let (tx, rx) = view.migrations_remaining();
    format!(
        "client_reads={};client_writes={};client_deletes={};batch_requests={};scans={};\
         forwarded={};client_errors={};storage_bytes={};cluster_size={};cluster_key={:X};\
         cluster_integrity=true;migrate_tx_partitions_remaining={tx};\
         migrate_rx_partitions_remaining={rx};migrate_partitions_active={}",
        load(&stats.reads),
        load(&stats.writes),
        load(&stats.deletes),
        load(&stats.batch_requests),
        load(&stats.scans),
        load(&stats.forwarded),
        load(&stats.errors),
        state.store.disk_space(),
        view.cluster_size(),
        view.epoch(),
        load(&state.migrations.migrating),
    )
}

/// `get-stats:context=xdr;dc=NAME` (one link's shipping stats) and
/// `get-stats:context=xdr` (the receiver's stats and the list of links).
fn xdr_stats(state: &NodeState, args: &str) -> String {
    let params = match params(args, &["context", "dc", "namespace"]) {
        Ok(params) => params,
        Err(answer) => return answer,
    };
    if params.get("context") != Some(&"xdr") {
        return error(PARAMETER, "only context=xdr is supported");
    }
    let (dc, namespace) = (params.get("dc").copied(), params.get("namespace").copied());
    let registry = &state.xdr;
    let Some(dc) = dc else { return registry.receiver_snapshot().to_info() };
    let Some(link) = registry.get(dc) else {
        return error(NOT_FOUND, format!("no link to dc '{dc}' ships from this node"));
    };
    if let Some(ns) = namespace {
        if let Err(answer) = crate::xdr_config::outgoing(state, &state.topology.get(), dc, Some(ns))
        {
            return answer;
        }
        // Before the shipper first published, the namespace's share is the link's (nothing).
        return link.namespace_snapshot(ns).unwrap_or_else(|| link.snapshot()).to_info();
    }
    link.snapshot().to_info()
}

/// `verify-digest:namespace=NS`: what two sites compare to prove they converged. Each stored
/// version (tombstones included) of the partitions this node masters is hashed
/// ([`crate::verify::version_hash`]) and the hashes XORed, so the digests of a site's nodes
/// XOR into the site's, in any order, each record counted once whatever its copies.
fn verify_digest(state: &NodeState, ns: &str) -> String {
    let mut records = 0u64;
    let mut tombstones = 0u64;
    let mut xor = 0u64;
    let view = state.cluster();
    for partition in 0..ferry_topology::placement::PARTITIONS {
        if !view.is_master(ns, partition) {
            continue;
        }
        let scan = match state.store.scan_partition(ns, partition, None) {
            Ok(scan) => scan,
            Err(e) => return store_error(&e),
        };
        for item in scan {
            let (digest, record) = match item {
                Ok(item) => item,
                Err(e) => return store_error(&e),
            };
            records += 1;
            tombstones += u64::from(record.tombstone);
            xor ^= crate::verify::version_hash(&digest, &record);
        }
    }
    format!("records={records};tombstones={tombstones};xor={xor:016x}")
}

/// The `name=value` parameters of an info command, each name one of `known`; an error answer
/// for anything else.
pub(crate) fn params<'a>(
    args: &'a str,
    known: &[&str],
) -> Result<HashMap<&'a str, &'a str>, String> {
    let mut found = HashMap::new();
    for pair in args.split(';') {
        match pair.split_once('=') {
            Some((name, value)) if known.contains(&name) => {
                // A repeated name would leave what the command does and what is logged or
                // audited up to which of the two each reads.
                if found.insert(name, value).is_some() {
                    return Err(error(PARAMETER, format!("parameter '{name}' given twice")));
                }
            }
            _ => return Err(error(PARAMETER, format!("bad parameter '{pair}'"))),
        }
    }
    Ok(found)
}

/// Parameter `name` as a number, `default` when absent.
fn number_param(params: &HashMap<&str, &str>, name: &str, default: u64) -> Result<u64, String> {
    params.get(name).map_or(Ok(default), |value| {
        value.parse().map_err(|_| error(PARAMETER, format!("{name} '{value}' is not a number")))
    })
}

/// `xdr-parked:dc=NAME[;limit=N]`: the records link `dc` parked on this node (at most `limit`,
/// default 100, oldest change first), as a JSON array of `ferry_xdr::parked::ParkedRecord`.
fn xdr_parked(state: &NodeState, args: &str) -> String {
    let parsed = params(args, &["dc", "limit"]).and_then(|params| {
        let dc = params.get("dc").copied().ok_or_else(|| error(PARAMETER, "missing dc=NAME"))?;
        Ok((dc, number_param(&params, "limit", 100)?))
    });
    let (dc, limit) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error,
    };
    match state.store.parked(dc) {
        Ok(mut parked) => {
            parked.sort_by_key(|r| r.lut_ms);
            parked.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            serde_json::to_string(&parked).unwrap_or_else(|e| error(SERVER_ERROR, e))
        }
        Err(error) => store_error(&error),
    }
}

/// `xdr-link:dc=NAME;action=pause|resume|rewind|drain|retry-parked|discard-parked[;from-ms=T]`:
/// operator control of a link on this node. A rewind re-ships every record changed at or after
/// `from-ms` (0 or absent: all).
fn xdr_link_command(state: &NodeState, args: &str, caller: Option<&Caller>) -> String {
    let parsed = params(args, &["dc", "action", "from-ms"]).and_then(|params| {
        let dc = params.get("dc").copied().ok_or_else(|| error(PARAMETER, "missing dc=NAME"))?;
        let from_ms = number_param(&params, "from-ms", 0)?;
        let command = params
            .get("action")
            .and_then(|action| ferry_xdr::ship::LinkCommand::parse(action, from_ms))
            .ok_or_else(|| {
                error(
                    PARAMETER,
                    "action must be pause, resume, rewind, drain, retry-parked or discard-parked",
                )
            })?;
        Ok((dc, command))
    });
    let (dc, command) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error,
    };
    let answer = if state.xdr.command(dc, command) {
        "ok".to_owned()
    } else {
        error(NOT_FOUND, format!("no link to dc '{dc}' ships from this node"))
    };
    let target = format!("{} -> {dc}", state.site().name);
    audit_client_command(state, caller, &format!("link.{}", command.name()), &target, &answer);
    answer
}

/// Records a change a client asked for over the client port: by its user when it logged in,
/// else known only by its address.
fn audit_client_command(
    state: &NodeState,
    caller: Option<&Caller>,
    action: &str,
    target: &str,
    answer: &str,
) {
    let peer = caller.and_then(|caller| caller.peer);
    let origin = peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string());
    let actor = caller.and_then(Caller::user).unwrap_or("client (no login)");
    let outcome = if answer.starts_with("ERROR") { answer } else { "ok" };
    let event = AuditEvent::now(actor, &origin, action, target)
        .detail(format!("node {} (client port)", state.this_node().id))
        .outcome(outcome);
    state.audit.record(event);
}

/// Whether a truncate command names a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetParam {
    Required,
    Refused,
}

/// `truncate:namespace=NS;set=SET[;lut=NANOS]` and `truncate-namespace:namespace=NS[;lut=NANOS]`
/// (Aerospike's): truncates on this node, then on every other node of the site over the
/// fabric (`truncate-local`). Every record last updated before `lut` (default: now) is gone.
fn truncate(state: &NodeState, args: &str, set_param: SetParam) -> String {
    let known: &[&str] = match set_param {
        SetParam::Required => &["namespace", "set", "lut"],
        SetParam::Refused => &["namespace", "lut"],
    };
    let parsed = params(args, known).and_then(|params| {
        let namespace = params
            .get("namespace")
            .copied()
            .ok_or_else(|| error(PARAMETER, "missing namespace=NAME"))?;
        let set = params.get("set").copied();
        if set_param == SetParam::Required && set.is_none_or(str::is_empty) {
            return Err(error(PARAMETER, "missing set=NAME"));
        }
        let lut =
            params.contains_key("lut").then(|| number_param(&params, "lut", 0)).transpose()?;
        let cutoff = crate::truncate::requested_cutoff(lut, crate::record::now_ms())
            .map_err(|e| error(PARAMETER, e))?;
        Ok((namespace, set, cutoff))
    });
    let (namespace, set, cutoff) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error,
    };
    if let Err(error) = truncate_here(state, namespace, set, cutoff) {
        return error;
    }
    let set_arg = set.map(|set| format!("set={set};")).unwrap_or_default();
    let request = format!("truncate-local:namespace={namespace};{set_arg}before-ms={cutoff}");
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return error(SERVER_ERROR, "truncated on this node only: no runtime to reach the others");
    };
    let missed: Vec<String> = runtime
        .block_on(state.ask_peers(&request))
        .into_iter()
        .filter_map(|(node, answer)| match answer {
            Ok(answer) if answer == "ok" => None,
            Ok(answer) => Some(format!("{node} ({answer})")),
            Err(error) => Some(format!("{node} ({error})")),
        })
        .collect();
    if missed.is_empty() {
        "ok".to_owned()
    } else {
        error(SERVER_ERROR, format!("truncated on this node, not on {}", missed.join(", ")))
    }
}

/// `truncate-local:namespace=NS[;set=SET];before-ms=MS`: one node's share of a truncation
/// another node of the site received.
fn truncate_local(state: &NodeState, args: &str) -> String {
    let parsed = params(args, &["namespace", "set", "before-ms"]).and_then(|params| {
        let namespace = params
            .get("namespace")
            .copied()
            .ok_or_else(|| error(PARAMETER, "missing namespace=NAME"))?;
        let before_ms = number_param(&params, "before-ms", 0)?;
        Ok((namespace, params.get("set").copied(), before_ms))
    });
    match parsed
        .and_then(|(namespace, set, before_ms)| truncate_here(state, namespace, set, before_ms))
    {
        Ok(()) => "ok".to_owned(),
        Err(error) => error,
    }
}

/// Truncates on this node and starts reclaiming the records' space in the background.
fn truncate_here(
    state: &NodeState,
    namespace: &str,
    set: Option<&str>,
    before_ms: u64,
) -> Result<(), String> {
    let cutoff = state.store.truncate(namespace, set, before_ms).map_err(|e| store_error(&e))?;
    tracing::warn!(
        namespace,
        set,
        cutoff,
        "truncated: records last updated before the cut-off are gone"
    );
    let store = state.store.clone();
    let namespace = namespace.to_owned();
    std::thread::spawn(move || match store.remove_truncated(&namespace) {
        Ok(removed) => tracing::info!(namespace, removed, "truncated records removed"),
        Err(error) => tracing::error!(namespace, %error, "removing truncated records failed"),
    });
    Ok(())
}

/// What every set of `ns` holds, summed.
fn namespace_totals(state: &NodeState, ns: &str) -> SetStats {
    let sets = state.store.set_stats(ns).unwrap_or_default();
    sets.values().fold(SetStats::default(), |total, set| SetStats {
        objects: total.objects + set.objects,
        tombstones: total.tombstones + set.tombstones,
        bytes: total.bytes + set.bytes,
    })
}

/// `sets`, `sets/<ns>` and `sets/<ns>/<set>`: Aerospike's per-set statistics, one
/// `ns=…:set=…:objects=…:…` entry per set, each ending in `;`. Counts are exact (a pass over
/// the namespace, on the blocking pool like every info answer).
fn sets(state: &NodeState, only_ns: Option<&str>, only_set: Option<&str>) -> String {
    let namespaces = match only_ns {
        Some(ns) if !state.store.has_namespace(ns) => {
            return error(NAMESPACE_NOT_FOUND, format!("namespace '{ns}' not found"));
        }
        Some(ns) => vec![ns.to_owned()],
        None => state.store.namespace_names(),
    };
    let mut out = String::new();
    for ns in &namespaces {
        let sets = match state.store.set_stats(ns) {
            Ok(sets) => sets,
            Err(error) => return store_error(&error),
        };
        for (set, stats) in &sets {
            if set.is_empty() || only_set.is_some_and(|only| only != set) {
                continue;
            }
            let cutoff = state.store.truncation_cutoff(ns, set);
            // Aerospike counts the truncation time from its own epoch, in milliseconds.
            let truncate_lut = cutoff.saturating_sub(crate::record::CITRUSLEAF_EPOCH_SECS * 1000);
            out.push_str(&format!(
                "ns={ns}:set={set}:objects={}:tombstones={}:data_used_bytes={}:\
                 truncate_lut={truncate_lut}:sindexes=0:index_populating=false:truncating=false;",
                stats.objects, stats.tombstones, stats.bytes
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_known_names_given_once() {
        let found = params("dc=b;action=pause", &["dc", "action"]).expect("params");
        assert_eq!((found["dc"], found["action"]), ("b", "pause"));
        // What runs and what is audited must be the same value: a repeat is refused.
        assert!(params("dc=x;dc=b;action=pause", &["dc", "action"]).is_err());
        assert!(params("dc=b;colour=red", &["dc"]).is_err());
        assert!(params("dc", &["dc"]).is_err());
    }
}
