//! `ferry wan`: the userspace WAN relay (delay, jitter, loss, bandwidth, partition) between two
//! UDP addresses, until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use ferry_transport::relay::{LinkShape, Relay, RelayConfig, apply_setting};

/// Conditions apply to each direction (so the RTT grows by twice `--delay-ms`); the control
/// socket takes `show`, `set …` and `partition on|off` lines.
#[derive(Debug, clap::Args)]
pub(crate) struct WanArgs {
    /// UDP address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// UDP address datagrams are forwarded to.
    #[arg(long)]
    forward: SocketAddr,
    /// TCP address of the control socket.
    #[arg(long)]
    control: Option<SocketAddr>,
    /// One-way delay in ms.
    #[arg(long, value_name = "MS")]
    delay_ms: Option<String>,
    /// Uniform jitter added to the delay, in ms.
    #[arg(long, value_name = "MS")]
    jitter_ms: Option<String>,
    /// Probability of dropping a datagram, 0 to 1.
    #[arg(long, value_name = "P")]
    loss: Option<String>,
    /// Bandwidth cap in Mbit/s (0: none).
    #[arg(long, value_name = "MBIT")]
    rate_mbit: Option<String>,
    /// Token-bucket burst of the cap, in KiB.
    #[arg(long, value_name = "KB")]
    burst_kb: Option<String>,
    /// Most bytes waiting behind the cap, in KiB.
    #[arg(long, value_name = "KB")]
    queue_kb: Option<String>,
    /// Start partitioned (drop everything until `partition off`).
    #[arg(long)]
    partition: bool,
    /// Seed of the loss and jitter draws (default: from the OS).
    #[arg(long)]
    seed: Option<u64>,
}

impl WanArgs {
    /// The relay these arguments describe; each shape setting is checked as the control
    /// socket's `set` checks it.
    fn config(&self) -> anyhow::Result<RelayConfig> {
        let mut shape = LinkShape { partitioned: self.partition, ..LinkShape::default() };
        let settings = [
            ("delay-ms", &self.delay_ms),
            ("jitter-ms", &self.jitter_ms),
            ("loss", &self.loss),
            ("rate-mbit", &self.rate_mbit),
            ("burst-kb", &self.burst_kb),
            ("queue-kb", &self.queue_kb),
        ];
        for (key, value) in settings {
            if let Some(value) = value {
                apply_setting(&mut shape, key, value)
                    .map_err(|e| anyhow::anyhow!("--{key}: {e}"))?;
            }
        }
        let mut config = RelayConfig::new(self.listen, self.forward).with_shape(shape);
        config.control = self.control;
        config.seed = self.seed;
        Ok(config)
    }
}

pub(crate) fn run(args: WanArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Wan {
        #[command(flatten)]
        args: WanArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<RelayConfig> {
        let wan = Wan::try_parse_from(std::iter::once("wan").chain(args.iter().copied()))?;
        wan.args.config()
    }

    #[test]
    fn parses_ferry_wan_arguments() {
        let config = parse(&[
            "--listen",
            "127.0.0.1:7000",
            "--forward",
            "127.0.0.1:4002",
            "--delay-ms",
            "25",
            "--loss",
            "0.01",
            "--rate-mbit",
            "100",
            "--control",
            "127.0.0.1:7001",
            "--seed",
            "9",
        ])
        .expect("parse");
        assert_eq!(config.listen, "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(config.forward, "127.0.0.1:4002".parse().expect("addr"));
        assert_eq!(config.control, Some("127.0.0.1:7001".parse().expect("addr")));
        assert_eq!(config.seed, Some(9));
        for shape in [config.forward_shape, config.reverse_shape] {
            assert_eq!(shape.delay, Duration::from_millis(25));
            assert!((shape.loss - 0.01).abs() < 1e-12);
            assert_eq!(shape.rate, Some(12_500_000));
            assert!(!shape.partitioned);
        }
    }

    #[test]
    fn refuses_bad_arguments() {
        let cases: [&[&str]; 6] = [
            &["--forward", "127.0.0.1:1"],
            &["--listen", "127.0.0.1:1"],
            &["--listen", "nowhere", "--forward", "127.0.0.1:1"],
            &["--listen", "127.0.0.1:1", "--forward", "127.0.0.1:2", "--loss"],
            &["--listen", "127.0.0.1:1", "--forward", "127.0.0.1:2", "--volume", "11"],
            &["--listen", "127.0.0.1:1", "--forward", "127.0.0.1:2", "--loss", "2"],
        ];
        for args in cases {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
