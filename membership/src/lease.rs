//! The write lease: a node acknowledges writes only while a majority of its site's voters
//! (itself included) answered a heartbeat it sent within the lease. The lease is shorter than
//! the failure-detection timeout, so a node cut off in a minority stops acknowledging before
//! the majority's leader can commit its removal and hand its partitions over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The heartbeats a node's peers answered, by the instant each was sent.
#[derive(Debug, Clone)]
pub struct Lease {
    duration: Duration,
    voters: usize,
    answered: BTreeMap<String, Instant>,
}

impl Lease {
    /// A lease of `duration` in a group of `voters` (this node included).
    pub fn new(duration: Duration, voters: usize) -> Self {
        Self { duration, voters, answered: BTreeMap::new() }
    }

    /// The group now has `voters` voters (this node included); 0 while this node does not
    /// know the group yet, when no lease holds.
    pub fn set_voters(&mut self, voters: usize) {
        self.voters = voters;
    }

    /// `peer` answered a heartbeat sent at `sent`. Counting from the send, not the answer,
    /// keeps the lease conservative whatever the round trip took.
    pub fn answered(&mut self, peer: &str, sent: Instant) {
        let entry = self.answered.entry(peer.to_owned()).or_insert(sent);
        *entry = (*entry).max(sent);
    }

    /// When the lease runs out: the send time of the heartbeat that completes a majority with
    /// the freshest answers, plus the lease. `None` while no majority ever answered.
    pub fn expiry(&self) -> Option<Instant> {
        if self.voters == 0 {
            return None;
        }
        let needed_peers = self.voters / 2; // a majority, less this node
        if needed_peers == 0 {
            return Some(Instant::now() + self.duration);
        }
        let mut sent: Vec<Instant> = self.answered.values().copied().collect();
        sent.sort_unstable_by(|a, b| b.cmp(a));
        sent.get(needed_peers - 1).map(|&oldest_needed| oldest_needed + self.duration)
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.expiry().is_some_and(|expiry| now < expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_fresh_answers_holds_the_lease() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut lease = Lease::new(Duration::from_millis(1_000), 3);
        assert!(!lease.holds(t0), "no answers, no lease");
        lease.answered("b", at(100));
        assert!(lease.holds(at(1_099)));
        assert!(!lease.holds(at(1_100)), "runs out a lease after the send");
        lease.answered("c", at(600));
        assert!(lease.holds(at(1_500)), "either peer completes a majority of three");
        assert!(!lease.holds(at(1_600)));
    }

    #[test]
    fn a_node_that_does_not_know_its_group_holds_no_lease() {
        let t0 = Instant::now();
        let mut lease = Lease::new(Duration::from_millis(1_000), 3);
        lease.set_voters(0);
        lease.answered("b", t0);
        assert!(!lease.holds(t0), "no voters known: not a group of one");
        lease.set_voters(1);
        assert!(lease.holds(t0), "a group of one needs no answer");
    }

    #[test]
    fn five_voters_need_two_peers() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut lease = Lease::new(Duration::from_millis(1_000), 5);
        lease.answered("b", at(500));
        assert!(!lease.holds(at(600)), "one peer and itself are two of five");
        lease.answered("c", at(200));
        assert!(lease.holds(at(1_100)));
        assert!(!lease.holds(at(1_200)), "the older of the two freshest answers bounds it");
    }
}
