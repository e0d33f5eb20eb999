//! Ingest and server CPU per write of a Ferry node against Redis, in one run on one machine:
//! 100-byte writes from 128 concurrent clients, no pipelining, one node per site.
//!
//! Ferry cells: `commit-mode` buffered and group (durable), the link `a -> b` on (two sites)
//! and off (one site). Server CPU per write comes from /proc (user + system time of the node
//! processes over the cell, the source and the destination apart; with the link on, the cell
//! ends once the link's stats say it caught up, and the sites are then verified identical).
//! Redis cells, the same run: `redis-server` in memory, and with `appendfsync always`
//! (durable), driven by `redis-benchmark -t set -d 100 -c 128` (no pipelining). Ratios are against Redis measured in
//! the same run: the machine is shared and noisy.
//!
//! Run: `cargo bench -p ferry --bench ingest_vs_redis` (needs `redis-server` and
//! `redis-benchmark`: `apt-get install redis-server`). Every cell is bounded in time and count.
//! `INGEST_CELLS=<text>` runs only the cells whose name contains the text (e.g. `group, link
//! off` while profiling one with `perf`).

#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy};
use ferry_tests::{CommitMode, Link, Namespace, TestTopology, TopologyBuilder, free_ports};
use support::Deployment;
use support::load::{cpu_seconds, drive};

const CELL: Duration = Duration::from_secs(5);
const CLIENTS: usize = 128;
const VALUE_BYTES: usize = 100;
/// Distinct keys written: enough that hot-key coalescing on the link saves little.
const KEYS: i64 = 1_000_000;
const REDIS_REQUESTS: u32 = 300_000;

/// One measured cell.
struct Cell {
    name: String,
    writes_per_sec: f64,
    source_us_per_write: f64,
    destination_us_per_write: Option<f64>,
}

fn main() {
    for tool in ["redis-server", "redis-benchmark"] {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).status();
        if !found.is_ok_and(|s| s.success()) {
            eprintln!("{tool} is missing: apt-get install redis-server");
            std::process::exit(2);
        }
    }
    let only = std::env::var("INGEST_CELLS").unwrap_or_default();
    let wanted = |name: &str| name.contains(only.as_str());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt");
    let mut cells = Vec::new();
    for (mode, label) in [(CommitMode::Buffered, "buffered"), (CommitMode::Group, "group")] {
        for link in [true, false] {
            let name = format!("ferry {label}, link {}", if link { "on" } else { "off" });
            if wanted(&name) {
                cells.push(runtime.block_on(ferry_cell(name, mode, link)));
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = ["--appendonly", "yes", "--appendfsync", "always"];
    for (name, args) in
        [("redis in memory", &["--appendonly", "no"][..]), ("redis appendfsync always", &durable)]
    {
        if wanted(name) {
            cells.push(redis_cell(name, args, dir.path()));
        }
    }

    println!("{:<28} {:>11} {:>14} {:>14}", "cell", "writes/s", "src µs/write", "dst µs/write");
    for cell in &cells {
        let destination =
            cell.destination_us_per_write.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"));
        println!(
            "{:<28} {:>11.0} {:>14.1} {:>14}",
            cell.name, cell.writes_per_sec, cell.source_us_per_write, destination
        );
    }
    let rate = |name: &str| cells.iter().find(|c| c.name == name).map(|c| c.writes_per_sec);
    for (ferry, redis) in [
        ("ferry group, link on", "redis appendfsync always"),
        ("ferry buffered, link on", "redis in memory"),
    ] {
        if let (Some(ferry_rate), Some(redis_rate)) = (rate(ferry), rate(redis)) {
            println!("{ferry} / {redis}: {:.2}x ingest", ferry_rate / redis_rate);
        }
    }
}

/// Writes at a one-node site `a` (and ships them to a one-node site `b` when `link`).
async fn ferry_cell(name: String, mode: CommitMode, link: bool) -> Cell {
    let namespace = Namespace::new("test").commit_mode(mode);
    let builder = if link {
        TopologyBuilder::new("ingest")
            .sites(&["a", "b"], 1)
            .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
    } else {
        TopologyBuilder::new("ingest").site("a", 1)
    };
    let TestTopology { text, nodes } = builder.namespace(namespace).build();
    let seed = nodes[0].client.to_string();
    let deployment = Deployment::start(&text, nodes).await;
    let client = Arc::new(Client::new(&ClientPolicy::default(), &seed).await.expect("connect"));
    let pid = |id: &str| deployment.pid(id).expect("node running");
    let cpu = || (cpu_seconds(pid("a-0")), if link { cpu_seconds(pid("b-0")) } else { 0.0 });
    let before = cpu();
    let (writes_per_sec, _, _) =
        drive(client.clone(), "put", VALUE_BYTES, CLIENTS, CELL, KEYS).await;
    let writes = writes_per_sec * CELL.as_secs_f64();
    if link {
        wait_caught_up(&deployment).await;
    }
    let after = cpu();
    if link {
        // Outside the measurement: verifying scans every record at both sites.
        deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    }
    let per_write = |seconds: f64| seconds * 1e6 / writes.max(1.0);
    Cell {
        name,
        writes_per_sec,
        source_us_per_write: per_write(after.0 - before.0),
        destination_us_per_write: link.then(|| per_write(after.1 - before.1)),
    }
}

/// Waits until the link `a -> b` says it is caught up (nothing queued, no lag): a cheap stats
/// read, so polling it costs the source next to nothing (the stats never say caught up while
/// an acknowledged change is behind).
async fn wait_caught_up(deployment: &Deployment) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let queued = deployment.link_sum("a", "b", |c| c.in_queue).await;
        let lag = deployment.link_sum("a", "b", |c| c.lag).await;
        if queued == 0 && lag == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the link never caught up: {queued} queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `redis-benchmark -t set -d 100 -c 128` against a fresh `redis-server` run with `args`.
fn redis_cell(name: &str, args: &[&str], dir: &std::path::Path) -> Cell {
    let port = free_ports(1)[0].to_string();
    let mut server = RedisServer(
        Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--dir"])
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = cpu_seconds(server.0.id());
    let requests = REDIS_REQUESTS.to_string();
    let output = Command::new("redis-benchmark")
        .args(["-p", &port, "-t", "set", "-d", "100", "-c", "128", "-n", &requests, "-r"])
        .arg(KEYS.to_string())
        .arg("--csv")
        .output()
        .expect("run redis-benchmark");
    let cpu = cpu_seconds(server.0.id()) - before;
    let text = String::from_utf8_lossy(&output.stdout);
    // `"SET","<requests per second>",…` after a header line.
    let rps = text
        .lines()
        .find(|line| line.starts_with("\"SET"))
        .and_then(|line| line.split(',').nth(1))
        .and_then(|field| field.trim_matches('"').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
    let _ = server.0.kill();
    Cell {
        name: name.to_owned(),
        writes_per_sec: rps,
        source_us_per_write: cpu * 1e6 / f64::from(REDIS_REQUESTS),
        destination_us_per_write: None,
    }
}

/// A `redis-server` child, killed when dropped.
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
