//! Failure detection as a pure state machine: heartbeats in, removal and re-admission
//! proposals out. Every node feeds it (so a newly elected leader already knows who is silent);
//! only the leader acts on what it judges.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::state::{Intent, SiteMembership};

/// How often nodes heartbeat each other and how many missed intervals make a node failed, as
/// in Aerospike's `heartbeat.interval` (150 ms) and `heartbeat.timeout` (10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub misses: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { interval: Duration::from_millis(150), misses: 10 }
    }
}

impl Heartbeat {
    /// Silence longer than this makes a node failed.
    pub fn timeout(&self) -> Duration {
        self.interval * self.misses
    }
}

/// When each peer was last heard from.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    heartbeat: Heartbeat,
    /// Peers never heard from count from here, so a cluster starting up gets one timeout.
    started: Instant,
    last_heard: BTreeMap<String, Instant>,
}

impl FailureDetector {
    pub fn new(heartbeat: Heartbeat, now: Instant) -> Self {
        Self { heartbeat, started: now, last_heard: BTreeMap::new() }
    }

    /// A heartbeat from `node`, or its answer to ours, arrived at `at`.
    pub fn heard(&mut self, node: &str, at: Instant) {
        match self.last_heard.get_mut(node) {
            Some(last) => *last = (*last).max(at),
            None => {
                self.last_heard.insert(node.to_owned(), at);
            }
        }
    }

    /// How long `node` has been silent at `now`.
    pub fn silence(&self, node: &str, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard.get(node).copied().unwrap_or(self.started))
    }

    /// What the leader `me` should plan for `voters` given the committed membership: remove
    /// each live node silent past the timeout, re-admit each removed node heard within the
    /// last two intervals. Never proposes anything about `me`.
    pub fn judge(
        &self,
        me: &str,
        voters: &[String],
        membership: &SiteMembership,
        now: Instant,
    ) -> Vec<Intent> {
        let mut commands = Vec::new();
        for node in voters.iter().filter(|node| *node != me) {
            let silence = self.silence(node, now);
            if membership.is_live(node) && silence > self.heartbeat.timeout() {
                commands.push(Intent::Remove { node: node.clone() });
            } else if !membership.is_live(node) && silence <= self.heartbeat.interval * 2 {
                commands.push(Intent::Readmit { node: node.clone() });
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    #[test]
    fn a_silent_node_is_removed_after_the_timeout_and_readmitted_when_heard() {
        let t0 = Instant::now();
        let heartbeat = Heartbeat::default();
        let mut detector = FailureDetector::new(heartbeat, t0);
        let mut membership = SiteMembership::default();
        let apply = |membership: &mut SiteMembership, down: &[&str]| {
            let change = crate::state::Change {
                base_epoch: membership.epoch,
                down: down.iter().map(|n| n.to_string()).collect(),
                holders: Default::default(),
                restarted: Default::default(),
                members: None,
                reason: Intent::Remove { node: "c".into() },
            };
            assert!(membership.apply(&change));
        };
        let at = |ms| t0 + Duration::from_millis(ms);
        detector.heard("b", at(100));
        detector.heard("c", at(100));
        assert!(detector.judge("a", &voters(), &membership, at(1_500)).is_empty());
        detector.heard("b", at(1_550));
        let judged = detector.judge("a", &voters(), &membership, at(1_700));
        assert_eq!(judged, [Intent::Remove { node: "c".into() }], "c silent 1.6 s > 1.5 s");
        apply(&mut membership, &["c"]);
        assert!(detector.judge("a", &voters(), &membership, at(1_700)).is_empty());
        detector.heard("b", at(3_000));
        detector.heard("c", at(3_000));
        let judged = detector.judge("a", &voters(), &membership, at(3_100));
        assert_eq!(judged, [Intent::Readmit { node: "c".into() }]);
    }

    #[test]
    fn peers_never_heard_get_one_timeout_from_start_and_the_leader_never_judges_itself() {
        let t0 = Instant::now();
        let detector = FailureDetector::new(Heartbeat::default(), t0);
        let membership = SiteMembership::default();
        assert!(
            detector.judge("a", &voters(), &membership, t0 + Duration::from_secs(1)).is_empty()
        );
        let judged = detector.judge("a", &voters(), &membership, t0 + Duration::from_secs(2));
        assert_eq!(
            judged,
            [Intent::Remove { node: "b".into() }, Intent::Remove { node: "c".into() }]
        );
    }
}
