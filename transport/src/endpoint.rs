//! QUIC endpoints: one per node, serving inbound requests and dialing peers over one UDP socket.
//!
//! - [`Endpoint::bind`] / [`Endpoint::from_socket`] (embeddable: pass a socket bound to port 0).
//! - [`Endpoint::serve`] runs the accept loop with a [`Handler`]; each request arrives on its own
//!   bidirectional stream with the verified [`PeerIdentity`] of the sender.
//! - [`Endpoint::client`] returns a [`Client`] for one peer: it reuses one connection, dials on
//!   demand and, after a failure, waits out the [`crate::Backoff`] schedule (requests made
//!   meanwhile fail fast with the retryable [`TransportError::Backoff`]).
//! - [`Endpoint::shutdown`] drains: no new connections, streams or requests; in-flight requests
//!   (both directions) finish or time out; then every connection closes.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tracing::{debug, info, warn};

use crate::certs::{NodeCredentials, SiteMembers, TrustStore};
use crate::config::TransportSettings;
use crate::error::{PeerRejection, TransportError};
use crate::frame::{Frame, FrameError, FrameHeader, FrameType, HEADER_LEN};
use crate::identity::{PeerAuthorizer, PeerIdentity, SiteName};
use crate::tls::TlsContext;

/// Application close code: the endpoint shut down.
const CLOSE_SHUTDOWN: u32 = 1;
/// Rejections kept in [`EndpointStats::recent_rejections`].
const RECENT_REJECTIONS: usize = 16;

/// Where a request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The verified identity of the sender.
    pub peer: PeerIdentity,
    /// The sender's UDP address.
    pub remote: SocketAddr,
}

/// A handler's refusal, sent back as an error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// Whether the sender may retry the same request.
    pub retryable: bool,
    /// What went wrong, for the sender's log.
    pub message: String,
}

/// Serves requests. Called concurrently, once per request stream.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request with one response frame (an application type) or an error.
    fn handle(
        &self,
        ctx: RequestContext,
        request: Frame,
    ) -> impl Future<Output = Result<Frame, HandlerError>> + Send;
}

/// Counters of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Inbound connections that passed authentication.
    pub connections_accepted: u64,
    /// Inbound connections refused because of the peer certificate.
    pub connections_rejected: u64,
    /// Inbound handshakes that failed otherwise (timeouts, protocol errors).
    pub handshakes_failed: u64,
    /// Requests answered by the handler (successfully or with a handler error).
    pub requests_served: u64,
    /// Inbound streams that carried bytes that are not a valid frame.
    pub protocol_errors: u64,
    /// Outbound connections established.
    pub dials: u64,
    /// The latest inbound refusals, oldest first.
    pub recent_rejections: Vec<(SocketAddr, PeerRejection)>,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    handshakes_failed: AtomicU64,
    requests_served: AtomicU64,
    protocol_errors: AtomicU64,
    dials: AtomicU64,
    recent_rejections: Mutex<VecDeque<(SocketAddr, PeerRejection)>>,
}

/// Counts in-flight work and wakes a waiter when it reaches zero.
#[derive(Debug, Default)]
struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

struct TrackGuard(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[derive(Debug)]
struct Inner {
    quinn: quinn::Endpoint,
    tls: Arc<TlsContext>,
    settings: TransportSettings,
    transport: Arc<quinn::TransportConfig>,
    counters: Counters,
    shutting_down: AtomicBool,
    shutdown: Notify,
    inbound: Arc<Tracker>,
    outbound: Arc<Tracker>,
    /// KiB of request payloads being read or handled (see `TransportSettings::inbound_budget`).
    inbound_budget: Semaphore,
}

/// KiB a payload of `bytes` takes from the inbound budget.
fn budget_kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// A node's QUIC endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

/// What [`Endpoint::shutdown`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every in-flight request finished before the drain timeout.
    pub drained: bool,
    /// Requests still in flight when the connections were closed.
    pub abandoned: usize,
}

impl Endpoint {
    /// Binds a UDP socket at `addr` (buffers sized per `settings`) and builds the endpoint.
    pub fn bind(
        addr: SocketAddr,
        creds: &NodeCredentials,
        trust: TrustStore,
        authorizer: Arc<dyn PeerAuthorizer>,
        settings: TransportSettings,
    ) -> Result<Endpoint, TransportError> {
        let socket = Endpoint::bind_socket(addr, &settings)?;
        Endpoint::from_socket(socket, creds, trust, authorizer, settings)
    }

    /// Binds the UDP socket an endpoint with `settings` wants on `addr` (socket buffers sized
    /// for the long fat pipe), for [`Endpoint::from_socket`].
    pub fn bind_socket(
        addr: SocketAddr,
        settings: &TransportSettings,
    ) -> Result<std::net::UdpSocket, TransportError> {
        bind_udp(addr, settings.socket_buffer)
    }

    /// Builds the endpoint on an already bound socket (tests pass one bound to port 0).
    /// Must be called inside a Tokio runtime.
    pub fn from_socket(
        socket: std::net::UdpSocket,
        creds: &NodeCredentials,
        trust: TrustStore,
        authorizer: Arc<dyn PeerAuthorizer>,
        settings: TransportSettings,
    ) -> Result<Endpoint, TransportError> {
        let tls = Arc::new(TlsContext::new(creds, trust, authorizer)?);
        let transport = settings.quinn();
        let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Io {
            action: "find a Tokio runtime for the endpoint".to_owned(),
            source: std::io::Error::other("no async runtime"),
        })?;
        let quinn = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(|source| TransportError::Io {
            action: "start the QUIC endpoint".to_owned(),
            source,
        })?;
        // At least one largest payload fits, or such a request could never be read.
        let budget = settings.inbound_budget.max(u64::from(settings.max_payload));
        Ok(Endpoint {
            inner: Arc::new(Inner {
                inbound_budget: Semaphore::new(budget_kib(budget) as usize),
                quinn,
                tls,
                settings,
                transport,
                counters: Counters::default(),
                shutting_down: AtomicBool::new(false),
                shutdown: Notify::new(),
                inbound: Arc::default(),
                outbound: Arc::default(),
            }),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.quinn.local_addr().map_err(|source| TransportError::Io {
            action: "read the endpoint address".to_owned(),
            source,
        })
    }

    /// Admits the nodes `sites` lists now (the topology added or removed nodes), with the CAs
    /// already trusted: connections from and to nodes no longer listed are refused from now
    /// on. Sites with no CA trusted yet stay untrusted; they are returned.
    pub fn admit_members(&self, sites: &[SiteMembers]) -> Vec<SiteName> {
        self.inner.tls.set_members(sites)
    }

    /// New connections present `creds` (a renewed certificate of this same node) and trust
    /// exactly `trust` (sites added, CAs changed, nodes added or removed); connections already
    /// up keep what they were verified with. Nothing changes on an error.
    pub fn reload(&self, creds: &NodeCredentials, trust: TrustStore) -> Result<(), TransportError> {
        self.inner.tls.reload(creds, trust)
    }

    /// This node's identity.
    pub fn identity(&self) -> &PeerIdentity {
        self.inner.tls.local()
    }

    /// The settings the endpoint runs with.
    pub fn settings(&self) -> &TransportSettings {
        &self.inner.settings
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EndpointStats {
        let c = &self.inner.counters;
        EndpointStats {
            connections_accepted: c.connections_accepted.load(Ordering::Relaxed),
            connections_rejected: c.connections_rejected.load(Ordering::Relaxed),
            handshakes_failed: c.handshakes_failed.load(Ordering::Relaxed),
            requests_served: c.requests_served.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            dials: c.dials.load(Ordering::Relaxed),
            recent_rejections: c
                .recent_rejections
                .lock()
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Starts accepting inbound connections and serving their requests with `handler`.
    /// Until this is called, the endpoint only dials and ignores inbound handshakes.
    pub fn serve<H: Handler>(&self, handler: Arc<H>) -> Result<(), TransportError> {
        // The endpoint-wide server configuration only admits Initial packets; every connection
        // is accepted with its own configuration (see `tls`), so this one never verifies.
        let (base, _) = self.inner.tls.server_config(socket_addr_unspecified())?;
        let server = server_config(base, &self.inner.transport)?;
        self.inner.quinn.set_server_config(Some(server));
        let inner = self.inner.clone();
        tokio::spawn(async move { accept_loop(inner, handler).await });
        Ok(())
    }

    /// A client for the peer `peer` reachable at `addr`. Dials lazily.
    pub fn client(&self, peer: PeerIdentity, addr: SocketAddr) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                endpoint: self.inner.clone(),
                peer,
                addr,
                state: tokio::sync::Mutex::new(ConnState::default()),
            }),
        }
    }

    /// Drains and closes: refuses new work, waits up to the drain timeout for in-flight requests
    /// in both directions, then closes every connection and waits for the peers to be told.
    pub async fn shutdown(&self) -> ShutdownReport {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        inner.shutdown.notify_waiters();
        let drained = tokio::time::timeout(inner.settings.drain_timeout, async {
            inner.inbound.wait_idle().await;
            inner.outbound.wait_idle().await;
        })
        .await
        .is_ok();
        let abandoned = inner.inbound.count.load(Ordering::SeqCst)
            + inner.outbound.count.load(Ordering::SeqCst);
        inner.quinn.close(CLOSE_SHUTDOWN.into(), b"endpoint shutting down");
        // Bounded: a peer that never acknowledges the close is given up on.
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.quinn.wait_idle()).await;
        info!(drained, abandoned, "transport endpoint shut down");
        ShutdownReport { drained, abandoned }
    }
}

fn socket_addr_unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |action: String| move |source| TransportError::Io { action, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io(format!("create a UDP socket for {addr}")))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into()).map_err(io(format!("bind UDP {addr}")))?;
    Ok(socket.into())
}

fn server_config(
    tls: rustls::ServerConfig,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TransportError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport.clone());
    Ok(config)
}

impl Inner {
    fn record_rejection(&self, remote: SocketAddr, rejection: PeerRejection) {
        self.counters.connections_rejected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut recent) = self.counters.recent_rejections.lock() {
            if recent.len() == RECENT_REJECTIONS {
                recent.pop_front();
            }
            recent.push_back((remote, rejection));
        }
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    async fn shutdown_signal(&self) {
        let notified = self.shutdown.notified();
        if self.is_shutting_down() {
            return;
        }
        notified.await;
    }
}

async fn accept_loop<H: Handler>(inner: Arc<Inner>, handler: Arc<H>) {
    // `accept` yields `None` once the endpoint is closed (the end of `shutdown`).
    while let Some(incoming) = inner.quinn.accept().await {
        if inner.is_shutting_down() {
            // Draining: tell the dialer at once instead of letting its handshake time out.
            incoming.refuse();
            continue;
        }
        let inner = inner.clone();
        let handler = handler.clone();
        tokio::spawn(async move { serve_connection(inner, handler, incoming).await });
    }
    debug!("accept loop ended");
}

async fn serve_connection<H: Handler>(
    inner: Arc<Inner>,
    handler: Arc<H>,
    incoming: quinn::Incoming,
) {
    let remote = incoming.remote_address();
    let (tls, verdict) = match inner.tls.server_config(remote) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(%remote, error = %e, "build TLS configuration for inbound connection");
            incoming.refuse();
            return;
        }
    };
    let config = match server_config(tls, &inner.transport) {
        Ok(config) => config,
        Err(e) => {
            warn!(%remote, error = %e, "build QUIC configuration for inbound connection");
            incoming.refuse();
            return;
        }
    };
    let connecting = match incoming.accept_with(Arc::new(config)) {
        Ok(connecting) => connecting,
        Err(e) => {
            inner.counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, error = %e, "inbound connection failed before the handshake");
            return;
        }
    };
    let outcome = tokio::time::timeout(inner.settings.connect_timeout, connecting).await;
    let (connection, peer) = match (outcome, verdict.get()) {
        (Ok(Ok(connection)), Some(Ok(peer))) => (connection, peer),
        (_, Some(Err(rejection))) => {
            warn!(
                "{}",
                TransportError::Rejected { peer: remote, rejection: Box::new(rejection.clone()) }
            );
            inner.record_rejection(remote, rejection);
            return;
        }
        (Ok(Ok(connection)), None) => {
            // Unreachable with mandatory client auth; refuse rather than trust.
            connection.close(2u32.into(), b"no client certificate");
            inner.counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        (Ok(Err(e)), _) => {
            inner.counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, error = %e, "inbound handshake failed");
            return;
        }
        (Err(_), _) => {
            inner.counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "inbound handshake timed out");
            return;
        }
    };
    inner.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
    info!(%remote, site = %peer.site, node = %peer.node, "accepted connection");
    let ctx = RequestContext { peer, remote };
    loop {
        let stream = tokio::select! {
            stream = connection.accept_bi() => stream,
            () = inner.shutdown_signal() => break,
        };
        let Ok((send, recv)) = stream else {
            break;
        };
        let guard = inner.inbound.enter();
        let inner = inner.clone();
        let handler = handler.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve_stream(&inner, &*handler, ctx, send, recv).await;
            drop(guard);
        });
    }
}

async fn serve_stream<H: Handler>(
    inner: &Inner,
    handler: &H,
    ctx: RequestContext,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = inner.settings.max_payload;
    let budget = Some(&inner.inbound_budget);
    let Ok(request) =
        tokio::time::timeout(inner.settings.request_timeout, read_frame(&mut recv, max, budget))
            .await
    else {
        debug!(remote = %ctx.remote, "request not received within the request timeout");
        return;
    };
    // The payload's share of the budget is held until the handler is done with it.
    let (request, _share) = match request {
        Ok((frame, share)) => (Ok(frame), share),
        Err(error) => (Err(error), None),
    };
    let response = match request {
        Ok(frame) if frame.frame_type == FrameType::HELLO => {
            Frame::new(FrameType::HELLO_ACK, Bytes::new())
        }
        Ok(frame) if frame.frame_type.is_application() => {
            let answer = handler.handle(ctx.clone(), frame).await;
            inner.counters.requests_served.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok(frame) => frame,
                Err(e) => Frame::error(e.retryable, &e.message),
            }
        }
        Ok(frame) => protocol_error(
            inner,
            &ctx,
            FrameError::UnexpectedType {
                found: frame.frame_type,
                context: "requests use application types",
            },
        ),
        Err(ReadError::Frame(e)) => protocol_error(inner, &ctx, e),
        Err(ReadError::Stream(reason)) => {
            debug!(remote = %ctx.remote, %reason, "request stream failed");
            return;
        }
    };
    if let Err(reason) = write_frame(&mut send, &response).await {
        debug!(remote = %ctx.remote, %reason, "write response");
        return;
    }
    // Wait until the peer has the whole response, so that a drain does not cut it off.
    let _ = tokio::time::timeout(inner.settings.request_timeout, send.stopped()).await;
}

fn protocol_error(inner: &Inner, ctx: &RequestContext, error: FrameError) -> Frame {
    inner.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
    warn!(remote = %ctx.remote, site = %ctx.peer.site, node = %ctx.peer.node, %error, "refused a malformed request");
    Frame::error(false, &format!("malformed request: {error}"))
}

#[derive(Debug)]
enum ReadError {
    Frame(FrameError),
    Stream(String),
}

/// Reads one frame; with a `budget`, takes the payload's share of it (waiting for it) before
/// reading the payload, and returns the share with the frame.
async fn read_frame<'a>(
    recv: &mut quinn::RecvStream,
    max_payload: u32,
    budget: Option<&'a Semaphore>,
) -> Result<(Frame, Option<SemaphorePermit<'a>>), ReadError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(got)) => {
            return Err(ReadError::Frame(FrameError::Truncated { expected: HEADER_LEN, got }));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ReadError::Stream(e.to_string())),
    }
    let header = FrameHeader::parse(&header, max_payload).map_err(ReadError::Frame)?;
    let expected = header.payload_len as usize;
    // A small request takes its share at once when it is free instead of queueing behind a
    // large one waiting for room.
    let share = match budget {
        Some(budget) => {
            let kib = budget_kib(u64::from(header.payload_len));
            let share = match budget.try_acquire_many(kib) {
                Ok(share) => Ok(share),
                Err(_) => budget.acquire_many(kib).await,
            };
            Some(share.map_err(|_| ReadError::Stream("endpoint closed".to_owned()))?)
        }
        None => None,
    };
    // Grow with the bytes that actually arrive (bounded by flow control), not with the declared
    // length: a peer declaring 16 MiB on many streams and sending nothing costs nothing.
    let mut payload = bytes::BytesMut::with_capacity(expected.min(64 * 1024));
    while payload.len() < expected {
        match recv.read_chunk(expected - payload.len(), true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(ReadError::Frame(FrameError::Truncated {
                    expected: HEADER_LEN + expected,
                    got: HEADER_LEN + payload.len(),
                }));
            }
            Err(e) => return Err(ReadError::Stream(e.to_string())),
        }
    }
    match recv.read_chunk(1, true).await {
        Ok(None) => Ok((Frame::new(header.frame_type, payload.freeze()), share)),
        Ok(Some(chunk)) => {
            Err(ReadError::Frame(FrameError::TrailingBytes { extra: chunk.bytes.len() }))
        }
        Err(e) => Err(ReadError::Stream(e.to_string())),
    }
}

async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), String> {
    let header = frame.header().map_err(|e| e.to_string())?;
    let mut chunks = [Bytes::copy_from_slice(&header.to_bytes()), frame.payload.clone()];
    send.write_all_chunks(&mut chunks).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

#[derive(Debug, Default)]
struct ConnState {
    connection: Option<quinn::Connection>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_error: String,
}

#[derive(Debug)]
struct ClientInner {
    endpoint: Arc<Inner>,
    peer: PeerIdentity,
    addr: SocketAddr,
    state: tokio::sync::Mutex<ConnState>,
}

/// Requests to one peer over one reused connection, redialed with backoff. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

/// Counters of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStatus {
    /// Whether a connection is currently open.
    pub connected: bool,
    /// Consecutive failed connection attempts.
    pub failures: u32,
}

impl Client {
    /// The peer this client talks to.
    pub fn peer(&self) -> &PeerIdentity {
        &self.inner.peer
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Connection state.
    pub async fn status(&self) -> ClientStatus {
        let state = self.inner.state.lock().await;
        ClientStatus {
            connected: state.connection.as_ref().is_some_and(|c| c.close_reason().is_none()),
            failures: state.failures,
        }
    }

    /// Sends one request and waits for its response (bounded by the request timeout).
    ///
    /// Dials first if there is no open connection. A [`TransportError::Remote`] carries the
    /// handler's error; [`TransportError::is_retryable`] says whether to send again.
    pub async fn request(&self, request: Frame) -> Result<Frame, TransportError> {
        let endpoint = &self.inner.endpoint;
        if endpoint.is_shutting_down() {
            return Err(TransportError::ShuttingDown);
        }
        if !request.frame_type.is_application() {
            return Err(TransportError::Frame {
                peer: self.inner.addr,
                source: FrameError::UnexpectedType {
                    found: request.frame_type,
                    context: "requests use application types",
                },
            });
        }
        let _guard = endpoint.outbound.enter();
        let connection = self.connection().await?;
        let timeout = endpoint.settings.request_timeout;
        match tokio::time::timeout(timeout, self.exchange(&connection, &request)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { peer: self.inner.addr, timeout }),
        }
    }

    /// Sends raw bytes as a request stream and reads the answer; for tests of the peer's
    /// frame validation.
    #[doc(hidden)]
    pub async fn request_raw(&self, bytes: Bytes) -> Result<Frame, TransportError> {
        let connection = self.connection().await?;
        let peer = self.inner.addr;
        let lost = |reason: String| TransportError::ConnectionLost { peer, reason };
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|e| connection_error(peer, e))?;
        send.write_all(&bytes).await.map_err(|e| lost(e.to_string()))?;
        send.finish().map_err(|e| lost(e.to_string()))?;
        let response =
            read_response(peer, &mut recv, self.inner.endpoint.settings.max_payload).await?;
        into_result(peer, response)
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        request: &Frame,
    ) -> Result<Frame, TransportError> {
        let peer = self.inner.addr;
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|e| connection_error(peer, e))?;
        if let Err(reason) = write_frame(&mut send, request).await {
            return Err(match connection.close_reason() {
                Some(e) => connection_error(peer, e),
                None => TransportError::ConnectionLost { peer, reason },
            });
        }
        let response =
            read_response(peer, &mut recv, self.inner.endpoint.settings.max_payload).await;
        let response = match (response, connection.close_reason()) {
            (Err(_), Some(e)) => return Err(connection_error(peer, e)),
            (response, _) => response?,
        };
        into_result(peer, response)
    }

    /// The open connection, or a new one if the backoff schedule allows an attempt now.
    async fn connection(&self) -> Result<quinn::Connection, TransportError> {
        let mut state = self.inner.state.lock().await;
        if let Some(connection) = &state.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
            state.connection = None;
        }
        let now = Instant::now();
        if let Some(next) = state.next_attempt.filter(|next| *next > now) {
            return Err(TransportError::Backoff {
                peer: self.inner.addr,
                retry_in: next - now,
                last_error: state.last_error.clone(),
            });
        }
        match self.dial().await {
            Ok(connection) => {
                state.connection = Some(connection.clone());
                state.failures = 0;
                state.next_attempt = None;
                Ok(connection)
            }
            Err(e) => {
                let backoff = &self.inner.endpoint.settings.backoff;
                let wait = backoff.delay(state.failures, rand::random::<f64>());
                state.failures = state.failures.saturating_add(1);
                state.next_attempt = Some(Instant::now() + wait);
                state.last_error = e.to_string();
                warn!(peer = %self.inner.addr, error = %e, retry_in_ms = wait.as_millis() as u64, "dial failed");
                Err(e)
            }
        }
    }

    /// One connection attempt: handshake, then a hello that proves the peer admitted us.
    async fn dial(&self) -> Result<quinn::Connection, TransportError> {
        let endpoint = &self.inner.endpoint;
        let peer = self.inner.addr;
        let (tls, verdict) = endpoint.tls.client_config(self.inner.peer.clone(), peer)?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(endpoint.transport.clone());
        let server_name = self.inner.peer.dns_name();
        let attempt = async {
            let connecting = endpoint
                .quinn
                .connect_with(config, peer, &server_name)
                .map_err(|e| TransportError::Connect { peer, reason: e.to_string() })?;
            let connection = connecting.await.map_err(|e| connection_error(peer, e))?;
            let hello = Frame::new(FrameType::HELLO, Bytes::new());
            let (mut send, mut recv) =
                connection.open_bi().await.map_err(|e| connection_error(peer, e))?;
            let sent = write_frame(&mut send, &hello).await;
            let answer = match sent {
                Ok(()) => read_response(peer, &mut recv, 1024).await,
                Err(reason) => Err(TransportError::ConnectionLost { peer, reason }),
            };
            match (answer, connection.close_reason()) {
                (Ok(frame), _) if frame.frame_type == FrameType::HELLO_ACK => Ok(connection),
                (Ok(frame), _) => Err(TransportError::Frame {
                    peer,
                    source: FrameError::UnexpectedType {
                        found: frame.frame_type,
                        context: "expected the hello acknowledgement",
                    },
                }),
                (Err(_), Some(e)) => Err(connection_error(peer, e)),
                (Err(e), None) => Err(e),
            }
        };
        let result = match tokio::time::timeout(endpoint.settings.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Connect {
                peer,
                reason: format!(
                    "no handshake within {} ms",
                    endpoint.settings.connect_timeout.as_millis()
                ),
            }),
        };
        match (result, verdict.get()) {
            (_, Some(Err(rejection))) => {
                Err(TransportError::Rejected { peer, rejection: Box::new(rejection) })
            }
            (Ok(connection), _) => {
                endpoint.counters.dials.fetch_add(1, Ordering::Relaxed);
                info!(%peer, site = %self.inner.peer.site, node = %self.inner.peer.node, "connected");
                Ok(connection)
            }
            (Err(e), _) => Err(e),
        }
    }
}

async fn read_response(
    peer: SocketAddr,
    recv: &mut quinn::RecvStream,
    max_payload: u32,
) -> Result<Frame, TransportError> {
    match read_frame(recv, max_payload, None).await {
        Ok((frame, _)) => Ok(frame),
        Err(ReadError::Frame(source)) => Err(TransportError::Frame { peer, source }),
        Err(ReadError::Stream(reason)) => Err(TransportError::ConnectionLost { peer, reason }),
    }
}

fn into_result(peer: SocketAddr, response: Frame) -> Result<Frame, TransportError> {
    if response.frame_type == FrameType::ERROR {
        let (retryable, message) =
            response.parse_error().map_err(|source| TransportError::Frame { peer, source })?;
        return Err(TransportError::Remote { peer, retryable, message });
    }
    if !response.frame_type.is_application() {
        return Err(TransportError::Frame {
            peer,
            source: FrameError::UnexpectedType {
                found: response.frame_type,
                context: "responses use application types",
            },
        });
    }
    Ok(response)
}

/// Maps a quinn connection error to the transport's taxonomy.
fn connection_error(peer: SocketAddr, error: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as E;
    match error {
        // A TLS alert from the peer: it refused our certificate or our handshake.
        E::ConnectionClosed(close) if is_crypto(close.error_code) => {
            TransportError::RefusedByPeer {
                peer,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        E::TransportError(e) if is_crypto(e.code) => {
            TransportError::Connect { peer, reason: format!("TLS handshake: {e}") }
        }
        E::ApplicationClosed(close) if close.error_code == CLOSE_SHUTDOWN.into() => {
            TransportError::ConnectionLost { peer, reason: "the peer is shutting down".to_owned() }
        }
        E::TimedOut => TransportError::ConnectionLost {
            peer,
            reason: "idle timeout: nothing heard from the peer".to_owned(),
        },
        E::LocallyClosed => TransportError::ShuttingDown,
        other => TransportError::ConnectionLost { peer, reason: other.to_string() },
    }
}

fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    let code = u64::from(code);
    (0x100..0x200).contains(&code)
}
