//! A whole node as one embeddable value: [`Node::start`] takes the node's configuration, its
//! already-bound sockets and a shutdown future, opens storage and the digest log, starts XDR,
//! the admin API, background reclaim and the client/fabric server, and returns a
//! [`NodeHandle`] with the node's addresses and state. `ferry node run` is this plus signal
//! handling; tests can run a node in-process on port 0 the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ferry_topology::model::Node as TopologyNode;
use tokio::net::TcpListener;

use crate::node::{NodeConfig, NodeError, NodeState};
use crate::xdr::{XdrError, XdrService};

/// The node's sockets, bound before the node starts (so a caller can bind port 0 and learn the
/// addresses, or hand over sockets it inherited).
#[derive(Debug)]
pub struct Listeners {
    /// Aerospike clients.
    pub client: TcpListener,
    /// Requests forwarded by the site's other nodes.
    pub fabric: TcpListener,
    /// The admin HTTP API.
    pub admin: TcpListener,
    /// XDR's QUIC endpoint (UDP).
    pub xdr: std::net::UdpSocket,
}

impl Listeners {
    /// Binds the addresses the topology gives `node`.
    pub async fn bind(node: &TopologyNode) -> Result<Listeners, StartError> {
        let tcp = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })
        };
        let xdr = ferry_transport::Endpoint::bind_socket(
            node.xdr.addr(),
            &crate::xdr::transport_settings(),
        )
        .map_err(|source| StartError::BindXdr { addr: node.xdr.addr(), source })?;
        Ok(Listeners {
            client: tcp("client", node.client.addr()).await?,
            fabric: tcp("fabric", node.fabric.addr()).await?,
            admin: tcp("admin", node.admin.addr()).await?,
            xdr,
        })
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] NodeError),
    #[error(transparent)]
    Xdr(#[from] XdrError),
    #[error("join the site's membership group: {0}")]
    Membership(#[from] crate::membership::JoinError),
    #[error("bind {what} address {addr} (in use?): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("bind XDR address {addr} (UDP): {source}")]
    BindXdr { addr: SocketAddr, source: ferry_transport::TransportError },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(
        "admin API access file (create one with `ferry access grant NAME --role admin --access \
         FILE`): {0}"
    )]
    Access(#[from] ferry_auth::AccessError),
    #[error(transparent)]
    PlainHttp(#[from] ferry_auth::gate::NotLoopback),
    #[error(
        "site '{0}' turns security on: its users and roles are kept by the topology service, so \
         run the node with --topology-service"
    )]
    SecurityWithoutService(String),
}

/// How long a stopping node waits for its audit events to be reported.
const AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// The storage node.
#[derive(Debug)]
pub struct Node;

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's state: storage, counters, XDR stats.
    pub state: Arc<NodeState>,
    /// Where clients connect.
    pub client: SocketAddr,
    /// Where the site's other nodes forward requests.
    pub fabric: SocketAddr,
    /// The admin HTTP API.
    pub admin: SocketAddr,
    /// XDR's QUIC endpoint.
    pub xdr: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl NodeHandle {
    /// Resolves once the node has stopped (after its shutdown future resolved).
    pub async fn wait(self) -> Result<(), StartError> {
        self.task.await.map_err(|e| StartError::Io { what: "node task", source: e.into() })?
    }
}

impl Node {
    /// Starts the node described by `config` on `listeners`; it runs until `shutdown` resolves,
    /// then stops accepting, lets requests in flight finish, stops its shippers (their cursors
    /// stay at the last acknowledged batch) and drains XDR.
    pub async fn start(
        config: NodeConfig,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<NodeHandle, StartError> {
        let local = |what: &'static str, listener: &TcpListener| {
            listener.local_addr().map_err(|source| StartError::Io { what, source })
        };
        let client = local("client address", &listeners.client)?;
        let fabric = local("fabric address", &listeners.fabric)?;
        let admin = local("admin address", &listeners.admin)?;
        ferry_auth::gate::require_loopback("admin API", admin)?;
        let access = Arc::new(ferry_auth::AccessFile::open(&config.access)?);
        let gate = ferry_auth::Gate::new(access, crate::admin::required_role);
        let xdr = listeners
            .xdr
            .local_addr()
            .map_err(|source| StartError::Io { what: "XDR address", source })?;
        let state = Arc::new(NodeState::open(&config)?);
        let security = if state.security.enabled() {
            let url = config
                .topology_service
                .as_deref()
                .ok_or_else(|| StartError::SecurityWithoutService(config.site.clone()))?;
            let credential = ferry_auth::access::read_credential(&config.topology_credential)
                .map_err(StartError::Access)?;
            let client = ferry_topology::service::TopologyClient::new(url, Some(credential));
            Some(state.security.follow(client).await)
        } else {
            None
        };
        crate::membership::join(&state, &config).await?;
        let xdr_service = XdrService::start(state.clone(), &config, listeners.xdr).await?;
        tracing::info!(
            node = %config.node,
            site = %config.site,
            %client,
            %fabric,
            %admin,
            data = %config.data_dir.display(),
            "node ready"
        );
        let task = tokio::spawn(serve(
            state.clone(),
            config,
            listeners.client,
            listeners.fabric,
            (listeners.admin, gate),
            (xdr_service, security),
            shutdown,
        ));
        Ok(NodeHandle { state, client, fabric, admin, xdr, task })
    }
}

async fn serve(
    state: Arc<NodeState>,
    config: NodeConfig,
    client: TcpListener,
    fabric: TcpListener,
    (admin, gate): (TcpListener, ferry_auth::Gate),
    (xdr, security): (Option<XdrService>, Option<tokio::task::JoinHandle<()>>),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::admin::serve(state.clone(), admin, gate, async {
        let _ = admin_stopped.await;
    }));
    let reclaim = tokio::spawn(crate::reclaim::run(state.clone(), config.nsup_period));
    let served = crate::server::run(state.clone(), client, fabric, shutdown).await;
    reclaim.abort();
    if let Some(security) = security {
        security.abort();
    }
    let _ = stop_admin.send(());
    let _ = admin.await;
    if let Some(xdr) = xdr {
        xdr.stop().await;
    }
    state.audit.flush(AUDIT_FLUSH).await;
    tracing::info!(node = %config.node, "node stopped");
    served.map_err(|source| StartError::Io { what: "serve clients", source })
}
