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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_digestlog::{Batch as LogBatch, Cursor, CursorError, Digest, Lsn, ReadError};
use ferry_topology::model::NodeId;
use ferry_transport::{Client, Endpoint, Frame, TransportError};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ack::{self, Ack, AckError};
use crate::batch::{Batch, Compression, ShippedRecord};
use crate::engine::{Action, Cause, Change, Engine, Event, Outcome, Scanned};
use crate::link::LogRates;
use crate::plan::LinkPlan;
use crate::stats::{LinkStats, add, set};
use crate::window::WindowError;

pub use crate::engine::ShipperSettings;
pub use crate::link::{LinkCommand, LinkControl};

/// The local side the shipper reads from: the node's store.
pub trait LocalRecords: Send + Sync + 'static {
    /// Why the store could not answer.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The current version of a record, tombstones included; `None` when it is gone without a
    /// trace (expired and reclaimed). Must wait for a write of the record in progress: a node
    /// logs a change before it stores the version, both under the record's lock, so a read
    /// under that lock never returns a version older than a logged change.
    fn read(
        &self,
        namespace: &str,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<ShippedRecord>, Self::Error>> + Send;

    /// Digests and LUTs of the records of one partition changed at or after `min_lut_ms`,
    /// tombstones included (overflow recovery and rewind). Blocking: runs on the blocking pool.
    fn changed_since(
        &self,
        namespace: &str,
        partition: u16,
        min_lut_ms: u64,
    ) -> Result<Vec<(Digest, u64)>, Self::Error>;
}

/// A store error, once the shell no longer needs its type.
type StoreFailure = Box<dyn std::error::Error + Send + Sync>;

/// Wall-clock milliseconds since the Unix epoch (record LUTs use the same clock).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why one attempt to ship a batch failed (the engine retries it).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("read local record: {0}")]
    ReadRecord(#[source] StoreFailure),
    #[error("send task failed")]
    SendTask,
    #[error(
        "acknowledgement of batch {acked} for {acked_records} records, sent batch {sent} with {records}"
    )]
    Mismatch { acked: u64, acked_records: u64, sent: u64, records: u32 },
    #[error("bad acknowledgement: {0}")]
    Ack(#[from] AckError),
    #[error(transparent)]
    Transport(TransportError),
}

impl AttemptError {
    fn cause(&self) -> Cause {
        match self {
            AttemptError::Transport(error) if !matches!(error, TransportError::Remote { .. }) => {
                Cause::Connection
            }
            _ => Cause::Destination,
        }
    }
}

/// Why a link stops before it is told to (its cursor holds its place; a restart resumes).
#[derive(Debug, thiserror::Error)]
enum StopError {
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

/// What the shipper's I/O tasks need.
struct Shared<R> {
    plan: Arc<LinkPlan>,
    records: Arc<R>,
    clients: BTreeMap<NodeId, Client>,
    compression: Compression,
}

impl<R> std::fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dc", &self.plan.dc()).finish_non_exhaustive()
    }
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
    /// Which destination the next heartbeat goes to.
    heartbeat_turn: usize,
}

/// What the shell waited for.
enum Next {
    Event(Event),
    /// An attempt failed: logged with the retry time the engine chose.
    Failed {
        id: u64,
        error: AttemptError,
    },
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
        let shared = Shared { plan: Arc::new(plan), records, clients, compression };
        Shipper { shared: Arc::new(shared), stats, settings, shutdown }
    }

    /// Ships until `shutdown` flips. The cursor is committed only past acknowledged batches,
    /// so whatever was in flight at shutdown ships again after a restart.
    pub async fn run(self, mut cursor: Cursor, mut control: watch::Receiver<LinkControl>) {
        let dc = self.shared.plan.dc().to_owned();
        let mut shutdown = self.shutdown.clone();
        let started = now_ms();
        let initial = *control.borrow_and_update();
        let plan = Arc::clone(&self.shared.plan);
        let mut engine = Engine::new(plan, self.settings, cursor.committed().0, initial, started);
        let every_ms = self.settings.heartbeat.as_millis() as u64;
        let mut rates = LogRates::new(every_ms, started, cursor.flushed().0, cursor.committed().0);
        let mut io = InProgress::default();
        tracing::info!(dc, committed = %cursor.committed(), "link shipping");
        let mut actions = engine.handle(started, Event::Tick);
        loop {
            if let Err(error) = self.execute(actions, &mut cursor, &mut io).await {
                tracing::error!(dc, %error, "stopping the link");
                break;
            }
            self.publish(&mut engine, &cursor, &mut rates);
            actions = match self.next(&mut cursor, &mut control, &mut shutdown, &mut io).await {
                Ok(Some(Next::Event(event))) => engine.handle(now_ms(), event),
                Ok(Some(Next::Failed { id, error })) => {
                    let (now, cause) = (now_ms(), error.cause());
                    let failed = Event::Failed { id, cause, jitter: rand::random::<f64>() };
                    let actions = engine.handle(now, failed);
                    let retry_in_ms = engine.retry_at(id).map_or(0, |at| at.saturating_sub(now));
                    tracing::warn!(dc, batch = id, retry_in_ms, %error, "batch not acknowledged; will retry");
                    actions
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(dc, %error, "stopping the link");
                    break;
                }
            };
        }
        io.sends.abort_all();
        io.heartbeats.abort_all();
        let last = engine.handle(now_ms(), Event::Shutdown);
        if let Err(error) = self.execute(last, &mut cursor, &mut io).await {
            tracing::error!(dc, %error, "final checkpoint failed");
        }
        tracing::info!(dc, committed = %cursor.committed(), "link stopped");
    }

    /// Carries out the engine's actions in order.
    async fn execute(
        &self,
        actions: Vec<Action>,
        cursor: &mut Cursor,
        io: &mut InProgress,
    ) -> Result<(), StopError> {
        for action in actions {
            match action {
                Action::Read { max } => io.reading = Some(max),
                Action::StopReading => io.reading = None,
                Action::Send { id, changes } => {
                    let shared = Arc::clone(&self.shared);
                    io.sends.spawn(async move { (id, attempt(&shared, id, &changes).await) });
                }
                Action::Commit { through } => {
                    cursor.commit(Lsn(through)).await.map_err(StopError::Checkpoint)?;
                }
                Action::Scan { ns, partition, min_lut_ms } => {
                    let shared = Arc::clone(&self.shared);
                    io.scans.spawn_blocking(move || {
                        let namespace = &shared.plan.namespaces[ns].name;
                        shared
                            .records
                            .changed_since(namespace, partition, min_lut_ms)
                            .map_err(|e| StoreFailure::from(Box::new(e)))
                    });
                }
                Action::AcknowledgeOverflow(overflow) => {
                    cursor
                        .acknowledge_overflow(&overflow)
                        .map_err(StopError::AcknowledgeOverflow)?;
                }
                Action::Heartbeat => {
                    // Round robin over the destination's nodes.
                    let clients = &self.shared.clients;
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
                Action::SetState(state) => self.stats.set_state(state),
                Action::WakeAt(at_ms) => io.wake_at_ms = Some(at_ms),
                Action::Fail(error) => return Err(StopError::Window(error)),
            }
        }
        Ok(())
    }

    /// Waits for the next thing the engine must hear about; `None` when told to stop.
    async fn next(
        &self,
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
                Event::Control { control, flushed_lsn: cursor.flushed().0 }
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

    /// Adds the engine's counts to the link's stats and sets its gauges.
    fn publish(&self, engine: &mut Engine, cursor: &Cursor, rates: &mut LogRates) {
        let stats = &self.stats;
        let counts = engine.take_counts();
        for (counter, n) in [
            (&stats.entries_read, counts.entries_read),
            (&stats.filtered_out, counts.filtered_out),
            (&stats.hot_keys, counts.hot_keys),
            (&stats.success, counts.success),
            (&stats.abandoned, counts.abandoned),
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
        let (now, flushed, committed) = (now_ms(), cursor.flushed().0, cursor.committed().0);
        let gauges = engine.gauges(now, flushed);
        set(&stats.lag, gauges.lag_ms);
        set(&stats.in_progress, gauges.in_progress);
        set(&stats.throughput, gauges.throughput);
        set(&stats.latency_ms, gauges.latency_ms);
        set(&stats.in_queue, cursor.backlog());
        if let Some(left) = rates.sample(now, flushed, committed, cursor.capacity_entries()) {
            set(&stats.log_time_left, left.unwrap_or(u64::MAX));
        }
    }
}

/// One attempt: read the current records, group them by destination, send every group.
async fn attempt<R: LocalRecords>(
    shared: &Shared<R>,
    id: u64,
    changes: &[Change],
) -> Result<Outcome, AttemptError> {
    let plan = &shared.plan;
    let mut outcome = Outcome::default();
    let mut groups: BTreeMap<(usize, NodeId), Vec<ShippedRecord>> = BTreeMap::new();
    for change in changes {
        let namespace = &plan.namespaces[change.ns].name;
        let record = shared
            .records
            .read(namespace, &change.digest)
            .await
            .map_err(|e| AttemptError::ReadRecord(Box::new(e)))?;
        let Some(record) = record else {
            outcome.not_found += 1;
            continue;
        };
        if plan.admit_origin(record.stamp.origin_site).is_err()
            || plan.admit_set(&record.set).is_err()
        {
            outcome.filtered += 1;
            continue;
        }
        let Some(destination) = plan.destination(change.ns, &change.digest) else {
            outcome.abandoned += 1;
            continue;
        };
        groups.entry((change.ns, destination.id.clone())).or_default().push(record);
    }
    let mut sends = JoinSet::new();
    for ((ns, node), records) in groups {
        let Some(client) = shared.clients.get(&node).cloned() else {
            outcome.abandoned += records.len() as u64;
            continue;
        };
        let count = records.len() as u32;
        let batch = Batch {
            id,
            source_site: plan.local_site_id,
            namespace: plan.namespaces[ns].name.clone(),
            records,
        };
        let (bytes, size) = batch.encode(shared.compression);
        outcome.bytes_raw += size.raw as u64;
        outcome.bytes_wire += size.wire as u64;
        sends.spawn(async move {
            let reply = client.request(Frame::new(ack::frame_type(ack::BATCH), bytes)).await;
            (count, reply)
        });
    }
    let mut failure = None;
    while let Some(joined) = sends.join_next().await {
        let Ok((count, reply)) = joined else {
            failure = Some(AttemptError::SendTask);
            continue;
        };
        match reply.map(|frame| Ack::decode(&frame.payload)) {
            Ok(Ok(ack)) if ack.batch == id && ack.records() == u64::from(count) => {
                outcome.shipped += u64::from(ack.applied) + u64::from(ack.stale);
                outcome.abandoned += u64::from(ack.failed);
            }
            Ok(Ok(ack)) => {
                failure = Some(AttemptError::Mismatch {
                    acked: ack.batch,
                    acked_records: ack.records(),
                    sent: id,
                    records: count,
                });
            }
            Ok(Err(error)) => failure = Some(error.into()),
            Err(TransportError::Remote { retryable: false, message, .. }) => {
                tracing::error!(
                    dc = plan.dc(),
                    batch = id,
                    message,
                    records = count,
                    "destination refused a batch permanently; abandoned"
                );
                outcome.abandoned += u64::from(count);
            }
            Err(error) => failure = Some(AttemptError::Transport(error)),
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(outcome),
    }
}
