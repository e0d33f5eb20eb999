//! A 5 s partition through the relay: the sender reconnects, and every request it issued either
//! completed or failed with a retryable error — none is lost silently.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferry_transport::relay::{LinkShape, Relay, RelayConfig};
use ferry_transport::{Backoff, Frame, TransportError, TransportSettings};
use tokio::sync::Mutex;

#[derive(Debug, Default)]
struct Tally {
    issued: u64,
    completed: u64,
    completed_after_heal: u64,
    retryable: BTreeMap<&'static str, u64>,
    fatal: Vec<String>,
}

fn kind(e: &TransportError) -> &'static str {
    match e {
        TransportError::ConnectionLost { .. } => "connection lost",
        TransportError::Timeout { .. } => "timeout",
        TransportError::Connect { .. } => "connect",
        TransportError::Backoff { .. } => "backoff",
        _ => "other",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_partition_loses_no_request_silently() {
    let pki = Pki::new();
    let settings = TransportSettings {
        keep_alive: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(6),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
            jitter: 0.5,
        },
        ..fast_settings()
    };
    let server = pki.endpoint("us-east", "use-a", settings.clone());
    server.serve(Arc::new(Echo)).expect("serve");
    let mut config = RelayConfig::new("127.0.0.1:0".parse().expect("addr"), addr(&server))
        .with_shape(LinkShape { delay: Duration::from_millis(5), ..LinkShape::default() });
    config.seed = Some(1);
    let relay = Relay::start(config).await.expect("relay");
    let sender = pki.endpoint("eu-west", "euw_a", settings);
    let client = sender.client(id("us-east", "use-a"), relay.listen_addr());

    let tally = Arc::new(Mutex::new(Tally::default()));
    let healed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..16u64 {
        let (client, tally, healed, stop) =
            (client.clone(), tally.clone(), healed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Bounded in count as well as in time.
            for n in 0..20_000u64 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let i = w * 1_000_000 + n;
                let issued_after_heal = healed.load(Ordering::SeqCst);
                tally.lock().await.issued += 1;
                let body = payload(i, (i as usize * 131) % 3000);
                match client.request(Frame::new(ty(ECHO), body.clone())).await {
                    Ok(reply) => {
                        assert_eq!(reply.payload, body, "request {i} corrupted");
                        let mut t = tally.lock().await;
                        t.completed += 1;
                        if issued_after_heal {
                            t.completed_after_heal += 1;
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        *tally.lock().await.retryable.entry(kind(&e)).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => tally.lock().await.fatal.push(e.to_string()),
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tally.lock().await.completed;
    relay.set_partitioned(true);
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.set_partitioned(false);
    healed.store(true, Ordering::SeqCst);
    eprintln!("partition lifted after {:?}", cut.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("worker");
    }

    let t = tally.lock().await;
    let retryable: u64 = t.retryable.values().sum();
    let relayed = relay.counters();
    eprintln!(
        "issued {} completed {} (before partition {before}, after heal {}) retryable {:?} fatal {:?}; dials {}; relay dropped {}",
        t.issued,
        t.completed,
        t.completed_after_heal,
        t.retryable,
        t.fatal,
        sender.stats().dials,
        relayed.forward.dropped_partition + relayed.reverse.dropped_partition,
    );
    assert!(t.fatal.is_empty(), "non-retryable failures: {:?}", t.fatal);
    assert_eq!(t.issued, t.completed + retryable, "every request has an outcome");
    assert!(before > 0, "traffic flowed before the partition");
    assert!(retryable > 0, "the partition was felt");
    assert!(t.completed_after_heal > 0, "traffic flows again after the partition");
    assert!(sender.stats().dials >= 2, "the sender reconnected");
    assert!(server.stats().connections_accepted >= 2);
    assert!(client.status().await.connected);
    relay.shutdown().await;
}
