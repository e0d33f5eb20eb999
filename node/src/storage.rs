//! Durable record storage on fjall, with group commit.
//!
//! Why fjall: an embedded LSM engine with a journal whose fsync we control
//! (`manual_journal_persist` + `PersistMode::SyncData`), keyspaces for namespaces, ordered range
//! scans (a partition's records in digest order) and a poisoned state after a failed fsync. See
//! `docs/storage.md`.
//!
//! Keys are `partition (u16 BE) ‖ digest (20 B)`, so a partition is one contiguous, digest-ordered
//! range. Writers insert (journal buffered in memory), then wait on [`Store::commit`]: one syncer
//! thread calls `persist(SyncData)` for everyone who wrote before it started, so concurrent
//! writers share an fsync. A failed fsync poisons the store: every later commit fails and no
//! write is acknowledged that is not durable.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ferry_topology::model::{CommitMode, Namespace};
use ferry_topology::placement::partition_of;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::watch;

use ferry_xdr::parked::ParkedRecord;

use crate::index::PrimaryIndex;
use crate::journal_sync::JournalSync;
use crate::metrics::FsyncHistogram;
use crate::truncate::{self, Truncations};

use crate::record::{self, CorruptRecord, Record};

/// A record digest (RIPEMD-160 of set and key).
pub use ferry_digestlog::Digest;

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("namespace '{0}' is not served by this node")]
    UnknownNamespace(String),
    #[error("record {digest} in namespace '{namespace}': {source}")]
    Corrupt { namespace: String, digest: String, source: CorruptRecord },
    #[error("storage is poisoned by a failed fsync ({0}); no write can be acknowledged")]
    Poisoned(String),
    #[error("a parked record is unreadable: {0}")]
    Parked(String),
}

const LOCK_STRIPES: usize = 1024;

/// What one set holds (`Store::set_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetStats {
    /// Records, expired ones not reclaimed yet included.
    pub objects: u64,
    pub tombstones: u64,
    /// Bytes of their stored encoding.
    pub bytes: u64,
}

/// Durable storage of all namespaces of one node.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("namespaces", &self.namespace_names()).finish()
    }
}

struct Inner {
    db: Database,
    namespaces: HashMap<String, NamespaceStore>,
    /// Each link's parked records (see `ferry_xdr::parked`), keyed by link, namespace, digest.
    parked: Keyspace,
    /// Durable truncation cut-offs ([`truncate::key`] → u64 BE), and their copy in memory.
    truncation_marks: Keyspace,
    truncations: RwLock<Truncations>,
    /// Striped locks serializing read-modify-write of one record. Async, because a writer holds
    /// its stripe until the change is in the digest log.
    locks: Vec<tokio::sync::Mutex<()>>,
    commit: GroupCommit,
}

struct NamespaceStore {
    keyspace: Keyspace,
    mode: CommitMode,
    index: PrimaryIndex,
}

impl Store {
    /// Opens (creating if needed) the store under `dir` for these namespaces.
    pub fn open(dir: &Path, namespaces: &[Namespace]) -> Result<Self, StoreError> {
        clear_interrupted_creation(dir)?;
        let db = Database::builder(dir).manual_journal_persist(true).open()?;
        let mut by_name = HashMap::new();
        for ns in namespaces {
            // Namespace names are 1..=31 bytes (validated), within fjall's keyspace name limit.
            let name = ns.name.to_string();
            let keyspace = db.keyspace(&format!("ns.{name}"), KeyspaceCreateOptions::default)?;
            let index = build_index(&name, &keyspace)?;
            by_name.insert(name, NamespaceStore { keyspace, mode: ns.commit_mode, index });
        }
        let parked = db.keyspace("xdr.parked", KeyspaceCreateOptions::default)?;
        let truncation_marks = db.keyspace("meta.truncate", KeyspaceCreateOptions::default)?;
        let truncations = RwLock::new(load_truncations(&truncation_marks)?);
        let max_wait = namespaces
            .iter()
            .filter(|ns| ns.commit_mode == CommitMode::Group)
            .map(|ns| Duration::from_micros(u64::from(ns.commit_max_wait_us)))
            .max()
            .unwrap_or_default();
        let max_batch = namespaces.iter().map(|ns| ns.commit_max_batch).min().unwrap_or(1024);
        let journal = JournalSync::new(dir);
        let commit = GroupCommit::start(db.clone(), journal, max_wait, u64::from(max_batch.max(1)));
        let locks = (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        let inner =
            Inner { db, namespaces: by_name, parked, truncation_marks, truncations, locks, commit };
        Ok(Self { inner: Arc::new(inner) })
    }

    fn namespace(&self, ns: &str) -> Result<&NamespaceStore, StoreError> {
        self.inner.namespaces.get(ns).ok_or_else(|| StoreError::UnknownNamespace(ns.to_owned()))
    }

    /// Whether this node serves the namespace.
    pub fn has_namespace(&self, ns: &str) -> bool {
        self.inner.namespaces.contains_key(ns)
    }

    /// Names of the namespaces served, sorted.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.namespaces.keys().cloned().collect();
        names.sort();
        names
    }

    /// Serializes read-modify-write of one record: hold the guard from read to write.
    pub async fn lock(&self, digest: &Digest) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.locks[lock_stripe(digest)].lock().await
    }

    /// [`Store::lock`] for a thread outside the runtime.
    fn lock_blocking(&self, digest: &Digest) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.locks[lock_stripe(digest)].blocking_lock()
    }

    /// The stored version of a record, tombstones and expired records included; truncated
    /// records are gone.
    pub fn get(&self, ns: &str, digest: &Digest) -> Result<Option<Record>, StoreError> {
        let store = self.namespace(ns)?;
        if !store.index.contains(digest) {
            return Ok(None);
        }
        match store.keyspace.get(storage_key(digest))? {
            None => Ok(None),
            Some(bytes) => {
                let record = decode(ns, digest, &bytes)?;
                Ok((!self.truncated(ns, &record)).then_some(record))
            }
        }
    }

    /// Whether `record` of `ns` is truncated (and so is gone for every reader).
    fn truncated(&self, ns: &str, record: &Record) -> bool {
        let truncations = self.inner.truncations.read().unwrap_or_else(PoisonError::into_inner);
        truncations.covers(ns, &record.set, record.last_update_ms)
    }

    /// The truncation cut-off covering `set` of `ns` (0: none): a client write gets a
    /// last-update time at or after it, so it outlives the truncation.
    pub fn truncation_cutoff(&self, ns: &str, set: &str) -> u64 {
        let truncations = self.inner.truncations.read().unwrap_or_else(PoisonError::into_inner);
        truncations.cutoff(ns, set)
    }

    /// Truncates `ns` (only `set` when given): every record last updated before `before_ms`
    /// is gone from now on, durably. Returns the cut-off in force (cut-offs only move
    /// forward). Call [`Store::remove_truncated`] to reclaim the space.
    pub fn truncate(&self, ns: &str, set: Option<&str>, before_ms: u64) -> Result<u64, StoreError> {
        self.namespace(ns)?;
        self.inner.commit.check()?;
        let mut truncations =
            self.inner.truncations.write().unwrap_or_else(PoisonError::into_inner);
        let mut raised = truncations.clone();
        let cutoff = raised.raise(ns, set, before_ms);
        let mut batch = self.inner.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.inner.truncation_marks, truncate::key(ns, set), cutoff.to_be_bytes());
        batch.commit()?;
        *truncations = raised;
        Ok(cutoff)
    }

    /// Removes the truncated records of `ns` from storage; returns how many. Blocking: run it
    /// off the runtime. Each record is checked again under its lock, so a write racing the
    /// pass is never removed.
    pub fn remove_truncated(&self, ns: &str) -> Result<u64, StoreError> {
        let store = self.namespace(ns)?;
        if !self.inner.truncations.read().unwrap_or_else(PoisonError::into_inner).any(ns) {
            return Ok(0);
        }
        let mut removed = 0;
        for guard in store.keyspace.iter() {
            let (key, value) = guard.into_inner()?;
            let Ok((digest, record)) = stored_entry(ns, &key, &value) else { continue };
            if !self.truncated(ns, &record) {
                continue;
            }
            let _guard = self.lock_blocking(&digest);
            let current = store.keyspace.get(&key)?;
            let still = current.map(|bytes| decode(ns, &digest, &bytes));
            if still.is_some_and(|record| record.is_ok_and(|r| self.truncated(ns, &r))) {
                store.keyspace.remove(key)?;
                store.index.remove(&digest);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes a version (not yet durable: see [`Store::commit`]).
    pub fn put(&self, ns: &str, digest: &Digest, record: &Record) -> Result<(), StoreError> {
        let store = self.namespace(ns)?;
        // Indexed first: a reader finding the digest absent must find nothing stored.
        store.index.insert(digest, record.logged_lsn, record.tombstone);
        store.keyspace.insert(storage_key(digest), record::encode(record))?;
        Ok(())
    }

    /// Removes a record entirely (expired records and reclaimed tombstones).
    pub fn remove(&self, ns: &str, digest: &Digest) -> Result<(), StoreError> {
        let store = self.namespace(ns)?;
        store.keyspace.remove(storage_key(digest))?;
        store.index.remove(digest);
        Ok(())
    }

    /// Poisons the store as a failed fsync would.
    #[cfg(test)]
    pub(crate) fn poison(&self, reason: &str) {
        self.inner.commit.publish.send_modify(|d| d.poisoned = Some(reason.to_owned()));
    }

    /// Fails once a failed fsync poisoned the store: a writer checks this before it logs or
    /// stores anything, so a write that cannot be acknowledged is never exposed either.
    pub fn writable(&self) -> Result<(), StoreError> {
        self.inner.commit.check()
    }

    /// Resolves once everything written before the call is durable under the namespace's commit
    /// policy (immediately for `buffered`).
    pub async fn commit(&self, ns: &str) -> Result<(), StoreError> {
        match self.namespace(ns)?.mode {
            CommitMode::Buffered => self.inner.commit.check(),
            CommitMode::Group => self.inner.commit.wait_durable().await,
        }
    }

    /// Records of a partition in digest order, starting after `after` when given.
    pub fn scan_partition(
        &self,
        ns: &str,
        partition: u16,
        after: Option<&Digest>,
    ) -> Result<impl Iterator<Item = Result<(Digest, Record), StoreError>> + '_, StoreError> {
        let store = self.namespace(ns)?;
        let start = match after {
            Some(digest) => {
                let mut key = storage_key(digest).to_vec();
                key.push(0); // the smallest key after `digest`
                key
            }
            None => partition.to_be_bytes().to_vec(),
        };
        let end = (u32::from(partition) + 1).to_be_bytes()[2..].to_vec();
        let range = if partition == u16::MAX {
            store.keyspace.range(start..)
        } else {
            store.keyspace.range(start..end)
        };
        let ns = ns.to_owned();
        let ns_filter = ns.clone();
        Ok(range
            .map(move |guard| {
                let (key, value) = guard.into_inner()?;
                stored_entry(&ns, &key, &value)
            })
            .filter(
                move |item| !matches!(item, Ok((_, record)) if self.truncated(&ns_filter, record)),
            ))
    }

    /// (digest, generation, last-update time) of every stored version in a partition, in
    /// digest order, tombstones included: what two sites compare to verify convergence.
    pub fn partition_versions(
        &self,
        ns: &str,
        partition: u16,
    ) -> Result<Vec<(Digest, u16, u64)>, StoreError> {
        self.scan_partition(ns, partition, None)?
            .map(|item| item.map(|(digest, r)| (digest, r.generation, r.last_update_ms)))
            .collect()
    }

    /// Records, tombstones and stored bytes of every set of `ns` (the empty name: records
    /// without a set), counted exactly by a pass over the namespace; truncated records are
    /// gone, expired ones not reclaimed yet still count, as in Aerospike. Blocking.
    pub fn set_stats(&self, ns: &str) -> Result<BTreeMap<String, SetStats>, StoreError> {
        let store = self.namespace(ns)?;
        let mut sets: BTreeMap<String, SetStats> = BTreeMap::new();
        for guard in store.keyspace.iter() {
            let (key, value) = guard.into_inner()?;
            let (_, record) = stored_entry(ns, &key, &value)?;
            if self.truncated(ns, &record) {
                continue;
            }
            let stats = sets.entry(record.set).or_default();
            if record.tombstone {
                stats.tombstones += 1;
            } else {
                stats.objects += 1;
            }
            stats.bytes += value.len() as u64;
        }
        Ok(sets)
    }

    /// Every stored version of `ns` positioned in the digest log after `lsn` (see
    /// `NodeState::relog_lost_changes`), found by the primary index. Truncated versions are
    /// gone; unreadable ones are skipped (a shipper reports those when it reaches them).
    pub fn logged_after(&self, ns: &str, lsn: u64) -> Result<Vec<(Digest, Record)>, StoreError> {
        let mut after = Vec::new();
        for digest in self.namespace(ns)?.index.logged_after(lsn) {
            match self.get(ns, &digest) {
                Ok(Some(record)) => after.push((digest, record)),
                Ok(None) => {}
                Err(error @ StoreError::Corrupt { .. }) => {
                    tracing::warn!(%error, "unreadable record skipped by relog");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(after)
    }

    /// How long the storage journal's fsyncs took.
    pub fn fsync_latency(&self) -> &FsyncHistogram {
        &self.inner.commit.latency
    }

    /// Versions stored in `ns` (truncated ones not reclaimed yet included) and how many of
    /// them are tombstones, from the primary index: no I/O.
    pub fn stored_counts(&self, ns: &str) -> Result<(u64, u64), StoreError> {
        Ok(self.namespace(ns)?.index.counts())
    }

    /// Approximate number of stored records (tombstones included) in a namespace.
    pub fn approximate_len(&self, ns: &str) -> Result<usize, StoreError> {
        Ok(self.namespace(ns)?.keyspace.approximate_len())
    }

    /// Parks `records` for link `dc` and unparks `unparked`, atomically and durably.
    pub fn update_parked(
        &self,
        dc: &str,
        records: &[ParkedRecord],
        unparked: &[(String, Digest)],
    ) -> Result<(), StoreError> {
        self.inner.commit.check()?;
        let mut batch = self.inner.db.batch().durability(Some(PersistMode::SyncData));
        for record in records {
            let value =
                serde_json::to_vec(record).map_err(|e| StoreError::Parked(e.to_string()))?;
            batch.insert(
                &self.inner.parked,
                parked_key(dc, &record.namespace, &record.digest),
                value,
            );
        }
        for (namespace, digest) in unparked {
            batch.remove(&self.inner.parked, parked_key(dc, namespace, digest));
        }
        batch.commit()?;
        Ok(())
    }

    /// Every record parked for link `dc`.
    pub fn parked(&self, dc: &str) -> Result<Vec<ParkedRecord>, StoreError> {
        let mut prefix = dc.as_bytes().to_vec();
        prefix.push(0);
        self.inner
            .parked
            .prefix(prefix)
            .map(|guard| {
                let (_, value) = guard.into_inner()?;
                serde_json::from_slice(&value).map_err(|e| StoreError::Parked(e.to_string()))
            })
            .collect()
    }

    /// Bytes the engine uses on disk.
    pub fn disk_space(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }
}

/// `dc ‖ 0 ‖ namespace ‖ 0 ‖ digest`: names hold no NUL, so one link's records are one prefix.
fn parked_key(dc: &str, namespace: &str, digest: &Digest) -> Vec<u8> {
    [dc.as_bytes(), &[0], namespace.as_bytes(), &[0], digest.as_bytes()].concat()
}

fn lock_stripe(digest: &Digest) -> usize {
    usize::from(u16::from_le_bytes([digest[4], digest[5]])) % LOCK_STRIPES
}

/// fjall writes its `version` marker last when it creates a database, and cannot open (nor
/// create again) a directory a crash left without one. Such a directory never held a version
/// (the node opens storage before it serves), so it is emptied and created anew.
fn clear_interrupted_creation(dir: &Path) -> Result<(), StoreError> {
    let io = |source: std::io::Error| StoreError::Engine(fjall::Error::from(source));
    let interrupted = dir.is_dir()
        && !dir.join("version").try_exists().map_err(io)?
        && std::fs::read_dir(dir).map_err(io)?.next().is_some();
    if interrupted {
        tracing::warn!(dir = %dir.display(), "storage creation was interrupted; creating it anew");
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    Ok(())
}

/// The primary index of one namespace, from a pass over its stored versions.
fn build_index(ns: &str, keyspace: &Keyspace) -> Result<PrimaryIndex, StoreError> {
    let index = PrimaryIndex::default();
    for guard in keyspace.iter() {
        let (key, value) = guard.into_inner()?;
        match stored_entry(ns, &key, &value) {
            Ok((digest, record)) => index.insert(&digest, record.logged_lsn, record.tombstone),
            Err(error) => {
                // Still stored: indexed, so readers meet the corruption instead of a miss.
                tracing::warn!(%error, "unreadable record at open");
                if let Some(digest) = key_digest(&key) {
                    index.insert(&digest, None, false);
                }
            }
        }
    }
    Ok(index)
}

/// The truncation cut-offs stored in `marks`.
fn load_truncations(marks: &Keyspace) -> Result<Truncations, StoreError> {
    let mut truncations = Truncations::default();
    for guard in marks.iter() {
        let (key, value) = guard.into_inner()?;
        let parsed = truncate::parse_key(&key).zip(<[u8; 8]>::try_from(&value[..]).ok());
        let Some(((namespace, set), cutoff)) = parsed else {
            return Err(StoreError::Corrupt {
                namespace: String::new(),
                digest: hex(&key),
                source: CorruptRecord("truncation mark"),
            });
        };
        truncations.raise(&namespace, set.as_deref(), u64::from_be_bytes(cutoff));
    }
    Ok(truncations)
}

fn storage_key(digest: &Digest) -> [u8; 22] {
    let mut key = [0u8; 22];
    key[..2].copy_from_slice(&partition_of(digest).to_be_bytes());
    key[2..].copy_from_slice(digest.as_ref());
    key
}

/// The digest in a [`storage_key`].
fn key_digest(key: &[u8]) -> Option<Digest> {
    key.get(2..22).and_then(|d| d.try_into().ok())
}

/// The digest and record of one stored entry of namespace `ns` (key: [`storage_key`]).
fn stored_entry(ns: &str, key: &[u8], value: &[u8]) -> Result<(Digest, Record), StoreError> {
    let digest = key_digest(key).ok_or_else(|| StoreError::Corrupt {
        namespace: ns.to_owned(),
        digest: hex(key),
        source: CorruptRecord("storage key is not partition and digest"),
    })?;
    Ok((digest, decode(ns, &digest, value)?))
}

fn decode(ns: &str, digest: &Digest, bytes: &[u8]) -> Result<Record, StoreError> {
    record::decode(bytes).map_err(|source| StoreError::Corrupt {
        namespace: ns.to_owned(),
        digest: digest.to_string(),
        source,
    })
}

/// Lowercase hex of bytes, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Group commit: writers take a ticket; one thread fsyncs for every ticket issued before the
/// fsync started and publishes the durable ticket.
#[derive(Debug)]
struct GroupCommit {
    shared: Arc<(Mutex<CommitState>, Condvar)>,
    /// How long each fsync took.
    latency: Arc<FsyncHistogram>,
    durable: watch::Receiver<Durable>,
    /// The syncer's publisher, kept so tests can poison the store as a failed fsync would.
    #[cfg(test)]
    publish: Arc<watch::Sender<Durable>>,
}

#[derive(Debug, Default)]
struct CommitState {
    requested: u64,
    shutdown: bool,
    /// The syncer sleeps until `requested` reaches this; `None` while it is not waiting.
    /// Writers wake it only then, not with a futex call each.
    wake_at: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Durable {
    ticket: u64,
    poisoned: Option<String>,
}

impl GroupCommit {
    fn start(db: Database, journal: JournalSync, max_wait: Duration, max_batch: u64) -> Self {
        let shared = Arc::new((Mutex::new(CommitState::default()), Condvar::new()));
        let (publish, durable) = watch::channel(Durable::default());
        let publish = Arc::new(publish);
        let latency = Arc::new(FsyncHistogram::default());
        let (thread_shared, thread_publish) = (shared.clone(), publish.clone());
        let syncer = Syncer { db, journal, latency: latency.clone(), max_wait, max_batch };
        std::thread::Builder::new()
            .name("ferry-group-commit".into())
            .spawn(move || syncer.run(&thread_shared, &thread_publish))
            .map_err(|e| tracing::error!(error = %e, "start group-commit thread"))
            .ok();
        #[cfg(not(test))]
        drop(publish);
        Self {
            shared,
            latency,
            durable,
            #[cfg(test)]
            publish,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        match &self.durable.borrow().poisoned {
            Some(reason) => Err(StoreError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    async fn wait_durable(&self) -> Result<(), StoreError> {
        let ticket = {
            let (state, wake) = &*self.shared;
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            state.requested += 1;
            if state.wake_at.is_some_and(|at| state.requested >= at) {
                state.wake_at = None;
                wake.notify_one();
            }
            state.requested
        };
        let mut durable = self.durable.clone();
        let reached = durable
            .wait_for(|d| d.ticket >= ticket || d.poisoned.is_some())
            .await
            .map_err(|_| StoreError::Poisoned("group-commit thread stopped".into()))?;
        match &reached.poisoned {
            Some(reason) => Err(StoreError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        let (state, wake) = &*self.shared;
        state.lock().unwrap_or_else(PoisonError::into_inner).shutdown = true;
        wake.notify_one();
    }
}

/// The group-commit thread's state.
struct Syncer {
    db: Database,
    journal: JournalSync,
    latency: Arc<FsyncHistogram>,
    max_wait: Duration,
    max_batch: u64,
}

impl Syncer {
    fn run(mut self, shared: &(Mutex<CommitState>, Condvar), publish: &watch::Sender<Durable>) {
        let (max_wait, max_batch) = (self.max_wait, self.max_batch);
        let (state, wake) = shared;
        let mut durable = 0u64;
        loop {
            let target = {
                let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
                while guard.requested == durable && !guard.shutdown {
                    guard.wake_at = Some(durable + 1);
                    guard = wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
                }
                if guard.shutdown && guard.requested == durable {
                    return;
                }
                // Optionally linger for more writers to share this fsync.
                if !max_wait.is_zero() && guard.requested - durable < max_batch {
                    guard.wake_at = Some(durable + max_batch);
                    guard = wake
                        .wait_timeout_while(guard, max_wait, |s| {
                            s.requested - durable < max_batch && !s.shutdown
                        })
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                guard.wake_at = None;
                guard.requested
            };
            let started = std::time::Instant::now();
            let synced = self.journal.sync(&self.db);
            self.latency.observe(started.elapsed());
            if let Err(error) = synced {
                tracing::error!(%error, "fsync of storage failed; storage is poisoned");
                publish
                    .send_replace(Durable { ticket: durable, poisoned: Some(error.to_string()) });
                return;
            }
            durable = target;
            // Once poisoned, always poisoned: only the ticket moves.
            publish.send_modify(|published| published.ticket = durable);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::{Bin, Value};
    use ferry_tests::{Site, TopologyBuilder};

    /// Namespace `name` with the topology's defaults.
    pub(crate) fn namespace(name: &str) -> Namespace {
        let text = TopologyBuilder::new("ferry")
            .add_site(Site::new("a", 1).node_ids(&["n"]))
            .namespace(ferry_tests::Namespace::new(name))
            .ports_from(1)
            .build()
            .text;
        let topology = ferry_topology::parse_topology("t.toml", &text).expect("valid").topology;
        topology.sites[0].namespaces[0].clone()
    }

    fn record(value: i64) -> Record {
        Record {
            generation: 1,
            last_update_ms: 1,
            created_ms: 1,
            void_time: 0,
            origin_site: 1,
            tombstone: false,
            set: "s".into(),
            key: None,
            bins: vec![Bin { name: "b".into(), value: Value::integer(value) }],
            logged_lsn: None,
        }
    }

    /// A digest of `partition`, otherwise `first` repeated.
    pub(crate) fn digest(first: u8, partition: u16) -> Digest {
        let mut d = [first; 20];
        d[0..2].copy_from_slice(&partition.to_le_bytes());
        d[2] = 0;
        d[3] = 0;
        Digest(d)
    }

    #[tokio::test]
    async fn writes_survive_reopen_after_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = digest(7, 10);
        {
            let store = Store::open(dir.path(), &[namespace("test")]).expect("open");
            store.put("test", &d, &record(5)).expect("put");
            store.commit("test").await.expect("commit");
        }
        let store = Store::open(dir.path(), &[namespace("test")]).expect("reopen");
        assert_eq!(store.get("test", &d).expect("get"), Some(record(5)));
        assert!(matches!(store.get("nope", &d), Err(StoreError::UnknownNamespace(_))));
    }

    #[tokio::test]
    async fn a_creation_cut_short_by_a_crash_is_created_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What a kill during fjall's creation leaves: a journal, no version marker.
        std::fs::write(dir.path().join("0.jnl"), b"").expect("journal");
        let store = Store::open(dir.path(), &[namespace("test")]).expect("created anew");
        store.put("test", &digest(1, 1), &record(7)).expect("put");
        store.commit("test").await.expect("durable");
        drop(store);
        let store = Store::open(dir.path(), &[namespace("test")]).expect("reopened");
        assert_eq!(store.get("test", &digest(1, 1)).expect("get"), Some(record(7)));
    }

    #[test]
    fn truncated_records_are_gone_for_every_reader_and_stay_gone_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |lut: u64, set: &str| Record { last_update_ms: lut, set: set.into(), ..record(1) };
        let (old, new, other) = (digest(1, 5), digest(2, 5), digest(3, 5));
        {
            let store = Store::open(dir.path(), &[namespace("test")]).expect("open");
            store.put("test", &old, &at(100, "s")).expect("put");
            store.put("test", &new, &at(300, "s")).expect("put");
            store.put("test", &other, &at(100, "t")).expect("put");
            assert_eq!(store.truncate("test", Some("s"), 200).expect("truncate"), 200);
            assert_eq!(store.truncate("test", Some("s"), 150).expect("truncate"), 200, "forward");
            assert!(store.truncate("nope", None, 1).is_err());
            assert_eq!(store.get("test", &old).expect("get"), None);
            assert!(store.get("test", &new).expect("get").is_some(), "written after the cut-off");
            assert!(store.get("test", &other).expect("get").is_some(), "another set");
            let scanned: Vec<Digest> = store
                .scan_partition("test", 5, None)
                .expect("scan")
                .map(|item| item.expect("record").0)
                .collect();
            assert_eq!(scanned.len(), 2);
            assert!(!scanned.contains(&old));
            assert_eq!(store.truncation_cutoff("test", "s"), 200);
            assert_eq!(store.truncation_cutoff("test", "t"), 0);
        }
        let store = Store::open(dir.path(), &[namespace("test")]).expect("reopen");
        assert_eq!(store.get("test", &old).expect("get"), None, "the cut-off is durable");
        let tombstone = Record { tombstone: true, bins: Vec::new(), ..at(400, "t") };
        store.put("test", &digest(4, 6), &tombstone).expect("put a tombstone");
        let sets = store.set_stats("test").expect("set stats");
        let counts: Vec<(&str, u64, u64)> =
            sets.iter().map(|(set, s)| (set.as_str(), s.objects, s.tombstones)).collect();
        assert_eq!(counts, [("s", 1, 0), ("t", 1, 1)], "the truncated record is not counted");
        store.truncate("test", None, 150).expect("truncate the namespace");
        assert_eq!(store.get("test", &other).expect("get"), None);
        assert_eq!(store.remove_truncated("test").expect("remove"), 2);
        assert_eq!(store.remove_truncated("test").expect("remove again"), 0);
        assert!(store.get("test", &new).expect("get").is_some());
    }

    #[tokio::test]
    async fn parked_records_are_kept_per_link_durably_and_replaced_by_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parked = |key: u8, reason: &str| ParkedRecord {
            namespace: "test".into(),
            digest: Digest([key; 20]),
            set: "s".into(),
            lut_ms: u64::from(key),
            reason: reason.into(),
            parked_at_ms: 9,
        };
        {
            let store = Store::open(dir.path(), &[namespace("test")]).expect("open");
            store
                .update_parked("b", &[parked(1, "too big"), parked(2, "too big")], &[])
                .expect("park");
            store.update_parked("bb", &[parked(3, "set name")], &[]).expect("park");
            store
                .update_parked("b", &[parked(1, "again")], &[("test".into(), Digest([2; 20]))])
                .expect("park and unpark");
        }
        let store = Store::open(dir.path(), &[namespace("test")]).expect("reopen");
        assert_eq!(store.parked("b").expect("list"), vec![parked(1, "again")]);
        assert_eq!(
            store.parked("bb").expect("list"),
            vec![parked(3, "set name")],
            "no prefix bleed"
        );
        assert_eq!(store.parked("c").expect("list"), Vec::new());
    }

    #[tokio::test]
    async fn partition_scan_is_digest_ordered_and_resumable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &[namespace("test")]).expect("open");
        for first in [9u8, 3, 5] {
            store.put("test", &digest(first, 4095), &record(i64::from(first))).expect("put");
        }
        store.put("test", &digest(1, 4094), &record(1)).expect("put other partition");
        let all: Vec<Digest> = store
            .scan_partition("test", 4095, None)
            .expect("scan")
            .map(|r| r.expect("record").0)
            .collect();
        assert_eq!(all, [digest(3, 4095), digest(5, 4095), digest(9, 4095)]);
        let rest: Vec<Digest> = store
            .scan_partition("test", 4095, Some(&all[0]))
            .expect("scan")
            .map(|r| r.expect("record").0)
            .collect();
        assert_eq!(rest, all[1..]);
        let other: Vec<Digest> = store
            .scan_partition("test", 4094, None)
            .expect("scan")
            .map(|r| r.expect("record").0)
            .collect();
        assert_eq!(other, [digest(1, 4094)]);
        let versions = store.partition_versions("test", 4095).expect("versions");
        assert_eq!(
            versions,
            [(digest(3, 4095), 1, 1), (digest(5, 4095), 1, 1), (digest(9, 4095), 1, 1)]
        );
    }

    #[tokio::test]
    async fn concurrent_commits_all_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &[namespace("test")]).expect("open");
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.put("test", &digest(i, u16::from(i)), &record(i64::from(i))).expect("put");
                store.commit("test").await
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("commit");
        }
    }
}
