//! Nothing acknowledged is lost in silence (DESIGN §13), end to end with real processes on two
//! one-node sites `a -> b`:
//! - writes beyond Aerospike's limits are refused at the edge with Aerospike's result codes, and
//!   the writes around them all ship;
//! - records the destination refuses for good are parked, counted, listed and shown
//!   (`degraded`, lag, `in_queue`), never hold the link back, leave the list when a newer
//!   version ships, ship once retried after the destination changed, or are discarded;
//! - a batch larger than a transport frame ships in several frames;
//! - a namespace the destination does not serve yet (topology skew) waits, queued, until it
//!   does, and is never dropped; records of an origin it does not accept yet (a forward it
//!   does not know of) are parked until a retry after it does;
//! - a shipper that stops on its own (a failing checkpoint) restarts, says why, and catches up.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use aerospike::{Client, Value, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, Namespace, Site, TestTopology, TopologyBuilder};
use ferry_xdr::link::LinkState;
use ferry_xdr::stats::LinkSnapshot;
use support::{Deployment, ferry_bin};

/// Sites `a` and `b` of one node each, namespace `test` with `b_max_record_size` at `b`, and
/// the link `a -> b` shipping every 20 ms.
fn sites(b_max_record_size: u32) -> TopologyBuilder {
    TopologyBuilder::new("parking")
        .add_site(Site::new("a", 1))
        .add_site(
            Site::new("b", 1).namespace(Namespace::new("test").max_record_size(b_max_record_size)),
        )
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
}

/// A write policy that waits out a slow fsync on a loaded machine.
fn patient() -> WritePolicy {
    let mut wp = WritePolicy::default();
    wp.base_policy.total_timeout = 10_000;
    wp
}

/// Writes keys `range` of set `set` with a small bin.
async fn write_small(client: &Client, set: &str, range: std::ops::Range<i64>) {
    let wp = patient();
    for i in range {
        client.put(&wp, &as_key!("test", set, i), &[as_bin!("v", i)]).await.expect("put");
    }
}

/// Waits until `done` holds for the link's stats at `a` (one node), or fails with them.
async fn wait_for(
    deployment: &Deployment,
    what: &str,
    done: impl Fn(&LinkSnapshot, u64) -> bool,
) -> LinkSnapshot {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = deployment.link_stats("a", "b").await.remove(0);
        let at_b = deployment.site_digest("b").await.records;
        if done(&stats, at_b) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; {at_b} records at b, link {stats:#?}\n{}",
            deployment.log_warnings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_aerospikes_limits_are_refused_at_the_edge_and_the_rest_ship() {
    let TestTopology { text, nodes } = sites(1 << 20).build();
    let deployment = Deployment::start(&text, nodes).await;
    let a = deployment.client("a").await;
    let addr = deployment.site("a")[0].client;
    let long_set = "s".repeat(64);
    let refused: [(&str, &str, usize, u8); 4] = [
        (&long_set, "v", 10, 4),            // set name over 63 bytes: parameter error
        (&"s".repeat(300), "v", 10, 4),     // far over (once stored truncated, unreadable)
        ("ok", "sixteen-bytes-16", 10, 21), // bin name over 15 bytes
        ("ok", "v", 2 << 20, 13),           // over max-record-size (1 MiB): record too big
    ];
    for (round, (set, bin, len, code)) in refused.into_iter().enumerate() {
        let keys = round as i64 * 150;
        write_small(&a, "ok", keys..keys + 150).await;
        let digest = 100 + round as u8;
        assert_eq!(
            support::raw::put_blob(addr, digest, set, bin, len).await,
            code,
            "set {} bytes, bin '{bin}', {len} B",
            set.len()
        );
    }
    // Right at the limits is fine.
    assert_eq!(support::raw::put_blob(addr, 200, &"s".repeat(63), "fifteen-bytes15", 10).await, 0);
    assert_eq!(support::raw::put_blob(addr, 201, "ok", "v", 1_000_000).await, 0);

    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    assert_eq!(deployment.site_digest("b").await.records, 602, "every acknowledged write");
    assert_eq!(deployment.receiver_sum("b", |c| c.refused).await, 0);
    let stats =
        wait_for(&deployment, "caught up", |s, _| s.counters.in_queue == 0 && s.counters.lag == 0)
            .await;
    assert_eq!((stats.state, stats.counters.parked), (Some(LinkState::Active), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_parked_shown_and_shipped_once_the_destination_takes_them() {
    let first = sites(64 << 10).build();
    let mut deployment = Deployment::start(&first.text, first.nodes.clone()).await;
    let a = deployment.client("a").await;
    let wp = patient();
    let big = |fill: u8| vec![as_bin!("v", Value::Blob(vec![fill; 200 << 10]))];
    write_small(&a, "s", 0..200).await;
    for k in 0..3 {
        a.put(&wp, &as_key!("test", "s", format!("big-{k}")), &big(k)).await.expect("big put");
    }
    write_small(&a, "s", 200..400).await;

    // The link moved past the three records b refuses: everything else arrived.
    let stats = wait_for(&deployment, "400 shipped, 3 parked", |s, at_b| {
        at_b == 400 && s.counters.parked == 3
    })
    .await;
    assert_eq!(stats.state, Some(LinkState::Degraded), "{stats:#?}");
    assert!(stats.counters.in_queue >= 3, "parked records are queued: {stats:#?}");
    assert!(stats.counters.lag > 0, "parked records are lag: {stats:#?}");
    let addr = deployment.site("a")[0].client;
    let parked = ferry::client::parked(addr, "b", 100).await.expect("parked list");
    assert_eq!(parked.len(), 3, "{parked:#?}");
    for record in &parked {
        assert_eq!((record.namespace.as_str(), record.set.as_str()), ("test", "s"));
        assert!(record.reason.contains("too big"), "{record:?}");
    }
    let listed = deployment.ferry_link(&["parked", "b"]);
    for record in &parked {
        assert!(listed.contains(&record.digest.to_string()), "{listed}");
    }

    // A newer version that fits ships, and its record leaves the list.
    let key = as_key!("test", "s", "big-0");
    a.put(&wp, &key, &[as_bin!("v", "small now")]).await.expect("shrink");
    wait_for(&deployment, "the shrunk record shipped", |s, at_b| {
        at_b == 401 && s.counters.parked == 2
    })
    .await;

    // The destination now takes 1 MiB records: a retry ships the other two.
    let second = sites(1 << 20).build_like(&first);
    std::fs::write(deployment.topology_file(), &second.text).expect("new topology");
    deployment.kill_node("b-0");
    deployment.start_node("b-0").await;
    let retried = deployment.ferry_link(&["parked", "b", "--retry"]);
    assert!(retried.contains(": ok"), "{retried}");
    // `down` while b restarted; `active` again at the link's next exchange with it.
    let stats = wait_for(&deployment, "retried records shipped, link active", |s, at_b| {
        at_b == 403 && s.counters.parked == 0 && s.state == Some(LinkState::Active)
    })
    .await;
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    assert_eq!(stats.counters.discarded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_parked_records_are_dropped_and_counted() {
    let TestTopology { text, nodes } = sites(64 << 10).build();
    let deployment = Deployment::start(&text, nodes).await;
    let a = deployment.client("a").await;
    let wp = patient();
    for k in 0..2 {
        let bins = [as_bin!("v", Value::Blob(vec![k; 100 << 10]))];
        a.put(&wp, &as_key!("test", "s", k as i64), &bins).await.expect("big put");
    }
    write_small(&a, "s", 10..60).await;
    wait_for(&deployment, "2 parked", |s, at_b| at_b == 50 && s.counters.parked == 2).await;
    let discarded = deployment.ferry_link(&["parked", "b", "--discard"]);
    assert!(discarded.contains(": ok"), "{discarded}");
    let stats = wait_for(&deployment, "discarded", |s, _| s.counters.parked == 0).await;
    assert_eq!(stats.counters.discarded, 2);
    let stats =
        wait_for(&deployment, "caught up", |s, _| s.counters.in_queue == 0 && s.counters.lag == 0)
            .await;
    assert_eq!(stats.state, Some(LinkState::Active));
    assert_eq!(deployment.site_digest("b").await.records, 50, "b never got the discarded ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_transport_frame_ships_in_several() {
    // A 3 s accumulation window gathers all 24 records of ~900 KiB (21 MiB) into one batch,
    // over the transport's 16 MiB frame cap.
    let TestTopology { text, nodes } = TopologyBuilder::new("frames")
        .sites(&["a", "b"], 1)
        .link(Link::new("a", "b").period_ms(3_000).hot_key_ms(3_000))
        .build();
    let deployment = Deployment::start(&text, nodes).await;
    let a = deployment.client("a").await;
    let wp = patient();
    for k in 0..24u8 {
        // Incompressible, so compression cannot shrink the batch under the cap.
        let noise = support::noise(&mut (u64::from(k) + 1), 900 << 10);
        let bins = [as_bin!("v", Value::Blob(noise))];
        a.put(&wp, &as_key!("test", "big", i64::from(k)), &bins).await.expect("big put");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    assert_eq!(deployment.site_digest("b").await.records, 24);
    let stats = wait_for(&deployment, "caught up", |s, _| s.counters.in_queue == 0).await;
    assert_eq!((stats.counters.parked, stats.counters.success), (0, 24), "{stats:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipper_that_stops_on_its_own_restarts_says_why_and_catches_up() {
    let TestTopology { text, nodes } = sites(1 << 20).build();
    let deployment = Deployment::start(&text, nodes).await;
    let a = deployment.client("a").await;
    write_small(&a, "s", 0..50).await;
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;

    // The link's checkpoint can no longer be written: a directory stands where its file goes.
    let checkpoint =
        deployment.running.launcher().node_dir("a-0").join("digestlog").join("xdr-b.cursor");
    assert!(checkpoint.is_file(), "{} is the link's checkpoint", checkpoint.display());
    std::fs::remove_file(&checkpoint).expect("remove checkpoint");
    std::fs::create_dir_all(checkpoint.join("in-the-way")).expect("block checkpoint");
    write_small(&a, "s", 50..100).await;
    let stats = wait_for(&deployment, "a restart", |s, _| s.counters.restarts >= 1).await;
    let error = stats.error.clone().unwrap_or_default();
    assert!(error.contains("checkpoint") || error.contains("cursor"), "{stats:#?}");
    let status = Command::new(ferry_bin())
        .args(["status", "--json", "--dir"])
        .arg(deployment.topology_file().parent().expect("state dir"))
        .output()
        .expect("ferry status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("\"error\""), "status shows the shipper's error: {status}");

    // Cleared: the restarted shipper catches up and the error goes away.
    std::fs::remove_dir_all(&checkpoint).expect("unblock checkpoint");
    deployment.wait_converged("a", "b", Duration::from_secs(90)).await;
    assert_eq!(deployment.site_digest("b").await.records, 100);
    let stats = wait_for(&deployment, "the error cleared", |s, _| s.error.is_none()).await;
    assert_eq!(stats.state, Some(LinkState::Active));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_the_destination_does_not_serve_yet_waits_until_it_does() {
    let first = sites(1 << 20).build();
    let both = |builder: TopologyBuilder| {
        builder
            .namespace(Namespace::new("test"))
            .namespace(Namespace::new("extra"))
            .link(Link::new("a", "b").namespaces(&["test", "extra"]).period_ms(20).hot_key_ms(20))
    };
    let second = both(TopologyBuilder::new("parking").sites(&["a", "b"], 1)).build_like(&first);
    let mut deployment = Deployment::start(&first.text, first.nodes.clone()).await;

    // Topology skew: a restarts with a version that ships namespace `extra`, b still runs one
    // without it (as when b restarts later than a).
    std::fs::write(deployment.topology_file(), &second.text).expect("new topology");
    deployment.kill_node("a-0");
    deployment.start_node("a-0").await;
    let a = deployment.client("a").await;
    let wp = patient();
    for i in 0..50 {
        a.put(&wp, &as_key!("extra", "s", i), &[as_bin!("v", i)]).await.expect("put extra");
    }
    write_small(&a, "s", 0..50).await;
    wait_for(&deployment, "namespace test shipped", |_, at_b| at_b == 50).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = deployment.link_stats("a", "b").await.remove(0);
    assert!(stats.counters.in_queue >= 50, "b's refusals keep extra queued: {stats:#?}");
    assert!(stats.counters.lag > 0, "{stats:#?}");
    assert_eq!(stats.counters.parked, 0, "not a refusal for good: {stats:#?}");

    // b restarts with the new version: what waited ships, nothing was dropped.
    deployment.kill_node("b-0");
    deployment.start_node("b-0").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at_a = deployment.running.site_digest("a", "extra").await.expect("digest at a");
        let at_b = deployment.running.site_digest("b", "extra").await.expect("digest at b");
        if at_a == at_b {
            assert_eq!(at_b.records, 50);
            break;
        }
        assert!(Instant::now() < deadline, "extra: a {at_a:?}, b {at_b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(&deployment, "caught up", |s, _| s.counters.in_queue == 0 && s.counters.lag == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_origin_the_destination_does_not_accept_are_parked_until_it_does() {
    // c ships to a, and a forwards c's writes to b once both agree that it does.
    let three = |forward: bool| {
        TopologyBuilder::new("parking")
            .sites(&["a", "b", "c"], 1)
            .link(Link::new("c", "a").period_ms(20).hot_key_ms(20))
            .link(Link::new("a", "b").period_ms(20).hot_key_ms(20).forward(forward))
    };
    let first = three(false).build();
    let second = three(true).build_like(&first);
    let mut deployment = Deployment::start(&first.text, first.nodes.clone()).await;

    // Topology skew: a restarts forwarding; b still runs the version where a does not.
    std::fs::write(deployment.topology_file(), &second.text).expect("new topology");
    deployment.kill_node("a-0");
    deployment.start_node("a-0").await;
    let c = deployment.client("c").await;
    write_small(&c, "from-c", 0..20).await;
    write_small(&deployment.client("a").await, "from-a", 0..20).await;

    // b takes a's own writes and refuses c's, one by one: a parks them and says why.
    let stats = wait_for(&deployment, "c's records parked", |s, at_b| {
        at_b == 20 && s.counters.parked == 20
    })
    .await;
    assert_eq!(stats.state, Some(LinkState::Degraded), "{stats:#?}");
    let parked = ferry::client::parked(deployment.site("a")[0].client, "b", 100).await;
    let parked = parked.expect("parked list");
    assert!(parked.iter().all(|r| r.set == "from-c" && r.reason.contains("origin")), "{parked:#?}");

    // b restarts with the version that lets a forward: a retry ships them all.
    deployment.kill_node("b-0");
    deployment.start_node("b-0").await;
    deployment.ferry_link(&["parked", "b", "--retry"]);
    wait_for(&deployment, "c's records shipped, link active", |s, at_b| {
        at_b == 40 && s.counters.parked == 0 && s.state == Some(LinkState::Active)
    })
    .await;
    assert_eq!(deployment.site_digest("c").await.records, 20);
}
