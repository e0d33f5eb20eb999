//! `ferry drill switchover|failover|failback`: the DR drills ([`ferry::drill`]) on a running
//! deployment, each ending in a table (or `--json`) saved under the state directory's
//! `reports/`. Ctrl-C during a drill undoes what it changed (if it had fenced writes) and says
//! where things stand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use ferry::drill::{Drills, FailbackReport, FailoverReport, Step, SwitchoverReport};
use ferry_topology::audit::AuditEvent;

/// Exit code of a drill interrupted by Ctrl-C (128 + SIGINT).
const INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub(crate) struct DrillArgs {
    #[command(subcommand)]
    drill: DrillCommand,
    /// Print the report as one JSON document instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// State directory of a `ferry up` deployment: its topology service, its topology file,
    /// and `reports/` where the report is saved.
    #[arg(long, global = true, default_value = "ferry-data")]
    dir: PathBuf,
    /// The topology file the deployment's nodes start from, rewritten with every version the
    /// drill applies. Default: `<dir>/topology.toml`.
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
    /// URL of the topology service the nodes follow. Default: the one `ferry up` serves for
    /// `--dir`.
    #[arg(long, global = true)]
    topology_service: Option<String>,
    /// Drill even when a node is unhealthy or a link is not active.
    #[arg(long, global = true)]
    force: bool,
    /// Longest wait of any one step (drain, nodes applying a version), in seconds.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
enum DrillCommand {
    /// Planned role swap with RPO 0: fence client writes at the active site, drain every link,
    /// verify, swap roles and link directions, lift the fence at the new active site.
    Switchover {
        /// The standby site that becomes active.
        #[arg(long)]
        to: String,
    },
    /// Unplanned: declare the active site lost, promote its standby, enable the reverse link,
    /// and report exactly what the lost site acknowledged and never shipped.
    Failover {
        /// The active site to declare lost.
        #[arg(long)]
        lose: String,
        /// The site to promote. Default: the standby the lost site ships to.
        #[arg(long)]
        promote: Option<String>,
        /// Freeze the lost site's node processes on this machine (SIGSTOP), as if its region
        /// were gone; the failback resumes them. The RPO is then a bound until they return.
        #[arg(long)]
        freeze: bool,
    },
    /// Bring a site lost in a failover back: ship what diverged both ways, list the
    /// conflicts, verify, and make it active again.
    Failback {
        /// The site that returns to active.
        #[arg(long)]
        to: String,
    },
}

/// A finished drill's report.
enum Report {
    Switchover(SwitchoverReport),
    Failover(FailoverReport),
    Failback(FailbackReport),
}

impl Report {
    /// The figures the audit trail keeps of a drill.
    fn summary(&self) -> String {
        match self {
            Report::Switchover(r) => format!(
                "{} -> {}: RPO {} records, RTO {} ms, verified {}, topology version {}",
                r.from, r.to, r.rpo_records, r.rto_ms, r.verified, r.topology_version
            ),
            Report::Failover(r) => format!(
                "{} lost, {} promoted: RPO {} records{}, RTO {} ms, topology version {}",
                r.lost,
                r.promoted,
                r.rpo_records,
                if r.rpo_exact { "" } else { " (estimate)" },
                r.rto_ms,
                r.topology_version
            ),
            Report::Failback(r) => format!(
                "{} active again: {} lost writes shipped, {} conflicts",
                r.to,
                r.lost_writes_shipped,
                r.conflicts.len()
            ),
        }
    }
}

fn print_step(step: &Step) {
    say_err!("  {:<12} {:>7} ms  {}", step.name, step.ms, step.detail);
}

pub(crate) fn run(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let service = match &args.topology_service {
        Some(url) => url.clone(),
        None => {
            let file = args.dir.join("topology-service");
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "no topology service for {} (is `ferry up` running there? or pass \
                         --topology-service URL)",
                        args.dir.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let topology_file = args.topology.clone().unwrap_or_else(|| args.dir.join("topology.toml"));
    let credential = ferry::credentials::for_deployment(&args.dir)?;
    let mut drills = Drills::new(&service, credential, Some(topology_file), print_step);
    drills.force = args.force;
    drills.local_dir = Some(args.dir.clone());
    drills.timeout = Duration::from_secs(args.timeout);
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    let outcome = runtime.block_on(async {
        let drill = async {
            match &args.drill {
                DrillCommand::Switchover { to } => {
                    say_err!("drill switchover to {to}");
                    drills.switchover(to).await.map(Report::Switchover)
                }
                DrillCommand::Failover { lose, promote, freeze } => {
                    say_err!("drill failover: {lose} lost");
                    drills.failover(lose, promote.as_deref(), *freeze).await.map(Report::Failover)
                }
                DrillCommand::Failback { to } => {
                    say_err!("drill failback to {to}");
                    drills.failback(to).await.map(Report::Failback)
                }
            }
        };
        tokio::select! {
            outcome = drill => Some(outcome),
            () = super::shutdown_signal() => None,
        }
    });
    let (action, target) = match &args.drill {
        DrillCommand::Switchover { to } => ("drill.switchover", format!("to {to}")),
        DrillCommand::Failover { lose, .. } => ("drill.failover", format!("lose {lose}")),
        DrillCommand::Failback { to } => ("drill.failback", format!("to {to}")),
    };
    // The service fills in who (the token) and from where.
    let event = AuditEvent::now("", "", action, &target);
    let report = match outcome {
        Some(Ok(report)) => report,
        Some(Err(error)) => {
            say_err!("ferry drill: {error}");
            runtime.block_on(drills.audit(&event.outcome(format!("failed: {error}"))));
            return Ok(ExitCode::FAILURE);
        }
        None => {
            let status = runtime.block_on(drills.undo());
            say_err!("ferry drill: {status}");
            runtime.block_on(drills.audit(&event.outcome(format!("interrupted: {status}"))));
            return Ok(ExitCode::from(INTERRUPTED));
        }
    };
    runtime.block_on(drills.audit(&event.detail(report.summary())));
    let (kind, json) = match &report {
        Report::Switchover(r) => ("switchover", serde_json::to_value(r)),
        Report::Failover(r) => ("failover", serde_json::to_value(r)),
        Report::Failback(r) => ("failback", serde_json::to_value(r)),
    };
    let json = json.context("encode the report")?;
    let saved = super::verify::save_report(&args.dir, &format!("drill-{kind}"), &json)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&json).context("encode the report")?);
    } else {
        print_report(&report);
        if let Some(path) = saved {
            say!("report saved: {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_steps(steps: &[Step]) {
    say!("  {:<12} {:>8}  {}", "step", "ms", "detail");
    for step in steps {
        say!("  {:<12} {:>8}  {}", step.name, step.ms, step.detail);
    }
}

fn print_report(report: &Report) {
    match report {
        Report::Switchover(r) => {
            say!("drill switchover: {} -> {}", r.from, r.to);
            print_steps(&r.steps);
            say!("  {:<20}{} records", "RPO", r.rpo_records);
            say!("  {:<20}{} ms (client writes refused)", "RTO", r.rto_ms);
            say!("  {:<20}{} ({} records)", "verified", r.verified, r.records_verified);
            say!("  {:<20}{}", "topology version", r.topology_version);
        }
        Report::Failover(r) => {
            say!("drill failover: {} lost, {} promoted", r.lost, r.promoted);
            print_steps(&r.steps);
            let exact = if r.rpo_exact { "exact" } else { "an estimate" };
            say!("  {:<20}{} records ({exact})", "RPO", r.rpo_records);
            if !r.rpo_note.is_empty() {
                say!("  {:<20}{}", "", r.rpo_note);
            }
            say!("  {:<20}{} ms", "RTO", r.rto_ms);
            say!("  {:<20}{}", "topology version", r.topology_version);
            print_lost_writes(&r.lost_writes);
        }
        Report::Failback(r) => {
            say!("drill failback: {} active again ({} standby)", r.to, r.from);
            print_steps(&r.steps);
            say!("  {:<20}{} records", "lost writes shipped", r.lost_writes_shipped);
            for (link, n) in &r.shipped {
                say!("  {:<20}{n} records {link}", "shipped");
            }
            say!("  {:<20}{}", "conflicts", r.conflicts.len());
            for c in r.conflicts.iter().take(20) {
                say!(
                    "    {} {} kept g{}@{} (site {}) over g{}@{} (site {})",
                    c.namespace,
                    c.digest,
                    c.local.generation,
                    c.local.last_update_ms,
                    c.local.origin_site,
                    c.incoming.generation,
                    c.incoming.last_update_ms,
                    c.incoming.origin_site
                );
            }
            say!("  {:<20}{} ({} records)", "verified", r.verified, r.records_verified);
            say!("  {:<20}{} ms (client writes refused)", "RTO", r.rto_ms);
            say!("  {:<20}{}", "topology version", r.topology_version);
        }
    }
}

fn print_lost_writes(lost: &[ferry::drill::LostPartition]) {
    if lost.is_empty() {
        return;
    }
    say!("\n  lost writes ({} partitions):", lost.len());
    say!(
        "    {:<10} {:>9} {:>6} {:>14} {:>14}  digests",
        "namespace",
        "partition",
        "count",
        "lut_min",
        "lut_max"
    );
    for p in lost.iter().take(20) {
        let digests = p.digests.iter().take(3).cloned().collect::<Vec<_>>().join(" ");
        let more = if p.digests.len() > 3 { " …" } else { "" };
        say!(
            "    {:<10} {:>9} {:>6} {:>14} {:>14}  {digests}{more}",
            p.namespace,
            p.partition,
            p.count,
            p.lut_min,
            p.lut_max
        );
    }
    super::verify::more(lost.len(), 20, " partitions");
}
