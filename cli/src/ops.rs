//! Operations on the sites and links of a running deployment that the link commands and the
//! drills share: draining a link on every node of its source site, the nodes' health and the
//! topology version each has applied (admin API), and the records a link has not shipped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_node::unshipped::UnshippedReport;
use ferry_topology::Topology;
use ferry_xdr::stats::LinkSnapshot;
use reqwest::header::HeaderValue;

use crate::client::{self, ClientError};

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// Why an operation did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error("no site '{0}' in the topology")]
    UnknownSite(String),
    #[error("{action} did not succeed on node {node}: {answer}")]
    Refused { action: String, node: String, answer: String },
    #[error("{from} -> {to} not drained after {timeout:?} on {nodes}")]
    NotDrained { from: String, to: String, timeout: Duration, nodes: String },
    #[error("topology version {version} not applied after {timeout:?} on {nodes}")]
    NotApplied { version: u64, timeout: Duration, nodes: String },
    #[error("node {node} ({addr}): {message}")]
    Admin { node: String, addr: SocketAddr, message: String },
}

/// A node of a site: id, client (info) address, admin address.
#[derive(Debug, Clone)]
pub struct SiteNode {
    pub id: String,
    pub client: SocketAddr,
    pub admin: SocketAddr,
}

/// The nodes of `site`.
pub fn site_nodes(topology: &Topology, site: &str) -> Result<Vec<SiteNode>, OpsError> {
    let site = topology.site(site).ok_or_else(|| OpsError::UnknownSite(site.to_owned()))?;
    Ok(site
        .nodes
        .iter()
        .map(|n| SiteNode { id: n.id.to_string(), client: n.client.addr(), admin: n.admin.addr() })
        .collect())
}

/// The stats of the link `from -> to` on every node of `from`; a node that does not answer
/// gives its error.
pub async fn link_stats(
    topology: &Topology,
    from: &str,
    to: &str,
) -> Result<Vec<(String, Result<LinkSnapshot, ClientError>)>, OpsError> {
    let mut answers = Vec::new();
    for node in site_nodes(topology, from)? {
        answers.push((node.id, client::link_stats(node.client, to).await));
    }
    Ok(answers)
}

/// Asks every node of `site` for one info name; a node that cannot be reached answers with
/// the error, as an info error.
pub async fn ask_site(
    topology: &Topology,
    site: &str,
    name: &str,
) -> Result<Vec<(String, String)>, OpsError> {
    let mut answers = Vec::new();
    for node in site_nodes(topology, site)? {
        let answer =
            client::ask(node.client, name).await.unwrap_or_else(|e| format!("ERROR:1:{e}"));
        answers.push((node.id, answer));
    }
    Ok(answers)
}

/// Runs the link control `action` (a rewind from `from_ms`) on the link `from -> to` at every
/// node of `from`, through the nodes' admin APIs (an `operator` credential at least); each
/// node's answer: `ok`, or why not.
pub async fn control_link(
    http: &reqwest::Client,
    topology: &Topology,
    (from, to): (&str, &str),
    action: &str,
    from_ms: Option<u64>,
) -> Result<Vec<(String, String)>, OpsError> {
    let mut path = format!("/v1/xdr/links/{to}/{action}");
    if let Some(ms) = from_ms {
        path.push_str(&format!("?from_ms={ms}"));
    }
    let mut answers = Vec::new();
    for node in site_nodes(topology, from)? {
        let answer = match admin_request(http, &node, reqwest::Method::POST, &path).await {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        };
        answers.push((node.id, answer));
    }
    Ok(answers)
}

/// [`control_link`] that fails with the first node that does not answer `ok`.
async fn link_action(
    http: &reqwest::Client,
    topology: &Topology,
    from: &str,
    to: &str,
    action: &str,
) -> Result<(), OpsError> {
    let answers = control_link(http, topology, (from, to), action, None).await?;
    match answers.into_iter().find(|(_, answer)| answer != "ok") {
        Some((node, answer)) => Err(OpsError::Refused { action: action.to_owned(), node, answer }),
        None => Ok(()),
    }
}

/// Ships everything logged so far on the link `from -> to` (resuming it if paused) and waits
/// until every node of `from` has it acknowledged, for at most `timeout`.
pub async fn drain_link(
    http: &reqwest::Client,
    topology: &Topology,
    from: &str,
    to: &str,
    timeout: Duration,
) -> Result<(), OpsError> {
    // Later, a node that does not answer counts as not drained (0 drains so far); before the
    // drain every node must answer, or its old count could pass for progress.
    let drains = |answers: &[(String, Result<LinkSnapshot, ClientError>)]| -> Vec<u64> {
        answers.iter().map(|(_, stats)| stats.as_ref().map_or(0, |s| s.counters.drains)).collect()
    };
    let answers = link_stats(topology, from, to).await?;
    if let Some((node, Err(error))) = answers.iter().find(|(_, stats)| stats.is_err()) {
        let answer = error.to_string();
        return Err(OpsError::Refused { action: "drain".to_owned(), node: node.clone(), answer });
    }
    let before = drains(&answers);
    link_action(http, topology, from, to, "drain").await?;
    let deadline = Instant::now() + timeout;
    loop {
        let answers = link_stats(topology, from, to).await?;
        let now = drains(&answers);
        let draining: Vec<&str> = answers
            .iter()
            .zip(now.iter().zip(&before))
            .filter(|(_, (now, before))| now <= before)
            .map(|((node, _), _)| node.as_str())
            .collect();
        if draining.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (from, to, nodes) = (from.to_owned(), to.to_owned(), draining.join(", "));
            return Err(OpsError::NotDrained { from, to, timeout, nodes });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An HTTP client for the nodes' admin APIs, presenting `credential` on every request.
pub fn admin_client(credential: Option<&ferry_auth::Token>) -> reqwest::Client {
    admin_client_waiting(credential, ADMIN_TIMEOUT)
}

/// [`admin_client`] whose requests may take up to `timeout`.
pub fn admin_client_waiting(
    credential: Option<&ferry_auth::Token>,
    timeout: Duration,
) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = credential
        && let Ok(mut value) = format!("Bearer {}", token.expose()).parse::<HeaderValue>()
    {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder().timeout(timeout).default_headers(headers).build().unwrap_or_default()
}

/// GET `path` from a node's admin API as JSON.
pub async fn admin_get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    node: &SiteNode,
    path: &str,
) -> Result<T, OpsError> {
    let body = admin_request(http, node, reqwest::Method::GET, path).await?;
    serde_json::from_str(&body).map_err(|e| OpsError::Admin {
        node: node.id.clone(),
        addr: node.admin,
        message: format!("GET {path}: bad answer: {e}"),
    })
}

/// `method path` on a node's admin API: the body of a success, or why not.
async fn admin_request(
    http: &reqwest::Client,
    node: &SiteNode,
    method: reqwest::Method,
    path: &str,
) -> Result<String, OpsError> {
    let failed = |message: String| OpsError::Admin {
        node: node.id.clone(),
        addr: node.admin,
        message: format!("{method} {path}: {message}"),
    };
    let response = http
        .request(method.clone(), format!("http://{}{path}", node.admin))
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        return Err(failed(format!("{status}: {body}")));
    }
    Ok(body)
}

#[derive(Debug, serde::Deserialize)]
struct NodeStatus {
    topology_version: u64,
}

/// Why each node of `sites` that is not healthy is not (`/health`), as `node: reason`.
pub async fn unhealthy(http: &reqwest::Client, topology: &Topology, sites: &[&str]) -> Vec<String> {
    let mut failing = Vec::new();
    for site in sites {
        let nodes = match site_nodes(topology, site) {
            Ok(nodes) => nodes,
            Err(error) => {
                failing.push(error.to_string());
                continue;
            }
        };
        for node in nodes {
            if let Err(error) = admin_get::<serde_json::Value>(http, &node, "/health").await {
                failing.push(error.to_string());
            }
        }
    }
    failing
}

/// Which nodes [`wait_applied`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Every node: one that does not answer has not applied the version.
    Every,
    /// The nodes that answer (after an aborted drill: a node that is gone applies the version
    /// from the topology service when it returns).
    Reachable,
}

/// Waits until every node of `sites` reports topology `version` (or a later one) applied.
pub async fn wait_applied(
    http: &reqwest::Client,
    topology: &Topology,
    sites: &[&str],
    version: u64,
    (waiting, timeout): (Waiting, Duration),
) -> Result<(), OpsError> {
    let deadline = Instant::now() + timeout;
    let mut nodes = Vec::new();
    for site in sites {
        nodes.extend(site_nodes(topology, site)?);
    }
    loop {
        let mut behind = Vec::new();
        for node in &nodes {
            // One slow node must not hold the wait past its deadline.
            let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
            let asked = admin_get::<NodeStatus>(http, node, "/v1/status");
            let behind_here = match tokio::time::timeout(left, asked).await {
                Ok(Ok(status)) => status.topology_version < version,
                Ok(Err(_)) | Err(_) => waiting == Waiting::Every,
            };
            if behind_here {
                behind.push(node.id.clone());
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(OpsError::NotApplied { version, timeout, nodes: behind.join(", ") });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The records the link `from -> to` has not shipped, from every node of `from`.
pub async fn unshipped(
    http: &reqwest::Client,
    topology: &Topology,
    from: &str,
    to: &str,
) -> Result<Vec<UnshippedReport>, OpsError> {
    let mut reports = Vec::new();
    for node in site_nodes(topology, from)? {
        reports.push(admin_get(http, &node, &format!("/v1/xdr/links/{to}/unshipped")).await?);
    }
    Ok(reports)
}

/// A node process of a deployment on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalProcess {
    pub pid: i32,
    /// Stopped by SIGSTOP (frozen), as `/proc/<pid>/stat` says.
    pub frozen: bool,
}

/// The `ferry node run` processes of the nodes of `site` in the deployment kept in
/// `state_root` (each runs with `--dir <state_root>/<node>`), by node id.
pub fn local_processes(
    state_root: &std::path::Path,
    topology: &Topology,
    site: &str,
) -> Result<Vec<(String, LocalProcess)>, OpsError> {
    let root = state_root.canonicalize().unwrap_or_else(|_| state_root.to_path_buf());
    let wanted: Vec<(String, String)> = site_nodes(topology, site)?
        .into_iter()
        .map(|n| (root.join(&n.id).to_string_lossy().into_owned(), n.id))
        .collect();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Ok(found) };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(args) = crate::launcher::node_run_args(pid) else { continue };
        let dir = args.windows(2).find(|w| w[0] == "--dir").map(|w| w[1].clone());
        if let Some((_, id)) = wanted.iter().find(|(path, _)| Some(path) == dir.as_ref()) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The state follows the command name in parentheses: `pid (comm) S …`.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            found.push((id.clone(), LocalProcess { pid, frozen: state == Some("T") }));
        }
    }
    Ok(found)
}

/// Sends `signal` to each process.
pub fn signal(processes: &[(String, LocalProcess)], signal: nix::sys::signal::Signal) {
    for (_, process) in processes {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid), signal);
    }
}
