//! The writer thread: takes appends from the queue (in the LSN order the log assigned),
//! encodes records, and follows the [`GroupCommit`] policy to write, fsync and publish what is
//! acknowledged; rotates segments and runs retention. Any write or fsync failure poisons it
//! for good.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::entry::{self, Entry, Lsn, RECORD_LEN};
use crate::log::{Shared, create_segment, lock};
use crate::policy::{GroupCommit, Step};
use crate::recovery::SegmentMeta;
use crate::segment::{HEADER_LEN, NO_LUT};
use crate::storage::StorageFile;

/// One queued append.
#[derive(Debug)]
pub(crate) struct Request {
    lsn: Lsn,
    entry: Entry,
    /// An awaited append: it took a queue slot (handed back when the writer takes it) and
    /// wakes the writer.
    awaited: bool,
}

/// Appends waiting for the writer, in LSN order. The writer is woken only when someone waits
/// for it: by an awaited append, or by any append while nothing is pending a sync (so an
/// entry never waits longer than the policy says). An unawaited append to a writer sleeping
/// until its sync deadline costs no wake-up and no thread hand-off.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Debug)]
struct QueueState {
    next_lsn: Lsn,
    pending: Vec<Request>,
    closed: bool,
    /// How the writer sleeps; `None` while it works.
    sleeping: Option<Sleep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    /// Nothing unsynced: until the next append.
    Indefinitely,
    /// Until the group's sync deadline, unless an awaited append arrives.
    UntilDeadline,
}

impl Queue {
    pub(crate) fn new(next_lsn: Lsn) -> Queue {
        let state = QueueState { next_lsn, pending: Vec::new(), closed: false, sleeping: None };
        Queue { state: Mutex::new(state), wake: Condvar::new() }
    }

    /// Assigns the next LSN to `entry` and queues it; `None` once closed.
    pub(crate) fn push(&self, entry: Entry, awaited: bool) -> Option<Lsn> {
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        let lsn = state.next_lsn;
        state.next_lsn = lsn.next();
        state.pending.push(Request { lsn, entry, awaited });
        let wake = match state.sleeping {
            Some(Sleep::Indefinitely) => true,
            Some(Sleep::UntilDeadline) => awaited,
            None => false,
        };
        if wake {
            state.sleeping = None;
            self.wake.notify_one();
        }
        Some(lsn)
    }

    /// The last LSN handed out.
    pub(crate) fn last_assigned(&self) -> Lsn {
        Lsn(lock(&self.state).next_lsn.0 - 1)
    }

    /// Refuses appends from now on and wakes the writer to finish.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
    }

    /// Moves everything queued into `into`; true once closed.
    fn take_all(&self, into: &mut Vec<Request>) -> bool {
        let mut state = lock(&self.state);
        into.append(&mut state.pending);
        state.closed
    }

    fn has_pending(&self) -> bool {
        !lock(&self.state).pending.is_empty()
    }

    /// Sleeps until `deadline` (`None`: indefinitely), a wake-up, or closing.
    fn sleep(&self, deadline: Option<Instant>) {
        let mut state = lock(&self.state);
        if !state.pending.is_empty() || state.closed {
            return;
        }
        state.sleeping =
            Some(if deadline.is_some() { Sleep::UntilDeadline } else { Sleep::Indefinitely });
        state = match deadline {
            None => self.wake.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(deadline) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                self.wake
                    .wait_timeout(state, timeout)
                    .map_or_else(|e| e.into_inner().0, |(state, _)| state)
            }
        };
        state.sleeping = None;
    }

    /// After poisoning: discards appends until closed.
    fn drain_until_closed(&self) {
        let mut state = lock(&self.state);
        while !state.closed {
            state.pending.clear();
            state = self.wake.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    flushed: watch::Sender<Lsn>,
    acknowledged: watch::Sender<Lsn>,
    gc: GroupCommit,
    /// The active segment.
    file: Box<dyn StorageFile>,
    /// Bytes in the active segment, counting `buf`.
    seg_len: u64,
    /// Smallest LUT in the active segment.
    seg_min_lut: u64,
    next_lsn: Lsn,
    /// Encoded records not yet written.
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        flushed: watch::Sender<Lsn>,
        acknowledged: watch::Sender<Lsn>,
        file: Box<dyn StorageFile>,
        active: SegmentMeta,
        next_lsn: Lsn,
    ) -> Writer {
        Writer {
            gc: GroupCommit::new(shared.config.commit),
            shared,
            flushed,
            acknowledged,
            file,
            seg_len: active.len,
            seg_min_lut: active.min_lut,
            next_lsn,
            buf: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let mut taken = Vec::new();
        loop {
            let closed = self.shared.queue.take_all(&mut taken);
            let now = Instant::now();
            for req in taken.drain(..) {
                if let Err(e) = self.accept(req, now) {
                    return self.poison(e);
                }
            }
            if closed {
                break;
            }
            let result = match self.gc.next(now, self.shared.queue.has_pending()) {
                Step::Take => Ok(()),
                Step::Wait { deadline } => {
                    self.shared.queue.sleep(deadline);
                    Ok(())
                }
                Step::WriteAndAck => self.write().map(|()| self.ack_all()),
                Step::Sync => self.sync(),
            };
            if let Err(e) = result {
                return self.poison(e);
            }
        }
        // Queue closed: make everything durable before exiting.
        if let Err(e) = self.sync() {
            self.poison(e);
        }
    }

    fn accept(&mut self, req: Request, now: Instant) -> io::Result<()> {
        if req.awaited {
            self.shared.queue_slots.add_permits(1);
        }
        debug_assert_eq!(req.lsn, self.next_lsn, "appends arrive in LSN order");
        if self.seg_len + RECORD_LEN as u64 > self.shared.config.segment_size {
            self.rotate()?;
        }
        self.next_lsn = req.lsn.next();
        entry::encode_record(req.lsn, &req.entry, &mut self.buf);
        self.seg_len += RECORD_LEN as u64;
        self.seg_min_lut = self.seg_min_lut.min(req.entry.lut_ms);
        self.gc.on_append(now);
        self.shared.counters.appends.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.append(&self.buf)?;
            self.buf.clear();
            let written = self.next_lsn.0 - 1;
            self.shared.written.store(written, Ordering::Release);
        }
        self.gc.on_written();
        Ok(())
    }

    /// Writes, fsyncs, publishes the flushed LSN and acknowledges every waiting append.
    fn sync(&mut self) -> io::Result<()> {
        self.write()?;
        let flushed = Lsn(self.next_lsn.0 - 1);
        if *self.flushed.borrow() != flushed {
            self.file.sync()?;
            self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
            self.flushed.send_replace(flushed);
        }
        self.gc.on_synced();
        self.ack_all();
        Ok(())
    }

    /// Publishes everything written so far as acknowledged (called once it is written under
    /// the buffered policy, once it is durable under the sync one).
    fn ack_all(&mut self) {
        let written = Lsn(self.next_lsn.0 - 1);
        self.acknowledged.send_if_modified(|acked| std::mem::replace(acked, written) != written);
    }

    /// Seals the active segment (durably) and starts the next one, then runs retention.
    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let storage = Arc::clone(&self.shared.storage);
        let file = create_segment(storage.as_ref(), self.next_lsn, self.seg_min_lut)?;
        let plan = {
            let mut state = lock(&self.shared.state);
            if let Some(active) = state.segments.last_mut() {
                active.len = self.seg_len;
                active.min_lut = self.seg_min_lut;
            }
            state.segments.push(SegmentMeta {
                first: self.next_lsn,
                len: HEADER_LEN as u64,
                min_lut: NO_LUT,
            });
            state.plan_retention(&self.shared.config)
        };
        self.file = file;
        self.seg_len = HEADER_LEN as u64;
        self.seg_min_lut = NO_LUT;
        let overflowed = plan.has_overflow();
        self.shared.execute(plan);
        if overflowed {
            // Wake tailing readers so they see their overflow.
            self.flushed.send_modify(|_| ());
        }
        Ok(())
    }

    /// Records the failure for good: appends refuse from now on, waiting ones wake to the
    /// poison, and whatever is still queued is discarded until the log is dropped (tailing
    /// readers keep waiting, as for a log that stopped growing).
    fn poison(self, e: io::Error) {
        tracing::error!(error = %e, "digest log writer poisoned");
        let _ = self.shared.poison.set(Arc::new(e));
        // Appends waiting for a queue slot wake to the poison too.
        self.shared.queue_slots.close();
        self.acknowledged.send_modify(|_| ());
        self.shared.queue.drain_until_closed();
    }
}
