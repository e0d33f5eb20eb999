//! Transport benchmark: throughput of 1 MiB messages and small-message round trips (p50/p99),
//! direct on loopback and through the WAN relay at 0, 50 and 150 ms RTT with 0 and 1 % loss,
//! next to the raw UDP loopback ceiling measured in the same run.
//!
//! Run: `cargo bench -p ferry-transport --bench transport` (release). Each cell is bounded in
//! time (about 2 s of throughput after a warm-up, about 2 s of round trips) and in count.
//! Prints a Markdown table; docs/transport.md explains the columns.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_transport::certs::{CertificateAuthority, Validity};
use ferry_transport::relay::{LinkShape, Relay, RelayConfig};
use ferry_transport::{
    AllowAll, Congestion, Endpoint, Frame, FrameType, Handler, HandlerError, NodeMember,
    PeerIdentity, RequestContext, SiteMembers, TransportSettings, TrustStore,
};

const SINK: u8 = 0x20;
const ECHO: u8 = 0x21;
const MIB: usize = 1 << 20;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);
const LATENCY_WINDOW: Duration = Duration::from_secs(2);
const IN_FLIGHT: usize = 32;

#[derive(Debug)]
struct Bench;

impl Handler for Bench {
    async fn handle(&self, _ctx: RequestContext, request: Frame) -> Result<Frame, HandlerError> {
        let ty = |c| {
            FrameType::application(c)
                .ok_or_else(|| HandlerError { retryable: false, message: "bad type".into() })
        };
        match request.frame_type.code() {
            SINK => Ok(Frame::new(ty(SINK)?, Bytes::new())),
            _ => Ok(Frame::new(ty(ECHO)?, request.payload)),
        }
    }
}

struct Pair {
    server: Endpoint,
    sender: Endpoint,
}

fn pair(congestion: Congestion) -> Result<Pair, Box<dyn std::error::Error>> {
    let mut members = Vec::new();
    let mut cas = Vec::new();
    let mut creds = Vec::new();
    for (site, node) in [("us-east", "use-a"), ("eu-west", "euw-a")] {
        let id = PeerIdentity::named(site, node)?;
        let ca = CertificateAuthority::generate(&id.site, Validity::days_from_now(1))?;
        creds.push(ca.issue(&id.node, &[], Validity::days_from_now(1))?);
        cas.push((id.site.clone(), ca.cert_der().clone()));
        members.push(SiteMembers {
            site: id.site,
            nodes: vec![NodeMember { id: id.node, ips: vec![] }],
        });
    }
    let trust = TrustStore::new(&members, cas);
    let settings = TransportSettings { congestion, ..TransportSettings::default() };
    let bind = |c| {
        Endpoint::bind(
            "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            c,
            trust.clone(),
            Arc::new(AllowAll),
            settings.clone(),
        )
        .map_err(|e| e.to_string())
    };
    let server = bind(&creds[0])?;
    server.serve(Arc::new(Bench))?;
    let sender = bind(&creds[1])?;
    Ok(Pair { server, sender })
}

/// Raw UDP loopback: one sender blasting `size`-byte datagrams, bytes counted at the receiver.
async fn udp_ceiling(
    size: usize,
    relay_shape: Option<LinkShape>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut dest = rx.local_addr()?;
    let relay = match relay_shape {
        Some(shape) => {
            let config = RelayConfig::new("127.0.0.1:0".parse()?, dest).with_shape(shape);
            let relay = Relay::start(config).await?;
            dest = relay.listen_addr();
            Some(relay)
        }
        None => None,
    };
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let (stop, received) = (stop.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let recv = tokio::time::timeout(Duration::from_millis(50), rx.recv(&mut buf));
                if let Ok(Ok(n)) = recv.await {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let packet = vec![0u8; size];
    let started = Instant::now();
    let mut sent: u64 = 0;
    while started.elapsed() < THROUGHPUT_WINDOW && sent < 50_000_000 {
        if tx.send_to(&packet, dest).await.is_ok() {
            sent += 1;
        }
        if sent.is_multiple_of(16) {
            tokio::task::yield_now().await;
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    counter.await?;
    if let Some(relay) = relay {
        relay.shutdown().await;
    }
    Ok(received.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64() / 1e6)
}

struct Cell {
    mb_per_s: f64,
    messages: u64,
    p50: Duration,
    p99: Duration,
    samples: usize,
}

async fn measure(pair: &Pair, target: SocketAddr) -> Result<Cell, Box<dyn std::error::Error>> {
    let client = pair.sender.client(PeerIdentity::named("us-east", "use-a")?, target);
    let ty = |c| FrameType::application(c).ok_or("bad type");
    let big = Frame::new(ty(SINK)?, Bytes::from(vec![7u8; MIB]));

    // Round trips first, on a quiet connection: one 64-byte echo at a time.
    let small = Frame::new(ty(ECHO)?, Bytes::from(vec![1u8; 64]));
    // The first request dials (handshake + hello); it is not a round-trip sample.
    let _ = client.request(small.clone()).await;
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < LATENCY_WINDOW && samples.len() < 20_000 {
        let t = Instant::now();
        if client.request(small.clone()).await.is_ok() {
            samples.push(t.elapsed());
        }
    }
    // Throughput: IN_FLIGHT concurrent 1 MiB requests; a 1 s warm-up opens the window.
    let run = |window: Duration| {
        let client = client.clone();
        let big = big.clone();
        async move {
            let done = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + window;
            let mut tasks = Vec::new();
            for _ in 0..IN_FLIGHT {
                let (client, big, done) = (client.clone(), big.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        if client.request(big.clone()).await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
            done.load(Ordering::Relaxed)
        }
    };
    run(Duration::from_secs(1)).await;
    let started = Instant::now();
    let messages = run(THROUGHPUT_WINDOW).await;
    let mb_per_s = (messages as f64 * MIB as f64) / started.elapsed().as_secs_f64() / 1e6;

    samples.sort();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Cell { mb_per_s, messages, p50: pct(0.50), p99: pct(0.99), samples: samples.len() })
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let udp_small = udp_ceiling(1200, None).await?;
    let udp_large = udp_ceiling(60_000, None).await?;
    let relay_small = udp_ceiling(1200, Some(LinkShape::default())).await?;
    println!("raw UDP loopback, 1200-byte datagrams, one sender:  {udp_small:.0} MB/s");
    println!("raw UDP loopback, 60000-byte datagrams, one sender: {udp_large:.0} MB/s");
    println!("raw UDP through the relay, 1200-byte datagrams:     {relay_small:.0} MB/s\n");
    println!(
        "| path | RTT | loss | CC | 1 MiB throughput MB/s (msgs) | 64 B RTT p50 ms | p99 ms | samples |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let cells: [(Option<(u64, f64)>, Congestion); 9] = [
        (None, Congestion::Bbr),
        (Some((0, 0.0)), Congestion::Bbr),
        (Some((0, 0.01)), Congestion::Bbr),
        (Some((50, 0.0)), Congestion::Bbr),
        (Some((50, 0.01)), Congestion::Bbr),
        (Some((150, 0.0)), Congestion::Bbr),
        (Some((150, 0.01)), Congestion::Bbr),
        (Some((50, 0.01)), Congestion::Cubic),
        (Some((150, 0.01)), Congestion::Cubic),
    ];
    for (wan, congestion) in cells {
        let pair = pair(congestion)?;
        let server_addr = pair.server.local_addr()?;
        let (path, rtt, loss, relay) = match wan {
            None => ("direct", "–".to_owned(), "–".to_owned(), None),
            Some((rtt, loss)) => {
                let shape = LinkShape {
                    delay: Duration::from_millis(rtt / 2),
                    loss,
                    ..LinkShape::default()
                };
                let mut config =
                    RelayConfig::new("127.0.0.1:0".parse()?, server_addr).with_shape(shape);
                config.seed = Some(7);
                let relay = Relay::start(config).await?;
                ("relay", format!("{rtt} ms"), format!("{}%", loss * 100.0), Some(relay))
            }
        };
        let target = relay.as_ref().map_or(server_addr, |r| r.listen_addr());
        let cell = measure(&pair, target).await?;
        println!(
            "| {path} | {rtt} | {loss} | {congestion:?} | {:.1} ({}) | {} | {} | {} |",
            cell.mb_per_s,
            cell.messages,
            ms(cell.p50),
            ms(cell.p99),
            cell.samples
        );
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
        pair.sender.shutdown().await;
        pair.server.shutdown().await;
    }
    Ok(())
}
