//! `ferry up`, `ferry down`: every node of every site of a topology as child processes on this
//! machine, with the topology service (SQLite), dev certificates and a WAN relay per simulated
//! link — the README's first command. All state lives under one directory (`--dir`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry::deploy::{DeploySpec, Deployment, STOP_GRACE, StateDir};
use ferry_topology::Topology;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The built-in example: two sites of three nodes, active → standby.
const EXAMPLE: &str = include_str!("../../../examples/two-sites.toml");
const EXAMPLE_NAME: &str = "examples/two-sites.toml";

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

/// The pid file of a live `ferry up` holding `state`.
fn pid_file(state: &StateDir) -> PathBuf {
    state.root.join("ferry-up.pid")
}

/// The pids of the nodes a `ferry up` started, for `ferry down` after a crash.
fn node_pids(state: &StateDir) -> PathBuf {
    state.root.join("node-pids")
}

/// The pid of a live `ferry up` holding this directory.
fn running(state: &StateDir) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(state)).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// `ferry up`; the nodes export their spans to `otlp_endpoint` too.
pub(crate) fn up(args: UpArgs, otlp_endpoint: Option<&str>) -> anyhow::Result<ExitCode> {
    let state = StateDir { root: args.dir.clone() };
    std::fs::create_dir_all(&state.root)
        .with_context(|| format!("create state directory {}", state.root.display()))?;
    if let Some(pid) = running(&state) {
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
    check_ports(&validated.topology)?;
    std::fs::write(pid_file(&state), std::process::id().to_string())
        .with_context(|| format!("write {}", pid_file(&state).display()))?;
    let spec = DeploySpec {
        topology_source: name,
        // Nodes follow the service, so `ferry topology apply --store …` changes links live.
        topology_service: Some(args.topology_listen),
        node_args: otlp_endpoint
            .map(|url| vec!["--otlp-endpoint".to_owned(), url.to_owned()])
            .unwrap_or_default(),
        ..DeploySpec::new(
            std::env::current_exe().context("locate the ferry binary")?,
            &state.root,
            &text,
        )
    };
    let demo = args.topology.is_none() && !args.no_demo;
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    let result = runtime.block_on(run(spec, demo));
    let _ = std::fs::remove_file(pid_file(&state));
    let _ = std::fs::remove_file(node_pids(&state));
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

async fn run(spec: DeploySpec, demo: bool) -> anyhow::Result<ExitCode> {
    let deployment = Deployment::start(spec).await?;
    let state = deployment.state.clone();
    let pids: Vec<String> = deployment.pids().iter().map(u32::to_string).collect();
    std::fs::write(node_pids(&state), pids.join("\n")).context("write node pids")?;
    let links = deployment.wait_links_active(Duration::from_secs(20)).await;
    print_summary(&deployment, &links);
    if demo && let Err(error) = super::demo::run(&deployment.topology).await {
        say_err!("demo failed: {error:#}");
    }
    say!("\nRunning. Ctrl-C (or `ferry down --dir {}`) stops everything.", state.root.display());
    super::shutdown_signal().await;
    say!("\nstopping…");
    let nodes = deployment.processes().len();
    for id in deployment.stop().await {
        say_err!("node {id} did not stop in {STOP_GRACE:?}; killed");
    }
    say!("stopped {nodes} nodes; state kept in {}", state.root.display());
    Ok(ExitCode::SUCCESS)
}

fn print_summary(deployment: &Deployment, links: &[(String, String)]) {
    let topology = &deployment.topology;
    say!("ferry up: {} sites, {} nodes", topology.sites.len(), deployment.processes().len());
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
    say!("\nstate directory: {}", deployment.state.root.display());
    if let Some(url) = deployment.service_url() {
        say!("topology service: {url}/v1/topology");
    }
    let admin = deployment.state.credential(ferry_auth::Role::Admin);
    say!(
        "control plane tokens: {} (and operator, read-only; mode 0600; `ferry` uses the admin one)",
        admin.display()
    );
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
    let Some(pid) = running(&state) else {
        // A crashed `ferry up` may have left nodes behind.
        let orphans = kill_orphans(&node_pids(&state));
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
            let orphans = kill_orphans(&node_pids(&state));
            say!("ferry up (pid {pid}) did not stop in time: killed it and {orphans} nodes");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say!("stopped the deployment in {} (ferry up, pid {pid})", state.root.display());
    Ok(ExitCode::SUCCESS)
}

/// SIGKILLs the node processes listed in `file` that are still alive.
fn kill_orphans(file: &Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let killed = text
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|&pid| {
            ferry::launcher::node_run_args(pid).is_some()
                && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        })
        .count();
    let _ = std::fs::remove_file(file);
    killed
}
