//! Migrations: when a partition's placed nodes do not all hold a full copy (a node returned or
//! joined, or a loss moved copies), the partition's acting master pushes its records to each
//! node being filled, in the background: a few partitions at a time, chunk by chunk, under a
//! records-per-second budget. Writes keep flowing meanwhile (a node being filled takes every
//! write as a copy; a migrated version never replaces a newer one). What the node being
//! filled held that the push did not bring, or brought older (a write its crashed master
//! stored alone), goes back to the master and is kept there if it wins, as Aerospike merges a
//! returning node's versions; only versions too old to tell from deleted ones are dropped.
//! Once a node holds a partition durably, the master has the membership group record it as a
//! holder, which may make it the partition's master; its shipping then takes over from the old
//! master's watermark (see `membership`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_membership::Intent;
use ferry_topology::model::NodeId;
use ferry_topology::placement::{PARTITIONS, partition_of};
use ferry_xdr::conflict::VersionStamp;
use tokio::task::JoinSet;

use crate::fabric::{self, Kind};
use crate::node::NodeState;
use crate::record::{self, Record};
use crate::replica::{Logging, ReplicaStatus};
use crate::storage::Digest;

/// Partitions a node pushes at once.
const PARALLEL: usize = 4;
/// Records per request, and bytes (of stored records) per request, at most.
const CHUNK: usize = 1024;
const CHUNK_BYTES: usize = 1 << 20;
/// Records a node sends per second, at most (all its pushes together).
const RECORDS_PER_SEC: u64 = 50_000;
/// How often a node refills its budget and proposes what it filled (it looks for more work
/// each time a push ends, too).
const ROUND: Duration = Duration::from_millis(200);
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a node drops the copies it no longer holds, and how many records at most each
/// time.
const DROP_EVERY: Duration = Duration::from_secs(2);
const DROP_MAX: usize = 2_048;
/// How long partitions whose records all had to stay (unshipped) are not looked at again.
const KEPT_FOR: Duration = Duration::from_secs(30);

/// What this node migrated, for `/v1/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct MigrationStats {
    /// Partitions being pushed from here now.
    pub migrating: AtomicU64,
    /// Partitions pushed from here since start.
    pub partitions_sent: AtomicU64,
    pub records_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Records other nodes pushed here.
    pub records_received: AtomicU64,
    /// Records of partitions this node no longer holds, dropped once their copies settled
    /// elsewhere, and versions a push showed the master no longer has.
    pub records_dropped: AtomicU64,
    /// Versions this node held that a push did not bring, merged into the partition's master.
    pub records_merged: AtomicU64,
    /// Per partition being pushed here, the versions its chunks brought so far.
    receiving: std::sync::Mutex<HashMap<(String, u16), Receiving>>,
}

/// A push being received: when it began (the sender's clock) and the versions it brought.
type Receiving = (u64, HashMap<Digest, VersionStamp>);

/// A chunk of one partition's records pushed to a node being filled.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The epoch at which the push began.
    pub epoch: u64,
    pub namespace: String,
    pub partition: u16,
    /// The sender's clock when the push began (ms).
    pub started_ms: u64,
    /// The push's last chunk: the receiver drops what it holds of the partition that the push
    /// did not bring and nothing wrote since it began (versions the master no longer has).
    pub last: bool,
    pub records: Vec<(Digest, Record)>,
}

impl Chunk {
    /// Epoch, namespace (length-prefixed), partition, start time, last flag, record count,
    /// then each digest and its length-prefixed storage encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(self.namespace.len() as u8);
        out.extend_from_slice(self.namespace.as_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.started_ms.to_be_bytes());
        out.push(u8::from(self.last));
        out.extend_from_slice(&(self.records.len() as u32).to_be_bytes());
        for (digest, record) in &self.records {
            let encoded = record::encode(record);
            out.extend_from_slice(&digest.0);
            out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            out.extend_from_slice(&encoded);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (epoch, rest) = bytes.split_first_chunk::<8>()?;
        let (&ns_len, rest) = rest.split_first()?;
        let (namespace, rest) = rest.split_at_checked(usize::from(ns_len))?;
        let (partition, rest) = rest.split_first_chunk::<2>()?;
        let (started_ms, rest) = rest.split_first_chunk::<8>()?;
        let (&last, rest) = rest.split_first()?;
        let (count, mut rest) = rest.split_first_chunk::<4>()?;
        let count = u32::from_be_bytes(*count) as usize;
        // Each record takes at least 24 bytes: a lying count cannot reserve more than the body.
        let mut records = Vec::with_capacity(count.min(rest.len() / 24));
        for _ in 0..count {
            let (digest, tail) = rest.split_first_chunk::<20>()?;
            let (len, tail) = tail.split_first_chunk::<4>()?;
            let (encoded, tail) = tail.split_at_checked(u32::from_be_bytes(*len) as usize)?;
            records.push((Digest(*digest), record::decode(encoded).ok()?));
            rest = tail;
        }
        if !rest.is_empty() {
            return None;
        }
        Some(Self {
            epoch: u64::from_be_bytes(*epoch),
            namespace: std::str::from_utf8(namespace).ok()?.to_owned(),
            partition: u16::from_be_bytes(*partition),
            started_ms: u64::from_be_bytes(*started_ms),
            last: match last {
                0 => false,
                1 => true,
                _ => return None,
            },
            records,
        })
    }
}

/// A partition pushed to a node, at the epoch the push started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pushed {
    to: NodeId,
    namespace: String,
    partition: u16,
    since: u64,
}

/// Pushes partitions to the nodes being filled for as long as the node runs.
pub async fn run(state: Arc<NodeState>) {
    let mut pushes: JoinSet<(Pushed, bool)> = JoinSet::new();
    let mut in_flight: BTreeSet<(NodeId, String, u16)> = BTreeSet::new();
    let mut filled: Vec<Pushed> = Vec::new();
    let budget = Arc::new(tokio::sync::Semaphore::new(0));
    let mut ticks = tokio::time::interval(ROUND);
    // The epoch that records the last proposed fills.
    let mut recorded_at = 0;
    let mut dropped_at = tokio::time::Instant::now();
    let mut kept = Kept::default();
    loop {
        if dropped_at.elapsed() >= DROP_EVERY {
            dropped_at = tokio::time::Instant::now();
            if let Err(error) = drop_unheld(&state, &mut kept).await {
                tracing::warn!(%error, "could not drop copies this node no longer holds");
            }
        }
        tokio::select! {
            _ = ticks.tick() => {
                // Refill the records-per-second budget (at most one second's worth banked).
                let refill = (RECORDS_PER_SEC * ROUND.as_millis() as u64 / 1000) as usize;
                let room = (RECORDS_PER_SEC as usize).saturating_sub(budget.available_permits());
                budget.add_permits(refill.min(room));
                if !filled.is_empty() {
                    recorded_at = recorded_at.max(propose_filled(&state, &mut filled).await);
                }
            }
            Some(done) = pushes.join_next(), if !pushes.is_empty() => {
                // A push that failed or is no longer wanted is found again by a later round
                // if the view still asks for it.
                if let Ok((pushed, complete)) = done {
                    in_flight.remove(&(pushed.to.clone(), pushed.namespace.clone(), pushed.partition));
                    if complete {
                        filled.push(pushed);
                    }
                }
            }
        }
        let view = state.cluster();
        if view.epoch() < recorded_at {
            // What was just recorded is not in this node's view yet: it would push it again.
            continue;
        }
        let me = &state.this_node().id;
        'work: for ns in &state.site().namespaces {
            let ns = ns.name.as_str();
            for partition in 0..PARTITIONS {
                if pushes.len() >= PARALLEL {
                    break 'work;
                }
                let Some(copies) = view.copies(ns, partition) else { continue };
                if copies.master() != me {
                    continue;
                }
                for to in &copies.filling {
                    let key = (to.clone(), ns.to_owned(), partition);
                    let already = filled
                        .iter()
                        .any(|f| f.to == *to && f.namespace == ns && f.partition == partition);
                    if already || !in_flight.insert(key) {
                        continue;
                    }
                    let pushed = Pushed {
                        to: to.clone(),
                        namespace: ns.to_owned(),
                        partition,
                        since: view.epoch(),
                    };
                    pushes.spawn(push(Arc::clone(&state), pushed, Arc::clone(&budget)));
                }
            }
        }
        state.migrations.migrating.store(pushes.len() as u64, Ordering::Relaxed);
    }
}

/// Has the membership group record what was filled; keeps what it could not propose.
/// Returns the epoch after the last change recorded (0 if none).
async fn propose_filled(state: &NodeState, filled: &mut Vec<Pushed>) -> u64 {
    let mut recorded_at = 0;
    let Some(member) = state.member.get() else {
        filled.clear();
        return recorded_at;
    };
    let mut by_target: BTreeMap<(NodeId, String, u64), Vec<u16>> = BTreeMap::new();
    for pushed in filled.drain(..) {
        by_target
            .entry((pushed.to, pushed.namespace, pushed.since))
            .or_default()
            .push(pushed.partition);
    }
    for ((to, namespace, since), partitions) in by_target {
        let count = partitions.len();
        let intent = Intent::Filled {
            node: to.to_string(),
            namespace: namespace.clone(),
            partitions: partitions.clone(),
            since,
        };
        match member.propose(intent).await {
            Ok(epoch) => {
                recorded_at = recorded_at.max(epoch);
                tracing::info!(node = %to, namespace, partitions = count, epoch, "migrations recorded");
            }
            Err(error) => {
                tracing::warn!(node = %to, %error, "could not record migrations; retrying");
                filled.extend(partitions.into_iter().map(|partition| Pushed {
                    to: to.clone(),
                    namespace: namespace.clone(),
                    partition,
                    since,
                }));
            }
        }
    }
    recorded_at
}

/// Pushes one partition to one node; true once every record is durable there and the view
/// still asks for it.
async fn push(
    state: Arc<NodeState>,
    pushed: Pushed,
    budget: Arc<tokio::sync::Semaphore>,
) -> (Pushed, bool) {
    let complete = push_records(&state, &pushed, &budget).await.is_some();
    (pushed, complete)
}

async fn push_records(
    state: &NodeState,
    pushed: &Pushed,
    budget: &tokio::sync::Semaphore,
) -> Option<()> {
    let view = state.cluster();
    let node = view.site_node(&pushed.to)?.clone();
    let ns = pushed.namespace.as_str();
    let started_ms = record::now_ms();
    let mut after: Option<Digest> = None;
    loop {
        let mut records: Vec<(Digest, Record)> = Vec::new();
        let mut bytes = 0;
        let mut last = true;
        for item in state.store.scan_partition(ns, pushed.partition, after.as_ref()).ok()? {
            let (digest, record) = item.ok()?;
            bytes += record::encoded_len(&record);
            records.push((digest, record));
            if records.len() >= CHUNK || bytes >= CHUNK_BYTES {
                last = false;
                break;
            }
        }
        if let Some((digest, _)) = records.last() {
            after = Some(*digest);
        }
        // The last chunk goes even when empty: it tells the receiver the push is complete.
        if !records.is_empty() || last {
            let count = records.len();
            budget.acquire_many(count as u32).await.ok()?.forget();
            let chunk = Chunk {
                epoch: pushed.since,
                namespace: pushed.namespace.clone(),
                partition: pushed.partition,
                started_ms,
                last,
                records,
            };
            let request = fabric::frame(Kind::Migrate, &chunk.encode());
            let reply =
                state.fabric().exchange(state.fabric_addr(&node), &request, CHUNK_TIMEOUT).await;
            let status = reply.ok().and_then(|reply| {
                fabric::payload(&reply, Kind::Migrate).ok().and_then(ReplicaStatus::decode)
            });
            if status != Some(ReplicaStatus::Stored) {
                tracing::debug!(to = %pushed.to, partition = pushed.partition, ?status, "migration chunk not stored");
                return None;
            }
            state.migrations.records_sent.fetch_add(count as u64, Ordering::Relaxed);
            state.migrations.bytes_sent.fetch_add(request.len() as u64, Ordering::Relaxed);
        }
        if last {
            // Only if the view still asks for it: a newer epoch may have changed the plan.
            let now = state.cluster();
            let wanted = now.copies(ns, pushed.partition).is_some_and(|c| {
                *c.master() == state.this_node().id && c.filling.contains(&pushed.to)
            });
            state.migrations.partitions_sent.fetch_add(1, Ordering::Relaxed);
            return wanted.then_some(());
        }
    }
}

/// Partitions whose records a drop pass had to keep (their changes not shipped yet), at one
/// epoch: not read again until the epoch changes or [`KEPT_FOR`] passed.
#[derive(Debug)]
struct Kept {
    epoch: u64,
    since: tokio::time::Instant,
    partitions: BTreeSet<(String, u16)>,
}

impl Default for Kept {
    fn default() -> Self {
        Self { epoch: 0, since: tokio::time::Instant::now(), partitions: BTreeSet::new() }
    }
}

/// Removes the records of partitions this node neither holds nor is being filled for, once
/// their copies are settled (every placed node full): after a migration moved them away. A
/// record whose own change this node has not shipped yet stays until every link has (with a
/// single copy lost and back, this node may be the only one that ever held it). At most
/// [`DROP_MAX`] records per call.
async fn drop_unheld(state: &NodeState, kept: &mut Kept) -> Result<(), crate::storage::StoreError> {
    let view = state.cluster();
    let me = &state.this_node().id;
    if kept.epoch != view.epoch() || kept.since.elapsed() >= KEPT_FOR {
        *kept = Kept { epoch: view.epoch(), since: tokio::time::Instant::now(), ..Kept::default() };
    }
    let mut dropped = 0;
    for ns in state.store.namespace_names() {
        let shipped = crate::reclaim::Shipped::of(state, &ns)?;
        for partition in 0..PARTITIONS {
            let Some(copies) = view.copies(&ns, partition) else { continue };
            if !copies.filling.is_empty()
                || copies.full.contains(me)
                || kept.partitions.contains(&(ns.clone(), partition))
            {
                continue;
            }
            let before = dropped;
            let records: Vec<(Digest, Record)> = state
                .store
                .scan_partition(&ns, partition, None)?
                .take(DROP_MAX - dropped)
                .collect::<Result<_, _>>()?;
            for (digest, record) in &records {
                if !record.logged_lsn.is_none_or(|lsn| shipped.everywhere(digest, lsn)) {
                    continue;
                }
                let _guard = state.store.lock(digest).await;
                // The view may have changed meanwhile: only drop while it still says so.
                if state.cluster().epoch() != view.epoch() {
                    return Ok(());
                }
                state.store.remove(&ns, digest)?;
                dropped += 1;
            }
            if !records.is_empty() && dropped == before {
                kept.partitions.insert((ns.clone(), partition));
            }
            if dropped >= DROP_MAX {
                break;
            }
        }
        state.store.commit(&ns).await?;
    }
    if dropped > 0 {
        tracing::info!(
            dropped,
            epoch = view.epoch(),
            "dropped copies of partitions held elsewhere"
        );
        state.migrations.records_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Clocks of a site's nodes may differ by this much: a version written this close to a push's
/// start may have been written since it began, and one this close to the tombstone window's
/// edge is not trusted to be inside it.
const CLOCK_MARGIN_MS: u64 = 5_000;

impl NodeState {
    /// After the last chunk of a push, settles what this node holds of the partition that the
    /// push did not bring, or brought in an older version:
    /// - a version recent enough that a delete after it would still have its tombstone at the
    ///   master (`tombstone-ttl`) is one the master never had, or has older: a write stored
    ///   here that never reached a copy before this node crashed (so never acknowledged),
    ///   which may have shipped to other sites since. It is merged into the master, which
    ///   keeps it if it wins there and ships it, so the site and its peers agree;
    /// - an older one the push did not bring is a version the master no longer has, such as a
    ///   record deleted while this node was away whose tombstone is gone: it is dropped once
    ///   its own change has shipped everywhere.
    async fn settle_not_brought(
        &self,
        ns: &str,
        partition: u16,
        brought: &HashMap<Digest, VersionStamp>,
        started_ms: u64,
    ) -> Result<(), String> {
        let tombstone_ttl_ms = self.namespace(ns).map_or(0, |n| u64::from(n.tombstone_ttl) * 1000);
        let merge_from = (started_ms + CLOCK_MARGIN_MS).saturating_sub(tombstone_ttl_ms);
        let drop_before = started_ms.saturating_sub(CLOCK_MARGIN_MS);
        let shipped = crate::reclaim::Shipped::of(self, ns).map_err(|e| e.to_string())?;
        let now_secs = record::now_citrusleaf_secs();
        let stale = |digest: &Digest, r: &Record| {
            !brought.contains_key(digest)
                && r.last_update_ms < drop_before.min(merge_from)
                && r.logged_lsn.is_none_or(|lsn| shipped.everywhere(digest, lsn))
        };
        let mut after = None;
        let (mut merged, mut dropped) = (0u64, 0u64);
        loop {
            let chunk: Vec<(Digest, Record)> = self
                .store
                .scan_partition(ns, partition, after.as_ref())
                .map_err(|e| e.to_string())?
                .take(CHUNK)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let exhausted = chunk.len() < CHUNK;
            let mut merging = Vec::new();
            for (digest, record) in chunk {
                after = Some(digest);
                let merge = match brought.get(&digest) {
                    Some(stamp) => *stamp != record.stamp(),
                    None => !record.expired(now_secs) && record.last_update_ms >= merge_from,
                };
                if merge {
                    merging.push((digest, record));
                    continue;
                }
                if !stale(&digest, &record) {
                    continue;
                }
                let _guard = self.store.lock(&digest).await;
                let current = self.store.get(ns, &digest).map_err(|e| e.to_string())?;
                if current.is_some_and(|r| stale(&digest, &r)) {
                    self.store.remove(ns, &digest).map_err(|e| e.to_string())?;
                    dropped += 1;
                }
            }
            merged += merging.len() as u64;
            self.merge_into_master(ns, partition, merging).await?;
            if exhausted {
                break;
            }
        }
        if merged > 0 || dropped > 0 {
            tracing::info!(
                namespace = ns,
                partition,
                merged,
                dropped,
                "settled versions the master did not have"
            );
            self.migrations.records_merged.fetch_add(merged, Ordering::Relaxed);
            self.migrations.records_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends versions of `partition` to its master, which keeps those that win there (see
    /// [`NodeState::receive_merge`]); resolves once the master and its copies hold them.
    async fn merge_into_master(
        &self,
        ns: &str,
        partition: u16,
        mut records: Vec<(Digest, Record)>,
    ) -> Result<(), String> {
        while !records.is_empty() {
            let mut bytes = 0;
            let count = records
                .iter()
                .take_while(|(_, r)| {
                    bytes += record::encoded_len(r);
                    bytes <= CHUNK_BYTES
                })
                .count()
                .max(1);
            let rest = records.split_off(count);
            let view = self.cluster();
            let master = view
                .copies(ns, partition)
                .map(|c| c.master().clone())
                .ok_or_else(|| format!("namespace '{ns}' has no partition map here"))?;
            let node = view
                .site_node(&master)
                .ok_or_else(|| format!("master {master} is not a node of this site"))?;
            let chunk = Chunk {
                epoch: view.epoch(),
                namespace: ns.to_owned(),
                partition,
                started_ms: record::now_ms(),
                last: false,
                records,
            };
            let request = fabric::frame(Kind::Merge, &chunk.encode());
            let reply = self
                .fabric()
                .exchange(self.fabric_addr(node), &request, CHUNK_TIMEOUT)
                .await
                .map_err(|e| format!("merge into master {master}: {e}"))?;
            let status = fabric::payload(&reply, Kind::Merge).ok().and_then(ReplicaStatus::decode);
            if status != Some(ReplicaStatus::Stored) {
                return Err(format!("merge into master {master}: it answered {status:?}"));
            }
            records = rest;
        }
        Ok(())
    }

    /// Takes versions of a partition this node masters from a copy that held them when the
    /// master's push did not bring them (see [`NodeState::settle_not_brought`]): each is kept
    /// if it wins against the version here, logged as this node's change (so it ships) and
    /// sent to the other copies. Returns the encoded status once that is durable everywhere.
    pub(crate) async fn receive_merge(&self, request: &[u8]) -> Vec<u8> {
        let Some(chunk) = Chunk::decode(request) else {
            tracing::warn!("undecodable merge request");
            return crate::replica::refused();
        };
        let status = match self.merge(chunk).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(%error, "versions from a copy not merged");
                ReplicaStatus::Failed
            }
        };
        status.encode()
    }

    async fn merge(&self, chunk: Chunk) -> Result<ReplicaStatus, String> {
        let ns = chunk.namespace.as_str();
        // A view older than the sender's still decides: this node stores only while it masters
        // the partition under its write lease. Refusing it would restart the whole push each time
        // this node learned an epoch late.
        let view = self.await_epoch(chunk.epoch).await;
        let masters =
            view.copies(ns, chunk.partition).is_some_and(|c| *c.master() == self.this_node().id);
        if self.namespace(ns).is_none()
            || chunk.records.iter().any(|(digest, _)| partition_of(&digest.0) != chunk.partition)
        {
            return Ok(ReplicaStatus::Refused);
        }
        if !masters {
            return Ok(ReplicaStatus::StaleEpoch(view.epoch()));
        }
        // A master cut off from its site's majority stores nothing.
        if !self.write_lease().await {
            return Err("this node is cut off from its site's majority".to_owned());
        }
        self.store.writable().map_err(|e| e.to_string())?;
        // By this node's clock: a version older than this that has nothing here may be one
        // whose delete's tombstone this node already reclaimed, and stays out.
        let tombstone_ttl_ms = self.namespace(ns).map_or(0, |n| u64::from(n.tombstone_ttl) * 1000);
        let absent_from = (record::now_ms() + CLOCK_MARGIN_MS).saturating_sub(tombstone_ttl_ms);
        let now_secs = record::now_citrusleaf_secs();
        let mut stored = Vec::new();
        for (digest, record) in chunk.records {
            if record.last_update_ms < self.store.truncation_cutoff(ns, &record.set)
                || record.expired(now_secs)
            {
                continue;
            }
            let logging = Logging::AsMaster { absent_from };
            if let Some(record) = self.store_copy(ns, &digest, record, logging).await? {
                stored.push((digest, record));
            }
        }
        if !stored.is_empty() {
            self.store.commit(ns).await.map_err(|e| e.to_string())?;
            tracing::info!(
                namespace = ns,
                partition = chunk.partition,
                merged = stored.len(),
                "kept versions a copy held that this master did not"
            );
        }
        for (digest, record) in &stored {
            self.replicate(ns, digest, record).await.map_err(|e| e.to_string())?;
        }
        Ok(ReplicaStatus::Stored)
    }

    /// Stores a chunk of a partition pushed here; returns the encoded status once durable.
    pub(crate) async fn receive_migration(&self, request: &[u8]) -> Vec<u8> {
        let Some(chunk) = Chunk::decode(request) else {
            tracing::warn!("undecodable migration chunk");
            return crate::replica::refused();
        };
        let ns = chunk.namespace.as_str();
        // Stored under a view at least as new as the push: this node's drop pass never sees
        // it as a partition it does not hold.
        let view = self.await_epoch(chunk.epoch).await;
        let me = &self.this_node().id;
        // Taken while this node is placed for the partition (a push is not void because other
        // partitions settled meanwhile), unless it came back after the push began.
        let wanted = view
            .copies(ns, chunk.partition)
            .is_some_and(|c| c.filling.contains(me) || c.full.contains(me))
            && view
                .membership()
                .readmitted
                .get(me.as_str())
                .is_none_or(|&back| back <= chunk.epoch);
        let status = if view.epoch() < chunk.epoch {
            ReplicaStatus::StaleEpoch(view.epoch())
        } else if self.namespace(ns).is_none() || !wanted {
            ReplicaStatus::Refused
        } else {
            let count = chunk.records.len() as u64;
            let key = (chunk.namespace.clone(), chunk.partition);
            // A push that began at another time (an abandoned one) starts the set over.
            let mut brought = {
                let mut receiving =
                    self.migrations.receiving.lock().unwrap_or_else(|e| e.into_inner());
                receiving
                    .remove(&key)
                    .filter(|(started, _)| *started == chunk.started_ms)
                    .map(|(_, brought)| brought)
                    .unwrap_or_default()
            };
            brought.extend(chunk.records.iter().map(|(digest, record)| (*digest, record.stamp())));
            let mut stored = Ok(());
            for (digest, record) in chunk.records {
                if record.last_update_ms < self.store.truncation_cutoff(ns, &record.set) {
                    continue;
                }
                stored = self.store_copy(ns, &digest, record, Logging::Not).await.map(drop);
                if stored.is_err() {
                    break;
                }
            }
            // A partition that started over empty while this node was away: what this node
            // holds of it is the only copy of those records, to keep (it will master them).
            let restarted = view
                .membership()
                .restarted
                .get(ns)
                .is_some_and(|partitions| partitions.contains_key(&chunk.partition));
            if stored.is_ok() && chunk.last && !restarted {
                stored =
                    self.settle_not_brought(ns, chunk.partition, &brought, chunk.started_ms).await;
            } else if stored.is_ok() {
                let mut receiving =
                    self.migrations.receiving.lock().unwrap_or_else(|e| e.into_inner());
                receiving.insert(key, (chunk.started_ms, brought));
            }
            match stored.and(self.store.commit(ns).await.map_err(|e| e.to_string())) {
                Ok(()) => {
                    self.migrations.records_received.fetch_add(count, Ordering::Relaxed);
                    ReplicaStatus::Stored
                }
                Err(error) => {
                    tracing::error!(%error, namespace = ns, "migration chunk not stored");
                    ReplicaStatus::Failed
                }
            }
        };
        status.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_refuse_truncation_and_trailing_bytes() {
        let record = Record {
            generation: 2,
            last_update_ms: 1_700_000_000_500,
            created_ms: 1_700_000_000_000,
            void_time: 0,
            origin_site: 1,
            tombstone: true,
            set: "s".into(),
            key: None,
            bins: Vec::new(),
            logged_lsn: None,
        };
        let chunk = Chunk {
            epoch: 4,
            namespace: "test".into(),
            partition: 7,
            started_ms: 1_700_000_000_000,
            last: true,
            records: vec![(Digest([1; 20]), record.clone()), (Digest([2; 20]), record)],
        };
        let bytes = chunk.encode();
        assert_eq!(Chunk::decode(&bytes), Some(chunk));
        for cut in 0..bytes.len() {
            assert_eq!(Chunk::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(Chunk::decode(&longer), None);
    }
}
