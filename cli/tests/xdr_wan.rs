//! XDR across a simulated WAN: the destination site sits behind the project's userspace relay
//! (50 ms RTT, 1 % loss). Shipping keeps up through delay and loss; during a 30 s partition
//! under load the link's lag rises and the link reports itself down; after healing it drains,
//! lag returns to 0 and both sites hold identical versions.

mod support;

use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TestTopology, TopologyBuilder};
use ferry_transport::relay::LinkShape;
use support::Deployment;

const PARTITION: Duration = Duration::from_secs(30);

async fn write_range(client: &Client, keys: std::ops::Range<i64>, pace: Duration) {
    let wp = WritePolicy::default();
    for i in keys {
        let key = as_key!("test", "wan", i);
        client
            .put(&wp, &key, &[as_bin!("v", i), as_bin!("pad", "x".repeat(200))])
            .await
            .expect("put");
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}

/// The largest lag and the states the source nodes report for link `b`.
async fn link_view(deployment: &Deployment) -> (u64, Vec<String>) {
    let stats = deployment.link_stats("a", "b").await;
    let lag = stats.iter().map(|s| s.counters.lag).max().unwrap_or(0);
    let states = stats.iter().map(|s| s.state_name());
    (lag, states.collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_rides_out_delay_loss_and_a_partition() {
    let TestTopology { text: topology, nodes } = TopologyBuilder::new("xdr-test")
        .sites(&["a", "b"], 3)
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    let shape = LinkShape { delay: Duration::from_millis(25), loss: 0.01, ..LinkShape::default() };
    let deployment = Deployment::start_spec(&topology, nodes, |spec| {
        spec.relays = vec![("b".to_owned(), shape)];
    })
    .await;
    let relays: Vec<_> = deployment.running.relays_into("b").collect();
    let seed = deployment.site("a")[0].client.to_string();
    let client = Client::new(&ClientPolicy::default(), &seed).await.expect("connect");

    // Through delay and loss.
    write_range(&client, 0..1_500, Duration::ZERO).await;
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;

    // Partition under load: writes keep coming, nothing reaches the destination.
    for relay in &relays {
        relay.set_partitioned(true);
    }
    let started = Instant::now();
    let pace = PARTITION / 1_500;
    write_range(&client, 1_500..3_000, pace).await;
    while started.elapsed() < PARTITION {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lag, states) = link_view(&deployment).await;
    assert!(lag >= 20_000, "lag during a {PARTITION:?} partition under load: {lag} ms");
    assert!(states.iter().any(|s| s == "down"), "a partitioned link reports down: {states:?}");
    let queued = deployment.link_sum("a", "b", |c| c.in_queue).await;
    assert!(queued > 0, "changes wait in the log during the partition");

    // Heal: the backlog drains, lag returns to 0, both sites agree.
    for relay in &relays {
        relay.set_partitioned(false);
    }
    let healed = Instant::now();
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    let drained_in = healed.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lag, states) = link_view(&deployment).await;
        if lag == 0 && states.iter().all(|s| s == "active") {
            break;
        }
        assert!(Instant::now() < deadline, "after healing: lag {lag} ms, states {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(deployment.site_digest("b").await.records, 3_000);
    assert_eq!(deployment.link_sum("a", "b", |c| c.parked).await, 0);
    assert!(deployment.link_sum("a", "b", |c| c.retry_conn_reset).await > 0);
    eprintln!("backlog of {} s drained in {drained_in:?}", PARTITION.as_secs());
}
