//! The group's durable state in its own fjall database (beside, not inside, the node's record
//! storage): the raft log and vote ([`LogStore`]), and the state machine with its last
//! snapshot ([`StateMachine`]). Every write that openraft must find after a crash is committed
//! with `SyncData` before openraft is told it is done.

use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::SiteMembership;
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const SNAPSHOT: &str = "snapshot";

/// Opens (or creates) the group's database in `dir`.
pub(crate) fn open(
    dir: &Path,
    published: watch::Sender<SiteMembership>,
) -> Result<(LogStore, StateMachine), fjall::Error> {
    let db = Database::builder(dir).open()?;
    let log = db.keyspace("raft.log", KeyspaceCreateOptions::default)?;
    let meta = db.keyspace("raft.meta", KeyspaceCreateOptions::default)?;
    let store = Stores { db, log, meta };
    let snapshot: Option<StoredSnapshot> = store.read_json(SNAPSHOT)?;
    let mut applied: Applied = snapshot.map(|s| s.state).unwrap_or_default();
    // A state kept before members were committed: its group's voters are its members.
    let membership = applied.last_membership.membership();
    let voters: Vec<String> = membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|peer| peer.name.clone()))
        .collect();
    if !voters.is_empty() {
        applied.site.seed_members(voters);
    }
    published.send_replace(applied.site.clone());
    Ok((LogStore { store: store.clone() }, StateMachine { store, applied, published }))
}

fn fjall_error(error: serde_json::Error) -> fjall::Error {
    fjall::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
}

#[derive(Clone)]
struct Stores {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    fn read_json<T: for<'a> Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, ReadError> {
        match self.meta.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Commits `batch` with an fsync, off the async workers.
    async fn commit(&self, batch: fjall::OwnedWriteBatch) -> Result<(), fjall::Error> {
        tokio::task::spawn_blocking(move || batch.commit())
            .await
            .map_err(|join| fjall::Error::from(std::io::Error::other(join)))?
    }

    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncData))
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Engine(#[from] fjall::Error),
    #[error("undecodable: {0}")]
    Decode(#[from] serde_json::Error),
}

impl From<ReadError> for fjall::Error {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Engine(error) => error,
            ReadError::Decode(error) => fjall_error(error),
        }
    }
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io(error: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&error)
}

/// The raft log and vote.
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    store: Stores,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(log_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(log_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for guard in self.store.log.range((Bound::Included(log_key(start)), end)) {
            let (_, value) = guard.into_inner().map_err(|e| StorageIOError::read_logs(io(e)))?;
            let entry: Entry =
                serde_json::from_slice(&value).map_err(|e| StorageIOError::read_logs(io(e)))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> =
            self.store.read_json(PURGED).map_err(|e| StorageIOError::read_logs(io(e)))?;
        let last = match self.store.log.last_key_value() {
            Some(guard) => {
                let (_, value) =
                    guard.into_inner().map_err(|e| StorageIOError::read_logs(io(e)))?;
                let entry: Entry =
                    serde_json::from_slice(&value).map_err(|e| StorageIOError::read_logs(io(e)))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(io(e)))?;
        let mut batch = self.store.durable_batch();
        batch.insert(&self.store.meta, VOTE, bytes);
        self.store.commit(batch).await.map_err(|e| StorageIOError::write_vote(io(e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.store.read_json(VOTE).map_err(|e| StorageIOError::read_vote(io(e)))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(io(e)))?;
        let mut batch = self.store.durable_batch();
        batch.insert(&self.store.meta, COMMITTED, bytes);
        self.store.commit(batch).await.map_err(|e| StorageIOError::write(io(e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            self.store.read_json(COMMITTED).map_err(|e| StorageIOError::read(io(e)))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.store.durable_batch();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(io(e)))?;
            batch.insert(&self.store.log, log_key(entry.log_id.index), bytes);
        }
        let result = self.store.commit(batch).await;
        let reported =
            result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(reported);
        result.map_err(|e| StorageIOError::write_logs(io(e)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_logs(log_key(log_id.index).., None).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_logs(..=log_key(log_id.index), Some(log_id)).await
    }
}

impl LogStore {
    /// Removes the entries in `range` (and records the last purged id) in one durable batch.
    async fn remove_logs(
        &mut self,
        range: impl RangeBounds<[u8; 8]>,
        purged: Option<LogId>,
    ) -> Result<(), StorageError> {
        let mut batch = self.store.durable_batch();
        if let Some(purged) = purged {
            let bytes =
                serde_json::to_vec(&purged).map_err(|e| StorageIOError::write_logs(io(e)))?;
            batch.insert(&self.store.meta, PURGED, bytes);
        }
        for guard in self.store.log.range(range) {
            let (key, _) = guard.into_inner().map_err(|e| StorageIOError::write_logs(io(e)))?;
            batch.remove(&self.store.log, key);
        }
        self.store.commit(batch).await.map_err(|e| StorageIOError::write_logs(io(e)))?;
        Ok(())
    }
}

/// What the state machine has applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    site: SiteMembership,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    state: Applied,
}

impl StoredSnapshot {
    #[allow(clippy::result_large_err, reason = "openraft's storage error, as its traits return")]
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let data = serde_json::to_vec(&self.state)
            .map_err(|e| StorageIOError::read_snapshot(Some(self.meta.signature()), io(e)))?;
        Ok(Snapshot { meta: self.meta.clone(), snapshot: Box::new(Cursor::new(data)) })
    }
}

impl Stores {
    /// Keeps `snapshot` durably as the current one, so the log before it may be purged.
    async fn keep_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let signature = Some(snapshot.meta.signature());
        let bytes = serde_json::to_vec(snapshot)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), io(e)))?;
        let mut batch = self.durable_batch();
        batch.insert(&self.meta, SNAPSHOT, bytes);
        self.commit(batch).await.map_err(|e| StorageIOError::write_snapshot(signature, io(e)))?;
        Ok(())
    }
}

/// The applied membership, published to the node on every change.
#[derive(Debug)]
pub(crate) struct StateMachine {
    store: Stores,
    applied: Applied,
    published: watch::Sender<SiteMembership>,
}

/// A snapshot being taken: the state is tiny, so a copy of it is the snapshot.
#[derive(Debug)]
pub(crate) struct SnapshotBuilder {
    store: Stores,
    snapshot: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.store.keep_snapshot(&self.snapshot).await?;
        self.snapshot.snapshot()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<u64>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut epochs = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(change) => {
                    let reason = &change.reason;
                    if self.applied.site.apply(&change) {
                        let epoch = self.applied.site.epoch;
                        tracing::info!(%reason, epoch, "membership changed");
                    } else {
                        tracing::debug!(%reason, base = change.base_epoch, "stale change ignored");
                        epochs.push(0);
                        continue;
                    }
                }
                EntryPayload::Membership(membership) => {
                    // The first membership is the group's initial voters: the members
                    // placement starts from (later voters are admitted by a change).
                    let voters = membership.voter_ids().collect::<Vec<_>>();
                    let names = voters.iter().filter_map(|id| membership.get_node(id));
                    self.applied.site.seed_members(names.map(|peer| peer.name.clone()));
                    self.applied.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            epochs.push(self.applied.site.epoch);
        }
        self.published.send_if_modified(|site| {
            let changed = *site != self.applied.site;
            site.clone_from(&self.applied.site);
            changed
        });
        Ok(epochs)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.last_membership.clone(),
            snapshot_id: format!("{}", self.applied.last_applied.map_or(0, |id| id.index)),
        };
        let snapshot = StoredSnapshot { meta, state: self.applied.clone() };
        SnapshotBuilder { store: self.store.clone(), snapshot }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let state: Applied = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io(e)))?;
        self.store
            .keep_snapshot(&StoredSnapshot { meta: meta.clone(), state: state.clone() })
            .await?;
        self.applied = state;
        self.published.send_replace(self.applied.site.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored: Option<StoredSnapshot> = self
            .store
            .read_json(SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, io(e)))?;
        stored.as_ref().map(StoredSnapshot::snapshot).transpose()
    }
}
