//! `ferry topology …`: validate topology files, keep their versions in the store, serve them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ferry_topology::diff::TopologyDiff;
use ferry_topology::model::{Role, Topology};
use ferry_topology::store::{Applied, ApplyRequest, StoreError, TopologyStore, VersionNumber};
use ferry_topology::{InvalidTopology, LoadError, load_topology};

/// Default store: an SQLite file under the state directory `ferry up` uses.
const DEFAULT_STORE: &str = "sqlite://ferry-data/topology.db";

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// Topology store: an SQLite path or URL, or a postgres:// URL.
    #[arg(long, env = "FERRY_TOPOLOGY_STORE", default_value = DEFAULT_STORE)]
    store: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// Check a topology file; print its errors (exit 1) or a summary of what it describes.
    Validate {
        /// The topology file (TOML).
        file: PathBuf,
    },
    /// Validate a file and store it as the next version (or, with --dry-run, show its effect).
    Apply {
        file: PathBuf,
        /// Why this version exists.
        #[arg(long, default_value = "")]
        comment: String,
        /// Who applies it. Default: $USER.
        #[arg(long)]
        author: Option<String>,
        /// Print the diff against the current version and its effect; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply only if version N is still the current one (0: the store is empty).
        #[arg(long, value_name = "N")]
        expect_version: Option<VersionNumber>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the current version's file (or another version's).
    Show {
        #[arg(long)]
        version: Option<VersionNumber>,
        /// Print the whole version (metadata and parsed form) as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List every stored version.
    History {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show what changes from version A to version B.
    Diff {
        a: VersionNumber,
        b: VersionNumber,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Store version N's content again as the newest version.
    Rollback {
        version: VersionNumber,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long)]
        author: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Run the topology service (HTTP + JSON) over a store until Ctrl-C.
    Serve {
        /// Address to listen on (plain HTTP: loopback only).
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: std::net::SocketAddr,
        /// Who may call the service: an access file of token hashes and roles, re-read when
        /// it changes (`ferry up` keeps one in its state directory).
        #[arg(long, value_name = "FILE", default_value = "ferry-data/access.toml")]
        access: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub(crate) fn run(command: TopologyCommand) -> anyhow::Result<ExitCode> {
    if let TopologyCommand::Validate { file } = &command {
        return validate(file);
    }
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    runtime.block_on(run_with_store(command))
}

async fn run_with_store(command: TopologyCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopologyCommand::Validate { file } => validate(&file),
        TopologyCommand::Apply { file, comment, author, dry_run, expect_version, store } => {
            let content = std::fs::read_to_string(&file)
                .with_context(|| format!("read topology file {}", file.display()))?;
            let source = file.display().to_string();
            let store = open(&store).await?;
            if dry_run {
                return dry_run_apply(&store, &source, &content).await;
            }
            let request = ApplyRequest {
                source: source.clone(),
                content,
                author: author.unwrap_or_else(default_author),
                comment,
                expected_parent: expect_version,
            };
            report_apply(&source, store.apply(request).await)
        }
        TopologyCommand::Show { version, json, store } => {
            let store = open(&store).await?;
            let found = match version {
                Some(number) => store.get(number).await?,
                None => store.current().await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", found.content);
            }
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::History { store } => {
            let store = open(&store).await?;
            println!(
                "{:>7} {:>6}  {:<19}  {:<12} {:<28} comment",
                "version", "parent", "time (UTC)", "author", "source"
            );
            for v in store.history().await? {
                println!(
                    "{:>7} {:>6}  {:<19}  {:<12} {:<28} {}",
                    v.version,
                    v.parent.map_or("-".to_owned(), |p| p.to_string()),
                    utc(v.created_at_ms),
                    v.author,
                    v.source,
                    v.comment
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Diff { a, b, store } => {
            let store = open(&store).await?;
            let (old, new) = (store.get(a).await?, store.get(b).await?);
            let texts = Some((old.content.as_str(), new.content.as_str()));
            print!("{}", TopologyDiff::between(&old.topology, &new.topology, texts));
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Rollback { version, comment, author, store } => {
            let store = open(&store).await?;
            let author = author.unwrap_or_else(default_author);
            let source = format!("version {version}");
            report_apply(&source, store.rollback(version, &author, &comment).await)
        }
        TopologyCommand::Serve { listen, access, store } => {
            ferry_auth::gate::require_loopback("topology service", listen)?;
            let access = ferry_auth::AccessFile::open(&access)?;
            let gate = ferry_auth::Gate::new(
                std::sync::Arc::new(access),
                ferry_topology::service::required_role,
            );
            let shown = store.store.clone();
            let store = open(&store).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            println!(
                "topology service on http://{} (store {shown}); Ctrl-C stops it",
                listener.local_addr()?
            );
            ferry_topology::service::serve(listener, store, gate, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serve topology")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open(args: &StoreArgs) -> anyhow::Result<TopologyStore> {
    Ok(TopologyStore::open(&args.store).await?)
}

async fn dry_run_apply(
    store: &TopologyStore,
    source: &str,
    content: &str,
) -> anyhow::Result<ExitCode> {
    let validated = match ferry_topology::parse_topology(source, content) {
        Ok(validated) => validated,
        Err(invalid) => return Ok(print_invalid(source, &invalid)),
    };
    match store.current().await {
        Ok(current) => {
            println!("dry run: {source} against version {}", current.version);
            let texts = Some((current.content.as_str(), content));
            print!("{}", TopologyDiff::between(&current.topology, &validated.topology, texts));
        }
        Err(StoreError::Empty) => {
            println!("dry run: the store is empty; {source} would become version 1");
            print!("{}", summary(&validated.topology));
        }
        Err(error) => return Err(error.into()),
    }
    println!("nothing changed (dry run)");
    Ok(ExitCode::SUCCESS)
}

fn report_apply(source: &str, result: Result<Applied, StoreError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(Applied::Created { version }) => {
            println!("applied as version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Applied::Unchanged { version }) => {
            println!("unchanged: the content equals version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Invalid(invalid)) => {
            let code = print_invalid(source, &invalid);
            eprintln!("nothing changed");
            Ok(code)
        }
        Err(error) => Err(error.into()),
    }
}

fn print_invalid(source: &str, invalid: &InvalidTopology) -> ExitCode {
    for diagnostic in &invalid.diagnostics {
        eprintln!("{diagnostic}");
    }
    let errors = invalid.errors().count();
    eprintln!("{source}: invalid ({errors} error{})", plural(errors));
    ExitCode::FAILURE
}

fn default_author() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned())
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time in milliseconds (civil-from-days, proleptic Gregorian).
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn validate(file: &Path) -> anyhow::Result<ExitCode> {
    match load_topology(file) {
        Ok(validated) => {
            print!("{}", summary(&validated.topology));
            for warning in &validated.warnings {
                println!("{warning}");
            }
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(invalid)) => {
            Ok(print_invalid(&file.display().to_string(), &invalid))
        }
        Err(error) => Err(error.into()),
    }
}

/// What a topology describes, one line per site and link.
pub(crate) fn summary(topology: &Topology) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let nodes: usize = topology.sites.iter().map(|s| s.nodes.len()).sum();
    let _ = writeln!(
        out,
        "topology '{}': {} site{}, {nodes} node{}, {} link{}",
        topology.name,
        topology.sites.len(),
        plural(topology.sites.len()),
        plural(nodes),
        topology.links.len(),
        plural(topology.links.len()),
    );
    for site in &topology.sites {
        let role = match site.role {
            Role::Active => "active",
            Role::Standby => "standby",
        };
        let namespaces: Vec<String> = site
            .namespaces
            .iter()
            .map(|ns| format!("{} (rf {})", ns.name, ns.replication_factor))
            .collect();
        let _ = writeln!(
            out,
            "  site {:<12} src-id {:<3} {role:<7} {} node{} on {} rack{}; namespaces: {}",
            site.name.as_str(),
            site.src_id,
            site.nodes.len(),
            plural(site.nodes.len()),
            site.rack_count(),
            plural(site.rack_count()),
            namespaces.join(", "),
        );
    }
    for link in &topology.links {
        let namespaces: Vec<&str> = link.namespaces.iter().map(|n| n.as_str()).collect();
        let _ = writeln!(
            out,
            "  link {:<24} {:<8} namespaces: {}{}",
            link.name(),
            if link.enabled { "enabled" } else { "disabled" },
            namespaces.join(", "),
            if link.forward { " (forwards)" } else { "" },
        );
    }
    out
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_civil_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_525_199_000), "2026-11-24 12:59:59");
    }
}
