//! What the node's Aerospike semantics mean for XDR, end to end with real processes on two
//! one-node sites and the `aerospike` crate: a truncation is not shipped (as in Aerospike), and
//! a destination that truncated a set drops versions from before its cut-off that arrive later;
//! a read that touches the record (read-touch-ttl-percent) and a write removing the record's
//! last bin are writes like any other, and ship. The admin port's `/metrics` (Prometheus, under
//! Aerospike's exporter names) and `/health` tell the same story.

mod support;

use std::time::{Duration, Instant};

use aerospike::{
    AdminPolicy, Bins, Client, Expiration, Key, ReadPolicy, ReadTouchTtl, Value, WritePolicy,
    as_bin, as_key,
};
use ferry_tests::{Link, Site, TestTopology, TopologyBuilder};
use support::Deployment;

/// Sites `a` and `b`, one node each, linked `a -> b`.
async fn two_sites(name: &str) -> Deployment {
    let TestTopology { text, nodes } = TopologyBuilder::new(name)
        .add_site(Site::new("a", 1))
        .add_site(Site::new("b", 1))
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    Deployment::start(&text, nodes).await
}

/// Waits until `check` holds for the record `key` read from `client` (`None`: not found).
async fn wait_for(
    client: &Client,
    key: &Key,
    what: &str,
    check: impl Fn(Option<&aerospike::Record>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = client.get(&ReadPolicy::default(), key, Bins::All).await.ok();
        if check(found.as_ref()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {key:?} is {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a marker at `a` and waits until `b` has it: everything `a` logged before has been
/// shipped (the link ships in log order).
async fn ship_marker(a: &Client, b: &Client, n: i64) {
    let key = as_key!("test", "marker", n);
    a.put(&WritePolicy::default(), &key, &[as_bin!("n", n)]).await.expect("marker");
    wait_for(b, &key, "the marker reaches b", |r| r.is_some()).await;
}

async fn count(client: &Client, set: &str, keys: std::ops::Range<i64>) -> usize {
    let mut found = 0;
    for i in keys {
        let key = as_key!("test", set, i);
        found += usize::from(client.get(&ReadPolicy::default(), &key, Bins::All).await.is_ok());
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_is_not_shipped_and_a_truncated_destination_drops_older_versions() {
    let deployment = two_sites("truncation").await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);
    let wp = WritePolicy::default();
    for i in 0..20 {
        a.put(&wp, &as_key!("test", "t", i), &[as_bin!("v", i)]).await.expect("put");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;

    // Truncating at the source does not reach the destination.
    a.truncate(&AdminPolicy::default(), "test", "t", 0).await.expect("truncate at a");
    assert_eq!(count(&a, "t", 0..20).await, 0, "truncated at a");
    ship_marker(&a, &b, 1).await;
    assert_eq!(count(&b, "t", 0..20).await, 20, "Aerospike does not ship truncates");

    // Versions written at a before b truncates arrive after: b drops them as truncated.
    deployment.ferry_link(&["pause", "b"]);
    for i in 0..10 {
        a.put(&wp, &as_key!("test", "u", i), &[as_bin!("v", i)]).await.expect("put");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.truncate(&AdminPolicy::default(), "test", "u", 0).await.expect("truncate at b");
    deployment.ferry_link(&["resume", "b"]);
    ship_marker(&a, &b, 2).await;
    assert_eq!(count(&b, "u", 0..10).await, 0, "older than b's truncation: dropped");
    assert_eq!(count(&a, "u", 0..10).await, 10, "a keeps its own");
    let parked = deployment.link_sum("a", "b", |c| c.parked).await;
    assert_eq!(parked, 0, "a dropped version is settled, not parked");

    // A write after the truncation is newer than the cut-off and ships as usual.
    a.put(&wp, &as_key!("test", "u", 3), &[as_bin!("v", "again")]).await.expect("rewrite");
    wait_for(&b, &as_key!("test", "u", 3), "the rewrite reaches b", |r| r.is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_touches_and_removing_the_last_bin_ship() {
    let deployment = two_sites("touch").await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);

    // Removing the only bin deletes the record at a, and the delete ships.
    let gone = as_key!("test", "s", "gone");
    a.put(&WritePolicy::default(), &gone, &[as_bin!("v", 1)]).await.expect("put");
    wait_for(&b, &gone, "the record reaches b", |r| r.is_some()).await;
    a.put(&WritePolicy::default(), &gone, &[as_bin!("v", Value::Nil)]).await.expect("remove bin");
    assert!(!a.exists(&ReadPolicy::default(), &gone).await.expect("exists at a"));
    wait_for(&b, &gone, "the delete reaches b", |r| r.is_none()).await;

    // A read late in the record's life touches it (a new generation, the TTL renewed), and
    // the touch ships.
    let touched = as_key!("test", "s", "touched");
    let ttl = WritePolicy { expiration: Expiration::Seconds(3), ..WritePolicy::default() };
    a.put(&ttl, &touched, &[as_bin!("v", 1)]).await.expect("put with ttl");
    wait_for(&b, &touched, "the record reaches b", |r| r.is_some_and(|r| r.generation == 1)).await;
    let first = b.get(&ReadPolicy::default(), &touched, Bins::All).await.expect("at b");
    // With 3 s to live, 80% of the TTL is left for the first 0.6 s: read after that (and a
    // whole second later, so the renewed expiry is a later second).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut read = ReadPolicy::default();
    read.base_policy.read_touch_ttl = ReadTouchTtl::Percent(80);
    let record = a.get(&read, &touched, Bins::All).await.expect("read at a");
    assert_eq!(record.generation, 2, "the read touched the record");
    wait_for(&b, &touched, "the touch reaches b", |r| {
        r.is_some_and(|r| r.generation == 2 && r.expiration() > first.expiration())
    })
    .await;
}

/// The value of the Prometheus series `series` (name and labels after the common ones).
fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_show_the_link_and_the_namespace() {
    let deployment = two_sites("metrics").await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);
    for i in 0..30 {
        a.put(&WritePolicy::default(), &as_key!("test", "m", i), &[as_bin!("v", i)])
            .await
            .expect("put");
    }
    a.delete(&WritePolicy::default(), &as_key!("test", "m", 0)).await.expect("delete");
    ship_marker(&a, &b, 1).await;
    let admin = deployment.site("a")[0].admin;
    let token = deployment.token(ferry_auth::Role::ReadOnly);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (code, text) = ferry_tests::http(admin, Some(&token), "GET", "/metrics");
        assert_eq!(code, 200, "{text}");
        if metric(&text, "aerospike_xdr_in_queue", "dc=\"b\"") == Some(0.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "the link never showed caught up:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let site = "cluster_name=\"a\"";
    assert!(text.contains(site), "{text}");
    // 30 puts, a delete and the marker: 32 changes, acknowledged by b or folded into a later
    // change of the same key (the delete of a key just written).
    let dc_b = "dc=\"b\"";
    let success = metric(&text, "aerospike_xdr_success", dc_b).expect("success");
    let folded = metric(&text, "aerospike_xdr_hot_keys", dc_b).expect("hot keys");
    assert_eq!(success + folded, 32.0, "{text}");
    assert_eq!(metric(&text, "aerospike_xdr_lag", "dc=\"b\""), Some(0.0), "{text}");
    assert_eq!(metric(&text, "ferry_xdr_parked", "dc=\"b\""), Some(0.0), "{text}");
    assert_eq!(metric(&text, "aerospike_namespace_objects", "ns=\"test\""), Some(30.0));
    assert_eq!(metric(&text, "aerospike_namespace_tombstones", "ns=\"test\""), Some(1.0));
    assert!(metric(&text, "ferry_storage_fsync_seconds_count", site).is_some_and(|n| n > 0.0));
    assert!(metric(&text, "ferry_digestlog_bytes", site).is_some_and(|n| n > 0.0));
    assert!(text.contains("# TYPE aerospike_xdr_success counter"), "{text}");
    assert_eq!(
        metric(&text, "ferry_xdr_log_time_left", dc_b),
        Some(f64::INFINITY),
        "idle: no limit"
    );
    // Every series the Grafana dashboard queries is exported.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana/ferry-xdr.json"))
            .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for expr in panels.iter().flat_map(|p| p["targets"].as_array().expect("targets")) {
        let expr = expr["expr"].as_str().expect("expr");
        let series = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("aerospike_") || word.starts_with("ferry_"));
        for name in series {
            assert!(
                text.contains(&format!("\n{name}{{")),
                "the dashboard's {name} is not exported:\n{text}"
            );
        }
    }

    let (code, body) = ferry_tests::http(admin, Some(&token), "GET", "/health");
    assert_eq!((code, body.contains("\"ok\"")), (200, true), "{body}");
}
