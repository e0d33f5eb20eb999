//! Digest log append benchmark (`cargo bench -p ferry-digestlog --bench append`).
//!
//! Measures, in one run on one disk (set `DIGESTLOG_BENCH_DIR` to choose it; default: the
//! system temp dir):
//! - the raw fdatasync rate: one record written and fdatasynced at a time;
//! - the raw group-commit ceiling for W writers: W records written with one write and one
//!   fdatasync, repeated — the most a group-commit log can do with W outstanding appends;
//! - the digest log: durable appends/s and p50/p99 latency with W = 1, 16, 128 concurrent
//!   tokio tasks appending in a loop;
//!
//! Each throughput figure is the median of 3 alternating 1-second rounds (the machine may be
//! shared, so disk noise should hit the baseline and the log alike).
//! - the time to open a 1 GiB log whose active segment is nearly full (the worst case: open
//!   scans the active segment only); `DIGESTLOG_BENCH_OPEN_MIB` changes the size, 0 skips.

#![allow(clippy::print_stdout, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_digestlog::{CommitPolicy, Config, Entry, Op, RECORD_LEN};

/// Length of one measurement. Each figure is the median of `ROUNDS` measurements, the raw
/// ceiling and the log measured alternately so that disk noise hits both alike.
const RUN: Duration = Duration::from_secs(1);
const ROUNDS: usize = 3;

fn entry(i: u64) -> Entry {
    let mut digest = [0u8; 20];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    Entry {
        digest: digest.into(),
        namespace: 1,
        partition: (i % 4096) as u16,
        generation: 1,
        lut_ms: 1_700_000_000_000 + i,
        op: Op::Write,
        xdr_applied: false,
        origin_site: 1,
        copy: false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// W records per write + fdatasync, as fast as possible: appends/s.
fn raw_group_commit(dir: &Path, width: usize) -> f64 {
    // Prepared like a log segment: created, a header written and synced, the directory
    // synced, then reopened for appending.
    let path = dir.join(format!("raw-{width}"));
    let mut f = std::fs::File::create(&path).expect("create raw file");
    f.write_all(&[0u8; ferry_digestlog::HEADER_LEN]).expect("write header");
    f.sync_data().expect("fdatasync header");
    std::fs::File::open(dir).and_then(|d| d.sync_all()).expect("fsync directory");
    drop(f);
    let mut f = OpenOptions::new().append(true).open(&path).expect("open raw file");
    let batch = vec![0xabu8; RECORD_LEN * width];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        f.write_all(&batch).expect("write");
        f.sync_data().expect("fdatasync");
        n += width as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(path).expect("remove raw file");
    rate
}

/// Durable appends/s, p50 and p99 latency, appends per fsync.
async fn log_appends(dir: &Path, width: usize) -> (f64, Duration, Duration, f64) {
    let sub = dir.join(format!("log-{width}"));
    let (log, _) = ferry_digestlog::open_dir(&sub, Config::default()).expect("open log");
    let log = Arc::new(log);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..width as u64 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w << 32;
            while start.elapsed() < RUN {
                let t = Instant::now();
                log.append(entry(i)).await.expect("append");
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let per_sync = all.len() as f64 / log.metrics().syncs.max(1) as f64;
    Arc::try_unwrap(log).expect("sole owner").close();
    std::fs::remove_dir_all(sub).expect("remove log dir");
    (all.len() as f64 / secs, percentile(&all, 0.5), percentile(&all, 0.99), per_sync)
}

async fn open_time(dir: &Path, mib: u64) {
    let sub = dir.join("open");
    let config = Config {
        commit: CommitPolicy {
            max_batch: 65_536,
            ..CommitPolicy::buffered(Duration::from_millis(200))
        },
        size_cap: 64 << 30,
        ..Config::default()
    };
    // Just under `mib`, so the active segment is nearly full: the worst case for open,
    // which scans the active segment.
    let entries = ((mib << 20) / RECORD_LEN as u64).saturating_sub(1000);
    let fill = Instant::now();
    {
        let (log, _) = ferry_digestlog::open_dir(&sub, config).expect("open log");
        let log = Arc::new(log);
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < entries {
                    log.append(entry(i)).await.expect("append");
                    i += 8;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        Arc::try_unwrap(log).expect("sole owner").close();
    }
    let filled = fill.elapsed();
    let t = Instant::now();
    let (log, _) = ferry_digestlog::open_dir(&sub, Config::default()).expect("reopen");
    let opened = t.elapsed();
    let last = log.flushed_lsn();
    drop(log);
    let ins = ferry_digestlog::inspect(&sub).expect("inspect");
    let bytes: u64 = ins.segments.iter().map(|s| s.bytes).sum();
    println!(
        "open: {} MiB log ({} segments, {last} entries, filled in {:.1} s): opened in {:.1} ms",
        bytes >> 20,
        ins.segments.len(),
        filled.as_secs_f64(),
        opened.as_secs_f64() * 1e3
    );
    std::fs::remove_dir_all(sub).expect("remove log dir");
}

fn main() {
    let root = std::env::var_os("DIGESTLOG_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(root).expect("bench dir");
    println!("digest log append benchmark in {}", dir.path().display());

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut rows = Vec::new();
    for width in [1usize, 16, 128] {
        let mut ceilings = Vec::new();
        let mut logs = Vec::new();
        for _ in 0..ROUNDS {
            ceilings.push(raw_group_commit(dir.path(), width));
            logs.push(rt.block_on(log_appends(dir.path(), width)));
        }
        ceilings.sort_by(f64::total_cmp);
        logs.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows.push((width, ceilings[ROUNDS / 2], logs[ROUNDS / 2]));
    }
    println!("raw fdatasync rate (one 54-byte record per fdatasync): {:.0}/s", rows[0].1);
    println!(
        "| writers | raw group-commit ceiling (appends/s) | digest log appends/s | p50 µs | p99 µs | appends per fsync |"
    );
    println!("|---|---|---|---|---|---|");
    for (width, ceiling, (rate, p50, p99, per_sync)) in rows {
        println!(
            "| {width} | {ceiling:.0} | {rate:.0} | {:.0} | {:.0} | {per_sync:.1} |",
            us(p50),
            us(p99)
        );
    }
    let mib =
        std::env::var("DIGESTLOG_BENCH_OPEN_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    if mib > 0 {
        rt.block_on(open_time(dir.path(), mib));
    }
}
