//! `ferry link status|pause|resume|rewind|drain|conflicts|parked`: operate a DR link on every
//! node of its source site. Controls go through the nodes' admin APIs with the deployment's
//! credential (`--dir`, or `$FERRY_TOKEN`), as operators are authenticated; status, conflicts
//! and parked records are read from the info port.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use ferry::client;
use ferry_topology::Topology;

#[derive(Debug, clap::Args)]
pub(crate) struct LinkArgs {
    #[command(subcommand)]
    action: LinkAction,
    /// The topology file naming the sites and their nodes. Default: the one `ferry up` runs
    /// from `--dir`.
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
    /// State directory of a `ferry up` deployment (its `topology.toml` is used).
    #[arg(long, global = true, default_value = "ferry-data")]
    dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum LinkAction {
    /// Per node: state, lag, queue and counters of the link.
    Status { link: String },
    /// Stop shipping; changes wait in the digest log.
    Pause { link: String },
    /// Ship again from where the link stopped.
    Resume { link: String },
    /// Re-ship every record changed since TIME: `all`, an age like `90s`, `15m`, `2h`, `1d`,
    /// or milliseconds since the Unix epoch.
    Rewind {
        link: String,
        #[arg(long)]
        to: String,
    },
    /// Ship everything logged so far and wait until every node of the source site has it
    /// acknowledged (resumes a paused link). For switchover: fence writes first.
    Drain {
        link: String,
        /// Longest wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Versions that lost a conflict at the link's destination site, newest last.
    Conflicts {
        link: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Records the destination refused for good, parked on the source nodes (oldest change
    /// first); `--retry` ships them again, `--discard` drops them.
    Parked {
        link: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Ship every parked record again (its current version); what the destination takes
        /// is unparked.
        #[arg(long, conflicts_with = "discard")]
        retry: bool,
        /// Drop every parked record: the destination will not get them.
        #[arg(long)]
        discard: bool,
    },
}

pub(crate) fn run(args: LinkArgs) -> anyhow::Result<ExitCode> {
    let topology = super::deployment_topology(args.topology.as_deref(), &args.dir)?;
    let credential = ferry::credentials::for_deployment(&args.dir)?;
    let http = ferry::ops::admin_client(credential.as_ref());
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    let command = |link: String, action: &'static str, from_ms: Option<u64>| {
        let (topology, http) = (&topology, &http);
        async move { command(http, topology, &link, action, from_ms).await }
    };
    runtime.block_on(async {
        match args.action {
            LinkAction::Status { link } => {
                let (from, to) = resolve(&topology, &link)?;
                for (node, stats) in ferry::ops::link_stats(&topology, &from, &to).await? {
                    match stats {
                        Ok(stats) => {
                            println!(
                                "{from} -> {to} on {node}: {}",
                                stats.to_info().replace(';', " ")
                            )
                        }
                        Err(error) => println!("{from} -> {to} on {node}: {error}"),
                    }
                }
            }
            LinkAction::Pause { link } => command(link, "pause", None).await?,
            LinkAction::Resume { link } => command(link, "resume", None).await?,
            LinkAction::Rewind { link, to } => {
                command(link, "rewind", Some(rewind_from_ms(&to)?)).await?
            }
            LinkAction::Drain { link, timeout } => {
                let (from, to) = resolve(&topology, &link)?;
                let timeout = Duration::from_secs(timeout);
                ferry::ops::drain_link(&http, &topology, &from, &to, timeout).await?;
                println!("{from} -> {to}: drained on every node");
            }
            LinkAction::Parked { link, limit, retry, discard } => {
                if retry {
                    command(link, "retry-parked", None).await?;
                } else if discard {
                    command(link, "discard-parked", None).await?;
                } else {
                    let (from, to) = resolve(&topology, &link)?;
                    let site = topology.site(&from).with_context(|| format!("no site '{from}'"))?;
                    println!("node namespace digest set lut_ms parked_at_ms reason");
                    for node in &site.nodes {
                        match client::parked(node.client.addr(), &to, limit).await {
                            Ok(parked) => {
                                for r in parked {
                                    println!(
                                        "{} {} {} {} {} {} {}",
                                        node.id,
                                        r.namespace,
                                        r.digest,
                                        r.set,
                                        r.lut_ms,
                                        r.parked_at_ms,
                                        r.reason
                                    );
                                }
                            }
                            Err(error) => println!("{}: {error}", node.id),
                        }
                    }
                }
            }
            LinkAction::Conflicts { link, limit } => {
                let (_, to) = resolve(&topology, &link)?;
                let name = format!("xdr-conflicts:limit={limit}");
                println!("node namespace digest at_ms kept(gen/lut/origin) lost(gen/lut/origin)");
                for (node, value) in ferry::ops::ask_site(&topology, &to, &name).await? {
                    for conflict in value.split(';').filter(|c| !c.is_empty()) {
                        println!("{node} {}", conflict.replace(',', " "));
                    }
                }
            }
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// `FROM:TO`, or just `TO` when exactly one link leads there.
fn resolve(topology: &Topology, link: &str) -> anyhow::Result<(String, String)> {
    let matches: Vec<_> = topology
        .links
        .iter()
        .filter(|l| match link.split_once(':') {
            Some((from, to)) => l.from == *from && l.to == *to,
            None => l.to == *link,
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((one.from.to_string(), one.to.to_string())),
        [] => {
            let known: Vec<String> =
                topology.links.iter().map(|l| format!("{}:{}", l.from, l.to)).collect();
            bail!("no link '{link}' in the topology; links: {}", known.join(", "))
        }
        _ => bail!("'{link}' names several links; write it as FROM:TO"),
    }
}

async fn command(
    http: &reqwest::Client,
    topology: &Topology,
    link: &str,
    action: &str,
    from_ms: Option<u64>,
) -> anyhow::Result<()> {
    let (from, to) = resolve(topology, link)?;
    let answers = ferry::ops::control_link(http, topology, (&from, &to), action, from_ms).await?;
    let mut failed = false;
    for (node, value) in answers {
        failed |= value != "ok";
        println!("{from} -> {to} on {node}: {value}");
    }
    if failed {
        bail!("{action} did not succeed on every node of {from}");
    }
    Ok(())
}

/// `all` → 0; `90s`/`15m`/`2h`/`1d` → that long ago; digits → ms since the Unix epoch.
fn rewind_from_ms(text: &str) -> anyhow::Result<u64> {
    if text == "all" {
        return Ok(0);
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("--to '{text}': expected all, an age like 15m, or ms since the epoch"),
    };
    let count: u64 =
        number.parse().with_context(|| format!("--to '{text}': '{number}' is not a number"))?;
    let age = Duration::from_secs(count.saturating_mul(seconds));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?;
    Ok(now.saturating_sub(age).as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_times_parse() {
        assert_eq!(rewind_from_ms("all").expect("all"), 0);
        assert_eq!(rewind_from_ms("1700000000000").expect("epoch ms"), 1_700_000_000_000);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        let ago = rewind_from_ms("15m").expect("age");
        assert!((now - 15 * 60_000).abs_diff(ago) < 5_000, "{ago}");
        assert!(rewind_from_ms("15w").is_err());
        assert!(rewind_from_ms("xm").is_err());
    }
}
