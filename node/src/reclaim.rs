//! Background reclaim (Aerospike's nsup): removes expired records (already invisible to
//! clients) and tombstones older than the namespace's `tombstone-ttl` (kept that long so a
//! delete still wins against late-arriving older versions shipped from another site). When a
//! link out of the site has `ship-nsup-deletes`, an expired record is replaced by a tombstone
//! logged as an expiration instead, so the link ships it; the tombstone goes after its TTL.
//!
//! Each pass walks the partitions this node masters, one bounded chunk at a time, so a pass
//! never holds the store for long.

use std::sync::Arc;
use std::time::Duration;

use ferry_topology::placement::PARTITIONS;

use crate::node::NodeState;
use crate::record::{self, Record};
use crate::storage::{Digest, StoreError};

/// Why a reclaim pass stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReclaimError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("log an expiration: {0}")]
    Log(#[from] ferry_digestlog::AppendError),
}

/// Default time between reclaim passes (`ferry node run --nsup-period-secs`).
pub const PASS_INTERVAL: Duration = Duration::from_secs(30);
/// Records examined per storage read.
const CHUNK: usize = 512;

/// Whether a stored record can be removed for good.
pub fn reclaimable(record: &Record, now_secs: u32, now_ms: u64, tombstone_ttl_secs: u32) -> bool {
    if record.tombstone {
        let age_ms = now_ms.saturating_sub(record.last_update_ms);
        return age_ms >= u64::from(tombstone_ttl_secs) * 1000;
    }
    record.expired(now_secs)
}

/// Runs reclaim passes every `period` until the task is dropped.
pub async fn run(state: Arc<NodeState>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match pass(&state).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "reclaimed expired records and old tombstones"),
            Err(error) => tracing::warn!(%error, "reclaim pass failed"),
        }
    }
}

/// One pass over every namespace; returns how many records were removed.
pub async fn pass(state: &NodeState) -> Result<usize, ReclaimError> {
    let mut removed = 0;
    let ship_expirations = state.ships_expirations();
    for ns in state.store.namespace_names() {
        let tombstone_ttl = state.namespace(&ns).map_or(0, |n| n.tombstone_ttl);
        for partition in 0..PARTITIONS {
            if !state.cluster.is_master(&ns, partition) {
                continue;
            }
            let mut after: Option<Digest> = None;
            loop {
                let (now_secs, now_ms) = (record::now_citrusleaf_secs(), record::now_ms());
                let chunk: Vec<(Digest, Record)> = state
                    .store
                    .scan_partition(&ns, partition, after.as_ref())?
                    .take(CHUNK)
                    .collect::<Result<_, _>>()?;
                let exhausted = chunk.len() < CHUNK;
                for (digest, candidate) in chunk {
                    after = Some(digest);
                    if !reclaimable(&candidate, now_secs, now_ms, tombstone_ttl) {
                        continue;
                    }
                    // Re-check under the record's lock: a client may have rewritten it.
                    let _guard = state.store.lock(&digest).await;
                    let current = state.store.get(&ns, &digest)?;
                    let Some(current) =
                        current.filter(|r| reclaimable(r, now_secs, now_ms, tombstone_ttl))
                    else {
                        continue;
                    };
                    if ship_expirations && !current.tombstone {
                        let tombstone = current.tombstone_after(state.site_id(), now_ms);
                        state.log_expiration(&ns, &digest, &tombstone).await?;
                        state.store.put(&ns, &digest, &tombstone)?;
                    } else {
                        state.store.remove(&ns, &digest)?;
                    }
                    removed += 1;
                }
                if exhausted {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if removed > 0 {
            state.store.commit(&ns).await?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use ferry_tests::{Link, Namespace, Site, TopologyBuilder};

    use super::*;

    fn record(tombstone: bool, void_time: u32, lut: u64) -> Record {
        Record {
            generation: 1,
            last_update_ms: lut,
            void_time,
            origin_site: 1,
            tombstone,
            set: String::new(),
            key: None,
            bins: Vec::new(),
        }
    }

    /// Site `a` of one node `n`, on fixed ports.
    fn site_a() -> TopologyBuilder {
        TopologyBuilder::new("ferry").add_site(Site::new("a", 1).node_ids(&["n"])).ports_from(1)
    }

    /// Node `n` of site `a` in `topology`, its state under `dir`.
    fn node_n_of_site_a(topology: TopologyBuilder, dir: &std::path::Path) -> NodeState {
        let text = topology.build().text;
        let topology = ferry_topology::parse_topology("t.toml", &text).expect("valid").topology;
        let config = crate::node::NodeConfig::new(topology, "a", "n", dir.to_path_buf());
        NodeState::open(&config).expect("open")
    }

    #[tokio::test]
    async fn a_pass_removes_only_what_is_reclaimable() {
        let topology = site_a().namespace(Namespace::new("test").tombstone_ttl(60));
        let dir = tempfile::tempdir().expect("tempdir");
        let state = node_n_of_site_a(topology, dir.path());
        let now_ms = record::now_ms();
        let live = record(false, 0, now_ms);
        let expired = record(false, 1, now_ms);
        let old_tombstone = record(true, 0, now_ms - 61_000);
        let fresh_tombstone = record(true, 0, now_ms);
        for (i, r) in [&live, &expired, &old_tombstone, &fresh_tombstone].into_iter().enumerate() {
            state.store.put("test", &Digest([i as u8 + 1; 20]), r).expect("put");
        }
        assert_eq!(pass(&state).await.expect("pass"), 2);
        let left: Vec<bool> = (1..=4u8)
            .map(|i| state.store.get("test", &Digest([i; 20])).expect("get").is_some())
            .collect();
        assert_eq!(left, [true, false, false, true]);
    }

    #[tokio::test]
    async fn with_ship_nsup_deletes_an_expiration_becomes_a_logged_tombstone() {
        let topology = site_a()
            .add_site(Site::new("b", 1).node_ids(&["m"]))
            .link(Link::new("a", "b").ship_nsup_deletes(true));
        let dir = tempfile::tempdir().expect("tempdir");
        let state = node_n_of_site_a(topology, dir.path());
        assert!(state.ships_expirations());
        let expired = record(false, 1, record::now_ms() - 5_000);
        state.store.put("test", &Digest([1; 20]), &expired).expect("put");
        let log = state.digest_log().expect("log");
        let mut cursor =
            log.open_cursor("probe", ferry_digestlog::CursorStart::Latest).expect("cursor");
        assert_eq!(pass(&state).await.expect("pass"), 1);
        let tombstone =
            state.store.get("test", &Digest([1; 20])).expect("get").expect("tombstone kept");
        assert!(tombstone.tombstone);
        assert_eq!(tombstone.generation, expired.generation + 1);
        assert!(tombstone.last_update_ms > expired.last_update_ms);
        let Some(ferry_digestlog::Batch::Entries(entries)) =
            cursor.try_next_batch(10).expect("read")
        else {
            panic!("the expiration is logged");
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].entry.op, ferry_digestlog::Op::Expire);
        assert_eq!(entries[0].entry.generation, tombstone.generation);
        // The tombstone stays until its TTL; a second pass leaves it.
        assert_eq!(pass(&state).await.expect("pass"), 0);
    }

    #[test]
    fn expired_records_and_old_tombstones_go() {
        assert!(reclaimable(&record(false, 100, 0), 100, 0, 60));
        assert!(!reclaimable(&record(false, 101, 0), 100, 0, 60));
        assert!(!reclaimable(&record(false, 0, 0), u32::MAX, 0, 60), "void time 0 never expires");
        assert!(!reclaimable(&record(true, 0, 1_000), 0, 60_999, 60), "tombstone younger than ttl");
        assert!(reclaimable(&record(true, 0, 1_000), 0, 61_000, 60));
    }
}
