//! The group-commit policy as a plain state machine: the writer thread reports events
//! (an append arrived, bytes were written, a sync finished) with the current time and asks
//! what to do next. No I/O and no clock inside, so every rule is unit-tested without sleeps.

use std::time::{Duration, Instant};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge after the entry is fsynced (default). Nothing acknowledged is lost.
    #[default]
    Sync,
    /// Acknowledge once the entry is written to the OS, fsync at most `max_wait` later.
    /// **A power loss loses up to the last `max_wait` of acknowledged entries**; a process
    /// crash loses nothing. Readers still see only fsynced entries.
    Buffered,
}

/// Group-commit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPolicy {
    /// Sync or buffered acknowledgement. Default: [`Durability::Sync`].
    pub durability: Durability,
    /// [`Durability::Sync`]: once the queue is empty, how long to hold the oldest pending
    /// append waiting for company before the fsync (0 = sync as soon as the queue is drained;
    /// appends arriving during an fsync form the next group anyway).
    /// [`Durability::Buffered`]: the longest an acknowledged entry stays unsynced.
    /// Default: 0 for `Sync`; use e.g. 50 ms for `Buffered`.
    pub max_wait: Duration,
    /// Most appends in one group: reaching it syncs without waiting for the queue to drain.
    /// Default: 1024.
    pub max_batch: usize,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy { durability: Durability::Sync, max_wait: Duration::ZERO, max_batch: 1024 }
    }
}

impl CommitPolicy {
    /// The buffered policy with a `max_wait` bound on unsynced acknowledged data.
    pub fn buffered(max_wait: Duration) -> CommitPolicy {
        CommitPolicy { durability: Durability::Buffered, max_wait, ..CommitPolicy::default() }
    }
}

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Take the next queued append (one is waiting; do not block).
    Take,
    /// Block for the next append, until `deadline` if given (then ask again).
    Wait {
        /// When to give up waiting.
        deadline: Option<Instant>,
    },
    /// Write the encoded appends to the file and acknowledge them (buffered mode).
    WriteAndAck,
    /// Write anything unwritten, fsync, then acknowledge and publish the flushed LSN.
    Sync,
}

/// Group-commit state: counts of appends in each stage and when the oldest arrived.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    policy: CommitPolicy,
    /// Appends received but not yet written to the file.
    unwritten: usize,
    /// Appends received (written or not) but not yet synced.
    unsynced: usize,
    /// Arrival time of the oldest unsynced append.
    oldest_unsynced: Option<Instant>,
}

impl GroupCommit {
    pub(crate) fn new(policy: CommitPolicy) -> GroupCommit {
        GroupCommit { policy, unwritten: 0, unsynced: 0, oldest_unsynced: None }
    }

    /// An append was taken from the queue at `now`.
    pub(crate) fn on_append(&mut self, now: Instant) {
        self.unwritten += 1;
        self.unsynced += 1;
        self.oldest_unsynced.get_or_insert(now);
    }

    /// Everything received so far was written to the file.
    pub(crate) fn on_written(&mut self) {
        self.unwritten = 0;
    }

    /// Everything received so far is durable.
    pub(crate) fn on_synced(&mut self) {
        self.unwritten = 0;
        self.unsynced = 0;
        self.oldest_unsynced = None;
    }

    /// The next step, given the time and whether another append is already queued.
    pub(crate) fn next(&self, now: Instant, queued: bool) -> Step {
        let max_batch = self.policy.max_batch.max(1);
        let deadline = self.oldest_unsynced.map(|t| t + self.policy.max_wait);
        match self.policy.durability {
            Durability::Sync => {
                if self.unsynced >= max_batch {
                    Step::Sync
                } else if queued {
                    Step::Take
                } else {
                    match deadline {
                        None => Step::Wait { deadline: None },
                        Some(d) if now >= d => Step::Sync,
                        Some(d) => Step::Wait { deadline: Some(d) },
                    }
                }
            }
            Durability::Buffered => {
                if deadline.is_some_and(|d| now >= d) || self.unsynced >= max_batch {
                    Step::Sync
                } else if self.unwritten > 0 && !queued {
                    Step::WriteAndAck
                } else if queued {
                    Step::Take
                } else {
                    Step::Wait { deadline }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sync_mode_drains_queue_then_syncs() {
        let t0 = Instant::now();
        let mut gc = GroupCommit::new(CommitPolicy::default());
        assert_eq!(gc.next(t0, false), Step::Wait { deadline: None });
        assert_eq!(gc.next(t0, true), Step::Take);
        gc.on_append(t0);
        assert_eq!(gc.next(t0, true), Step::Take);
        gc.on_append(t0);
        // Queue drained, max_wait 0: sync now, one fsync for both.
        assert_eq!(gc.next(t0, false), Step::Sync);
        gc.on_synced();
        assert_eq!(gc.next(t0, false), Step::Wait { deadline: None });
    }

    #[test]
    fn sync_mode_max_wait_holds_for_company() {
        let t0 = Instant::now();
        let mut gc = GroupCommit::new(CommitPolicy { max_wait: ms(2), ..CommitPolicy::default() });
        gc.on_append(t0);
        assert_eq!(gc.next(t0 + ms(1), false), Step::Wait { deadline: Some(t0 + ms(2)) });
        gc.on_append(t0 + ms(1));
        // The deadline is the oldest append's, not the newest.
        assert_eq!(gc.next(t0 + ms(2), false), Step::Sync);
    }

    #[test]
    fn sync_mode_max_batch_cuts_the_group() {
        let t0 = Instant::now();
        let mut gc = GroupCommit::new(CommitPolicy {
            max_batch: 3,
            max_wait: ms(100),
            ..CommitPolicy::default()
        });
        for _ in 0..2 {
            assert_eq!(gc.next(t0, true), Step::Take);
            gc.on_append(t0);
        }
        gc.on_append(t0);
        // Still more queued, but the batch is full.
        assert_eq!(gc.next(t0, true), Step::Sync);
    }

    #[test]
    fn buffered_mode_acks_on_write_and_syncs_by_deadline() {
        let t0 = Instant::now();
        let mut gc = GroupCommit::new(CommitPolicy::buffered(ms(50)));
        assert_eq!(gc.next(t0, true), Step::Take);
        gc.on_append(t0);
        assert_eq!(gc.next(t0, true), Step::Take);
        gc.on_append(t0);
        assert_eq!(gc.next(t0, false), Step::WriteAndAck);
        gc.on_written();
        assert_eq!(gc.next(t0 + ms(10), false), Step::Wait { deadline: Some(t0 + ms(50)) });
        gc.on_append(t0 + ms(20));
        assert_eq!(gc.next(t0 + ms(20), false), Step::WriteAndAck);
        gc.on_written();
        assert_eq!(gc.next(t0 + ms(50), false), Step::Sync);
        gc.on_synced();
        assert_eq!(gc.next(t0 + ms(60), false), Step::Wait { deadline: None });
    }

    #[test]
    fn buffered_mode_syncs_at_max_batch() {
        let t0 = Instant::now();
        let mut gc =
            GroupCommit::new(CommitPolicy { max_batch: 2, ..CommitPolicy::buffered(ms(1000)) });
        gc.on_append(t0);
        gc.on_append(t0);
        assert_eq!(gc.next(t0, true), Step::Sync);
    }

    #[test]
    fn zero_max_batch_behaves_as_one() {
        let t0 = Instant::now();
        let mut gc = GroupCommit::new(CommitPolicy { max_batch: 0, ..CommitPolicy::default() });
        gc.on_append(t0);
        assert_eq!(gc.next(t0, true), Step::Sync);
    }
}
