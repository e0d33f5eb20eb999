//! The relay's per-packet decision, without I/O: given a packet's size, the time and a random
//! source, a [`Shaper`] says drop (and why) or deliver at which instant.
//!
//! Order of checks: partition (drop all) → random loss → token-bucket rate with a bounded
//! queue (tail drop when the backlog would exceed `queue_limit` bytes) → one-way delay plus
//! uniform jitter. Without jitter, delivery instants never decrease, so packet order is kept.

use std::time::{Duration, Instant};

use rand::Rng;

/// The conditions of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkShape {
    /// One-way delay. Default: 0.
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter]`; reorders packets when non-zero. Default: 0.
    pub jitter: Duration,
    /// Probability in [0, 1] that a packet is dropped. Default: 0.
    pub loss: f64,
    /// Bandwidth cap in bytes per second; `None` is unlimited. Default: `None`.
    pub rate: Option<u64>,
    /// Bytes that may pass at once above the rate. Default: 16 KiB.
    pub burst: u64,
    /// Most bytes waiting for the rate before tail drop. Default: 1 MiB.
    pub queue_limit: u64,
    /// Drop everything. Default: false.
    pub partitioned: bool,
}

impl Default for LinkShape {
    fn default() -> Self {
        LinkShape {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate: None,
            burst: 16 * 1024,
            queue_limit: 1 << 20,
            partitioned: false,
        }
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The partition switch is on.
    Partition,
    /// Random loss.
    Loss,
    /// The rate limiter's queue is full.
    Queue,
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it at this instant.
    Deliver { at: Instant },
    /// Drop it.
    Drop(DropReason),
}

/// One direction's state: the shape and the token bucket.
#[derive(Debug, Clone)]
pub struct Shaper {
    shape: LinkShape,
    /// Bucket level in bytes; negative is a backlog waiting for tokens.
    tokens: f64,
    last: Option<Instant>,
    /// Latest delivery instant handed out, to keep FIFO order without jitter.
    last_delivery: Option<Instant>,
}

impl Shaper {
    /// A shaper with a full bucket.
    pub fn new(shape: LinkShape) -> Shaper {
        Shaper { tokens: shape.burst as f64, shape, last: None, last_delivery: None }
    }

    /// The current shape.
    pub fn shape(&self) -> LinkShape {
        self.shape
    }

    /// Changes the shape; the bucket keeps its level (capped by the new burst).
    pub fn set_shape(&mut self, shape: LinkShape) {
        self.tokens = self.tokens.min(shape.burst as f64);
        self.shape = shape;
    }

    /// Decides the fate of a packet of `size` bytes arriving at `now`.
    pub fn on_packet(&mut self, size: usize, now: Instant, rng: &mut impl Rng) -> Verdict {
        if self.shape.partitioned {
            return Verdict::Drop(DropReason::Partition);
        }
        if self.shape.loss > 0.0 && rng.random::<f64>() < self.shape.loss {
            return Verdict::Drop(DropReason::Loss);
        }
        let mut depart = now;
        if let Some(rate) = self.shape.rate.filter(|r| *r > 0) {
            let rate = rate as f64;
            if let Some(last) = self.last {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                self.tokens = (self.tokens + elapsed * rate).min(self.shape.burst as f64);
            }
            self.last = Some(now);
            let after = self.tokens - size as f64;
            if -after > self.shape.queue_limit as f64 {
                return Verdict::Drop(DropReason::Queue);
            }
            self.tokens = after;
            if after < 0.0 {
                depart = now + Duration::from_secs_f64(-after / rate);
            }
        }
        let mut at = depart + self.shape.delay;
        if self.shape.jitter > Duration::ZERO {
            at += self.shape.jitter.mul_f64(rng.random::<f64>());
        } else if let Some(previous) = self.last_delivery {
            // A delay lowered at runtime must not let later packets overtake earlier ones.
            at = at.max(previous);
        }
        self.last_delivery = Some(self.last_delivery.map_or(at, |p| p.max(at)));
        Verdict::Deliver { at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn at(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver { at } => at,
            Verdict::Drop(reason) => panic!("dropped: {reason:?}"),
        }
    }

    #[test]
    fn delay_only_shifts_every_packet() {
        let t0 = Instant::now();
        let mut s = Shaper::new(LinkShape { delay: MS(25), ..LinkShape::default() });
        assert_eq!(at(s.on_packet(1200, t0, &mut rng())), t0 + MS(25));
        assert_eq!(at(s.on_packet(1200, t0 + MS(1), &mut rng())), t0 + MS(26));
    }

    #[test]
    fn partition_drops_everything_and_lifts() {
        let t0 = Instant::now();
        let mut s = Shaper::new(LinkShape { partitioned: true, ..LinkShape::default() });
        assert_eq!(s.on_packet(1, t0, &mut rng()), Verdict::Drop(DropReason::Partition));
        s.set_shape(LinkShape::default());
        assert_eq!(at(s.on_packet(1, t0, &mut rng())), t0);
    }

    #[test]
    fn loss_rate_matches_the_probability() {
        let t0 = Instant::now();
        let mut s = Shaper::new(LinkShape { loss: 0.02, ..LinkShape::default() });
        let mut r = rng();
        let dropped = (0..100_000)
            .filter(|_| s.on_packet(100, t0, &mut r) == Verdict::Drop(DropReason::Loss))
            .count();
        assert!((1_700..2_300).contains(&dropped), "{dropped}");
    }

    #[test]
    fn token_bucket_paces_after_the_burst_and_tail_drops() {
        let t0 = Instant::now();
        // 1 MB/s, 2000-byte burst, 3000-byte queue.
        let mut s = Shaper::new(LinkShape {
            rate: Some(1_000_000),
            burst: 2000,
            queue_limit: 3000,
            ..LinkShape::default()
        });
        let mut r = rng();
        assert_eq!(at(s.on_packet(1000, t0, &mut r)), t0);
        assert_eq!(at(s.on_packet(1000, t0, &mut r)), t0);
        assert_eq!(at(s.on_packet(1000, t0, &mut r)), t0 + MS(1));
        assert_eq!(at(s.on_packet(1000, t0, &mut r)), t0 + MS(2));
        assert_eq!(at(s.on_packet(1000, t0, &mut r)), t0 + MS(3));
        assert_eq!(s.on_packet(1000, t0, &mut r), Verdict::Drop(DropReason::Queue));
        // 3 ms later the backlog has drained: the bucket is at zero, the next packet waits 1 ms.
        assert_eq!(at(s.on_packet(1000, t0 + MS(3), &mut r)), t0 + MS(4));
    }

    #[test]
    fn order_is_kept_without_jitter_even_when_the_delay_drops() {
        let t0 = Instant::now();
        let mut s = Shaper::new(LinkShape { delay: MS(100), ..LinkShape::default() });
        let first = at(s.on_packet(10, t0, &mut rng()));
        s.set_shape(LinkShape::default());
        let second = at(s.on_packet(10, t0 + MS(1), &mut rng()));
        assert!(second >= first);
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let t0 = Instant::now();
        let mut s = Shaper::new(LinkShape { delay: MS(10), jitter: MS(5), ..LinkShape::default() });
        let mut r = rng();
        for _ in 0..1000 {
            let t = at(s.on_packet(10, t0, &mut r));
            assert!(t >= t0 + MS(10) && t <= t0 + MS(15));
        }
    }
}
