//! The reconnect schedule: exponential backoff with jitter, as a pure function of the attempt
//! number and a random draw.

use std::time::Duration;

/// Reconnect backoff: attempt `n` (0-based, counting failures) waits
/// `base = min(max, initial · 2ⁿ)` scaled into `[base · (1 − jitter), base]`.
///
/// "Equal jitter" keeps a floor (no hot retry loop) while spreading the many nodes of a site
/// that lost the same peer at the same moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait after the first failure before jitter. Default: 100 ms.
    pub initial: Duration,
    /// Longest wait. Default: 10 s.
    pub max: Duration,
    /// Fraction of the wait that is random, in [0, 1]. Default: 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10), jitter: 0.5 }
    }
}

impl Backoff {
    /// The wait after failure number `attempt` (0-based), given a uniform draw `unit` in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let base = self.initial.saturating_mul(factor).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        base.mul_f64(1.0 - jitter + jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_until_the_cap() {
        let b = Backoff { jitter: 0.0, ..Backoff::default() };
        let waits: Vec<_> = (0..9).map(|n| b.delay(n, 0.7)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(MS));
        assert_eq!(b.delay(u32::MAX, 0.0), MS(10_000));
    }

    #[test]
    fn jitter_spreads_below_the_base() {
        let b = Backoff::default();
        assert_eq!(b.delay(2, 0.0), MS(200));
        assert_eq!(b.delay(2, 0.5), MS(300));
        assert_eq!(b.delay(2, 1.0), MS(400));
        assert_eq!(b.delay(2, f64::NAN), MS(200));
    }
}
