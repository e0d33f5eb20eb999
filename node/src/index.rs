//! The primary index in memory, as Aerospike keeps one: every digest a namespace stores, with
//! the digest-log position of its stored version. A write whose digest is absent needs no LSM
//! point read (most writes of new records), and after a crash the versions the log lost are
//! found without a pass over storage.
//!
//! Built by one pass over storage at open; [`crate::storage::Store`] updates it with every put
//! and removal, inserting before the engine stores a version and deleting after it removed one,
//! so "absent here" always means "not stored". About 50 bytes per record.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::storage::Digest;

const SHARDS: usize = 256;

/// Digest → digest-log position of the stored version (0 when it was not logged).
#[derive(Debug)]
pub struct PrimaryIndex {
    shards: Box<[Mutex<HashMap<Digest, u64>>]>,
}

impl Default for PrimaryIndex {
    fn default() -> Self {
        PrimaryIndex { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl PrimaryIndex {
    fn shard(&self, digest: &Digest) -> MutexGuard<'_, HashMap<Digest, u64>> {
        // Digests are uniformly distributed; their first byte spreads the shards.
        let shard = &self.shards[usize::from(digest.as_ref()[0]) % SHARDS];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a version of `digest` is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.shard(digest).contains_key(digest)
    }

    /// A version of `digest` is (about to be) stored, logged at `logged_lsn`.
    pub fn insert(&self, digest: &Digest, logged_lsn: Option<u64>) {
        self.shard(digest).insert(*digest, logged_lsn.unwrap_or(0));
    }

    /// No version of `digest` is stored any more.
    pub fn remove(&self, digest: &Digest) {
        self.shard(digest).remove(digest);
    }

    /// Stored versions, tombstones included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Digests whose stored version was logged after `lsn`.
    pub fn logged_after(&self, lsn: u64) -> Vec<Digest> {
        let mut after = Vec::new();
        for shard in &*self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            after.extend(shard.iter().filter(|&(_, &logged)| logged > lsn).map(|(d, _)| *d));
        }
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_presence_and_log_positions() {
        let index = PrimaryIndex::default();
        let (a, b, c) = (Digest([1; 20]), Digest([2; 20]), Digest([3; 20]));
        index.insert(&a, Some(5));
        index.insert(&b, None);
        index.insert(&c, Some(9));
        assert!(index.contains(&a) && index.contains(&b));
        assert_eq!(index.len(), 3);
        let mut after = index.logged_after(5);
        after.sort();
        assert_eq!(after, [c]);
        index.insert(&a, Some(12));
        index.remove(&c);
        assert!(!index.contains(&c));
        assert_eq!(index.logged_after(5), [a]);
        assert_eq!(index.len(), 2);
    }
}
