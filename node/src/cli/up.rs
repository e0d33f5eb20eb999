//! `ferry up`, `ferry down`: every node of every site of a topology as child processes on this
//! machine, with the topology service (SQLite), dev certificates and a WAN relay per simulated
//! link — the README's first command. All state lives under one directory (`--dir`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_node::launcher::{Launcher, NodeProcess};
use ferry_node::proto::info;
use ferry_topology::Topology;
use ferry_transport::relay::{LinkShape, Relay, RelayConfig, RelayHandle};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The built-in example: two sites of three nodes, active → standby.
const EXAMPLE: &str = include_str!("../../../examples/two-sites.toml");
const EXAMPLE_NAME: &str = "examples/two-sites.toml";
/// How long a node has to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Topology file. Default: the built-in two-site example, with a short demo.
    topology: Option<PathBuf>,
    /// State directory: data, logs, certificates, pid files.
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
    /// Skip the demo writes.
    #[arg(long)]
    no_demo: bool,
    /// Address of the embedded topology service.
    #[arg(long, default_value = "127.0.0.1:0")]
    topology_listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DownArgs {
    /// State directory of the running deployment.
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
}

/// Files of a deployment's state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    pub(crate) root: PathBuf,
}

impl StateDir {
    pub(crate) fn topology(&self) -> PathBuf {
        self.root.join("topology.toml")
    }
    fn pid_file(&self) -> PathBuf {
        self.root.join("ferry-up.pid")
    }
    fn node_pids(&self) -> PathBuf {
        self.root.join("node-pids")
    }

    /// The pid of a live `ferry up` holding this directory.
    fn running(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

pub(crate) fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let state = StateDir { root: args.dir.clone() };
    std::fs::create_dir_all(&state.root)
        .with_context(|| format!("create state directory {}", state.root.display()))?;
    if let Some(pid) = state.running() {
        bail!(
            "a deployment is already running from {} (ferry up, pid {pid}); stop it with \
             `ferry down --dir {}` or use another --dir",
            state.root.display(),
            state.root.display()
        );
    }
    let (name, text) = match &args.topology {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        ),
        None => (EXAMPLE_NAME.to_owned(), EXAMPLE.to_owned()),
    };
    let validated = ferry_topology::parse_topology(&name, &text)?;
    for warning in &validated.warnings {
        say_err!("{warning}");
    }
    let topology = validated.topology;
    check_ports(&topology)?;
    std::fs::write(state.topology(), &text)
        .with_context(|| format!("write {}", state.topology().display()))?;
    std::fs::write(state.pid_file(), std::process::id().to_string())
        .with_context(|| format!("write {}", state.pid_file().display()))?;
    let demo = args.topology.is_none() && !args.no_demo;
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    let result = runtime.block_on(run(&state, &topology, &name, &text, args.topology_listen, demo));
    let _ = std::fs::remove_file(state.pid_file());
    let _ = std::fs::remove_file(state.node_pids());
    result
}

/// Every node's TCP and UDP addresses must be free before anything starts.
fn check_ports(topology: &Topology) -> anyhow::Result<()> {
    for site in &topology.sites {
        for node in &site.nodes {
            for (what, addr) in
                [("client", node.client), ("fabric", node.fabric), ("admin", node.admin)]
            {
                std::net::TcpListener::bind(addr.addr()).map_err(|e| {
                    anyhow::anyhow!(
                        "node {} ({}): {what} port {addr} is in use: {e}",
                        node.id,
                        site.name
                    )
                })?;
            }
            std::net::UdpSocket::bind(node.xdr.addr()).map_err(|e| {
                anyhow::anyhow!(
                    "node {} ({}): XDR port {} (UDP) is in use: {e}",
                    node.id,
                    site.name,
                    node.xdr
                )
            })?;
        }
    }
    Ok(())
}

struct Running {
    nodes: BTreeMap<String, NodeProcess>,
    relays: Vec<RelayHandle>,
}

impl Running {
    /// SIGTERM to every node at once, then wait for each (SIGKILL after the grace period).
    async fn stop(mut self) -> usize {
        for node in self.nodes.values() {
            node.terminate();
        }
        let count = self.nodes.len();
        let nodes = std::mem::take(&mut self.nodes);
        let _ = tokio::task::spawn_blocking(move || {
            for (id, mut node) in nodes {
                if node.stop(STOP_GRACE).is_none() {
                    say_err!("node {id} did not stop in {STOP_GRACE:?}; killed");
                }
            }
        })
        .await;
        for relay in self.relays.drain(..) {
            relay.shutdown().await;
        }
        count
    }
}

async fn run(
    state: &StateDir,
    topology: &Topology,
    name: &str,
    text: &str,
    topology_listen: SocketAddr,
    demo: bool,
) -> anyhow::Result<ExitCode> {
    let certs = state.root.join("certs");
    ferry_transport::certs::init(topology, &certs).context("create dev certificates")?;
    let (service_url, stop_service) =
        start_topology_service(state, name, text, topology_listen).await?;
    let launcher = Launcher {
        binary: std::env::current_exe().context("locate the ferry binary")?,
        topology: state.topology().canonicalize().context("topology path")?,
        state_root: state.root.canonicalize().context("state path")?,
        // Nodes follow the service, so `ferry topology apply --store …` changes links live.
        node_args: vec!["--topology-service".to_owned(), service_url.clone()],
    };
    let mut running = Running { nodes: BTreeMap::new(), relays: Vec::new() };
    let routes = start_relays(topology, &mut running.relays).await?;
    let started = start_nodes(&launcher, topology, &routes, &mut running).await;
    if let Err(error) = started {
        running.stop().await;
        let _ = stop_service.send(());
        return Err(error);
    }
    let pids: Vec<String> =
        running.nodes.values().filter_map(NodeProcess::pid).map(|p| p.to_string()).collect();
    std::fs::write(state.node_pids(), pids.join("\n")).context("write node pids")?;
    let links = wait_links(topology).await;
    print_summary(state, topology, &service_url, &running, &links);
    if demo && let Err(error) = crate::cli::demo::run(topology).await {
        say_err!("demo failed: {error:#}");
    }
    say!("\nRunning. Ctrl-C (or `ferry down --dir {}`) stops everything.", state.root.display());
    super::shutdown_signal().await;
    say!("\nstopping…");
    let stopped = running.stop().await;
    let _ = stop_service.send(());
    say!("stopped {stopped} nodes; state kept in {}", state.root.display());
    Ok(ExitCode::SUCCESS)
}

async fn start_topology_service(
    state: &StateDir,
    name: &str,
    text: &str,
    listen: SocketAddr,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let url = format!("sqlite://{}?mode=rwc", state.root.join("topology.db").display());
    let store = ferry_topology::store::TopologyStore::open(&url)
        .await
        .with_context(|| format!("open topology store {url}"))?;
    let request = ferry_topology::store::ApplyRequest {
        source: name.to_owned(),
        content: text.to_owned(),
        author: "ferry up".to_owned(),
        comment: "started by ferry up".to_owned(),
        expected_parent: None,
    };
    store.apply(request).await.context("store the topology")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind the topology service on {listen}"))?;
    let addr = listener.local_addr().context("topology service address")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = ferry_topology::service::serve(listener, store, shutdown).await {
            tracing::error!(%error, "topology service stopped");
        }
    });
    Ok((format!("http://{addr}"), stop))
}

/// A relay in front of every destination node of each link that simulates a WAN; returns the
/// `--xdr-route` arguments for each source node.
async fn start_relays(
    topology: &Topology,
    relays: &mut Vec<RelayHandle>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut routes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for link in &topology.links {
        let Some(wan) = &link.simulate_wan else { continue };
        let (Some(from), Some(to)) =
            (topology.site(link.from.as_str()), topology.site(link.to.as_str()))
        else {
            continue;
        };
        for destination in &to.nodes {
            let config =
                RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), destination.xdr.addr())
                    .with_shape(LinkShape::from(wan));
            let relay = Relay::start(config).await.with_context(|| {
                format!("start WAN relay for {} -> {}", link.from, destination.id)
            })?;
            for source in &from.nodes {
                routes.entry(source.id.to_string()).or_default().extend([
                    "--xdr-route".to_owned(),
                    format!("{}={}", destination.id, relay.listen_addr()),
                ]);
            }
            relays.push(relay);
        }
    }
    Ok(routes)
}

async fn start_nodes(
    launcher: &Launcher,
    topology: &Topology,
    routes: &BTreeMap<String, Vec<String>>,
    running: &mut Running,
) -> anyhow::Result<()> {
    for site in &topology.sites {
        for node in &site.nodes {
            let id = node.id.to_string();
            let extra = routes.get(&id).cloned().unwrap_or_default();
            let process = launcher.start_with(&id, node.client.addr(), &extra)?;
            running.nodes.insert(id, process);
        }
    }
    let mut nodes = std::mem::take(&mut running.nodes);
    let ready = tokio::task::spawn_blocking(move || {
        let result = nodes.values_mut().try_for_each(|n| n.wait_ready(Duration::from_secs(30)));
        (nodes, result)
    })
    .await
    .context("wait for nodes")?;
    running.nodes = ready.0;
    ready.1.context("a node failed to start; stopping the others")?;
    Ok(())
}

/// Waits (up to 20 s) until every enabled link reports `active` on every source node; returns
/// each link's state as seen last.
async fn wait_links(topology: &Topology) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut states = Vec::new();
        for link in topology.links.iter().filter(|l| l.enabled) {
            let Some(site) = topology.site(link.from.as_str()) else { continue };
            let mut worst = "active".to_owned();
            for node in &site.nodes {
                let name = format!("get-stats:context=xdr;dc={}", link.to);
                let state = match info::ask(node.client.addr(), &[&name]).await {
                    Ok(reply) => reply
                        .first()
                        .and_then(|(_, v)| crate::cli::status::field(v, "state"))
                        .unwrap_or_else(|| "unknown".to_owned()),
                    Err(_) => "unreachable".to_owned(),
                };
                if state != "active" {
                    worst = state;
                }
            }
            states.push((format!("{} -> {}", link.from, link.to), worst));
        }
        if states.iter().all(|(_, s)| s == "active") || Instant::now() >= deadline {
            return states;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_summary(
    state: &StateDir,
    topology: &Topology,
    service_url: &str,
    running: &Running,
    links: &[(String, String)],
) {
    say!("ferry up: {} sites, {} nodes", topology.sites.len(), running.nodes.len());
    for site in &topology.sites {
        say!("\nsite {} (src-id {}, {})", site.name, site.src_id.get(), site.role);
        say!("  {:<10} {:<18} {:<18} {:<18}", "node", "client", "xdr (udp)", "admin");
        for node in &site.nodes {
            let [client, xdr, admin] = [node.client, node.xdr, node.admin].map(|e| e.to_string());
            say!("  {:<10} {client:<18} {xdr:<18} {admin:<18}", node.id.as_str());
        }
    }
    say!();
    for (link, link_state) in links {
        say!("link {link}: {link_state}");
    }
    for link in topology.links.iter().filter(|l| !l.enabled) {
        say!("link {} -> {}: disabled", link.from, link.to);
    }
    say!("\nstate directory: {}", state.root.display());
    say!("topology service: {service_url}/v1/topology");
    if let Some(node) = topology.sites.first().and_then(|s| s.nodes.first()) {
        let addr = node.client.addr();
        say!("\nconnect a client to the first site:");
        say!(
            "  python:  import aerospike; c = aerospike.client({{'hosts': [('{}', {})]}}).connect()",
            addr.ip(),
            addr.port()
        );
        say!("  rust:    aerospike::Client::new(&ClientPolicy::default(), &\"{addr}\").await");
        say!(
            "  cli:     ferry put {} user1 name=Ann && ferry get {} user1",
            topology.sites[0].name,
            topology.sites.get(1).map_or(topology.sites[0].name.as_str(), |s| s.name.as_str())
        );
    }
}

pub(crate) fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let state = StateDir { root: args.dir };
    let Some(pid) = state.running() else {
        // A crashed `ferry up` may have left nodes behind.
        let orphans = kill_orphans(&state.node_pids());
        if orphans > 0 {
            say!("ferry up was not running; stopped {orphans} leftover nodes");
            return Ok(ExitCode::SUCCESS);
        }
        bail!("no deployment is running from {}", state.root.display());
    };
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("signal ferry up")?;
    let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let orphans = kill_orphans(&state.node_pids());
            say!("ferry up (pid {pid}) did not stop in time: killed it and {orphans} nodes");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say!("stopped the deployment in {} (ferry up, pid {pid})", state.root.display());
    Ok(ExitCode::SUCCESS)
}

/// Whether `pid` is still a `ferry node run` process (not a recycled pid).
fn is_ferry_node(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2).any(|w| w == [b"node".as_slice(), b"run".as_slice()])
        })
        .unwrap_or(false)
}

/// SIGKILLs the node processes listed in `file` that are still alive.
fn kill_orphans(file: &Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let killed = text
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&pid| is_ferry_node(pid) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok())
        .count();
    let _ = std::fs::remove_file(file);
    killed
}
