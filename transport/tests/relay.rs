//! The WAN relay on loopback: order, delay, loss, rate, partition, control socket, and QUIC
//! traffic through it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ferry_transport::Frame;
use ferry_transport::relay::{Direction, LinkShape, Relay, RelayConfig, control};
use tokio::net::UdpSocket;

/// A UDP echo server on port 0.
async fn udp_echo() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

fn relay_config(forward: std::net::SocketAddr, shape: LinkShape) -> RelayConfig {
    let mut config =
        RelayConfig::new("127.0.0.1:0".parse().expect("addr"), forward).with_shape(shape);
    config.seed = Some(42);
    config
}

/// Sends `n` numbered datagrams and collects the echoes that arrive within `wait`.
async fn round(relay: std::net::SocketAddr, n: u32, size: usize, wait: Duration) -> Vec<u32> {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind client"));
    let receiver = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65_535];
            let deadline = tokio::time::Instant::now() + wait;
            while let Ok(Ok((len, _))) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
            {
                assert!(len >= 4);
                got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                if got.len() == n as usize {
                    break;
                }
            }
            got
        })
    };
    for i in 0..n {
        let mut packet = vec![0u8; size.max(4)];
        packet[..4].copy_from_slice(&i.to_be_bytes());
        socket.send_to(&packet, relay).await.expect("send");
        if i % 25 == 24 {
            // Pace the burst so that kernel socket buffers, not the relay, never drop.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    receiver.await.expect("receiver")
}

#[tokio::test]
async fn delay_keeps_order_and_never_amplifies() {
    let echo = udp_echo().await;
    let relay = Relay::start(relay_config(
        echo,
        LinkShape { delay: Duration::from_millis(20), ..LinkShape::default() },
    ))
    .await
    .expect("relay");
    let started = Instant::now();
    let got = round(relay.listen_addr(), 200, 100, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(40), "RTT below 2 × delay");
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "lost or reordered");
    let c = relay.counters();
    for d in [c.forward, c.reverse] {
        assert_eq!(d.received, 200);
        assert_eq!(d.passed, 200);
        assert_eq!(d.delayed, 200);
        assert_eq!(d.passed_bytes, d.received_bytes);
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn loss_partition_and_control_socket() {
    let echo = udp_echo().await;
    let mut config = relay_config(echo, LinkShape::default());
    config.control = Some("127.0.0.1:0".parse().expect("addr"));
    let relay = Relay::start(config).await.expect("relay");
    let ctl = relay.control_addr().expect("control");

    // 10 % loss each way, set over the control socket.
    let answer = control::request(ctl, "set both loss=0.1").await.expect("set loss");
    assert!(answer.contains("\"loss\":0.1"), "{answer}");
    let got = round(relay.listen_addr(), 1000, 64, Duration::from_millis(500)).await;
    let c = relay.counters();
    assert_eq!(c.forward.received, 1000);
    assert_eq!(c.forward.passed + c.forward.dropped(), 1000);
    assert_eq!(c.reverse.received, c.forward.passed, "the echo answers every datagram");
    assert_eq!(c.reverse.passed + c.reverse.dropped(), c.reverse.received);
    assert_eq!(got.len() as u64, c.reverse.passed);
    let delivered = got.len() as f64 / 1000.0;
    assert!((0.75..0.87).contains(&delivered), "delivered {delivered}, expected ≈ 0.81");

    // Partition: nothing passes, everything is counted as a partition drop.
    control::request(ctl, "set both loss=0").await.expect("clear loss");
    control::request(ctl, "partition on").await.expect("partition");
    assert!(relay.shape(Direction::Forward).partitioned);
    let before = relay.counters().forward;
    let got = round(relay.listen_addr(), 100, 64, Duration::from_millis(200)).await;
    assert!(got.is_empty());
    let after = relay.counters().forward;
    assert_eq!(after.dropped_partition - before.dropped_partition, 100);

    relay.set_partitioned(false);
    let got = round(relay.listen_addr(), 100, 64, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 100);

    let err = control::request(ctl, "set loss=7").await.expect_err("bad value");
    assert!(err.to_string().contains("not a probability"), "{err}");
    relay.shutdown().await;
}

#[tokio::test]
async fn the_rate_cap_paces_and_tail_drops() {
    let echo = udp_echo().await;
    // 8 Mbit/s = 1 MB/s forward only, 16 KiB burst, 64 KiB queue.
    let mut config = relay_config(echo, LinkShape::default());
    config.forward_shape =
        LinkShape { rate: Some(1_000_000), queue_limit: 64 * 1024, ..LinkShape::default() };
    let relay = Relay::start(config).await.expect("relay");
    let started = Instant::now();
    // 100 KB sent at once: 16 KiB pass in the burst, 64 KiB queue, the rest is dropped.
    let got = round(relay.listen_addr(), 100, 1000, Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    let c = relay.counters().forward;
    assert_eq!(c.passed + c.dropped_queue, 100);
    assert!((75..=95).contains(&c.passed), "passed {}", c.passed);
    assert_eq!(got.len() as u64, c.passed);
    // The queued part drains at 1 MB/s: ≈ 64 ms.
    assert!(elapsed >= Duration::from_millis(55), "{elapsed:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_through_a_lossy_50ms_wan() {
    let pki = Pki::new();
    let server = pki.endpoint("us-east", "use-a", fast_settings());
    server.serve(Arc::new(Echo)).expect("serve");
    let relay = Relay::start(relay_config(
        addr(&server),
        LinkShape { delay: Duration::from_millis(25), loss: 0.02, ..LinkShape::default() },
    ))
    .await
    .expect("relay");
    let sender = pki.endpoint("eu-west", "euw_a", fast_settings());
    let client = sender.client(id("us-east", "use-a"), relay.listen_addr());

    let total: u64 = 10_000;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..200 {
        let (client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let len = if i % 50 == 0 { 32 * 1024 } else { (i as usize * 7919) % 2048 };
                let body = payload(i, len);
                let reply = client
                    .request(Frame::new(ty(ECHO), body.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("message {i}: {e}"));
                assert_eq!(reply.payload, body, "message {i} corrupted");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let elapsed = started.elapsed();
    let c = relay.counters();
    eprintln!("{total} messages through 50 ms RTT / 2 % loss in {elapsed:?}; relay {c:?}");
    assert_eq!(server.stats().requests_served, total);
    assert!(c.forward.dropped_loss > 0 && c.reverse.dropped_loss > 0, "loss was applied");
    assert!(elapsed >= Duration::from_millis(50));
    relay.shutdown().await;
}
