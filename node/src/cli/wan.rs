//! `ferry wan`: the userspace WAN relay (delay, jitter, loss, bandwidth, partition) between two
//! UDP addresses, until Ctrl-C.

use std::process::ExitCode;

use anyhow::Context as _;
use ferry_transport::relay::{Relay, RelayConfig};

/// Relay arguments: `--listen ADDR --forward ADDR [--control ADDR] [--delay-ms N]
/// [--jitter-ms N] [--loss P] [--rate-mbit N] [--partition] [--seed N]`. Conditions apply to
/// each direction; the control socket takes `show`, `set …` and `partition on|off` lines.
#[derive(Debug, clap::Args)]
pub(crate) struct WanArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "RELAY ARGS")]
    args: Vec<String>,
}

pub(crate) fn run(args: WanArgs) -> anyhow::Result<ExitCode> {
    let config = RelayConfig::parse_args(&args.args)?;
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    runtime.block_on(async {
        let relay = Relay::start(config).await?;
        match relay.control_addr() {
            Some(control) => {
                println!("relaying {} (control on {control}); Ctrl-C stops it", relay.listen_addr())
            }
            None => println!("relaying {}; Ctrl-C stops it", relay.listen_addr()),
        }
        tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
        let counters = relay.counters();
        relay.shutdown().await;
        // Logged, not printed: whoever read the banner may be gone by now.
        tracing::info!(?counters, "relay stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
