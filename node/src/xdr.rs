//! The node's XDR service: its QUIC endpoint, the receiver that applies batches from linked
//! sites, and one shipper per outgoing DR link reading the node's digest log. The XDR logic
//! lives in `ferry-xdr`; this module plugs the node's store into it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_digestlog::CursorStart;
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
use tokio::task::JoinSet;

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
    shippers: JoinSet<()>,
    stop: watch::Sender<bool>,
}

/// The node's store as the shipper and the receiver see it.
#[derive(Debug)]
struct NodeRecords(Arc<NodeState>);

impl XdrService {
    /// Starts XDR for the node when its site takes part in any DR link; `None` otherwise.
    pub fn start(
        state: Arc<NodeState>,
        certs: &Path,
        routes: &XdrRoutes,
    ) -> Result<Option<XdrService>, XdrError> {
        let topology = state.topology.clone();
        let site = state.cluster.site().name.clone();
        let outgoing: Vec<_> =
            topology.links.iter().filter(|l| l.from == site && l.enabled).collect();
        let incoming = topology.links.iter().any(|l| l.to == site);
        if outgoing.is_empty() && !incoming {
            return Ok(None);
        }
        let node = state.cluster.node().clone();
        let certs_error = |source| XdrError::Certs { dir: certs.display().to_string(), source };
        let creds = NodeCredentials::load(certs, &site, &node.id).map_err(certs_error)?;
        let trust = TrustStore::load(&topology, certs).map_err(certs_error)?;
        let authorizer = Arc::new(LinkAuthorizer::new(topology.clone(), site.clone()));
        let addr = node.xdr.addr();
        let endpoint_error = |source| XdrError::Endpoint { addr, source };
        let endpoint = Endpoint::bind(addr, &creds, trust, authorizer, xdr_transport_settings())
            .map_err(endpoint_error)?;
        let records = Arc::new(NodeRecords(state.clone()));
        if incoming {
            let receiver =
                Receiver::new(topology.clone(), site.clone(), records.clone(), state.xdr.clone());
            endpoint.serve(Arc::new(receiver)).map_err(endpoint_error)?;
        }
        let (stop, stopped) = watch::channel(false);
        let mut shippers = JoinSet::new();
        for link in outgoing {
            let dc = link.to.to_string();
            let mut plan = LinkPlan::new(&topology, link)
                .map_err(|source| XdrError::Plan { dc: dc.clone(), source })?;
            for destination in plan.remote_nodes.values_mut() {
                if let Some(route) = routes.get(destination.id.as_str()) {
                    destination.xdr = *route;
                }
            }
            let Some(log) = state.digest_log() else {
                tracing::warn!(dc, "no digest log on this node: the link ships nothing from here");
                continue;
            };
            let cursor = log
                .open_cursor(&format!("xdr-{dc}"), CursorStart::Oldest)
                .map_err(|source| XdrError::Cursor { dc: dc.clone(), source })?;
            let shipper = Shipper::new(
                plan,
                records.clone(),
                &endpoint,
                state.xdr.link(&dc),
                ShipperSettings::default(),
                stopped.clone(),
            );
            let control = state.xdr.control(&dc);
            shippers.spawn(shipper.run(cursor, control));
        }
        tracing::info!(xdr = %addr, links = shippers.len(), receiving = incoming, "XDR started");
        Ok(Some(XdrService { endpoint, shippers, stop }))
    }

    /// Stops the shippers (their cursors stay at the last acknowledged batch) and drains the
    /// endpoint.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        while self.shippers.join_next().await.is_some() {}
        let report = self.endpoint.shutdown().await;
        tracing::info!(?report, "XDR stopped");
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
    fn read(&self, namespace: &str, digest: &[u8; 20]) -> Result<Option<ShippedRecord>, String> {
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
