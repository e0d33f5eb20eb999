//! One attempt to ship a batch, as the shipper's shell runs it: read the current version of
//! each record, group them by the destination node that owns them, cut each group into frames
//! the receiver accepts, send, and settle every acknowledgement. A record the destination
//! refuses for good — named in the acknowledgement, or found by resending a refused batch one
//! record at a time — is parked durably before the attempt reports success, so the cursor
//! never passes a change that was neither applied nor parked. The operator's retry and discard
//! of parked records run here too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use ferry_digestlog::Digest;
use ferry_topology::model::NodeId;
use ferry_transport::{Client, DEFAULT_MAX_PAYLOAD, Frame, TransportError};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::ack::{self, Ack, AckError};
use crate::batch::{Batch, Compression, ShippedRecord};
use crate::engine::{Cause, Change, Outcome};
use crate::parked::{MAX_PARKED, ParkedIndex, ParkedRecord, ParkedSummary};
use crate::plan::LinkPlan;
use crate::ship::{LocalRecord, LocalRecords, now_ms};
use crate::sitemap::SiteMap;

/// Largest payload of one frame, before compression: well under the transport's frame cap,
/// and a record up to the largest `max-record-size` (8 MiB) still fits alone.
pub const MAX_FRAME_RECORDS_BYTES: usize = 4 << 20;

/// Batch id of the operator's retries of parked records (log and recovery batches never
/// reach it).
const RETRY_ID: u64 = u64::MAX;

/// A store error, once the shell no longer needs its type.
pub type StoreFailure = Box<dyn std::error::Error + Send + Sync>;

/// Why one attempt to ship a batch failed (the engine retries it).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("read local record: {0}")]
    ReadRecord(#[source] StoreFailure),
    #[error("partition {partition} of namespace '{namespace}' has no node at the destination")]
    NoDestination { namespace: String, partition: u16 },
    #[error("send task failed")]
    SendTask,
    #[error(
        "acknowledgement of batch {acked} for {acked_records} records, sent batch {sent} with {records}"
    )]
    Mismatch { acked: u64, acked_records: u64, sent: u64, records: usize },
    #[error("acknowledgement refuses record {0}, which the batch did not carry")]
    UnknownRefusal(Digest),
    #[error("bad acknowledgement: {0}")]
    Ack(#[from] AckError),
    #[error(transparent)]
    Transport(TransportError),
    #[error("park refused records: {0}")]
    Park(#[source] StoreFailure),
    #[error("{MAX_PARKED} records are parked already; retry or discard them")]
    ParkedFull,
}

impl AttemptError {
    /// Which retry counter the failure feeds.
    pub fn cause(&self) -> Cause {
        match self {
            AttemptError::Transport(error) if !matches!(error, TransportError::Remote { .. }) => {
                Cause::Connection
            }
            _ => Cause::Destination,
        }
    }
}

/// What the shipper's I/O tasks share.
pub struct Shared<R> {
    pub plan: Arc<LinkPlan>,
    pub records: Arc<R>,
    pub clients: BTreeMap<NodeId, Client>,
    pub compression: Compression,
    /// The link's parked records; the lock serializes every change of the list.
    parked: tokio::sync::Mutex<ParkedIndex>,
    /// What the gauges show of them.
    parked_summary: Mutex<ParkedSummary>,
    /// Destination nodes that did not answer, and since when: their records go to another
    /// node of the site, which hands them to whoever owns them there now.
    unreachable: Mutex<BTreeMap<NodeId, std::time::Instant>>,
    /// The destination site's masters as it last told them.
    learned: Arc<Mutex<Learned>>,
}

/// How long a destination node that did not answer is passed over before it is tried again.
const UNREACHABLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a shipper waits for the destination's map, and then before it asks again.
const MAP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the shipper knows of the destination site's current partition map.
#[derive(Debug)]
struct Learned {
    map: Option<Arc<SiteMap>>,
    /// Ask again: none learned yet, an acknowledgement showed a newer epoch, or a destination
    /// node stopped answering.
    stale: bool,
    /// Whether an ask is out, and when the last one went.
    asking: bool,
    asked: Option<std::time::Instant>,
    /// Which destination node the next ask goes to (round robin past nodes that fail).
    turn: usize,
}

impl Learned {
    /// Takes the destination's answer.
    fn take(&mut self, dc: &str, node: &NodeId, answer: Result<Frame, ()>) {
        self.asking = false;
        let frame = match answer {
            Ok(frame) if frame.frame_type == ack::frame_type(ack::MAP) => frame,
            // A destination that does not serve maps (an older build): routed by placement.
            Ok(_) => {
                tracing::debug!(dc, %node, "the destination serves no map");
                self.stale = false;
                return;
            }
            // Silent or unreachable: the next ask goes to another node.
            Err(()) => {
                self.turn = self.turn.wrapping_add(1);
                return;
            }
        };
        let map = match SiteMap::decode(&frame.payload) {
            Ok(map) => map,
            Err(error) => {
                tracing::warn!(dc, %node, %error, "unusable partition map");
                self.turn = self.turn.wrapping_add(1);
                return;
            }
        };
        // Epoch 0: the node does not know its site's map yet; ask another.
        if map.epoch == 0 {
            self.turn = self.turn.wrapping_add(1);
            return;
        }
        if self.map.as_ref().is_none_or(|known| known.epoch != map.epoch) {
            tracing::info!(dc, epoch = map.epoch, "learned the destination's partition map");
        }
        // The destination's word is final, even for an older epoch (a site formed again).
        self.map = Some(Arc::new(map));
        self.stale = false;
    }
}

impl<R> std::fmt::Debug for Shared<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dc", &self.plan.dc()).finish_non_exhaustive()
    }
}

/// What an attempt or a retry decided about parked records; applied in one durable update.
#[derive(Debug, Default)]
struct Parking {
    park: Vec<ParkedRecord>,
    /// Records that shipped (or have nothing left to ship): unparked if they were parked.
    settled: Vec<(String, Digest)>,
}

impl Parking {
    fn park(&mut self, namespace: &str, record: &ShippedRecord, reason: String) {
        self.park.push(ParkedRecord {
            namespace: namespace.to_owned(),
            digest: record.digest,
            set: record.set.clone(),
            lut_ms: record.stamp.last_update_ms,
            reason,
            parked_at_ms: now_ms(),
        });
    }
}

impl<R: LocalRecords> Shared<R> {
    /// The shared state of a link's shipper; its parked list is empty until
    /// [`Shared::load_parked`].
    pub fn new(
        plan: Arc<LinkPlan>,
        records: Arc<R>,
        clients: BTreeMap<NodeId, Client>,
        compression: Compression,
    ) -> Shared<R> {
        Shared {
            plan,
            records,
            clients,
            compression,
            parked: tokio::sync::Mutex::new(ParkedIndex::default()),
            parked_summary: Mutex::new(ParkedSummary::default()),
            unreachable: Mutex::new(BTreeMap::new()),
            learned: Arc::new(Mutex::new(Learned {
                map: None,
                stale: true,
                asking: false,
                asked: None,
                turn: 0,
            })),
        }
    }

    /// Reads the link's parked list as the store holds it.
    pub async fn load_parked(&self) -> Result<(), StoreFailure> {
        let (store, dc) = (Arc::clone(&self.records), self.plan.dc().to_owned());
        let parked = tokio::task::spawn_blocking(move || store.parked(&dc))
            .await
            .map_err(StoreFailure::from)?
            .map_err(|e| StoreFailure::from(Box::new(e)))?;
        let index = ParkedIndex::new(&parked);
        *self.parked_summary.lock().unwrap_or_else(PoisonError::into_inner) = index.summary();
        *self.parked.lock().await = index;
        Ok(())
    }

    /// How much is parked now.
    pub fn parked_summary(&self) -> ParkedSummary {
        *self.parked_summary.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `parking` durable and current: parks its refused records, unparks the settled
    /// ones that were parked. Returns how many were unparked.
    async fn apply_parking(&self, parking: Parking) -> Result<u64, AttemptError> {
        let mut index = self.parked.lock().await;
        let unparked: Vec<(String, Digest)> = if index.summary().count == 0 {
            Vec::new()
        } else {
            parking.settled.into_iter().filter(|(ns, digest)| index.contains(ns, digest)).collect()
        };
        let park = parking.park;
        if park.is_empty() && unparked.is_empty() {
            return Ok(0);
        }
        if index.summary().count + park.len() as u64 > MAX_PARKED {
            return Err(AttemptError::ParkedFull);
        }
        let (store, dc) = (Arc::clone(&self.records), self.plan.dc().to_owned());
        let (park, unparked) = tokio::task::spawn_blocking(move || {
            store.update_parked(&dc, &park, &unparked).map(|()| (park, unparked))
        })
        .await
        .map_err(|e| AttemptError::Park(e.into()))?
        .map_err(|e| AttemptError::Park(Box::new(e)))?;
        for record in &park {
            tracing::error!(
                dc = self.plan.dc(),
                namespace = record.namespace,
                digest = %record.digest,
                set = record.set,
                reason = record.reason,
                "record parked: the destination refuses it for good"
            );
            index.insert(record);
        }
        for (namespace, digest) in &unparked {
            index.remove(namespace, digest);
        }
        *self.parked_summary.lock().unwrap_or_else(PoisonError::into_inner) = index.summary();
        Ok(unparked.len() as u64)
    }

    /// Ships every parked record again (its current version); what the destination takes is
    /// unparked, what it refuses stays parked with the new reason. A batch that fails (the
    /// destination is unreachable, say) is sent again after `backoff` until it goes through.
    /// Returns how many were unparked.
    pub async fn retry_parked(
        &self,
        batch_records: usize,
        backoff: ferry_transport::Backoff,
    ) -> Result<u64, AttemptError> {
        let (store, dc) = (Arc::clone(&self.records), self.plan.dc().to_owned());
        let parked = tokio::task::spawn_blocking(move || store.parked(&dc))
            .await
            .map_err(|e| AttemptError::Park(e.into()))?
            .map_err(|e| AttemptError::Park(Box::new(e)))?;
        let changes: Vec<Change> = parked
            .iter()
            .filter_map(|record| {
                let ns = self.plan.namespaces.iter().position(|n| n.name == *record.namespace)?;
                // Parked here, so this node shipped it: it is this node's to ship again.
                let copy_only = false;
                Some(Change { ns, digest: record.digest, oldest_lut_ms: record.lut_ms, copy_only })
            })
            .collect();
        let mut unparked = 0;
        for chunk in changes.chunks(batch_records.max(1)) {
            let mut failures = 0;
            loop {
                match self.attempt(RETRY_ID, chunk).await {
                    Ok(outcome) => {
                        unparked += outcome.unparked;
                        break;
                    }
                    Err(error) => {
                        failures += 1;
                        let delay = backoff.delay(failures, rand::random::<f64>());
                        tracing::warn!(dc = self.plan.dc(), %error, retry_in_ms = delay.as_millis() as u64, "retry of parked records failed; trying again");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        Ok(unparked)
    }

    /// Drops every parked record (the operator accepts the destination will not have them).
    /// Returns how many were dropped.
    pub async fn discard_parked(&self) -> Result<u64, AttemptError> {
        let keys = self.parked.lock().await.keys();
        let settled = keys.clone();
        let dropped = self.apply_parking(Parking { park: Vec::new(), settled }).await?;
        for (namespace, digest) in &keys {
            tracing::warn!(dc = self.plan.dc(), namespace, %digest, "parked record discarded");
        }
        Ok(dropped)
    }

    /// One attempt: read the current records, group them by destination, send every group,
    /// park what the destination refuses for good. Traced as an `xdr.batch` span with its
    /// `xdr.read` and `xdr.send` (encode, then `xdr.ack`) children.
    pub async fn attempt(&self, id: u64, changes: &[Change]) -> Result<Outcome, AttemptError> {
        let plan = &self.plan;
        let span = tracing::debug_span!(
            "xdr.batch",
            site = %plan.link.from,
            link = %plan.link.to,
            batch = id,
            changes = changes.len()
        );
        self.attempt_traced(id, changes).instrument(span).await
    }

    async fn attempt_traced(&self, id: u64, changes: &[Change]) -> Result<Outcome, AttemptError> {
        let plan = &self.plan;
        let mut outcome = Outcome::default();
        let mut parking = Parking::default();
        self.learn_map();
        let groups = self
            .read_changes(changes, &mut outcome, &mut parking)
            .instrument(tracing::debug_span!("xdr.read", changes = changes.len()))
            .await?;
        let namespaces: std::collections::BTreeSet<usize> =
            groups.keys().map(|(ns, _)| *ns).collect();
        for ns in namespaces {
            let namespace = &plan.namespaces[ns].name;
            self.records
                .durable(namespace)
                .await
                .map_err(|e| AttemptError::ReadRecord(Box::new(e)))?;
        }
        let mut sends = JoinSet::new();
        for ((ns, owner), records) in groups {
            let node = self.reachable(&owner);
            let Some(client) = self.clients.get(&node).cloned() else {
                return Err(AttemptError::NoDestination {
                    namespace: plan.namespaces[ns].name.to_string(),
                    partition: ferry_topology::placement::partition_of(&records[0].digest),
                });
            };
            for records in frames(records) {
                let batch = Batch {
                    id,
                    source_site: plan.local_site_id,
                    namespace: plan.namespaces[ns].name.to_string(),
                    records,
                };
                let (client, compression) = (client.clone(), self.compression);
                let span = tracing::debug_span!(
                    "xdr.send",
                    destination = %node,
                    records = batch.records.len(),
                    wire_bytes = tracing::field::Empty
                );
                let node = node.clone();
                sends.spawn(
                    async move {
                        let (reply, size) = send(&client, &batch, compression).await;
                        (ns, node, client, batch, reply, size)
                    }
                    .instrument(span),
                );
            }
        }
        let mut failure = None;
        while let Some(joined) = sends.join_next().await {
            let Ok((ns, node, client, batch, reply, size)) = joined else {
                failure = Some(AttemptError::SendTask);
                continue;
            };
            if let Err(error) = &reply
                && !matches!(error, TransportError::Remote { .. })
            {
                self.pass_over(&node);
            }
            outcome.bytes_raw += size.0;
            outcome.bytes_wire += size.1;
            let settled = match reply {
                Err(TransportError::Remote { retryable: false, message, .. }) => {
                    self.isolate(ns, &client, batch, message, &mut outcome, &mut parking).await
                }
                reply => settle(ns, &batch, reply, &mut outcome, &mut parking)
                    .map(|epoch| self.heard_epoch(epoch)),
            };
            if let Err(error) = settled {
                failure = Some(error);
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        outcome.unparked = self.apply_parking(parking).await?;
        Ok(outcome)
    }

    /// The node to send `owner`'s records to: `owner` unless it did not answer lately, then
    /// the next destination node that did (any node of the site hands records to their
    /// owner), or `owner` again when none did.
    fn reachable(&self, owner: &NodeId) -> NodeId {
        let Ok(mut unreachable) = self.unreachable.lock() else { return owner.clone() };
        unreachable.retain(|_, since| since.elapsed() < UNREACHABLE_FOR);
        if !unreachable.contains_key(owner) {
            return owner.clone();
        }
        let after = self
            .clients
            .range::<NodeId, _>((std::ops::Bound::Excluded(owner), std::ops::Bound::Unbounded));
        let wrapped = after.chain(self.clients.range::<NodeId, _>(..owner));
        wrapped
            .map(|(node, _)| node)
            .find(|node| !unreachable.contains_key(*node))
            .cloned()
            .unwrap_or_else(|| owner.clone())
    }

    /// `node` did not answer: pass over it for a while (and learn who owns its partitions now).
    fn pass_over(&self, node: &NodeId) {
        if let Ok(mut unreachable) = self.unreachable.lock() {
            unreachable.entry(node.clone()).or_insert_with(std::time::Instant::now);
        }
        self.learned().stale = true;
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An acknowledgement came from a destination site at `epoch`: a newer epoch than the map
    /// the shipper knows means partitions moved there.
    fn heard_epoch(&self, epoch: u64) {
        let mut learned = self.learned();
        if learned.map.as_ref().is_some_and(|map| epoch > map.epoch) {
            learned.stale = true;
        }
    }

    /// Asks a destination node for its site's current map when the known one is stale, in
    /// the background (batches never wait for it; at most one ask at a time, one per
    /// [`MAP_PATIENCE`]). Without a map the shipper sends by the topology's placement, and the
    /// receivers forward what they do not master.
    fn learn_map(&self) {
        let (node, client) = {
            let mut learned = self.learned();
            let due = learned.asked.is_none_or(|at| at.elapsed() >= MAP_PATIENCE);
            if !learned.stale || learned.asking || !due || self.clients.is_empty() {
                return;
            }
            let Some((node, client)) = self.clients.iter().nth(learned.turn % self.clients.len())
            else {
                return;
            };
            learned.asking = true;
            learned.asked = Some(std::time::Instant::now());
            (node.clone(), client.clone())
        };
        let (learned, dc) = (Arc::clone(&self.learned), self.plan.dc().to_owned());
        tokio::spawn(async move {
            let request = Frame::new(ack::frame_type(ack::MAP), bytes::Bytes::new());
            let reply = tokio::time::timeout(MAP_PATIENCE, client.request(request)).await;
            let answer = match reply {
                Ok(Ok(frame)) => Ok(frame),
                // A refusal (an older build that knows no MAP) is an answer, not silence.
                Ok(Err(TransportError::Remote { .. })) => {
                    Ok(Frame::new(ack::frame_type(ack::ACK), bytes::Bytes::new()))
                }
                Ok(Err(_)) | Err(_) => Err(()),
            };
            learned.lock().unwrap_or_else(PoisonError::into_inner).take(&dc, &node, answer);
        });
    }

    /// The destination node of `digest` of namespace number `ns`: its master as the
    /// destination site last said, else as the topology places it.
    fn destination(&self, map: Option<&SiteMap>, ns: usize, digest: &Digest) -> Option<NodeId> {
        let namespace = &self.plan.namespaces.get(ns)?.name;
        let partition = ferry_topology::placement::partition_of(digest);
        let learned = map
            .and_then(|map| map.master(namespace.as_str(), partition))
            .and_then(|master| NodeId::try_from(master).ok())
            .filter(|node| self.clients.contains_key(node));
        learned.or_else(|| self.plan.destination(ns, digest).map(|d| d.id.clone()))
    }

    /// Reads the current version of every change and groups the records to ship by
    /// namespace and destination node.
    async fn read_changes(
        &self,
        changes: &[Change],
        outcome: &mut Outcome,
        parking: &mut Parking,
    ) -> Result<BTreeMap<(usize, NodeId), Vec<ShippedRecord>>, AttemptError> {
        let plan = &self.plan;
        let map = self.learned().map.clone();
        let mut groups: BTreeMap<(usize, NodeId), Vec<ShippedRecord>> = BTreeMap::new();
        for change in changes {
            let namespace = &plan.namespaces[change.ns].name;
            if change.copy_only && !self.records.masters(namespace, &change.digest) {
                // Another node of this site masters the partition and ships its changes.
                continue;
            }
            let found = self
                .records
                .read(namespace, &change.digest)
                .await
                .map_err(|e| AttemptError::ReadRecord(Box::new(e)))?;
            let record = match found {
                LocalRecord::Current(record) => record,
                LocalRecord::Gone => {
                    outcome.not_found += 1;
                    outcome.by_namespace.entry(change.ns).or_default().not_found += 1;
                    parking.settled.push((namespace.to_string(), change.digest));
                    continue;
                }
                LocalRecord::Unreadable(reason) => {
                    parking.park.push(ParkedRecord {
                        namespace: namespace.to_string(),
                        digest: change.digest,
                        set: String::new(),
                        lut_ms: change.oldest_lut_ms,
                        reason: format!("unreadable at the source: {reason}"),
                        parked_at_ms: now_ms(),
                    });
                    continue;
                }
            };
            if plan.admit_origin(record.stamp.origin_site).is_err()
                || plan.admit_set(&record.set).is_err()
            {
                outcome.filtered += 1;
                outcome.by_namespace.entry(change.ns).or_default().filtered_out += 1;
                continue;
            }
            let Some(destination) = self.destination(map.as_deref(), change.ns, &change.digest)
            else {
                return Err(AttemptError::NoDestination {
                    namespace: namespace.to_string(),
                    partition: ferry_topology::placement::partition_of(&change.digest),
                });
            };
            groups.entry((change.ns, destination)).or_default().push(record);
        }
        Ok(groups)
    }

    /// The destination refused `batch` as a whole and for good: sends its records one by one,
    /// so the one it cannot take is parked and the others apply.
    async fn isolate(
        &self,
        ns: usize,
        client: &Client,
        batch: Batch,
        message: String,
        outcome: &mut Outcome,
        parking: &mut Parking,
    ) -> Result<(), AttemptError> {
        if let [record] = batch.records.as_slice() {
            parking.park(
                &batch.namespace,
                record,
                format!("refused by the destination: {message}"),
            );
            return Ok(());
        }
        tracing::warn!(
            dc = self.plan.dc(),
            batch = batch.id,
            records = batch.records.len(),
            message,
            "destination refused a batch for good; sending its records one by one"
        );
        let Batch { id, source_site, namespace, records } = batch;
        for record in records {
            let single =
                Batch { id, source_site, namespace: namespace.clone(), records: vec![record] };
            let (reply, size) = send(client, &single, self.compression).await;
            outcome.bytes_raw += size.0;
            outcome.bytes_wire += size.1;
            match reply {
                Err(TransportError::Remote { retryable: false, message, .. }) => {
                    let reason = format!("refused by the destination: {message}");
                    parking.park(&namespace, &single.records[0], reason);
                }
                reply => {
                    settle(ns, &single, reply, outcome, parking)?;
                }
            }
        }
        Ok(())
    }
}

/// Encodes and sends one batch; returns the reply and the (raw, wire) payload sizes.
async fn send(
    client: &Client,
    batch: &Batch,
    compression: Compression,
) -> (Result<Frame, TransportError>, (u64, u64)) {
    let (bytes, size) = batch.encode(compression);
    tracing::Span::current().record("wire_bytes", size.wire);
    let frame = Frame::new(ack::frame_type(ack::BATCH), bytes);
    let reply = client.request(frame).instrument(tracing::debug_span!("xdr.ack")).await;
    (reply, (size.raw as u64, size.wire as u64))
}

/// Counts what the destination did with `batch` and notes what it refused for good.
fn settle(
    ns: usize,
    batch: &Batch,
    reply: Result<Frame, TransportError>,
    outcome: &mut Outcome,
    parking: &mut Parking,
) -> Result<u64, AttemptError> {
    let frame = reply.map_err(AttemptError::Transport)?;
    let ack = Ack::decode(&frame.payload)?;
    let epoch = ack.epoch;
    if ack.batch != batch.id || ack.records() != batch.records.len() as u64 {
        return Err(AttemptError::Mismatch {
            acked: ack.batch,
            acked_records: ack.records(),
            sent: batch.id,
            records: batch.records.len(),
        });
    }
    let refused: BTreeMap<Digest, ack::Refusal> =
        ack.refused.iter().map(|r| (r.digest, r.refusal)).collect();
    if let Some(unknown) =
        refused.keys().find(|digest| !batch.records.iter().any(|r| r.digest == **digest))
    {
        return Err(AttemptError::UnknownRefusal(*unknown));
    }
    let shipped = u64::from(ack.applied) + u64::from(ack.stale);
    outcome.shipped += shipped;
    outcome.by_namespace.entry(ns).or_default().success += shipped;
    for record in &batch.records {
        match refused.get(&record.digest) {
            Some(refusal) => parking.park(&batch.namespace, record, refusal.to_string()),
            None => parking.settled.push((batch.namespace.clone(), record.digest)),
        }
    }
    Ok(epoch)
}

/// Cuts one destination's records into frames of at most [`MAX_FRAME_RECORDS_BYTES`] of
/// records (a larger record travels alone).
fn frames(records: Vec<ShippedRecord>) -> Vec<Vec<ShippedRecord>> {
    let mut frames: Vec<Vec<ShippedRecord>> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let len = record.encoded_len();
        match frames.last_mut() {
            Some(frame) if bytes + len <= MAX_FRAME_RECORDS_BYTES => {
                bytes += len;
                frame.push(record);
            }
            _ => {
                bytes = len;
                frames.push(vec![record]);
            }
        }
    }
    frames
}

const _: () = assert!(MAX_FRAME_RECORDS_BYTES * 3 < DEFAULT_MAX_PAYLOAD as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::sample_record;

    #[test]
    fn a_learned_map_is_kept_from_answers_that_carry_one() {
        let mut learned = Learned { map: None, stale: true, asking: true, asked: None, turn: 0 };
        let node = NodeId::try_from("b-0").expect("node");
        let map_frame = |epoch| {
            let map = SiteMap { epoch, namespaces: Default::default() };
            Frame::new(ack::frame_type(ack::MAP), map.encode())
        };
        learned.take("b", &node, Err(()));
        assert_eq!((learned.turn, learned.stale, learned.asking), (1, true, false), "silent: next");
        learned.take("b", &node, Ok(map_frame(0)));
        assert_eq!((learned.turn, learned.stale), (2, true), "a node without a map: next");
        learned.take("b", &node, Ok(map_frame(7)));
        assert_eq!(learned.map.as_ref().map(|m| m.epoch), Some(7));
        assert!(!learned.stale);
        learned.stale = true;
        learned.take("b", &node, Ok(map_frame(5)));
        assert_eq!(learned.map.as_ref().map(|m| m.epoch), Some(5), "the destination's word");
        learned.stale = true;
        learned.take("b", &node, Ok(Frame::new(ack::frame_type(ack::ACK), bytes::Bytes::new())));
        assert!(!learned.stale, "a destination serving no map is not asked again");
        assert_eq!(learned.map.as_ref().map(|m| m.epoch), Some(5));
    }

    fn sized(i: u8, len: usize) -> ShippedRecord {
        let mut record = sample_record(i, false);
        let fixed = record.encoded_len() - record.bins[0].data.len();
        record.bins[0].data = bytes::Bytes::from(vec![i; len - fixed]);
        record
    }

    #[test]
    fn frames_hold_at_most_the_cap_and_a_big_record_travels_alone() {
        let cap = MAX_FRAME_RECORDS_BYTES;
        let records =
            vec![sized(1, cap / 2), sized(2, cap / 2), sized(3, 1_000), sized(4, cap * 2)];
        let sizes: Vec<Vec<u8>> = frames(records)
            .iter()
            .map(|frame| frame.iter().map(|r| r.digest[0]).collect())
            .collect();
        assert_eq!(sizes, vec![vec![1, 2], vec![3], vec![4]]);
        assert!(frames(Vec::new()).is_empty());
    }

    #[test]
    fn encoded_len_is_what_encoding_writes() {
        let record = sized(9, 5_000);
        assert_eq!(record.encoded_len(), 5_000);
        let batch = Batch { id: 1, source_site: 1, namespace: "ns".into(), records: vec![record] };
        let raw = Compression { level: 1, threshold: usize::MAX };
        assert_eq!(batch.encode(raw).1.raw, 5_000);
    }
}
