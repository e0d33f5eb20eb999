//! Endpoints on loopback: bulk exchange, mutual-TLS refusals, malformed input, drain.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ferry_transport::certs::{CertificateAuthority, Validity};
use ferry_transport::{
    AllowAll, Frame, Handler, HandlerError, NodeMember, PeerRejection, RequestContext, SiteMembers,
    TransportError, TransportSettings, TrustStore,
};

fn size_of(i: u64) -> usize {
    match i % 100 {
        0 => 256 * 1024,
        1..=9 => 16 * 1024 + (i as usize * 31) % 16_384,
        _ => (i as usize * 7919) % 4096,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_messages_arrive_intact() {
    let pki = Pki::new();
    let server = pki.endpoint("us-east", "use-a", fast_settings());
    server.serve(Arc::new(Echo)).expect("serve");
    let sender = pki.endpoint("eu-west", "euw_a", fast_settings());
    let client = sender.client(id("us-east", "use-a"), addr(&server));

    let total: u64 = 10_000;
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (client, next, bytes) = (client.clone(), next.clone(), bytes.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let body = payload(i, size_of(i));
                let reply = client
                    .request(Frame::new(ty(ECHO), body.clone()))
                    .await
                    .unwrap_or_else(|e| panic!("message {i}: {e}"));
                assert_eq!(reply.frame_type, ty(ECHO_REPLY));
                assert_eq!(reply.payload, body, "message {i} corrupted");
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    assert_eq!(server.stats().requests_served, total);
    assert_eq!(server.stats().connections_accepted, 1, "one reused connection");
    eprintln!(
        "10000 messages, {} bytes echoed in {:?}",
        bytes.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// Dials `server` from `creds` and returns the dialer's error and the server's rejection.
async fn refused(
    pki: &Pki,
    creds: ferry_transport::NodeCredentials,
) -> (TransportError, PeerRejection, String) {
    let server = pki.endpoint("us-east", "use-a", fast_settings());
    server.serve(Arc::new(Echo)).expect("serve");
    let sender = pki.endpoint_with(creds, Arc::new(AllowAll), fast_settings());
    let client = sender.client(id("us-east", "use-a"), addr(&server));
    let err = client
        .request(Frame::new(ty(ECHO), Bytes::from_static(b"x")))
        .await
        .expect_err("must be refused");
    assert!(!err.is_retryable(), "{err}");
    // The server records the refusal right after the handshake fails.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = server.stats();
        if let Some((peer, rejection)) = stats.recent_rejections.last() {
            assert_eq!(stats.connections_accepted, 0);
            let message =
                TransportError::Rejected { peer: *peer, rejection: Box::new(rejection.clone()) }
                    .to_string();
            return (err, rejection.clone(), message);
        }
        assert!(Instant::now() < deadline, "server recorded no rejection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_site_without_a_link_is_refused_by_the_authorizer() {
    let pki = Pki::new();
    let (err, rejection, message) = refused(&pki, pki.creds("ap-south", "aps-a")).await;
    assert_eq!(
        rejection,
        PeerRejection::Unauthorized {
            site: site("ap-south"),
            reason: "has no link into 'us-east'".to_owned()
        }
    );
    assert!(
        message.starts_with("certificate of 127.0.0.1:")
            && message.ends_with(" names site 'ap-south' which has no link into 'us-east'"),
        "{message}"
    );
    assert!(
        matches!(&err, TransportError::RefusedByPeer { reason, .. } if reason.contains("has no link into 'us-east'")),
        "{err}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let rogue = CertificateAuthority::generate(&site("eu-west"), Validity::days_from_now(5))
        .expect("rogue CA");
    let creds = rogue.issue(&node("euw_a"), &[], Validity::days_from_now(5)).expect("issue");
    let (err, rejection, message) = refused(&pki, creds).await;
    assert_eq!(rejection, PeerRejection::WrongCa { site: site("eu-west") });
    assert!(
        message.ends_with("names site 'eu-west' but is not signed by the CA of site 'eu-west'"),
        "{message}"
    );
    assert!(matches!(err, TransportError::RefusedByPeer { .. }), "{err}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let (err, rejection, message) =
        refused(&pki, pki.creds_valid("eu-west", "euw_a", expired)).await;
    assert!(
        matches!(&rejection, PeerRejection::Expired { identity, .. } if *identity == id("eu-west", "euw_a")),
        "{rejection:?}"
    );
    assert!(message.contains("of node 'euw_a' of site 'eu-west' has expired"), "{message}");
    assert!(matches!(err, TransportError::RefusedByPeer { .. }), "{err}");
}

#[tokio::test]
async fn a_site_outside_the_topology_is_refused() {
    let pki = Pki::new();
    let mars =
        CertificateAuthority::generate(&site("mars"), Validity::days_from_now(5)).expect("CA");
    let creds = mars.issue(&node("m1"), &[], Validity::days_from_now(5)).expect("issue");
    let (_, rejection, _) = refused(&pki, creds).await;
    assert_eq!(rejection, PeerRejection::UnknownSite { site: site("mars") });
}

#[tokio::test]
async fn a_node_outside_the_topology_is_refused() {
    let pki = Pki::new();
    let (_, rejection, _) = refused(&pki, pki.creds("eu-west", "euw-z")).await;
    assert_eq!(rejection, PeerRejection::UnknownNode { identity: id("eu-west", "euw-z") });
}

#[tokio::test]
async fn the_dialer_refuses_a_peer_with_another_identity() {
    let pki = Pki::new();
    let server = pki.endpoint("us-east", "use-a", fast_settings());
    server.serve(Arc::new(Echo)).expect("serve");
    let sender = pki.open_endpoint("eu-west", "euw_a");
    // The topology says ap-south/aps-a lives there, but us-east/use-a answers.
    let client = sender.client(id("ap-south", "aps-a"), addr(&server));
    let err = client.request(Frame::new(ty(ECHO), Bytes::new())).await.expect_err("wrong peer");
    let TransportError::Rejected { rejection, .. } = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(
        **rejection,
        PeerRejection::UnexpectedPeer {
            expected: id("ap-south", "aps-a"),
            found: id("us-east", "use-a"),
        }
    );
    // The next request fails fast: the backoff schedule holds the next dial.
    let again =
        client.request(Frame::new(ty(ECHO), Bytes::new())).await.expect_err("still refused");
    assert!(matches!(again, TransportError::Backoff { .. }), "{again}");
}

#[tokio::test]
async fn garbage_datagrams_and_garbage_frames_are_refused_and_counted() {
    let pki = Pki::new();
    let server = pki.endpoint("us-east", "use-a", fast_settings());
    server.serve(Arc::new(Echo)).expect("serve");
    let target = addr(&server);

    // Raw garbage to the UDP port: short, long, and shaped like a QUIC long header.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for i in 0..200u64 {
        let mut bytes = payload(i, (i as usize * 37) % 1400 + 1).to_vec();
        if i % 2 == 0 {
            bytes[0] = 0xC0; // long header, Initial
        }
        socket.send_to(&bytes, target).await.expect("send garbage");
    }

    let sender = pki.endpoint("eu-west", "euw_a", fast_settings());
    let client = sender.client(id("us-east", "use-a"), target);
    let reply = client
        .request(Frame::new(ty(ECHO), Bytes::from_static(b"still alive")))
        .await
        .expect("the endpoint still serves");
    assert_eq!(&reply.payload[..], b"still alive");

    // Garbage inside an authenticated stream: a bad version byte, then an oversized length.
    let err = client
        .request_raw(Bytes::from_static(&[0xAB, 0x10, 0, 0, 0, 0]))
        .await
        .expect_err("bad version");
    assert!(
        matches!(&err, TransportError::Remote { retryable: false, message, .. }
            if message == "malformed request: frame version 171 is not supported (this build speaks version 1)"),
        "{err}"
    );
    let err = client
        .request_raw(Bytes::from_static(&[1, 0x10, 0x7f, 0, 0, 0]))
        .await
        .expect_err("too large");
    assert!(
        matches!(&err, TransportError::Remote { message, .. } if message.contains("exceeds the limit")),
        "{err}"
    );
    let err = client
        .request_raw(Bytes::from_static(&[1, 0x10, 0, 0, 0, 9, 1, 2]))
        .await
        .expect_err("truncated");
    assert!(
        matches!(&err, TransportError::Remote { message, .. } if message.contains("stream ended after 8 of 15")),
        "{err}"
    );
    let err = client
        .request_raw(Bytes::from_static(&[1, 0x02, 0, 0, 0, 0]))
        .await
        .expect_err("reserved type");
    assert!(
        matches!(&err, TransportError::Remote { message, .. } if message.contains("unexpected frame type 0x02")),
        "{err}"
    );
    assert_eq!(server.stats().protocol_errors, 4);

    // A handler error travels back with its retryable flag.
    let err = client.request(Frame::new(ty(FAIL), Bytes::new())).await.expect_err("handler error");
    assert!(err.is_retryable());
    assert!(
        matches!(&err, TransportError::Remote { message, .. } if message == "store busy"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let pki = Pki::new();
    let server = pki.endpoint("us-east", "use-a", fast_settings());
    server.serve(Arc::new(Echo)).expect("serve");
    let sender = pki.endpoint("eu-west", "euw_a", fast_settings());
    let client = sender.client(id("us-east", "use-a"), addr(&server));
    client.request(Frame::new(ty(ECHO), Bytes::new())).await.expect("warm up");

    let mut in_flight = Vec::new();
    for i in 0..50u64 {
        let client = client.clone();
        in_flight.push(tokio::spawn(async move {
            client.request(Frame::new(ty(SLOW), payload(i, 100))).await
        }));
    }
    // Let the requests reach the handler, then shut the server down under them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = server.shutdown().await;
    assert!(report.drained, "{report:?}");
    for (i, task) in in_flight.into_iter().enumerate() {
        let reply = task.await.expect("task").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.payload, payload(i as u64, 100));
    }
    // After the drain the server is gone: new requests fail with a retryable error.
    let err = client.request(Frame::new(ty(ECHO), Bytes::new())).await.expect_err("server is down");
    assert!(err.is_retryable(), "{err}");
    assert!(sender.shutdown().await.drained);
}

/// Counts the requests inside it at once; each stays 100 ms.
#[derive(Debug, Default)]
struct Overlap {
    inside: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl Handler for Overlap {
    async fn handle(&self, _ctx: RequestContext, request: Frame) -> Result<Frame, HandlerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.inside.fetch_sub(1, SeqCst);
        Ok(Frame::new(ty(ECHO_REPLY), request.payload.slice(..0)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_payloads_wait_for_their_share_of_the_inbound_budget() {
    let pki = Pki::new();
    // Room for one 3 MiB payload at a time, none for two.
    let tight =
        TransportSettings { max_payload: 4 << 20, inbound_budget: 4 << 20, ..fast_settings() };
    for (settings, expect_overlap) in [(tight, false), (fast_settings(), true)] {
        let server = pki.endpoint("us-east", "use-a", settings);
        let overlap = Arc::new(Overlap::default());
        server.serve(overlap.clone()).expect("serve");
        let sender = pki.endpoint("eu-west", "euw_a", fast_settings());
        let client = sender.client(id("us-east", "use-a"), addr(&server));
        let requests: Vec<_> = (0..4u64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    client.request(Frame::new(ty(ECHO), payload(i, 3 << 20))).await
                })
            })
            .collect();
        for request in requests {
            request.await.expect("task").expect("every request is answered");
        }
        let most = overlap.most.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(most > 1, expect_overlap, "at most {most} requests were handled at once");
        server.shutdown().await;
        sender.shutdown().await;
    }
}

#[tokio::test]
async fn a_site_trusted_by_a_reload_is_admitted_without_a_restart() {
    let pki = Pki::new();
    let server = pki.open_endpoint("us-east", "use-a");
    server.serve(Arc::new(Echo)).expect("serve");
    let mars =
        CertificateAuthority::generate(&site("mars"), Validity::days_from_now(5)).expect("CA");
    let mars_creds = || mars.issue(&node("m1"), &[], Validity::days_from_now(5)).expect("issue");
    let server_addr = addr(&server);
    let ask = |endpoint: ferry_transport::Endpoint| async move {
        let client = endpoint.client(id("us-east", "use-a"), server_addr);
        client.request(Frame::new(ty(ECHO), Bytes::from_static(b"hello"))).await
    };

    let before = pki.endpoint_with(mars_creds(), Arc::new(AllowAll), fast_settings());
    let refused = ask(before).await.expect_err("an unknown site");
    assert!(refused.to_string().contains("mars"), "{refused}");

    // The server's own certificate is renewed and mars trusted, in one reload.
    let mut members = pki.members.clone();
    members.push(SiteMembers {
        site: site("mars"),
        nodes: vec![NodeMember { id: node("m1"), ips: Vec::new() }],
    });
    let cas = pki
        .cas
        .iter()
        .map(|(s, ca)| (site(s), ca.cert_der().clone()))
        .chain([(site("mars"), mars.cert_der().clone())]);
    let renewed = pki.creds("us-east", "use-a");
    server.reload(&renewed, TrustStore::new(&members, cas)).expect("reload");
    let after = pki.endpoint_with(mars_creds(), Arc::new(AllowAll), fast_settings());
    let reply = ask(after).await.expect("mars is trusted now");
    assert_eq!(reply.payload, Bytes::from_static(b"hello"));

    // A reload that would change who the endpoint is, or present an expired certificate,
    // changes nothing, whatever identity the credentials were loaded as.
    let mut other = pki.creds("eu-west", "euw_a");
    other.identity = id("us-east", "use-a");
    let error = server.reload(&other, pki.trust()).expect_err("another identity");
    assert!(error.to_string().contains("euw_a"), "{error}");
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let stale = pki.creds_valid("us-east", "use-a", expired);
    let error = server.reload(&stale, pki.trust()).expect_err("an expired certificate");
    assert!(error.to_string().contains("not now"), "{error}");
    let still = pki.endpoint_with(mars_creds(), Arc::new(AllowAll), fast_settings());
    ask(still).await.expect("the failed reload left mars trusted");
}
