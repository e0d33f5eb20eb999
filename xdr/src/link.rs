//! A link's control state as a pure state machine: its public state (`active`, `paused`,
//! `down`, `recovering`, `draining`), retry backoff, the `max-throughput` token bucket and the
//! lag it reports. Time is passed in (milliseconds), so every rule is unit-tested without a
//! clock; the async shipper only feeds events in and sleeps for the waits it gets back.

use std::fmt;
use std::time::Duration;

use ferry_transport::Backoff;

/// A link's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Shipping (or caught up and exchanging heartbeats).
    Active,
    /// Stopped by an operator; the cursor holds its place and the log keeps the changes.
    Paused,
    /// The destination is unreachable or refusing batches; retrying with backoff.
    Down,
    /// Re-shipping from a store scan after the digest log overflowed or a rewind.
    Recovering,
    /// Shipping everything logged before a drain request (switchover: writes are fenced, the
    /// link drains, then roles switch); back to `active` once all of it is acknowledged.
    Draining,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Active => "active",
            LinkState::Paused => "paused",
            LinkState::Down => "down",
            LinkState::Recovering => "recovering",
            LinkState::Draining => "draining",
        })
    }
}

/// How long without any answer from the destination before an idle link stops claiming to be
/// caught up: its lag then counts from the last answer.
pub const SILENCE_MS: u64 = 3_000;

/// The link's health as driven by events.
#[derive(Debug, Clone)]
pub struct LinkMachine {
    backoff: Backoff,
    paused: bool,
    draining: bool,
    recovering: bool,
    /// Consecutive failed attempts since the last success.
    failures: u32,
    /// Wall time (ms) of the last answer from the destination: an ack or a heartbeat reply.
    last_contact_ms: Option<u64>,
}

impl LinkMachine {
    /// A link that has not talked to its destination yet.
    pub fn new(backoff: Backoff) -> Self {
        LinkMachine {
            backoff,
            paused: false,
            draining: false,
            recovering: false,
            failures: 0,
            last_contact_ms: None,
        }
    }

    /// The state operators see; pause and drain win over health.
    pub fn state(&self) -> LinkState {
        if self.paused {
            LinkState::Paused
        } else if self.draining {
            LinkState::Draining
        } else if self.failures > 0 {
            LinkState::Down
        } else if self.recovering {
            LinkState::Recovering
        } else {
            LinkState::Active
        }
    }

    /// Whether new work may be read and sent.
    pub fn may_ship(&self) -> bool {
        !self.paused
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn set_recovering(&mut self, recovering: bool) {
        self.recovering = recovering;
    }

    /// The destination answered at `now_ms`.
    pub fn on_success(&mut self, now_ms: u64) {
        self.failures = 0;
        self.last_contact_ms = Some(now_ms);
    }

    /// An attempt failed; returns how long to wait before the next one (`unit`: a uniform
    /// draw in [0, 1) for jitter).
    pub fn on_failure(&mut self, unit: f64) -> Duration {
        let delay = self.backoff.delay(self.failures, unit);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Lag in milliseconds that cannot lie: the age of the oldest change not yet acknowledged,
    /// or, with nothing pending, the time since the destination last answered when that is
    /// longer than [`SILENCE_MS`] (a dead idle link is not "caught up"). A link that never
    /// reached its destination counts from `started_ms`.
    pub fn lag_ms(&self, now_ms: u64, oldest_pending_lut_ms: Option<u64>, started_ms: u64) -> u64 {
        if let Some(lut) = oldest_pending_lut_ms {
            return now_ms.saturating_sub(lut);
        }
        let since = now_ms.saturating_sub(self.last_contact_ms.unwrap_or(started_ms));
        if since > SILENCE_MS { since } else { 0 }
    }
}

/// Seconds until a link's backlog fills the digest log at the current rates (`log_time_left`);
/// `None` while the backlog is not growing.
pub fn log_time_left(
    capacity_entries: u64,
    backlog_entries: u64,
    ingest_per_sec: f64,
    shipped_per_sec: f64,
) -> Option<u64> {
    let growth = ingest_per_sec - shipped_per_sec;
    if growth <= 0.0 || !growth.is_finite() {
        return None;
    }
    Some((capacity_entries.saturating_sub(backlog_entries) as f64 / growth) as u64)
}

/// `max-throughput` as a token bucket of records per second, with one second of burst.
#[derive(Debug, Clone)]
pub struct Throttle {
    per_sec: f64,
    tokens: f64,
    last_ms: u64,
}

impl Throttle {
    /// A full bucket at `now_ms`.
    pub fn new(records_per_sec: u32, now_ms: u64) -> Self {
        let per_sec = f64::from(records_per_sec.max(1));
        Throttle { per_sec, tokens: per_sec, last_ms: now_ms }
    }

    /// Takes `records` tokens at `now_ms`; returns how long the caller must wait before sending
    /// them (zero if the bucket had enough). Tokens go negative so waits queue fairly.
    pub fn take(&mut self, records: u64, now_ms: u64) -> Duration {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.tokens -= records as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> LinkMachine {
        LinkMachine::new(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        })
    }

    #[test]
    fn failures_take_the_link_down_with_growing_backoff_until_a_success() {
        let mut link = machine();
        assert_eq!(link.state(), LinkState::Active);
        let waits: Vec<_> = (0..6).map(|_| link.on_failure(0.5).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(link.state(), LinkState::Down);
        link.on_success(5);
        assert_eq!(link.state(), LinkState::Active);
        assert_eq!(link.on_failure(0.5).as_millis(), 100, "backoff starts over");
    }

    #[test]
    fn pause_and_drain_win_over_health_and_recovery() {
        let mut link = machine();
        link.set_recovering(true);
        assert_eq!(link.state(), LinkState::Recovering);
        link.on_failure(0.0);
        assert_eq!(link.state(), LinkState::Down);
        link.set_draining(true);
        assert_eq!(link.state(), LinkState::Draining);
        link.set_paused(true);
        assert_eq!(link.state(), LinkState::Paused);
        assert!(!link.may_ship());
        link.set_paused(false);
        assert!(link.may_ship());
        assert_eq!(link.state().to_string(), "draining");
    }

    #[test]
    fn lag_counts_from_the_oldest_pending_change() {
        let link = machine();
        assert_eq!(link.lag_ms(10_000, Some(9_250), 0), 750);
        assert_eq!(link.lag_ms(10_000, Some(11_000), 0), 0, "clock skew never underflows");
    }

    #[test]
    fn an_idle_link_is_caught_up_only_while_its_destination_answers() {
        let mut link = machine();
        assert_eq!(link.lag_ms(1_000, None, 0), 0, "just started");
        assert_eq!(link.lag_ms(10_000, None, 0), 10_000, "never reached the destination");
        link.on_success(10_000);
        assert_eq!(link.lag_ms(12_000, None, 0), 0);
        assert_eq!(link.lag_ms(20_000, None, 0), 10_000, "silent for 10 s: not caught up");
    }

    #[test]
    fn log_time_left_counts_down_only_while_the_backlog_grows() {
        assert_eq!(log_time_left(10_000, 0, 100.0, 100.0), None, "keeping up");
        assert_eq!(log_time_left(10_000, 0, 50.0, 100.0), None, "draining");
        assert_eq!(log_time_left(10_000, 2_000, 300.0, 100.0), Some(40));
        assert_eq!(log_time_left(10_000, 12_000, 300.0, 100.0), Some(0), "already past the cap");
    }

    #[test]
    fn the_throttle_admits_a_burst_then_paces_to_the_rate() {
        let mut throttle = Throttle::new(1_000, 0);
        assert_eq!(throttle.take(1_000, 0), Duration::ZERO, "one second of burst");
        assert_eq!(throttle.take(500, 0), Duration::from_millis(500));
        // Half a second later the debt is paid; another 500 wait another half second.
        assert_eq!(throttle.take(500, 500), Duration::from_millis(500));
        // Idle for long: the bucket refills only up to one second's worth.
        assert_eq!(throttle.take(1_000, 60_000), Duration::ZERO);
        assert_eq!(throttle.take(1, 60_000), Duration::from_millis(1));
    }
}
