//! Deletes and expirations end the same at every site, end to end with real processes on two
//! one-node sites: a tombstone outlives its `tombstone-ttl` until every link has shipped it, so
//! a delete made while a link is paused longer than the TTL still arrives; an expiration
//! tombstone is stamped at the expiry, so a write made at the other site after the expiry wins
//! everywhere under both conflict policies; a record re-created after its tombstone was
//! reclaimed is a new incarnation and beats the tombstone and older copies (three sites).

mod support;

use std::time::{Duration, Instant};

use aerospike::{Bins, Expiration, ReadPolicy, Value, WritePolicy, as_bin, as_key};
use ferry_tests::{ConflictPolicy, Link, Namespace, Site, TestTopology, TopologyBuilder};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_after_an_expiry_beats_the_expiration_under_both_policies() {
    for policy in [ConflictPolicy::Generation, ConflictPolicy::LastUpdateTime] {
        let link =
            |from, to| Link::new(from, to).period_ms(20).hot_key_ms(20).ship_nsup_deletes(true);
        let TestTopology { text, nodes } = TopologyBuilder::new("expiry")
            .sites(&["a", "b"], 1)
            .namespace(Namespace::new("test").conflict_policy(policy))
            .link(link("a", "b"))
            .link(link("b", "a"))
            .build();
        let args = vec!["--nsup-period-secs".to_owned(), "3".to_owned()];
        let deployment = Deployment::start_with(&text, nodes, args).await;
        let (a, b) = (deployment.client("a").await, deployment.client("b").await);
        let key = as_key!("test", "e", 1);
        let short = WritePolicy { expiration: Expiration::Seconds(2), ..WritePolicy::default() };
        a.put(&short, &key, &[as_bin!("v", "from a, expires")]).await.expect("put at a");
        deployment.wait_converged("a", "b", Duration::from_secs(30)).await;

        // Right after the expiry b writes the key again; a only hears of it after its reclaim
        // turned the expired copy into a tombstone, later than b's write.
        deployment.ferry_link(&["pause", "b:a"]);
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let write = WritePolicy::default();
        b.put(&write, &key, &[as_bin!("v", "from b, after")]).await.expect("put at b");
        let deadline = Instant::now() + Duration::from_secs(30);
        while deployment.site_digest("a").await.tombstones == 0 {
            assert!(Instant::now() < deadline, "a never expired the record");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        deployment.ferry_link(&["resume", "b:a"]);
        deployment.wait_converged("a", "b", Duration::from_secs(30)).await;
        for (site, client) in [("a", &a), ("b", &b)] {
            let record = client.get(&ReadPolicy::default(), &key, Bins::All).await;
            let value = record.map(|r| r.bins.get("v").cloned());
            assert_eq!(
                value.ok().flatten(),
                Some(Value::from("from b, after")),
                "{policy:?} at {site}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_recreated_after_its_tombstone_was_reclaimed_wins_under_generation() {
    // b forwards what a ships to c, so b keeps a's tombstones until its link to c took them.
    let TestTopology { text, nodes } = TopologyBuilder::new("recreate")
        .sites(&["a", "b", "c"], 1)
        .namespace(Namespace::new("test").tombstone_ttl(2))
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .link(Link::new("b", "c").period_ms(20).hot_key_ms(20).forward(true))
        .build();
    let args = vec!["--nsup-period-secs".to_owned(), "1".to_owned()];
    let deployment = Deployment::start_with(&text, nodes, args).await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);
    let (wp, read) = (WritePolicy::default(), ReadPolicy::default());
    let key = as_key!("test", "r", 1);
    for generation in 1..=6 {
        a.put(&wp, &key, &[as_bin!("v", generation)]).await.expect("put at a");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;

    // b holds the delete's tombstone (generation 7) while its link to c is paused; a reclaims
    // its copy once shipped, so the record re-created there starts again at generation 1.
    deployment.ferry_link(&["pause", "b:c"]);
    assert!(a.delete(&wp, &key).await.expect("delete at a"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (at_a, at_b) = (deployment.site_digest("a").await, deployment.site_digest("b").await);
        if at_a.tombstones == 0 && at_b.tombstones == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "tombstones: a {at_a:?}, b {at_b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.put(&wp, &key, &[as_bin!("v", "re-created")]).await.expect("re-create at a");
    let recreated = a.get(&read, &key, Bins::All).await.expect("read at a");
    assert_eq!(recreated.generation, 1, "a restarted the record's generation");
    assert_eq!(deployment.site_digest("b").await.tombstones, 1, "b still holds generation 7");

    // Written more than tombstone-ttl after the delete, the re-created record is the later
    // write: it beats b's tombstone of a newer generation, at b and then at c.
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;
    deployment.ferry_link(&["resume", "b:c"]);
    deployment.wait_converged("b", "c", Duration::from_secs(30)).await;
    let c = deployment.client("c").await;
    for (site, client) in [("a", &a), ("b", &b), ("c", &c)] {
        let record = client.get(&read, &key, Bins::All).await.expect("read the record");
        assert_eq!(record.bins.get("v"), Some(&Value::from("re-created")), "at {site}");
    }
}
