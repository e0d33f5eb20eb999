//! Conflict resolution: whether a version shipped from another site replaces the local one.
//! Every rule is a deterministic order on the two versions, so every site picks the same
//! winner whatever order versions arrive in (`docs/xdr.md` walks through the cases).
//!
//! - `last-update-time`: apply iff (LUT, origin site id) is greater; the site id breaks ties
//!   between writes in the same millisecond at two sites. A site never gives one record two
//!   versions with the same LUT (it is strictly increasing per record), but the generation
//!   breaks even that tie so the order is total.
//! - `generation`: the later incarnation wins, then the newer generation, wrap-aware. An
//!   incarnation starts when a record is written while no live version of it is stored
//!   (never written, deleted, expired): `created_ms` is that write's LUT, and every later
//!   version (and its delete) keeps it. A record written anew restarts at generation 1, as in
//!   Aerospike, yet it is the later write, and its later incarnation says so against the
//!   tombstone and against older copies anywhere. Within one incarnation,
//!   generations run 1..=65535 and wrap to 1 (0 is never a live generation), so "newer" means
//!   ahead by less than half the cycle; equal generations (a write at each site, or an
//!   expiration at one site racing a write after the expiry at the other) are ordered by
//!   (LUT, origin).
//!
//! Equal versions are stale, which makes applying a batch twice harmless (idempotent apply).

use ferry_topology::model::ConflictPolicy;

/// The metadata conflict resolution compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionStamp {
    pub generation: u16,
    pub last_update_ms: u64,
    pub origin_site: u8,
    /// When the record's incarnation began: the LUT of its first write after no version was
    /// stored (0 for records stored before incarnations were kept).
    pub created_ms: u64,
}

/// One side of a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub stamp: VersionStamp,
    pub tombstone: bool,
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
pub fn resolve(policy: ConflictPolicy, local: Option<&Version>, incoming: &Version) -> Resolution {
    let Some(local) = local else { return Resolution::Apply };
    let (theirs, ours) = (&incoming.stamp, &local.stamp);
    let later = || {
        (theirs.last_update_ms, theirs.origin_site, theirs.generation)
            > (ours.last_update_ms, ours.origin_site, ours.generation)
    };
    let newer = match policy {
        ConflictPolicy::LastUpdateTime => later(),
        ConflictPolicy::Generation if theirs.created_ms != ours.created_ms => {
            theirs.created_ms > ours.created_ms
        }
        ConflictPolicy::Generation if theirs.generation == ours.generation => later(),
        ConflictPolicy::Generation => generation_newer(theirs.generation, ours.generation),
    };
    if newer { Resolution::Apply } else { Resolution::Stale }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(generation: u16, lut: u64, origin: u8) -> VersionStamp {
        VersionStamp { generation, last_update_ms: lut, origin_site: origin, created_ms: 0 }
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

    fn live(generation: u16, lut: u64, origin: u8) -> Version {
        Version { stamp: stamp(generation, lut, origin), tombstone: false }
    }

    fn dead(generation: u16, lut: u64, origin: u8) -> Version {
        Version { stamp: stamp(generation, lut, origin), tombstone: true }
    }

    fn decide(policy: ConflictPolicy, local: Version, incoming: Version) -> Resolution {
        resolve(policy, Some(&local), &incoming)
    }

    #[test]
    fn policies_decide_as_documented() {
        use ConflictPolicy::{Generation, LastUpdateTime};
        use Resolution::{Apply, Stale};
        let local = live(5, 1_000, 1);
        assert_eq!(resolve(Generation, None, &local), Apply);
        assert_eq!(decide(Generation, local, live(6, 10, 2)), Apply);
        assert_eq!(decide(Generation, local, live(4, 9_999, 2)), Stale);
        assert_eq!(decide(LastUpdateTime, local, live(1, 1_001, 1)), Apply);
        assert_eq!(decide(LastUpdateTime, local, live(9, 999, 2)), Stale);
        // Same millisecond at two sites: the higher site id wins everywhere.
        assert_eq!(decide(LastUpdateTime, local, live(1, 1_000, 2)), Apply);
        assert_eq!(decide(LastUpdateTime, live(1, 1_000, 2), local), Stale);
        for policy in [Generation, LastUpdateTime] {
            assert_eq!(decide(policy, local, local), Stale, "a redelivery");
        }
    }

    #[test]
    fn equal_generations_fall_back_to_the_later_write() {
        use Resolution::{Apply, Stale};
        // A write at each site from generation 5: both are generation 6.
        assert_eq!(decide(ConflictPolicy::Generation, live(6, 1_000, 1), live(6, 1_001, 2)), Apply);
        assert_eq!(decide(ConflictPolicy::Generation, live(6, 1_001, 2), live(6, 1_000, 1)), Stale);
        // An expiration tombstone (stamped at the expiry) against a write after the expiry.
        let expired_at = 5_000;
        assert_eq!(
            decide(ConflictPolicy::Generation, dead(6, expired_at, 1), live(6, 5_200, 2)),
            Apply
        );
        assert_eq!(
            decide(ConflictPolicy::Generation, live(6, 5_200, 2), dead(6, expired_at, 1)),
            Stale
        );
    }

    #[test]
    fn a_later_incarnation_beats_every_version_of_an_earlier_one() {
        use ConflictPolicy::{Generation, LastUpdateTime};
        use Resolution::{Apply, Stale};
        let incarnation = |mut version: Version, created_ms: u64| {
            version.stamp.created_ms = created_ms;
            version
        };
        // Deleted at generation 9; the tombstone was reclaimed, the record written anew.
        let tombstone = incarnation(dead(9, 1_000, 1), 10);
        let older_copy = incarnation(live(6, 900, 1), 10);
        let recreated = incarnation(live(1, 5_000, 2), 5_000);
        for earlier in [tombstone, older_copy] {
            assert_eq!(decide(Generation, earlier, recreated), Apply);
            assert_eq!(decide(Generation, recreated, earlier), Stale);
        }
        // Written over the tombstone before it was reclaimed, the record continues its
        // incarnation and its generation.
        let continued = incarnation(live(10, 1_200, 2), 10);
        assert_eq!(decide(Generation, tombstone, continued), Apply);
        assert_eq!(decide(Generation, continued, tombstone), Stale);
        // The last-update-time policy looks at the LUT alone.
        let late_old = incarnation(live(3, 6_000, 1), 10);
        assert_eq!(decide(LastUpdateTime, recreated, late_old), Apply);
    }

    /// A site's final state after live versions arrive in some order (with repeats).
    fn deliver(policy: ConflictPolicy, order: &[VersionStamp]) -> Option<VersionStamp> {
        order.iter().fold(None, |local, incoming| {
            let local_version = local.map(|stamp| Version { stamp, tombstone: false });
            let incoming_version = Version { stamp: *incoming, tombstone: false };
            match resolve(policy, local_version.as_ref(), &incoming_version) {
                Resolution::Apply => Some(*incoming),
                Resolution::Stale => local,
            }
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
            recreated_every in 1u16..50,
            shuffle_a in any::<u64>(),
            shuffle_b in any::<u64>(),
        ) {
            // Every `recreated_every` versions the record is written anew (a reclaimed
            // tombstone): a new incarnation from generation 1.
            let stamps: Vec<VersionStamp> = (0..count)
                .map(|i| {
                    let (incarnation, step) = (i / recreated_every, i % recreated_every);
                    let first = if incarnation == 0 { start } else { 1 };
                    let g = ((u32::from(first) - 1 + u32::from(step)) % GENERATION_CYCLE) as u16 + 1;
                    let created_ms = u64::from(incarnation * recreated_every);
                    VersionStamp { created_ms, ..stamp(g, u64::from(i), 1) }
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
