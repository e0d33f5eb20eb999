//! The async shipper of one DR link: the I/O shell around [`Engine`], which makes every
//! decision (see [`crate::engine`]).
//!
//! The shell reads the link's digest-log cursor, reads the **current** version of each record
//! a batch names (so a retry never ships an older version), groups them by the destination
//! node that owns them, encodes and compresses them, sends one QUIC stream per node and batch,
//! checkpoints the cursor, scans the store for overflow recovery and rewinds, asks idle
//! destinations whether they are there, and sleeps until the engine's next deadline; each
//! result goes back into the engine as an [`Event`], and the shell carries out the
//! [`Action`]s that come back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_digestlog::{Batch as LogBatch, Cursor, CursorError, Digest, Lsn, ReadError};
use ferry_transport::{Endpoint, Frame};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ack;
use crate::batch::{Compression, ShippedRecord};
use crate::engine::{Action, Engine, Event, NamespaceGauges, Outcome, Scanned, TakenOver};
use crate::link::{LinkState, LogRates, lag_with_parked, shown_state};
use crate::parked::ParkedRecord;
use crate::plan::LinkPlan;
use crate::send::{AttemptError, Shared, StoreFailure};
use crate::stats::{LinkStats, add, set};
use crate::window::WindowError;

pub use crate::engine::ShipperSettings;
pub use crate::link::{LinkCommand, LinkControl};

/// What the store holds for a record at ship time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRecord {
    /// The current version, tombstones included.
    Current(ShippedRecord),
    /// Gone without a trace (expired and reclaimed).
    Gone,
    /// Stored but unreadable (damaged bytes): it cannot ship, so it is parked with this reason.
    Unreadable(String),
}

/// The local side the shipper works with: the node's store, and the link's parked records.
pub trait LocalRecords: Send + Sync + 'static {
    /// Why the store could not answer.
    type Error: std::error::Error + Send + Sync + 'static;

    /// What the store holds for a record now. Must wait for a write of the record in progress:
    /// a node logs a change before it stores the version, both under the record's lock, so a
    /// read under that lock never returns a version older than a logged change.
    fn read(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<LocalRecord, Self::Error>> + Send;

    /// Whether this node masters the record's partition now. A change it stored only as a
    /// copy (or found by a store scan) ships from the master alone.
    fn masters(&self, namespace: &str, digest: &Digest) -> bool;

    /// Resolves once every version of `namespace` read so far is durable here: the shipper
    /// waits for it before sending, so a destination never holds a version that a power loss
    /// at the source could take back.
    fn durable(&self, namespace: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Adds `records` to the parked list of link `dc` (replacing what was parked under the
    /// same namespace and digest) and removes `unparked`; durable when it returns. Blocking.
    fn update_parked(
        &self,
        dc: &str,
        records: &[ParkedRecord],
        unparked: &[(String, Digest)],
    ) -> Result<(), Self::Error>;

    /// Everything parked for link `dc`. Blocking.
    fn parked(&self, dc: &str) -> Result<Vec<ParkedRecord>, Self::Error>;

    /// Digests and LUTs of the records of one partition changed at or after `min_lut_ms`,
    /// tombstones included (overflow recovery and rewind). Blocking: runs on the blocking pool.
    fn changed_since(
        &self,
        namespace: &str,
        partition: u16,
        min_lut_ms: u64,
    ) -> Result<Vec<(Digest, u64)>, Self::Error>;
}

/// Wall-clock milliseconds since the Unix epoch (record LUTs use the same clock).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why a link stopped before it was told to (its cursor holds its place; a restart resumes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    #[error("load the parked records: {0}")]
    LoadParked(#[source] StoreFailure),
    #[error("read the digest log: {0}")]
    ReadLog(#[source] ReadError),
    #[error("checkpoint the link's cursor: {0}")]
    Checkpoint(#[source] CursorError),
    #[error("acknowledge the overflow: {0}")]
    AcknowledgeOverflow(#[source] CursorError),
    #[error("scan the store for recovery: {0}")]
    Scan(#[source] StoreFailure),
    #[error("open a batch: {0}")]
    Window(#[source] WindowError),
    #[error("a shipper task failed")]
    Task,
}

/// The shipper of one link.
#[derive(Debug)]
pub struct Shipper<R> {
    shared: Arc<Shared<R>>,
    stats: Arc<LinkStats>,
    settings: ShipperSettings,
    shutdown: watch::Receiver<bool>,
}

/// I/O in progress, as the engine's actions left it.
#[derive(Debug, Default)]
struct InProgress {
    /// The read the engine asked for (most entries).
    reading: Option<usize>,
    wake_at_ms: Option<u64>,
    sends: JoinSet<(u64, Result<Outcome, AttemptError>)>,
    heartbeats: JoinSet<bool>,
    scans: JoinSet<Result<Scanned, StoreFailure>>,
    /// The operator's retries and discards of parked records.
    parked_ops: JoinSet<(ParkedOp, Result<u64, AttemptError>)>,
    /// Which destination the next heartbeat goes to.
    heartbeat_turn: usize,
    /// The state the engine announced, and the one shown (parked records make an active link
    /// `degraded`).
    engine_state: Option<LinkState>,
    shown_state: Option<LinkState>,
}

/// An operator's command on the parked records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParkedOp {
    Retry,
    Discard,
}

/// What the shell waited for.
enum Next {
    Event(Event),
    /// An attempt failed: logged with the retry time the engine chose.
    Failed {
        id: u64,
        error: AttemptError,
    },
    /// An operator's command on the parked records finished (nothing for the engine).
    Parked,
}

impl<R: LocalRecords> Shipper<R> {
    /// A shipper for `plan`, sending through `endpoint`, counting into `stats`.
    pub fn new(
        plan: LinkPlan,
        records: Arc<R>,
        endpoint: &Endpoint,
        stats: Arc<LinkStats>,
        settings: ShipperSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let clients = plan
            .remote_nodes
            .values()
            .map(|n| (n.id.clone(), endpoint.client(n.identity.clone(), n.xdr)))
            .collect();
        let compression = Compression {
            level: i32::from(plan.link.compression_level),
            threshold: plan.link.compression_threshold as usize,
        };
        let shared = Shared::new(Arc::new(plan), records, clients, compression);
        Shipper { shared: Arc::new(shared), stats, settings, shutdown }
    }

    /// Ships until `shutdown` flips (then `Ok`), or until something fails that only a
    /// restart can clear (the caller restarts it). The cursor is committed only past
    /// acknowledged batches, so whatever was in flight ships again after a restart.
    pub async fn run(
        self,
        mut cursor: Cursor,
        mut control: watch::Receiver<LinkControl>,
    ) -> Result<(), StopError> {
        let dc = self.shared.plan.dc().to_owned();
        self.shared.load_parked().await.map_err(StopError::LoadParked)?;
        let shared = Arc::clone(&self.shared);
        let mut shutdown = self.shutdown.clone();
        let started = now_ms();
        let initial = *control.borrow_and_update();
        let plan = Arc::clone(&shared.plan);
        let mut engine = Engine::new(plan, self.settings, cursor.committed().0, initial, started);
        let every_ms = self.settings.heartbeat.as_millis() as u64;
        let mut rates = LogRates::new(every_ms, started, cursor.flushed().0, cursor.committed().0);
        // No estimate until the first rates are sampled: not "no time left".
        set(&self.stats.log_time_left, u64::MAX);
        let mut io = InProgress::default();
        let mut last_control = initial;
        let mut error_shown = self.stats.error().is_some();
        tracing::info!(dc, committed = %cursor.committed(), parked = shared.parked_summary().count, "link shipping");
        let mut actions = engine.handle(started, Event::Tick);
        // Partitions taken over before this shipper started (or while it restarted).
        let taken_over = self.taken_over(&shared.plan);
        if !taken_over.is_empty() {
            actions.extend(engine.handle(started, Event::TakeOver(taken_over)));
        }
        let stopped = loop {
            match self.execute(&shared, actions, &mut cursor, &mut io).await {
                Err(error) => break Err(error),
                Ok(Some(event)) => {
                    actions = engine.handle(now_ms(), event);
                    continue;
                }
                Ok(None) => {}
            }
            self.publish(&shared, &mut engine, &cursor, &mut rates, &mut io);
            let next = self.next(&shared, &mut cursor, &mut control, &mut shutdown, &mut io);
            actions = match next.await {
                Ok(Some(Next::Event(event))) => {
                    let mut taken_over = Vec::new();
                    match &event {
                        Event::Control { control, .. } => {
                            self.on_control(&shared, &last_control, control, &mut io);
                            if control.takeover_seq != last_control.takeover_seq {
                                taken_over = self.taken_over(&shared.plan);
                            }
                            last_control = *control;
                        }
                        // The destination answers again: the last stop is behind us.
                        Event::Acked { .. } | Event::Heartbeat { alive: true } if error_shown => {
                            self.stats.set_error(None);
                            error_shown = false;
                        }
                        _ => {}
                    }
                    let mut actions = engine.handle(now_ms(), event);
                    if !taken_over.is_empty() {
                        actions.extend(engine.handle(now_ms(), Event::TakeOver(taken_over)));
                    }
                    actions
                }
                Ok(Some(Next::Failed { id, error })) => {
                    let (now, cause) = (now_ms(), error.cause());
                    let failed = Event::Failed { id, cause, jitter: rand::random::<f64>() };
                    let actions = engine.handle(now, failed);
                    let retry_in_ms = engine.retry_at(id).map_or(0, |at| at.saturating_sub(now));
                    tracing::warn!(dc, batch = id, retry_in_ms, %error, "batch not acknowledged; will retry");
                    actions
                }
                Ok(Some(Next::Parked)) => Vec::new(),
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            };
        };
        if let Err(error) = &stopped {
            tracing::error!(dc, %error, "stopping the link");
        }
        io.sends.abort_all();
        io.heartbeats.abort_all();
        io.parked_ops.abort_all();
        let last = engine.handle(now_ms(), Event::Shutdown);
        if let Err(error) = self.execute(&shared, last, &mut cursor, &mut io).await {
            tracing::error!(dc, %error, "final checkpoint failed");
        }
        tracing::info!(dc, committed = %cursor.committed(), "link stopped");
        stopped
    }

    /// The partitions this node took over since last asked, by the link's namespace index
    /// (a namespace the link does not ship is dropped).
    fn taken_over(&self, plan: &LinkPlan) -> Vec<TakenOver> {
        self.stats
            .take_takeovers()
            .into_iter()
            .filter_map(|t| {
                let ns = plan.namespaces.iter().position(|n| n.name.as_str() == t.namespace)?;
                Some(TakenOver { ns, partition: t.partition, since_lut_ms: t.since_lut_ms })
            })
            .collect()
    }

    /// Starts the operator's commands on parked records that `control` asks for anew.
    fn on_control(
        &self,
        shared: &Arc<Shared<R>>,
        before: &LinkControl,
        control: &LinkControl,
        io: &mut InProgress,
    ) {
        let (batch_records, backoff) = (self.settings.batch_records, self.settings.retry);
        if control.retry_parked_seq != before.retry_parked_seq {
            let shared = Arc::clone(shared);
            io.parked_ops.spawn(async move {
                (ParkedOp::Retry, shared.retry_parked(batch_records, backoff).await)
            });
        }
        if control.discard_parked_seq != before.discard_parked_seq {
            let shared = Arc::clone(shared);
            io.parked_ops.spawn(async move { (ParkedOp::Discard, shared.discard_parked().await) });
        }
    }

    /// Carries out the engine's actions in order; returns what the engine must hear at once
    /// (the log overflowed again while a recovery ran).
    async fn execute(
        &self,
        shared: &Arc<Shared<R>>,
        actions: Vec<Action>,
        cursor: &mut Cursor,
        io: &mut InProgress,
    ) -> Result<Option<Event>, StopError> {
        let mut follow_up = None;
        for action in actions {
            match action {
                Action::Read { max } => io.reading = Some(max),
                Action::StopReading => io.reading = None,
                Action::Send { id, changes } => {
                    let shared = Arc::clone(shared);
                    io.sends.spawn(async move { (id, shared.attempt(id, &changes).await) });
                }
                Action::Commit { through } => {
                    cursor.commit(Lsn(through)).await.map_err(StopError::Checkpoint)?;
                }
                Action::Scan { ns, partition, min_lut_ms } => {
                    let shared = Arc::clone(shared);
                    io.scans.spawn_blocking(move || {
                        let namespace = &shared.plan.namespaces[ns].name;
                        shared
                            .records
                            .changed_since(namespace, partition, min_lut_ms)
                            .map_err(|e| StoreFailure::from(Box::new(e)))
                    });
                }
                Action::AcknowledgeOverflow(overflow) => {
                    match cursor.acknowledge_overflow(&overflow) {
                        Ok(()) => {}
                        // More was lost while the scan ran: recover again, from the earliest.
                        Err(CursorError::OverflowChanged { current }) => {
                            follow_up = current.map(Event::Overflowed);
                        }
                        Err(error) => return Err(StopError::AcknowledgeOverflow(error)),
                    }
                }
                Action::Heartbeat => {
                    // Round robin over the destination's nodes.
                    let clients = &shared.clients;
                    let turn = io.heartbeat_turn % clients.len().max(1);
                    let client = clients.values().nth(turn).cloned();
                    io.heartbeat_turn = io.heartbeat_turn.wrapping_add(1);
                    io.heartbeats.spawn(async move {
                        let Some(client) = client else { return false };
                        let frame =
                            Frame::new(ack::frame_type(ack::HEARTBEAT), bytes::Bytes::new());
                        client.request(frame).await.is_ok()
                    });
                }
                Action::SetState(state) => io.engine_state = Some(state),
                Action::WakeAt(at_ms) => io.wake_at_ms = Some(at_ms),
                Action::Fail(error) => return Err(StopError::Window(error)),
            }
        }
        if follow_up.is_some() {
            // The engine hears of the overflow as if a read had found it: no read is pending.
            io.reading = None;
        }
        Ok(follow_up)
    }

    /// Waits for the next thing the engine must hear about; `None` when told to stop.
    async fn next(
        &self,
        shared: &Shared<R>,
        cursor: &mut Cursor,
        control: &mut watch::Receiver<LinkControl>,
        shutdown: &mut watch::Receiver<bool>,
        io: &mut InProgress,
    ) -> Result<Option<Next>, StopError> {
        let wake_in = io
            .wake_at_ms
            .map_or(Duration::ZERO, |at| Duration::from_millis(at.saturating_sub(now_ms())));
        let event = tokio::select! {
            _ = shutdown.changed() => return Ok(None),
            changed = control.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
                let control = *control.borrow_and_update();
                Event::Control { control, logged_lsn: cursor.logged().0 }
            }
            Some(joined) = io.sends.join_next() => match joined.map_err(|_| StopError::Task)? {
                (id, Ok(outcome)) => Event::Acked { id, outcome },
                (id, Err(error)) => return Ok(Some(Next::Failed { id, error })),
            },
            Some(joined) = io.heartbeats.join_next() => {
                Event::Heartbeat { alive: joined.unwrap_or(false) }
            }
            Some(joined) = io.scans.join_next() => {
                let found = joined.map_err(|_| StopError::Task)?.map_err(StopError::Scan)?;
                Event::Scanned(found)
            }
            Some(joined) = io.parked_ops.join_next() => {
                let (op, result) = joined.map_err(|_| StopError::Task)?;
                let dc = shared.plan.dc();
                match (op, result) {
                    (ParkedOp::Retry, Ok(unparked)) => {
                        let left = shared.parked_summary().count;
                        tracing::info!(dc, unparked, left, "parked records retried");
                    }
                    (ParkedOp::Discard, Ok(discarded)) => {
                        add(&self.stats.discarded, discarded);
                        tracing::warn!(dc, discarded, "parked records discarded");
                    }
                    (op, Err(error)) => tracing::error!(dc, ?op, %error, "parked records unchanged"),
                }
                return Ok(Some(Next::Parked));
            }
            () = tokio::time::sleep(wake_in), if io.wake_at_ms.is_some() => Event::Tick,
            read = cursor.next_batch(io.reading.unwrap_or(1)), if io.reading.is_some() => {
                io.reading = None;
                match read.map_err(StopError::ReadLog)? {
                    LogBatch::Entries(entries) => Event::Read(entries),
                    LogBatch::Overflowed(overflow) => Event::Overflowed(overflow),
                }
            }
        };
        Ok(Some(Next::Event(event)))
    }

    /// Adds the engine's counts to the link's stats and sets its gauges; parked records count
    /// in the lag, the queue and the state.
    fn publish(
        &self,
        shared: &Shared<R>,
        engine: &mut Engine,
        cursor: &Cursor,
        rates: &mut LogRates,
        io: &mut InProgress,
    ) {
        let stats = &self.stats;
        let counts = engine.take_counts();
        for (counter, n) in [
            (&stats.entries_read, counts.entries_read),
            (&stats.filtered_out, counts.filtered_out),
            (&stats.hot_keys, counts.hot_keys),
            (&stats.success, counts.success),
            (&stats.not_found, counts.not_found),
            (&stats.bytes_raw, counts.bytes_raw),
            (&stats.bytes_shipped, counts.bytes_shipped),
            (&stats.retry_conn_reset, counts.retry_conn_reset),
            (&stats.retry_dest, counts.retry_dest),
            (&stats.recoveries, counts.recoveries),
            (&stats.drains, counts.drains),
        ] {
            add(counter, n);
        }
        let (raw, wire) =
            (stats.bytes_raw.load(Ordering::Relaxed), stats.bytes_shipped.load(Ordering::Relaxed));
        if let Some(ratio) = raw.saturating_mul(1000).checked_div(wire) {
            set(&stats.compression_ratio, ratio);
        }
        let parked = shared.parked_summary();
        let (now, flushed, committed) = (now_ms(), cursor.flushed().0, cursor.committed().0);
        // Behind counts every change logged, flushed or not: an acknowledged write whose
        // entry is still on its way to disk is not caught up.
        let gauges = engine.gauges(now, cursor.logged().0);
        let link = NamespaceGauges {
            lag_ms: lag_with_parked(gauges.lag_ms, now, parked),
            in_queue: cursor.backlog() + parked.count,
            in_progress: gauges.in_progress,
        };
        set(&stats.lag, link.lag_ms);
        // How far this link shipped, for a node taking partitions over from this one: every
        // change older than this is acknowledged, including what a recovery still re-ships.
        let through = now.saturating_sub(link.lag_ms);
        stats.set_shipped_through(engine.recovery_floor_ms().map_or(through, |f| f.min(through)));
        set(&stats.in_progress, link.in_progress);
        set(&stats.throughput, gauges.throughput);
        set(&stats.latency_ms, gauges.latency_ms);
        set(&stats.in_queue, link.in_queue);
        let by_namespace = engine.namespace_gauges(now, cursor.logged().0, link, parked.count > 0);
        for (i, ns) in shared.plan.namespaces.iter().enumerate() {
            let (counts, gauges) = (counts.by_namespace.get(&i), by_namespace.get(&i));
            stats.publish_namespace(&ns.name, counts.copied(), gauges.copied());
        }
        set(&stats.parked, parked.count);
        if let Some(left) = rates.sample(now, flushed, committed, cursor.capacity_entries()) {
            set(&stats.log_time_left, left.unwrap_or(u64::MAX));
        }
        let shown = io.engine_state.map(|state| shown_state(state, parked));
        if shown != io.shown_state
            && let Some(state) = shown
        {
            io.shown_state = shown;
            stats.set_state(state);
        }
    }
}
