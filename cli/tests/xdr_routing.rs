//! What ships where, with real processes on three sites: set filters, loop prevention,
//! forwarding along a chain a → b → c, hot-key folding, and `max-throughput`.

mod support;

use std::time::{Duration, Instant};

use aerospike::{Bins, Client, ClientPolicy, ReadPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TestTopology, TopologyBuilder};
use futures::stream::{self, StreamExt};
use support::Deployment;

async fn connect(deployment: &Deployment, site: &str) -> Client {
    let seed = deployment.site(site)[0].client.to_string();
    Client::new(&ClientPolicy::default(), &seed).await.expect("connect")
}

async fn put_all(client: &Client, set: &str, keys: std::ops::Range<i64>) {
    let wp = WritePolicy::default();
    let wp = &wp;
    stream::iter(keys)
        .for_each_concurrent(16, |i| async move {
            client.put(wp, &as_key!("test", set, i), &[as_bin!("v", i)]).await.expect("put");
        })
        .await;
}

/// Generation of a record at a site, `None` if absent.
async fn generation(client: &Client, set: &str, key: i64) -> Option<u32> {
    client
        .get(&ReadPolicy::default(), &as_key!("test", set, key), Bins::None)
        .await
        .ok()
        .map(|r| r.generation)
}

/// Waits until `check` holds, or panics with `what` after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_loops_forwarding_and_hot_keys() {
    let fast = |from, to| Link::new(from, to).period_ms(20).hot_key_ms(300);
    let TestTopology { text: topology, nodes } = TopologyBuilder::new("xdr-test")
        .sites(&["a", "b", "c"], 2)
        .link(fast("a", "b").ignore_set(&["private"]))
        .link(fast("b", "c").forward(true))
        .link(fast("b", "a"))
        .build();
    let deployment = Deployment::start(&topology, nodes).await;
    let (a, b, c) = (
        connect(&deployment, "a").await,
        connect(&deployment, "b").await,
        connect(&deployment, "c").await,
    );

    put_all(&a, "public", 0..300).await;
    put_all(&a, "private", 0..50).await;
    let wp = WritePolicy::default();
    for i in 0..200 {
        a.put(&wp, &as_key!("test", "hot", 1), &[as_bin!("n", i)]).await.expect("hot put");
    }
    put_all(&b, "from-b", 0..100).await;

    // a's public records reach b, and c through b's forwarding link; the hot key arrives
    // in its final version.
    eventually("a's records at b and c", Duration::from_secs(60), || async {
        generation(&c, "public", 299).await.is_some()
            && generation(&c, "hot", 1).await == Some(200)
            && generation(&b, "hot", 1).await == Some(200)
    })
    .await;
    for key in [0, 150, 299] {
        assert_eq!(generation(&b, "public", key).await, Some(1));
        assert_eq!(generation(&c, "public", key).await, Some(1));
    }
    // b's own writes reach a and c.
    eventually("b's records at a and c", Duration::from_secs(60), || async {
        generation(&a, "from-b", 99).await.is_some() && generation(&c, "from-b", 99).await.is_some()
    })
    .await;
    // The ignored set never left a.
    for key in [0, 25, 49] {
        assert_eq!(generation(&b, "private", key).await, None);
        assert_eq!(generation(&c, "private", key).await, None);
    }
    let filtered = deployment.link_sum("a", "b", |c| c.filtered_out).await;
    assert_eq!(filtered, 50, "the private set is filtered at the source");
    // What b applied from a (300 public records and the hot key's versions) never ships back.
    assert!(deployment.link_sum("b", "a", |c| c.filtered_out).await > 300);
    assert!(deployment.link_sum("b", "a", |c| c.success).await <= 100, "only b's own writes");
    // 200 writes of one key inside the hot-key window ship as a few versions.
    let hot = deployment.link_sum("a", "b", |c| c.hot_keys).await;
    assert!(hot >= 150, "hot-key folding: {hot} of 199 repeats folded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_throughput_paces_the_link() {
    let link = Link::new("a", "b").period_ms(20).hot_key_ms(20).max_throughput(400);
    let TestTopology { text: topology, nodes } =
        TopologyBuilder::new("xdr-test").sites(&["a", "b"], 2).link(link).build();
    let deployment = Deployment::start(&topology, nodes).await;
    let a = connect(&deployment, "a").await;
    let started = Instant::now();
    put_all(&a, "paced", 0..2_000).await;
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    // Each of the two source nodes ships ~1 000 records at 400/s after a 1 s burst: >= 1.5 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_400), "2 000 records at 400/s per node took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expirations_ship_as_tombstones_with_ship_nsup_deletes() {
    let link = Link::new("a", "b").period_ms(20).hot_key_ms(20).ship_nsup_deletes(true);
    let TestTopology { text: topology, nodes } =
        TopologyBuilder::new("xdr-test").sites(&["a", "b"], 2).link(link).build();
    let args = vec!["--nsup-period-secs".to_owned(), "1".to_owned()];
    let deployment = Deployment::start_with(&topology, nodes, args).await;
    let a = connect(&deployment, "a").await;
    let short_lived =
        WritePolicy { expiration: aerospike::Expiration::Seconds(2), ..WritePolicy::default() };
    for i in 0..50 {
        a.put(&short_lived, &as_key!("test", "ttl", i), &[as_bin!("v", i)]).await.expect("put");
    }
    // The source's nsup turns each expiration into a tombstone and the link ships it: both
    // sites end with the same 50 tombstones (same generation and LUT, origin a).
    eventually("the source expired all 50 into tombstones", Duration::from_secs(30), || async {
        deployment.site_digest("a").await.tombstones == 50
    })
    .await;
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;
    assert!(deployment.link_sum("a", "b", |c| c.success).await >= 100, "writes and expirations");
    assert_eq!(generation(&connect(&deployment, "b").await, "ttl", 0).await, None);
}
