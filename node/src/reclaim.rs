//! Background reclaim (Aerospike's nsup): removes expired records (already invisible to
//! clients) and tombstones older than the namespace's `tombstone-ttl` (kept that long so a
//! delete still wins against late-arriving older versions shipped from another site). When a
//! link out of the site has `ship-nsup-deletes`, an expired record is replaced by a tombstone
//! logged as an expiration instead, so the link ships it; the tombstone goes after its TTL.
//!
//! A tombstone whose change went into the digest log also waits until every link out of the
//! site that carries its namespace has shipped it — its cursor committed past the entry and
//! the record is not parked there: `tombstone-ttl` is a floor, not a ceiling, so a paused or
//! lagging link still ships every delete.
//!
//! Each pass walks the partitions this node holds, one bounded chunk at a time, so a pass
//! never holds the store for long. A copy (not the partition's master) only removes its expired
//! records: tombstones are the master's to reclaim or to ship.

use std::collections::HashSet;
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

/// How far the links out of this site have shipped one namespace: per link, its cursor's
/// committed position and the records it holds parked.
#[derive(Debug, Default)]
pub struct Shipped {
    links: Vec<(u64, HashSet<Digest>)>,
    /// In a site whose partitions change masters, the oldest of the links' shipping
    /// watermarks: a tombstone this node holds as a copy, or took over, carries no entry of
    /// its own that a cursor could pass, so only a watermark past its LUT says it shipped.
    watermark: Option<u64>,
    /// Tombstones of other sites' deletes ship only through links that forward.
    site_id: u8,
    forwards: bool,
}

impl Shipped {
    /// What the links carrying `namespace` have shipped, from their cursors and parked lists.
    pub(crate) fn of(state: &NodeState, namespace: &str) -> Result<Shipped, StoreError> {
        let Some(log) = state.digest_log() else { return Ok(Shipped::default()) };
        let committed: std::collections::HashMap<String, u64> =
            log.cursors().into_iter().map(|c| (c.name, c.committed.0)).collect();
        let site = &state.site().name;
        let topology = state.topology.get();
        let mut links = Vec::new();
        let mut watermark = None;
        for link in &topology.links {
            if link.from != *site || !link.namespaces.iter().any(|ns| ns.as_str() == namespace) {
                continue;
            }
            let dc = link.to.to_string();
            // A link that never opened its cursor starts from the oldest entry still logged.
            let Some(&through) = committed.get(&crate::xdr::cursor_name(&dc)) else { continue };
            let parked = state.store.parked(&dc)?;
            let parked = parked.into_iter().filter(|r| r.namespace == namespace).map(|r| r.digest);
            links.push((through, parked.collect()));
            if state.member.get().is_some() {
                let shipped_through = state.xdr.get(&dc).map_or(0, |l| l.shipped_through());
                watermark =
                    Some(watermark.map_or(shipped_through, |w: u64| w.min(shipped_through)));
            }
        }
        let (site_id, forwards) = (state.site_id(), state.forwards_applied_versions());
        Ok(Shipped { links, watermark, site_id, forwards })
    }

    /// Whether every link shipped every change older than `record`'s, if any link ships it
    /// (always, in a site without a membership group: its cursors tell).
    fn acknowledged(&self, record: &Record) -> bool {
        let shipped_from_here = record.origin_site == self.site_id || self.forwards;
        !shipped_from_here
            || self.watermark.is_none_or(|watermark| record.last_update_ms < watermark)
    }

    /// Whether every link shipped the change of `digest` logged at `lsn`.
    pub(crate) fn everywhere(&self, digest: &Digest, lsn: u64) -> bool {
        self.links.iter().all(|(through, parked)| *through >= lsn && !parked.contains(digest))
    }
}

/// Whether a stored record can be removed for good: an expired record, or a tombstone older
/// than `tombstone_ttl_secs` that every link has `shipped`.
pub fn reclaimable(
    digest: &Digest,
    record: &Record,
    now: (u32, u64),
    tombstone_ttl_secs: u32,
    shipped: &Shipped,
) -> bool {
    let (now_secs, now_ms) = now;
    if record.tombstone {
        let age_ms = now_ms.saturating_sub(record.last_update_ms);
        return age_ms >= u64::from(tombstone_ttl_secs) * 1000
            && record.logged_lsn.is_none_or(|lsn| shipped.everywhere(digest, lsn))
            && shipped.acknowledged(record);
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
        let shipped = Shipped::of(state, &ns)?;
        let view = state.cluster();
        let me = &state.this_node().id;
        for partition in 0..PARTITIONS {
            let Some(copies) = view.copies(&ns, partition) else { continue };
            let master = copies.master() == me;
            if !master && !copies.write_replicas().any(|node| node == me) {
                continue;
            }
            // A copy removes its expired records; tombstones and expiration tombstones are
            // the master's (it knows what its links shipped).
            let reclaimable = |digest: &Digest, record: &Record, now: (u32, u64)| {
                if master {
                    reclaimable(digest, record, now, tombstone_ttl, &shipped)
                } else {
                    !record.tombstone && record.expired(now.0)
                }
            };
            let mut after: Option<Digest> = None;
            loop {
                let now = (record::now_citrusleaf_secs(), record::now_ms());
                let chunk: Vec<(Digest, Record)> = state
                    .store
                    .scan_partition(&ns, partition, after.as_ref())?
                    .take(CHUNK)
                    .collect::<Result<_, _>>()?;
                let exhausted = chunk.len() < CHUNK;
                for (digest, candidate) in chunk {
                    after = Some(digest);
                    if !reclaimable(&digest, &candidate, now) {
                        continue;
                    }
                    // Re-check under the record's lock: a client may have rewritten it.
                    let _guard = state.store.lock(&digest).await;
                    let current = state.store.get(&ns, &digest)?;
                    let Some(current) = current.filter(|r| reclaimable(&digest, r, now)) else {
                        continue;
                    };
                    if master && ship_expirations && !current.tombstone {
                        let mut tombstone = current.expiration_tombstone(state.site_id());
                        tombstone.logged_lsn = state.log_expiration(&ns, &digest, &tombstone)?;
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
pub(crate) mod tests {
    use ferry_tests::{Link, Namespace, Site, TopologyBuilder};

    use super::*;

    fn record(tombstone: bool, void_time: u32, lut: u64) -> Record {
        Record {
            generation: 1,
            last_update_ms: lut,
            created_ms: lut,
            void_time,
            origin_site: 1,
            tombstone,
            set: String::new(),
            key: None,
            bins: Vec::new(),
            logged_lsn: None,
        }
    }

    /// Site `a` of one node `n`, on fixed ports.
    pub(crate) fn site_a() -> TopologyBuilder {
        TopologyBuilder::new("ferry").add_site(Site::new("a", 1).node_ids(&["n"])).ports_from(1)
    }

    /// Node `n` of site `a` in `topology`, its state under `dir`.
    pub(crate) fn node_n_of_site_a(topology: TopologyBuilder, dir: &std::path::Path) -> NodeState {
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
        let Ok(ferry_digestlog::Batch::Entries(entries)) = cursor.next_batch(10).await else {
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
        let (d, none) = (Digest([1; 20]), Shipped::default());
        assert!(reclaimable(&d, &record(false, 100, 0), (100, 0), 60, &none));
        assert!(!reclaimable(&d, &record(false, 101, 0), (100, 0), 60, &none));
        let never = record(false, 0, 0);
        assert!(!reclaimable(&d, &never, (u32::MAX, 0), 60, &none), "void time 0 never expires");
        let tombstone = record(true, 0, 1_000);
        assert!(!reclaimable(&d, &tombstone, (0, 60_999), 60, &none), "younger than ttl");
        assert!(reclaimable(&d, &tombstone, (0, 61_000), 60, &none));
    }

    #[test]
    fn a_logged_tombstone_waits_until_every_link_shipped_it() {
        let d = Digest([1; 20]);
        let tombstone = Record { logged_lsn: Some(10), ..record(true, 0, 1_000) };
        let old = (0, 100_000);
        let shipped = |links: &[(u64, &[Digest])]| Shipped {
            links: links
                .iter()
                .map(|(at, parked)| (*at, parked.iter().copied().collect()))
                .collect(),
            ..Shipped::default()
        };
        assert!(reclaimable(&d, &tombstone, old, 60, &shipped(&[(10, &[]), (12, &[])])));
        // Where masters change, a watermark past the tombstone's LUT is needed too.
        let behind = Shipped { watermark: Some(1_000), site_id: 1, ..shipped(&[(10, &[])]) };
        assert!(!reclaimable(&d, &tombstone, old, 60, &behind), "not yet past its LUT");
        let past = Shipped { watermark: Some(1_001), site_id: 1, ..shipped(&[(10, &[])]) };
        assert!(reclaimable(&d, &tombstone, old, 60, &past));
        let foreign = Record { origin_site: 2, ..tombstone.clone() };
        assert!(reclaimable(&d, &foreign, old, 60, &behind), "another site's delete ships not");
        assert!(!reclaimable(&d, &tombstone, old, 60, &shipped(&[(10, &[]), (9, &[])])), "behind");
        assert!(!reclaimable(&d, &tombstone, old, 60, &shipped(&[(12, &[d])])), "parked there");
        let other = Digest([2; 20]);
        assert!(reclaimable(&d, &tombstone, old, 60, &shipped(&[(12, &[other])])));
        assert!(!reclaimable(&d, &tombstone, (0, 2_000), 60, &shipped(&[])), "ttl is a floor");
    }

    #[tokio::test]
    async fn a_pass_keeps_a_tombstone_until_the_links_cursor_passed_it() {
        let topology = site_a()
            .namespace(Namespace::new("test").tombstone_ttl(0))
            .add_site(Site::new("b", 1).node_ids(&["m"]))
            .link(Link::new("a", "b"));
        let dir = tempfile::tempdir().expect("tempdir");
        let state = node_n_of_site_a(topology, dir.path());
        let log = state.digest_log().expect("log");
        let name = crate::xdr::cursor_name("b");
        let mut cursor =
            log.open_cursor(&name, ferry_digestlog::CursorStart::Latest).expect("cursor");
        let mut tombstone = record(true, 0, record::now_ms() - 1_000);
        let digest = Digest([1; 20]);
        tombstone.logged_lsn = state.log_change("test", &digest, &tombstone).expect("log");
        state.store.put("test", &digest, &tombstone).expect("put");
        assert_eq!(pass(&state).await.expect("pass"), 0, "the link has not shipped it");
        let lsn = tombstone.logged_lsn.expect("logged");
        cursor.next_batch(10).await.expect("read the entry once flushed");
        cursor.commit(ferry_digestlog::Lsn(lsn)).await.expect("commit");
        assert_eq!(pass(&state).await.expect("pass"), 1, "shipped: reclaimed");
        assert_eq!(state.store.get("test", &digest).expect("get"), None);
    }
}
