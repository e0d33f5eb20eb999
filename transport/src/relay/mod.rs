//! The userspace WAN relay: a UDP forwarder that makes loopback behave like a WAN.
//!
//! Clients send to `listen`; the relay forwards to `forward` from one upstream socket per client
//! address (so replies find their way back), and each direction passes through a
//! [`Shaper`] (partition, loss, token-bucket rate, delay, jitter) and a delay line.
//! [`Direction::Forward`] is listen → forward, [`Direction::Reverse`] the way back.
//!
//! Bounded by construction: one received datagram yields at most one sent datagram
//! (`passed + dropped + queued == received` per direction, see [`DirectionCounters`]), the
//! delay lines hold at most `max_queued` datagrams, and at most `max_sessions` client addresses
//! are relayed at once. Conditions change at runtime through [`RelayHandle`] or the line-based
//! control socket ([`control`]).

pub mod control;
mod shaper;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

pub use shaper::{DropReason, LinkShape, Shaper, Verdict};

/// Largest UDP payload relayed.
const MAX_DATAGRAM: usize = 65_535;

/// Relay failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A socket failed.
    #[error("{action}: {source}")]
    Io { action: String, source: std::io::Error },
    /// The control socket answered with an error.
    #[error("relay control: {0}")]
    Control(String),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> RelayError {
    let action = action.into();
    move |source| RelayError::Io { action, source }
}

/// A direction through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From the clients at `listen` to `forward`.
    Forward,
    /// From `forward` back to the clients.
    Reverse,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Forward => 0,
            Direction::Reverse => 1,
        }
    }
}

/// How a relay starts. Every default is written next to its field.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Address clients send to.
    pub listen: SocketAddr,
    /// Address datagrams are forwarded to.
    pub forward: SocketAddr,
    /// TCP address of the control socket; `None` for no control socket. Default: `None`.
    pub control: Option<SocketAddr>,
    /// Conditions listen → forward. Default: [`LinkShape::default`] (a perfect link).
    pub forward_shape: LinkShape,
    /// Conditions forward → listen. Default: [`LinkShape::default`].
    pub reverse_shape: LinkShape,
    /// Seed of the loss and jitter draws; `None` seeds from the OS. Default: `None`.
    pub seed: Option<u64>,
    /// Most client addresses relayed at once. Default: 256.
    pub max_sessions: usize,
    /// A client silent for this long loses its upstream socket. Default: 60 s.
    pub session_idle: Duration,
    /// Most datagrams waiting in each delay line. Default: 65 536.
    pub max_queued: usize,
}

impl RelayConfig {
    /// A perfect relay from `listen` to `forward`.
    pub fn new(listen: SocketAddr, forward: SocketAddr) -> RelayConfig {
        RelayConfig {
            listen,
            forward,
            control: None,
            forward_shape: LinkShape::default(),
            reverse_shape: LinkShape::default(),
            seed: None,
            max_sessions: 256,
            session_idle: Duration::from_secs(60),
            max_queued: 65_536,
        }
    }

    /// The same conditions in both directions.
    pub fn with_shape(mut self, shape: LinkShape) -> RelayConfig {
        self.forward_shape = shape;
        self.reverse_shape = shape;
        self
    }
}

/// Applies one `key=value` setting (`delay-ms`, `jitter-ms`, `loss`, `rate-mbit`, `burst-kb`,
/// `queue-kb`, `partition`) to a shape. `rate-mbit=0` removes the cap.
pub fn apply_setting(shape: &mut LinkShape, key: &str, value: &str) -> Result<(), String> {
    let number = |v: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("{key}: '{v}' is not a non-negative number"))
    };
    match key {
        "delay-ms" => shape.delay = Duration::from_secs_f64(number(value)? / 1000.0),
        "jitter-ms" => shape.jitter = Duration::from_secs_f64(number(value)? / 1000.0),
        "loss" => {
            let p = number(value)?;
            if p > 1.0 {
                return Err(format!("loss: {value} is not a probability in [0, 1]"));
            }
            shape.loss = p;
        }
        "rate-mbit" => {
            let mbit = number(value)?;
            shape.rate = (mbit > 0.0).then_some((mbit * 125_000.0) as u64);
        }
        "burst-kb" => shape.burst = (number(value)? * 1024.0) as u64,
        "queue-kb" => shape.queue_limit = (number(value)? * 1024.0) as u64,
        "partition" => {
            shape.partitioned = match value {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => return Err(format!("partition: '{value}' is not on/off")),
            }
        }
        _ => {
            return Err(format!(
                "unknown setting '{key}'; use delay-ms, jitter-ms, loss, rate-mbit, burst-kb, queue-kb, partition"
            ));
        }
    }
    Ok(())
}

/// Counters of one direction.
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    received_bytes: AtomicU64,
    passed: AtomicU64,
    passed_bytes: AtomicU64,
    delayed: AtomicU64,
    dropped_partition: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_overflow: AtomicU64,
    dropped_send: AtomicU64,
    queued: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DirectionCounters {
    /// Datagrams received.
    pub received: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Datagrams sent on.
    pub passed: u64,
    /// Bytes sent on.
    pub passed_bytes: u64,
    /// Datagrams held for a non-zero time (delay, jitter or rate).
    pub delayed: u64,
    /// Dropped by the partition switch.
    pub dropped_partition: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped because the rate limiter's queue was full.
    pub dropped_queue: u64,
    /// Dropped because the delay line or the session table was full.
    pub dropped_overflow: u64,
    /// Dropped because sending failed (e.g. nothing listens at the target).
    pub dropped_send: u64,
    /// Datagrams waiting in the delay line now.
    pub queued: u64,
}

impl DirectionCounters {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_partition
            + self.dropped_loss
            + self.dropped_queue
            + self.dropped_overflow
            + self.dropped_send
    }
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayCounters {
    /// Listen → forward.
    pub forward: DirectionCounters,
    /// Forward → listen.
    pub reverse: DirectionCounters,
}

impl Counters {
    fn snapshot(&self) -> DirectionCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionCounters {
            received: get(&self.received),
            received_bytes: get(&self.received_bytes),
            passed: get(&self.passed),
            passed_bytes: get(&self.passed_bytes),
            delayed: get(&self.delayed),
            dropped_partition: get(&self.dropped_partition),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            dropped_overflow: get(&self.dropped_overflow),
            dropped_send: get(&self.dropped_send),
            queued: get(&self.queued),
        }
    }
}

#[derive(Debug)]
struct Session {
    socket: Arc<UdpSocket>,
    last_seen: Mutex<Instant>,
}

#[derive(Debug)]
struct Shared {
    config: RelayConfig,
    shapers: [Mutex<Shaper>; 2],
    counters: [Counters; 2],
    rng: Mutex<StdRng>,
    sessions: Mutex<HashMap<SocketAddr, Arc<Session>>>,
}

#[derive(Debug)]
enum Target {
    Upstream(Arc<UdpSocket>),
    Client(Arc<UdpSocket>, SocketAddr),
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    packet: Bytes,
    target: Target,
}

impl Shared {
    /// Runs the shaper on one received datagram and queues or drops it.
    fn admit(
        &self,
        direction: Direction,
        packet: Bytes,
        target: Target,
        line: &mpsc::Sender<Queued>,
    ) {
        let counters = &self.counters[direction.index()];
        counters.received.fetch_add(1, Ordering::Relaxed);
        counters.received_bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let verdict = match (self.shapers[direction.index()].lock(), self.rng.lock()) {
            (Ok(mut shaper), Ok(mut rng)) => shaper.on_packet(packet.len(), now, &mut *rng),
            _ => Verdict::Drop(DropReason::Queue),
        };
        match verdict {
            Verdict::Drop(DropReason::Partition) => {
                counters.dropped_partition.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Drop(DropReason::Loss) => {
                counters.dropped_loss.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Drop(DropReason::Queue) => {
                counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Deliver { at } => {
                if at > now {
                    counters.delayed.fetch_add(1, Ordering::Relaxed);
                }
                counters.queued.fetch_add(1, Ordering::Relaxed);
                if line.try_send(Queued { at, packet, target }).is_err() {
                    counters.queued.fetch_sub(1, Ordering::Relaxed);
                    counters.dropped_overflow.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Socket buffers requested for relay sockets: a relay forwards bursts (a delay line releases
/// what became due in each millisecond tick), which the default ~200 KiB buffers would drop as
/// if the WAN had lost them. The kernel caps the request at `net.core.rmem_max`/`wmem_max`.
const SOCKET_BUFFER: usize = 8 << 20;

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort, like the endpoint's sockets.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A running relay. Dropping the handle does not stop it; call [`RelayHandle::shutdown`].
#[derive(Debug)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    listen: SocketAddr,
    control: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The relay's entry point.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Binds the listen (and control) sockets and starts relaying. Must run inside Tokio.
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        let listen_socket = Arc::new(
            bind_udp(config.listen)
                .map_err(io(format!("bind relay listen address {}", config.listen)))?,
        );
        let listen = listen_socket.local_addr().map_err(io("read relay listen address"))?;
        let control_listener = match config.control {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(io(format!("bind relay control address {addr}")))?,
            ),
            None => None,
        };
        let control = match &control_listener {
            Some(l) => Some(l.local_addr().map_err(io("read relay control address"))?),
            None => None,
        };
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let shared = Arc::new(Shared {
            shapers: [
                Mutex::new(Shaper::new(config.forward_shape)),
                Mutex::new(Shaper::new(config.reverse_shape)),
            ],
            counters: Default::default(),
            rng: Mutex::new(rng),
            sessions: Mutex::default(),
            config,
        });
        let (stop, stopped) = watch::channel(false);
        let (forward_tx, forward_rx) = mpsc::channel(shared.config.max_queued);
        let (reverse_tx, reverse_rx) = mpsc::channel(shared.config.max_queued);
        let mut tasks = vec![
            tokio::spawn(delay_line(
                shared.clone(),
                Direction::Forward,
                forward_rx,
                stopped.clone(),
            )),
            tokio::spawn(delay_line(
                shared.clone(),
                Direction::Reverse,
                reverse_rx,
                stopped.clone(),
            )),
            tokio::spawn(listen_loop(
                shared.clone(),
                listen_socket,
                forward_tx,
                reverse_tx,
                stopped.clone(),
            )),
        ];
        if let Some(listener) = control_listener {
            tasks.push(tokio::spawn(control::serve(listener, shared.clone(), stopped)));
        }
        info!(%listen, forward = %shared.config.forward, ?control, "WAN relay started");
        Ok(RelayHandle { shared, listen, control, stop, tasks })
    }
}

impl Shared {
    fn shape(&self, direction: Direction) -> LinkShape {
        self.shapers[direction.index()].lock().map(|s| s.shape()).unwrap_or_default()
    }

    fn update(&self, direction: Direction, f: &mut dyn FnMut(&mut LinkShape)) {
        if let Ok(mut shaper) = self.shapers[direction.index()].lock() {
            let mut shape = shaper.shape();
            f(&mut shape);
            shaper.set_shape(shape);
        }
    }

    fn counters(&self) -> RelayCounters {
        RelayCounters { forward: self.counters[0].snapshot(), reverse: self.counters[1].snapshot() }
    }
}

impl RelayHandle {
    /// The address clients send to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The control socket's address, if one was asked for.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }

    /// The current conditions of a direction.
    pub fn shape(&self, direction: Direction) -> LinkShape {
        self.shared.shape(direction)
    }

    /// Replaces the conditions of a direction; applies to datagrams received from now on.
    pub fn set_shape(&self, direction: Direction, shape: LinkShape) {
        self.shared.update(direction, &mut |s| *s = shape);
    }

    /// Turns the partition switch of both directions on or off.
    pub fn set_partitioned(&self, partitioned: bool) {
        for direction in [Direction::Forward, Direction::Reverse] {
            self.shared.update(direction, &mut |s| s.partitioned = partitioned);
        }
        info!(partitioned, "WAN relay partition switch");
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> RelayCounters {
        self.shared.counters()
    }

    /// Stops relaying; queued datagrams are discarded.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn listen_loop(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    forward: mpsc::Sender<Queued>,
    reverse: mpsc::Sender<Queued>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stopped.changed() => break,
        };
        // Errors on an unconnected UDP socket (e.g. ICMP echoes) are per datagram: keep going.
        let Ok((len, client)) = received else {
            continue;
        };
        let packet = Bytes::copy_from_slice(&buf[..len]);
        let Some(session) = session(&shared, &socket, client, &reverse, &stopped).await else {
            let counters = &shared.counters[Direction::Forward.index()];
            counters.received.fetch_add(1, Ordering::Relaxed);
            counters.received_bytes.fetch_add(len as u64, Ordering::Relaxed);
            counters.dropped_overflow.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Ok(mut seen) = session.last_seen.lock() {
            *seen = Instant::now();
        }
        shared.admit(
            Direction::Forward,
            packet,
            Target::Upstream(session.socket.clone()),
            &forward,
        );
    }
}

/// The session of `client`, created (with its upstream socket and reader) on first sight.
async fn session(
    shared: &Arc<Shared>,
    listen: &Arc<UdpSocket>,
    client: SocketAddr,
    reverse: &mpsc::Sender<Queued>,
    stopped: &watch::Receiver<bool>,
) -> Option<Arc<Session>> {
    if let Some(session) = shared.sessions.lock().ok()?.get(&client) {
        return Some(session.clone());
    }
    if shared.sessions.lock().ok()?.len() >= shared.config.max_sessions {
        return None;
    }
    let bind: SocketAddr = if shared.config.forward.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    };
    let socket = bind_udp(bind).ok()?;
    socket.connect(shared.config.forward).await.ok()?;
    let session =
        Arc::new(Session { socket: Arc::new(socket), last_seen: Mutex::new(Instant::now()) });
    shared.sessions.lock().ok()?.insert(client, session.clone());
    debug!(%client, "relay session opened");
    tokio::spawn(upstream_loop(
        shared.clone(),
        session.clone(),
        listen.clone(),
        client,
        reverse.clone(),
        stopped.clone(),
    ));
    Some(session)
}

async fn upstream_loop(
    shared: Arc<Shared>,
    session: Arc<Session>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    reverse: mpsc::Sender<Queued>,
    mut stopped: watch::Receiver<bool>,
) {
    let idle = shared.config.session_idle;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            r = tokio::time::timeout(idle, session.socket.recv(&mut buf)) => r,
            _ = stopped.changed() => break,
        };
        match received {
            Ok(Ok(len)) => {
                if let Ok(mut seen) = session.last_seen.lock() {
                    *seen = Instant::now();
                }
                let packet = Bytes::copy_from_slice(&buf[..len]);
                shared.admit(
                    Direction::Reverse,
                    packet,
                    Target::Client(listen.clone(), client),
                    &reverse,
                );
            }
            // ECONNREFUSED and friends: the target is not listening (yet); keep the session.
            Ok(Err(_)) => {}
            Err(_) => {
                let quiet =
                    session.last_seen.lock().map(|seen| seen.elapsed() >= idle).unwrap_or(true);
                if quiet {
                    break;
                }
            }
        }
    }
    if let Ok(mut sessions) = shared.sessions.lock() {
        sessions.remove(&client);
    }
    debug!(%client, "relay session closed");
}

/// A datagram in a delay line, ordered by (delivery instant, arrival sequence).
#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    packet: Bytes,
    target: Target,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

async fn delay_line(
    shared: Arc<Shared>,
    direction: Direction,
    mut rx: mpsc::Receiver<Queued>,
    mut stopped: watch::Receiver<bool>,
) {
    let counters = &shared.counters[direction.index()];
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        // Send everything due without going through the timer (it has millisecond granularity).
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            let Some(Reverse(entry)) = heap.pop() else { break };
            counters.queued.fetch_sub(1, Ordering::Relaxed);
            let sent = match &entry.target {
                Target::Upstream(socket) => socket.send(&entry.packet).await,
                Target::Client(socket, addr) => socket.send_to(&entry.packet, *addr).await,
            };
            match sent {
                Ok(_) => {
                    counters.passed.fetch_add(1, Ordering::Relaxed);
                    counters.passed_bytes.fetch_add(entry.packet.len() as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    counters.dropped_send.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let next = heap.peek().map(|Reverse(e)| e.at);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut push = |item: Queued| {
            heap.push(Reverse(Entry {
                at: item.at,
                seq,
                packet: item.packet,
                target: item.target,
            }));
            seq += 1;
        };
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { break };
                push(item);
                while let Ok(item) = rx.try_recv() {
                    push(item);
                }
            }
            () = sleep => {}
            _ = stopped.changed() => break,
        }
    }
    counters.queued.fetch_sub(heap.len() as u64, Ordering::Relaxed);
    counters.dropped_overflow.fetch_add(heap.len() as u64, Ordering::Relaxed);
}
