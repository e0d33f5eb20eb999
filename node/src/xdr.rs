//! The node's XDR service: its QUIC endpoint, the receiver that applies batches from linked
//! sites, and one shipper per outgoing DR link reading the node's digest log. The XDR logic
//! lives in `ferry-xdr`; this module plugs the node's store into it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_digestlog::{Cursor, CursorStart};
use ferry_topology::Topology;
use ferry_topology::model::Link;
use ferry_topology::placement::partition_of;
use ferry_transport::{
    Backoff, Client, Endpoint, Frame, InvalidName, NodeCredentials, TransportSettings, TrustStore,
};
use ferry_xdr::ack::{self, Ack};
use ferry_xdr::admission::{LinkAuthorizer, peer_identity, site_members};
use ferry_xdr::batch::{Batch, Compression, ShippedBin, ShippedRecord};
use ferry_xdr::parked::ParkedRecord;
use ferry_xdr::plan::LinkPlan;
use ferry_xdr::receive::{Applier, ApplyOutcome, ApplyRefusal, Delivery, Receiver};
use ferry_xdr::ship::{LocalRecord, LocalRecords, Shipper, ShipperSettings};
use ferry_xdr::sitemap::{NamespaceMasters, SiteMap};
use tokio::sync::watch;

use crate::node::{NodeConfig, NodeState};
use crate::record::Record;
use crate::storage::{Digest, StoreError};

/// Why XDR could not start on this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdrError {
    #[error("XDR certificates in {dir}: {source} (create them with `ferry certs init`)")]
    Certs { dir: String, source: ferry_transport::CertError },
    #[error("XDR endpoint on {addr}: {source}")]
    Endpoint { addr: std::net::SocketAddr, source: ferry_transport::TransportError },
    #[error("link to {dc}: {source}")]
    Plan { dc: String, source: ferry_xdr::plan::PlanError },
    #[error("a name of the topology is no certificate identity: {0}")]
    Identity(#[from] InvalidName),
    #[error("link to {dc}: open the digest-log cursor: {source}")]
    Cursor { dc: String, source: ferry_digestlog::CursorError },
    #[error("the topology service's credential: {0}")]
    Credential(#[from] ferry_auth::AccessError),
}

/// Addresses to dial instead of a destination node's own XDR address (a WAN relay in front of
/// it), by node id.
pub type XdrRoutes = HashMap<String, SocketAddr>;

/// A running XDR service.
#[derive(Debug)]
pub struct XdrService {
    endpoint: Endpoint,
    links: Arc<tokio::sync::Mutex<Links>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Applies link settings changed on this node alone (`set-config`).
    local: tokio::task::JoinHandle<()>,
    /// Reloads the certificates when their files change.
    certificates: tokio::task::JoinHandle<()>,
}

/// The node's store as the shipper and the receiver see it, and the way to the other nodes of
/// the site for records they own.
#[derive(Debug)]
struct NodeRecords {
    state: Arc<NodeState>,
    endpoint: Endpoint,
    /// Clients of the site's other nodes, by id, created on first use.
    peers: std::sync::Mutex<HashMap<String, Client>>,
}

/// The shippers running on this node, one per enabled outgoing link.
#[derive(Debug)]
struct Links {
    state: Arc<NodeState>,
    records: Arc<NodeRecords>,
    endpoint: Endpoint,
    /// The node's certificate directory, read again as the topology or the files change.
    certs: std::path::PathBuf,
    routes: XdrRoutes,
    running: BTreeMap<String, RunningLink>,
}

#[derive(Debug)]
struct RunningLink {
    /// The link's settings the shipper was started with.
    link: Link,
    stop: watch::Sender<bool>,
    /// The link's [`Supervised`] shipper.
    task: tokio::task::JoinHandle<()>,
}

impl XdrService {
    /// Starts XDR for the node when its site takes part in any DR link, or when it follows a
    /// topology service (links may be added later); `None` otherwise. With `topology_service`,
    /// link changes (added, removed, enabled, disabled, settings) apply live.
    pub async fn start(
        state: Arc<NodeState>,
        config: &NodeConfig,
        socket: std::net::UdpSocket,
    ) -> Result<Option<XdrService>, XdrError> {
        let (certs, routes) = (config.certs.as_path(), &config.xdr_routes);
        let topology_service = config.topology_service.as_deref();
        let topology = state.topology.get();
        let site = state.site().name.clone();
        let linked = topology.links.iter().any(|l| l.from == site || l.to == site);
        if !linked && topology_service.is_none() {
            return Ok(None);
        }
        let node = state.this_node().clone();
        let certs_error = |source| XdrError::Certs { dir: certs.display().to_string(), source };
        let identity = peer_identity(&site, &node.id)?;
        let creds =
            NodeCredentials::load(certs, &identity.site, &identity.node).map_err(certs_error)?;
        let trust = TrustStore::load(&site_members(&topology)?, certs).map_err(certs_error)?;
        let authorizer = Arc::new(LinkAuthorizer::new(state.topology.clone(), site.clone()));
        let addr = socket.local_addr().unwrap_or_else(|_| node.xdr.addr());
        let endpoint_error = |source| XdrError::Endpoint { addr, source };
        let endpoint =
            Endpoint::from_socket(socket, &creds, trust, authorizer, transport_settings())
                .map_err(endpoint_error)?;
        let records = Arc::new(NodeRecords::new(state.clone(), endpoint.clone()));
        let receiver =
            Receiver::new(state.topology.clone(), site, records.clone(), state.xdr.clone());
        endpoint.serve(Arc::new(receiver)).map_err(endpoint_error)?;
        let mut links = Links {
            state: state.clone(),
            records,
            endpoint: endpoint.clone(),
            certs: certs.to_path_buf(),
            routes: routes.clone(),
            running: BTreeMap::new(),
        };
        links.reconcile(&topology).await?;
        tracing::info!(xdr = %addr, links = links.running.len(), "XDR started");
        let links = Arc::new(tokio::sync::Mutex::new(links));
        let watcher = match topology_service {
            Some(url) => {
                let credential = ferry_auth::access::read_credential(&config.topology_credential)?;
                let client = ferry_topology::service::TopologyClient::new(url, Some(credential));
                state.audit.report_to(client.clone());
                Some(tokio::spawn(follow(client, state.clone(), links.clone())))
            }
            None => None,
        };
        let certificates = tokio::spawn(follow_certificate_files(state.clone(), links.clone()));
        let local = tokio::spawn(follow_local_changes(state, links.clone()));
        Ok(Some(XdrService { endpoint, links, watcher, local, certificates }))
    }

    /// Stops the shippers (their cursors stay at the last acknowledged batch) and drains the
    /// endpoint.
    pub async fn stop(self) {
        if let Some(watcher) = self.watcher {
            watcher.abort();
        }
        self.local.abort();
        self.certificates.abort();
        let mut links = self.links.lock().await;
        let running = std::mem::take(&mut links.running);
        for link in running.values() {
            link.stop.send_replace(true);
        }
        for (_, link) in running {
            let _ = link.task.await;
        }
        let report = self.endpoint.shutdown().await;
        tracing::info!(?report, "XDR stopped");
    }
}

/// Applies every new topology version from the service `client` asks: the site's fence and role,
/// and the node's links. A version counts as applied on this node (`topology_version`) once
/// both hold.
async fn follow(
    client: ferry_topology::service::TopologyClient,
    state: Arc<NodeState>,
    links: Arc<tokio::sync::Mutex<Links>>,
) {
    let mut versions = ferry_topology::service::spawn_watcher(client);
    while versions.changed().await.is_ok() {
        let Some(version) = versions.borrow_and_update().clone() else { continue };
        let topology = Arc::new(version.topology.clone());
        if *topology != *state.topology.get() {
            if !state.applies_live(&topology) {
                tracing::warn!(
                    version = version.version,
                    "this site's nodes or namespaces changed: restart the nodes to apply that part"
                );
            }
            tracing::info!(version = version.version, "topology changed; applying it");
            state.apply_topology(topology.clone()).await;
            let mut running = links.lock().await;
            // Sites, nodes and their CAs follow the topology: trust them before shipping.
            running.reload_certificates(&topology);
            if let Err(error) = running.reconcile(&topology).await {
                // Not reported as applied: a drill waiting for this version must not take
                // the links for stopped or started.
                tracing::error!(%error, version = version.version, "could not apply a link change");
                continue;
            }
        }
        let applied = u64::try_from(version.version).unwrap_or(0);
        state.topology_version.store(applied, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reconciles the shippers whenever `set-config` changed a link's settings on this node.
async fn follow_local_changes(state: Arc<NodeState>, links: Arc<tokio::sync::Mutex<Links>>) {
    loop {
        state.links_changed.notified().await;
        // The topology is read under the links' lock, so a newer version reconciled meanwhile
        // is never undone by this older read.
        let mut links = links.lock().await;
        let topology = state.topology.get();
        if let Err(error) = links.reconcile(&topology).await {
            tracing::error!(%error, "could not apply a link settings change");
        }
    }
}

/// How often the certificate directory is checked for changed files.
const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

/// Reloads the certificates and trust whenever the files of the node's certificate directory
/// change (a renewed certificate, the CA of a site the topology adds), once two looks in a row
/// agree: a directory being rewritten is not read half-way.
async fn follow_certificate_files(state: Arc<NodeState>, links: Arc<tokio::sync::Mutex<Links>>) {
    let dir = links.lock().await.certs.clone();
    let read = |dir: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || directory_contents(&dir)).await.unwrap_or_default()
    };
    let mut applied = read(dir.clone()).await;
    let mut previous = applied.clone();
    loop {
        tokio::time::sleep(CERTIFICATE_POLL).await;
        let now = read(dir.clone()).await;
        if now == previous && now != applied {
            links.lock().await.reload_certificates(&state.topology.get());
            applied = now.clone();
        }
        previous = now;
    }
}

/// Every file under `dir` with its bytes, sorted by path (a few small PEM files): compared
/// whole, so a rewrite that keeps sizes and timestamps is still seen.
fn directory_contents(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

impl Links {
    /// Makes the endpoint present the node's certificate as the directory holds it now and
    /// trust exactly the sites and nodes `topology` lists, with their CAs from the directory:
    /// a site the topology adds is trusted once its CA is there, with no restart. When the
    /// directory cannot be read whole, the CAs trusted so far stay, with the topology's nodes.
    fn reload_certificates(&self, topology: &Topology) {
        let members = match site_members(topology) {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(%error, "the topology's nodes are no identities");
                return;
            }
        };
        let identity = self.endpoint.identity().clone();
        let loaded = NodeCredentials::load(&self.certs, &identity.site, &identity.node)
            .and_then(|creds| Ok((creds, TrustStore::load(&members, &self.certs)?)));
        let failure = match loaded {
            Ok((creds, trust)) => match self.endpoint.reload(&creds, trust) {
                Ok(()) => return,
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        };
        let dir = self.certs.display();
        tracing::warn!(%dir, error = %failure, "certificates not reloaded; the CAs trusted so far stay");
        for site in self.endpoint.admit_members(&members) {
            tracing::warn!(%site, %dir, "site not trusted until its CA is in the certificate directory");
        }
    }

    /// Makes the running shippers match the enabled links out of this site in `topology`:
    /// stops removed, disabled and changed ones, starts new ones. A disabled link keeps its
    /// cursor, so the log keeps its changes until it is enabled again (or overflows).
    async fn reconcile(&mut self, topology: &Topology) -> Result<(), XdrError> {
        let site = self.state.site().name.clone();
        let outgoing: BTreeMap<String, &Link> = topology
            .links
            .iter()
            .filter(|l| l.from == site)
            .map(|l| (l.to.to_string(), l))
            .collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(dc, running)| {
                outgoing.get(*dc).is_none_or(|link| !link.enabled || **link != running.link)
            })
            .map(|(dc, _)| dc.clone())
            .collect();
        for dc in stale {
            if let Some(running) = self.running.remove(&dc) {
                running.stop.send_replace(true);
                // The shipper commits and drops its cursor as it stops; wait for that before a
                // restarted shipper opens the cursor again.
                let _ = running.task.await;
                tracing::info!(dc, "link stopped");
            }
        }
        let Some(log) = self.state.digest_log() else {
            if !outgoing.is_empty() {
                tracing::warn!("no digest log on this node: its links ship nothing from here");
            }
            return Ok(());
        };
        // A link gone from the topology (not just disabled) drops its cursor, so the log no
        // longer keeps its changes; its shipper stopped above.
        for cursor in log.cursors() {
            let Some(dc) = cursor.name.strip_prefix(CURSOR_PREFIX) else { continue };
            if !outgoing.contains_key(dc) && !self.running.contains_key(dc) {
                match log.remove_cursor(&cursor.name) {
                    Ok(()) => tracing::info!(dc, "link removed: its cursor is dropped"),
                    Err(error) => {
                        tracing::warn!(dc, %error, "could not drop a removed link's cursor")
                    }
                }
            }
        }
        for (dc, link) in outgoing {
            if self.running.contains_key(&dc) {
                continue;
            }
            let cursor = log
                .open_cursor(&cursor_name(&dc), CursorStart::Oldest)
                .map_err(|source| XdrError::Cursor { dc: dc.clone(), source })?;
            if !link.enabled {
                continue;
            }
            let mut plan = LinkPlan::new(topology, link)
                .map_err(|source| XdrError::Plan { dc: dc.clone(), source })?;
            for destination in plan.remote_nodes.values_mut() {
                if let Some(route) = self.routes.get(destination.id.as_str()) {
                    destination.xdr = *route;
                }
            }
            let (stop, stopped) = watch::channel(false);
            let supervised = Supervised {
                state: self.state.clone(),
                records: self.records.clone(),
                endpoint: self.endpoint.clone(),
                plan,
                stopped,
            };
            let task = tokio::spawn(supervised.run(cursor));
            tracing::info!(dc, "link started");
            self.running.insert(dc, RunningLink { link: link.clone(), stop, task });
        }
        Ok(())
    }
}

/// What every link's digest-log cursor name starts with.
const CURSOR_PREFIX: &str = "xdr-";

/// The digest-log cursor of the link to `dc`.
pub(crate) fn cursor_name(dc: &str) -> String {
    format!("{CURSOR_PREFIX}{dc}")
}

/// A link's shipper and what it takes to start it again.
struct Supervised {
    state: Arc<NodeState>,
    records: Arc<NodeRecords>,
    endpoint: Endpoint,
    plan: LinkPlan,
    stopped: watch::Receiver<bool>,
}

/// How long a shipper must run for its next stop to count as the first.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// Waits between restarts of a shipper that keeps stopping on its own.
const RESTART_BACKOFF: Backoff =
    Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30), jitter: 0.5 };

impl Supervised {
    /// Runs the shipper until told to stop. A shipper that stops on its own (a failed
    /// checkpoint, scan or task, a panic) restarts from its cursor's checkpoint with backoff;
    /// its error shows in the link's stats until the restarted shipper reaches the destination.
    async fn run(mut self, first: Cursor) {
        let dc = self.plan.dc().to_owned();
        let stats = self.state.xdr.link(&dc);
        let mut cursor = Some(first);
        let mut failures = 0u32;
        loop {
            let started = tokio::time::Instant::now();
            let error = match self.ship(cursor.take()).await {
                Ok(()) => return,
                Err(error) => error,
            };
            // A shipper that ran for a while earned a quick restart.
            if started.elapsed() > STABLE_RUN {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = RESTART_BACKOFF.delay(failures, rand::random::<f64>());
            tracing::error!(dc, %error, restart_in_ms = delay.as_millis() as u64, "link shipper stopped; restarting");
            stats.set_error(Some(error));
            ferry_xdr::stats::add(&stats.restarts, 1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.stopped.changed() => {}
            }
            if *self.stopped.borrow() {
                return;
            }
        }
    }

    /// One run of the shipper, on `cursor` or on the link's cursor opened again.
    async fn ship(&self, cursor: Option<Cursor>) -> Result<(), String> {
        let dc = self.plan.dc();
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => {
                let log = self.state.digest_log().ok_or("no digest log")?;
                log.open_cursor(&cursor_name(dc), CursorStart::Oldest)
                    .map_err(|e| format!("open the link's cursor: {e}"))?
            }
        };
        // A shipper that stopped lost the takeovers it had taken: this one re-ships them all.
        if let Some(journal) = self.state.takeovers.get() {
            journal.requeue(&self.state.xdr, dc);
        }
        let shipper = Shipper::new(
            self.plan.clone(),
            self.records.clone(),
            &self.endpoint,
            self.state.xdr.link(dc),
            ShipperSettings::default(),
            self.stopped.clone(),
        );
        // A task of its own, so a panic in the shipper is a stop like any other.
        match tokio::spawn(shipper.run(cursor, self.state.xdr.control(dc))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(join) => Err(format!("the shipper task failed: {join}")),
        }
    }
}

/// Transport settings for XDR: a lost batch is retried (idempotently) rather than waited for,
/// a silent peer is given up on after 4 s, and a healed link is redialed within two seconds.
pub(crate) fn transport_settings() -> TransportSettings {
    let defaults = TransportSettings::default();
    TransportSettings {
        // A shipper keeps at most 64 batches in flight per destination node, plus heartbeats.
        max_concurrent_requests: 128,
        request_timeout: Duration::from_secs(10),
        // A destination node that died (its UDP port silent) is given up on within seconds,
        // so the shipper routes its records through another node of its site.
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(4),
        backoff: Backoff { max: Duration::from_secs(2), ..defaults.backoff },
        ..defaults
    }
}

impl LocalRecords for NodeRecords {
    type Error = StoreError;

    fn masters(&self, namespace: &str, digest: &Digest) -> bool {
        self.state.cluster().is_master(namespace, partition_of(&digest.0))
    }

    async fn read(&self, namespace: &str, digest: &Digest) -> Result<LocalRecord, StoreError> {
        let _guard = self.state.store.lock(digest).await;
        match self.state.store.get(namespace, digest) {
            Ok(Some(record)) => Ok(LocalRecord::Current(to_shipped(*digest, record))),
            Ok(None) => Ok(LocalRecord::Gone),
            Err(error @ StoreError::Corrupt { .. }) => {
                Ok(LocalRecord::Unreadable(error.to_string()))
            }
            Err(error) => Err(error),
        }
    }

    async fn durable(&self, namespace: &str) -> Result<(), StoreError> {
        self.state.store.commit(namespace).await
    }

    fn update_parked(
        &self,
        dc: &str,
        records: &[ParkedRecord],
        unparked: &[(String, Digest)],
    ) -> Result<(), StoreError> {
        self.state.store.update_parked(dc, records, unparked)
    }

    fn parked(&self, dc: &str) -> Result<Vec<ParkedRecord>, StoreError> {
        self.state.store.parked(dc)
    }

    fn changed_since(
        &self,
        namespace: &str,
        partition: u16,
        min_lut_ms: u64,
    ) -> Result<Vec<(Digest, u64)>, StoreError> {
        let scan = self.state.store.scan_partition(namespace, partition, None)?;
        let mut changed = Vec::new();
        for item in scan {
            let (digest, record) = item?;
            if record.last_update_ms >= min_lut_ms {
                changed.push((digest, record.last_update_ms));
            }
        }
        Ok(changed)
    }
}

impl NodeRecords {
    fn new(state: Arc<NodeState>, endpoint: Endpoint) -> Self {
        NodeRecords { state, endpoint, peers: std::sync::Mutex::new(HashMap::new()) }
    }

    /// A client of `node` of this site.
    fn peer(&self, node: &ferry_topology::model::Node) -> Result<Client, InvalidName> {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = peers.get(node.id.as_str()) {
            return Ok(client.clone());
        }
        let identity = peer_identity(&self.state.site().name, &node.id)?;
        let client = self.endpoint.client(identity, node.xdr.addr());
        peers.insert(node.id.to_string(), client.clone());
        Ok(client)
    }

    /// Hands `records` of `batch` to the nodes of this site that own them and sums their
    /// acknowledgements. Any failure refuses the batch as retryable: the shipper sends it
    /// again, and what was applied meanwhile loses its conflict against itself.
    async fn forward(
        &self,
        batch: &Batch,
        records: Vec<ShippedRecord>,
    ) -> Result<ApplyOutcome, ApplyRefusal> {
        let namespace = &batch.namespace;
        let mut outcome = ApplyOutcome::default();
        let mut by_owner: BTreeMap<String, (ferry_topology::model::Node, Vec<ShippedRecord>)> =
            BTreeMap::new();
        let view = self.state.cluster();
        for record in records {
            let partition = partition_of(&record.digest);
            let Some(owner) = view.master(namespace, partition) else {
                return Err(ApplyRefusal {
                    retryable: true,
                    message: format!("no node of this site owns partition {partition}"),
                });
            };
            let entry = by_owner.entry(owner.id.to_string());
            entry.or_insert_with(|| (owner.clone(), Vec::new())).1.push(record);
        }
        for (owner, (node, records)) in by_owner {
            let count = records.len();
            let forwarded = Batch {
                id: batch.id,
                source_site: batch.source_site,
                namespace: namespace.clone(),
                records,
            };
            let (bytes, _) = forwarded.encode(Compression { level: 1, threshold: 1024 });
            let refusal = |message: String| ApplyRefusal {
                retryable: true,
                message: format!("forward {count} records to {owner}: {message}"),
            };
            let reply = self
                .peer(&node)
                .map_err(|e| refusal(e.to_string()))?
                .request(Frame::new(ack::frame_type(ack::FORWARD), bytes))
                .await
                .map_err(|e| refusal(e.to_string()))?;
            let ack = Ack::decode(&reply.payload).map_err(|e| refusal(e.to_string()))?;
            outcome.applied += ack.applied;
            outcome.stale += ack.stale;
            outcome.refused.extend(ack.refused);
        }
        Ok(outcome)
    }
}

impl Applier for NodeRecords {
    async fn apply(&self, batch: &Batch, delivery: Delivery) -> Result<ApplyOutcome, ApplyRefusal> {
        let state = &self.state;
        let namespace = &batch.namespace;
        if !state.map_known().await {
            return Err(ApplyRefusal {
                retryable: true,
                message: "this node is joining its site and knows no partition map yet".into(),
            });
        }
        // Over a link, records of partitions another node of this site owns go to that node
        // (the sender's map of this site differs from ours); forwarded ones are applied here.
        let (owned, foreign): (Vec<ShippedRecord>, Vec<ShippedRecord>) = match delivery {
            Delivery::Forwarded => {
                // Forwarded by a node whose map said this one masters them; if this node's
                // own map says otherwise, the sender retries once the maps agree.
                let view = state.cluster();
                if let Some(record) = batch
                    .records
                    .iter()
                    .find(|r| !view.is_master(namespace, partition_of(&r.digest)))
                {
                    let partition = partition_of(&record.digest);
                    return Err(ApplyRefusal {
                        retryable: true,
                        message: format!(
                            "partition {partition} is not mastered here at epoch {}",
                            view.epoch()
                        ),
                    });
                }
                (batch.records.clone(), Vec::new())
            }
            Delivery::Link => {
                let view = state.cluster();
                batch
                    .records
                    .iter()
                    .cloned()
                    .partition(|r| view.is_master(namespace, partition_of(&r.digest)))
            }
        };
        // Every failure is worth retrying: a namespace this node does not serve yet (it
        // restarts with a newer topology), a fence, a full disk. Records that break a limit
        // here are refused one by one instead, in the outcome.
        let counts = state
            .apply_remote(namespace, &owned)
            .await
            .map_err(|e| ApplyRefusal { retryable: true, message: e.to_string() })?;
        let mut outcome = if foreign.is_empty() {
            ApplyOutcome::default()
        } else {
            self.forward(batch, foreign).await?
        };
        outcome.applied += counts.applied as u32;
        outcome.stale += counts.lost_conflict as u32;
        outcome.refused.extend(counts.refused);
        Ok(outcome)
    }

    fn epoch(&self) -> u64 {
        self.state.cluster().epoch()
    }

    fn site_map(&self) -> SiteMap {
        if !self.state.map_settled() {
            return SiteMap::default(); // epoch 0: not known here yet
        }
        let view = self.state.cluster();
        let namespaces = self.state.site().namespaces.iter().map(|ns| {
            let name = ns.name.as_str();
            let masters =
                NamespaceMasters::from_fn(|p| view.master(name, p).map(|n| n.id.as_str()));
            (name.to_owned(), masters)
        });
        SiteMap { epoch: view.epoch(), namespaces: namespaces.collect() }
    }
}

/// A stored record as shipped: its own generation, LUT, origin and incarnation.
fn to_shipped(digest: Digest, record: Record) -> ShippedRecord {
    ShippedRecord {
        digest,
        stamp: record.stamp(),
        void_time: record.void_time,
        tombstone: record.tombstone,
        set: record.set,
        key: record.key,
        bins: record
            .bins
            .into_iter()
            .map(|b| ShippedBin { name: b.name, particle: b.value.particle, data: b.value.data })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_tests::{Link, Role, Site, TopologyBuilder};
    use ferry_xdr::conflict::VersionStamp;

    /// Site `a` (one node) links into site `b` (nodes `b0`, `b1`), namespace `test`, one copy,
    /// on free ports.
    fn topology() -> Topology {
        let text = TopologyBuilder::new("ferry")
            .add_site(Site::new("a", 1).node_ids(&["a0"]).role(Role::Active))
            .add_site(Site::new("b", 2).node_ids(&["b0", "b1"]).role(Role::Active))
            .link(Link::new("a", "b"))
            .build()
            .text;
        ferry_topology::parse_topology("t.toml", &text).expect("valid").topology
    }

    fn shipped(i: u32) -> ShippedRecord {
        let mut digest = [0u8; 20];
        digest[..4].copy_from_slice(&i.to_le_bytes());
        digest[4..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_le_bytes());
        ShippedRecord {
            digest: Digest(digest),
            stamp: VersionStamp {
                generation: 1,
                last_update_ms: 1_000,
                origin_site: 1,
                created_ms: 1_000,
            },
            void_time: 0,
            tombstone: false,
            set: "s".into(),
            key: None,
            bins: vec![ShippedBin { name: "b".into(), particle: 1, data: Bytes::from(vec![0; 8]) }],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_another_node_owns_are_forwarded_to_it() {
        let topology = topology();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        let members = site_members(&topology).expect("names fit");
        ferry_transport::certs::init(&members, &certs).expect("certs");
        let start = |node: &'static str| {
            let config = NodeConfig {
                certs: certs.clone(),
                ..NodeConfig::new(topology.clone(), "b", node, dir.path().join(node))
            };
            let state = Arc::new(NodeState::open(&config).expect("open node"));
            async move {
                let node = state.this_node().clone();
                let socket = Endpoint::bind_socket(node.xdr.addr(), &transport_settings())
                    .expect("bind XDR");
                let xdr = XdrService::start(state.clone(), &config, socket)
                    .await
                    .expect("start XDR")
                    .expect("b takes part in a link");
                (state, xdr)
            }
        };
        let (b1, owner) = start("b1").await;
        let (b0, receiving) = start("b0").await;
        let records = NodeRecords::new(b0.clone(), receiving.endpoint.clone());

        let batch = Batch {
            id: 7,
            source_site: 1,
            namespace: "test".into(),
            records: (0..64).map(shipped).collect(),
        };
        let owned_by_b1: Vec<&ShippedRecord> = batch
            .records
            .iter()
            .filter(|r| !b0.cluster().is_master("test", partition_of(&r.digest)))
            .collect();
        assert!(!owned_by_b1.is_empty() && owned_by_b1.len() < 64, "both nodes own some");

        let outcome = records.apply(&batch, Delivery::Link).await.expect("apply");
        assert_eq!(outcome, ApplyOutcome { applied: 64, stale: 0, refused: Vec::new() });
        for record in &batch.records {
            let at_b0 = b0.store.get("test", &record.digest).expect("get").is_some();
            let at_b1 = b1.store.get("test", &record.digest).expect("get").is_some();
            let b1_owns = owned_by_b1.contains(&record);
            assert_eq!((at_b0, at_b1), (!b1_owns, b1_owns), "stored only at the owner");
        }
        let forwarded = b1.xdr.receiver.forwarded_in.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(forwarded, owned_by_b1.len() as u64);
        // Delivered again: every record loses against itself, wherever it lives.
        let again = records.apply(&batch, Delivery::Link).await.expect("apply again");
        assert_eq!(again, ApplyOutcome { applied: 0, stale: 64, refused: Vec::new() });
        receiving.stop().await;
        owner.stop().await;
    }
}
