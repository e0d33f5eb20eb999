//! Parked records: changes a destination refused for good, kept per link until an operator
//! retries or discards them (DESIGN §13). A refused record never holds its link back — the
//! cursor moves past it once it is parked durably — and it is never dropped in silence: the
//! link counts it in `parked`, `in_queue` and `lag`, and reports `degraded` while any is parked.
//!
//! The list lives in the node's store (see [`crate::ship::LocalRecords`]); only the link's
//! shipper writes it, so parking, retrying and discarding never race.

use std::collections::{BTreeMap, HashMap};

use ferry_digestlog::Digest;
use serde::{Deserialize, Serialize};

/// Most records one link keeps parked. Past it the link stops moving its cursor (it retries
/// the refused batch with backoff) rather than drop anything: a destination that refuses
/// this much needs an operator anyway.
pub const MAX_PARKED: u64 = 100_000;

/// One parked record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedRecord {
    pub namespace: String,
    #[serde(with = "hex_digest")]
    pub digest: Digest,
    pub set: String,
    /// Last-update time of the refused version, ms since the Unix epoch (lag counts from it).
    pub lut_ms: u64,
    /// Why the destination refused it.
    pub reason: String,
    /// When it was parked, ms since the Unix epoch.
    pub parked_at_ms: u64,
}

/// How much is parked for one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedSummary {
    pub count: u64,
    /// LUT of the oldest parked version; `None` when nothing is parked.
    pub oldest_lut_ms: Option<u64>,
}

/// The shipper's view of its link's parked list (the store holds the list itself): which
/// records are parked, and the summary the link's gauges show, kept current in O(log n).
#[derive(Debug, Default)]
pub struct ParkedIndex {
    luts: HashMap<(String, Digest), u64>,
    /// LUT → how many parked records carry it.
    by_lut: BTreeMap<u64, u64>,
}

impl ParkedIndex {
    /// The index of what the store holds.
    pub fn new(records: &[ParkedRecord]) -> ParkedIndex {
        let mut index = ParkedIndex::default();
        records.iter().for_each(|record| index.insert(record));
        index
    }

    pub fn contains(&self, namespace: &str, digest: &Digest) -> bool {
        self.luts.contains_key(&(namespace.to_owned(), *digest))
    }

    /// Parks `record`, replacing what was parked under its namespace and digest.
    pub fn insert(&mut self, record: &ParkedRecord) {
        let key = (record.namespace.clone(), record.digest);
        if let Some(previous) = self.luts.insert(key, record.lut_ms) {
            self.forget_lut(previous);
        }
        *self.by_lut.entry(record.lut_ms).or_default() += 1;
    }

    pub fn remove(&mut self, namespace: &str, digest: &Digest) {
        if let Some(lut) = self.luts.remove(&(namespace.to_owned(), *digest)) {
            self.forget_lut(lut);
        }
    }

    /// Every parked (namespace, digest).
    pub fn keys(&self) -> Vec<(String, Digest)> {
        self.luts.keys().cloned().collect()
    }

    pub fn summary(&self) -> ParkedSummary {
        ParkedSummary {
            count: self.luts.len() as u64,
            oldest_lut_ms: self.by_lut.keys().next().copied(),
        }
    }

    fn forget_lut(&mut self, lut: u64) {
        if let Some(count) = self.by_lut.get_mut(&lut) {
            *count -= 1;
            if *count == 0 {
                self.by_lut.remove(&lut);
            }
        }
    }
}

/// Digests as hex in JSON, the way operators see them everywhere else.
pub(crate) mod hex_digest {
    use ferry_digestlog::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        digest: &Digest,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(digest)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(key: u8, lut_ms: u64) -> ParkedRecord {
        ParkedRecord {
            namespace: "test".into(),
            digest: Digest([key; 20]),
            set: "s".into(),
            lut_ms,
            reason: "record too big".into(),
            parked_at_ms: 5,
        }
    }

    #[test]
    fn the_index_counts_replaces_and_finds_the_oldest() {
        let summary = |count, oldest_lut_ms| ParkedSummary { count, oldest_lut_ms };
        let mut index = ParkedIndex::new(&[]);
        assert_eq!(index.summary(), summary(0, None));
        index = ParkedIndex::new(&[parked(1, 30), parked(2, 10), parked(3, 10)]);
        assert_eq!(index.summary(), summary(3, Some(10)));
        assert!(index.contains("test", &Digest([2; 20])));
        assert!(!index.contains("other", &Digest([2; 20])));
        index.remove("test", &Digest([2; 20]));
        assert_eq!(index.summary(), summary(2, Some(10)), "key 3 still carries LUT 10");
        index.insert(&parked(3, 40));
        assert_eq!(index.summary(), summary(2, Some(30)), "parking again replaces");
        index.remove("test", &Digest([9; 20]));
        for key in index.keys() {
            index.remove(&key.0, &key.1);
        }
        assert_eq!(index.summary(), summary(0, None));
    }

    #[test]
    fn json_round_trips_with_a_hex_digest() {
        let record = parked(0xab, 7);
        let json = serde_json::to_string(&record).expect("json");
        assert!(json.contains(&"ab".repeat(20)), "{json}");
        assert_eq!(serde_json::from_str::<ParkedRecord>(&json).expect("parse"), record);
    }
}
