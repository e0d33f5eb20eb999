//! Truncation of a namespace or of one set, as Aerospike's `truncate` and
//! `truncate-namespace` info commands do it: every record last updated before a cut-off
//! disappears at once, and stays gone across restarts.
//!
//! A truncation is a durable *cut-off* (milliseconds since the Unix epoch) for a namespace or
//! a set, kept by the store. Reads, scans, writes and the XDR shipper see no record whose
//! last-update time is before the cut-off that covers it; a background pass then removes
//! such records from storage. Client writes after a truncation get a last-update time at or
//! after the cut-off, so a write made in the same millisecond as the truncation survives it.
//!
//! Truncations are not shipped (Aerospike does not ship them either): truncate every site
//! that must lose the records. A shipped version older than the destination's cut-off is
//! dropped there as stale. `docs/node.md` spells the rules out.

use std::collections::HashMap;

/// The cut-offs of every namespace and set: a record of set `s` in namespace `n` is truncated
/// when its last-update time is before `max(namespace cut-off, set cut-off)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truncations {
    namespaces: HashMap<String, Cutoffs>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cutoffs {
    /// The whole namespace (`truncate-namespace`); 0 when never truncated.
    namespace: u64,
    sets: HashMap<String, u64>,
}

impl Truncations {
    /// Records `before_ms` as the cut-off of `namespace` (all sets when `set` is `None`).
    /// Cut-offs only move forward; returns the one now in force.
    pub fn raise(&mut self, namespace: &str, set: Option<&str>, before_ms: u64) -> u64 {
        let cutoffs = self.namespaces.entry(namespace.to_owned()).or_default();
        let slot = match set {
            None => &mut cutoffs.namespace,
            Some(set) => cutoffs.sets.entry(set.to_owned()).or_default(),
        };
        *slot = (*slot).max(before_ms);
        *slot
    }

    /// The cut-off covering records of `set` in `namespace` (0: none).
    pub fn cutoff(&self, namespace: &str, set: &str) -> u64 {
        self.namespaces
            .get(namespace)
            .map_or(0, |cutoffs| cutoffs.namespace.max(cutoffs.sets.get(set).copied().unwrap_or(0)))
    }

    /// Whether a version of `set` in `namespace` last updated at `last_update_ms` is truncated.
    pub fn covers(&self, namespace: &str, set: &str, last_update_ms: u64) -> bool {
        last_update_ms < self.cutoff(namespace, set)
    }

    /// Whether anything in `namespace` was ever truncated.
    pub fn any(&self, namespace: &str) -> bool {
        self.namespaces.contains_key(namespace)
    }
}

/// The storage key of a cut-off: `namespace ‖ 0 ‖ set` (an empty set: the whole namespace).
/// Names hold no NUL.
pub fn key(namespace: &str, set: Option<&str>) -> Vec<u8> {
    [namespace.as_bytes(), &[0], set.unwrap_or_default().as_bytes()].concat()
}

/// The namespace and set (`None`: the whole namespace) a [`key`] names; `None` when damaged.
pub fn parse_key(key: &[u8]) -> Option<(String, Option<String>)> {
    let split = key.iter().position(|&b| b == 0)?;
    let namespace = std::str::from_utf8(&key[..split]).ok()?.to_owned();
    let set = std::str::from_utf8(&key[split + 1..]).ok()?;
    Some((namespace, (!set.is_empty()).then(|| set.to_owned())))
}

/// The cut-off a truncate request asks for: `lut_nanos` (Aerospike's `lut` parameter,
/// nanoseconds since the Unix epoch) or, without one, everything written up to `now_ms`.
/// A cut-off in the future is refused, as the server does.
pub fn requested_cutoff(lut_nanos: Option<u64>, now_ms: u64) -> Result<u64, String> {
    match lut_nanos {
        None | Some(0) => Ok(now_ms + 1),
        Some(nanos) => {
            let cutoff = nanos / 1_000_000;
            if cutoff > now_ms + 1 {
                Err(format!("lut {nanos} is in the future"))
            } else {
                Ok(cutoff)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_covered_by_its_own_cutoff_and_by_its_namespace() {
        let mut truncations = Truncations::default();
        assert!(!truncations.covers("test", "s", 0), "nothing truncated yet");
        assert_eq!(truncations.raise("test", Some("s"), 1_000), 1_000);
        assert!(truncations.covers("test", "s", 999));
        assert!(!truncations.covers("test", "s", 1_000), "written at the cut-off: kept");
        assert!(!truncations.covers("test", "other", 1), "another set");
        assert!(!truncations.covers("other", "s", 1), "another namespace");
        assert_eq!(truncations.raise("test", None, 500), 500);
        assert!(truncations.covers("test", "other", 499));
        assert_eq!(truncations.cutoff("test", "s"), 1_000, "the later of the two");
        assert!(truncations.any("test") && !truncations.any("other"));
    }

    #[test]
    fn cutoffs_only_move_forward() {
        let mut truncations = Truncations::default();
        truncations.raise("test", None, 2_000);
        assert_eq!(truncations.raise("test", None, 1_000), 2_000);
        assert_eq!(truncations.cutoff("test", ""), 2_000);
    }

    #[test]
    fn keys_round_trip() {
        for (namespace, set) in [("test", None), ("test", Some("users")), ("n", Some("a b"))] {
            let parsed = parse_key(&key(namespace, set));
            assert_eq!(parsed, Some((namespace.to_owned(), set.map(str::to_owned))));
        }
        assert_eq!(parse_key(b"no separator"), None);
    }

    #[test]
    fn a_request_without_lut_covers_everything_written_so_far() {
        assert_eq!(requested_cutoff(None, 5_000), Ok(5_001));
        assert_eq!(requested_cutoff(Some(0), 5_000), Ok(5_001));
        assert_eq!(requested_cutoff(Some(4_000_000_000), 5_000), Ok(4_000));
        assert!(requested_cutoff(Some(9_000_000_000), 5_000).is_err());
    }
}
