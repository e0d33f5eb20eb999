//! Command-line parsing and dispatch to the subcommands.

mod certs;
mod digestlog;
mod link;
mod node;
mod topology;
mod wan;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ferry: cross-datacenter replication for an Aerospike-compatible key-value store.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, store, inspect and serve topology files.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
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
    Up,
}

/// Runs the parsed command; the exit code tells scripts whether it succeeded.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Topology(command) => topology::run(command),
        Command::Node(command) => node::run(command),
        Command::Digestlog(command) => digestlog::run(command),
        Command::Certs(command) => certs::run(command),
        Command::Wan(args) => wan::run(args),
        Command::Link(args) => link::run(args),
        Command::Up => {
            println!(
                "ferry up: not yet — the node, digest log, transport and XDR shipping land first. \
                 Try `ferry topology validate examples/two-sites.toml`."
            );
            Ok(ExitCode::from(2))
        }
    }
}
