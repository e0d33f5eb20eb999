//! Command-line parsing and dispatch to the subcommands.

/// `println!` that survives a closed stdout: `ferry up` keeps running (and must still stop its
/// nodes cleanly) after whoever read its banner went away.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that survives a closed stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod access;
mod audit;
mod certs;
mod data;
mod demo;
mod digestlog;
mod drill;
mod link;
mod logs;
mod node;
mod status;
mod topology;
mod up;
mod verify;
mod wan;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ferry: cross-datacenter replication for an Aerospike-compatible key-value store.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub(crate) struct Cli {
    /// How log lines look: `text` for people, `json` (one object per line) for log collectors.
    /// Nodes a command starts inherit `FERRY_LOG_FORMAT` from its environment.
    #[arg(long, global = true, value_enum, env = "FERRY_LOG_FORMAT", default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Export tracing spans (a batch's read, send, ack and apply) over OTLP/HTTP to this
    /// collector, e.g. `http://127.0.0.1:4318`. Nodes `ferry up` starts get it too.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The format of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, store, inspect and serve topology files.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Who may call the control plane: grant, revoke and list tokens and their roles.
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// The audit trail: topology versions, link controls and drills, with who, when, where.
    Audit(audit::AuditArgs),
    /// Development certificates for mutual TLS between sites.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run the userspace WAN relay (simulated delay, loss, bandwidth, partitions).
    Wan(wan::WanArgs),
    /// Inspect a node's digest log.
    #[command(subcommand)]
    Digestlog(digestlog::DigestLogCommand),
    /// Operate DR links: status, pause, resume, rewind, conflicts.
    Link(link::LinkArgs),
    /// Run storage nodes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Start paired clusters on this machine with a demo write crossing between them.
    Up(up::UpArgs),
    /// Stop the deployment `ferry up` runs from a state directory.
    Down(up::DownArgs),
    /// Sites, nodes and links of a running deployment.
    Status(status::StatusArgs),
    /// Print (and follow) one node's log.
    Logs(logs::LogsArgs),
    /// Run a DR drill: switchover, failover or failback, each ending in a verified report.
    Drill(drill::DrillArgs),
    /// Compare two sites partition by partition and list every record where they differ
    /// (exit 0: identical, 1: divergent, 2: could not verify).
    Verify(verify::VerifyArgs),
    #[command(flatten)]
    Data(data::DataCommand),
}

impl Cli {
    /// What names this process in exported traces: the node id of `ferry node run`.
    pub(crate) fn instance(&self) -> Option<&str> {
        match &self.command {
            Command::Node(node::NodeCommand::Run { node, .. }) => Some(node),
            _ => None,
        }
    }
}

/// Runs the parsed command; the exit code tells scripts whether it succeeded.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Topology(command) => topology::run(command),
        Command::Node(command) => node::run(command),
        Command::Digestlog(command) => digestlog::run(command),
        Command::Access(command) => access::run(command),
        Command::Audit(args) => audit::run(args),
        Command::Certs(command) => certs::run(command),
        Command::Wan(args) => wan::run(args),
        Command::Link(args) => link::run(args),
        Command::Up(args) => up::up(args, cli.otlp_endpoint.as_deref()),
        Command::Down(args) => up::down(args),
        Command::Status(args) => status::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Drill(args) => drill::run(args),
        Command::Data(command) => data::run(command),
    }
}

/// The topology of a deployment: the file `--topology` names; else the current version of the
/// topology service `ferry up` serves for `dir` (what the nodes follow, which an operator or a
/// drill may have changed since the start); else the file `ferry up` keeps in `dir`.
pub(crate) fn deployment_topology(
    topology: Option<&std::path::Path>,
    dir: &std::path::Path,
) -> anyhow::Result<ferry_topology::Topology> {
    use anyhow::Context as _;
    if topology.is_none()
        && let Some(current) = served_topology(dir)
    {
        return Ok(current);
    }
    let path = topology.map_or_else(|| dir.join("topology.toml"), std::path::Path::to_path_buf);
    let loaded = ferry_topology::load_topology(&path).with_context(|| {
        format!(
            "read the topology {} (start a deployment with `ferry up`, or pass --topology)",
            path.display()
        )
    })?;
    Ok(loaded.topology)
}

/// How long a command waits for the topology service before it reads the file instead.
const SERVICE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The current version of the topology service of the deployment in `dir`, if it serves one
/// and answers within a moment.
fn served_topology(dir: &std::path::Path) -> Option<ferry_topology::Topology> {
    let client = match ferry::credentials::service_client(dir) {
        Ok(client) => client?,
        Err(error) => {
            say_err!("ferry: {error}; using the topology file");
            return None;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let asked = async { tokio::time::timeout(SERVICE_PATIENCE, client.current()).await };
    let current = runtime.block_on(asked);
    match current {
        Ok(Ok(version)) => Some(version.topology),
        Ok(Err(error)) => {
            say_err!("ferry: the topology service does not answer ({error}); using the file");
            None
        }
        Err(_) => {
            say_err!("ferry: the topology service does not answer; using the file");
            None
        }
    }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
