//! `ferry node run`: one storage node of a site, until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use ferry_node::node::NodeConfig;
use ferry_node::{Listeners, Node};
use ferry_topology::load_topology;

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Run one node: its site and addresses come from the topology file.
    Run {
        /// The topology file.
        #[arg(long)]
        topology: PathBuf,
        /// The node's id in the topology.
        #[arg(long)]
        node: String,
        /// State directory of the node. Default: ./ferry-data/<node>.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Certificates for XDR (`ferry certs init`): `<certs>/<site>/ca.pem`, `<node>.pem`.
        /// Needed only when the node's site takes part in a DR link.
        #[arg(long, default_value = "ferry-data/certs")]
        certs: PathBuf,
        /// Dial a destination node of a DR link at another address, e.g. a WAN relay in front
        /// of it: `NODE=ADDR` (repeatable). The peer's certificate must still name NODE.
        #[arg(long = "xdr-route", value_name = "NODE=ADDR", value_parser = parse_route)]
        xdr_routes: Vec<(String, std::net::SocketAddr)>,
        /// Dial another node of this site at another address for the fabric (replication,
        /// membership), e.g. a proxy in front of it: `NODE=ADDR` (repeatable).
        #[arg(long = "fabric-route", value_name = "NODE=ADDR", value_parser = parse_route)]
        fabric_routes: Vec<(String, std::net::SocketAddr)>,
        /// Milliseconds between heartbeats to the site's other nodes (sites of three nodes or
        /// more), as Aerospike's `heartbeat.interval`.
        #[arg(long, default_value_t = 150, value_name = "MS")]
        heartbeat_interval_ms: u64,
        /// Missed heartbeat intervals that make a node failed, as Aerospike's
        /// `heartbeat.timeout`. Nodes of one site should agree on both.
        #[arg(long, default_value_t = 10, value_name = "INTERVALS")]
        heartbeat_timeout: u32,
        /// Most bytes the digest log may use before links left behind overflow and recover
        /// from a store scan. Default: 4 GiB.
        #[arg(long, value_name = "BYTES")]
        digest_log_cap: Option<u64>,
        /// Follow the topology service at this URL (e.g. `http://127.0.0.1:7700`): DR link
        /// changes apply without a restart.
        #[arg(long, value_name = "URL")]
        topology_service: Option<String>,
        /// The token this node presents to the topology service (a file of mode 0600).
        /// Default: <dir>/topology.token.
        #[arg(long, value_name = "FILE")]
        topology_credential: Option<PathBuf>,
        /// Who may call this node's admin API: an access file of token hashes and roles
        /// (`ferry access`), re-read when it changes. Default: <dir>/access.toml.
        #[arg(long, value_name = "FILE")]
        access: Option<PathBuf>,
        /// Seconds between passes that remove expired records and old tombstones (Aerospike's
        /// `nsup-period`).
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        nsup_period_secs: u64,
        /// Run without a digest log, so nothing can ship from this node. For benchmarks that
        /// measure what logging costs.
        #[arg(long, hide = true)]
        no_digest_log: bool,
        /// Kill the node (SIGKILL) when it reaches this step: for tests of crashes that no
        /// outside kill can time (`write-before-replicate`).
        #[arg(long, hide = true, value_name = "POINT")]
        crash_at: Option<ferry_node::crash::CrashPoint>,
    },
}

pub(crate) fn run(command: NodeCommand) -> anyhow::Result<ExitCode> {
    let NodeCommand::Run {
        topology,
        node,
        dir,
        certs,
        xdr_routes,
        fabric_routes,
        heartbeat_interval_ms,
        heartbeat_timeout,
        digest_log_cap,
        topology_service,
        topology_credential,
        access,
        nsup_period_secs,
        no_digest_log,
        crash_at,
    } = command;
    let topology = load_topology(&topology)?.topology;
    let (site, me) = topology
        .sites
        .iter()
        .find_map(|s| {
            Some((s.name.to_string(), s.nodes.iter().find(|n| n.id == *node.as_str())?.clone()))
        })
        .with_context(|| format!("node '{node}' is in no site of the topology"))?;
    let data_dir = dir.unwrap_or_else(|| PathBuf::from("ferry-data").join(&node));
    let defaults = NodeConfig::new(topology, &site, &node, data_dir);
    let config = NodeConfig {
        certs,
        access: access.unwrap_or_else(|| defaults.access.clone()),
        topology_credential: topology_credential
            .unwrap_or_else(|| defaults.topology_credential.clone()),
        digest_log: !no_digest_log,
        digest_log_cap,
        xdr_routes: xdr_routes.into_iter().collect(),
        fabric_routes: fabric_routes.into_iter().collect(),
        heartbeat: ferry_node::membership::Heartbeat {
            interval: Duration::from_millis(heartbeat_interval_ms.max(10)),
            misses: heartbeat_timeout.max(3),
        },
        topology_service,
        nsup_period: Duration::from_secs(nsup_period_secs.max(1)),
        crash_at,
        ..defaults
    };
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&me).await.with_context(|| format!("node {node}"))?;
        let handle = Node::start(config, listeners, super::shutdown_signal())
            .await
            .with_context(|| format!("node {node}"))?;
        handle.wait().await.with_context(|| format!("node {node}"))
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_route(text: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (node, addr) = text.split_once('=').ok_or("expected NODE=ADDR")?;
    let addr = addr.parse().map_err(|e| format!("address '{addr}': {e}"))?;
    Ok((node.to_owned(), addr))
}
