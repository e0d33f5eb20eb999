//! Named cursors: an independent, persisted read position per consumer (one per DR link),
//! a tailing reader that waits for newly flushed entries without polling, and overflow
//! reporting when the size cap deleted entries the cursor had not consumed.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::checkpoint::{CursorName, Overflow};
use crate::entry::{LoggedEntry, Lsn};
use crate::error::{CursorError, ReadError};
use crate::log::{CursorSlot, Shared, lock};
use crate::read::{self, SegmentFile};

/// Where a newly created cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// At the oldest entry still in the log.
    Oldest,
    /// After the last flushed entry: only future entries.
    Latest,
}

/// What [`Cursor::next_batch`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Flushed entries in LSN order, at least one.
    Entries(Vec<LoggedEntry>),
    /// Entries were deleted before this cursor consumed them. Returned until acknowledged
    /// with [`Cursor::acknowledge_overflow`]; reading then resumes after `lost_through`.
    Overflowed(Overflow),
}

/// A cursor's state for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// Name.
    pub name: String,
    /// Last committed LSN.
    pub committed: Lsn,
    /// Flushed entries not yet committed.
    pub lag: u64,
    /// Unacknowledged overflow.
    pub overflow: Option<Overflow>,
}

impl CursorInfo {
    pub(crate) fn new(
        name: String,
        committed: Lsn,
        end: Lsn,
        overflow: Option<Overflow>,
    ) -> CursorInfo {
        CursorInfo { name, committed, lag: end.0.saturating_sub(committed.0), overflow }
    }
}

impl fmt::Display for CursorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cursor {}: committed {} lag {}", self.name, self.committed, self.lag)?;
        match self.overflow {
            Some(o) => write!(
                f,
                " OVERFLOWED (lost {}..={}, rescan LUT >= {} ms)",
                o.committed.next(),
                o.lost_through,
                o.min_lut_ms
            ),
            None => Ok(()),
        }
    }
}

/// An open cursor. Reading moves an in-memory position; [`Cursor::commit`] persists how far
/// the consumer has durably handled entries (a restart resumes after the committed LSN).
#[derive(Debug)]
pub struct Cursor {
    shared: Arc<Shared>,
    slot: Arc<CursorSlot>,
    flushed: watch::Receiver<Lsn>,
    /// Next LSN to hand out.
    next: Lsn,
    file: Option<SegmentFile>,
}

impl Cursor {
    pub(crate) fn new(shared: Arc<Shared>, slot: Arc<CursorSlot>) -> Cursor {
        Cursor {
            flushed: shared.flushed.clone(),
            next: slot.committed().next(),
            shared,
            slot,
            file: None,
        }
    }

    /// The cursor's name.
    pub fn name(&self) -> &CursorName {
        &self.slot.name
    }

    /// Last committed LSN.
    pub fn committed(&self) -> Lsn {
        self.slot.committed()
    }

    /// Entries logged past the committed position, flushed or not: changes this consumer has
    /// not finished.
    pub fn backlog(&self) -> u64 {
        self.logged().0.saturating_sub(self.slot.committed().0)
    }

    /// The last LSN the log handed out: entries up to here exist, flushed or on their way
    /// (see [`crate::DigestLog::append_nowait`]).
    pub fn logged(&self) -> Lsn {
        self.shared.queue.last_assigned()
    }

    /// About how many entries the log holds at its size cap: how far this cursor may fall
    /// behind before it overflows.
    pub fn capacity_entries(&self) -> u64 {
        self.shared.config.size_cap / crate::entry::RECORD_LEN as u64
    }

    /// The last flushed LSN.
    pub fn flushed(&self) -> Lsn {
        *self.flushed.borrow()
    }

    /// Unacknowledged overflow, if any.
    pub fn overflow(&self) -> Option<Overflow> {
        self.slot.overflow()
    }

    /// Waits until at least one flushed entry past the read position exists and returns up to
    /// `max` of them (or the cursor's overflow). Cancel-safe.
    pub async fn next_batch(&mut self, max: usize) -> Result<Batch, ReadError> {
        loop {
            if let Some(batch) = self.try_next_batch(max)? {
                return Ok(batch);
            }
            if self.flushed.changed().await.is_err() && self.try_peek_closed() {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Like [`Cursor::next_batch`] without waiting: `None` if nothing new is flushed.
    /// A `max` of 0 is treated as 1.
    pub fn try_next_batch(&mut self, max: usize) -> Result<Option<Batch>, ReadError> {
        let max = max.max(1);
        if let Some(o) = self.slot.overflow() {
            return Ok(Some(Batch::Overflowed(o)));
        }
        let flushed = *self.flushed.borrow_and_update();
        let committed = self.slot.committed();
        if self.next <= committed {
            self.next = committed.next();
        }
        if self.next > flushed {
            return Ok(None);
        }
        // A snapshot: reading happens without the lock, so a slow reader holds up no one.
        let segments = lock(&self.shared.state).segments.clone();
        let entries = match read::read_range(
            self.shared.storage.as_ref(),
            &segments,
            &mut self.file,
            self.next,
            flushed,
            max,
        ) {
            Ok(entries) => entries,
            // The size cap may have deleted the segment meanwhile; then that is the answer.
            Err(e) => match self.slot.overflow() {
                Some(o) => return Ok(Some(Batch::Overflowed(o))),
                None => return Err(e),
            },
        };
        self.next = Lsn(self.next.0 + entries.len() as u64);
        Ok(Some(Batch::Entries(entries)))
    }

    /// True if the writer is gone and nothing more is flushed past the read position.
    fn try_peek_closed(&self) -> bool {
        self.next > *self.flushed.borrow()
    }

    /// Durably records that every entry up to `through` is handled, then deletes any segment
    /// every cursor has passed. Blocking: writes and fsyncs the checkpoint; from async code
    /// use [`Cursor::commit`]. Committing at or below the committed LSN is a no-op: cursors
    /// never move backwards. Committing past what this cursor has read is an error.
    pub fn commit_blocking(&mut self, through: Lsn) -> Result<(), CursorError> {
        if self.check_commit(through)? {
            commit_now(&self.shared, &self.slot, through)?;
        }
        Ok(())
    }

    /// [`Cursor::commit_blocking`] on tokio's blocking pool, for the async shipper.
    pub async fn commit(&mut self, through: Lsn) -> Result<(), CursorError> {
        if !self.check_commit(through)? {
            return Ok(());
        }
        let (shared, slot) = (Arc::clone(&self.shared), Arc::clone(&self.slot));
        tokio::task::spawn_blocking(move || commit_now(&shared, &slot, through)).await.map_err(
            |e| CursorError::Io {
                file: self.slot.name.file_name(),
                source: std::io::Error::other(e),
            },
        )?
    }

    /// Whether committing `through` would move the cursor (`false`: a no-op).
    fn check_commit(&self, through: Lsn) -> Result<bool, CursorError> {
        if through <= self.slot.committed() {
            return Ok(false);
        }
        let read = Lsn(self.next.0 - 1);
        if through > read {
            return Err(CursorError::NotRead { read, requested: through });
        }
        Ok(true)
    }

    /// Acknowledges the overflow returned by [`Cursor::next_batch`] once the consumer has
    /// arranged to recover the lost entries (e.g. started the store scan). Persisted.
    pub fn acknowledge_overflow(&mut self, seen: &Overflow) -> Result<(), CursorError> {
        self.slot.persist(self.shared.storage.as_ref(), Lsn::ZERO, Some(seen))?;
        self.next = self.next.max(self.slot.committed().next());
        self.file = None;
        Ok(())
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.slot.open.store(false, Ordering::Release);
    }
}

/// Persists `slot` at `through`, then runs retention.
fn commit_now(shared: &Shared, slot: &CursorSlot, through: Lsn) -> Result<(), CursorError> {
    slot.persist(shared.storage.as_ref(), through, None)?;
    shared.retain();
    Ok(())
}
