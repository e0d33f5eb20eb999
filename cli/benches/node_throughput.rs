//! Node throughput with the `aerospike` crate client: puts/s and gets/s with p50/p99 latency
//! for 1-node and 3-node sites, 100-byte and 1 KiB records, next to the disk's raw fdatasync
//! rate measured in the same run (every durable put needs a share of one fsync); then what the
//! digest log costs: 1-node puts at 128 concurrent writers with the log on and off; then what
//! client-port security costs: 1-node puts and gets with it off and on (logged in).
//!
//! Run: `cargo bench -p ferry --bench node_throughput` (release build of `ferry`).
//! Each cell is bounded in time and count.

#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy};
use ferry_tests::{Namespace, TopologyBuilder};
use support::Deployment;

const CELL: Duration = Duration::from_secs(3);
const TASKS: usize = 64;
const LOGGING_TASKS: usize = 128;
const KEYS: i64 = 10_000;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fsyncs = raw_fdatasync_rate(dir.path(), Duration::from_secs(2));
    println!("raw fdatasync rate of this disk: {fsyncs:.0}/s (4 KiB write + fdatasync, 1 writer)");
    println!(
        "{:<8} {:>6} {:<4} {:>10} {:>9} {:>9} {:>14}",
        "site", "record", "op", "ops/s", "p50 ms", "p99 ms", "ops per fsync"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt");
    for nodes in [1usize, 3] {
        let (site, seed) = start(&runtime, nodes, Vec::new());
        let client = runtime.block_on(async {
            Arc::new(Client::new(&ClientPolicy::default(), &seed).await.expect("connect"))
        });
        for size in [100usize, 1024] {
            for op in ["put", "get"] {
                let (ops, p50, p99) = runtime.block_on(support::load::drive(
                    client.clone(),
                    op,
                    size,
                    TASKS,
                    CELL,
                    KEYS,
                ));
                println!(
                    "{:<8} {:>5}B {:<4} {:>10.0} {:>9.2} {:>9.2} {:>14.1}",
                    format!("{nodes}-node"),
                    size,
                    op,
                    ops,
                    p50,
                    p99,
                    ops / fsyncs
                );
            }
        }
        drop(site);
    }

    let mut with_log = 0.0;
    for (label, args) in [("log on", Vec::new()), ("log off", vec!["--no-digest-log".to_owned()])] {
        let (_site, seed) = start(&runtime, 1, args);
        let client = runtime.block_on(async {
            Arc::new(Client::new(&ClientPolicy::default(), &seed).await.expect("connect"))
        });
        let (ops, p50, p99) =
            runtime.block_on(support::load::drive(client, "put", 100, LOGGING_TASKS, CELL, KEYS));
        if with_log == 0.0 {
            with_log = ops;
        }
        println!(
            "1-node puts, {LOGGING_TASKS} writers, {label:<7}: {ops:>9.0}/s  p50 {p50:.2} ms  p99 {p99:.2} ms  (log on / this = {:.3})",
            with_log / ops
        );
    }

    let mut unsecured = [0.0; 2];
    for secured in [false, true] {
        let (_site, client) = start_secured(&runtime, secured);
        for (i, op) in ["put", "get"].into_iter().enumerate() {
            let drive = support::load::drive(client.clone(), op, 100, TASKS, CELL, KEYS);
            let (ops, p50, p99) = runtime.block_on(drive);
            if !secured {
                unsecured[i] = ops;
            }
            let label = if secured { "on, logged in" } else { "off" };
            println!(
                "1-node {op}s, {TASKS} clients, security {label:<13}: {ops:>9.0}/s  p50 {p50:.2} ms  p99 {p99:.2} ms  (off / this = {:.3})",
                unsecured[i] / ops
            );
        }
    }
}

/// A one-node site following a topology service, with client-port security on or off, and a
/// client (logged in as the site's first user when security is on).
fn start_secured(runtime: &tokio::runtime::Runtime, secured: bool) -> (Deployment, Arc<Client>) {
    let site = ferry_tests::Site::new("local", 1);
    let built = TopologyBuilder::new("test-site")
        .add_site(if secured { site.security() } else { site })
        .namespace(Namespace::new("test"))
        .build();
    let seed = built.nodes[0].client.to_string();
    let deployment = runtime.block_on(Deployment::start_spec(&built.text, built.nodes, |spec| {
        spec.topology_service = Some(([127, 0, 0, 1], 0).into());
    }));
    let mut policy = ClientPolicy::default();
    if secured {
        let file = deployment.running.state.aerospike_admin_password("local");
        let password = ferry_auth::access::read_secret(&file).expect("the admin password");
        policy.set_auth_mode(aerospike::AuthMode::Internal("admin".to_owned(), password));
    }
    let client = runtime.block_on(Client::new(&policy, &seed)).expect("connect");
    (deployment, Arc::new(client))
}

/// A one-site deployment of `nodes` nodes (two copies when there are several), each node run
/// with `node_args`; returns it with a client seed.
fn start(
    runtime: &tokio::runtime::Runtime,
    nodes: usize,
    node_args: Vec<String>,
) -> (Deployment, String) {
    let built = TopologyBuilder::new("test-site")
        .site("local", nodes)
        .namespace(Namespace::new("test").replication_factor(if nodes == 1 { 1 } else { 2 }))
        .build();
    let seed = built.nodes[0].client.to_string();
    let deployment = runtime.block_on(Deployment::start_with(&built.text, built.nodes, node_args));
    (deployment, seed)
}

/// 4 KiB write + fdatasync in a loop: the disk's durable-commit ceiling for one writer.
fn raw_fdatasync_rate(dir: &std::path::Path, duration: Duration) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    let block = [0u8; 4096];
    let started = Instant::now();
    let mut count = 0u32;
    while started.elapsed() < duration && count < 1_000_000 {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        count += 1;
    }
    f64::from(count) / started.elapsed().as_secs_f64()
}
