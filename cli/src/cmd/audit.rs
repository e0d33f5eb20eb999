//! `ferry audit`: the deployment's audit trail (who applied which topology version, who paused
//! or rewound which link and from where, which drills ran and how they ended), from the
//! topology service of a `ferry up` state directory, or straight from a topology store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use ferry_topology::audit::AuditEvent;
use ferry_topology::store::TopologyStore;

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// State directory of the deployment (its topology service, else its store).
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
    /// Read this topology store instead (an SQLite path or URL, or a postgres:// URL).
    #[arg(long)]
    store: Option<String>,
    /// The newest N events.
    #[arg(long, default_value_t = 100, value_name = "N")]
    limit: i64,
    /// Print the events as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    let events = runtime.block_on(read(&args))?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&events).context("encode the trail")?);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:>5}  {:<19}  {:<20} {:<21} {:<18} {:<14} {:<10} {:<12} detail",
        "id",
        "time (UTC)",
        "actor",
        "origin",
        "action",
        "target",
        "outcome",
        "recorded by"
    );
    for e in &events {
        say!(
            "{:>5}  {:<19}  {:<20} {:<21} {:<18} {:<14} {:<10} {:<12} {}",
            e.id,
            super::topology::utc(e.at_ms),
            e.actor,
            e.origin,
            e.action,
            e.target,
            e.outcome,
            e.recorded_by,
            e.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn read(args: &AuditArgs) -> anyhow::Result<Vec<AuditEvent>> {
    let store = match &args.store {
        Some(url) => url.clone(),
        None => {
            if let Some(client) = ferry::credentials::service_client(&args.dir)? {
                return Ok(client.audit_trail(args.limit).await?);
            }
            let db = ferry::deploy::StateDir { root: args.dir.clone() }.topology_db();
            anyhow::ensure!(
                db.exists(),
                "no topology service or store in {} (is it a `ferry up` state directory? or \
                 pass --store)",
                args.dir.display()
            );
            db.display().to_string()
        }
    };
    let store = TopologyStore::open(&store).await?;
    Ok(store.audit_trail(args.limit).await?)
}
