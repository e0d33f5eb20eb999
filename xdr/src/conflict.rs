//! Conflict resolution: whether a version shipped from another site replaces the local one.
//!
//! - `generation`: apply iff the incoming generation is newer, wrap-aware. Generations run
//!   1..=65535 and wrap to 1 (0 is never a live generation), so "newer" means ahead by less than
//!   half the cycle.
//! - `last-update-time`: apply iff (LUT, origin site id) is greater; the site id breaks ties
//!   between writes in the same millisecond at two sites, so every site picks the same winner.
//!   A site never gives one record two versions with the same LUT (it is strictly increasing
//!   per record), but the generation breaks even that tie so the order is total.
//!
//! Equal versions are stale, which makes applying a batch twice harmless (idempotent apply).
//! Tombstones compete by the same rule as live versions.

use ferry_topology::model::ConflictPolicy;

/// The metadata conflict resolution compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionStamp {
    pub generation: u16,
    pub last_update_ms: u64,
    pub origin_site: u8,
}

/// The decision for one incoming version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The incoming version wins: store it as it is.
    Apply,
    /// The local version is as new or newer: keep it (counted as `lost_conflict`).
    Stale,
}

/// Generations form a cycle of 65535 values (1..=65535).
const GENERATION_CYCLE: u32 = 65_535;

/// Whether generation `incoming` is ahead of `local`, looking at most half a cycle ahead.
pub fn generation_newer(incoming: u16, local: u16) -> bool {
    // Map 1..=65535 onto 0..65535 so the cycle has no hole, then compare modulo the cycle.
    let (a, b) = (u32::from(incoming.max(1)) - 1, u32::from(local.max(1)) - 1);
    let ahead = (a + GENERATION_CYCLE - b) % GENERATION_CYCLE;
    ahead != 0 && ahead < GENERATION_CYCLE / 2
}

/// Decides whether `incoming` replaces `local` (absent locally: always apply).
pub fn resolve(
    policy: ConflictPolicy,
    local: Option<&VersionStamp>,
    incoming: &VersionStamp,
) -> Resolution {
    let Some(local) = local else { return Resolution::Apply };
    let newer = match policy {
        ConflictPolicy::Generation => generation_newer(incoming.generation, local.generation),
        ConflictPolicy::LastUpdateTime => {
            (incoming.last_update_ms, incoming.origin_site, incoming.generation)
                > (local.last_update_ms, local.origin_site, local.generation)
        }
    };
    if newer { Resolution::Apply } else { Resolution::Stale }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(generation: u16, lut: u64, origin: u8) -> VersionStamp {
        VersionStamp { generation, last_update_ms: lut, origin_site: origin }
    }

    #[test]
    fn generation_comparison_wraps() {
        assert!(generation_newer(2, 1));
        assert!(!generation_newer(1, 2));
        assert!(!generation_newer(5, 5));
        assert!(generation_newer(1, 65_535), "65535 wraps to 1");
        assert!(generation_newer(3, 65_534));
        assert!(!generation_newer(65_534, 3));
        assert!(generation_newer(32_000, 1));
        assert!(!generation_newer(40_000, 1), "more than half a cycle ahead reads as behind");
    }

    #[test]
    fn policies_decide_as_documented() {
        let local = stamp(5, 1_000, 1);
        assert_eq!(resolve(ConflictPolicy::Generation, None, &local), Resolution::Apply);
        assert_eq!(
            resolve(ConflictPolicy::Generation, Some(&local), &stamp(6, 10, 2)),
            Resolution::Apply
        );
        assert_eq!(
            resolve(ConflictPolicy::Generation, Some(&local), &stamp(5, 9_999, 2)),
            Resolution::Stale
        );
        assert_eq!(
            resolve(ConflictPolicy::LastUpdateTime, Some(&local), &stamp(1, 1_001, 1)),
            Resolution::Apply
        );
        assert_eq!(
            resolve(ConflictPolicy::LastUpdateTime, Some(&local), &stamp(9, 999, 2)),
            Resolution::Stale
        );
        // Same millisecond at two sites: the higher site id wins everywhere.
        assert_eq!(
            resolve(ConflictPolicy::LastUpdateTime, Some(&local), &stamp(1, 1_000, 2)),
            Resolution::Apply
        );
        assert_eq!(
            resolve(ConflictPolicy::LastUpdateTime, Some(&stamp(1, 1_000, 2)), &local),
            Resolution::Stale
        );
        assert_eq!(
            resolve(ConflictPolicy::LastUpdateTime, Some(&local), &local),
            Resolution::Stale
        );
    }

    /// A site's final state after versions arrive in some order (with repeats).
    fn deliver(policy: ConflictPolicy, order: &[VersionStamp]) -> Option<VersionStamp> {
        order.iter().fold(None, |local, incoming| match resolve(policy, local.as_ref(), incoming) {
            Resolution::Apply => Some(*incoming),
            Resolution::Stale => local,
        })
    }

    proptest! {
        /// Any delivery order, duplication and reordering converges to the same version.
        #[test]
        fn every_delivery_order_converges_under_lut(
            versions in proptest::collection::vec((1u64..50, 1u8..4), 1..12),
            shuffle_a in any::<u64>(),
            shuffle_b in any::<u64>(),
        ) {
            let stamps: Vec<VersionStamp> =
                versions.iter().enumerate().map(|(g, &(lut, origin))| stamp(g as u16 + 1, lut, origin)).collect();
            let a = deliver(ConflictPolicy::LastUpdateTime, &permuted(&stamps, shuffle_a));
            let b = deliver(ConflictPolicy::LastUpdateTime, &permuted(&stamps, shuffle_b));
            prop_assert_eq!(a, b);
        }

        /// Under the generation policy, versions of one record's history (generations within
        /// half a cycle, possibly wrapping) converge to the newest whatever the order.
        #[test]
        fn every_delivery_order_converges_under_generation(
            start in 1u16..=65_535,
            count in 1u16..40,
            shuffle_a in any::<u64>(),
            shuffle_b in any::<u64>(),
        ) {
            let stamps: Vec<VersionStamp> = (0..count)
                .map(|i| {
                    let g = ((u32::from(start) - 1 + u32::from(i)) % GENERATION_CYCLE) as u16 + 1;
                    stamp(g, u64::from(i), 1)
                })
                .collect();
            let newest = stamps.last().copied();
            prop_assert_eq!(deliver(ConflictPolicy::Generation, &permuted(&stamps, shuffle_a)), newest);
            prop_assert_eq!(deliver(ConflictPolicy::Generation, &permuted(&stamps, shuffle_b)), newest);
        }
    }

    /// A deterministic shuffle with duplicates: each version appears once or twice.
    fn permuted(stamps: &[VersionStamp], seed: u64) -> Vec<VersionStamp> {
        let mut out: Vec<VersionStamp> = stamps.to_vec();
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in (1..out.len()).rev() {
            out.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let duplicates: Vec<VersionStamp> =
            out.iter().filter(|_| next() % 3 == 0).copied().collect();
        for d in duplicates {
            let at = (next() % (out.len() as u64 + 1)) as usize;
            out.insert(at, d);
        }
        out
    }
}
