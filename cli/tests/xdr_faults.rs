//! XDR under faults, with real processes: SIGKILL of a source node mid-shipment and of a
//! destination node mid-apply; active-active writes to the same keys under `last-update-time`;
//! a link held paused until the digest log overflows, then recovered by a store scan; and a
//! rewind that re-ships history; a full disk under a source node (storage, digest log and its
//! own log file), refused with an error code, then recovered after a restart. Each ends with
//! both sites holding identical versions.

mod support;

use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{ConflictPolicy, Link, Namespace, TestTopology, TopologyBuilder};
use futures::stream::{self, StreamExt};
use support::Deployment;

/// The link `from -> to`, shipping every 20 ms with a 20 ms hot-key window.
fn link(from: &str, to: &str) -> Link {
    Link::new(from, to).period_ms(20).hot_key_ms(20)
}

async fn connect(deployment: &Deployment, site: &str) -> Client {
    let seed = deployment.site(site)[0].client.to_string();
    Client::new(&ClientPolicy::default(), &seed).await.expect("connect")
}

/// Writes keys `range` of set `set` with 16 in flight; returns how many were acknowledged.
async fn write_keys(client: &Client, set: &str, range: std::ops::Range<i64>, tag: &str) -> usize {
    let wp = WritePolicy::default();
    let (wp, tag) = (&wp, tag);
    stream::iter(range)
        .map(|i| async move {
            let key = as_key!("test", set, i);
            client.put(wp, &key, &[as_bin!("v", i), as_bin!("tag", tag)]).await.is_ok()
        })
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

/// Sites `a` and `b` of `nodes` nodes each with the link `a -> b` and 64 KiB of digest log per
/// node (about 1 300 entries before the oldest segments go), and a client of `a`.
async fn small_log_sites(nodes: usize) -> (Deployment, Client) {
    let TestTopology { text: topology, nodes } =
        TopologyBuilder::new("xdr-test").sites(&["a", "b"], nodes).link(link("a", "b")).build();
    let args = vec!["--digest-log-cap".to_owned(), (64 * 1024).to_string()];
    let deployment = Deployment::start_with(&topology, nodes, args).await;
    let a = connect(&deployment, "a").await;
    (deployment, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_source_and_destination_nodes_converge_after_restart() {
    let TestTopology { text: topology, nodes } =
        TopologyBuilder::new("xdr-test").sites(&["a", "b"], 3).link(link("a", "b")).build();
    let mut deployment = Deployment::start(&topology, nodes).await;
    let a = connect(&deployment, "a").await;
    assert_eq!(write_keys(&a, "k", 0..1_500, "first").await, 1_500);

    // Kill a destination node while batches are arriving and a source node while it ships.
    let writes = {
        let a = connect(&deployment, "a").await;
        tokio::spawn(async move { write_keys(&a, "k", 1_500..4_000, "second").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| {
        deployment.kill_node("b-2");
        deployment.kill_node("a-1");
    });
    let acknowledged = writes.await.expect("writer");
    assert!(acknowledged >= 1_000, "writes to the live source nodes go on: {acknowledged}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployment.start_node("b-2").await;
    deployment.start_node("a-1").await;
    deployment.wait_converged("a", "b", Duration::from_secs(90)).await;
    let records = deployment.site_digest("a").await.records;
    assert!(records >= 1_500 + acknowledged as u64, "{records} records for {acknowledged} acks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_writes_to_the_same_keys_converge_under_last_update_time() {
    let TestTopology { text: topology, nodes } = TopologyBuilder::new("xdr-test")
        .sites(&["a", "b"], 3)
        .namespace(Namespace::new("test").conflict_policy(ConflictPolicy::LastUpdateTime))
        .link(link("a", "b"))
        .link(link("b", "a"))
        .build();
    let deployment = Deployment::start(&topology, nodes).await;
    let (a, b) = (connect(&deployment, "a").await, connect(&deployment, "b").await);
    for round in 0..3 {
        let (tag_a, tag_b) = (format!("a{round}"), format!("b{round}"));
        let (at_a, at_b) = tokio::join!(
            write_keys(&a, "shared", 0..600, &tag_a),
            write_keys(&b, "shared", 0..900, &tag_b),
        );
        assert_eq!((at_a, at_b), (600, 900));
    }
    deployment.wait_converged("a", "b", Duration::from_secs(90)).await;
    assert_eq!(deployment.site_digest("a").await.records, 900);

    // Converged means quiet: nothing ships back and forth any more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shipped = |d: &'static str, s: &'static str| deployment.link_sum(s, d, |c| c.success);
    let before = (shipped("b", "a").await, shipped("a", "b").await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((shipped("b", "a").await, shipped("a", "b").await), before, "ping-pong");
    // Overlapping writes lost conflicts somewhere, and were recorded.
    let lost = deployment.receiver_sum("a", |c| c.lost_conflict).await
        + deployment.receiver_sum("b", |c| c.lost_conflict).await;
    assert!(lost > 0, "overlapping writes of both sites conflict");
    let listed = deployment.ferry_link(&["conflicts", "b:a", "--limit", "5"]);
    assert!(listed.lines().count() > 1, "conflicts listed:\n{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_held_until_the_log_overflows_recovers_everything_and_rewind_reships() {
    let (deployment, a) = small_log_sites(3).await;
    assert_eq!(write_keys(&a, "o", 0..300, "before").await, 300);
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;

    let paused = deployment.ferry_link(&["pause", "a:b"]);
    assert_eq!(paused.matches(": ok").count(), 3, "{paused}");
    let status = deployment.ferry_link(&["status", "b"]);
    assert_eq!(status.matches("state=paused").count(), 3, "{status}");
    assert_eq!(write_keys(&a, "o", 300..9_000, "held").await, 8_700);
    deployment.ferry_link(&["resume", "a:b"]);
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    assert!(deployment.link_sum("a", "b", |c| c.recoveries).await >= 1, "overflow recovered");
    assert_eq!(deployment.site_digest("b").await.records, 9_000);

    // Rewind: everything is shipped again (the destination already has it: no change).
    let shipped = deployment.link_sum("a", "b", |c| c.success).await;
    deployment.ferry_link(&["rewind", "a:b", "--to", "all"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while deployment.link_sum("a", "b", |c| c.success).await < shipped + 9_000 {
        assert!(Instant::now() < deadline, "rewind did not re-ship every record");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_overflowing_again_during_a_recovery_scan_starts_another_scan() {
    let (deployment, a) = small_log_sites(1).await;
    deployment.ferry_link(&["pause", "a:b"]);
    assert_eq!(write_keys(&a, "o", 0..5_000, "held").await, 5_000);
    // Resume into an overflow recovery and keep writing through the scan, so the log
    // overflows again before the scan is acknowledged.
    deployment.ferry_link(&["resume", "a:b"]);
    assert_eq!(write_keys(&a, "o", 5_000..15_000, "during").await, 10_000);
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    assert_eq!(deployment.site_digest("b").await.records, 15_000);
    let stats = deployment.link_stats("a", "b").await.remove(0);
    assert!(stats.counters.recoveries >= 2, "a second overflow, a second scan: {stats:#?}");
    assert_eq!(
        stats.counters.restarts,
        0,
        "handled by the shipper, not a restart: {stats:#?}\n{}",
        deployment.log_warnings()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ships_everything_logged_and_waits_for_it() {
    let TestTopology { text: topology, nodes } =
        TopologyBuilder::new("xdr-test").sites(&["a", "b"], 2).link(link("a", "b")).build();
    let deployment = Deployment::start(&topology, nodes).await;
    let a = connect(&deployment, "a").await;
    deployment.ferry_link(&["pause", "a:b"]);
    assert_eq!(write_keys(&a, "d", 0..500, "held").await, 500);
    assert_eq!(deployment.site_digest("b").await.records, 0, "paused: nothing shipped yet");
    // Drain resumes the link and returns only once every node had it all acknowledged.
    let drained = deployment.ferry_link(&["drain", "a:b"]);
    assert!(drained.contains("drained on every node"), "{drained}");
    assert_eq!(deployment.site_digest("b").await, deployment.site_digest("a").await);
    assert_eq!(deployment.link_sum("a", "b", |c| c.drains).await, 2, "one per source node");
}

/// A tmpfs of a fixed size mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it) on `dir`; `None` when this
    /// process may not mount (not root).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Grows (or shrinks) the mounted file system to `size`.
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} to {size}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_loses_nothing_acknowledged() {
    let TestTopology { text, nodes } =
        TopologyBuilder::new("full-disk").sites(&["a", "b"], 1).link(link("a", "b")).build();
    let mut deployment = Deployment::start(&text, nodes).await;

    // a-0's whole state (storage and digest log) moves onto an 8 MiB disk.
    deployment.kill_node("a-0");
    let node_dir = deployment.running.launcher().node_dir("a-0");
    let moved = deployment.dir.path().join("a-0.moved");
    std::fs::rename(&node_dir, &moved).expect("move the node's state aside");
    std::fs::create_dir(&node_dir).expect("mount point");
    let Some(tmpfs) = Tmpfs::mount(&node_dir, "8m") else {
        let root = std::env::var("USER").is_ok_and(|user| user == "root");
        assert!(!root, "root could not mount a tmpfs");
        eprintln!("skipped: mounting a small tmpfs for the full disk needs root");
        return;
    };
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(moved.join("."))
        .arg(&node_dir)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copy the node's state onto the small disk");
    deployment.start_node("a-0").await;
    let a = connect(&deployment, "a").await;

    // 4 KiB values that do not compress fill the disk within about 2 000 writes.
    let wp = WritePolicy::default();
    let value = |i: i64| support::noise(&mut (i as u64 + 1), 4 << 10);
    let (mut acknowledged, mut refusals) = (Vec::new(), Vec::new());
    for i in 0..5_000 {
        match a.put(&wp, &as_key!("test", "full", i), &[as_bin!("v", value(i))]).await {
            Ok(()) => acknowledged.push(i),
            Err(error) => refusals.push((i, error.to_string())),
        }
        if refusals.len() == 20 {
            break;
        }
    }
    assert_eq!(refusals.len(), 20, "the disk never filled: {} writes taken", acknowledged.len());
    assert!(!acknowledged.is_empty(), "no write was taken: {refusals:?}");
    // Refused with an answer, by a node that still serves reads, though its log is on the
    // full disk too.
    for (_, refusal) in &refusals {
        assert!(refusal.contains("Server error"), "refused with an error code: {refusal}");
    }
    let read = aerospike::ReadPolicy::default();
    let first = as_key!("test", "full", acknowledged[0]);
    a.get(&read, &first, aerospike::Bins::All).await.expect("the full node still serves reads");
    // The first refused write was stored before its fsync failed; once the store is poisoned,
    // refused writes are never stored, so no reader sees them.
    for &(i, _) in &refusals[1..] {
        let found = a.get(&read, &as_key!("test", "full", i), aerospike::Bins::All).await;
        assert!(found.is_err(), "refused key {i} is visible");
    }

    // Space comes back and the node restarts: every acknowledged write is there and ships.
    tmpfs.resize("256m");
    deployment.kill_node("a-0");
    deployment.start_node("a-0").await;
    let a = connect(&deployment, "a").await;
    for &i in &acknowledged {
        let record = a.get(&read, &as_key!("test", "full", i), aerospike::Bins::All).await;
        let record = record.unwrap_or_else(|e| panic!("acknowledged key {i} lost at a: {e}"));
        assert_eq!(record.bins.get("v"), Some(&aerospike::Value::Blob(value(i))), "key {i}");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    let at_b = deployment.site_digest("b").await.records;
    assert!(at_b >= acknowledged.len() as u64, "b holds {at_b} of {}", acknowledged.len());
    a.put(&wp, &as_key!("test", "full", "after"), &[as_bin!("v", 1)]).await.expect("writes again");
    eprintln!(
        "{} writes acknowledged before the disk filled; refused with: {}",
        acknowledged.len(),
        refusals[0].1
    );
    deployment.kill_node("a-0");
}
