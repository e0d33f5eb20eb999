//! Deletes reach every linked site, end to end with real processes on two one-node sites
//! `a -> b`: a tombstone outlives its `tombstone-ttl` until every link has shipped it, so a
//! delete made while a link is paused longer than the TTL still arrives.

mod support;

use std::time::{Duration, Instant};

use aerospike::{Bins, ReadPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, Namespace, Site, TestTopology, TopologyBuilder};
use support::Deployment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_while_the_link_is_paused_longer_than_the_tombstone_ttl_still_ships() {
    let TestTopology { text, nodes } = TopologyBuilder::new("deletes")
        .add_site(Site::new("a", 1).namespace(Namespace::new("test").tombstone_ttl(2)))
        .add_site(Site::new("b", 1))
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    // Reclaim passes every second, so a tombstone could go right after its 2 s TTL.
    let args = vec!["--nsup-period-secs".to_owned(), "1".to_owned()];
    let deployment = Deployment::start_with(&text, nodes, args).await;
    let a = deployment.client("a").await;
    let wp = WritePolicy::default();
    for i in 0..50 {
        a.put(&wp, &as_key!("test", "d", i), &[as_bin!("v", i)]).await.expect("put");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;

    deployment.ferry_link(&["pause", "b"]);
    for i in 0..10 {
        assert!(a.delete(&wp, &as_key!("test", "d", i)).await.expect("delete"));
    }
    // Several TTLs and reclaim passes go by while the link holds the deletes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(deployment.site_digest("a").await.tombstones, 10, "the tombstones wait for b");
    deployment.ferry_link(&["resume", "b"]);

    let b = deployment.client("b").await;
    let read = ReadPolicy::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..50 {
        loop {
            let found = b.get(&read, &as_key!("test", "d", i), Bins::All).await.is_ok();
            if found == (i >= 10) {
                break;
            }
            assert!(Instant::now() < deadline, "key {i} at b: found = {found}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Shipped: now the TTL alone decides, and a's tombstones go.
    let deadline = Instant::now() + Duration::from_secs(30);
    while deployment.site_digest("a").await.tombstones > 0 {
        assert!(Instant::now() < deadline, "a's tombstones were never reclaimed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(deployment.site_digest("b").await.tombstones, 10, "b keeps its own (TTL 1 day)");
}
