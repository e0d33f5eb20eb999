//! What two sites compare to prove they hold the same data (`ferry verify`, the drills): per
//! partition this node masters, the count and a hash of the versions stored at or before a
//! LUT watermark; and for a partition whose hashes differ between the sites, every version
//! it holds, so the caller can name each divergent record.
//!
//! A version's hash covers what makes two copies the same record: digest, generation, LUT,
//! tombstone, expiry, set and bins (not where this site logged it). A
//! partition's hash is the XOR of its versions' hashes, so the order of the scan does not
//! matter. Both scans read storage and block: callers run them on the blocking pool, never
//! on the workers that answer clients.

use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::storage::{Digest, Store, StoreError};

/// One partition as one site holds it, up to a watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub partition: u16,
    /// Versions with LUT ≤ the watermark, tombstones included.
    pub records: u64,
    /// Versions newer than the watermark (left out of `records` and `hash`).
    pub newer: u64,
    /// XOR of [`version_hash`] over the counted versions.
    pub hash: u64,
}

/// One stored version, as verification lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// 40 hex digits.
    pub digest: String,
    pub set: String,
    pub generation: u16,
    pub last_update_ms: u64,
    /// The site id of the write that made this version.
    pub origin_site: u8,
    pub tombstone: bool,
    /// Expired and not yet reclaimed: as good as deleted (each site reclaims on its own
    /// schedule).
    #[serde(default)]
    pub expired: bool,
    /// [`version_hash`] of the version.
    pub hash: u64,
}

/// FNV-1a, 64 bits: stable across builds and machines (unlike std's hasher), which two sites
/// need to compare hashes.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(mut self, bytes: &[u8]) -> Fnv {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// Bytes preceded by their length, so adjacent fields cannot run into each other.
    fn field(self, bytes: &[u8]) -> Fnv {
        self.bytes(&(bytes.len() as u64).to_le_bytes()).bytes(bytes)
    }
}

/// The hash of one version: equal on two sites exactly when they hold the same version.
pub fn version_hash(digest: &Digest, record: &Record) -> u64 {
    let mut hash = Fnv::new()
        .bytes(digest.as_bytes())
        .bytes(&record.generation.to_le_bytes())
        .bytes(&record.last_update_ms.to_le_bytes())
        .bytes(&[u8::from(record.tombstone)])
        .bytes(&record.void_time.to_le_bytes())
        .field(record.set.as_bytes());
    for bin in &record.bins {
        hash = hash.field(bin.name.as_bytes()).bytes(&[bin.value.particle]).field(&bin.value.data);
    }
    hash.0
}

/// Counts and hashes the versions of `partition` with LUT ≤ `until_ms`.
pub fn summarize_partition(
    store: &Store,
    ns: &str,
    partition: u16,
    until_ms: u64,
) -> Result<PartitionSummary, StoreError> {
    let mut summary = PartitionSummary { partition, records: 0, newer: 0, hash: 0 };
    for item in store.scan_partition(ns, partition, None)? {
        let (digest, record) = item?;
        if record.last_update_ms > until_ms {
            summary.newer += 1;
        } else {
            summary.records += 1;
            summary.hash ^= version_hash(&digest, &record);
        }
    }
    Ok(summary)
}

/// Every version of `partition` in digest order, whatever its LUT.
pub fn list_partition(
    store: &Store,
    ns: &str,
    partition: u16,
) -> Result<Vec<VersionSummary>, StoreError> {
    let now_secs = crate::record::now_citrusleaf_secs();
    store
        .scan_partition(ns, partition, None)?
        .map(|item| {
            item.map(|(digest, record)| VersionSummary {
                expired: record.expired(now_secs),
                digest: digest.to_string(),
                set: record.set.clone(),
                generation: record.generation,
                last_update_ms: record.last_update_ms,
                origin_site: record.origin_site,
                tombstone: record.tombstone,
                hash: version_hash(&digest, &record),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Bin, Value};

    fn record(generation: u16, lut: u64, bins: &[(&str, i64)]) -> Record {
        Record {
            generation,
            last_update_ms: lut,
            created_ms: lut,
            void_time: 0,
            origin_site: 1,
            tombstone: false,
            set: "s".to_owned(),
            key: None,
            bins: bins
                .iter()
                .map(|(name, v)| Bin { name: (*name).to_owned(), value: Value::integer(*v) })
                .collect(),
            logged_lsn: Some(7),
        }
    }

    #[test]
    fn the_hash_covers_the_version_and_not_local_bookkeeping() {
        let digest = Digest([3; 20]);
        let base = record(2, 1000, &[("a", 1)]);
        let hash = version_hash(&digest, &base);
        let local = Record { logged_lsn: None, ..base.clone() };
        assert_eq!(version_hash(&digest, &local), hash, "where it was logged does not count");
        let changed = [
            record(3, 1000, &[("a", 1)]),
            record(2, 1001, &[("a", 1)]),
            record(2, 1000, &[("a", 2)]),
            record(2, 1000, &[("b", 1)]),
            record(2, 1000, &[]),
            Record { tombstone: true, ..base.clone() },
            Record { void_time: 99, ..base.clone() },
            Record { set: "t".to_owned(), ..base.clone() },
        ];
        for other in changed {
            assert_ne!(version_hash(&digest, &other), hash, "{other:?}");
        }
        assert_ne!(version_hash(&Digest([4; 20]), &base), hash);
    }

    #[test]
    fn partitions_count_and_hash_only_versions_up_to_the_watermark() {
        use crate::storage::tests::{digest, namespace};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &[namespace("test")]).expect("open");
        let partition = 77;
        let (old, new) = (digest(1, partition), digest(2, partition));
        store.put("test", &old, &record(1, 100, &[("a", 1)])).expect("put");
        store.put("test", &new, &record(1, 300, &[("a", 2)])).expect("put");
        let summary = summarize_partition(&store, "test", partition, 200).expect("summary");
        let only_old = version_hash(&old, &record(1, 100, &[("a", 1)]));
        assert_eq!(summary, PartitionSummary { partition, records: 1, newer: 1, hash: only_old });
        let listed = list_partition(&store, "test", partition).expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|v| v.digest == old.to_string() && v.last_update_ms == 100));
    }
}
