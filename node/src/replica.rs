//! Copies inside a site: the partition's master sends every change it stores to the
//! partition's other copies and acknowledges the client only once each of them holds it
//! durably (DESIGN §4). A replica logs the change in its own digest log, so it has all it
//! needs to take over shipping.
//!
//! A replica write carries the sender's membership epoch; a copy on a newer epoch refuses it
//! (the sender may no longer be master), and one on an older epoch waits to learn it. A copy
//! orders versions by the namespace's conflict policy, as the master does, so a late or
//! repeated replica write never replaces a newer version.

use std::time::{Duration, Instant};

use ferry_topology::placement::partition_of;

use ferry_xdr::conflict::{Resolution, Version, resolve};

use crate::fabric::{self, Kind};
use crate::node::NodeState;
use crate::record::{self, Record};
use crate::storage::Digest;

/// How long a master keeps trying a copy that does not answer: past the failure-detection
/// timeout, so a dead copy is taken out of the membership (and out of the write's targets)
/// before the write gives up.
const PATIENCE: Duration = Duration::from_secs(3);
/// One attempt's limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts at a copy that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// What a copy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Durable here (or a newer version already was).
    Stored,
    /// This copy is on a newer epoch than the sender.
    StaleEpoch(u64),
    /// Not a request this node can take (unknown namespace, undecodable).
    Refused,
    /// Storage failed.
    Failed,
}

impl ReplicaStatus {
    pub(crate) fn encode(self) -> Vec<u8> {
        let (code, epoch) = match self {
            ReplicaStatus::Stored => (0, 0),
            ReplicaStatus::StaleEpoch(epoch) => (1, epoch),
            ReplicaStatus::Refused => (2, 0),
            ReplicaStatus::Failed => (3, 0),
        };
        let mut out = vec![code];
        out.extend_from_slice(&epoch.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (&code, epoch) = bytes.split_first()?;
        let epoch = u64::from_be_bytes(epoch.try_into().ok()?);
        Some(match code {
            0 => ReplicaStatus::Stored,
            1 => ReplicaStatus::StaleEpoch(epoch),
            2 => ReplicaStatus::Refused,
            3 => ReplicaStatus::Failed,
            _ => return None,
        })
    }
}

/// The reply to a request this node cannot take.
pub(crate) fn refused() -> Vec<u8> {
    ReplicaStatus::Refused.encode()
}

/// A change sent to a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaWrite {
    pub epoch: u64,
    pub namespace: String,
    pub digest: Digest,
    pub record: Record,
}

impl ReplicaWrite {
    /// `epoch`, namespace (length-prefixed), digest, then the record in its storage encoding.
    pub fn encode(&self) -> Vec<u8> {
        let encoded = record::encode(&self.record);
        let mut out = Vec::with_capacity(8 + 1 + self.namespace.len() + 20 + encoded.len());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(self.namespace.len() as u8);
        out.extend_from_slice(self.namespace.as_bytes());
        out.extend_from_slice(&self.digest.0);
        out.extend_from_slice(&encoded);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (epoch, rest) = bytes.split_first_chunk::<8>()?;
        let (&ns_len, rest) = rest.split_first()?;
        let (namespace, rest) = rest.split_at_checked(usize::from(ns_len))?;
        let (digest, rest) = rest.split_first_chunk::<20>()?;
        Some(Self {
            epoch: u64::from_be_bytes(*epoch),
            namespace: std::str::from_utf8(namespace).ok()?.to_owned(),
            digest: Digest(*digest),
            record: record::decode(rest).ok()?,
        })
    }
}

/// Why a master could not get a change onto every copy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    #[error("this node no longer masters the partition (epoch {0})")]
    NotMaster(u64),
    #[error("namespace '{0}' has no partition map here")]
    UnknownNamespace(String),
    #[error("copy {node} did not store the change within {PATIENCE:?}: {last}")]
    Unavailable { node: String, last: String },
}

/// How long a copy waits to learn the epoch of a write or chunk sent from a newer one.
const EPOCH_PATIENCE: Duration = Duration::from_secs(1);

impl NodeState {
    /// This node's view once it reached `epoch` (or after [`EPOCH_PATIENCE`], whatever it is
    /// then): a copy stores what a newer epoch sends only under that epoch's view.
    pub(crate) async fn await_epoch(
        &self,
        epoch: u64,
    ) -> std::sync::Arc<crate::cluster::ClusterView> {
        let deadline = Instant::now() + EPOCH_PATIENCE;
        loop {
            let view = self.cluster();
            if view.epoch() >= epoch || Instant::now() >= deadline {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends a stored change to every other copy of its partition and resolves once each holds
    /// it durably. Retries a copy that does not answer until it does, the membership takes it
    /// out of the write's targets, or [`PATIENCE`] runs out.
    pub async fn replicate(
        &self,
        namespace: &str,
        digest: &Digest,
        record: &Record,
    ) -> Result<(), ReplicationError> {
        let partition = partition_of(&digest.0);
        let deadline = Instant::now() + PATIENCE;
        let mut record = record.clone();
        record.logged_lsn = None;
        let mut stored: Vec<String> = Vec::new();
        let mut last_error = String::new();
        loop {
            let view = self.cluster();
            let copies = view
                .copies(namespace, partition)
                .ok_or_else(|| ReplicationError::UnknownNamespace(namespace.to_owned()))?;
            if *copies.master() != self.this_node().id {
                return Err(ReplicationError::NotMaster(view.epoch()));
            }
            let pending: Vec<_> = copies
                .write_replicas()
                .filter(|id| !stored.iter().any(|s| s == id.as_str()))
                .filter_map(|id| view.site_node(id))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let write = ReplicaWrite {
                epoch: view.epoch(),
                namespace: namespace.to_owned(),
                digest: *digest,
                record: record.clone(),
            };
            let request = fabric::frame(Kind::Replica, &write.encode());
            // Copies are asked one after another: with the usual two or three copies the
            // second round trip costs less than spawning tasks would.
            let mut waiting_for = None;
            for node in pending {
                let reply =
                    self.fabric().exchange(self.fabric_addr(node), &request, ATTEMPT_TIMEOUT);
                let status = match reply.await {
                    Ok(reply) => fabric::payload(&reply, Kind::Replica)
                        .ok()
                        .and_then(ReplicaStatus::decode)
                        .unwrap_or(ReplicaStatus::Refused),
                    Err(error) => {
                        last_error = error.to_string();
                        waiting_for = Some(node.id.to_string());
                        continue;
                    }
                };
                match status {
                    ReplicaStatus::Stored => stored.push(node.id.to_string()),
                    ReplicaStatus::StaleEpoch(epoch) => {
                        last_error =
                            format!("copy is on epoch {epoch}, this node on {}", view.epoch());
                        waiting_for = Some(node.id.to_string());
                    }
                    ReplicaStatus::Refused | ReplicaStatus::Failed => {
                        last_error = format!("copy answered {status:?}");
                        waiting_for = Some(node.id.to_string());
                    }
                }
            }
            let Some(node) = waiting_for else { continue };
            if Instant::now() >= deadline {
                return Err(ReplicationError::Unavailable { node, last: last_error });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Stores a change its master sent (a framed request's payload); returns the encoded
    /// status once it is durable.
    pub(crate) async fn apply_replica(&self, request: &[u8]) -> Vec<u8> {
        let status = match ReplicaWrite::decode(request) {
            Some(write) => self.store_replica(write).await,
            None => {
                tracing::warn!("undecodable replica write");
                ReplicaStatus::Refused
            }
        };
        status.encode()
    }

    async fn store_replica(&self, write: ReplicaWrite) -> ReplicaStatus {
        let epoch = self.await_epoch(write.epoch).await.epoch();
        if write.epoch < epoch {
            return ReplicaStatus::StaleEpoch(epoch);
        }
        if write.epoch > epoch {
            // Not learned in time: the master tries again.
            return ReplicaStatus::Failed;
        }
        let ns = write.namespace.as_str();
        if self.namespace(ns).is_none() {
            return ReplicaStatus::Refused;
        }
        let copied = self.store_copy(ns, &write.digest, write.record, Logging::AsCopy).await;
        match copied.map(drop).and(self.store.commit(ns).await.map_err(|e| e.to_string())) {
            Ok(()) => ReplicaStatus::Stored,
            Err(error) => {
                tracing::error!(%error, namespace = ns, "replica write failed");
                ReplicaStatus::Failed
            }
        }
    }

    /// Stores a copy of a record's version unless this node already holds one that is as new
    /// under the namespace's conflict policy (the order in which a master's versions follow
    /// one another, client writes and XDR-applied ones alike); not yet durable. Returns the
    /// version stored, if it was. Replica writes are logged as copies (this node may take over
    /// shipping them); migrated versions are not (their master shipped them, and a takeover
    /// re-ships from its watermark); versions merged into the master are logged as its own
    /// changes (it ships them).
    pub(crate) async fn store_copy(
        &self,
        ns: &str,
        digest: &Digest,
        mut record: Record,
        logging: Logging,
    ) -> Result<Option<Record>, String> {
        let policy = self
            .namespace(ns)
            .map(|n| n.conflict_resolution_policy)
            .ok_or_else(|| format!("namespace '{ns}' is not served here"))?;
        let _guard = self.store.lock(digest).await;
        let local = self.store.get(ns, digest).map_err(|e| e.to_string())?;
        let version = |r: &Record| Version { stamp: r.stamp(), tombstone: r.tombstone };
        if let Logging::AsMaster { absent_from } = logging
            && local.is_none()
            && record.last_update_ms < absent_from
        {
            return Ok(None);
        }
        let local = local.as_ref().map(version);
        if resolve(policy, local.as_ref(), &version(&record)) == Resolution::Stale {
            return Ok(None);
        }
        record.logged_lsn = None;
        let logs = record.origin_site == self.site_id() || self.forwards_applied_versions();
        record.logged_lsn = match logging {
            Logging::AsCopy if logs => self.log_copy(ns, digest, &record),
            Logging::AsMaster { .. } if logs => self.log_change(ns, digest, &record),
            _ => Ok(None),
        }
        .map_err(|e| e.to_string())?;
        self.store.put(ns, digest, &record).map_err(|e| e.to_string())?;
        Ok(Some(record))
    }
}

/// Whether a stored version goes into the digest log, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logging {
    /// As a copy of the master's change: shipped from here only after a takeover.
    AsCopy,
    /// As this node's own change, which it ships (it masters the partition); a version with
    /// nothing here older than `absent_from` (ms) is not stored: it may be one whose delete's
    /// tombstone this node reclaimed.
    AsMaster {
        absent_from: u64,
    },
    Not,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_writes_round_trip_and_truncations_are_refused() {
        let write = ReplicaWrite {
            epoch: 7,
            namespace: "test".into(),
            digest: Digest([9; 20]),
            record: Record {
                generation: 3,
                last_update_ms: 1_700_000_000_123,
                created_ms: 1_700_000_000_000,
                void_time: 0,
                origin_site: 1,
                tombstone: false,
                set: "s".into(),
                key: None,
                bins: Vec::new(),
                logged_lsn: None,
            },
        };
        let bytes = write.encode();
        assert_eq!(ReplicaWrite::decode(&bytes), Some(write));
        for cut in 0..bytes.len() {
            assert_eq!(ReplicaWrite::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for status in [ReplicaStatus::Stored, ReplicaStatus::StaleEpoch(9), ReplicaStatus::Failed] {
            assert_eq!(ReplicaStatus::decode(&status.encode()), Some(status));
        }
    }
}
