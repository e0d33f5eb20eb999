//! XDR shipping measured with real processes: two sites of three nodes, the `aerospike` crate
//! as the client at the source, JSON-like records (~230 bytes).
//!
//! - Source write throughput with the link on vs off (ratio; target ≥ 0.85).
//! - Sustained shipping rate vs the source's ingest rate, direct and through the WAN relay at
//!   50 ms RTT (shipping keeps up when the sites converge right after the last write).
//! - Lag p50/p99 at 50 % of the measured ingest rate, through the 50 ms relay.
//! - Catch-up after an outage (relay partitioned while writing at 50 % load): drain rate vs
//!   ingest rate (target ≥ 2×).
//! - Bytes on the wire per record vs raw record bytes (target ≤ 0.4).
//!
//! Run: `cargo bench -p ferry --bench xdr_shipping` (release build of `ferry`).
//! `FERRY_BENCH_RECORDS` (default 30000) and `FERRY_BENCH_OUTAGE_S` (default 30) size it.
//! `FERRY_BENCH_RATE` paces the link on/off comparison to that many writes per second (CPU per
//! write then compares like with like instead of two saturated runs), and
//! `FERRY_BENCH_CPU_ONLY` stops after that comparison.

#![allow(clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TestTopology, TopologyBuilder};
use ferry_transport::relay::LinkShape;
use ferry_xdr::stats::LinkCounters;
use support::Deployment;

const WRITERS: u64 = 64;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A JSON document like an application would store.
fn document(i: u64) -> String {
    format!(
        r#"{{"user":"user-{i:08}","email":"user-{i:08}@example.com","age":{},"plan":"premium","tags":["mobile","eu","beta"],"address":{{"city":"Lisbon","zip":"1100-{:03}","country":"PT"}},"active":true}}"#,
        20 + i % 60,
        i % 1000
    )
}

/// Bytes of a record as the application sees it: set, key, bin name and value.
fn raw_record_bytes(i: u64) -> u64 {
    ("bench".len() + 8 + "doc".len() + document(i).len()) as u64
}

struct Sites {
    deployment: Deployment,
    client: Arc<Client>,
}

async fn start(link_enabled: bool, one_way_delay: Option<Duration>) -> Sites {
    let link = Link::new("a", "b")
        .period_ms(20)
        .hot_key_ms(20)
        .max_throughput(1_000_000)
        .enabled(link_enabled);
    let TestTopology { text: topology, nodes } =
        TopologyBuilder::new("xdr-test").sites(&["a", "b"], 3).link(link).build();
    let deployment = Deployment::start_spec(&topology, nodes, |spec| {
        if let Some(delay) = one_way_delay {
            spec.relays = vec![("b".to_owned(), LinkShape { delay, ..LinkShape::default() })];
        }
    })
    .await;
    let seed = deployment.site("a")[0].client.to_string();
    let client = Arc::new(Client::new(&ClientPolicy::default(), &seed).await.expect("connect"));
    Sites { deployment, client }
}

/// Writes keys `from..to`, paced to `rate` per second when given; returns writes per second.
async fn write(client: &Arc<Client>, from: u64, to: u64, rate: Option<f64>) -> f64 {
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            let wp = WritePolicy::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64((i - from) as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let key = as_key!("test", "bench", i as i64);
                client.put(&wp, &key, &[as_bin!("doc", document(i))]).await.expect("put");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    (to - from) as f64 / started.elapsed().as_secs_f64()
}

/// A counter of link `a -> b` summed over the source nodes.
async fn stat(sites: &Sites, counter: fn(&LinkCounters) -> u64) -> u64 {
    sites.deployment.link_sum("a", "b", counter).await
}

/// Seconds from now until site b holds everything site a holds.
async fn until_converged(sites: &Sites) -> f64 {
    let started = Instant::now();
    sites.deployment.wait_converged("a", "b", Duration::from_secs(600)).await;
    started.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) the node processes of `site` used so far, from /proc (USER_HZ
/// is 100 on Linux).
fn site_cpu_seconds(sites: &Sites, site: &str) -> f64 {
    let deployment = &sites.deployment;
    deployment
        .site(site)
        .iter()
        .filter_map(|node| deployment.pid(&node.id))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0)
}

fn main() {
    let records = env_or("FERRY_BENCH_RECORDS", 30_000);
    let outage = Duration::from_secs(env_or("FERRY_BENCH_OUTAGE_S", 30));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt");
    runtime.block_on(async {
        println!("{records} JSON-like records (~{} B each), {WRITERS} writers", raw_record_bytes(1));

        let off = start(false, None).await;
        let cpu_before = site_cpu_seconds(&off, "a");
        let pace = std::env::var("FERRY_BENCH_RATE").ok().and_then(|v| v.parse::<f64>().ok());
        let ingest_off = write(&off.client, 0, records, pace).await;
        let cpu_off = site_cpu_seconds(&off, "a") - cpu_before;
        drop(off);
        let on = start(true, None).await;
        let cpu_before = (site_cpu_seconds(&on, "a"), site_cpu_seconds(&on, "b"));
        let started = Instant::now();
        let ingest_on = write(&on.client, 0, records, pace).await;
        let tail = until_converged(&on).await;
        let cpu_on = site_cpu_seconds(&on, "a") - cpu_before.0;
        let cpu_apply = site_cpu_seconds(&on, "b") - cpu_before.1;
        let per_k = |cpu: f64| cpu * 1e6 / records as f64;
        println!(
            "source-site CPU per 1000 writes: link off {:.0} ms, link on {:.0} ms (off/on = {:.2}); destination CPU per 1000 applied: {:.0} ms",
            per_k(cpu_off),
            per_k(cpu_on),
            cpu_off / cpu_on,
            per_k(cpu_apply)
        );
        let shipped = records as f64 / started.elapsed().as_secs_f64();
        let wire = stat(&on, |c| c.bytes_shipped).await;
        let raw: u64 = (0..records).map(raw_record_bytes).sum();
        println!("source writes/s, link off: {ingest_off:.0}; link on: {ingest_on:.0}; on/off = {:.2}", ingest_on / ingest_off);
        println!("0 ms RTT: shipping rate {shipped:.0}/s vs ingest {ingest_on:.0}/s = {:.2}; converged {tail:.2} s after the last write", shipped / ingest_on);
        println!("bytes on the wire per record / raw record bytes = {:.3} ({wire} / {raw})", wire as f64 / raw as f64);
        drop(on);
        if std::env::var_os("FERRY_BENCH_CPU_ONLY").is_some() {
            return;
        }

        let wan = start(true, Some(Duration::from_millis(25))).await;
        let started = Instant::now();
        let ingest = write(&wan.client, 0, records, None).await;
        let tail = until_converged(&wan).await;
        let shipped = records as f64 / started.elapsed().as_secs_f64();
        println!("50 ms RTT: shipping rate {shipped:.0}/s vs ingest {ingest:.0}/s = {:.2}; converged {tail:.2} s after the last write", shipped / ingest);

        // Lag at half load.
        let half = ingest / 2.0;
        let sampling = {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
            (stop, lags)
        };
        let (stop, lags) = sampling.clone();
        let sampler = {
            let deployment_a: Vec<std::net::SocketAddr> = wan.deployment.site("a").iter().map(|n| n.client).collect();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for addr in &deployment_a {
                        if let Ok(stats) = ferry::client::link_stats(*addr, "b").await {
                            lags.lock().expect("lags").push(stats.counters.lag);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        write(&wan.client, records, records + (half * 10.0) as u64, Some(half)).await;
        sampling.0.store(true, Ordering::Relaxed);
        sampler.await.expect("sampler");
        let mut lags = sampling.1.lock().expect("lags").clone();
        lags.sort_unstable();
        println!("lag at 50% load ({half:.0}/s, 50 ms RTT): p50 {} ms, p99 {} ms ({} samples)", percentile(&lags, 0.5), percentile(&lags, 0.99), lags.len());
        until_converged(&wan).await;

        // Outage under half load, then catch-up.
        let base = records + (half * 10.0) as u64;
        for relay in wan.deployment.running.relays_into("b") {
            relay.set_partitioned(true);
        }
        let during = (half * outage.as_secs_f64()) as u64;
        write(&wan.client, base, base + during, Some(half)).await;
        let backlog = stat(&wan, |c| c.in_queue).await;
        for relay in wan.deployment.running.relays_into("b") {
            relay.set_partitioned(false);
        }
        let drain = until_converged(&wan).await;
        let catch_up = backlog as f64 / drain;
        println!("after a {} s outage at {half:.0}/s: {backlog} queued changes drained in {drain:.2} s = {catch_up:.0}/s, {:.1}x ingest", outage.as_secs(), catch_up / half);
    });
}
