//! The primary index in memory, as Aerospike keeps one: every digest a namespace stores, with
//! the digest-log position of its stored version. A write whose digest is absent needs no LSM
//! point read (most writes of new records), and after a crash the versions the log lost are
//! found without a pass over storage.
//!
//! Built by one pass over storage at open; [`crate::storage::Store`] updates it with every put
//! and removal, inserting before the engine stores a version and deleting after it removed one,
//! so "absent here" always means "not stored". It also counts the tombstones, so a namespace's
//! object count costs nothing. About 50 bytes per record.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::storage::Digest;

const SHARDS: usize = 256;

/// Marks a tombstone in an entry; log positions stay below 2^63 (`ferry_digestlog::Lsn::MAX`).
const TOMBSTONE: u64 = 1 << 63;

/// Digest → digest-log position of the stored version (0 when it was not logged), with the
/// [`TOMBSTONE`] bit for a tombstone.
#[derive(Debug)]
pub struct PrimaryIndex {
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Digest, u64>,
    tombstones: u64,
}

impl Shard {
    fn forget(&mut self, entry: Option<u64>) {
        if entry.is_some_and(|e| e & TOMBSTONE != 0) {
            self.tombstones -= 1;
        }
    }
}

impl Default for PrimaryIndex {
    fn default() -> Self {
        PrimaryIndex { shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }
}

impl PrimaryIndex {
    fn shard(&self, digest: &Digest) -> MutexGuard<'_, Shard> {
        // Digests are uniformly distributed; their first byte spreads the shards.
        let shard = &self.shards[usize::from(digest.as_ref()[0]) % SHARDS];
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a version of `digest` is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.shard(digest).entries.contains_key(digest)
    }

    /// A version of `digest` is (about to be) stored, logged at `logged_lsn`.
    pub fn insert(&self, digest: &Digest, logged_lsn: Option<u64>, tombstone: bool) {
        let entry = logged_lsn.unwrap_or(0) & !TOMBSTONE | if tombstone { TOMBSTONE } else { 0 };
        let mut shard = self.shard(digest);
        let old = shard.entries.insert(*digest, entry);
        shard.forget(old);
        shard.tombstones += u64::from(tombstone);
    }

    /// No version of `digest` is stored any more.
    pub fn remove(&self, digest: &Digest) {
        let mut shard = self.shard(digest);
        let old = shard.entries.remove(digest);
        shard.forget(old);
    }

    /// Stored versions, tombstones included, and how many are tombstones.
    pub fn counts(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(len, tombstones), shard| {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            (len + shard.entries.len() as u64, tombstones + shard.tombstones)
        })
    }

    /// Stored versions, tombstones included.
    pub fn len(&self) -> usize {
        usize::try_from(self.counts().0).unwrap_or(usize::MAX)
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
            let logged_after = |(d, e): (&Digest, &u64)| (e & !TOMBSTONE > lsn).then_some(*d);
            after.extend(shard.entries.iter().filter_map(logged_after));
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
        index.insert(&a, Some(5), false);
        index.insert(&b, None, false);
        index.insert(&c, Some(9), true);
        assert!(index.contains(&a) && index.contains(&b));
        assert_eq!(index.counts(), (3, 1));
        let mut after = index.logged_after(5);
        after.sort();
        assert_eq!(after, [c], "the tombstone mark is not part of the position");
        index.insert(&a, Some(12), true);
        assert_eq!(index.counts(), (3, 2));
        index.remove(&c);
        index.insert(&a, Some(13), false);
        assert!(!index.contains(&c));
        assert_eq!(index.logged_after(5), [a]);
        assert_eq!(index.counts(), (2, 0));
    }
}
