//! XDR end to end, with real node processes and real QUIC between two sites of three nodes:
//! every write, update and delete at the active site arrives at the standby with the same
//! generation, LUT and bins, and the link's stats say so.

mod support;

use std::time::Duration;

use aerospike::{Bins, Client, ClientPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TestTopology, TopologyBuilder};
use futures::stream::{self, StreamExt};
use support::Deployment;

const KEYS: i64 = 100_000;

async fn connect(deployment: &Deployment, site: &str) -> Client {
    let seed = deployment.site(site)[0].client.to_string();
    Client::new(&ClientPolicy::default(), &seed).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_updates_and_deletes_at_the_active_site_arrive_at_the_standby() {
    let TestTopology { text: topology, nodes } = TopologyBuilder::new("xdr-test")
        .sites(&["a", "b"], 3)
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    let deployment = Deployment::start(&topology, nodes).await;
    let a = connect(&deployment, "a").await;
    // The test is about convergence, not latency: a write acknowledged after the client's
    // default 1 s deadline (a group-commit fsync stalled on a loaded 2-core CI machine) still
    // counts. No retries, so every write is applied exactly once as before.
    let mut wp = WritePolicy::default();
    wp.base_policy.total_timeout = 10_000;
    let wp = &wp;
    let a = &a;
    stream::iter(0..KEYS)
        .for_each_concurrent(32, |i| async move {
            let key = as_key!("test", "users", i);
            a.put(wp, &key, &[as_bin!("name", format!("user-{i}")), as_bin!("n", i)])
                .await
                .expect("put");
        })
        .await;
    stream::iter(0..KEYS / 4)
        .for_each_concurrent(32, |i| async move {
            let key = as_key!("test", "users", i);
            a.put(wp, &key, &[as_bin!("n", i * 10)]).await.expect("update");
        })
        .await;
    stream::iter(KEYS - KEYS / 10..KEYS)
        .for_each_concurrent(32, |i| async move {
            assert!(a.delete(wp, &as_key!("test", "users", i)).await.expect("delete"));
        })
        .await;

    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    let records = deployment.site_digest("b").await.records;
    assert_eq!(records, KEYS as u64, "every key, deleted ones as tombstones");

    let b = connect(&deployment, "b").await;
    let read = aerospike::ReadPolicy::default();
    let updated = b.get(&read, &as_key!("test", "users", 7), Bins::All).await.expect("get");
    assert_eq!(updated.generation, 2);
    assert_eq!(updated.bins.get("n"), Some(&aerospike::Value::Int(70)));
    assert_eq!(updated.bins.get("name"), Some(&aerospike::Value::from("user-7")));
    let deleted = b.get(&read, &as_key!("test", "users", KEYS - 1), Bins::All).await;
    assert!(deleted.is_err(), "a deleted record is gone at the standby too: {deleted:?}");

    // The source's stats agree: every change shipped, nothing lost or pending.
    let shipped = deployment.link_sum("a", "b", |c| c.success).await;
    assert!(shipped >= KEYS as u64, "success = {shipped}");
    assert_eq!(deployment.link_sum("a", "b", |c| c.parked).await, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while deployment.link_sum("a", "b", |c| c.in_queue).await > 0 {
        assert!(std::time::Instant::now() < deadline, "in_queue never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(deployment.link_sum("a", "b", |c| c.lag).await, 0);
    let applied = deployment.receiver_sum("b", |c| c.applied).await;
    assert!(applied >= KEYS as u64, "applied = {applied}");

    // The admin API shows the same link as JSON, and pauses it.
    let admin = deployment.site("a")[0].admin;
    let token = deployment.token(ferry_auth::Role::Operator);
    let http = |method: &str, path: &str| ferry_tests::http(admin, Some(&token), method, path);
    let (code, body) = http("GET", "/v1/xdr/links/b");
    assert_eq!(code, 200, "{body}");
    let link: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(link["success"].as_u64().expect("success") > 0, "{link}");
    assert_eq!(link["state"], "active");
    assert_eq!(http("GET", "/v1/xdr/links/nowhere").0, 404);
    assert_eq!(http("POST", "/v1/xdr/links/b/pause").0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !http("GET", "/v1/xdr/links/b").1.contains("\"paused\"") {
        assert!(std::time::Instant::now() < deadline, "the link never reported paused");
        std::thread::sleep(Duration::from_millis(50));
    }
}
