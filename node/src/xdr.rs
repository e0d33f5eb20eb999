//! The node's XDR service: its QUIC endpoint, the receiver that applies batches from linked
//! sites, and one shipper per outgoing DR link reading the node's digest log. The XDR logic
//! lives in `ferry-xdr`; this module plugs the node's store into it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_digestlog::CursorStart;
use ferry_topology::Topology;
use ferry_topology::model::Link;
use ferry_topology::placement::partition_of;
use ferry_transport::{
    Backoff, Endpoint, LinkAuthorizer, NodeCredentials, TransportSettings, TrustStore,
};
use ferry_xdr::batch::{ShippedBin, ShippedRecord};
use ferry_xdr::conflict::VersionStamp;
use ferry_xdr::plan::LinkPlan;
use ferry_xdr::receive::{Applier, ApplyOutcome, ApplyRefusal, Receiver};
use ferry_xdr::ship::{LocalRecords, Shipper, ShipperSettings};
use tokio::sync::watch;

use crate::apply::ApplyError;
use crate::node::NodeState;
use crate::record::Record;

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
    #[error("link to {dc}: open the digest-log cursor: {source}")]
    Cursor { dc: String, source: ferry_digestlog::CursorError },
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
}

/// The node's store as the shipper and the receiver see it.
#[derive(Debug)]
struct NodeRecords(Arc<NodeState>);

/// The shippers running on this node, one per enabled outgoing link.
#[derive(Debug)]
struct Links {
    state: Arc<NodeState>,
    records: Arc<NodeRecords>,
    endpoint: Endpoint,
    routes: XdrRoutes,
    running: BTreeMap<String, RunningLink>,
}

#[derive(Debug)]
struct RunningLink {
    /// The link's settings the shipper was started with.
    link: Link,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl XdrService {
    /// Starts XDR for the node when its site takes part in any DR link, or when it follows a
    /// topology service (links may be added later); `None` otherwise. With `topology_service`,
    /// link changes (added, removed, enabled, disabled, settings) apply live.
    pub async fn start(
        state: Arc<NodeState>,
        certs: &Path,
        routes: &XdrRoutes,
        topology_service: Option<&str>,
    ) -> Result<Option<XdrService>, XdrError> {
        let topology = state.topology.get();
        let site = state.cluster.site().name.clone();
        let linked = topology.links.iter().any(|l| l.from == site || l.to == site);
        if !linked && topology_service.is_none() {
            return Ok(None);
        }
        let node = state.cluster.node().clone();
        let certs_error = |source| XdrError::Certs { dir: certs.display().to_string(), source };
        let creds = NodeCredentials::load(certs, &site, &node.id).map_err(certs_error)?;
        let trust = TrustStore::load(&topology, certs).map_err(certs_error)?;
        let authorizer = Arc::new(LinkAuthorizer::new(state.topology.clone(), site.clone()));
        let addr = node.xdr.addr();
        let endpoint_error = |source| XdrError::Endpoint { addr, source };
        let endpoint = Endpoint::bind(addr, &creds, trust, authorizer, xdr_transport_settings())
            .map_err(endpoint_error)?;
        let records = Arc::new(NodeRecords(state.clone()));
        let receiver =
            Receiver::new(state.topology.clone(), site, records.clone(), state.xdr.clone());
        endpoint.serve(Arc::new(receiver)).map_err(endpoint_error)?;
        let mut links = Links {
            state: state.clone(),
            records,
            endpoint: endpoint.clone(),
            routes: routes.clone(),
            running: BTreeMap::new(),
        };
        links.reconcile(&topology).await?;
        tracing::info!(xdr = %addr, links = links.running.len(), "XDR started");
        let links = Arc::new(tokio::sync::Mutex::new(links));
        let watcher =
            topology_service.map(|url| tokio::spawn(follow(url.to_owned(), state, links.clone())));
        Ok(Some(XdrService { endpoint, links, watcher }))
    }

    /// Stops the shippers (their cursors stay at the last acknowledged batch) and drains the
    /// endpoint.
    pub async fn stop(self) {
        if let Some(watcher) = self.watcher {
            watcher.abort();
        }
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

/// Applies every new topology version from the service at `url` to the node's links.
async fn follow(url: String, state: Arc<NodeState>, links: Arc<tokio::sync::Mutex<Links>>) {
    let mut versions =
        ferry_topology::service::spawn_watcher(ferry_topology::service::TopologyClient::new(&url));
    while versions.changed().await.is_ok() {
        let Some(version) = versions.borrow_and_update().clone() else { continue };
        let topology = Arc::new(version.topology.clone());
        if *topology == *state.topology.get() {
            continue;
        }
        let site = state.cluster.site();
        if topology.site(site.name.as_str()) != Some(site) {
            tracing::warn!(
                version = version.version,
                "this site's nodes or namespaces changed: restart the nodes to apply that part"
            );
        }
        tracing::info!(version = version.version, "topology changed; applying link changes");
        state.topology.replace(topology.clone());
        if let Err(error) = links.lock().await.reconcile(&topology).await {
            tracing::error!(%error, "could not apply a link change");
        }
    }
}

impl Links {
    /// Makes the running shippers match the enabled links out of this site in `topology`:
    /// stops removed, disabled and changed ones, starts new ones. A disabled link keeps its
    /// cursor, so the log keeps its changes until it is enabled again (or overflows).
    async fn reconcile(&mut self, topology: &Topology) -> Result<(), XdrError> {
        let site = self.state.cluster.site().name.clone();
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
        for (dc, link) in outgoing {
            if self.running.contains_key(&dc) {
                continue;
            }
            let cursor = log
                .open_cursor(&format!("xdr-{dc}"), CursorStart::Oldest)
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
            let shipper = Shipper::new(
                plan,
                self.records.clone(),
                &self.endpoint,
                self.state.xdr.link(&dc),
                ShipperSettings::default(),
                stopped,
            );
            let task = tokio::spawn(shipper.run(cursor, self.state.xdr.control(&dc)));
            tracing::info!(dc, "link started");
            self.running.insert(dc, RunningLink { link: link.clone(), stop, task });
        }
        Ok(())
    }
}

/// Transport settings for XDR: a lost batch is retried (idempotently) rather than waited for,
/// and a healed link is redialed within two seconds.
fn xdr_transport_settings() -> TransportSettings {
    let defaults = TransportSettings::default();
    TransportSettings {
        request_timeout: Duration::from_secs(10),
        backoff: Backoff { max: Duration::from_secs(2), ..defaults.backoff },
        ..defaults
    }
}

impl LocalRecords for NodeRecords {
    async fn read(
        &self,
        namespace: &str,
        digest: &[u8; 20],
    ) -> Result<Option<ShippedRecord>, String> {
        let _guard = self.0.store.lock(digest).await;
        let record = self.0.store.get(namespace, digest).map_err(|e| e.to_string())?;
        Ok(record.map(|r| to_shipped(*digest, r)))
    }

    fn changed_since(
        &self,
        namespace: &str,
        partition: u16,
        min_lut_ms: u64,
    ) -> Result<Vec<([u8; 20], u64)>, String> {
        let scan =
            self.0.store.scan_partition(namespace, partition, None).map_err(|e| e.to_string())?;
        let mut changed = Vec::new();
        for item in scan {
            let (digest, record) = item.map_err(|e| e.to_string())?;
            if record.last_update_ms >= min_lut_ms {
                changed.push((digest, record.last_update_ms));
            }
        }
        Ok(changed)
    }
}

impl Applier for NodeRecords {
    async fn apply(
        &self,
        namespace: &str,
        records: &[ShippedRecord],
    ) -> Result<ApplyOutcome, ApplyRefusal> {
        let state = &self.0;
        // Records of partitions another node of this site masters are not applied here: the
        // shipper groups by the owner, so these only come from a sender with a different map.
        let (owned, foreign): (Vec<ShippedRecord>, Vec<ShippedRecord>) = records
            .iter()
            .cloned()
            .partition(|r| state.cluster.is_master(namespace, partition_of(&r.digest)));
        let counts = state.apply_remote(namespace, &owned).await.map_err(|e| ApplyRefusal {
            retryable: !matches!(e, ApplyError::UnknownNamespace(_)),
            message: e.to_string(),
        })?;
        Ok(ApplyOutcome {
            applied: counts.applied as u32,
            stale: counts.lost_conflict as u32,
            failed: foreign.len() as u32,
        })
    }
}

/// A stored record as shipped: its own generation, LUT and origin.
fn to_shipped(digest: [u8; 20], record: Record) -> ShippedRecord {
    ShippedRecord {
        digest,
        stamp: VersionStamp {
            generation: record.generation,
            last_update_ms: record.last_update_ms,
            origin_site: record.origin_site,
        },
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
