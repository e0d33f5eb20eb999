//! `ferry digestlog inspect|dump`: look into a node's digest log (read-only; works while the
//! node runs).

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_digestlog::Lsn;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DigestLogCommand {
    /// Segments, LSN range, cursors with their lag, overflow state.
    Inspect {
        /// The log directory (a node's `<state>/digestlog`).
        dir: PathBuf,
    },
    /// One line per entry.
    Dump {
        dir: PathBuf,
        /// First LSN to print.
        #[arg(long)]
        from: Option<u64>,
        /// Most entries to print.
        #[arg(long)]
        limit: Option<u64>,
    },
}

pub(crate) fn run(command: DigestLogCommand) -> anyhow::Result<ExitCode> {
    match command {
        DigestLogCommand::Inspect { dir } => {
            print!("{}", ferry_digestlog::inspect(&dir)?);
        }
        DigestLogCommand::Dump { dir, from, limit } => {
            let mut out = std::io::stdout().lock();
            ferry_digestlog::dump(&dir, from.map(Lsn), limit, &mut out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
