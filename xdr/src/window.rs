//! The shipper's window of batches in flight, as a pure state machine: which batches may be
//! sent, and how far the link's digest-log cursor may advance as acknowledgements arrive.
//!
//! Batches are numbered in the order they were cut from the log; each covers a contiguous LSN
//! range. Acknowledgements may arrive in any order (one QUIC stream per batch), but the cursor
//! only ever advances past a **contiguous prefix** of acknowledged batches: a batch acknowledged
//! early waits until every batch before it is acknowledged too, so a crash never skips a batch
//! that was not durably applied. A failed batch is handed back for a retry and keeps its place.

use std::collections::BTreeMap;

/// A batch in the window: its id and the last log position it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    last_lsn: u64,
    acknowledged: bool,
}

/// Why the window refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    #[error("the window already holds {0} batches in flight")]
    Full(usize),
    #[error("batch {id} must cover positions after {after}, but ends at {last_lsn}")]
    OutOfOrder { id: u64, after: u64, last_lsn: u64 },
    #[error("batch {0} is not in flight")]
    Unknown(u64),
}

/// Batches in flight on one link and the position the cursor may commit.
#[derive(Debug, Clone)]
pub struct AckWindow {
    capacity: usize,
    next_id: u64,
    /// Highest LSN any opened batch covers (new batches must start after it).
    opened_through: u64,
    /// Everything through this LSN is acknowledged as durably applied.
    committable: u64,
    in_flight: BTreeMap<u64, InFlight>,
}

impl AckWindow {
    /// A window of `capacity` batches, starting after the cursor's committed position.
    pub fn new(capacity: usize, committed: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            next_id: 0,
            opened_through: committed,
            committable: committed,
            in_flight: BTreeMap::new(),
        }
    }

    /// Whether another batch may be sent now.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.capacity
    }

    /// Batches sent and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.in_flight.values().filter(|b| !b.acknowledged).count()
    }

    /// The position the cursor may commit: every batch through it is acknowledged.
    pub fn committable(&self) -> u64 {
        self.committable
    }

    /// Opens a batch covering log positions up to `last_lsn`; returns its id.
    pub fn open(&mut self, last_lsn: u64) -> Result<u64, WindowError> {
        if !self.has_room() {
            return Err(WindowError::Full(self.capacity));
        }
        if last_lsn <= self.opened_through {
            return Err(WindowError::OutOfOrder {
                id: self.next_id,
                after: self.opened_through,
                last_lsn,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.opened_through = last_lsn;
        self.in_flight.insert(id, InFlight { last_lsn, acknowledged: false });
        Ok(id)
    }

    /// Records that batch `id` was durably applied at the destination. Returns the new
    /// committable position when it advanced.
    pub fn acknowledge(&mut self, id: u64) -> Result<Option<u64>, WindowError> {
        self.in_flight.get_mut(&id).ok_or(WindowError::Unknown(id))?.acknowledged = true;
        let before = self.committable;
        while let Some(entry) = self.in_flight.first_entry() {
            if !entry.get().acknowledged {
                break;
            }
            self.committable = entry.remove().last_lsn;
        }
        Ok((self.committable > before).then_some(self.committable))
    }

    /// Whether batch `id` is in flight and unacknowledged (a failed one to resend as it is).
    pub fn is_pending(&self, id: u64) -> bool {
        self.in_flight.get(&id).is_some_and(|b| !b.acknowledged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_acks_advance_one_batch_at_a_time() {
        let mut window = AckWindow::new(4, 10);
        let a = window.open(20).expect("open");
        let b = window.open(30).expect("open");
        assert_eq!(window.acknowledge(a), Ok(Some(20)));
        assert_eq!(window.acknowledge(b), Ok(Some(30)));
        assert_eq!(window.committable(), 30);
    }

    #[test]
    fn an_early_ack_waits_for_the_batches_before_it() {
        let mut window = AckWindow::new(4, 0);
        let a = window.open(5).expect("open");
        let b = window.open(9).expect("open");
        let c = window.open(12).expect("open");
        assert_eq!(window.acknowledge(c), Ok(None));
        assert_eq!(window.acknowledge(b), Ok(None));
        assert_eq!(window.committable(), 0, "batch a is still unacknowledged");
        assert!(window.is_pending(a));
        assert_eq!(window.acknowledge(a), Ok(Some(12)));
        assert_eq!(window.unacknowledged(), 0);
    }

    #[test]
    fn the_window_refuses_overfill_reordering_and_unknown_batches() {
        let mut window = AckWindow::new(2, 0);
        window.open(1).expect("open");
        window.open(2).expect("open");
        assert_eq!(window.open(3), Err(WindowError::Full(2)));
        let mut window = AckWindow::new(2, 5);
        assert!(matches!(window.open(5), Err(WindowError::OutOfOrder { .. })));
        assert_eq!(window.acknowledge(9), Err(WindowError::Unknown(9)));
    }

    proptest! {
        /// Whatever order acknowledgements arrive in, the committable position only moves
        /// forward, never passes an unacknowledged batch, and ends at the last batch.
        #[test]
        fn commits_never_pass_an_unacknowledged_batch(
            sizes in proptest::collection::vec(1u64..10, 1..16),
            order_seed in any::<u64>(),
        ) {
            let mut window = AckWindow::new(sizes.len(), 0);
            let mut last = 0;
            let mut batches = Vec::new();
            for size in &sizes {
                last += size;
                batches.push((window.open(last).expect("room"), last));
            }
            let mut order: Vec<usize> = (0..batches.len()).collect();
            let mut state = order_seed | 1;
            for i in (1..order.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut acked = vec![false; batches.len()];
            let mut previous = 0;
            for i in order {
                window.acknowledge(batches[i].0).expect("in flight");
                acked[i] = true;
                let committable = window.committable();
                prop_assert!(committable >= previous);
                previous = committable;
                // Everything at or below the committable position is acknowledged.
                for (j, &(_, end)) in batches.iter().enumerate() {
                    if end <= committable {
                        prop_assert!(acked[j]);
                    }
                }
            }
            prop_assert_eq!(window.committable(), last);
        }
    }
}
