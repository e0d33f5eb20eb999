//! `ferry put|get|delete|scan`: quick reads and writes against one site of a running
//! deployment, through the Aerospike client protocol of the site's nodes.
//!
//! The site's nodes come from `<dir>/topology.toml`, the topology file `ferry up` keeps in its
//! state directory. Keys are always strings: `ferry get us-east 7` reads the record whose
//! user key is the string `"7"`, not the integer 7 (Aerospike digests the two differently).
//! Values of `BIN=VALUE` are typed by their text: an integer is an integer, a finite decimal
//! number a float, anything else a string.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aerospike::query::PartitionFilter;
use aerospike::{
    Bin, Bins, Client, ClientPolicy, Host, Key, QueryPolicy, ReadPolicy, Record, ResultCode,
    Statement, Value, WritePolicy,
};
use anyhow::{Context as _, bail};
use ferry_digestlog::Digest;
use ferry_node::record::MAX_BIN_NAME;
use ferry_topology::{Topology, load_topology};

/// Most records `ferry scan` prints without `--count`.
const SCAN_PRINT_LIMIT: usize = 100;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DataCommand {
    /// Write one record (string KEY); each BIN=VALUE is an integer, a float or a string.
    Put {
        /// The site, by its name in the topology.
        site: String,
        /// The record's user key (always a string).
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// Bins to write, e.g. `name=Alice age=30 score=1.5`.
        #[arg(required = true, value_name = "BIN=VALUE")]
        bins: Vec<String>,
        #[command(flatten)]
        options: DataOptions,
    },
    /// Read one record: generation, TTL and bins. Exits with 1 when it does not exist.
    Get {
        /// The site, by its name in the topology.
        site: String,
        /// The record's user key (always a string).
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[command(flatten)]
        options: DataOptions,
    },
    /// Delete one record and say whether it existed.
    Delete {
        /// The site, by its name in the topology.
        site: String,
        /// The record's user key (always a string).
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[command(flatten)]
        options: DataOptions,
    },
    /// List the records of the set (the first 100), or count them all with `--count`.
    Scan {
        /// The site, by its name in the topology.
        site: String,
        /// Print only the number of records in the set.
        #[arg(long)]
        count: bool,
        #[command(flatten)]
        options: DataOptions,
    },
}

impl DataCommand {
    fn options(&self) -> &DataOptions {
        match self {
            DataCommand::Put { options, .. }
            | DataCommand::Get { options, .. }
            | DataCommand::Delete { options, .. }
            | DataCommand::Scan { options, .. } => options,
        }
    }
}

/// Where the deployment is and which records the data commands address.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DataOptions {
    /// The deployment's state directory, holding `topology.toml` (`ferry up --dir`).
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
    /// The namespace of the records.
    #[arg(long, default_value = "test")]
    namespace: String,
    /// The set of the records; `scan` with an empty set (`--set ''`) covers the namespace.
    #[arg(long, default_value = "demo")]
    set: String,
}

pub(crate) fn run(command: DataCommand) -> anyhow::Result<ExitCode> {
    // Check the arguments before looking for the deployment, so typos are reported first.
    let bins = match &command {
        DataCommand::Put { bins, .. } => parse_bins(bins)?,
        _ => Vec::new(),
    };
    let options = command.options().clone();
    let topology = load_deployment(&options.dir)?;
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    runtime.block_on(async {
        match command {
            DataCommand::Put { site, key, .. } => {
                let client = connect(&topology, &site).await?;
                let policy = WritePolicy { send_key: true, ..WritePolicy::default() };
                let record_key = record_key(&options, &key)?;
                client
                    .put(&policy, &record_key, &bins)
                    .await
                    .with_context(|| format!("put '{key}' on {site}"))?;
                let plural = if bins.len() == 1 { "" } else { "s" };
                println!("stored '{key}' on {site} ({} bin{plural})", bins.len());
                close(client).await;
                Ok(ExitCode::SUCCESS)
            }
            DataCommand::Get { site, key, .. } => {
                let client = connect(&topology, &site).await?;
                let record_key = record_key(&options, &key)?;
                let result = client.get(&ReadPolicy::default(), &record_key, Bins::All).await;
                close(client).await;
                match result {
                    Ok(record) => {
                        print!("{}", describe(&record));
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) if e.server_result_code() == Some(ResultCode::KeyNotFoundError) => {
                        eprintln!(
                            "not found: '{key}' in {}/{} on {site}",
                            options.namespace, options.set
                        );
                        Ok(ExitCode::from(1))
                    }
                    Err(e) => Err(e).with_context(|| format!("get '{key}' on {site}")),
                }
            }
            DataCommand::Delete { site, key, .. } => {
                let client = connect(&topology, &site).await?;
                let record_key = record_key(&options, &key)?;
                let existed = client
                    .delete(&WritePolicy::default(), &record_key)
                    .await
                    .with_context(|| format!("delete '{key}' on {site}"))?;
                close(client).await;
                if existed {
                    println!("deleted '{key}' on {site}");
                } else {
                    println!("'{key}' did not exist on {site}; nothing deleted");
                }
                Ok(ExitCode::SUCCESS)
            }
            DataCommand::Scan { site, count, .. } => {
                let client = connect(&topology, &site).await?;
                let result = if count {
                    count_records(&client, &options).await.map(|n| println!("{n}"))
                } else {
                    print_records(&client, &options).await
                };
                close(client).await;
                result.with_context(|| {
                    format!("scan {}/{} on {site}", options.namespace, options.set)
                })?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The topology of the deployment whose state directory is `dir`.
fn load_deployment(dir: &Path) -> anyhow::Result<Topology> {
    let path = dir.join("topology.toml");
    if !path.is_file() {
        bail!(
            "no deployment in {}: {} does not exist; start one with `ferry up` \
             (or pass --dir to point at its state directory)",
            dir.display(),
            path.display()
        );
    }
    Ok(load_topology(&path)?.topology)
}

/// A client connected to every node of `site`.
async fn connect(topology: &Topology, site: &str) -> anyhow::Result<Client> {
    let Some(found) = topology.site(site) else {
        let known: Vec<String> = topology.sites.iter().map(|s| s.name.to_string()).collect();
        bail!("no site '{site}' in the deployment; sites: {}", known.join(", "));
    };
    let seeds: Vec<Host> = found
        .nodes
        .iter()
        .map(|node| {
            let addr = node.client.addr();
            Host::new(&addr.ip().to_string(), addr.port())
        })
        .collect();
    let listed: Vec<String> = found.nodes.iter().map(|node| node.client.to_string()).collect();
    Client::new(&ClientPolicy::default(), &seeds).await.with_context(|| {
        format!(
            "connect to site {site} at {} (is the deployment running? start it with `ferry up`)",
            listed.join(",")
        )
    })
}

/// Closes the client; a failure to close changes nothing for the command, so it is ignored.
async fn close(client: Client) {
    let _ = client.close().await;
}

fn record_key(options: &DataOptions, key: &str) -> anyhow::Result<Key> {
    Key::new(options.namespace.as_str(), options.set.as_str(), Value::from(key))
        .with_context(|| format!("make key '{key}'"))
}

/// Counts the records of the set: a scan of every partition without bin data.
async fn count_records(client: &Client, options: &DataOptions) -> anyhow::Result<u64> {
    let count = Arc::new(Mutex::new(0u64));
    let seen = Arc::clone(&count);
    let statement = Statement::new(options.namespace.as_str(), options.set.as_str(), Bins::None);
    let outcome = scan(client, statement, move |_record| {
        *seen.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        true
    })
    .await;
    outcome?;
    let total = *count.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(total)
}

/// Prints the first [`SCAN_PRINT_LIMIT`] records of the set, sorted by key.
async fn print_records(client: &Client, options: &DataOptions) -> anyhow::Result<()> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&records);
    let statement = Statement::new(options.namespace.as_str(), options.set.as_str(), Bins::All);
    // One record past the limit tells that there are more.
    scan(client, statement, move |record| {
        let mut records = sink.lock().unwrap_or_else(PoisonError::into_inner);
        records.push(record);
        records.len() <= SCAN_PRINT_LIMIT
    })
    .await?;
    let mut records = std::mem::take(&mut *records.lock().unwrap_or_else(PoisonError::into_inner));
    let more = records.len() > SCAN_PRINT_LIMIT;
    records.truncate(SCAN_PRINT_LIMIT);
    let mut lines: Vec<String> = records.iter().map(scan_line).collect();
    lines.sort();
    for line in &lines {
        println!("{line}");
    }
    if more {
        println!("(first {SCAN_PRINT_LIMIT} records shown; `ferry scan --count` counts them all)");
    } else {
        println!("({} records)", lines.len());
    }
    Ok(())
}

/// Scans every partition, handing each record to `take` until it returns false; the first
/// record error ends the scan and is returned.
async fn scan(
    client: &Client,
    statement: Statement,
    take: impl Fn(Record) -> bool + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let failure: Arc<Mutex<Option<aerospike::Error>>> = Arc::new(Mutex::new(None));
    let failed = Arc::clone(&failure);
    let stopped = Arc::new(Mutex::new(false));
    let stop = Arc::clone(&stopped);
    let callback = move |result: aerospike::Result<Record>| {
        let go_on = match result {
            Ok(record) => take(record),
            Err(e) => {
                failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                false
            }
        };
        if !go_on {
            *stop.lock().unwrap_or_else(PoisonError::into_inner) = true;
        }
        std::future::ready(go_on)
    };
    let mut handle = client
        .query_foreach(&QueryPolicy::default(), PartitionFilter::all(), statement, callback)
        .await
        .context("start scan")?;
    let ended = handle.wait().await;
    if let Some(e) = failure.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(e).context("read scanned record");
    }
    // A scan stopped on purpose may report its own teardown; only other endings are errors.
    if !*stopped.lock().unwrap_or_else(PoisonError::into_inner) {
        ended.context("finish scan")?;
    }
    Ok(())
}

/// `get` output: generation, TTL, then one `name = value` line per bin, sorted by name.
fn describe(record: &Record) -> String {
    let mut out = format!("generation: {}\n", record.generation);
    out.push_str(&format!("ttl: {}\n", format_ttl(record.time_to_live())));
    let mut bins: Vec<(&String, &Value)> = record.bins.iter().collect();
    bins.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in bins {
        out.push_str(&format!("{name} = {}\n", format_value(value)));
    }
    out
}

/// One scanned record: its user key (or digest when the key was not stored), then its bins.
fn scan_line(record: &Record) -> String {
    let mut line = match &record.key {
        Some(key) => match key.user_key() {
            Some(user_key) => format_value(user_key),
            None => format!("digest:{}", Digest(key.digest())),
        },
        None => "(no key)".to_owned(),
    };
    let mut bins: Vec<(&String, &Value)> = record.bins.iter().collect();
    bins.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in bins {
        line.push_str(&format!("  {name}={}", format_value(value)));
    }
    line
}

fn format_ttl(ttl: Option<Duration>) -> String {
    match ttl {
        None => "never expires".to_owned(),
        Some(ttl) => format!("{}s", ttl.as_secs()),
    }
}

/// Strings quoted, so `"5"` and `5` read differently; other values as the client prints them.
fn format_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Parses every `BIN=VALUE`, refusing repeated bin names.
fn parse_bins(texts: &[String]) -> anyhow::Result<Vec<Bin>> {
    let mut names = HashSet::new();
    let mut bins = Vec::with_capacity(texts.len());
    for text in texts {
        let (name, value) = parse_bin(text)?;
        if !names.insert(name.clone()) {
            bail!("bin '{name}' is given twice");
        }
        bins.push(Bin::new(name, value));
    }
    Ok(bins)
}

/// `BIN=VALUE` → the bin name and its typed value (see [`parse_value`]).
fn parse_bin(text: &str) -> anyhow::Result<(String, Value)> {
    let Some((name, value)) = text.split_once('=') else {
        bail!("'{text}' is not BIN=VALUE: it has no '='");
    };
    if name.is_empty() {
        bail!("'{text}' is not BIN=VALUE: the bin name is empty");
    }
    if name.len() > MAX_BIN_NAME {
        bail!("bin name '{name}' is longer than {MAX_BIN_NAME} bytes");
    }
    Ok((name.to_owned(), parse_value(value)))
}

/// An integer (`-3`, `42`) → `Int`; a finite number (`1.5`, `2e3`) → `Float`; anything else,
/// including `nan`, `inf` and the empty text, → `String`.
fn parse_value(text: &str) -> Value {
    if let Ok(int) = text.parse::<i64>() {
        return Value::Int(int);
    }
    match text.parse::<f64>() {
        Ok(float) if float.is_finite() => Value::from(float),
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_by_their_text() {
        assert_eq!(parse_value("42"), Value::Int(42));
        assert_eq!(parse_value("-7"), Value::Int(-7));
        assert_eq!(parse_value("1.5"), Value::from(1.5));
        assert_eq!(parse_value("2e3"), Value::from(2000.0));
        assert_eq!(parse_value("Alice"), Value::from("Alice"));
        assert_eq!(parse_value(""), Value::from(""));
        assert_eq!(parse_value("nan"), Value::from("nan"));
        assert_eq!(parse_value("inf"), Value::from("inf"));
        // Beyond i64: a float, not a string.
        assert_eq!(parse_value("9223372036854775808"), Value::from(9_223_372_036_854_775_808.0));
        assert_eq!(parse_value(" 1"), Value::from(" 1"));
    }

    #[test]
    fn bin_splits_at_the_first_equals_sign() {
        let (name, value) = parse_bin("expr=a=b").expect("valid");
        assert_eq!(name, "expr");
        assert_eq!(value, Value::from("a=b"));
        let (name, value) = parse_bin("n=").expect("valid");
        assert_eq!(name, "n");
        assert_eq!(value, Value::from(""));
    }

    #[test]
    fn malformed_bins_are_refused_with_the_reason() {
        let error = parse_bin("name").expect_err("no '='").to_string();
        assert!(error.contains("no '='"), "{error}");
        let error = parse_bin("=5").expect_err("empty name").to_string();
        assert!(error.contains("bin name is empty"), "{error}");
        let error = parse_bin("a_very_long_bin_name=1").expect_err("too long").to_string();
        assert!(error.contains("longer than 15 bytes"), "{error}");
        let texts = vec!["n=1".to_owned(), "n=2".to_owned()];
        let error = parse_bins(&texts).expect_err("repeated").to_string();
        assert!(error.contains("'n' is given twice"), "{error}");
    }

    #[test]
    fn get_output_lists_bins_sorted_by_name() {
        let mut bins = aerospike::IndexMap::new();
        bins.insert("name".to_owned(), Value::from("Alice"));
        bins.insert("age".to_owned(), Value::Int(30));
        let record = Record::new(None, bins, None, 3, 0);
        assert_eq!(
            describe(&record),
            "generation: 3\nttl: never expires\nage = 30\nname = \"Alice\"\n"
        );
    }

    #[test]
    fn scanned_records_show_their_user_key_or_digest() {
        let mut bins = aerospike::IndexMap::new();
        bins.insert("n".to_owned(), Value::Int(1));
        let key = Key::new("test", "demo", Value::from("k1")).expect("key");
        let record = Record::new(Some(key.clone()), bins.clone(), None, 1, 0);
        assert_eq!(scan_line(&record), "\"k1\"  n=1");
        let bare = Key::with_digest("test", "demo", None, key.digest());
        let record = Record::new(Some(bare), bins, None, 1, 0);
        assert_eq!(scan_line(&record), format!("digest:{}  n=1", Digest(key.digest())));
    }
}
