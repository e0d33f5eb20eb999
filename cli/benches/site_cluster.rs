//! The site as a cluster: what keeping two copies costs, what losing a node costs, and how fast
//! copies move. Against baselines measured in the same run:
//! - puts/s of a 3-node site at replication-factor 1 and 2 (ratio RF2 / RF1);
//! - a node SIGKILLed under write load, with a link shipping to a second site: time until the
//!   membership takes it out, the longest a write waited, the link's worst lag meanwhile;
//! - migrations: refilling the lost node's copies, then filling it again when it returns, in
//!   records/s and MB/s, next to the disk's sequential durable write rate.
//!
//! Run: `cargo bench -p ferry --bench site_cluster`. Every phase is bounded in time and count.

#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, Namespace, TopologyBuilder};
use futures::StreamExt as _;
use support::Deployment;

const CELL: Duration = Duration::from_secs(3);
const TASKS: usize = 64;
const KEYS: i64 = 10_000;
/// Records loaded before the node loss (what migrations move).
const PRELOAD: i64 = 40_000;
const RECORD_BYTES: usize = 1024;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk_mb_s = sequential_durable_mb_s(dir.path(), 64 << 20);
    println!("disk: {disk_mb_s:.0} MB/s sequential writes, fdatasync every MiB (same run)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt");

    let mut rates = Vec::new();
    for rf in [1u8, 2] {
        let built = TopologyBuilder::new("bench-rf")
            .site("local", 3)
            .namespace(Namespace::new("test").replication_factor(rf))
            .build();
        let seed = built.nodes[0].client.to_string();
        let site = runtime.block_on(Deployment::start(&built.text, built.nodes));
        let (ops, p50, p99) = runtime.block_on(async {
            let client =
                Arc::new(Client::new(&ClientPolicy::default(), &seed).await.expect("connect"));
            support::load::drive(client, "put", 100, TASKS, CELL, KEYS).await
        });
        println!("3-node site, RF {rf}: {ops:>8.0} puts/s  p50 {p50:.2} ms  p99 {p99:.2} ms");
        rates.push(ops);
        drop(site);
    }
    println!("RF 2 / RF 1 put throughput: {:.2}", rates[1] / rates[0]);

    runtime.block_on(node_loss(disk_mb_s));
}

/// Sum over the live nodes of `site` of a number in their `/v1/status` at `path`.
fn status_sum(deployment: &Deployment, site: &str, skip: &str, path: &[&str]) -> u64 {
    deployment
        .ids(site)
        .iter()
        .filter(|id| *id != skip)
        .filter_map(|id| {
            let (_, body) = deployment.admin(id, "GET", "/v1/status");
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            path.iter().try_fold(&json, |value, key| value.get(key))?.as_u64()
        })
        .sum()
}

/// Polls until no live node of `site` (all but `lost`) has partitions pending and each says
/// `lost` (or, when empty, no node) is out; returns how long that took.
async fn wait_settled(
    deployment: &Deployment,
    site: &str,
    lost: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let down =
        if lost.is_empty() { "\"down\":[]".to_owned() } else { format!("\"down\":[\"{lost}\"]") };
    while started.elapsed() < limit {
        let pending = status_sum(deployment, site, lost, &["membership", "pending_partitions"]);
        let agreed = deployment.ids(site).iter().filter(|id| *id != lost).all(|id| {
            let (_, body) = deployment.admin(id, "GET", "/v1/status");
            body.contains(&down)
        });
        if pending == 0 && agreed {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("partitions still pending after {limit:?}");
}

async fn node_loss(disk_mb_s: f64) {
    let built = TopologyBuilder::new("bench-loss")
        .sites(&["a", "b"], 3)
        .namespace(Namespace::new("test").replication_factor(2))
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    let seeds: Vec<String> =
        built.nodes.iter().filter(|n| n.site == "a").map(|n| n.client.to_string()).collect();
    let mut deployment = Deployment::start(&built.text, built.nodes).await;
    let client =
        Arc::new(Client::new(&ClientPolicy::default(), &seeds.join(",")).await.expect("connect"));
    let payload = "x".repeat(RECORD_BYTES);
    let started = Instant::now();
    futures::stream::iter(0..PRELOAD)
        .for_each_concurrent(64, |i| {
            let (client, payload) = (Arc::clone(&client), payload.as_str());
            async move {
                let _ = client
                    .put(
                        &WritePolicy::default(),
                        &as_key!("test", "pre", i),
                        &[as_bin!("p", payload)],
                    )
                    .await;
            }
        })
        .await;
    println!("\npreloaded {PRELOAD} records of {RECORD_BYTES} B in {:?}", started.elapsed());
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;

    // Writes under load while a node dies; each write may retry for up to 10 s.
    let mut policy = WritePolicy::default();
    policy.base_policy.total_timeout = 10_000;
    policy.base_policy.max_retries = 200;
    policy.base_policy.sleep_between_retries = 20;
    let policy = Arc::new(policy);
    let load_for = Duration::from_secs(8);
    let load_started = Instant::now();
    let writers: Vec<_> = (0..16)
        .map(|task| {
            let (client, policy) = (Arc::clone(&client), Arc::clone(&policy));
            tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                let mut n = task as i64;
                let mut writes = 0;
                while load_started.elapsed() < load_for && writes < 100_000 {
                    let sent = Instant::now();
                    let key = as_key!("test", "live", n % KEYS);
                    if client.put(&policy, &key, &[as_bin!("v", n)]).await.is_ok() {
                        worst = worst.max(sent.elapsed());
                    }
                    n += 16;
                    writes += 1;
                }
                worst
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent_before = status_sum(&deployment, "a", "a-1", &["migrations", "records_sent"]);
    let bytes_before = status_sum(&deployment, "a", "a-1", &["migrations", "bytes_sent"]);
    tokio::task::block_in_place(|| deployment.kill_node("a-1"));
    let killed_at = Instant::now();
    let mut removed_after = None;
    let mut worst_lag = 0;
    while killed_at.elapsed() < Duration::from_secs(6) {
        if removed_after.is_none()
            && ["a-0", "a-2"].iter().all(|id| {
                let (_, body) = deployment.admin(id, "GET", "/v1/status");
                body.contains("\"down\":[\"a-1\"]")
            })
        {
            removed_after = Some(killed_at.elapsed());
        }
        for id in ["a-0", "a-2"] {
            let addr = deployment.node(id).client;
            if let Ok(stats) = ferry::client::link_stats(addr, "b").await {
                worst_lag = worst_lag.max(stats.counters.lag);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut worst_wait = Duration::ZERO;
    for writer in writers {
        worst_wait = worst_wait.max(writer.await.expect("writer"));
    }
    println!(
        "node loss: taken out after {:?}; the longest write waited {worst_wait:?}; the link's worst lag {worst_lag} ms",
        removed_after.unwrap_or_default()
    );

    wait_settled(&deployment, "a", "a-1", Duration::from_secs(300)).await;
    let sent = status_sum(&deployment, "a", "a-1", &["migrations", "records_sent"]) - sent_before;
    let bytes = status_sum(&deployment, "a", "a-1", &["migrations", "bytes_sent"]) - bytes_before;
    report(
        "refilling the lost copies (from the kill)",
        sent,
        bytes,
        killed_at.elapsed(),
        disk_mb_s,
    );

    // The returning node's counters start at zero.
    let sent_before = status_sum(&deployment, "a", "a-1", &["migrations", "records_sent"]);
    let bytes_before = status_sum(&deployment, "a", "a-1", &["migrations", "bytes_sent"]);
    let back_at = Instant::now();
    deployment.start_node("a-1").await;
    wait_settled(&deployment, "a", "", Duration::from_secs(300)).await;
    let sent = status_sum(&deployment, "a", "", &["migrations", "records_sent"]) - sent_before;
    let bytes = status_sum(&deployment, "a", "", &["migrations", "bytes_sent"]) - bytes_before;
    report("filling the returning node", sent, bytes, back_at.elapsed(), disk_mb_s);
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
}

fn report(what: &str, records: u64, bytes: u64, took: Duration, disk_mb_s: f64) {
    let secs = took.as_secs_f64();
    let mb_s = bytes as f64 / secs / 1e6;
    println!(
        "{what}: {records} records, {:.1} MB in {took:.2?}: {:.0} records/s, {mb_s:.1} MB/s ({:.2} of the disk's rate)",
        bytes as f64 / 1e6,
        records as f64 / secs,
        mb_s / disk_mb_s
    );
}

/// Writes `total` bytes sequentially in 1 MiB blocks, fdatasync after each: MB/s.
fn sequential_durable_mb_s(dir: &std::path::Path, total: usize) -> f64 {
    let mut file = std::fs::File::create(dir.join("disk-probe")).expect("probe file");
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut written = 0;
    while written < total && started.elapsed() < Duration::from_secs(10) {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        written += block.len();
    }
    written as f64 / started.elapsed().as_secs_f64() / 1e6
}
