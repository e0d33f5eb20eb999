//! The shipper of one DR link as a sans-IO state machine: every decision of the shipper and
//! none of its I/O. The async shell ([`crate::ship`]) feeds [`Event`]s in with the current
//! time and carries out the [`Action`]s that come back; there is no clock, no socket and no
//! task in here, so every rule is unit-tested by asserting the exact actions.
//!
//! Decisions: filter and fold the changes read from the log (hot keys ship once per
//! accumulation window), cut a batch when the window of the link's `period-ms`/`hot-key-ms`
//! (and `delay-ms`) has passed or it is full, pace sends to `max-throughput`, retry a failed
//! batch with backoff, commit the cursor past the contiguous prefix of acknowledged batches
//! ([`AckWindow`]), notice when a drain is done, stop reading while paused, re-ship from store
//! scans after an overflow or a rewind, and heartbeat an idle link. Link health, pause,
//! backoff and lag live in [`LinkMachine`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_digestlog::{Digest, LoggedEntry, Overflow};
use ferry_topology::placement::PARTITIONS;

use crate::link::{LinkControl, LinkMachine, LinkState, Throttle};
use crate::plan::LinkPlan;
use crate::window::{AckWindow, WindowError};

/// Sizes and periods of the shipper.
#[derive(Debug, Clone, Copy)]
pub struct ShipperSettings {
    /// Batches in flight: enough to fill a 150 ms-RTT link. Default: 64.
    pub window: usize,
    /// Most changes in one batch cut from the log. Default: 512.
    pub batch_records: usize,
    /// How often an idle link asks its destination whether it is alive. Default: 500 ms.
    pub heartbeat: Duration,
    /// Least time between two checkpoints of the cursor while batches are still in flight.
    /// Default: 100 ms.
    pub commit_interval: Duration,
    /// Retry schedule of a batch the destination did not acknowledge. Default: 100 ms doubling
    /// up to 2 s, half of it jitter.
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

/// One change to ship: which namespace (index in the plan), which record, since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub ns: usize,
    pub digest: Digest,
    /// LUT of the oldest change folded into this one (for lag).
    pub oldest_lut_ms: u64,
    /// Every change folded into this one was stored here as a copy (or found by a store
    /// scan): it ships from here only while this node masters the record's partition.
    pub copy_only: bool,
}

/// What the destination made of one batch, plus what never left.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Records the destination applied or already had.
    pub shipped: u64,
    /// `shipped`, `not_found` and `filtered` (as `success`, `not_found`, `filtered_out`) by
    /// namespace index.
    pub by_namespace: BTreeMap<usize, NamespaceCounts>,
    /// Parked records that shipped this time, so they are parked no more.
    pub unparked: u64,
    /// Records gone locally without a trace at send time.
    pub not_found: u64,
    /// Records the filters skipped once read (origin, sets).
    pub filtered: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
}

/// Why an attempt to ship a batch must be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Connection lost, timed out, or unreachable (`retry_conn_reset`).
    Connection,
    /// The destination (or the local store) answered with an error worth retrying
    /// (`retry_dest`).
    Destination,
}

/// Digests and LUTs of the records a store scan found.
pub type Scanned = Vec<(Digest, u64)>;

/// What happened, as fed to [`Engine::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed (a [`Action::WakeAt`] came due, or the shell just started).
    Tick,
    /// Entries read from the digest log after an [`Action::Read`], in LSN order.
    Read(Vec<LoggedEntry>),
    /// The read found that the log deleted entries this link had not shipped.
    Overflowed(Overflow),
    /// The operator's controls changed; `logged_lsn` is the last change logged now (what
    /// a drain must see acknowledged).
    Control { control: LinkControl, logged_lsn: u64 },
    /// The digests and LUTs the last [`Action::Scan`] found.
    Scanned(Scanned),
    /// Every destination acknowledged batch `id`.
    Acked { id: u64, outcome: Outcome },
    /// Batch `id` was not acknowledged; `jitter` is a uniform draw in [0, 1) for its backoff.
    Failed { id: u64, cause: Cause, jitter: f64 },
    /// The last [`Action::Heartbeat`] was answered (`alive`) or not.
    Heartbeat { alive: bool },
    /// This node took over mastership of these partitions (namespace index, partition) from a
    /// node whose shipping of this link was acknowledged through the given LUT: re-ship what
    /// changed in them since (the copies' own log entries were left to the old master).
    TakeOver(Vec<TakenOver>),
    /// The shipper is stopping.
    Shutdown,
}

/// A partition this node now masters, and the LUT its previous master shipped it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenOver {
    pub ns: usize,
    pub partition: u16,
    pub since_lut_ms: u64,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Wait for up to `max` flushed entries from the cursor (replaces any read asked before)
    /// and report them as [`Event::Read`] or [`Event::Overflowed`].
    Read { max: usize },
    /// Stop the read asked before.
    StopReading,
    /// Read the current version of each change's record and ship them as batch `id`; report
    /// [`Event::Acked`] or [`Event::Failed`].
    Send { id: u64, changes: Vec<Change> },
    /// Checkpoint the cursor through `through`.
    Commit { through: u64 },
    /// List the records of `partition` of namespace `ns` changed at or after `min_lut_ms`;
    /// report [`Event::Scanned`].
    Scan { ns: usize, partition: u16, min_lut_ms: u64 },
    /// The lost entries are re-shipped: let the cursor read past them.
    AcknowledgeOverflow(Overflow),
    /// Ask one destination node whether it is there; report [`Event::Heartbeat`].
    Heartbeat,
    /// Publish the link's new state.
    SetState(LinkState),
    /// Send [`Event::Tick`] at this wall time (ms) unless another event comes first.
    WakeAt(u64),
    /// The window refused a batch: a bug; stop the link (the cursor holds its place).
    Fail(WindowError),
}

/// Counters accumulated since the last [`Engine::take_counts`], under the stat names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub entries_read: u64,
    pub filtered_out: u64,
    pub hot_keys: u64,
    pub success: u64,
    pub not_found: u64,
    pub bytes_raw: u64,
    pub bytes_shipped: u64,
    pub retry_conn_reset: u64,
    pub retry_dest: u64,
    pub recoveries: u64,
    pub drains: u64,
    /// The counts that belong to one namespace, by the link's namespace index.
    pub by_namespace: BTreeMap<usize, NamespaceCounts>,
}

/// Counts of one namespace of a link (Aerospike's per-namespace `get-stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceCounts {
    pub success: u64,
    pub not_found: u64,
    pub filtered_out: u64,
    pub hot_keys: u64,
}

impl NamespaceCounts {
    /// Adds what an acknowledged attempt did.
    pub fn add(&mut self, other: NamespaceCounts) {
        self.success += other.success;
        self.not_found += other.not_found;
        self.filtered_out += other.filtered_out;
        self.hot_keys += other.hot_keys;
    }
}

/// Gauges of one namespace of a link at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceGauges {
    /// Like the link's lag, over this namespace's changes read from the log.
    pub lag_ms: u64,
    /// This namespace's changes read and not yet acknowledged.
    pub in_queue: u64,
    /// This namespace's records in batches sent and not yet acknowledged.
    pub in_progress: u64,
}

/// Gauges at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// See [`LinkMachine::lag_ms`].
    pub lag_ms: u64,
    /// Records in batches cut and not yet acknowledged.
    pub in_progress: u64,
    /// Records acknowledged over the last second.
    pub throughput: u64,
    /// Send to acknowledgement of the last batch, ms.
    pub latency_ms: u64,
}

/// Recovery batches carry wire ids in their own range so they never alias log batches.
const RECOVERY_ID_BASE: u64 = 1 << 63;

/// A batch cut and not yet acknowledged (being sent, or waiting for its send time).
#[derive(Debug)]
struct OpenBatch {
    changes: Vec<Change>,
    oldest_lut_ms: u64,
    cut_ms: u64,
    /// Per namespace index: how many of `changes`, and their oldest LUT (summed once here, so
    /// the per-namespace gauges cost a few entries per batch, not one per change).
    by_namespace: BTreeMap<usize, (u64, u64)>,
}

/// A store scan re-shipping records changed since a LUT (overflow recovery, rewind, or a
/// takeover of partitions).
#[derive(Debug)]
struct Recovery {
    /// The overflow to acknowledge once every record is re-shipped (`None`: a rewind or a
    /// takeover).
    overflow: Option<Overflow>,
    /// Partitions left to scan, each since its own LUT.
    todo: VecDeque<TakenOver>,
    /// The partition an [`Action::Scan`] is out for.
    scanning: Option<TakenOver>,
    /// Batches scanned and not yet sent.
    queued: VecDeque<Vec<Change>>,
    in_flight: usize,
    scanned: u64,
}

/// The shipper of one link, without I/O.
#[derive(Debug)]
pub struct Engine {
    plan: Arc<LinkPlan>,
    settings: ShipperSettings,
    link: LinkMachine,
    throttle: Throttle,
    window: AckWindow,
    /// Entries read and not yet cut into a batch.
    pending: Vec<LoggedEntry>,
    cut_at_ms: Option<u64>,
    /// Every batch cut and not yet acknowledged, log and recovery ones.
    open: BTreeMap<u64, OpenBatch>,
    /// Sends waiting for their time (throttle, retry backoff), as (due ms, batch id).
    due: BTreeSet<(u64, u64)>,
    recovery: Option<Recovery>,
    /// A rewind asked for while a recovery runs: its LUT (the lowest asked).
    queued_rewind_ms: Option<u64>,
    next_recovery_id: u64,
    /// The log position a drain must see acknowledged.
    drain_target: Option<u64>,
    control: LinkControl,
    /// The highest log position whose lost entries an overflow recovery re-shipped.
    recovered_through: u64,
    committed: u64,
    /// The highest log position read so far (or committed, if higher).
    read_through: u64,
    last_commit_ms: u64,
    heartbeat_at_ms: u64,
    heartbeat_out: bool,
    /// What the shell was last told, so only changes are announced.
    reading: Option<usize>,
    announced_state: Option<LinkState>,
    announced_wake_ms: Option<u64>,
    counts: Counts,
    /// (ack time, records) over the last second.
    acked: VecDeque<(u64, u64)>,
    latency_ms: u64,
    actions: Vec<Action>,
}

impl Engine {
    /// The engine of `plan` at `now_ms`, for a cursor committed through `committed`, under the
    /// operator's current `control` (a rewind or drain asked before the start is not redone).
    pub fn new(
        plan: Arc<LinkPlan>,
        settings: ShipperSettings,
        committed: u64,
        control: LinkControl,
        now_ms: u64,
    ) -> Self {
        let mut link = LinkMachine::new(settings.retry, now_ms);
        link.set_paused(control.paused, now_ms);
        Engine {
            throttle: Throttle::new(plan.link.max_throughput, now_ms),
            window: AckWindow::new(settings.window, committed),
            plan,
            settings,
            link,
            pending: Vec::new(),
            cut_at_ms: None,
            open: BTreeMap::new(),
            due: BTreeSet::new(),
            recovery: None,
            queued_rewind_ms: None,
            next_recovery_id: RECOVERY_ID_BASE,
            drain_target: None,
            control,
            recovered_through: 0,
            committed,
            read_through: committed,
            last_commit_ms: now_ms,
            heartbeat_at_ms: now_ms,
            heartbeat_out: false,
            reading: None,
            announced_state: None,
            announced_wake_ms: None,
            counts: Counts::default(),
            acked: VecDeque::new(),
            latency_ms: 0,
            actions: Vec::new(),
        }
    }

    /// Takes in `event` at `now_ms` (wall time, the clock of record LUTs) and returns what to
    /// do. The first event is a [`Event::Tick`].
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        match event {
            Event::Tick => {}
            Event::Read(entries) => self.on_read(now_ms, entries),
            Event::Overflowed(overflow) => {
                self.reading = None;
                tracing::warn!(dc = self.plan.dc(), lost_through = %overflow.lost_through, min_lut_ms = overflow.min_lut_ms, "digest log overflowed this link; recovering from a store scan");
                self.start_recovery(overflow.min_lut_ms, Some(overflow));
            }
            Event::Control { control, logged_lsn } => self.on_control(now_ms, control, logged_lsn),
            Event::Scanned(found) => self.on_scanned(found),
            Event::Acked { id, outcome } => self.on_acked(now_ms, id, outcome),
            Event::Failed { id, cause, jitter } => self.on_failed(now_ms, id, cause, jitter),
            Event::TakeOver(taken) => self.on_taken_over(now_ms, taken),
            Event::Heartbeat { alive } => {
                self.heartbeat_out = false;
                if alive {
                    self.link.on_success(now_ms);
                } else {
                    self.link.on_failure(0.0);
                }
            }
            Event::Shutdown => {
                // Whatever is in flight ships again after a restart.
                let through = self.window.committable();
                if through > self.committed {
                    self.committed = through;
                    self.actions.push(Action::Commit { through });
                }
                return std::mem::take(&mut self.actions);
            }
        }
        self.settle(now_ms);
        std::mem::take(&mut self.actions)
    }

    /// Counters since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// The gauges at `now_ms`, with changes logged through `logged_lsn` (flushed or not).
    pub fn gauges(&mut self, now_ms: u64, logged_lsn: u64) -> Gauges {
        let oldest = self
            .open
            .iter()
            .filter(|(id, _)| **id < RECOVERY_ID_BASE)
            .map(|(_, batch)| batch.oldest_lut_ms)
            .chain(self.pending.iter().map(|e| e.entry.lut_ms))
            .min();
        let behind = logged_lsn > self.acknowledged_through();
        self.forget_old_acks(now_ms);
        Gauges {
            lag_ms: self.link.lag_ms(now_ms, oldest, behind),
            in_progress: self.open.values().map(|b| b.changes.len() as u64).sum(),
            throughput: self.acked.iter().map(|(_, n)| n).sum(),
            latency_ms: self.latency_ms,
        }
    }

    /// Per-namespace gauges. While the link holds work whose namespace is unknown here —
    /// changes logged and not read yet, a paused link, a recovery scan, parked records (`parked`)
    /// — every namespace shows the link's lag and queue (`link`), upper bounds, so no namespace
    /// reads caught up while the link is not.
    pub fn namespace_gauges(
        &self,
        now_ms: u64,
        logged_lsn: u64,
        link: NamespaceGauges,
        parked: bool,
    ) -> BTreeMap<usize, NamespaceGauges> {
        let unread = logged_lsn > self.read_through.max(self.acknowledged_through());
        let unattributed = unread || parked || !self.link.may_ship() || self.recovery.is_some();
        let mut gauges: BTreeMap<usize, (NamespaceGauges, Option<u64>)> =
            (0..self.plan.namespaces.len()).map(|ns| (ns, Default::default())).collect();
        for (&ns, &(count, lut)) in self.open.values().flat_map(|batch| &batch.by_namespace) {
            let (g, oldest) = gauges.entry(ns).or_default();
            g.in_progress += count;
            g.in_queue += count;
            *oldest = Some(oldest.map_or(lut, |o| o.min(lut)));
        }
        for logged in &self.pending {
            let Ok(ns) = self.plan.admit_entry(&logged.entry) else { continue };
            let (g, oldest) = gauges.entry(ns).or_default();
            g.in_queue += 1;
            *oldest = Some(oldest.map_or(logged.entry.lut_ms, |o| o.min(logged.entry.lut_ms)));
        }
        gauges
            .into_iter()
            .map(|(ns, (mut g, oldest))| {
                if unattributed {
                    (g.lag_ms, g.in_queue) = (link.lag_ms, link.in_queue);
                } else if let Some(lut) = oldest {
                    g.lag_ms = now_ms.saturating_sub(lut).max(1);
                }
                (ns, g)
            })
            .collect()
    }

    /// When the retry of batch `id` is due, if one is scheduled.
    pub fn retry_at(&self, id: u64) -> Option<u64> {
        self.due.iter().find(|(_, due)| *due == id).map(|(at, _)| *at)
    }

    /// Everything logged through here is acknowledged (or was lost and re-shipped).
    fn acknowledged_through(&self) -> u64 {
        self.window.committable().max(self.recovered_through)
    }

    fn on_read(&mut self, now_ms: u64, entries: Vec<LoggedEntry>) {
        self.reading = None;
        self.counts.entries_read += entries.len() as u64;
        if let Some(last) = entries.last() {
            self.read_through = self.read_through.max(last.lsn.0);
        }
        if self.pending.is_empty() {
            // Hold the batch for the accumulation window, so repeated changes of a hot key
            // fold into one, and until `delay-ms` has passed for its oldest change.
            let link = &self.plan.link;
            let accumulate = u64::from(link.period_ms.max(link.hot_key_ms));
            let oldest = entries.iter().map(|e| e.entry.lut_ms).min().unwrap_or(0);
            let held = (oldest + u64::from(link.delay_ms)).saturating_sub(now_ms);
            self.cut_at_ms = Some(now_ms + accumulate.max(held));
        }
        self.pending.extend(entries);
        if self.pending.len() >= self.settings.batch_records {
            self.cut_at_ms = Some(now_ms);
        }
    }

    fn on_control(&mut self, now_ms: u64, control: LinkControl, logged_lsn: u64) {
        let dc = self.plan.dc();
        self.link.set_paused(control.paused, now_ms);
        if control.drain_seq != self.control.drain_seq {
            tracing::info!(dc, through = logged_lsn, "drain requested");
            self.drain_target = Some(logged_lsn);
            self.link.set_draining(true);
        }
        if control.rewind_seq != self.control.rewind_seq {
            tracing::info!(dc, from_ms = control.rewind_from_ms, "rewind requested");
            if self.recovery.is_some() {
                let from = self
                    .queued_rewind_ms
                    .map_or(control.rewind_from_ms, |queued| queued.min(control.rewind_from_ms));
                self.queued_rewind_ms = Some(from);
            } else {
                self.start_recovery(control.rewind_from_ms, None);
            }
        }
        self.control = control;
    }

    fn start_recovery(&mut self, min_lut_ms: u64, overflow: Option<Overflow>) {
        let everything = (0..self.plan.namespaces.len()).flat_map(|ns| {
            (0..PARTITIONS).map(move |partition| TakenOver {
                ns,
                partition,
                since_lut_ms: min_lut_ms,
            })
        });
        if let Some(running) = &mut self.recovery {
            // Lost more while scanning: scan everything again from the earlier watermark and
            // acknowledge the newer overflow at the end. Batches already sent stay counted, so
            // their acknowledgements still balance.
            let earliest = running.todo.iter().map(|t| t.since_lut_ms).fold(min_lut_ms, u64::min);
            running.todo = everything.map(|t| TakenOver { since_lut_ms: earliest, ..t }).collect();
            running.overflow = overflow.or(running.overflow.take());
            running.queued.clear();
            self.counts.recoveries += 1;
            return;
        }
        self.scan(everything.collect(), overflow);
    }

    /// Starts a recovery over `todo`, or adds `todo` to the one running.
    fn scan(&mut self, todo: VecDeque<TakenOver>, overflow: Option<Overflow>) {
        self.counts.recoveries += 1;
        self.link.set_recovering(true);
        if let Some(running) = &mut self.recovery {
            running.todo.extend(todo);
            return;
        }
        self.recovery = Some(Recovery {
            overflow,
            todo,
            scanning: None,
            queued: VecDeque::new(),
            in_flight: 0,
            scanned: 0,
        });
    }

    /// The oldest LUT a recovery (overflow, rewind or takeover) has still to re-ship: its
    /// partitions left to scan or being scanned, its scanned batches not yet sent, and those
    /// in flight.
    pub fn recovery_floor_ms(&self) -> Option<u64> {
        let recovery = self.recovery.as_ref()?;
        let todo = recovery.todo.iter().chain(&recovery.scanning).map(|t| t.since_lut_ms);
        let queued = recovery.queued.iter().flatten().map(|c| c.oldest_lut_ms);
        let in_flight = self.open.range(RECOVERY_ID_BASE..).map(|(_, b)| b.oldest_lut_ms);
        todo.chain(queued).chain(in_flight).min()
    }

    fn on_taken_over(&mut self, now_ms: u64, taken: Vec<TakenOver>) {
        let taken: Vec<TakenOver> =
            taken.into_iter().filter(|t| t.ns < self.plan.namespaces.len()).collect();
        if taken.is_empty() {
            return;
        }
        tracing::info!(
            dc = self.plan.dc(),
            partitions = taken.len(),
            "re-shipping partitions taken over"
        );
        self.scan(taken.into(), None);
        self.pump_recovery(now_ms);
    }

    fn on_scanned(&mut self, found: Scanned) {
        let batch_records = self.settings.batch_records.max(1);
        let Some(recovery) = &mut self.recovery else { return };
        let Some(TakenOver { ns, .. }) = recovery.scanning.take() else { return };
        recovery.scanned += found.len() as u64;
        for chunk in found.chunks(batch_records) {
            let changes = chunk
                .iter()
                .map(|&(digest, lut_ms)| Change {
                    ns,
                    digest,
                    oldest_lut_ms: lut_ms,
                    copy_only: true,
                })
                .collect();
            recovery.queued.push_back(changes);
        }
    }

    fn on_acked(&mut self, now_ms: u64, id: u64, outcome: Outcome) {
        let Some(batch) = self.open.remove(&id) else {
            tracing::error!(dc = self.plan.dc(), batch = id, "acknowledged batch not open");
            return;
        };
        self.link.on_success(now_ms);
        let counts = &mut self.counts;
        counts.success += outcome.shipped;
        counts.not_found += outcome.not_found;
        counts.filtered_out += outcome.filtered;
        for (ns, by_ns) in outcome.by_namespace {
            counts.by_namespace.entry(ns).or_default().add(by_ns);
        }
        counts.bytes_raw += outcome.bytes_raw;
        counts.bytes_shipped += outcome.bytes_wire;
        self.latency_ms = now_ms.saturating_sub(batch.cut_ms);
        self.acked.push_back((now_ms, batch.changes.len() as u64));
        self.forget_old_acks(now_ms);
        if id < RECOVERY_ID_BASE {
            self.settle_log_batch(now_ms, id);
        } else if let Some(recovery) = &mut self.recovery {
            recovery.in_flight = recovery.in_flight.saturating_sub(1);
        }
    }

    fn on_failed(&mut self, now_ms: u64, id: u64, cause: Cause, jitter: f64) {
        if !self.open.contains_key(&id) {
            tracing::error!(dc = self.plan.dc(), batch = id, "failed batch not open");
            return;
        }
        match cause {
            Cause::Connection => self.counts.retry_conn_reset += 1,
            Cause::Destination => self.counts.retry_dest += 1,
        }
        let delay = self.link.on_failure(jitter);
        self.due.insert((now_ms + ceil_ms(delay), id));
    }

    /// Log batch `id` is acknowledged: move the window, and commit when nothing else is in
    /// flight or the last commit is `commit_interval` old (checkpoints cost an fsync).
    fn settle_log_batch(&mut self, now_ms: u64, id: u64) {
        match self.window.acknowledge(id) {
            Ok(Some(through)) => {
                let interval = ceil_ms(self.settings.commit_interval);
                if self.window.unacknowledged() == 0
                    || now_ms.saturating_sub(self.last_commit_ms) >= interval
                {
                    self.committed = through;
                    self.last_commit_ms = now_ms;
                    self.actions.push(Action::Commit { through });
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(dc = self.plan.dc(), %error, "acknowledged batch not in the window")
            }
        }
    }

    /// After any event: fire what came due, then tell the shell what changed.
    fn settle(&mut self, now_ms: u64) {
        self.send_due(now_ms);
        if self.recovery.is_none()
            && self.cut_at_ms.is_some_and(|at| at <= now_ms)
            && self.window.has_room()
        {
            self.cut(now_ms);
        }
        self.pump_recovery(now_ms);
        self.check_drain();
        if now_ms >= self.heartbeat_at_ms {
            self.heartbeat_at_ms = now_ms + ceil_ms(self.settings.heartbeat);
            if self.open.is_empty() && !self.heartbeat_out {
                self.heartbeat_out = true;
                self.actions.push(Action::Heartbeat);
            }
        }
        self.announce();
    }

    fn send_due(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.due.first()
            && at <= now_ms
        {
            self.due.pop_first();
            if let Some(batch) = self.open.get(&id) {
                self.actions.push(Action::Send { id, changes: batch.changes.clone() });
            }
        }
    }

    /// Cuts the pending entries into a log batch.
    fn cut(&mut self, now_ms: u64) {
        self.cut_at_ms = None;
        let entries = std::mem::take(&mut self.pending);
        let Some(last) = entries.last().map(|e| e.lsn.0) else { return };
        let changes = self.fold(entries);
        let id = match self.window.open(last) {
            Ok(id) => id,
            Err(error) => {
                self.actions.push(Action::Fail(error));
                return;
            }
        };
        if changes.is_empty() {
            // Everything was filtered: nothing to ship, the cursor may pass it.
            self.settle_log_batch(now_ms, id);
            return;
        }
        self.dispatch(now_ms, id, changes);
    }

    /// Filters the logged changes and folds repeated changes of one record into one.
    fn fold(&mut self, entries: Vec<LoggedEntry>) -> Vec<Change> {
        let mut latest: HashMap<(usize, Digest), usize> = HashMap::new();
        let mut changes: Vec<Change> = Vec::with_capacity(entries.len());
        for logged in entries {
            let entry = logged.entry;
            let Ok(ns) = self.plan.admit_entry(&entry) else {
                self.counts.filtered_out += 1;
                continue;
            };
            match latest.get(&(ns, entry.digest)) {
                Some(&at) => {
                    self.counts.hot_keys += 1;
                    self.counts.by_namespace.entry(ns).or_default().hot_keys += 1;
                    let folded = &mut changes[at];
                    folded.oldest_lut_ms = folded.oldest_lut_ms.min(entry.lut_ms);
                    folded.copy_only &= entry.copy;
                }
                None => {
                    latest.insert((ns, entry.digest), changes.len());
                    changes.push(Change {
                        ns,
                        digest: entry.digest,
                        oldest_lut_ms: entry.lut_ms,
                        copy_only: entry.copy,
                    });
                }
            }
        }
        changes
    }

    /// Opens batch `id` and sends it now or when `max-throughput` allows.
    fn dispatch(&mut self, now_ms: u64, id: u64, changes: Vec<Change>) {
        let wait = self.throttle.take(changes.len() as u64, now_ms);
        let oldest_lut_ms = changes.iter().map(|c| c.oldest_lut_ms).min().unwrap_or(now_ms);
        let mut by_namespace: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        for change in &changes {
            let (count, oldest) = by_namespace.entry(change.ns).or_insert((0, u64::MAX));
            *count += 1;
            *oldest = (*oldest).min(change.oldest_lut_ms);
        }
        if wait.is_zero() {
            self.actions.push(Action::Send { id, changes: changes.clone() });
        } else {
            self.due.insert((now_ms + ceil_ms(wait), id));
        }
        self.open.insert(id, OpenBatch { changes, oldest_lut_ms, cut_ms: now_ms, by_namespace });
    }

    /// Sends scanned batches while the window allows, scans the next partition once they are
    /// all sent, and finishes the recovery once everything is acknowledged.
    fn pump_recovery(&mut self, now_ms: u64) {
        let Some(mut recovery) = self.recovery.take() else { return };
        while recovery.in_flight < self.settings.window
            && let Some(changes) = recovery.queued.pop_front()
        {
            let id = self.next_recovery_id;
            self.next_recovery_id += 1;
            recovery.in_flight += 1;
            self.dispatch(now_ms, id, changes);
        }
        if !recovery.queued.is_empty() || recovery.scanning.is_some() {
            self.recovery = Some(recovery);
            return;
        }
        if !recovery.todo.is_empty() {
            // Like the log, the store is not read while paused; what was read still ships.
            if self.link.may_ship()
                && let Some(next) = recovery.todo.pop_front()
            {
                let TakenOver { ns, partition, since_lut_ms } = next;
                self.actions.push(Action::Scan { ns, partition, min_lut_ms: since_lut_ms });
                recovery.scanning = Some(next);
            }
            self.recovery = Some(recovery);
            return;
        }
        if recovery.in_flight > 0 {
            self.recovery = Some(recovery);
            return;
        }
        self.link.set_recovering(false);
        tracing::info!(dc = self.plan.dc(), scanned = recovery.scanned, "recovery scan finished");
        if let Some(overflow) = recovery.overflow {
            self.recovered_through = self.recovered_through.max(overflow.lost_through.0);
            self.actions.push(Action::AcknowledgeOverflow(overflow));
        }
        if let Some(from) = self.queued_rewind_ms.take() {
            self.start_recovery(from, None);
            self.pump_recovery(now_ms);
        }
    }

    fn check_drain(&mut self) {
        if let Some(target) = self.drain_target
            && self.acknowledged_through() >= target
        {
            self.drain_target = None;
            self.link.set_draining(false);
            self.counts.drains += 1;
            tracing::info!(dc = self.plan.dc(), through = target, "link drained");
        }
    }

    /// Tells the shell what it must change: the read it holds, the state, the wake-up time.
    fn announce(&mut self) {
        let room = self.settings.batch_records.saturating_sub(self.pending.len());
        let read = (self.link.may_ship() && self.recovery.is_none() && room > 0).then_some(room);
        if read != self.reading {
            self.reading = read;
            self.actions.push(read.map_or(Action::StopReading, |max| Action::Read { max }));
        }
        let state = self.link.state();
        if self.announced_state != Some(state) {
            self.announced_state = Some(state);
            self.actions.push(Action::SetState(state));
        }
        let cut = self.cut_at_ms.filter(|_| self.recovery.is_none() && self.window.has_room());
        let due = self.due.first().map(|(at, _)| *at);
        let wake = [cut, due].into_iter().flatten().fold(self.heartbeat_at_ms, u64::min);
        if self.announced_wake_ms != Some(wake) {
            self.announced_wake_ms = Some(wake);
            self.actions.push(Action::WakeAt(wake));
        }
    }

    fn forget_old_acks(&mut self, now_ms: u64) {
        while self.acked.front().is_some_and(|(at, _)| at + 1_000 <= now_ms) {
            self.acked.pop_front();
        }
    }
}

/// A duration in whole milliseconds, rounded up so a wait is never cut short.
fn ceil_ms(duration: Duration) -> u64 {
    duration.as_micros().div_ceil(1_000) as u64
}

#[cfg(test)]
mod tests {
    use std::convert::identity;

    use ferry_digestlog::{Entry, Lsn, Op, namespace_id};
    use ferry_tests::Link;
    use ferry_topology::placement::partition_of;

    use super::*;
    use crate::plan::testing::plan_of;

    const T0: u64 = 1_700_000_000_000;

    fn settings() -> ShipperSettings {
        ShipperSettings {
            window: 2,
            batch_records: 4,
            heartbeat: Duration::from_millis(500),
            commit_interval: Duration::from_millis(100),
            retry: ferry_transport::Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                jitter: 0.0,
            },
        }
    }

    /// An engine for the link `a -> b` (shipping `test`) with `link` applied to its settings,
    /// started at `T0` with its start-up actions checked.
    fn started(link: impl FnOnce(Link) -> Link) -> Engine {
        let plan = Arc::new(plan_of(link).1);
        let mut engine = Engine::new(plan, settings(), 0, LinkControl::default(), T0);
        assert_eq!(
            engine.handle(T0, Event::Tick),
            [
                Action::Heartbeat,
                Action::Read { max: 4 },
                Action::SetState(LinkState::Active),
                Action::WakeAt(T0 + 500),
            ]
        );
        assert_eq!(engine.handle(T0, Event::Heartbeat { alive: true }), []);
        engine
    }

    fn digest(key: u8) -> Digest {
        Digest([key; 20])
    }

    /// A local write of record `key` of `namespace` at log position `lsn`.
    fn write_in(namespace: &str, lsn: u64, key: u8, lut_ms: u64) -> LoggedEntry {
        LoggedEntry {
            lsn: Lsn(lsn),
            entry: Entry {
                digest: digest(key),
                namespace: namespace_id(namespace),
                partition: partition_of(&digest(key)),
                generation: 1,
                lut_ms,
                op: Op::Write,
                xdr_applied: false,
                origin_site: 1,
                copy: false,
            },
        }
    }

    fn write(lsn: u64, key: u8, lut_ms: u64) -> LoggedEntry {
        write_in("test", lsn, key, lut_ms)
    }

    /// Writes of distinct keys (the key is the LSN) at `lsns`, all at `T0`.
    fn writes(lsns: std::ops::RangeInclusive<u64>) -> Vec<LoggedEntry> {
        lsns.map(|lsn| write(lsn, lsn as u8, T0)).collect()
    }

    fn change(key: u8, oldest_lut_ms: u64) -> Change {
        Change { ns: 0, digest: digest(key), oldest_lut_ms, copy_only: false }
    }

    fn changes(keys: std::ops::RangeInclusive<u8>) -> Vec<Change> {
        keys.map(|key| change(key, T0)).collect()
    }

    /// Changes a store scan found: they ship only from the partition's master.
    fn scanned(keys: std::ops::RangeInclusive<u8>) -> Vec<Change> {
        keys.map(|key| Change { copy_only: true, ..change(key, T0) }).collect()
    }

    fn acked(id: u64) -> Event {
        Event::Acked { id, outcome: Outcome::default() }
    }

    fn control(change: impl FnOnce(&mut LinkControl)) -> Event {
        let mut control = LinkControl::default();
        change(&mut control);
        Event::Control { control, logged_lsn: 0 }
    }

    /// Answers every scan of a recovery over the 4096 partitions of `test` with nothing,
    /// from partition `from` on; returns the actions after the last.
    fn scan_rest(engine: &mut Engine, now: u64, from: u16, min_lut_ms: u64) -> Vec<Action> {
        for partition in from..PARTITIONS - 1 {
            let next = Action::Scan { ns: 0, partition: partition + 1, min_lut_ms };
            assert_eq!(engine.handle(now, Event::Scanned(Vec::new())), [next]);
        }
        engine.handle(now, Event::Scanned(Vec::new()))
    }

    #[test]
    fn a_hot_key_folds_into_one_change_cut_after_the_accumulation_window() {
        let mut engine = started(identity);
        let read = vec![write(1, 7, T0 - 50), write(2, 8, T0 - 20), write(3, 7, T0 - 10)];
        assert_eq!(
            engine.handle(T0, Event::Read(read)),
            [Action::Read { max: 1 }, Action::WakeAt(T0 + 100)],
            "held for hot-key-ms; room for one more entry"
        );
        assert_eq!(engine.handle(T0 + 99, Event::Tick), []);
        assert_eq!(
            engine.handle(T0 + 100, Event::Tick),
            [
                Action::Send { id: 0, changes: vec![change(7, T0 - 50), change(8, T0 - 20)] },
                Action::Read { max: 4 },
                Action::WakeAt(T0 + 500),
            ]
        );
        let counts = engine.take_counts();
        assert_eq!((counts.entries_read, counts.hot_keys), (3, 1));
    }

    #[test]
    fn a_full_batch_is_cut_at_once() {
        let mut engine = started(identity);
        assert_eq!(
            engine.handle(T0, Event::Read(writes(1..=4))),
            [Action::Send { id: 0, changes: changes(1..=4) }, Action::Read { max: 4 }]
        );
    }

    #[test]
    fn entries_read_again_from_before_the_last_batch_stop_the_link() {
        let mut engine = started(identity);
        assert_eq!(
            engine.handle(T0, Event::Read(writes(1..=4))),
            [Action::Send { id: 0, changes: changes(1..=4) }, Action::Read { max: 4 }]
        );
        // A cursor that hands out positions it already gave cannot be shipped from: the
        // window refuses the batch rather than let the cursor commit out of order.
        let actions = engine.handle(T0, Event::Read(writes(1..=4)));
        assert_eq!(
            actions.first(),
            Some(&Action::Fail(WindowError::OutOfOrder { id: 1, after: 4, last_lsn: 4 })),
            "{actions:?}"
        );
    }

    #[test]
    fn the_longest_of_period_and_hot_key_window_holds_a_batch() {
        let mut engine = started(|l| l.period_ms(300).hot_key_ms(50));
        let actions = engine.handle(T0, Event::Read(writes(1..=1)));
        assert_eq!(actions, [Action::Read { max: 3 }, Action::WakeAt(T0 + 300)]);
    }

    #[test]
    fn delay_ms_holds_a_change_until_it_is_old_enough() {
        let mut engine = started(|l| l.delay_ms(400));
        let actions = engine.handle(T0, Event::Read(vec![write(1, 1, T0 - 100)]));
        assert_eq!(actions, [Action::Read { max: 3 }, Action::WakeAt(T0 + 300)]);
    }

    #[test]
    fn a_namespace_shows_its_own_queue_and_counts_and_the_links_while_work_is_unread() {
        let mut engine = started(identity);
        let link = NamespaceGauges { lag_ms: 9_000, in_queue: 50, in_progress: 0 };
        // Logged through 3, nothing read: which namespace it is is unknown, the link's stands.
        assert_eq!(
            engine.namespace_gauges(T0, 3, link, false)[&0],
            NamespaceGauges { in_progress: 0, ..link }
        );
        // Read (key 1 twice: folded), nothing unread: the namespace's own.
        let read = vec![write(1, 1, T0 - 40), write(2, 2, T0 - 30), write(3, 1, T0 - 20)];
        engine.handle(T0, Event::Read(read));
        let own = engine.namespace_gauges(T0, 3, link, false)[&0];
        assert_eq!(own, NamespaceGauges { lag_ms: 40, in_queue: 3, in_progress: 0 });
        engine.handle(T0 + 100, Event::Tick);
        let sent = engine.namespace_gauges(T0 + 100, 3, link, false)[&0];
        assert_eq!(sent, NamespaceGauges { lag_ms: 140, in_queue: 2, in_progress: 2 });
        assert_eq!(engine.namespace_gauges(T0 + 100, 3, link, true)[&0].lag_ms, 9_000, "parked");
        let mut outcome = Outcome { shipped: 2, ..Outcome::default() };
        outcome
            .by_namespace
            .insert(0, NamespaceCounts { success: 2, ..NamespaceCounts::default() });
        engine.handle(T0 + 150, Event::Acked { id: 0, outcome });
        let counts = engine.take_counts().by_namespace[&0];
        assert_eq!((counts.success, counts.hot_keys), (2, 1));
        assert_eq!(
            engine.namespace_gauges(T0 + 150, 3, link, false)[&0],
            NamespaceGauges::default()
        );
    }

    #[test]
    fn a_takeover_re_ships_only_the_partitions_taken_over_each_since_its_own_lut() {
        let mut engine = started(|link| link);
        let taken = |partition, since_lut_ms| TakenOver { ns: 0, partition, since_lut_ms };
        let actions = engine.handle(T0, Event::TakeOver(vec![taken(5, T0 - 900), taken(9, 0)]));
        assert!(actions.contains(&Action::SetState(LinkState::Recovering)), "{actions:?}");
        assert!(actions.contains(&Action::Scan { ns: 0, partition: 5, min_lut_ms: T0 - 900 }));
        assert_eq!(engine.recovery_floor_ms(), Some(0), "partition 9 is still to scan");
        let actions = engine.handle(T0, Event::Scanned(vec![(digest(7), T0 - 10)]));
        let found = [Change { copy_only: true, ..change(7, T0 - 10) }];
        assert!(
            matches!(&actions[0], Action::Send { changes, .. } if changes == &found),
            "{actions:?}"
        );
        assert!(
            actions.contains(&Action::Scan { ns: 0, partition: 9, min_lut_ms: 0 }),
            "{actions:?}"
        );
        assert_eq!(engine.recovery_floor_ms(), Some(0), "the partition being scanned holds it");
        assert!(
            !engine
                .handle(T0, Event::Scanned(Vec::new()))
                .iter()
                .any(|a| matches!(a, Action::Scan { .. }))
        );
        let id = RECOVERY_ID_BASE;
        let actions = engine.handle(T0 + 1, acked(id));
        assert!(actions.contains(&Action::SetState(LinkState::Active)), "{actions:?}");
        assert_eq!(engine.take_counts().recoveries, 1);
    }

    #[test]
    fn a_batch_of_filtered_changes_commits_without_a_send() {
        let mut engine = started(identity);
        let read = vec![write_in("other", 1, 1, T0), write_in("other", 2, 2, T0)];
        assert_eq!(
            engine.handle(T0, Event::Read(read)),
            [Action::Read { max: 2 }, Action::WakeAt(T0 + 100)]
        );
        assert_eq!(
            engine.handle(T0 + 100, Event::Tick),
            [Action::Commit { through: 2 }, Action::Read { max: 4 }, Action::WakeAt(T0 + 500)]
        );
        assert_eq!(engine.take_counts().filtered_out, 2);
    }

    #[test]
    fn acks_in_any_order_commit_only_the_contiguous_prefix() {
        let mut engine = started(identity);
        engine.handle(T0, Event::Read(writes(1..=4)));
        engine.handle(T0, Event::Read(writes(5..=8)));
        assert_eq!(engine.handle(T0 + 200, acked(1)), [], "batch 0 still out");
        assert_eq!(engine.handle(T0 + 200, acked(0)), [Action::Commit { through: 8 }]);
    }

    #[test]
    fn commits_wait_for_the_commit_interval_while_batches_are_in_flight() {
        let mut engine = started(identity);
        engine.handle(T0, Event::Read(writes(1..=4)));
        engine.handle(T0, Event::Read(writes(5..=8)));
        assert_eq!(engine.handle(T0 + 50, acked(0)), [], "last commit 50 ms ago");
        assert_eq!(
            engine.handle(T0 + 50, Event::Shutdown),
            [Action::Commit { through: 4 }],
            "stopping commits what is acknowledged"
        );
        let mut engine = started(identity);
        engine.handle(T0, Event::Read(writes(1..=4)));
        engine.handle(T0, Event::Read(writes(5..=8)));
        assert_eq!(engine.handle(T0 + 100, acked(0)), [Action::Commit { through: 4 }]);
        assert_eq!(engine.handle(T0 + 120, acked(1)), [Action::Commit { through: 8 }]);
        assert_eq!(engine.handle(T0 + 120, Event::Shutdown), [], "nothing new to commit");
    }

    #[test]
    fn a_full_window_holds_the_next_cut_until_an_ack() {
        let mut engine = started(identity);
        engine.handle(T0, Event::Read(writes(1..=4)));
        engine.handle(T0, Event::Read(writes(5..=8)));
        assert_eq!(
            engine.handle(T0, Event::Read(writes(9..=12))),
            [],
            "a full batch waits, no more is read, and the wake-up stays the heartbeat's"
        );
        assert_eq!(
            engine.handle(T0 + 10, acked(0)),
            [Action::Send { id: 2, changes: changes(9..=12) }, Action::Read { max: 4 },]
        );
    }

    #[test]
    fn a_retryable_failure_resends_the_batch_after_a_growing_backoff() {
        let mut engine = started(identity);
        engine.handle(T0, Event::Read(writes(1..=4)));
        let failed = |cause| Event::Failed { id: 0, cause, jitter: 0.5 };
        assert_eq!(
            engine.handle(T0 + 10, failed(Cause::Connection)),
            [Action::SetState(LinkState::Down), Action::WakeAt(T0 + 110)]
        );
        assert_eq!(engine.retry_at(0), Some(T0 + 110));
        assert_eq!(engine.handle(T0 + 109, Event::Tick), []);
        assert_eq!(
            engine.handle(T0 + 110, Event::Tick),
            [Action::Send { id: 0, changes: changes(1..=4) }, Action::WakeAt(T0 + 500)]
        );
        assert_eq!(
            engine.handle(T0 + 150, failed(Cause::Destination)),
            [Action::WakeAt(T0 + 350)],
            "the second wait doubles"
        );
        engine.handle(T0 + 350, Event::Tick);
        assert_eq!(
            engine.handle(T0 + 400, acked(0)),
            [Action::Commit { through: 4 }, Action::SetState(LinkState::Active)]
        );
        let counts = engine.take_counts();
        assert_eq!((counts.retry_conn_reset, counts.retry_dest), (1, 1));
    }

    #[test]
    fn max_throughput_paces_sends() {
        let mut engine = started(|l| l.max_throughput(2));
        assert_eq!(
            engine.handle(T0, Event::Read(writes(1..=4))),
            [Action::Read { max: 4 }],
            "a one-second burst holds 2 records; 4 wait one second"
        );
        assert_eq!(engine.handle(T0 + 500, Event::Tick), [Action::WakeAt(T0 + 1_000)]);
        assert_eq!(
            engine.handle(T0 + 1_000, Event::Tick),
            [Action::Send { id: 0, changes: changes(1..=4) }, Action::WakeAt(T0 + 1_500)]
        );
    }

    #[test]
    fn only_an_idle_link_heartbeats_and_a_lost_heartbeat_takes_it_down() {
        let mut engine = started(identity);
        assert_eq!(
            engine.handle(T0 + 500, Event::Tick),
            [Action::Heartbeat, Action::WakeAt(T0 + 1_000)]
        );
        assert_eq!(
            engine.handle(T0 + 1_000, Event::Tick),
            [Action::WakeAt(T0 + 1_500)],
            "the last heartbeat is still out"
        );
        assert_eq!(
            engine.handle(T0 + 1_100, Event::Heartbeat { alive: false }),
            [Action::SetState(LinkState::Down)]
        );
        engine.handle(T0 + 1_200, Event::Read(writes(1..=4)));
        assert_eq!(
            engine.handle(T0 + 1_500, Event::Tick),
            [Action::WakeAt(T0 + 2_000)],
            "a batch in flight answers for the link"
        );
        engine.handle(T0 + 1_600, acked(0));
        assert_eq!(
            engine.handle(T0 + 2_000, Event::Tick),
            [Action::Heartbeat, Action::WakeAt(T0 + 2_500)]
        );
        assert_eq!(engine.handle(T0 + 2_010, Event::Heartbeat { alive: true }), []);
    }

    #[test]
    fn pause_stops_reading_and_resume_restarts_it() {
        let mut engine = started(identity);
        assert_eq!(
            engine.handle(T0, control(|c| c.paused = true)),
            [Action::StopReading, Action::SetState(LinkState::Paused)]
        );
        assert_eq!(
            engine.handle(T0 + 10, control(|c| c.paused = false)),
            [Action::Read { max: 4 }, Action::SetState(LinkState::Active)]
        );
    }

    #[test]
    fn a_link_paused_before_it_started_does_not_read() {
        let plan = Arc::new(plan_of(identity).1);
        let paused = LinkControl { paused: true, ..LinkControl::default() };
        let mut engine = Engine::new(plan, settings(), 0, paused, T0);
        assert_eq!(
            engine.handle(T0, Event::Tick),
            [Action::Heartbeat, Action::SetState(LinkState::Paused), Action::WakeAt(T0 + 500)]
        );
    }

    #[test]
    fn a_drain_lasts_until_everything_logged_before_it_is_acknowledged() {
        let mut engine = started(identity);
        engine.handle(T0, control(|c| c.paused = true));
        engine.handle(T0, Event::Tick);
        let drain = LinkControl { drain_seq: 1, ..LinkControl::default() };
        assert_eq!(
            engine.handle(T0 + 10, Event::Control { control: drain, logged_lsn: 6 }),
            [Action::Read { max: 4 }, Action::SetState(LinkState::Draining)],
            "a drain resumes a paused link"
        );
        engine.handle(T0 + 10, Event::Read(writes(1..=4)));
        engine.handle(T0 + 10, Event::Read(writes(5..=6)));
        engine.handle(T0 + 110, Event::Tick);
        assert_eq!(engine.handle(T0 + 120, acked(0)), [Action::Commit { through: 4 }]);
        assert_eq!(engine.take_counts().drains, 0);
        assert_eq!(
            engine.handle(T0 + 130, acked(1)),
            [Action::Commit { through: 6 }, Action::SetState(LinkState::Active)]
        );
        assert_eq!(engine.take_counts().drains, 1);
    }

    #[test]
    fn a_drain_with_nothing_logged_is_done_at_once() {
        let mut engine = started(identity);
        assert_eq!(engine.handle(T0, control(|c| c.drain_seq = 1)), []);
        assert_eq!(engine.take_counts().drains, 1);
    }

    #[test]
    fn a_rewind_scans_every_partition_and_ships_what_it_finds() {
        let mut engine = started(identity);
        let rewind = |c: &mut LinkControl| (c.rewind_seq, c.rewind_from_ms) = (1, 5);
        assert_eq!(
            engine.handle(T0, control(rewind)),
            [
                Action::Scan { ns: 0, partition: 0, min_lut_ms: 5 },
                Action::StopReading,
                Action::SetState(LinkState::Recovering),
            ]
        );
        let found: Scanned = (1..=5).map(|key| (digest(key), T0)).collect();
        assert_eq!(
            engine.handle(T0, Event::Scanned(found)),
            [
                Action::Send { id: RECOVERY_ID_BASE, changes: scanned(1..=4) },
                Action::Send { id: RECOVERY_ID_BASE + 1, changes: scanned(5..=5) },
                Action::Scan { ns: 0, partition: 1, min_lut_ms: 5 },
            ],
            "batches of at most 4, two at a time"
        );
        assert_eq!(scan_rest(&mut engine, T0, 1, 5), [], "two batches still out");
        assert_eq!(engine.handle(T0, acked(RECOVERY_ID_BASE)), []);
        assert_eq!(
            engine.handle(T0, acked(RECOVERY_ID_BASE + 1)),
            [Action::Read { max: 4 }, Action::SetState(LinkState::Active)]
        );
        assert_eq!(engine.take_counts().recoveries, 1);
    }

    #[test]
    fn a_recovery_keeps_the_window_of_batches_in_flight() {
        let mut engine = started(identity);
        engine.handle(T0, control(|c| c.rewind_seq = 1));
        let found: Scanned = (1..=12).map(|key| (digest(key), T0)).collect();
        assert_eq!(
            engine.handle(T0, Event::Scanned(found)),
            [
                Action::Send { id: RECOVERY_ID_BASE, changes: scanned(1..=4) },
                Action::Send { id: RECOVERY_ID_BASE + 1, changes: scanned(5..=8) },
            ],
            "the third batch waits for room; the next partition waits for it"
        );
        assert_eq!(
            engine.handle(T0, acked(RECOVERY_ID_BASE)),
            [
                Action::Send { id: RECOVERY_ID_BASE + 2, changes: scanned(9..=12) },
                Action::Scan { ns: 0, partition: 1, min_lut_ms: 0 },
            ]
        );
    }

    #[test]
    fn an_overflow_is_acknowledged_after_its_recovery_and_before_reading_on() {
        let mut engine = started(identity);
        let overflow = Overflow { committed: Lsn(0), lost_through: Lsn(10), min_lut_ms: 7 };
        assert_eq!(
            engine.handle(T0, Event::Overflowed(overflow)),
            [
                Action::Scan { ns: 0, partition: 0, min_lut_ms: 7 },
                Action::SetState(LinkState::Recovering),
            ]
        );
        assert_eq!(
            scan_rest(&mut engine, T0, 0, 7),
            [
                Action::AcknowledgeOverflow(overflow),
                Action::Read { max: 4 },
                Action::SetState(LinkState::Active),
            ]
        );
        assert_eq!(engine.take_counts().recoveries, 1);
        assert_eq!(
            engine.handle(T0, control(|c| c.drain_seq = 1)),
            [],
            "what the overflow lost is re-shipped: a drain through it is done"
        );
    }

    #[test]
    fn more_lost_during_a_recovery_rescans_and_acknowledges_the_newer_overflow() {
        let mut engine = started(identity);
        let first = Overflow { committed: Lsn(0), lost_through: Lsn(10), min_lut_ms: 7 };
        engine.handle(T0, Event::Overflowed(first));
        let found: Scanned = vec![(digest(1), T0)];
        assert_eq!(
            engine.handle(T0, Event::Scanned(found)),
            [
                Action::Send { id: RECOVERY_ID_BASE, changes: scanned(1..=1) },
                Action::Scan { ns: 0, partition: 1, min_lut_ms: 7 },
            ]
        );
        // The log lost more meanwhile (found by a read, or when the first was acknowledged).
        let newer = Overflow { committed: Lsn(0), lost_through: Lsn(30), min_lut_ms: 9 };
        assert_eq!(engine.handle(T0, Event::Overflowed(newer)), [], "the scan out finishes first");
        assert_eq!(
            engine.handle(T0, Event::Scanned(Vec::new())),
            [Action::Scan { ns: 0, partition: 0, min_lut_ms: 7 }],
            "from the first partition again, from the earlier watermark"
        );
        assert_eq!(scan_rest(&mut engine, T0, 0, 7), [], "the first batch is still out");
        assert_eq!(
            engine.handle(T0, acked(RECOVERY_ID_BASE)),
            [
                Action::AcknowledgeOverflow(newer),
                Action::Read { max: 4 },
                Action::SetState(LinkState::Active),
            ]
        );
        assert_eq!(engine.take_counts().recoveries, 2);
    }

    #[test]
    fn a_pause_stops_store_scans_too() {
        let mut engine = started(identity);
        engine.handle(T0, control(|c| c.rewind_seq = 1));
        let paused = |c: &mut LinkControl| (c.rewind_seq, c.paused) = (1, true);
        assert_eq!(engine.handle(T0, control(paused)), [Action::SetState(LinkState::Paused)]);
        assert_eq!(engine.handle(T0, Event::Scanned(Vec::new())), [], "no next scan");
        assert_eq!(
            engine.handle(T0, control(|c| c.rewind_seq = 1)),
            [
                Action::Scan { ns: 0, partition: 1, min_lut_ms: 0 },
                Action::SetState(LinkState::Recovering),
            ]
        );
    }

    #[test]
    fn a_rewind_asked_during_a_recovery_runs_after_it_from_the_lowest_time() {
        let mut engine = started(identity);
        engine.handle(T0, control(|c| (c.rewind_seq, c.rewind_from_ms) = (1, 50)));
        assert_eq!(engine.handle(T0, control(|c| (c.rewind_seq, c.rewind_from_ms) = (2, 90))), []);
        assert_eq!(engine.handle(T0, control(|c| (c.rewind_seq, c.rewind_from_ms) = (3, 20))), []);
        assert_eq!(
            scan_rest(&mut engine, T0, 0, 50),
            [Action::Scan { ns: 0, partition: 0, min_lut_ms: 20 }]
        );
        assert_eq!(engine.take_counts().recoveries, 2);
    }

    #[test]
    fn lag_is_never_0_while_paused_or_behind() {
        let mut engine = started(identity);
        assert_eq!(engine.gauges(T0, 0).lag_ms, 0, "caught up");
        assert_eq!(engine.gauges(T0, 3).lag_ms, 1, "behind, nothing read yet");
        assert_eq!(engine.gauges(T0 + 40, 3).lag_ms, 40, "since last caught up");
        engine.handle(T0 + 40, Event::Read(vec![write(1, 1, T0 - 100)]));
        assert_eq!(engine.gauges(T0 + 50, 3).lag_ms, 150, "the oldest change read");
        engine.handle(T0 + 200, Event::Tick);
        engine.handle(T0 + 210, acked(0));
        assert_eq!(engine.gauges(T0 + 220, 1).lag_ms, 0, "all acknowledged");
        engine.handle(T0 + 220, control(|c| c.paused = true));
        assert_eq!(engine.gauges(T0 + 220, 1).lag_ms, 1, "paused");
        assert_eq!(engine.gauges(T0 + 320, 1).lag_ms, 100, "paused for 100 ms");
        assert_eq!(engine.gauges(T0 + 420, 2).lag_ms, 100, "paused and behind since 320");
    }

    #[test]
    fn acknowledgements_count_into_stats_and_gauges() {
        let mut engine = started(identity);
        engine.handle(T0, Event::Read(writes(1..=4)));
        assert_eq!(engine.gauges(T0, 4).in_progress, 4);
        let outcome = Outcome {
            shipped: 2,
            unparked: 1,
            not_found: 1,
            filtered: 0,
            bytes_raw: 300,
            bytes_wire: 100,
            ..Outcome::default()
        };
        engine.handle(T0 + 30, Event::Acked { id: 0, outcome });
        let counts = engine.take_counts();
        assert_eq!((counts.success, counts.not_found, counts.bytes_shipped), (2, 1, 100));
        let gauges = engine.gauges(T0 + 30, 4);
        assert_eq!((gauges.in_progress, gauges.throughput, gauges.latency_ms), (0, 4, 30));
        assert_eq!(engine.gauges(T0 + 1_030, 4).throughput, 0, "a second later");
        assert_eq!(engine.take_counts(), Counts::default(), "counts are taken once");
    }
}
