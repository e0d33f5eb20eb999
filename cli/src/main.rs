//! `ferry`: the one binary of Ferry. Each subcommand lives in its own module under `cmd/`.

// Printing to the terminal is this binary's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a node allocates and frees small buffers on every
/// request from several threads, and glibc's arenas and consolidation showed as a tenth of a
/// node's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cmd::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(
            |_| tracing_subscriber::EnvFilter::new("info,aerospike_core=warn,aerospike=warn"),
        ))
        .with_writer(std::io::stderr)
        // A failed log write (a full disk) must not take the node down: the fallback report
        // of it is an `eprintln!`, which panics when stderr cannot be written either.
        .log_internal_errors(false);
    match args.log_format {
        cmd::LogFormat::Text => logs.init(),
        cmd::LogFormat::Json => logs.json().init(),
    }
    match cmd::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::FAILURE
        }
    }
}
