//! A deployment of a topology on this machine: the one way Ferry starts sites, used by
//! `ferry up` and by every end-to-end test, so the tests run what an operator runs.
//!
//! [`Deployment::start`] writes the topology into the state directory, creates dev certificates,
//! optionally serves the topology service (SQLite under the state directory; nodes then follow
//! it, so new versions apply live), starts a WAN relay in front of every destination node of a
//! link with `simulate-wan` (and of any extra site the spec asks for), starts every node as a
//! `ferry node run` process and waits until each accepts clients. While it runs, it answers the
//! questions an operator asks of it (info from a site's nodes, link states) and lets a fault
//! test kill and restart nodes or partition relays.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_topology::Topology;
use ferry_topology::model::SimulatedWan;
use ferry_transport::relay::{LinkShape, Relay, RelayConfig, RelayHandle};
use ferry_xdr::admission::site_members;
use ferry_xdr::stats::LinkSnapshot;

use crate::client::{self, ClientError, VersionDigest};
use crate::launcher::{LaunchError, Launcher, NodeProcess, Stopped};

/// How long a node has to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a starting node has to accept clients.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Files of a deployment's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// The topology file the nodes run (a copy of what was deployed).
    pub fn topology(&self) -> PathBuf {
        self.root.join("topology.toml")
    }

    /// The dev certificates: `<certs>/<site>/ca.pem`, `<node>.pem`.
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// The topology service's SQLite store.
    pub fn topology_db(&self) -> PathBuf {
        self.root.join("topology.db")
    }

    /// The URL of the topology service while the deployment serves one (what `ferry drill`
    /// applies new versions to).
    pub fn topology_service(&self) -> PathBuf {
        self.root.join("topology-service")
    }

    /// Where a drill or verification saves its reports.
    pub fn reports(&self) -> PathBuf {
        self.root.join("reports")
    }

    /// Who may call the control plane: token hashes and roles, read by the topology service
    /// and every node (re-read when it changes).
    pub fn access(&self) -> PathBuf {
        self.root.join("access.toml")
    }

    /// The password of the `admin` user that site `site`'s security started with (mode 0600).
    pub fn aerospike_admin_password(&self, site: &str) -> PathBuf {
        self.root.join("credentials").join(format!("{site}.aerospike-admin.password"))
    }

    /// The operator's credential of `role` (mode 0600), named after the role.
    pub fn credential(&self, role: ferry_auth::Role) -> PathBuf {
        self.root.join("credentials").join(format!("{role}.token"))
    }
}

/// What to deploy and how.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// The `ferry` binary that runs the nodes.
    pub binary: PathBuf,
    /// Where data, logs, certificates and the topology live.
    pub state: StateDir,
    /// Name of the topology for diagnostics (a path, or the built-in example's name).
    pub topology_source: String,
    /// The topology file's text.
    pub topology_text: String,
    /// Serve the topology service on this address and make the nodes follow it; `None` runs
    /// the nodes from the file alone.
    pub topology_service: Option<SocketAddr>,
    /// Extra arguments for every `ferry node run`.
    pub node_args: Vec<String>,
    /// Extra arguments for one node's `ferry node run`, by node id (e.g. its `--fabric-route`s).
    pub per_node_args: BTreeMap<String, Vec<String>>,
    /// A relay shaped like this in front of every node of the named site, dialed by the nodes
    /// of every other site (besides the relays of links with `simulate-wan`).
    pub relays: Vec<(String, LinkShape)>,
}

impl DeploySpec {
    /// A deployment of `topology_text` under `state_root`, run by `binary`, with no topology
    /// service, no extra relays and no extra arguments.
    pub fn new(
        binary: impl Into<PathBuf>,
        state_root: impl Into<PathBuf>,
        topology_text: &str,
    ) -> Self {
        DeploySpec {
            binary: binary.into(),
            state: StateDir { root: state_root.into() },
            topology_source: "topology.toml".to_owned(),
            topology_text: topology_text.to_owned(),
            topology_service: None,
            node_args: Vec::new(),
            per_node_args: BTreeMap::new(),
            relays: Vec::new(),
        }
    }
}

/// Why a deployment could not start or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error(transparent)]
    Topology(#[from] ferry_topology::InvalidTopology),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("create dev certificates: {0}")]
    Certs(#[from] ferry_transport::CertError),
    #[error("a name of the topology is no certificate identity: {0}")]
    Identity(#[from] ferry_transport::InvalidName),
    #[error("open topology store {url}: {source}")]
    Store { url: String, source: ferry_topology::store::StoreError },
    #[error("bind the topology service on {addr}: {source}")]
    Service { addr: SocketAddr, source: std::io::Error },
    #[error("start WAN relay in front of {node}: {source}")]
    Relay { node: String, source: ferry_transport::relay::RelayError },
    #[error("a node failed to start; stopped the others: {0}")]
    Launch(#[from] LaunchError),
    #[error("waiting for nodes to accept clients failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("the topology has no node '{0}'")]
    UnknownNode(String),
    #[error("the topology has no site '{0}'")]
    UnknownSite(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("control-plane credentials: {0}")]
    Access(#[from] ferry_auth::AccessError),
    #[error(transparent)]
    PlainHttp(#[from] ferry_auth::gate::NotLoopback),
    #[error("site {site}'s first Aerospike user: {reason}")]
    FirstAdmin { site: String, reason: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DeployError {
    let path = path.to_path_buf();
    move |source| DeployError::Io { action, path, source }
}

/// A relay in front of one destination node.
#[derive(Debug)]
pub struct NodeRelay {
    /// The site whose node the relay fronts.
    pub site: String,
    /// The node it fronts.
    pub node: String,
    pub handle: RelayHandle,
}

/// The embedded topology service.
#[derive(Debug)]
struct Service {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A running deployment. Dropping it kills every node (see [`NodeProcess`]); [`Deployment::stop`]
/// stops them gracefully.
#[derive(Debug)]
pub struct Deployment {
    pub state: StateDir,
    pub topology: Topology,
    launcher: Launcher,
    /// Per node: its extra arguments, and the `--xdr-route`s that make it dial relays.
    routes: BTreeMap<String, Vec<String>>,
    nodes: BTreeMap<String, NodeProcess>,
    relays: Vec<NodeRelay>,
    service: Option<Service>,
}

impl Deployment {
    /// Starts everything `spec` names and waits until every node accepts clients. On failure,
    /// whatever started is stopped again.
    pub async fn start(spec: DeploySpec) -> Result<Deployment, DeployError> {
        let state = spec.state.clone();
        std::fs::create_dir_all(&state.root).map_err(io_error("create", &state.root))?;
        let root = state.root.canonicalize().map_err(io_error("resolve", &state.root))?;
        let state = StateDir { root };
        let topology =
            ferry_topology::parse_topology(&spec.topology_source, &spec.topology_text)?.topology;
        let topology_file = state.topology();
        std::fs::write(&topology_file, &spec.topology_text)
            .map_err(io_error("write", &topology_file))?;
        ferry_transport::certs::init(&site_members(&topology)?, &state.certs())?;
        // One credential per role for the operator; the nodes and the service share the
        // access file, so a grant or revocation there applies everywhere without a restart.
        for role in ferry_auth::Role::ALL {
            let file = state.credential(role);
            ferry_auth::access::ensure_credential(&state.access(), &file, role.as_str(), role)?;
        }
        let service = match spec.topology_service {
            Some(listen) => Some(start_service(&state, &spec, &topology, listen).await?),
            None => None,
        };
        let mut node_args = spec.node_args.clone();
        node_args.extend(["--access".to_owned(), state.access().display().to_string()]);
        if let Some(service) = &service {
            node_args.extend(["--topology-service".to_owned(), service.url.clone()]);
        }
        let launcher = Launcher {
            binary: spec.binary.clone(),
            topology: topology_file,
            state_root: state.root.clone(),
            node_args,
        };
        let mut deployment = Deployment {
            state,
            topology,
            launcher,
            routes: spec.per_node_args.clone(),
            nodes: BTreeMap::new(),
            relays: Vec::new(),
            service,
        };
        if let Err(error) = deployment.start_all(&spec.relays).await {
            deployment.stop().await;
            return Err(error);
        }
        Ok(deployment)
    }

    async fn start_all(&mut self, extra_relays: &[(String, LinkShape)]) -> Result<(), DeployError> {
        self.start_relays(extra_relays).await?;
        let ids: Vec<String> = self.node_ids().collect();
        for id in &ids {
            let process = self.spawn(id)?;
            self.nodes.insert(id.clone(), process);
        }
        let mut nodes = std::mem::take(&mut self.nodes);
        let (nodes, ready) = tokio::task::spawn_blocking(move || {
            let ready = nodes.values_mut().try_for_each(|n| n.wait_ready(READY_TIMEOUT));
            (nodes, ready)
        })
        .await
        .map_err(DeployError::Task)?;
        self.nodes = nodes;
        ready?;
        Ok(())
    }

    /// A relay in front of every destination node of each link that simulates a WAN (dialed by
    /// the link's source nodes), and one in front of every node of each site in `extra`
    /// (dialed by every other site's nodes).
    async fn start_relays(&mut self, extra: &[(String, LinkShape)]) -> Result<(), DeployError> {
        let mut wanted: Vec<(String, Vec<String>, LinkShape)> = Vec::new();
        for link in &self.topology.links {
            let Some(wan) = &link.simulate_wan else { continue };
            let sources = self.site_node_ids(link.from.as_str())?;
            wanted.push((link.to.to_string(), sources, wan_shape(wan)));
        }
        for (site, shape) in extra {
            self.site_node_ids(site)?;
            let sources = self
                .topology
                .sites
                .iter()
                .filter(|s| s.name.as_str() != site)
                .flat_map(|s| s.nodes.iter().map(|n| n.id.to_string()))
                .collect();
            wanted.push((site.clone(), sources, *shape));
        }
        for (site, sources, shape) in wanted {
            let Some(destination) = self.topology.site(&site) else {
                return Err(DeployError::UnknownSite(site));
            };
            for node in &destination.nodes {
                let config =
                    RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), node.xdr.addr())
                        .with_shape(shape);
                let handle = Relay::start(config)
                    .await
                    .map_err(|source| DeployError::Relay { node: node.id.to_string(), source })?;
                for source in &sources {
                    self.routes.entry(source.clone()).or_default().extend([
                        "--xdr-route".to_owned(),
                        format!("{}={}", node.id, handle.listen_addr()),
                    ]);
                }
                self.relays.push(NodeRelay {
                    site: site.clone(),
                    node: node.id.to_string(),
                    handle,
                });
            }
        }
        Ok(())
    }

    fn spawn(&self, id: &str) -> Result<NodeProcess, DeployError> {
        let node = self
            .topology
            .sites
            .iter()
            .flat_map(|s| &s.nodes)
            .find(|n| n.id.as_str() == id)
            .ok_or_else(|| DeployError::UnknownNode(id.to_owned()))?;
        self.export_certs(id)?;
        if self.service.is_some() {
            // The node follows the topology service with a token of its own, read-only.
            let credential = self.launcher.node_dir(id).join("topology.token");
            // Node ids are [A-Za-z0-9_-]{1,19} (the topology checks them): a token name.
            let name = ferry_topology::service::node_token_name(id);
            let role = ferry_auth::Role::ReadOnly;
            ferry_auth::access::ensure_credential(&self.state.access(), &credential, &name, role)?;
        }
        let routes = self.routes.get(id).map(Vec::as_slice).unwrap_or_default();
        Ok(self.launcher.start_with(id, node.client.addr(), routes)?)
    }

    /// Writes node `id` its own certificate directory: every site's CA certificate, its own
    /// certificate and key; no CA key, no other node's key.
    fn export_certs(&self, id: &str) -> Result<(), DeployError> {
        let members = site_members(&self.topology)?;
        let sites: Vec<_> = members.iter().map(|m| m.site.clone()).collect();
        let identity = members
            .iter()
            .find_map(|m| m.nodes.iter().find(|n| n.id.as_str() == id).map(|n| (&m.site, &n.id)));
        if let Some((site, node_id)) = identity {
            let to = self.launcher.node_certs_dir(id);
            ferry_transport::certs::export_node(&self.state.certs(), site, node_id, &sites, &to)?;
        }
        Ok(())
    }

    /// Reads the deployment's topology file again (an operator added nodes or sites) and
    /// issues certificates for whatever it adds.
    fn reread_topology(&mut self) -> Result<(), DeployError> {
        let file = self.state.topology();
        let text = std::fs::read_to_string(&file).map_err(io_error("read", &file))?;
        let topology = ferry_topology::parse_topology(&file.display().to_string(), &text)?;
        ferry_transport::certs::init(&site_members(&topology.topology)?, &self.state.certs())?;
        self.topology = topology.topology;
        Ok(())
    }

    /// Takes in sites added to the deployment's topology file since it started: issues their
    /// certificates and gives every running node the CA certificates of all sites, so the
    /// running nodes trust the new sites without a restart (a node reloads its certificate
    /// directory when it changes). Then start the new sites' nodes with
    /// [`Deployment::start_added_node`].
    pub fn add_sites(&mut self) -> Result<(), DeployError> {
        self.reread_topology()?;
        let running: Vec<String> = self.nodes.keys().cloned().collect();
        for id in running {
            self.export_certs(&id)?;
        }
        Ok(())
    }

    /// Every node id, site by site.
    pub fn node_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.topology.sites.iter().flat_map(|s| s.nodes.iter().map(|n| n.id.to_string()))
    }

    fn site_node_ids(&self, site: &str) -> Result<Vec<String>, DeployError> {
        let site =
            self.topology.site(site).ok_or_else(|| DeployError::UnknownSite(site.to_owned()))?;
        Ok(site.nodes.iter().map(|n| n.id.to_string()).collect())
    }

    /// The running node processes, by id.
    pub fn processes(&self) -> &BTreeMap<String, NodeProcess> {
        &self.nodes
    }

    /// The launcher the nodes were started with (binary, topology file, state root).
    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    /// The topology service's URL, when the deployment serves one.
    pub fn service_url(&self) -> Option<&str> {
        self.service.as_ref().map(|s| s.url.as_str())
    }

    /// The relays in front of the nodes of `site`.
    pub fn relays_into<'a>(&'a self, site: &'a str) -> impl Iterator<Item = &'a RelayHandle> + 'a {
        self.relays.iter().filter(move |r| r.site == site).map(|r| &r.handle)
    }

    /// Every relay.
    pub fn relays(&self) -> &[NodeRelay] {
        &self.relays
    }

    /// Starts (or restarts) node `id` and waits until it accepts clients.
    pub async fn start_node(&mut self, id: &str) -> Result<(), DeployError> {
        let mut process = self.spawn(id)?;
        let process = tokio::task::spawn_blocking(move || {
            process.wait_ready(READY_TIMEOUT).map(|()| process)
        })
        .await
        .map_err(DeployError::Task)??;
        self.nodes.insert(id.to_owned(), process);
        Ok(())
    }

    /// Starts a node added to the deployment's topology file since the deployment started (as
    /// published to the topology service, which the running nodes follow): reads the file
    /// again, issues the node's certificates, and starts it; waits until it accepts clients.
    /// The running nodes are not restarted: the site's membership group admits the new node.
    pub async fn start_added_node(&mut self, id: &str) -> Result<(), DeployError> {
        self.reread_topology()?;
        self.start_node(id).await
    }

    /// The extra `ferry node run` arguments of node `id`, used from its next start on.
    pub fn node_args_mut(&mut self, id: &str) -> &mut Vec<String> {
        self.routes.entry(id.to_owned()).or_default()
    }

    /// SIGKILLs node `id` (a crash) and reaps it.
    pub fn kill_node(&mut self, id: &str) {
        if let Some(mut process) = self.nodes.remove(id) {
            process.kill();
        }
    }

    /// The pids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.values().filter_map(NodeProcess::pid).collect()
    }

    /// SIGTERM to every node at once, then waits for each (SIGKILL after [`STOP_GRACE`]);
    /// stops the relays and the topology service. Returns the nodes that had to be killed.
    pub async fn stop(mut self) -> Vec<String> {
        for node in self.nodes.values() {
            node.terminate();
        }
        let nodes = std::mem::take(&mut self.nodes);
        let killed = tokio::task::spawn_blocking(move || {
            let mut killed = Vec::new();
            for (id, mut node) in nodes {
                if node.stop(STOP_GRACE) == Stopped::Killed {
                    killed.push(id);
                }
            }
            killed
        })
        .await
        .unwrap_or_default();
        for relay in self.relays.drain(..) {
            relay.handle.shutdown().await;
        }
        if let Some(service) = self.service.take() {
            let _ = std::fs::remove_file(self.state.topology_service());
            let _ = service.stop.send(());
            let _ = service.task.await;
        }
        killed
    }

    /// The client addresses of the nodes of `site`, in topology order.
    pub fn clients(&self, site: &str) -> Result<Vec<SocketAddr>, DeployError> {
        let site =
            self.topology.site(site).ok_or_else(|| DeployError::UnknownSite(site.to_owned()))?;
        Ok(site.nodes.iter().map(|n| n.client.addr()).collect())
    }

    /// Info `name` from every node of `site`, in topology order.
    pub async fn info(&self, site: &str, name: &str) -> Result<Vec<String>, DeployError> {
        let mut values = Vec::new();
        for addr in self.clients(site)? {
            values.push(client::ask(addr, name).await?);
        }
        Ok(values)
    }

    /// The stats of the link `site -> dc` on every node of `site`, in topology order.
    pub async fn link_stats(&self, site: &str, dc: &str) -> Result<Vec<LinkSnapshot>, DeployError> {
        let mut stats = Vec::new();
        for addr in self.clients(site)? {
            stats.push(client::link_stats(addr, dc).await?);
        }
        Ok(stats)
    }

    /// The site's combined [`VersionDigest`] of namespace `ns`: equal at two sites when they
    /// hold the same versions.
    pub async fn site_digest(&self, site: &str, ns: &str) -> Result<VersionDigest, DeployError> {
        let mut digest = VersionDigest::default();
        for addr in self.clients(site)? {
            digest = digest.combine(client::verify_digest(addr, ns).await?);
        }
        Ok(digest)
    }

    /// Waits (up to `timeout`) until every enabled link reports `active` on every source node;
    /// returns each link (`from -> to`) with its worst state as seen last.
    pub async fn wait_links_active(&self, timeout: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let states = link_states(&self.topology).await;
            if states.iter().all(|(_, s)| s == "active") || Instant::now() >= deadline {
                return states;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Each enabled link (`from -> to`) with its worst state over the source nodes: `active` only
/// when every source node says so, `unreachable` for a node that does not answer.
pub async fn link_states(topology: &Topology) -> Vec<(String, String)> {
    let mut states = Vec::new();
    for link in topology.links.iter().filter(|l| l.enabled) {
        let Some(site) = topology.site(link.from.as_str()) else { continue };
        let mut worst = "active".to_owned();
        for node in &site.nodes {
            let state = match client::link_stats(node.client.addr(), link.to.as_str()).await {
                Ok(stats) => stats.state_name(),
                Err(ClientError::Unreachable { .. }) => "unreachable".to_owned(),
                Err(ClientError::Answer { .. }) => "unknown".to_owned(),
            };
            if state != "active" {
                worst = state;
            }
        }
        states.push((format!("{} -> {}", link.from, link.to), worst));
    }
    states
}

/// The relay shape a topology's `simulate-wan` asks for.
pub fn wan_shape(wan: &SimulatedWan) -> LinkShape {
    LinkShape {
        delay: Duration::from_millis(u64::from(wan.delay_ms)),
        jitter: Duration::from_millis(u64::from(wan.jitter_ms)),
        loss: wan.loss.clamp(0.0, 1.0),
        rate: wan.rate_mbit.map(|m| u64::from(m) * 125_000),
        ..LinkShape::default()
    }
}

/// Stores the deployed topology as a version in the SQLite store and serves it.
async fn start_service(
    state: &StateDir,
    spec: &DeploySpec,
    topology: &Topology,
    listen: SocketAddr,
) -> Result<Service, DeployError> {
    let url = format!("sqlite://{}?mode=rwc", state.topology_db().display());
    let store = ferry_topology::store::TopologyStore::open(&url)
        .await
        .map_err(|source| DeployError::Store { url: url.clone(), source })?;
    let request = ferry_topology::store::ApplyRequest {
        source: spec.topology_source.clone(),
        content: spec.topology_text.clone(),
        author: "ferry up".to_owned(),
        comment: "started by ferry up".to_owned(),
        expected_parent: None,
    };
    store.apply(request).await.map_err(|source| DeployError::Store { url: url.clone(), source })?;
    first_admins(state, topology, &store, &url).await?;
    ferry_auth::gate::require_loopback("topology service", listen)?;
    let access = ferry_auth::AccessFile::open(&state.access())?;
    let gate =
        ferry_auth::Gate::new(std::sync::Arc::new(access), ferry_topology::service::required_role);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DeployError::Service { addr: listen, source })?;
    let addr =
        listener.local_addr().map_err(|source| DeployError::Service { addr: listen, source })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = ferry_topology::service::serve(listener, store, gate, shutdown).await {
            tracing::error!(%error, "topology service stopped");
        }
    });
    let url = format!("http://{addr}");
    let url_file = state.topology_service();
    std::fs::write(&url_file, &url).map_err(io_error("write", &url_file))?;
    Ok(Service { url, stop, task })
}

/// Gives each site that turns security on and has no users yet its first user, `admin`, with a
/// new random password written to [`StateDir::aerospike_admin_password`] (Aerospike starts with
/// `admin`/`admin`, which everyone knows).
async fn first_admins(
    state: &StateDir,
    topology: &Topology,
    store: &ferry_topology::store::TopologyStore,
    url: &str,
) -> Result<(), DeployError> {
    use ferry_node::security::{db::SecurityDb, password};
    let store_error = |source| DeployError::Store { url: url.to_owned(), source };
    for site in topology.sites.iter().filter(|s| s.security) {
        let site = site.name.as_str();
        if store.security(site).await.map_err(store_error)?.version > 0 {
            continue;
        }
        let failed = |reason: String| DeployError::FirstAdmin { site: site.to_owned(), reason };
        let secret = password::generate();
        let sealed = password::client_hash(&secret)
            .and_then(|hash| password::seal(&hash))
            .map_err(|e| failed(e.to_string()))?;
        let file = state.aerospike_admin_password(site);
        let document =
            serde_json::to_value(SecurityDb::first(sealed)).map_err(|e| failed(e.to_string()))?;
        let target = format!("{site}/admin");
        let event =
            ferry_topology::audit::AuditEvent::now("ferry up", "local", "user.create", &target)
                .detail(format!("the site's first user; its password is in {}", file.display()));
        let update = ferry_topology::security::SecurityUpdate { expected: 0, document, event };
        // Stored first: the file is written only for the user that was created.
        if store.update_security(site, update).await.map_err(store_error)?.is_none() {
            return Err(failed("another process created its users meanwhile".to_owned()));
        }
        ferry_auth::access::write_secret(&file, &secret)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_wan_becomes_a_relay_shape() {
        let wan = SimulatedWan { delay_ms: 75, jitter_ms: 5, loss: 0.01, rate_mbit: Some(100) };
        let shape = wan_shape(&wan);
        assert_eq!(shape.delay, Duration::from_millis(75));
        assert_eq!(shape.jitter, Duration::from_millis(5));
        assert!((shape.loss - 0.01).abs() < 1e-12);
        assert_eq!(shape.rate, Some(12_500_000));
    }
}
