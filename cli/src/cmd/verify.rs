//! `ferry verify --from SITE --to SITE`: whether two sites hold the same data
//! ([`ferry::verify`]), as a table or `--json`, saved under the state directory's `reports/`.
//! Exit code 0: identical; 1: divergent; 2: could not verify.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use ferry::verify::{self, OneSided, Progress, Report, Watermark};

/// Exit code of a verification that found differences.
const DIVERGENT: u8 = 1;
/// Exit code of a verification that could not be completed.
const UNVERIFIED: u8 = 2;

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The site that ships (its records missing elsewhere are "missing at destination").
    #[arg(long)]
    from: String,
    /// The other site.
    #[arg(long)]
    to: String,
    /// Compare only this namespace (repeatable). Default: every namespace both sites serve.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Which versions to compare: `live` (those at or before a LUT every link between the
    /// sites has shipped, so a busy link verifies clean), `all`, or a LUT in ms since the epoch.
    #[arg(long, default_value = "live", value_parser = parse_watermark)]
    until: Watermark,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Most divergent records of each kind the table lists (the JSON lists all).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// The topology file naming the sites and their nodes. Default: the one `ferry up` runs
    /// from `--dir`.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// State directory of a `ferry up` deployment; the report is saved under its `reports/`.
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
}

fn parse_watermark(text: &str) -> Result<Watermark, String> {
    match text {
        "live" => Ok(Watermark::Live),
        "all" => Ok(Watermark::All),
        ms => ms
            .parse()
            .map(Watermark::At)
            .map_err(|_| format!("'{ms}' is not `live`, `all` or milliseconds since the epoch")),
    }
}

pub(crate) fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let topology = super::deployment_topology(args.topology.as_deref(), &args.dir)?;
    let request = verify::Request {
        from: args.from.clone(),
        to: args.to.clone(),
        namespaces: args.namespaces.clone(),
        watermark: args.until,
        credential: ferry::credentials::for_deployment(&args.dir)?,
    };
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    let mut bar = ProgressBar::on_terminal();
    let outcome = runtime.block_on(verify::verify(&topology, &request, |p| bar.show(p)));
    bar.finish();
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            say_err!("ferry verify: {error}");
            return Ok(ExitCode::from(UNVERIFIED));
        }
    };
    let saved = save_report(&args.dir, "verify", &report)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report).context("encode the report")?);
    } else {
        print_report(&report, args.show);
        if let Some(path) = saved {
            say!("report saved: {}", path.display());
        }
    }
    Ok(if report.identical { ExitCode::SUCCESS } else { ExitCode::from(DIVERGENT) })
}

/// Saves `report` as `<dir>/reports/<kind>-<ms since epoch>.json` when `dir` is a deployment's
/// state directory; returns the path.
pub(crate) fn save_report(
    dir: &Path,
    kind: &str,
    report: &impl serde::Serialize,
) -> anyhow::Result<Option<PathBuf>> {
    if !dir.join("topology.toml").is_file() {
        return Ok(None);
    }
    let reports = dir.join("reports");
    std::fs::create_dir_all(&reports).with_context(|| format!("create {}", reports.display()))?;
    let path = reports.join(format!("{kind}-{}.json", verify::now_ms()));
    let text = serde_json::to_string_pretty(report).context("encode the report")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(Some(path))
}

/// Prints a verification as a table: the verdict, then the divergent records.
pub(crate) fn print_report(report: &Report, show: usize) {
    say!("verify {} -> {} (namespaces: {})", report.from, report.to, report.namespaces.join(", "));
    match report.watermark_ms {
        Some(ms) => {
            let ago = verify::now_ms().saturating_sub(ms);
            say!(
                "  compared up to LUT {ms} ({}.{:03} s ago); {} records changed since left out",
                ago / 1000,
                ago % 1000,
                report.newer_than_watermark
            );
        }
        None => say!("  compared every version"),
    }
    say!("  {:<24}{}", "records compared", report.records);
    say!(
        "  {:<24}{} compared, {} differing",
        "partitions",
        report.partitions_compared,
        report.partitions_differing
    );
    say!("  {:<24}{} ms", "elapsed", report.elapsed_ms);
    let verdict = if report.identical { "IDENTICAL" } else { "DIVERGENT" };
    say!("  {:<24}{verdict}", "result");
    print_one_sided(&format!("missing at {}", report.to), &report.missing_at_destination, show);
    print_one_sided(&format!("missing at {}", report.from), &report.missing_at_source, show);
    if !report.different.is_empty() {
        say!("\n  different ({}):", report.different.len());
        say!(
            "    {:<10} {:<12} {:<40} {:>14} {:>14}",
            "namespace",
            "set",
            "digest",
            report.from,
            report.to
        );
        for record in report.different.iter().take(show) {
            let version = |v: &verify::Version| {
                format!(
                    "g{}@{}{}",
                    v.generation,
                    v.last_update_ms,
                    if v.tombstone { " del" } else { "" }
                )
            };
            say!(
                "    {:<10} {:<12} {:<40} {:>14} {:>14}",
                record.namespace,
                record.set,
                record.digest,
                version(&record.source),
                version(&record.destination)
            );
        }
        more(report.different.len(), show, "");
    }
}

fn print_one_sided(title: &str, records: &[OneSided], show: usize) {
    if records.is_empty() {
        return;
    }
    say!("\n  {title} ({}):", records.len());
    say!(
        "    {:<10} {:<12} {:<40} {:>5} {:>14} {:>6}",
        "namespace",
        "set",
        "digest",
        "gen",
        "lut",
        "origin"
    );
    for r in records.iter().take(show) {
        let v = &r.version;
        say!(
            "    {:<10} {:<12} {:<40} {:>5} {:>14} {:>6}",
            r.namespace,
            r.set,
            r.digest,
            v.generation,
            v.last_update_ms,
            v.origin_site
        );
    }
    more(records.len(), show, "");
}

/// Says how many of `len` rows a table left out after showing `show` (`what`: their noun, or
/// empty).
pub(crate) fn more(len: usize, show: usize, what: &str) {
    if len > show {
        say!("    … and {} more{what} (--json lists all)", len - show);
    }
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
#[derive(Debug)]
pub(crate) struct ProgressBar {
    drawn: bool,
    enabled: bool,
}

impl ProgressBar {
    pub(crate) fn on_terminal() -> ProgressBar {
        ProgressBar { drawn: false, enabled: std::io::stderr().is_terminal() }
    }

    pub(crate) fn show(&mut self, progress: Progress) {
        if !self.enabled {
            return;
        }
        let (what, done, total) = match progress {
            Progress::Summaries { done, total } => ("nodes summarized", done, total),
            Progress::Partitions { done, total } => ("differing partitions compared", done, total),
        };
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled));
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "\r\x1b[2K[{bar}] {done}/{total} {what}");
        let _ = stderr.flush();
        self.drawn = true;
    }

    pub(crate) fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}
