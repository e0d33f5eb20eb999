//! Prometheus text exposition of a node's statistics (`GET /metrics` on the admin address).
//!
//! XDR and namespace statistics carry the names Aerospike's Prometheus exporter gives them
//! (`aerospike_xdr_*` with a `dc` label, `aerospike_namespace_*` with `ns`) where Aerospike
//! has the statistic, in its units (`lag` in seconds); Ferry's own are `ferry_*`. Every series
//! has the exporter's `cluster_name` (the site) and `service` (the node's client address)
//! labels. Nothing here does I/O: a scrape reads counters and the primary index.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::node::NodeState;

/// Upper bounds of the fsync latency buckets, in seconds.
const FSYNC_BUCKETS: [f64; 12] =
    [0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0];

/// A latency histogram with fixed buckets, updated lock-free.
#[derive(Debug, Default)]
pub struct FsyncHistogram {
    /// Observations at or below each bound (not cumulative), then above the last.
    buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl FsyncHistogram {
    /// Records one fsync that took `took`.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = FSYNC_BUCKETS.iter().position(|&bound| seconds <= bound);
        self.buckets[bucket.unwrap_or(FSYNC_BUCKETS.len())].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut Exposition) {
        let name = "ferry_storage_fsync_seconds";
        out.help(name, "histogram", "Group-commit fsyncs of the storage journal.");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = FSYNC_BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
            out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        out.sample(&format!("{name}_sum"), &[], sum);
        out.sample(&format!("{name}_count"), &[], cumulative as f64);
    }
}

/// Link statistics Aerospike's exporter names `aerospike_xdr_<name>`, with Ferry's name when
/// it differs, and whether the series is a gauge.
const AEROSPIKE_XDR: &[(&str, &str, bool)] = &[
    ("lag", "lag", true),
    ("in_queue", "in_queue", true),
    ("in_progress", "in_progress", true),
    ("success", "success", false),
    ("discarded", "abandoned", false),
    ("not_found", "not_found", false),
    ("filtered_out", "filtered_out", false),
    ("retry_conn_reset", "retry_conn_reset", false),
    ("retry_dest", "retry_dest", false),
    ("recoveries", "recoveries", false),
    ("hot_keys", "hot_keys", false),
    ("throughput", "throughput", true),
    ("latency_ms", "latency_ms", true),
    ("compression_ratio", "compression_ratio", true),
];

/// Ferry's own link statistics that are gauges (the rest are counters).
const FERRY_XDR_GAUGES: &[&str] = &["parked", "log_time_left"];

/// The node's statistics in Prometheus text format 0.0.4.
pub fn render(state: &NodeState) -> String {
    let site = state.site().name.to_string();
    let service = state.this_node().client.to_string();
    let mut out = Exposition { text: String::new(), common: vec![site, service] };

    let registry = &state.xdr;
    let links: Vec<(String, serde_json::Value)> = registry
        .dcs()
        .into_iter()
        .filter_map(|dc| {
            let counters = serde_json::to_value(registry.get(&dc)?.snapshot().counters).ok()?;
            Some((dc, counters))
        })
        .collect();
    let names: Vec<&String> = links
        .first()
        .and_then(|(_, counters)| counters.as_object())
        .map(|fields| fields.keys().collect())
        .unwrap_or_default();
    for field in names {
        let known = AEROSPIKE_XDR.iter().find(|(ferry, _, _)| ferry == field);
        let (name, gauge) = match known {
            Some((_, aerospike, gauge)) => (format!("aerospike_xdr_{aerospike}"), *gauge),
            None => (format!("ferry_xdr_{field}"), FERRY_XDR_GAUGES.contains(&field.as_str())),
        };
        out.help(&name, if gauge { "gauge" } else { "counter" }, "XDR link statistic.");
        for (dc, counters) in &links {
            let Some(value) = counters.get(field).and_then(serde_json::Value::as_f64) else {
                continue;
            };
            let value = match field.as_str() {
                // Aerospike's units: lag in seconds, the compression ratio as a ratio.
                "lag" => value / 1000.0,
                "compression_ratio" => value / 1000.0,
                // Not growing: no time limit (the stats' `unbounded`).
                "log_time_left" if value >= u64::MAX as f64 => f64::INFINITY,
                _ => value,
            };
            out.sample(&name, &[("dc", dc)], value);
        }
    }
    if let Ok(receiver) = serde_json::to_value(registry.receiver_snapshot().counters) {
        for (field, value) in receiver.as_object().into_iter().flatten() {
            let Some(value) = value.as_f64() else { continue };
            let name = format!("ferry_xdr_receiver_{field}");
            out.help(&name, "counter", "Records and batches this node received over XDR.");
            out.sample(&name, &[], value);
        }
    }

    let counts: Vec<(String, (u64, u64))> = state
        .store
        .namespace_names()
        .into_iter()
        .filter_map(|ns| Some((ns.clone(), state.store.stored_counts(&ns).ok()?)))
        .collect();
    for (name, help) in [
        ("aerospike_namespace_objects", "Records stored (tombstones not counted)."),
        ("aerospike_namespace_tombstones", "Tombstones stored."),
    ] {
        out.help(name, "gauge", help);
        for (ns, (versions, tombstones)) in &counts {
            let value = if name.ends_with("objects") { versions - tombstones } else { *tombstones };
            out.sample(name, &[("ns", ns)], value as f64);
        }
    }

    let stats = &state.stats;
    for (name, counter) in [
        ("ferry_node_client_reads", &stats.reads),
        ("ferry_node_client_writes", &stats.writes),
        ("ferry_node_client_deletes", &stats.deletes),
        ("ferry_node_batch_requests", &stats.batch_requests),
        ("ferry_node_scans", &stats.scans),
        ("ferry_node_forwarded", &stats.forwarded),
        ("ferry_node_client_errors", &stats.errors),
    ] {
        out.help(name, "counter", "Requests this node served.");
        out.sample(name, &[], counter.load(Ordering::Relaxed) as f64);
    }
    let view = state.cluster();
    out.help("ferry_membership_epoch", "gauge", "The site's committed membership epoch here.");
    out.sample("ferry_membership_epoch", &[], view.epoch() as f64);
    if let Some(member) = state.member_status() {
        out.help("ferry_membership_down_nodes", "gauge", "Site nodes out of placement.");
        out.sample("ferry_membership_down_nodes", &[], member.down.len() as f64);
        out.help(
            "ferry_membership_lease_seconds",
            "gauge",
            "How long this node may still ack writes.",
        );
        out.sample("ferry_membership_lease_seconds", &[], member.lease_ms as f64 / 1000.0);
    }
    let migrations = &state.migrations;
    out.help("ferry_migrate_partitions_active", "gauge", "Partitions this node is pushing now.");
    out.sample(
        "ferry_migrate_partitions_active",
        &[],
        migrations.migrating.load(Ordering::Relaxed) as f64,
    );
    for (name, counter) in [
        ("ferry_migrate_partitions_sent", &migrations.partitions_sent),
        ("ferry_migrate_records_sent", &migrations.records_sent),
        ("ferry_migrate_bytes_sent", &migrations.bytes_sent),
        ("ferry_migrate_records_received", &migrations.records_received),
        ("ferry_migrate_records_dropped", &migrations.records_dropped),
        ("ferry_migrate_records_merged", &migrations.records_merged),
    ] {
        out.help(name, "counter", "Partition migrations since the node started.");
        out.sample(name, &[], counter.load(Ordering::Relaxed) as f64);
    }
    for (name, help) in [
        ("ferry_partitions_owned", "Partitions this node masters."),
        ("ferry_partitions_filling", "Partitions whose placed copies are still being filled."),
    ] {
        out.help(name, "gauge", help);
        for ns in state.store.namespace_names() {
            let value = if name.ends_with("owned") {
                view.owned_partitions(&ns)
            } else {
                view.filling_partitions(&ns)
            };
            out.sample(name, &[("ns", &ns)], value as f64);
        }
    }
    out.help("ferry_storage_bytes", "gauge", "Bytes the node's storage uses on disk.");
    out.sample("ferry_storage_bytes", &[], state.store.disk_space() as f64);
    state.store.fsync_latency().render(&mut out);
    if let Some(log) = state.digest_log() {
        let metrics = log.metrics();
        for (name, value) in [
            ("ferry_digestlog_appends", metrics.appends),
            ("ferry_digestlog_syncs", metrics.syncs),
            ("ferry_digestlog_overflows", metrics.overflows),
            ("ferry_digestlog_entries_lost_to_overflow", metrics.entries_lost_to_overflow),
        ] {
            out.help(name, "counter", "Digest log activity since the node started.");
            out.sample(name, &[], value as f64);
        }
        out.help("ferry_digestlog_bytes", "gauge", "Bytes the digest log's segments use.");
        out.sample("ferry_digestlog_bytes", &[], log.disk_bytes() as f64);
    }
    out.text
}

/// The exposition being written.
struct Exposition {
    text: String,
    /// `cluster_name` and `service`, on every series.
    common: Vec<String>,
}

impl Exposition {
    fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let common = [("cluster_name", self.common[0].as_str()), ("service", &self.common[1])];
        let labels: Vec<String> = common
            .iter()
            .chain(labels)
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect();
        // The format spells infinities `+Inf` and `-Inf`.
        let value = match value {
            f64::INFINITY => "+Inf".to_owned(),
            f64::NEG_INFINITY => "-Inf".to_owned(),
            value => value.to_string(),
        };
        let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fsync_histogram_is_cumulative_with_sum_and_count() {
        let histogram = FsyncHistogram::default();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(2));
        let mut out = Exposition { text: String::new(), common: vec!["a".into(), "x".into()] };
        histogram.render(&mut out);
        let line = |prefix: &str| {
            out.text.lines().find(|l| l.starts_with(prefix)).unwrap_or_default().to_owned()
        };
        let labels = "cluster_name=\"a\",service=\"x\"";
        assert_eq!(
            line(
                "ferry_storage_fsync_seconds_bucket{cluster_name=\"a\",service=\"x\",le=\"0.0005\"}"
            ),
            format!("ferry_storage_fsync_seconds_bucket{{{labels},le=\"0.0005\"}} 1")
        );
        assert!(out.text.contains("le=\"0.004\"} 2"), "{}", out.text);
        assert!(out.text.contains("le=\"+Inf\"} 3"), "{}", out.text);
        assert!(out.text.contains(&format!("ferry_storage_fsync_seconds_count{{{labels}}} 3")));
        assert!(out.text.contains("# TYPE ferry_storage_fsync_seconds histogram"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
