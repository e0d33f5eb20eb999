//! One node's state: its place in the site, its storage, its counters, and its connections to
//! peers for forwarding requests to the partition owner.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_topology::Topology;
use ferry_topology::model::Namespace;

use ferry_digestlog::{AppendError, CommitPolicy, DigestLog, Entry, OpenError};
use ferry_topology::model::CommitMode;
use ferry_topology::placement::partition_of;

use crate::cluster::{ClusterError, ClusterView};
pub use crate::fabric::ForwardError;
use crate::record::Record;
use crate::storage::Digest;
use crate::storage::{Store, StoreError};

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub topology: Topology,
    pub site: String,
    pub node: String,
    /// The node's state directory (storage lives under `storage/`).
    pub data_dir: PathBuf,
    /// Keep a digest log. Only benchmarks turn it off (to measure what logging costs): a node
    /// without its log has nothing for XDR to ship.
    pub digest_log: bool,
    /// Most bytes the digest log may use before links left behind overflow (default 4 GiB);
    /// tests shrink it to exercise overflow recovery.
    pub digest_log_cap: Option<u64>,
    /// XDR certificates (`ferry certs init`): `<certs>/<site>/ca.pem`, `<node>.pem`. Read only
    /// when the node's site takes part in a DR link or the node follows a topology service.
    pub certs: PathBuf,
    /// Addresses to dial instead of destination nodes' own XDR addresses (WAN relays).
    pub xdr_routes: crate::xdr::XdrRoutes,
    /// Addresses to dial instead of this site's other nodes' own fabric addresses (a relay or
    /// proxy between them), by node id.
    pub fabric_routes: std::collections::BTreeMap<String, SocketAddr>,
    /// Follow the topology service at this URL: DR link changes apply without a restart.
    pub topology_service: Option<String>,
    /// The token the node presents to the topology service (a credential file, mode 0600).
    /// Read only when the node follows a topology service.
    pub topology_credential: PathBuf,
    /// Who may call the admin API: the access file (token hashes and roles), followed as it
    /// changes.
    pub access: PathBuf,
    /// Time between passes that remove expired records and old tombstones (`nsup-period`).
    pub nsup_period: Duration,
    /// Heartbeats between the site's nodes (sites of three nodes or more): interval and the
    /// missed intervals that make a node failed.
    pub heartbeat: ferry_membership::Heartbeat,
    /// Kill the node at this step (tests of crashes no outside kill can time).
    pub crash_at: Option<crate::crash::CrashPoint>,
}

impl NodeConfig {
    /// Node `node` of `site` in `topology`, keeping its state in `data_dir`, with the defaults:
    /// a digest log of the default cap, certificates in `<data_dir>/certs`, the access file
    /// `<data_dir>/access.toml`, no routes, no topology service (its credential would be
    /// `<data_dir>/topology.token`), reclaim every 30 s.
    pub fn new(topology: Topology, site: &str, node: &str, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            topology,
            site: site.to_owned(),
            node: node.to_owned(),
            certs: data_dir.join("certs"),
            topology_credential: data_dir.join("topology.token"),
            access: data_dir.join("access.toml"),
            data_dir,
            digest_log: true,
            digest_log_cap: None,
            xdr_routes: crate::xdr::XdrRoutes::new(),
            fabric_routes: std::collections::BTreeMap::new(),
            topology_service: None,
            nsup_period: Duration::from_secs(30),
            crash_at: None,
            heartbeat: ferry_membership::Heartbeat::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("open storage in {dir}: {source}")]
    Storage { dir: String, source: StoreError },
    #[error("open digest log in {dir}: {source}")]
    DigestLog { dir: String, source: OpenError },
    #[error("append the changes the digest log lost in a crash: {0}")]
    Relog(String),
}

/// Counters shown by `statistics` and the admin endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub batch_requests: AtomicU64,
    pub scans: AtomicU64,
    pub forwarded: AtomicU64,
    pub errors: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct NodeState {
    /// The site as this node sees it at the latest committed membership epoch.
    cluster: std::sync::RwLock<Arc<ClusterView>>,
    /// This node's seat in the site's membership group (sites of three nodes or more).
    pub(crate) member: std::sync::OnceLock<crate::membership::SiteMember>,
    site: ferry_topology::model::Site,
    node: ferry_topology::model::Node,
    /// The latest shipping watermarks each peer announced (for takeovers).
    pub(crate) shipped: Mutex<std::collections::BTreeMap<String, crate::membership::Shipped>>,
    /// What this node migrated.
    pub migrations: crate::migrate::MigrationStats,
    /// Takeovers not yet re-shipped (sites with a membership group).
    pub(crate) takeovers: std::sync::OnceLock<crate::takeovers::TakeoverJournal>,
    fabric_routes: std::collections::BTreeMap<String, SocketAddr>,
    /// The deployment's current topology (XDR plans its links from it; it follows the
    /// topology service when the node watches one).
    pub topology: ferry_topology::SharedTopology,
    /// XDR links' stats and controls, and the receiver's stats.
    pub xdr: Arc<ferry_xdr::stats::Registry>,
    pub store: Store,
    pub stats: Stats,
    /// Where link controls and other changes this node was told to make are recorded.
    pub audit: crate::audit::AuditSink,
    /// Which writers the site refuses now (follows the topology service).
    pub fence: crate::fence::WriteGate,
    /// The topology service version whose site settings this node applies; 0 while it runs
    /// the topology it started with.
    pub topology_version: AtomicU64,
    /// Woken when the links' settings changed on this node alone (`set-config`), so XDR
    /// reconciles its shippers with [`NodeState::topology`].
    pub links_changed: tokio::sync::Notify,
    /// Held across a read-modify-write of [`NodeState::topology`] (`set-config`) and across
    /// taking a new version, so neither undoes the other.
    pub topology_edit: Mutex<()>,
    namespaces: HashMap<String, Namespace>,
    fabric: crate::fabric::Fabric,
    log: Option<DigestLog>,
    /// Logins, users and privileges on the client port (when the site turns them on).
    pub security: Arc<crate::security::Security>,
    /// Where this node kills itself, if anywhere (see [`crate::crash`]).
    pub(crate) crash_at: Option<crate::crash::CrashPoint>,
}

impl NodeState {
    /// Opens the node's storage and derives its view of the site.
    pub fn open(config: &NodeConfig) -> Result<Self, NodeError> {
        let cluster = ClusterView::new(&config.topology, &config.site, &config.node)?;
        let namespaces = cluster.site().namespaces.clone();
        let (site, node) = (cluster.site().clone(), cluster.node().clone());
        let dir = config.data_dir.join("storage");
        let store = Store::open(&dir, &namespaces)
            .map_err(|source| NodeError::Storage { dir: dir.display().to_string(), source })?;
        let log = if config.digest_log { Some(open_log(config, &namespaces)?) } else { None };
        let fence = crate::fence::WriteGate::for_site(cluster.site());
        let site_security = cluster.site().security;
        let state = Self {
            cluster: std::sync::RwLock::new(Arc::new(cluster)),
            member: std::sync::OnceLock::new(),
            site,
            node,
            shipped: Mutex::default(),
            migrations: crate::migrate::MigrationStats::default(),
            takeovers: std::sync::OnceLock::new(),
            fabric_routes: config.fabric_routes.clone(),
            topology: ferry_topology::SharedTopology::new(Arc::new(config.topology.clone())),
            xdr: Arc::default(),
            store,
            stats: Stats::default(),
            fence,
            audit: crate::audit::AuditSink::default(),
            topology_version: AtomicU64::new(0),
            links_changed: tokio::sync::Notify::new(),
            topology_edit: Mutex::new(()),
            namespaces: namespaces.into_iter().map(|ns| (ns.name.to_string(), ns)).collect(),
            fabric: crate::fabric::Fabric::default(),
            log,
            crash_at: config.crash_at,
            security: Arc::new(crate::security::Security::new(config.site.as_str(), site_security)),
        };
        let relogged = state.relog_lost_changes()?;
        if relogged > 0 {
            tracing::warn!(
                relogged,
                "digest log lost its tail in a crash; stored changes relogged"
            );
        }
        Ok(state)
    }

    /// Storage's journal is the write-ahead log: a write is acknowledged once storage holds it
    /// durably, with its digest-log position, while the log entry may still be unsynced. After
    /// a crash the log can therefore end before changes storage kept; this appends them again
    /// (in their old order) and stores their new positions, before anything reads the log.
    /// Returns how many. One pass over storage.
    fn relog_lost_changes(&self) -> Result<usize, NodeError> {
        let Some(log) = &self.log else { return Ok(0) };
        let last = log.flushed_lsn().0;
        let mut lost = Vec::new();
        for ns in self.store.namespace_names() {
            let versions = self
                .store
                .logged_after(&ns, last)
                .map_err(|error| NodeError::Relog(error.to_string()))?;
            lost.extend(versions.into_iter().map(|(digest, record)| (ns.clone(), digest, record)));
        }
        lost.sort_by_key(|(_, _, record)| record.logged_lsn);
        let relogged = lost.len();
        for (ns, digest, mut record) in lost {
            // An expiration tombstone relogs as a delete: storage does not tell them apart.
            record.logged_lsn = self
                .log_change(&ns, &digest, &record)
                .map_err(|e| NodeError::Relog(e.to_string()))?;
            self.store.put(&ns, &digest, &record).map_err(|e| NodeError::Relog(e.to_string()))?;
        }
        Ok(relogged)
    }

    /// Appends a record change to the digest log and returns its position (`None` when the
    /// node runs without a log) at once: the entry is written and synced in the background,
    /// and the caller stores the version with that position (see `relog_lost_changes`). Hold
    /// the record's lock from here until the version is stored, so a shipper reading the
    /// entry finds the version.
    pub fn log_change(
        &self,
        namespace: &str,
        digest: &Digest,
        record: &Record,
    ) -> Result<Option<u64>, AppendError> {
        self.log_op(namespace, digest, record, change_op(record), false)
    }

    /// Logs a change stored as a copy of the partition master's write (see
    /// [`crate::replica`]); returns its position like [`NodeState::log_change`].
    pub fn log_copy(
        &self,
        namespace: &str,
        digest: &Digest,
        record: &Record,
    ) -> Result<Option<u64>, AppendError> {
        self.log_op(namespace, digest, record, change_op(record), true)
    }

    /// Logs the tombstone an expiration left (see [`NodeState::ships_expirations`]); returns
    /// its position like [`NodeState::log_change`].
    pub fn log_expiration(
        &self,
        namespace: &str,
        digest: &Digest,
        tombstone: &Record,
    ) -> Result<Option<u64>, AppendError> {
        self.log_op(namespace, digest, tombstone, ferry_digestlog::Op::Expire, false)
    }

    /// Fails once the digest log is poisoned: a change stored since may have no entry until
    /// the node restarts (and relogs it), so it must not be acknowledged as shipped-to-be.
    pub fn log_healthy(&self) -> Result<(), AppendError> {
        match self.log.as_ref().and_then(DigestLog::poisoned) {
            Some(error) => Err(AppendError::Poisoned(error)),
            None => Ok(()),
        }
    }

    fn log_op(
        &self,
        namespace: &str,
        digest: &Digest,
        record: &Record,
        op: ferry_digestlog::Op,
        copy: bool,
    ) -> Result<Option<u64>, AppendError> {
        let Some(log) = &self.log else { return Ok(None) };
        let entry = Entry {
            digest: *digest,
            namespace: ferry_digestlog::namespace_id(namespace),
            partition: partition_of(digest),
            generation: record.generation,
            lut_ms: record.last_update_ms,
            op,
            xdr_applied: record.origin_site != self.site_id(),
            origin_site: record.origin_site,
            copy,
        };
        log.append_nowait(entry).map(|lsn| Some(lsn.0))
    }

    /// Whether versions applied from other sites are logged: only a link out of this site with
    /// `forward = true` can ship them (any other link filters them by origin), so without one
    /// logging them would cost an fsync'd append per record for nothing.
    pub fn forwards_applied_versions(&self) -> bool {
        let site = &self.site().name;
        self.topology.get().links.iter().any(|link| link.from == *site && link.forward)
    }

    /// Whether expirations must ship: a link out of this site has `ship-nsup-deletes`. Then an
    /// expired record becomes a logged tombstone instead of vanishing.
    pub fn ships_expirations(&self) -> bool {
        let site = &self.site().name;
        self.topology.get().links.iter().any(|link| link.from == *site && link.ship_nsup_deletes)
    }

    /// The site as this node sees it now (a new view with each membership epoch).
    pub fn cluster(&self) -> Arc<ClusterView> {
        Arc::clone(&self.cluster.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Installs the view of a membership epoch no older than the current one (the same epoch
    /// again when a joining node learns the group's members).
    pub(crate) fn set_cluster(&self, view: ClusterView) {
        let mut current = self.cluster.write().unwrap_or_else(PoisonError::into_inner);
        if view.epoch() >= current.epoch() {
            *current = Arc::new(view);
        }
    }

    /// This node's site, as the topology the node started with describes it.
    pub fn site(&self) -> &ferry_topology::model::Site {
        &self.site
    }

    /// This node, as the topology the node started with describes it.
    pub fn this_node(&self) -> &ferry_topology::model::Node {
        &self.node
    }

    /// The node's digest log, unless it runs without one.
    pub fn digest_log(&self) -> Option<&DigestLog> {
        self.log.as_ref()
    }

    /// A namespace served by this node.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// This site's id, stamped on client writes.
    pub fn site_id(&self) -> u8 {
        self.site().src_id.get()
    }

    /// Takes a new topology from the topology service: the site's role and write fence apply
    /// at once (XDR reconciles the links). Resolves once a client fence holds on every write
    /// in flight, so a drain that starts afterwards covers every write admitted before it.
    pub async fn apply_topology(&self, topology: Arc<Topology>) {
        let site = self.site();
        let fence = topology.site(site.name.as_str()).map_or(site.fence(), |now| now.fence());
        {
            let _editing = self.topology_edit.lock().unwrap_or_else(PoisonError::into_inner);
            self.topology.replace(topology);
        }
        self.fence.set(fence);
        loop {
            let in_flight = self.fence.settle(FENCE_PATIENCE).await;
            if in_flight == 0 {
                break;
            }
            tracing::warn!(in_flight, %fence, "client writes admitted before the fence still run");
        }
    }

    /// Sends a framed request to a peer's fabric address and returns its framed reply.
    pub async fn forward(&self, peer: SocketAddr, request: &[u8]) -> Result<Vec<u8>, ForwardError> {
        Stats::bump(&self.stats.forwarded);
        self.fabric.exchange(peer, request, FORWARD_TIMEOUT).await
    }

    /// The pooled connections to this site's other nodes.
    pub fn fabric(&self) -> &crate::fabric::Fabric {
        &self.fabric
    }

    /// Where to reach `node` of this site: its route when it has one, else its fabric address.
    pub fn fabric_addr(&self, node: &ferry_topology::model::Node) -> SocketAddr {
        crate::fabric::route(&self.fabric_routes, node)
    }

    /// Asks every other node of this site the info command `name` over the fabric; returns
    /// each node's id and its answer, or why it could not answer.
    pub async fn ask_peers(&self, name: &str) -> Vec<(String, Result<String, ForwardError>)> {
        let request = crate::proto::frame(crate::proto::TYPE_INFO, format!("{name}\n").as_bytes());
        let me = &self.this_node().id;
        let mut answers = Vec::new();
        let view = self.cluster();
        for node in view.site().nodes.iter().filter(|node| node.id != *me) {
            let reply =
                self.fabric.exchange(self.fabric_addr(node), &request, FORWARD_TIMEOUT).await;
            let reply = reply.map(|reply| {
                let body = reply.get(8..).unwrap_or_default();
                let answers = crate::proto::info::parse_reply(body);
                let answer = answers.into_iter().find(|(asked, _)| asked == name);
                answer.map_or_else(|| "ERROR:1:no answer".to_owned(), |(_, value)| value)
            });
            answers.push((node.id.to_string(), reply));
        }
        answers
    }
}

/// A stored version's log operation: tombstones are deletes.
fn change_op(record: &Record) -> ferry_digestlog::Op {
    if record.tombstone { ferry_digestlog::Op::Delete } else { ferry_digestlog::Op::Write }
}

fn open_log(config: &NodeConfig, namespaces: &[Namespace]) -> Result<DigestLog, NodeError> {
    let log_dir = config.data_dir.join("digestlog");
    let log_config = ferry_digestlog::Config {
        // Nobody waits for the log's fsync (storage's journal makes writes durable), so it
        // syncs in the background: soon when a namespace is durable, so links ship promptly.
        commit: if namespaces.iter().any(|ns| ns.commit_mode == CommitMode::Group) {
            CommitPolicy::buffered(Duration::from_millis(5))
        } else {
            CommitPolicy::buffered(Duration::from_millis(50))
        },
        ..ferry_digestlog::Config::default()
    };
    let log_config = match config.digest_log_cap {
        // Eight segments per cap keep deletion granular.
        Some(cap) => ferry_digestlog::Config { size_cap: cap, segment_size: cap / 8, ..log_config },
        None => log_config,
    };
    let (log, report) = ferry_digestlog::open_dir(&log_dir, log_config)
        .map_err(|source| NodeError::DigestLog { dir: log_dir.display().to_string(), source })?;
    tracing::info!(report = ?report, "digest log opened");
    Ok(log)
}

/// How long a node waits for client writes in flight under a new fence before it says so in
/// its log (it keeps waiting: the version counts as applied only once they are done).
const FENCE_PATIENCE: Duration = Duration::from_secs(5);
/// How long a forwarded request may take at the partition's owner.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use ferry_digestlog::{Batch, CursorStart};
    use ferry_tests::Namespace;

    use super::*;
    use crate::reclaim::tests::{node_n_of_site_a, site_a};

    fn version(generation: u16, tombstone: bool) -> Record {
        Record {
            generation,
            last_update_ms: 1_700_000_000_000 + u64::from(generation),
            created_ms: 1_700_000_000_000,
            void_time: 0,
            origin_site: 1,
            tombstone,
            set: "s".into(),
            key: None,
            bins: Vec::new(),
            logged_lsn: None,
        }
    }

    #[tokio::test]
    async fn stored_changes_the_log_lost_are_relogged_in_order_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let topology = site_a().namespace(Namespace::new("test"));
        let changes = [(Digest([3; 20]), version(4, false)), (Digest([1; 20]), version(2, true))];
        let unlogged = (Digest([2; 20]), version(7, false));
        {
            let state = node_n_of_site_a(topology.clone(), dir.path());
            for (digest, record) in &changes {
                let mut record = record.clone();
                record.logged_lsn = state.log_change("test", digest, &record).expect("log");
                state.store.put("test", digest, &record).expect("put");
            }
            // An applied version this site does not forward is stored without an entry.
            state.store.put("test", &unlogged.0, &unlogged.1).expect("put");
            state.store.commit("test").await.expect("durable");
        }
        // The crash took the whole log (storage, the write-ahead log, kept everything).
        std::fs::remove_dir_all(dir.path().join("digestlog")).expect("remove log");

        let state = node_n_of_site_a(topology, dir.path());
        let log = state.digest_log().expect("log");
        let mut cursor = log.open_cursor("check", CursorStart::Oldest).expect("cursor");
        let Batch::Entries(entries) = cursor.next_batch(10).await.expect("read") else {
            panic!("no overflow here");
        };
        let logged: Vec<_> =
            entries.iter().map(|e| (e.lsn.0, e.entry.digest, e.entry.generation)).collect();
        assert_eq!(logged, [(1, changes[0].0, 4), (2, changes[1].0, 2)], "old order kept");
        for (lsn, (digest, _)) in (1..).zip(&changes) {
            let stored = state.store.get("test", digest).expect("get").expect("kept");
            assert_eq!(stored.logged_lsn, Some(lsn), "the new position is stored");
        }
        let stored = state.store.get("test", &unlogged.0).expect("get").expect("kept");
        assert_eq!(stored.logged_lsn, None, "an unlogged version stays unlogged");
    }
}
