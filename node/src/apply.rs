//! Applying versions shipped from another site: each record competes with the local version
//! under the namespace's conflict-resolution policy; winners are stored as they are (their
//! generation, LUT and origin kept, no local bump) and, when a link out of this site forwards,
//! logged marked as XDR-applied, so they can be forwarded but never shipped back to where they
//! came from.

use ferry_xdr::ack::{Refusal, Refused};
use ferry_xdr::batch::ShippedRecord;
use ferry_xdr::conflict::{Resolution, Version, resolve};
use ferry_xdr::stats::Conflict;

use crate::node::NodeState;
use crate::record::{Bin, LimitError, Record, Value, check_limits};

/// What happened to the records of one apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyCounts {
    /// Stored: the incoming version won.
    pub applied: u64,
    /// Kept the local version: the incoming one lost its conflict (or was already here).
    pub lost_conflict: u64,
    /// Not stored: the version breaks a limit of this namespace (the sender parks it).
    pub refused: Vec<Refused>,
}

/// Why an apply failed; nothing after the failing record was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("namespace '{0}' is not served by this node")]
    UnknownNamespace(String),
    #[error("this site refuses XDR writes (write-fence = xdr-writes)")]
    Fenced,
    #[error("this node is cut off from its site's majority (no write lease)")]
    NoLease,
    #[error("digest log: {0}")]
    Log(#[from] ferry_digestlog::AppendError),
    #[error(transparent)]
    Replication(#[from] crate::replica::ReplicationError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StoreError),
}

impl NodeState {
    /// Applies shipped versions to `namespace`; resolves once the winners are durable.
    pub async fn apply_remote(
        &self,
        namespace: &str,
        records: &[ShippedRecord],
    ) -> Result<ApplyCounts, ApplyError> {
        let settings = self
            .namespace(namespace)
            .ok_or_else(|| ApplyError::UnknownNamespace(namespace.to_owned()))?;
        let policy = settings.conflict_resolution_policy;
        let max_record_size = settings.max_record_size;
        if self.fence.refuses_xdr() {
            return Err(ApplyError::Fenced);
        }
        if !self.write_lease().await {
            return Err(ApplyError::NoLease);
        }
        // A poisoned store acknowledges nothing: refuse before storing or logging anything.
        self.store.writable()?;
        let mut counts = ApplyCounts::default();
        // Whether a version counted stale may not be durable yet: it equals the stored one,
        // which a concurrent apply or write may have stored and not yet committed.
        let mut redelivered = false;
        let mut stored = Vec::new();
        for shipped in records {
            let record = to_record(shipped);
            if let Err(limit) = check_limits(&record, max_record_size) {
                let refusal = refusal_of(limit);
                tracing::warn!(namespace, digest = %shipped.digest, %limit, "shipped version refused");
                counts.refused.push(Refused { digest: shipped.digest, refusal });
                continue;
            }
            if shipped.stamp.last_update_ms < self.store.truncation_cutoff(namespace, &shipped.set)
            {
                // Truncated here (truncations are not shipped): as stale as a newer version.
                counts.lost_conflict += 1;
                continue;
            }
            let _guard = self.store.lock(&shipped.digest).await;
            let local = self.store.get(namespace, &shipped.digest)?;
            let local_version =
                local.as_ref().map(|r| Version { stamp: r.stamp(), tombstone: r.tombstone });
            let local_stamp = local_version.map(|v| v.stamp);
            let incoming = Version { stamp: shipped.stamp, tombstone: shipped.tombstone };
            match resolve(policy, local_version.as_ref(), &incoming) {
                Resolution::Stale => {
                    counts.lost_conflict += 1;
                    if local_stamp == Some(shipped.stamp) {
                        // A redelivery: its first apply may have failed to reach the copies.
                        redelivered = true;
                        if let Some(local) = local.clone() {
                            stored.push((shipped.digest, local));
                        }
                    }
                    // A redelivery of the version already here is not a conflict.
                    if let Some(local) = local_stamp.filter(|local| *local != shipped.stamp) {
                        self.xdr.record_conflict(Conflict {
                            namespace: namespace.to_owned(),
                            digest: shipped.digest,
                            local,
                            incoming: shipped.stamp,
                            at_ms: ferry_xdr::ship::now_ms(),
                        });
                    }
                }
                Resolution::Apply => {
                    let mut record = record;
                    if self.forwards_applied_versions() {
                        record.logged_lsn = self.log_change(namespace, &shipped.digest, &record)?;
                    }
                    self.store.put(namespace, &shipped.digest, &record)?;
                    stored.push((shipped.digest, record));
                    counts.applied += 1;
                }
            }
        }
        // A redelivered version is acknowledged only once it is durable here too.
        if counts.applied > 0 || redelivered {
            self.store.commit(namespace).await?;
        }
        // Acknowledged to the sender only once every copy holds what won (or was redelivered).
        for (digest, record) in &stored {
            self.replicate(namespace, digest, record).await?;
        }
        if !self.lease_holds() {
            return Err(ApplyError::NoLease);
        }
        Ok(counts)
    }
}

/// How a receiver tells the sender which limit a version broke.
fn refusal_of(limit: LimitError) -> Refusal {
    match limit {
        LimitError::SetName(_) => Refusal::SetName,
        LimitError::BinName(_) => Refusal::BinName,
        LimitError::Bins(_) => Refusal::Bins,
        LimitError::TooBig { .. } => Refusal::TooBig,
    }
}

/// A shipped version as a stored record, metadata unchanged.
fn to_record(shipped: &ShippedRecord) -> Record {
    Record {
        generation: shipped.stamp.generation,
        last_update_ms: shipped.stamp.last_update_ms,
        created_ms: shipped.stamp.created_ms,
        void_time: shipped.void_time,
        origin_site: shipped.stamp.origin_site,
        tombstone: shipped.tombstone,
        set: shipped.set.clone(),
        key: shipped.key.clone(),
        bins: shipped
            .bins
            .iter()
            .map(|b| Bin {
                name: b.name.clone(),
                value: Value { particle: b.particle, data: b.data.clone() },
            })
            .collect(),
        logged_lsn: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;
    use crate::storage::Digest;
    use bytes::Bytes;
    use ferry_tests::{ConflictPolicy, Namespace, Role, Site, TopologyBuilder};
    use ferry_xdr::batch::ShippedBin;
    use ferry_xdr::conflict::VersionStamp;

    fn state(dir: &std::path::Path, policy: ConflictPolicy) -> NodeState {
        let text = TopologyBuilder::new("ferry")
            .add_site(Site::new("a", 1).node_ids(&["n"]).role(Role::Standby))
            .namespace(Namespace::new("test").conflict_policy(policy))
            .ports_from(1)
            .build()
            .text;
        let topology = ferry_topology::parse_topology("t.toml", &text).expect("valid").topology;
        let config = NodeConfig::new(topology, "a", "n", dir.to_path_buf());
        NodeState::open(&config).expect("open")
    }

    fn shipped(generation: u16, lut: u64, value: &'static [u8]) -> ShippedRecord {
        ShippedRecord {
            digest: Digest([7; 20]),
            stamp: VersionStamp { generation, last_update_ms: lut, origin_site: 2, created_ms: 1 },
            void_time: 0,
            tombstone: false,
            set: "s".into(),
            key: None,
            bins: vec![ShippedBin {
                name: "b".into(),
                particle: 4,
                data: Bytes::from_static(value),
            }],
        }
    }

    #[tokio::test]
    async fn newer_versions_win_older_and_repeated_ones_lose() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = state(dir.path(), ConflictPolicy::Generation);
        let batch = [shipped(2, 10, b"two"), shipped(1, 20, b"one"), shipped(2, 10, b"two")];
        let counts = node.apply_remote("test", &batch).await.expect("apply");
        assert_eq!(counts, ApplyCounts { applied: 1, lost_conflict: 2, refused: Vec::new() });
        let stored = node.store.get("test", &Digest([7; 20])).expect("get").expect("stored");
        assert_eq!((stored.generation, stored.last_update_ms, stored.origin_site), (2, 10, 2));
        assert_eq!(stored.bins[0].value.data.as_ref(), b"two");
        assert!(matches!(
            node.apply_remote("nope", &batch).await,
            Err(ApplyError::UnknownNamespace(_))
        ));
    }

    #[tokio::test]
    async fn versions_over_a_limit_here_are_refused_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = state(dir.path(), ConflictPolicy::Generation);
        let mut long_set = shipped(1, 10, b"x");
        long_set.digest = Digest([1; 20]);
        long_set.set = "s".repeat(64);
        let mut too_big = shipped(1, 10, b"x");
        too_big.digest = Digest([2; 20]);
        too_big.bins[0].data = Bytes::from(vec![0u8; 2 << 20]);
        let batch = [long_set, too_big, shipped(2, 10, b"fits")];
        let counts = node.apply_remote("test", &batch).await.expect("apply");
        let refused = vec![
            Refused { digest: Digest([1; 20]), refusal: Refusal::SetName },
            Refused { digest: Digest([2; 20]), refusal: Refusal::TooBig },
        ];
        assert_eq!(counts, ApplyCounts { applied: 1, lost_conflict: 0, refused });
        assert_eq!(node.store.get("test", &Digest([1; 20])).expect("get"), None);
        assert!(node.store.get("test", &Digest([7; 20])).expect("get").is_some());
    }

    #[tokio::test]
    async fn a_poisoned_store_refuses_a_batch_before_storing_or_logging_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = state(dir.path(), ConflictPolicy::Generation);
        node.store.poison("fsync failed (test)");
        let outcome = node.apply_remote("test", &[shipped(2, 10, b"two")]).await;
        assert!(
            matches!(outcome, Err(ApplyError::Storage(crate::storage::StoreError::Poisoned(_)))),
            "{outcome:?}"
        );
        assert_eq!(node.store.get("test", &Digest([7; 20])).expect("get"), None, "not exposed");
    }

    #[tokio::test]
    async fn last_update_time_policy_keeps_the_latest_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = state(dir.path(), ConflictPolicy::LastUpdateTime);
        let batch = [shipped(5, 30, b"late"), shipped(9, 20, b"early-but-higher-generation")];
        let counts = node.apply_remote("test", &batch).await.expect("apply");
        assert_eq!(counts, ApplyCounts { applied: 1, lost_conflict: 1, refused: Vec::new() });
        let stored = node.store.get("test", &Digest([7; 20])).expect("get").expect("stored");
        assert_eq!(stored.bins[0].value.data.as_ref(), b"late");
    }
}
