//! A link's control state as a pure state machine: the operator's controls and commands, its
//! public state (`active`, `paused`, `down`, `recovering`, `draining`), retry backoff, the
//! `max-throughput` token bucket, the lag it reports and the log's time left. Time is passed in
//! (milliseconds), so every rule is unit-tested without a clock; the shipper's engine feeds
//! events in and turns the waits it gets back into timers.

use std::fmt;
use std::time::Duration;

use ferry_transport::Backoff;

use crate::parked::ParkedSummary;

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
    /// Bumped to ship the parked records again (see [`crate::parked`]).
    pub retry_parked_seq: u64,
    /// Bumped to drop the parked records.
    pub discard_parked_seq: u64,
    /// Bumped when this node took over partitions (the link's stats hold which).
    pub takeover_seq: u64,
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
    /// Ship the parked records again; the ones the destination takes are unparked.
    RetryParked,
    /// Drop the parked records.
    DiscardParked,
}

impl LinkCommand {
    /// `pause`, `resume`, `rewind` (with `from_ms`), `drain`, `retry-parked` or
    /// `discard-parked`; `None` for anything else.
    pub fn parse(action: &str, from_ms: u64) -> Option<LinkCommand> {
        match action {
            "pause" => Some(LinkCommand::Pause),
            "resume" => Some(LinkCommand::Resume),
            "rewind" => Some(LinkCommand::Rewind { from_ms }),
            "drain" => Some(LinkCommand::Drain),
            "retry-parked" => Some(LinkCommand::RetryParked),
            "discard-parked" => Some(LinkCommand::DiscardParked),
            _ => None,
        }
    }

    /// The action's name, as [`LinkCommand::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            LinkCommand::Pause => "pause",
            LinkCommand::Resume => "resume",
            LinkCommand::Rewind { .. } => "rewind",
            LinkCommand::Drain => "drain",
            LinkCommand::RetryParked => "retry-parked",
            LinkCommand::DiscardParked => "discard-parked",
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
            LinkCommand::RetryParked => control.retry_parked_seq += 1,
            LinkCommand::DiscardParked => control.discard_parked_seq += 1,
        }
    }
}

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
    /// Shipping, but the destination refused some records for good: they are parked until
    /// an operator retries or discards them.
    Degraded,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Active => "active",
            LinkState::Paused => "paused",
            LinkState::Down => "down",
            LinkState::Recovering => "recovering",
            LinkState::Draining => "draining",
            LinkState::Degraded => "degraded",
        })
    }
}

/// The state operators see: an active link with parked records is `degraded`; any other
/// state says more about what the link does now.
pub fn shown_state(state: LinkState, parked: ParkedSummary) -> LinkState {
    if state == LinkState::Active && parked.count > 0 { LinkState::Degraded } else { state }
}

/// The link's lag with its parked records counted: never less than the age of the oldest
/// parked version, and never 0 while any is parked.
pub fn lag_with_parked(lag_ms: u64, now_ms: u64, parked: ParkedSummary) -> u64 {
    match parked.oldest_lut_ms {
        Some(lut) if parked.count > 0 => lag_ms.max(now_ms.saturating_sub(lut)).max(1),
        _ => lag_ms,
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
    /// Wall time (ms) the link started: lag counts from here until it first hears back.
    started_ms: u64,
    /// Wall time (ms) of the last answer from the destination: an ack or a heartbeat reply.
    last_contact_ms: Option<u64>,
    /// Wall time (ms) an operator paused the link.
    paused_since_ms: Option<u64>,
    /// Wall time (ms) the link was last seen with nothing logged left to acknowledge.
    caught_up_ms: u64,
}

impl LinkMachine {
    /// A link started at `started_ms` that has not talked to its destination yet.
    pub fn new(backoff: Backoff, started_ms: u64) -> Self {
        LinkMachine {
            backoff,
            paused: false,
            draining: false,
            recovering: false,
            failures: 0,
            started_ms,
            last_contact_ms: None,
            paused_since_ms: None,
            caught_up_ms: started_ms,
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

    /// Pauses or resumes at `now_ms` (lag counts from the first pause).
    pub fn set_paused(&mut self, paused: bool, now_ms: u64) {
        if paused && !self.paused {
            self.paused_since_ms = Some(now_ms);
        } else if !paused {
            self.paused_since_ms = None;
        }
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

    /// Lag in milliseconds that cannot lie, at `now_ms`: the age of the oldest change read and
    /// not yet acknowledged; else, while `behind` (the log holds changes not yet acknowledged,
    /// unread so far), the time since the link was last caught up; else, while paused, the
    /// time since the pause; else the time since the destination last answered when that is
    /// longer than [`SILENCE_MS`] (a dead idle link is not "caught up"). A link that never
    /// reached its destination counts from its start. Never 0 while behind or paused.
    pub fn lag_ms(&mut self, now_ms: u64, oldest_pending_lut_ms: Option<u64>, behind: bool) -> u64 {
        if !behind {
            self.caught_up_ms = now_ms;
        }
        let lag = match (oldest_pending_lut_ms, self.paused_since_ms) {
            (Some(lut), _) => now_ms.saturating_sub(lut),
            (None, _) if behind => now_ms.saturating_sub(self.caught_up_ms),
            (None, Some(paused)) => now_ms.saturating_sub(paused),
            (None, None) => {
                let since = now_ms.saturating_sub(self.last_contact_ms.unwrap_or(self.started_ms));
                if since > SILENCE_MS { since } else { 0 }
            }
        };
        if behind || self.paused { lag.max(1) } else { lag }
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

/// Ingest and shipping rates of a link's log, smoothed over a few samples taken at least
/// `every_ms` apart, for `log_time_left`.
#[derive(Debug, Clone)]
pub struct LogRates {
    every_ms: u64,
    at_ms: u64,
    flushed: u64,
    committed: u64,
    ingest: f64,
    shipped: f64,
}

impl LogRates {
    /// Rates from the cursor's positions at `now_ms`.
    pub fn new(every_ms: u64, now_ms: u64, flushed: u64, committed: u64) -> Self {
        LogRates { every_ms, at_ms: now_ms, flushed, committed, ingest: 0.0, shipped: 0.0 }
    }

    /// Samples the cursor's positions at `now_ms`; `None` until `every_ms` has passed since the
    /// last sample, else the seconds left before the backlog fills the log (`Some(None)`: not
    /// growing).
    pub fn sample(
        &mut self,
        now_ms: u64,
        flushed: u64,
        committed: u64,
        capacity_entries: u64,
    ) -> Option<Option<u64>> {
        let elapsed_ms = now_ms.checked_sub(self.at_ms).filter(|&e| e >= self.every_ms)?;
        let elapsed = (elapsed_ms as f64 / 1000.0).max(1e-3);
        let smooth = |old: f64, new: f64| 0.7 * old + 0.3 * new;
        self.ingest = smooth(self.ingest, flushed.saturating_sub(self.flushed) as f64 / elapsed);
        self.shipped =
            smooth(self.shipped, committed.saturating_sub(self.committed) as f64 / elapsed);
        (self.at_ms, self.flushed, self.committed) = (now_ms, flushed, committed);
        let backlog = flushed.saturating_sub(committed);
        Some(log_time_left(capacity_entries, backlog, self.ingest, self.shipped))
    }
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

    #[test]
    fn every_command_reads_back_from_its_name() {
        for command in [
            LinkCommand::Pause,
            LinkCommand::Resume,
            LinkCommand::Rewind { from_ms: 7 },
            LinkCommand::Drain,
            LinkCommand::RetryParked,
            LinkCommand::DiscardParked,
        ] {
            assert_eq!(LinkCommand::parse(command.name(), 7), Some(command));
        }
    }

    #[test]
    fn parked_records_degrade_an_active_link_and_count_in_its_lag() {
        let none = ParkedSummary::default();
        let two = ParkedSummary { count: 2, oldest_lut_ms: Some(1_000) };
        assert_eq!(shown_state(LinkState::Active, none), LinkState::Active);
        assert_eq!(shown_state(LinkState::Active, two), LinkState::Degraded);
        for busier in
            [LinkState::Paused, LinkState::Down, LinkState::Recovering, LinkState::Draining]
        {
            assert_eq!(shown_state(busier, two), busier);
        }
        assert_eq!(lag_with_parked(0, 5_000, none), 0);
        assert_eq!(lag_with_parked(0, 5_000, two), 4_000, "the oldest parked version's age");
        assert_eq!(lag_with_parked(9_000, 5_000, two), 9_000, "older unshipped changes");
        assert_eq!(lag_with_parked(0, 1_000, two), 1, "never 0 while parked");
    }

    #[test]
    fn operators_retry_and_discard_parked_records_by_command() {
        let mut control = LinkControl::default();
        for (action, expected) in [("retry-parked", (1, 0)), ("discard-parked", (1, 1))] {
            LinkCommand::parse(action, 0).expect("known").apply(&mut control);
            assert_eq!((control.retry_parked_seq, control.discard_parked_seq), expected);
        }
        assert_eq!(LinkState::Degraded.to_string(), "degraded");
    }

    fn machine() -> LinkMachine {
        LinkMachine::new(
            Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                jitter: 0.0,
            },
            0,
        )
    }

    #[test]
    fn link_commands_parse_and_change_the_controls() {
        let mut control = LinkControl::default();
        for (action, from_ms) in [("pause", 0), ("rewind", 1_700), ("drain", 0), ("rewind", 0)] {
            LinkCommand::parse(action, from_ms).expect("known action").apply(&mut control);
        }
        let expected = LinkControl {
            paused: false,
            rewind_seq: 2,
            rewind_from_ms: 0,
            drain_seq: 1,
            ..LinkControl::default()
        };
        assert_eq!(control, expected, "drain resumes a paused link");
        LinkCommand::Pause.apply(&mut control);
        assert!(control.paused);
        assert_eq!(LinkCommand::parse("stop", 0), None);
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
        link.set_paused(true, 0);
        assert_eq!(link.state(), LinkState::Paused);
        assert!(!link.may_ship());
        link.set_paused(false, 0);
        assert!(link.may_ship());
        assert_eq!(link.state().to_string(), "draining");
    }

    #[test]
    fn lag_counts_from_the_oldest_pending_change() {
        let mut link = machine();
        assert_eq!(link.lag_ms(10_000, Some(9_250), true), 750);
        assert_eq!(link.lag_ms(10_000, Some(11_000), true), 1, "clock skew: behind, never 0");
    }

    #[test]
    fn an_idle_link_is_caught_up_only_while_its_destination_answers() {
        let mut link = machine();
        assert_eq!(link.lag_ms(1_000, None, false), 0, "just started");
        assert_eq!(link.lag_ms(10_000, None, false), 10_000, "never reached the destination");
        link.on_success(10_000);
        assert_eq!(link.lag_ms(12_000, None, false), 0);
        assert_eq!(link.lag_ms(20_000, None, false), 10_000, "silent for 10 s: not caught up");
    }

    #[test]
    fn unread_changes_count_from_when_the_link_was_last_caught_up() {
        let mut link = machine();
        link.on_success(1_000);
        assert_eq!(link.lag_ms(1_000, None, false), 0);
        assert_eq!(link.lag_ms(1_000, None, true), 1, "behind: never 0");
        assert_eq!(link.lag_ms(1_400, None, true), 400);
        assert_eq!(link.lag_ms(1_500, Some(1_450), true), 50, "a read change is more precise");
    }

    #[test]
    fn a_paused_link_never_reports_lag_0() {
        let mut link = machine();
        link.on_success(1_000);
        link.set_paused(true, 1_000);
        assert_eq!(link.lag_ms(1_000, None, false), 1);
        link.on_success(1_500);
        link.set_paused(true, 1_700);
        assert_eq!(link.lag_ms(2_000, None, false), 1_000, "counts from the first pause");
        link.set_paused(false, 2_000);
        assert_eq!(link.lag_ms(2_000, None, false), 0);
    }

    #[test]
    fn log_rates_sample_no_faster_than_asked() {
        let mut rates = LogRates::new(500, 0, 0, 0);
        assert_eq!(rates.sample(100, 50, 0, 10_000), None, "too soon");
        // 1000 entries/s in, nothing shipped: smoothed to 300/s, 9000 entries of room left.
        assert_eq!(rates.sample(1_000, 1_000, 0, 10_000), Some(Some(30)));
        assert_eq!(rates.sample(2_000, 1_000, 1_000, 10_000), Some(None), "backlog shrinking");
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
