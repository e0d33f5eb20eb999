//! `ferry certs init|show`: development certificates, a CA per site and one per node.

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_topology::load_topology;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a CA per site and a certificate per node (idempotent: keeps what is valid).
    Init {
        #[arg(long)]
        topology: PathBuf,
        /// Output directory: `<out>/<site>/ca.pem`, `<node>.pem`, keys with mode 0600.
        #[arg(long, default_value = "ferry-data/certs")]
        out: PathBuf,
    },
    /// Identities, validity and days left of every certificate under a directory.
    Show {
        #[arg(default_value = "ferry-data/certs")]
        dir: PathBuf,
    },
}

pub(crate) fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init { topology, out } => {
            let topology = load_topology(&topology)?.topology;
            let members = ferry_xdr::admission::site_members(&topology)?;
            print!("{}", ferry_transport::certs::init(&members, &out)?);
        }
        CertsCommand::Show { dir } => print!("{}", ferry_transport::certs::show(&dir)?),
    }
    Ok(ExitCode::SUCCESS)
}
