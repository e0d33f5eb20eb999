//! The async shipper of one DR link: the I/O shell around [`AckWindow`] and [`LinkMachine`].
//!
//! Pipeline: the link's digest-log cursor → filters and loop prevention ([`LinkPlan`]) →
//! hot-key folding over the accumulation window → read the **current** record → group by the
//! destination node that owns it → encode and compress → one QUIC stream per batch, a window of
//! batches in flight → ordered acknowledgements → commit the cursor. A batch is retried with
//! backoff until the destination acknowledges it, re-reading its records each time, so a retry
//! never ships an older version. Overflow of the log and operator rewinds re-ship from a store
//! scan by last-update time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_digestlog::{Batch as LogBatch, Cursor, LoggedEntry, Lsn, Overflow};
use ferry_topology::model::NodeId;
use ferry_transport::{Client, Endpoint, Frame, PeerIdentity, TransportError};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ack::{self, Ack};
use crate::batch::{Batch, Compression, ShippedRecord};
use crate::link::{LinkMachine, Throttle};
use crate::plan::LinkPlan;
use crate::stats::{LinkStats, add, set};
use crate::window::AckWindow;

/// The local side the shipper reads from: the node's store.
pub trait LocalRecords: Send + Sync + 'static {
    /// The current version of a record, tombstones included; `None` when it is gone without a
    /// trace (expired and reclaimed). Must wait for a write of the record in progress: a node
    /// logs a change before it stores the version, both under the record's lock, so a read
    /// under that lock never returns a version older than a logged change.
    fn read(
        &self,
        namespace: &str,
        digest: &[u8; 20],
    ) -> impl Future<Output = Result<Option<ShippedRecord>, String>> + Send;

    /// Digests and LUTs of the records of one partition changed at or after `min_lut_ms`,
    /// tombstones included (overflow recovery and rewind).
    fn changed_since(
        &self,
        namespace: &str,
        partition: u16,
        min_lut_ms: u64,
    ) -> Result<Vec<([u8; 20], u64)>, String>;
}

/// Operator commands to a running link, published on a watch channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkControl {
    pub paused: bool,
    /// Bumped to ask for a rewind; the shipper runs one scan per new value.
    pub rewind_seq: u64,
    /// Re-ship records changed at or after this time (ms since the Unix epoch; 0 = all).
    pub rewind_from_ms: u64,
    /// Bumped to ask for a drain: the link reports `draining` until every change logged
    /// before the request is acknowledged (switchover: fence writes, drain, switch).
    pub drain_seq: u64,
}

/// An operator command to a running link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCommand {
    Pause,
    Resume,
    /// Re-ship every record changed at or after `from_ms` (0: all).
    Rewind {
        from_ms: u64,
    },
    /// Resume if paused and ship everything logged so far (`draining` until done).
    Drain,
}

impl LinkCommand {
    /// `pause`, `resume`, `rewind` (with `from_ms`) or `drain`; `None` for anything else.
    pub fn parse(action: &str, from_ms: u64) -> Option<LinkCommand> {
        match action {
            "pause" => Some(LinkCommand::Pause),
            "resume" => Some(LinkCommand::Resume),
            "rewind" => Some(LinkCommand::Rewind { from_ms }),
            "drain" => Some(LinkCommand::Drain),
            _ => None,
        }
    }

    /// The controls after this command.
    pub fn apply(self, control: &mut LinkControl) {
        match self {
            LinkCommand::Pause => control.paused = true,
            LinkCommand::Resume => control.paused = false,
            LinkCommand::Rewind { from_ms } => {
                control.rewind_seq += 1;
                control.rewind_from_ms = from_ms;
            }
            LinkCommand::Drain => {
                control.paused = false;
                control.drain_seq += 1;
            }
        }
    }
}

/// Sizes and periods of the shipper.
#[derive(Debug, Clone, Copy)]
pub struct ShipperSettings {
    /// Batches in flight: enough to fill a 150 ms-RTT link.
    pub window: usize,
    /// Most changes in one batch cut from the log.
    pub batch_records: usize,
    /// How often an idle link asks its destination whether it is alive.
    pub heartbeat: Duration,
    /// Least time between two checkpoints of the cursor while batches are still in flight.
    pub commit_interval: Duration,
    /// Retry schedule of a batch the destination did not acknowledge.
    pub retry: ferry_transport::Backoff,
}

impl Default for ShipperSettings {
    fn default() -> Self {
        ShipperSettings {
            window: 64,
            batch_records: 512,
            heartbeat: Duration::from_millis(500),
            commit_interval: Duration::from_millis(100),
            // A healed link resumes within two seconds; retries are idempotent and cheap.
            retry: ferry_transport::Backoff {
                max: Duration::from_secs(2),
                ..ferry_transport::Backoff::default()
            },
        }
    }
}

/// One logged change to ship: which namespace (index in the plan), which record, when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    ns: usize,
    digest: [u8; 20],
    /// LUT of the oldest folded change (for lag).
    oldest_lut_ms: u64,
}

/// What the destination made of one batch, plus what never left.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    shipped: u64,
    abandoned: u64,
    not_found: u64,
    filtered: u64,
    bytes_raw: u64,
    bytes_wire: u64,
}

/// Why an attempt must be retried.
enum Retry {
    /// Connection lost, timed out, or unreachable.
    Connection(String),
    /// The destination (or the local store) answered with an error worth retrying.
    Destination(String),
}

/// Recovery batches carry wire ids in their own range so they never alias log batches.
const RECOVERY_ID_BASE: u64 = 1 << 63;

/// State shared by the main loop and its batch tasks.
struct Shared<R> {
    plan: LinkPlan,
    records: Arc<R>,
    clients: HashMap<NodeId, Client>,
    stats: Arc<LinkStats>,
    machine: Mutex<LinkMachine>,
    throttle: Mutex<Throttle>,
    shutdown: watch::Receiver<bool>,
    compression: Compression,
    /// Which destination the next heartbeat goes to.
    heartbeat_turn: AtomicU64,
}

/// The shipper of one link.
#[derive(Debug)]
pub struct Shipper<R> {
    shared: Arc<Shared<R>>,
    settings: ShipperSettings,
    started_ms: u64,
}

impl<R> std::fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dc", &self.plan.dc()).finish_non_exhaustive()
    }
}

/// Wall-clock milliseconds since the Unix epoch (record LUTs use the same clock).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
            .map(|n| {
                let peer = PeerIdentity::new(plan.link.to.clone(), n.id.clone());
                (n.id.clone(), endpoint.client(peer, n.xdr))
            })
            .collect();
        let started_ms = now_ms();
        let compression = Compression {
            level: i32::from(plan.link.compression_level),
            threshold: plan.link.compression_threshold as usize,
        };
        let shared = Shared {
            throttle: Mutex::new(Throttle::new(plan.link.max_throughput, started_ms)),
            machine: Mutex::new(LinkMachine::new(settings.retry)),
            plan,
            records,
            clients,
            stats,
            shutdown,
            compression,
            heartbeat_turn: AtomicU64::new(0),
        };
        Shipper { shared: Arc::new(shared), settings, started_ms }
    }

    /// Ships until `shutdown` flips. The cursor is committed only past acknowledged batches,
    /// so whatever was in flight at shutdown ships again after a restart.
    pub async fn run(self, mut cursor: Cursor, mut control: watch::Receiver<LinkControl>) {
        let shared = &self.shared;
        let dc = shared.plan.dc().to_owned();
        let mut shutdown = shared.shutdown.clone();
        let mut window = AckWindow::new(self.settings.window, cursor.committed().0);
        let mut in_flight: JoinSet<(u64, Option<Outcome>)> = JoinSet::new();
        // Batch id → (oldest LUT, records, send time), for lag and latency.
        let mut open: BTreeMap<u64, (u64, u64, Instant)> = BTreeMap::new();
        let mut pending: Vec<LoggedEntry> = Vec::new();
        let mut cut_at: Option<tokio::time::Instant> = None;
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeats: JoinSet<bool> = JoinSet::new();
        let mut last_commit = Instant::now();
        let mut rewind_seq = control.borrow().rewind_seq;
        let mut drain_seq = control.borrow().drain_seq;
        // The log position a drain must see acknowledged.
        let mut drain_target: Option<u64> = None;
        let mut acked_window = ThroughputWindow::default();
        let mut rates = LogRates::new(&cursor);
        let accumulate = Duration::from_millis(u64::from(
            shared.plan.link.period_ms.max(shared.plan.link.hot_key_ms),
        ));
        tracing::info!(dc, committed = %cursor.committed(), "link shipping");
        loop {
            if let Some(target) = drain_target
                && window.committable().max(cursor.committed().0) >= target
            {
                drain_target = None;
                self.lock_machine().set_draining(false);
                add(&shared.stats.drains, 1);
                tracing::info!(dc, through = target, "link drained");
            }
            self.publish_gauges(&cursor, &open, &pending);
            let may_read =
                self.lock_machine().may_ship() && pending.len() < self.settings.batch_records;
            let cut_deadline =
                cut_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(joined) = in_flight.join_next() => {
                    let Ok((id, Some(outcome))) = joined else { break };
                    if let Some((_, records, sent)) = open.remove(&id) {
                        set(&shared.stats.latency_ms, sent.elapsed().as_millis() as u64);
                        acked_window.add(records);
                    }
                    set(&shared.stats.throughput, acked_window.per_second());
                    self.count(&outcome);
                    match window.acknowledge(id) {
                        Ok(Some(through)) => {
                            if in_flight.is_empty() || last_commit.elapsed() >= self.settings.commit_interval {
                                if let Err(error) = cursor.commit(Lsn(through)).await {
                                    tracing::error!(dc, %error, "link cursor checkpoint failed; stopping the link");
                                    break;
                                }
                                last_commit = Instant::now();
                            }
                        }
                        Ok(None) => {}
                        Err(error) => tracing::error!(dc, %error, "acknowledged batch not in the window"),
                    }
                }
                changed = control.changed() => {
                    if changed.is_err() { break }
                    let now = *control.borrow_and_update();
                    self.lock_machine().set_paused(now.paused);
                    shared.stats.set_state(self.lock_machine().state());
                    if now.drain_seq != drain_seq {
                        drain_seq = now.drain_seq;
                        drain_target = Some(cursor.flushed().0);
                        self.lock_machine().set_draining(true);
                        tracing::info!(dc, through = %cursor.flushed(), "drain requested");
                    }
                    if now.rewind_seq != rewind_seq {
                        rewind_seq = now.rewind_seq;
                        tracing::info!(dc, from_ms = now.rewind_from_ms, "rewind requested");
                        if !self.recover(now.rewind_from_ms).await { break }
                    }
                }
                () = tokio::time::sleep_until(cut_deadline), if cut_at.is_some() && window.has_room() => {
                    cut_at = None;
                    let entries = std::mem::take(&mut pending);
                    let Some(last) = entries.last().map(|e| e.lsn.0) else { continue };
                    let changes = self.fold(entries);
                    let id = match window.open(last) {
                        Ok(id) => id,
                        Err(error) => { tracing::error!(dc, %error, "window refused a batch"); break }
                    };
                    let oldest = changes.iter().map(|c| c.oldest_lut_ms).min().unwrap_or_else(now_ms);
                    open.insert(id, (oldest, changes.len() as u64, Instant::now()));
                    let shared = Arc::clone(shared);
                    in_flight.spawn(async move {
                        let outcome = ship_until_acknowledged(&shared, id, &changes).await;
                        (id, outcome)
                    });
                }
                read = cursor.next_batch(self.settings.batch_records - pending.len()), if may_read => {
                    match read {
                        Ok(LogBatch::Entries(entries)) => {
                            add(&shared.stats.entries_read, entries.len() as u64);
                            if pending.is_empty() {
                                cut_at = Some(self.cut_time(&entries, accumulate));
                            }
                            pending.extend(entries);
                            if pending.len() >= self.settings.batch_records {
                                cut_at = Some(tokio::time::Instant::now());
                            }
                        }
                        Ok(LogBatch::Overflowed(overflow)) => {
                            if !self.recover_overflow(&mut cursor, overflow).await { break }
                        }
                        Err(error) => {
                            tracing::error!(dc, %error, "digest log read failed; stopping the link");
                            break;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    set(&shared.stats.throughput, acked_window.per_second());
                    set(&shared.stats.log_time_left, rates.time_left(&cursor).unwrap_or(u64::MAX));
                    if in_flight.is_empty() && heartbeats.is_empty() {
                        let shared = Arc::clone(shared);
                        heartbeats.spawn(async move { send_heartbeat(&shared).await });
                    }
                }
                Some(alive) = heartbeats.join_next() => {
                    let mut machine = self.lock_machine();
                    match alive {
                        Ok(true) => machine.on_success(now_ms()),
                        _ => { machine.on_failure(0.0); }
                    }
                    shared.stats.set_state(machine.state());
                }
            }
        }
        in_flight.abort_all();
        heartbeats.abort_all();
        let _ = cursor.commit(Lsn(window.committable())).await;
        tracing::info!(dc, committed = %cursor.committed(), "link stopped");
    }

    fn lock_machine(&self) -> std::sync::MutexGuard<'_, LinkMachine> {
        lock(&self.shared.machine)
    }

    /// When a batch opened by `entries` is cut: after the accumulation window (so repeated
    /// changes of a hot key fold into one), and not before `delay-ms` has passed for its
    /// oldest change.
    fn cut_time(&self, entries: &[LoggedEntry], accumulate: Duration) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let delay = u64::from(self.shared.plan.link.delay_ms);
        let oldest = entries.iter().map(|e| e.entry.lut_ms).min().unwrap_or(0);
        let held = Duration::from_millis((oldest + delay).saturating_sub(now_ms()));
        now + accumulate.max(held)
    }

    /// Filters the logged changes and folds repeated changes of one record into one.
    fn fold(&self, entries: Vec<LoggedEntry>) -> Vec<Change> {
        let stats = &self.shared.stats;
        let mut latest: HashMap<(usize, [u8; 20]), usize> = HashMap::new();
        let mut changes: Vec<Change> = Vec::with_capacity(entries.len());
        for logged in entries {
            let entry = logged.entry;
            let Ok(ns) = self.shared.plan.admit_entry(&entry) else {
                add(&stats.filtered_out, 1);
                continue;
            };
            let change = Change { ns, digest: entry.digest, oldest_lut_ms: entry.lut_ms };
            match latest.get(&(ns, entry.digest)) {
                Some(&at) => {
                    add(&stats.hot_keys, 1);
                    let folded = &mut changes[at];
                    folded.oldest_lut_ms = folded.oldest_lut_ms.min(entry.lut_ms);
                }
                None => {
                    latest.insert((ns, entry.digest), changes.len());
                    changes.push(change);
                }
            }
        }
        changes
    }

    fn count(&self, outcome: &Outcome) {
        let stats = &self.shared.stats;
        add(&stats.success, outcome.shipped);
        add(&stats.abandoned, outcome.abandoned);
        add(&stats.not_found, outcome.not_found);
        add(&stats.filtered_out, outcome.filtered);
        add(&stats.bytes_raw, outcome.bytes_raw);
        add(&stats.bytes_shipped, outcome.bytes_wire);
        let (raw, wire) =
            (stats.bytes_raw.load(Ordering::Relaxed), stats.bytes_shipped.load(Ordering::Relaxed));
        if let Some(ratio) = raw.saturating_mul(1000).checked_div(wire) {
            set(&stats.compression_ratio_milli, ratio);
        }
    }

    fn publish_gauges(
        &self,
        cursor: &Cursor,
        open: &BTreeMap<u64, (u64, u64, Instant)>,
        pending: &[LoggedEntry],
    ) {
        let stats = &self.shared.stats;
        let oldest = open
            .values()
            .map(|(lut, _, _)| *lut)
            .chain(pending.iter().map(|e| e.entry.lut_ms))
            .min();
        let machine = self.lock_machine();
        set(&stats.lag, machine.lag_ms(now_ms(), oldest, self.started_ms));
        stats.set_state(machine.state());
        set(&stats.in_progress, open.values().map(|(_, n, _)| n).sum());
        set(&stats.in_queue, cursor.backlog());
    }

    /// The digest log lost entries this link had not shipped: re-ship every record changed
    /// since the overflow's watermark from a store scan, then acknowledge the overflow so
    /// reading resumes after the lost range. A crash mid-scan leaves the overflow
    /// unacknowledged, so the scan runs again after restart.
    async fn recover_overflow(&self, cursor: &mut Cursor, overflow: Overflow) -> bool {
        tracing::warn!(dc = self.shared.plan.dc(), lost_through = %overflow.lost_through, min_lut_ms = overflow.min_lut_ms, "digest log overflowed this link; recovering from a store scan");
        if !self.recover(overflow.min_lut_ms).await {
            return false;
        }
        match cursor.acknowledge_overflow(&overflow) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(dc = self.shared.plan.dc(), %error, "acknowledge overflow failed");
                false
            }
        }
    }

    /// Ships every record changed at or after `min_lut_ms`, partition by partition, with the
    /// window's parallelism. Returns false if shut down first.
    async fn recover(&self, min_lut_ms: u64) -> bool {
        let shared = &self.shared;
        add(&shared.stats.recoveries, 1);
        lock(&shared.machine).set_recovering(true);
        shared.stats.set_state(self.lock_machine().state());
        let mut tasks: JoinSet<Option<Outcome>> = JoinSet::new();
        let mut next_id = RECOVERY_ID_BASE;
        let mut scanned = 0u64;
        let mut completed = true;
        'scan: for (ns, namespace) in shared.plan.namespaces.iter().enumerate() {
            for partition in 0..ferry_topology::placement::PARTITIONS {
                let found =
                    match shared.records.changed_since(&namespace.name, partition, min_lut_ms) {
                        Ok(found) => found,
                        Err(error) => {
                            tracing::error!(dc = shared.plan.dc(), %error, "recovery scan failed");
                            completed = false;
                            break 'scan;
                        }
                    };
                scanned += found.len() as u64;
                for chunk in found.chunks(self.settings.batch_records) {
                    while tasks.len() >= self.settings.window {
                        match tasks.join_next().await {
                            Some(Ok(Some(outcome))) => self.count(&outcome),
                            _ => {
                                completed = false;
                                break 'scan;
                            }
                        }
                    }
                    let changes: Vec<Change> = chunk
                        .iter()
                        .map(|&(digest, lut_ms)| Change { ns, digest, oldest_lut_ms: lut_ms })
                        .collect();
                    let (id, shared) = (next_id, Arc::clone(shared));
                    next_id += 1;
                    tasks
                        .spawn(async move { ship_until_acknowledged(&shared, id, &changes).await });
                }
            }
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Some(outcome)) => self.count(&outcome),
                _ => completed = false,
            }
        }
        lock(&shared.machine).set_recovering(false);
        tracing::info!(dc = shared.plan.dc(), scanned, completed, "recovery scan finished");
        completed
    }
}

/// Ingest and shipping rates of the link's log, sampled at heartbeats, for `log_time_left`.
#[derive(Debug)]
struct LogRates {
    at: Instant,
    flushed: u64,
    committed: u64,
    ingest: f64,
    shipped: f64,
}

impl LogRates {
    fn new(cursor: &Cursor) -> Self {
        LogRates {
            at: Instant::now(),
            flushed: cursor.flushed().0,
            committed: cursor.committed().0,
            ingest: 0.0,
            shipped: 0.0,
        }
    }

    /// Samples the cursor and returns seconds left (smoothed over a few samples).
    fn time_left(&mut self, cursor: &Cursor) -> Option<u64> {
        let elapsed = self.at.elapsed().as_secs_f64().max(1e-3);
        let (flushed, committed) = (cursor.flushed().0, cursor.committed().0);
        let smooth = |old: f64, new: f64| 0.7 * old + 0.3 * new;
        self.ingest = smooth(self.ingest, flushed.saturating_sub(self.flushed) as f64 / elapsed);
        self.shipped =
            smooth(self.shipped, committed.saturating_sub(self.committed) as f64 / elapsed);
        (self.at, self.flushed, self.committed) = (Instant::now(), flushed, committed);
        crate::link::log_time_left(
            cursor.capacity_entries(),
            cursor.backlog(),
            self.ingest,
            self.shipped,
        )
    }
}

/// Records acknowledged over a sliding second.
#[derive(Debug, Default)]
struct ThroughputWindow {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl ThroughputWindow {
    fn add(&mut self, records: u64) {
        self.samples.push_back((Instant::now(), records));
    }

    fn per_second(&mut self) -> u64 {
        while self.samples.front().is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(1)) {
            self.samples.pop_front();
        }
        self.samples.iter().map(|(_, n)| n).sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ships one batch, retrying with backoff until every destination acknowledged it. `None` if
/// the shipper shut down first.
async fn ship_until_acknowledged<R: LocalRecords>(
    shared: &Shared<R>,
    id: u64,
    changes: &[Change],
) -> Option<Outcome> {
    let wait = lock(&shared.throttle).take(changes.len() as u64, now_ms());
    let mut shutdown = shared.shutdown.clone();
    if !wait.is_zero() && sleep_or_shutdown(wait, &mut shutdown).await {
        return None;
    }
    loop {
        let failure = match attempt(shared, id, changes).await {
            Ok(outcome) => {
                lock(&shared.machine).on_success(now_ms());
                return Some(outcome);
            }
            Err(failure) => failure,
        };
        let (counter, reason) = match &failure {
            Retry::Connection(reason) => (&shared.stats.retry_conn_reset, reason),
            Retry::Destination(reason) => (&shared.stats.retry_dest, reason),
        };
        add(counter, 1);
        let delay = lock(&shared.machine).on_failure(rand::random::<f64>());
        tracing::warn!(
            dc = shared.plan.dc(),
            batch = id,
            retry_in_ms = delay.as_millis() as u64,
            reason,
            "batch not acknowledged; will retry"
        );
        if sleep_or_shutdown(delay, &mut shutdown).await {
            return None;
        }
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = shutdown.changed() => true,
    }
}

/// One attempt: read the current records, group them by destination, send every group.
async fn attempt<R: LocalRecords>(
    shared: &Shared<R>,
    id: u64,
    changes: &[Change],
) -> Result<Outcome, Retry> {
    let plan = &shared.plan;
    let mut outcome = Outcome::default();
    let mut groups: BTreeMap<(usize, NodeId), Vec<ShippedRecord>> = BTreeMap::new();
    for change in changes {
        let namespace = &plan.namespaces[change.ns].name;
        let record = shared
            .records
            .read(namespace, &change.digest)
            .await
            .map_err(|e| Retry::Destination(format!("read local record: {e}")))?;
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
    let mut retry = None;
    while let Some(joined) = sends.join_next().await {
        let Ok((count, reply)) = joined else {
            retry = Some(Retry::Destination("send task failed".to_owned()));
            continue;
        };
        match reply.map(|frame| Ack::decode(&frame.payload)) {
            Ok(Ok(ack)) if ack.batch == id && ack.records() == u64::from(count) => {
                outcome.shipped += u64::from(ack.applied) + u64::from(ack.stale);
                outcome.abandoned += u64::from(ack.failed);
            }
            Ok(Ok(ack)) => {
                retry = Some(Retry::Destination(format!(
                    "acknowledgement of batch {} for {} records, sent batch {id} with {count}",
                    ack.batch,
                    ack.records()
                )));
            }
            Ok(Err(error)) => {
                retry = Some(Retry::Destination(format!("bad acknowledgement: {error}")))
            }
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
            Err(error @ TransportError::Remote { .. }) => {
                retry = Some(Retry::Destination(error.to_string()))
            }
            Err(error) => retry = Some(Retry::Connection(error.to_string())),
        }
    }
    match retry {
        Some(failure) => Err(failure),
        None => Ok(outcome),
    }
}

/// Asks one destination node whether it is there (round robin by time).
async fn send_heartbeat<R>(shared: &Shared<R>) -> bool {
    let clients: Vec<&Client> = shared.clients.values().collect();
    if clients.is_empty() {
        return false;
    }
    let turn = shared.heartbeat_turn.fetch_add(1, Ordering::Relaxed) as usize;
    let client = clients[turn % clients.len()];
    client.request(Frame::new(ack::frame_type(ack::HEARTBEAT), bytes::Bytes::new())).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_commands_parse_and_change_the_controls() {
        let mut control = LinkControl::default();
        for (action, from_ms) in [("pause", 0), ("rewind", 1_700), ("drain", 0), ("rewind", 0)] {
            LinkCommand::parse(action, from_ms).expect("known action").apply(&mut control);
        }
        let expected =
            LinkControl { paused: false, rewind_seq: 2, rewind_from_ms: 0, drain_seq: 1 };
        assert_eq!(control, expected, "drain resumes a paused link");
        LinkCommand::Pause.apply(&mut control);
        assert!(control.paused);
        assert_eq!(LinkCommand::parse("stop", 0), None);
    }
}
