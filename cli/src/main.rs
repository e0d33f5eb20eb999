//! `ferry`: the one binary of Ferry. Each subcommand lives in its own module under `cmd/`.

// Printing to the terminal is this binary's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cmd;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a node allocates and frees small buffers on every
/// request from several threads, and glibc's arenas and consolidation showed as a tenth of a
/// node's CPU under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cmd::Cli::parse();
    let telemetry =
        match telemetry::init(args.log_format, args.otlp_endpoint.as_deref(), args.instance()) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("ferry: {error}");
                return ExitCode::FAILURE;
            }
        };
    let code = match cmd::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::FAILURE
        }
    };
    drop(telemetry);
    code
}
