//! Answers to info commands: what clients need to connect and route, and what operators look
//! at. One answer per asked name, in request order; unknown names answer an `ERROR::` value
//! rather than being dropped, so positional parsers stay aligned.

use std::sync::atomic::Ordering;

use crate::node::NodeState;
use crate::proto::info;

/// The version advertised in `build`: four numeric parts (clients require them) in the range
/// where clients use the modern batch and partition-scan formats.
pub const BUILD: &str = "8.1.0.0";

/// Capabilities the C client (and so the Python client) checks.
const FEATURES: &str = "batch-any;pquery;pscans;peers;replicas;float;truncate-namespace";

/// The info reply body for these names.
pub fn answer(state: &NodeState, names: &[&str]) -> Vec<u8> {
    info::reply(names.iter().map(|&name| (name, value(state, name))))
}

fn value(state: &NodeState, name: &str) -> String {
    let cluster = &state.cluster;
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
        "sets" => String::new(),
        "user-agent-set" => "ok".to_owned(),
        _ => parameterized(state, name),
    }
}

fn parameterized(state: &NodeState, name: &str) -> String {
    if let Some(ns) = name.strip_prefix("namespace/") {
        return match state.namespace(ns) {
            Some(config) => format!(
                "objects={};replication-factor={};conflict-resolution-policy={};default-ttl={};\
                 strong-consistency=false;partitions-owned={}",
                state.store.approximate_len(ns).unwrap_or(0),
                config.replication_factor,
                config.conflict_resolution_policy,
                config.default_ttl,
                state.cluster.owned_partitions(ns),
            ),
            None => format!("ERROR::namespace '{ns}' not found"),
        };
    }
    if name.starts_with("sets/") {
        return String::new();
    }
    if name.starts_with("user-agent-set:") {
        return "ok".to_owned();
    }
    format!("ERROR::unsupported info command '{name}'")
}

fn statistics(state: &NodeState) -> String {
    let stats = &state.stats;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    format!(
        "client_reads={};client_writes={};client_deletes={};batch_requests={};scans={};\
         forwarded={};client_errors={};storage_bytes={}",
        load(&stats.reads),
        load(&stats.writes),
        load(&stats.deletes),
        load(&stats.batch_requests),
        load(&stats.scans),
        load(&stats.forwarded),
        load(&stats.errors),
        state.store.disk_space(),
    )
}
