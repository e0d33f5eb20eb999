//! What one link has not shipped from this node: the records whose changes sit in the digest
//! log past the link's cursor, and the link's parked records. If this site were lost now,
//! exactly these acknowledged changes would be lost with it — a failover drill's RPO and
//! lost-write manifest, record by record.
//!
//! Each change passes the link's own filters (namespace, expirations, origin, sets) on the
//! log entry and on the stored record, as the shipper would; a record changed several times
//! counts once, with its newest LUT. Reading moves no cursor.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ferry_digestlog::{Digest, Lsn};
use ferry_xdr::plan::LinkPlan;
use serde::{Deserialize, Serialize};

use crate::node::NodeState;

/// Entries read from the log at once.
const READ_CHUNK: usize = 65_536;
/// How long the log may take to flush what was logged before the question.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// Why the question cannot be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnshippedError {
    #[error("this node runs without a digest log")]
    NoLog,
    #[error("no link from this site to '{0}' in the topology")]
    NoLink(String),
    #[error("the link to '{0}' has no cursor on this node (it never ran here)")]
    NoCursor(String),
    #[error("plan the link: {0}")]
    Plan(#[from] ferry_xdr::plan::PlanError),
    #[error("the digest log did not flush within {FLUSH_WAIT:?}: {0}")]
    Flush(String),
    #[error("read the digest log: {0}")]
    Read(#[from] ferry_digestlog::ReadError),
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}

/// One record whose latest change has not reached the link's destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unshipped {
    pub namespace: String,
    pub partition: u16,
    /// 40 hex digits.
    pub digest: String,
    /// Generation and LUT (ms since the Unix epoch) of the newest unshipped change.
    pub generation: u16,
    pub lut_ms: u64,
    /// Parked (refused for good by the destination) rather than waiting in the log.
    pub parked: bool,
}

/// The answer of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnshippedReport {
    pub node: String,
    pub dc: String,
    /// The link's cursor: every entry through here is acknowledged.
    pub cursor: u64,
    /// The last entry logged when the question was asked.
    pub logged: u64,
    pub records: Vec<Unshipped>,
}

/// The records the link to `dc` has not shipped from this node.
pub async fn unshipped(
    state: std::sync::Arc<NodeState>,
    dc: String,
) -> Result<UnshippedReport, UnshippedError> {
    let log = state.digest_log().ok_or(UnshippedError::NoLog)?;
    let logged = log.logged_lsn();
    tokio::time::timeout(FLUSH_WAIT, log.flushed_through(logged))
        .await
        .map_err(|_| UnshippedError::Flush("timed out".to_owned()))?
        .map_err(|e| UnshippedError::Flush(e.to_string()))?;
    tokio::task::spawn_blocking(move || collect(&state, &dc, logged))
        .await
        .map_err(|e| UnshippedError::Flush(e.to_string()))?
}

fn collect(state: &NodeState, dc: &str, logged: Lsn) -> Result<UnshippedReport, UnshippedError> {
    let log = state.digest_log().ok_or(UnshippedError::NoLog)?;
    let topology = state.topology.get();
    let site = &state.site().name;
    let link = topology
        .links
        .iter()
        .find(|l| l.from == *site && l.to == *dc)
        .ok_or_else(|| UnshippedError::NoLink(dc.to_owned()))?;
    let plan = LinkPlan::new(&topology, link)?;
    let cursor_name = format!("xdr-{dc}");
    let cursor = log
        .cursors()
        .into_iter()
        .find(|c| c.name == cursor_name)
        .ok_or_else(|| UnshippedError::NoCursor(dc.to_owned()))?
        .committed;
    // Newest change per record (the log is in order), as the shipper folds them, and whether
    // every change of it was stored here as a copy (shipped only by the partition's master).
    let mut changed: BTreeMap<(usize, Digest), (u16, u64, bool)> = BTreeMap::new();
    let mut after = cursor;
    while after < logged {
        let entries = log.read_flushed(after, READ_CHUNK)?;
        let Some(last) = entries.last() else { break };
        after = last.lsn;
        for change in entries.iter().filter(|e| e.lsn <= logged) {
            if let Ok(ns) = plan.admit_entry(&change.entry) {
                let entry = &change.entry;
                let copy_only = changed.get(&(ns, entry.digest)).is_none_or(|c| c.2) && entry.copy;
                changed.insert((ns, entry.digest), (entry.generation, entry.lut_ms, copy_only));
            }
        }
    }
    let mut records = Vec::with_capacity(changed.len());
    let view = state.cluster();
    for ((ns, digest), (generation, lut_ms, copy_only)) in changed {
        let namespace = &plan.namespaces[ns].name;
        if copy_only && !view.is_master(namespace, ferry_topology::placement::partition_of(&digest))
        {
            continue;
        }
        // What the shipper would read: a record gone without a tombstone, or replaced by a
        // version it would not ship, is not lost with this site.
        let Some(record) = state.store.get(namespace, &digest)? else { continue };
        if plan.admit_origin(record.origin_site).is_err() || plan.admit_set(&record.set).is_err() {
            continue;
        }
        records.push(Unshipped {
            namespace: namespace.clone(),
            partition: ferry_topology::placement::partition_of(&digest),
            digest: digest.to_string(),
            generation,
            lut_ms,
            parked: false,
        });
    }
    let in_log: HashSet<(String, String)> =
        records.iter().map(|r| (r.namespace.clone(), r.digest.clone())).collect();
    for parked in state.store.parked(dc)? {
        let digest = parked.digest.to_string();
        // A newer version unparks a record, so the parked version is the stored one.
        let stored = state.store.get(&parked.namespace, &parked.digest)?;
        if !in_log.contains(&(parked.namespace.clone(), digest.clone())) {
            records.push(Unshipped {
                partition: ferry_topology::placement::partition_of(&parked.digest),
                generation: stored.map_or(0, |r| r.generation),
                namespace: parked.namespace,
                digest,
                lut_ms: parked.lut_ms,
                parked: true,
            });
        }
    }
    Ok(UnshippedReport {
        node: state.this_node().id.to_string(),
        dc: dc.to_owned(),
        cursor: cursor.0,
        logged: logged.0,
        records,
    })
}
