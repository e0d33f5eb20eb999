//! The log handle: configuration, open (recovery, cursor loading), appends, cursor registry,
//! and retention — deleting segments every cursor has passed and enforcing the size cap by
//! marking the cursors left behind as overflowed before anything is deleted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, CursorName, Overflow};
use crate::cursor::{Cursor, CursorStart};
use crate::entry::{Entry, LoggedEntry, Lsn, RECORD_LEN};
use crate::error::{AppendError, ConfigError, CursorError, OpenError, ReadError};
use crate::policy::CommitPolicy;
use crate::read;
use crate::recovery::{self, RecoveryMode, RecoveryReport, SegmentMeta};
use crate::segment::{self, HEADER_LEN, NO_LUT, SegmentHeader};
use crate::storage::{self, Storage, StorageFile, TMP_SUFFIX};
use crate::writer::{Queue, Writer};

/// Log settings. Every field has a documented default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest segment file in bytes (header included). Default: 64 MiB.
    pub segment_size: u64,
    /// Most bytes all segments together may use; must be at least twice `segment_size`.
    /// Reaching it deletes the oldest segments and marks the cursors that had not consumed
    /// them as overflowed. Default: 4 GiB.
    pub size_cap: u64,
    /// Group-commit policy. Default: [`CommitPolicy::default`] (sync, no extra wait).
    pub commit: CommitPolicy,
    /// Appends queued for the writer before [`DigestLog::append`] waits (backpressure, never
    /// drops); [`DigestLog::append_nowait`] never waits. Default: 8192.
    pub queue_depth: usize,
    /// Recovery mode for open. Default: [`RecoveryMode::Strict`].
    pub recovery: RecoveryMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size: 64 << 20,
            size_cap: 4 << 30,
            commit: CommitPolicy::default(),
            queue_depth: 8192,
            recovery: RecoveryMode::Strict,
        }
    }
}

impl Config {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let min_segment = (HEADER_LEN + RECORD_LEN) as u64;
        if self.segment_size < min_segment {
            return Err(ConfigError(format!(
                "segment_size {} is below the minimum {min_segment}",
                self.segment_size
            )));
        }
        if self.size_cap < self.segment_size.saturating_mul(2) {
            return Err(ConfigError(format!(
                "size_cap {} is below twice segment_size {}",
                self.size_cap, self.segment_size
            )));
        }
        if self.queue_depth == 0 {
            return Err(ConfigError("queue_depth must be at least 1".into()));
        }
        Ok(())
    }
}

/// Counters since open. Every overflow is counted; nothing is dropped uncounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Entries appended (written to the log; acknowledged once durable).
    pub appends: u64,
    /// fdatasync calls on segments (one per group commit).
    pub syncs: u64,
    /// Times a cursor was marked overflowed (by the size cap, or on open).
    pub overflows: u64,
    /// Entries deleted before a cursor consumed them, summed over cursors.
    pub entries_lost_to_overflow: u64,
    /// Segments deleted by retention or the size cap.
    pub segments_deleted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appends: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) overflows: AtomicU64,
    pub(crate) entries_lost: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
}

/// One cursor's live state. Checkpoint writes for a cursor are serialized by `io` and always
/// persist the in-memory state as of the write.
#[derive(Debug)]
pub(crate) struct CursorSlot {
    pub(crate) name: CursorName,
    /// Committed LSN, mirrored for retention (never held across I/O).
    pub(crate) committed: AtomicU64,
    /// Unacknowledged overflow.
    pub(crate) overflow: Mutex<Option<Overflow>>,
    /// Held while the checkpoint file is written.
    pub(crate) io: Mutex<()>,
    /// A `Cursor` handle exists.
    pub(crate) open: AtomicBool,
}

impl CursorSlot {
    pub(crate) fn new(name: CursorName, cp: Checkpoint) -> CursorSlot {
        CursorSlot {
            name,
            committed: AtomicU64::new(cp.committed.0),
            overflow: Mutex::new(cp.overflow),
            io: Mutex::new(()),
            open: AtomicBool::new(false),
        }
    }

    pub(crate) fn committed(&self) -> Lsn {
        Lsn(self.committed.load(Ordering::Acquire))
    }

    pub(crate) fn overflow(&self) -> Option<Overflow> {
        *lock(&self.overflow)
    }

    /// Persists the current state with the committed position raised to at least
    /// `committed`; the in-memory position moves only once the checkpoint is durable.
    pub(crate) fn persist(
        &self,
        storage: &dyn Storage,
        committed: Lsn,
        clear_overflow: Option<&Overflow>,
    ) -> Result<(), CursorError> {
        let _io = lock(&self.io);
        let mut overflow = self.overflow();
        if let Some(seen) = clear_overflow {
            if overflow.as_ref() != Some(seen) {
                return Err(CursorError::OverflowChanged { current: overflow });
            }
            overflow = None;
        }
        let cp = Checkpoint { committed: committed.max(self.committed()), overflow };
        let file = self.name.file_name();
        storage::write_atomic(storage, &file, &cp.encode())
            .map_err(|source| CursorError::Io { file, source })?;
        self.committed.fetch_max(cp.committed.0, Ordering::AcqRel);
        if let Some(seen) = clear_overflow {
            // Retention may have merged a newer overflow in meanwhile (without this lock);
            // then it stays, and retention's own persist (queued on `io`) writes it.
            let mut current = lock(&self.overflow);
            if current.as_ref() == Some(seen) {
                *current = None;
            }
        }
        Ok(())
    }
}

/// Segments and cursors, under one short-held lock (never held across fsync).
#[derive(Debug)]
pub(crate) struct State {
    /// Sorted by first LSN; the last one is being appended to.
    pub(crate) segments: Vec<SegmentMeta>,
    pub(crate) cursors: BTreeMap<CursorName, Arc<CursorSlot>>,
}

/// State shared by the log handle, the writer thread and cursors.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: Config,
    pub(crate) state: Mutex<State>,
    /// Flushed LSN, published by the writer after each fsync.
    pub(crate) flushed: watch::Receiver<Lsn>,
    /// The last LSN an awaiting [`DigestLog::append`] may be answered for: the flushed LSN
    /// under [`crate::Durability::Sync`], the written one under `Buffered`.
    pub(crate) acknowledged: watch::Receiver<Lsn>,
    /// Queue slots for [`DigestLog::append`]: taken before queueing, returned by the writer
    /// when it takes the entry.
    pub(crate) queue_slots: tokio::sync::Semaphore,
    /// Appends on their way to the writer; assigns LSNs.
    pub(crate) queue: Queue,
    /// Last LSN written to the OS (may not be durable).
    pub(crate) written: AtomicU64,
    /// Set by the first failed write or fsync.
    pub(crate) poison: OnceLock<Arc<std::io::Error>>,
    pub(crate) counters: Counters,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Segments to delete and cursors to persist, decided under the state lock and carried out
/// after it is released.
#[derive(Debug, Default)]
pub(crate) struct RetentionPlan {
    delete: Vec<SegmentMeta>,
    overflowed: Vec<Arc<CursorSlot>>,
    /// Entries deleted before some cursor consumed them, summed over cursors.
    lost_entries: u64,
}

impl RetentionPlan {
    pub(crate) fn has_overflow(&self) -> bool {
        !self.overflowed.is_empty()
    }
}

impl State {
    /// Decides which sealed segments go: those every cursor has passed, then the oldest ones
    /// while the cap would be exceeded — marking (in memory) each cursor that had not
    /// consumed them. The plan must be executed with [`Shared::execute`].
    pub(crate) fn plan_retention(&mut self, config: &Config) -> RetentionPlan {
        let mut plan = RetentionPlan::default();
        let min_committed = self.cursors.values().map(|c| c.committed()).min();
        // Sealed segment i ends right before segment i + 1 starts.
        while self.segments.len() > 1 {
            let last_of_oldest = Lsn(self.segments[1].first.0 - 1);
            let passed = min_committed.is_some_and(|m| m >= last_of_oldest);
            let sealed_bytes: u64 =
                self.segments[..self.segments.len() - 1].iter().map(|s| s.len).sum();
            let over_cap = sealed_bytes + config.segment_size > config.size_cap;
            if !passed && !over_cap {
                break;
            }
            let oldest = self.segments.remove(0);
            for slot in self.cursors.values() {
                let committed = slot.committed();
                if committed >= last_of_oldest {
                    continue;
                }
                plan.lost_entries += last_of_oldest.0 - committed.max(Lsn(oldest.first.0 - 1)).0;
                let lost = Overflow {
                    committed,
                    lost_through: last_of_oldest,
                    min_lut_ms: if oldest.min_lut == NO_LUT { 0 } else { oldest.min_lut },
                };
                let mut o = lock(&slot.overflow);
                *o = Some(o.map_or(lost, |prev| prev.merge(lost)));
                slot.committed.fetch_max(last_of_oldest.0, Ordering::AcqRel);
                if !plan.overflowed.iter().any(|s| Arc::ptr_eq(s, slot)) {
                    plan.overflowed.push(Arc::clone(slot));
                }
            }
            plan.delete.push(oldest);
        }
        plan
    }

    pub(crate) fn oldest_lsn(&self) -> Lsn {
        self.segments.first().map_or(Lsn(1), |s| s.first)
    }
}

impl Shared {
    /// Carries out a retention plan: overflow marks are made durable first; a segment is
    /// deleted only if every mark succeeded (else its file stays and reappears on reopen).
    pub(crate) fn execute(&self, plan: RetentionPlan) {
        let mut marks_durable = true;
        for slot in &plan.overflowed {
            self.counters.overflows.fetch_add(1, Ordering::Relaxed);
            if let Some(o) = slot.overflow() {
                tracing::warn!(
                    cursor = %slot.name,
                    committed = %o.committed,
                    lost_through = %o.lost_through,
                    min_lut_ms = o.min_lut_ms,
                    "digest log size cap reached: cursor overflowed"
                );
            }
            if let Err(e) = slot.persist(self.storage.as_ref(), Lsn::ZERO, None) {
                tracing::error!(cursor = %slot.name, error = %e, "persist overflow mark");
                marks_durable = false;
            }
        }
        if !marks_durable || plan.delete.is_empty() {
            return;
        }
        self.counters.entries_lost.fetch_add(plan.lost_entries, Ordering::Relaxed);
        for seg in &plan.delete {
            let name = seg.name();
            match self.storage.remove(&name) {
                Ok(()) => {
                    self.counters.segments_deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(segment = %name, error = %e, "remove segment"),
            }
        }
        if let Err(e) = self.storage.sync_dir() {
            tracing::error!(error = %e, "sync log directory after retention");
        }
    }

    /// Runs retention now (after a cursor moved).
    pub(crate) fn retain(&self) {
        let plan = lock(&self.state).plan_retention(&self.config);
        self.execute(plan);
    }
}

/// Writes a new segment file (complete header, via temp file + rename) and opens it.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    first: Lsn,
    prev_min_lut: u64,
) -> std::io::Result<Box<dyn StorageFile>> {
    let name = segment::segment_name(first);
    let header = SegmentHeader { first_lsn: first, prev_min_lut };
    storage::write_atomic(storage, &name, &header.encode())?;
    storage.open(&name)
}

/// A digest log open for appending.
///
/// Dropping it (or [`DigestLog::close`]) stops the writer after it has synced and
/// acknowledged everything queued.
#[derive(Debug)]
pub struct DigestLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl DigestLog {
    /// Opens (creating if empty) the log in `storage`: recovers, loads cursors and starts
    /// the writer thread.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: Config,
    ) -> Result<(DigestLog, RecoveryReport), OpenError> {
        config.validate()?;
        let mut report = RecoveryReport::default();
        let names = storage.list().map_err(OpenError::io("list log directory"))?;
        for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
            storage.remove(name).map_err(OpenError::io(format!("remove temporary file {name}")))?;
            report.temp_files_removed += 1;
        }
        let analysis = recovery::analyze(storage.as_ref(), config.recovery)?;
        recovery::apply(storage.as_ref(), &analysis)?;
        let recovery::Analysis { mut segments, next_lsn, torn_tail, salvaged } = analysis;
        let salvaging = salvaged.is_some();
        report.torn_tail = torn_tail;
        report.salvaged = salvaged;
        let last = Lsn(next_lsn.0 - 1);

        // The active segment (an empty directory gets its first one).
        let (active, file) = match segments.last() {
            Some(s) => (s.clone(), storage.open(&s.name())),
            None => {
                let first =
                    SegmentMeta { first: next_lsn, len: HEADER_LEN as u64, min_lut: NO_LUT };
                segments.push(first.clone());
                (first, create_segment(storage.as_ref(), next_lsn, NO_LUT))
            }
        };
        let file = file.map_err(OpenError::io("open active segment"))?;
        let oldest = segments.first().map_or(next_lsn, |s| s.first);

        let counters = Counters::default();
        let mut cursors = BTreeMap::new();
        for file_name in &names {
            let Some(name) = CursorName::from_file_name(file_name) else {
                continue;
            };
            let bytes = storage
                .open(file_name)
                .and_then(|f| storage::read_all(f.as_ref()))
                .map_err(OpenError::io(format!("read cursor checkpoint {file_name}")))?;
            let mut cp = Checkpoint::decode(&bytes)
                .map_err(|source| OpenError::Checkpoint { file: file_name.clone(), source })?;
            let mut changed = false;
            if cp.committed > last {
                if !salvaging {
                    return Err(OpenError::CursorAhead {
                        cursor: name.to_string(),
                        committed: cp.committed,
                        last,
                    });
                }
                cp.committed = last;
                report.cursors_clamped.push(name.to_string());
                changed = true;
            }
            if cp.committed.next() < oldest {
                // Segments it needed are gone (a crash between deleting them and recording
                // the overflow cannot happen; an operator deleting files can). LUT unknown.
                let lost = Overflow {
                    committed: cp.committed,
                    lost_through: Lsn(oldest.0 - 1),
                    min_lut_ms: 0,
                };
                cp.overflow = Some(cp.overflow.map_or(lost, |o| o.merge(lost)));
                cp.committed = lost.lost_through;
                report.cursors_overflowed.push(name.to_string());
                counters.overflows.fetch_add(1, Ordering::Relaxed);
                changed = true;
            }
            if changed {
                storage::write_atomic(storage.as_ref(), file_name, &cp.encode())
                    .map_err(OpenError::io(format!("write cursor checkpoint {file_name}")))?;
            }
            cursors.insert(name.clone(), Arc::new(CursorSlot::new(name, cp)));
        }

        let (flushed_tx, flushed_rx) = watch::channel(last);
        let (acknowledged_tx, acknowledged_rx) = watch::channel(last);
        let shared = Arc::new(Shared {
            storage,
            config,
            state: Mutex::new(State { segments, cursors }),
            flushed: flushed_rx,
            acknowledged: acknowledged_rx,
            queue_slots: tokio::sync::Semaphore::new(config.queue_depth),
            queue: Queue::new(next_lsn),
            written: AtomicU64::new(last.0),
            poison: OnceLock::new(),
            counters,
        });
        let writer =
            Writer::new(Arc::clone(&shared), flushed_tx, acknowledged_tx, file, active, next_lsn);
        let handle = std::thread::Builder::new()
            .name("digestlog-writer".into())
            .spawn(move || writer.run())
            .map_err(OpenError::io("spawn digest log writer thread"))?;
        Ok((DigestLog { shared, writer: Some(handle) }, report))
    }

    /// Appends `entry`; resolves with its LSN once it is durable (or, under
    /// [`crate::Durability::Buffered`], written). Many tasks may append concurrently; their
    /// entries share fsyncs. Waits (never drops) if the writer's queue is full.
    ///
    /// Cancelling the future after the entry was queued does not un-append it.
    pub async fn append(&self, entry: Entry) -> Result<Lsn, AppendError> {
        let slot = self
            .shared
            .queue_slots
            .acquire()
            .await
            .map_err(|_| self.check_poison().err().unwrap_or(AppendError::Closed))?;
        let lsn = self.queue(entry, true)?;
        // The writer hands the slot back when it takes the entry.
        slot.forget();
        let mut acknowledged = self.shared.acknowledged.clone();
        loop {
            if *acknowledged.borrow_and_update() >= lsn {
                return Ok(lsn);
            }
            self.check_poison()?;
            if acknowledged.changed().await.is_err() {
                self.check_poison()?;
                return Err(AppendError::Closed);
            }
        }
    }

    /// Queues `entry` and returns its LSN at once, without waiting for the write or the fsync.
    ///
    /// For a caller whose own durable store carries the LSN (see the node's storage): the
    /// entry is written and fsynced under the commit policy like any other, becomes visible to
    /// cursors once flushed, and a crash before that loses it, so the caller must be able to
    /// append it again after recovery. Entries queue in LSN order; the queue is not bounded,
    /// so the caller bounds its own concurrency.
    pub fn append_nowait(&self, entry: Entry) -> Result<Lsn, AppendError> {
        self.queue(entry, false)
    }

    /// Assigns the next LSN and queues the entry under one lock, so the queue is in LSN order.
    fn queue(&self, entry: Entry, awaited: bool) -> Result<Lsn, AppendError> {
        self.check_poison()?;
        self.shared.queue.push(entry, awaited).ok_or(AppendError::Closed)
    }

    fn check_poison(&self) -> Result<(), AppendError> {
        match self.shared.poison.get() {
            Some(e) => Err(AppendError::Poisoned(Arc::clone(e))),
            None => Ok(()),
        }
    }

    /// Whether a write or fsync failed: then no later entry is written, and entries queued
    /// but not yet written are lost.
    pub fn poisoned(&self) -> Option<Arc<std::io::Error>> {
        self.shared.poison.get().cloned()
    }

    /// The last durable LSN; readers see entries up to here.
    pub fn flushed_lsn(&self) -> Lsn {
        *self.shared.flushed.borrow()
    }

    /// Resolves once every entry through `lsn` is flushed (readable by cursors and
    /// [`DigestLog::read_flushed`]); fails if the log is poisoned or closed first.
    pub async fn flushed_through(&self, lsn: Lsn) -> Result<(), AppendError> {
        let mut flushed = self.shared.flushed.clone();
        loop {
            if *flushed.borrow_and_update() >= lsn {
                return Ok(());
            }
            self.check_poison()?;
            if flushed.changed().await.is_err() {
                self.check_poison()?;
                return Err(AppendError::Closed);
            }
        }
    }

    /// Up to `max` flushed entries after `after`, read without any cursor (for questions
    /// about what a cursor has not committed yet, which must not move it). Blocking I/O.
    pub fn read_flushed(&self, after: Lsn, max: usize) -> Result<Vec<LoggedEntry>, ReadError> {
        let (from, last) = (after.next(), self.flushed_lsn());
        if from > last || max == 0 {
            return Ok(Vec::new());
        }
        let segments = lock(&self.shared.state).segments.clone();
        read::read_range(self.shared.storage.as_ref(), &segments, &mut None, from, last, max)
    }

    /// Bytes the segments use on disk (what was written of the active one).
    pub fn disk_bytes(&self) -> u64 {
        let written = self.written_lsn().0;
        let state = lock(&self.shared.state);
        let Some((active, sealed)) = state.segments.split_last() else { return 0 };
        let active_records = (written + 1).saturating_sub(active.first.0);
        sealed.iter().map(|s| s.len).sum::<u64>()
            + HEADER_LEN as u64
            + active_records * RECORD_LEN as u64
    }

    /// The last LSN handed out (written or still queued).
    pub fn logged_lsn(&self) -> Lsn {
        self.shared.queue.last_assigned()
    }

    /// The last LSN written to the OS (durable or not).
    pub fn written_lsn(&self) -> Lsn {
        Lsn(self.shared.written.load(Ordering::Acquire))
    }

    /// Counters since open.
    pub fn metrics(&self) -> Metrics {
        let c = &self.shared.counters;
        Metrics {
            appends: c.appends.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            overflows: c.overflows.load(Ordering::Relaxed),
            entries_lost_to_overflow: c.entries_lost.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
        }
    }

    /// Opens the cursor `name`, creating it at `start` if it does not exist. One handle per
    /// cursor at a time. Creation writes the checkpoint (blocking I/O).
    pub fn open_cursor(&self, name: &str, start: CursorStart) -> Result<Cursor, CursorError> {
        let name = CursorName::new(name)?;
        let mut state = lock(&self.shared.state);
        let slot = match state.cursors.get(&name) {
            Some(slot) => Arc::clone(slot),
            None => {
                let committed = match start {
                    CursorStart::Oldest => Lsn(state.oldest_lsn().0 - 1),
                    CursorStart::Latest => self.flushed_lsn(),
                };
                let cp = Checkpoint { committed, overflow: None };
                let file = name.file_name();
                storage::write_atomic(self.shared.storage.as_ref(), &file, &cp.encode())
                    .map_err(|source| CursorError::Io { file, source })?;
                let slot = Arc::new(CursorSlot::new(name.clone(), cp));
                state.cursors.insert(name.clone(), Arc::clone(&slot));
                slot
            }
        };
        drop(state);
        if slot.open.swap(true, Ordering::AcqRel) {
            return Err(CursorError::InUse(name.to_string()));
        }
        Ok(Cursor::new(Arc::clone(&self.shared), slot))
    }

    /// Deletes the cursor `name` (a DR link was removed) so it no longer holds segments.
    pub fn remove_cursor(&self, name: &str) -> Result<(), CursorError> {
        let name = CursorName::new(name)?;
        let mut state = lock(&self.shared.state);
        let slot =
            state.cursors.get(&name).ok_or_else(|| CursorError::NotFound(name.to_string()))?;
        if slot.open.load(Ordering::Acquire) {
            return Err(CursorError::InUse(name.to_string()));
        }
        let file = name.file_name();
        let storage = self.shared.storage.as_ref();
        storage
            .remove(&file)
            .and_then(|()| storage.sync_dir())
            .map_err(|source| CursorError::Io { file, source })?;
        state.cursors.remove(&name);
        drop(state);
        self.shared.retain();
        Ok(())
    }

    /// Every cursor: name, committed LSN, lag behind the flushed LSN, overflow.
    pub fn cursors(&self) -> Vec<crate::CursorInfo> {
        let logged = self.logged_lsn();
        lock(&self.shared.state)
            .cursors
            .values()
            .map(|s| {
                crate::CursorInfo::new(s.name.to_string(), s.committed(), logged, s.overflow())
            })
            .collect()
    }

    /// Stops the writer after it has synced and acknowledged everything queued.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.queue.close();
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("digest log writer thread panicked");
        }
    }
}

impl Drop for DigestLog {
    fn drop(&mut self) {
        self.stop();
    }
}
