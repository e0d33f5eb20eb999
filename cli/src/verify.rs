//! Verification that two sites hold the same data, for `ferry verify` and the drills.
//!
//! Every node of both sites summarizes the partitions it masters (count and hash of the
//! versions at or before a LUT watermark, `GET /v1/verify/{ns}` on its admin API); partitions
//! whose summaries differ are listed version by version from both masters and joined by
//! digest, which names each divergent record. While shipping is live the watermark is one both
//! sites have passed — every change older than it is acknowledged on every link between
//! them — so a healthy busy link verifies clean; records changed after it on either side are
//! left out and counted.
//!
//! What counts as the same: equal versions (digest, generation, LUT, tombstone, expiry, set,
//! bins); or a deleted or expired record on one side and none on the other (sites reclaim
//! tombstones and expired records on their own schedules); or deleted or expired on both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_node::verify::{PartitionSummary, VersionSummary};
use ferry_topology::Topology;
use ferry_topology::placement::PARTITIONS;
use serde::{Deserialize, Serialize};

use crate::client;
use crate::ops::{self, SiteNode};

/// How far behind its sample time a live watermark stays: link gauges are published
/// periodically and LUTs follow the log only roughly, so a change logged just before a link
/// reported itself caught up may not count in its gauges yet.
pub const LIVE_SLACK_MS: u64 = 1000;
/// Partitions listed at once from both sites while drilling into differences.
const DRILL_CONCURRENCY: usize = 16;
/// Longest a node may take to answer one verification request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why verification could not be completed (as opposed to finding differences).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("site '{0}' is not in the topology")]
    UnknownSite(String),
    #[error("namespace '{namespace}' is not served by site '{site}'")]
    UnknownNamespace { site: String, namespace: String },
    #[error("sites '{0}' and '{1}' share no namespace")]
    NothingShared(String, String),
    #[error(transparent)]
    Node(#[from] crate::ops::OpsError),
    #[error("site '{site}': no node answered for partitions {partitions} of '{namespace}'")]
    Unowned { site: String, namespace: String, partitions: String },
    #[error("link {from} -> {to}: cannot tell how far it shipped: {source}")]
    LinkStats { from: String, to: String, source: Box<client::ClientError> },
    #[error("verification task failed: {0}")]
    Task(String),
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct Request {
    pub from: String,
    pub to: String,
    /// Empty: every namespace both sites serve.
    pub namespaces: Vec<String>,
    pub watermark: Watermark,
    /// What to present to the nodes' admin APIs.
    pub credential: Option<ferry_auth::Token>,
}

/// Which versions count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// Versions at or before a LUT every link between the two sites has shipped.
    Live,
    /// Every version (for quiesced sites: fenced and drained, or with no links).
    All,
    /// Versions with LUT ≤ this many ms since the Unix epoch.
    At(u64),
}

/// One version in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub generation: u16,
    pub last_update_ms: u64,
    pub origin_site: u8,
    pub tombstone: bool,
}

impl From<&VersionSummary> for Version {
    fn from(v: &VersionSummary) -> Version {
        Version {
            generation: v.generation,
            last_update_ms: v.last_update_ms,
            origin_site: v.origin_site,
            tombstone: v.tombstone,
        }
    }
}

/// A record only one site holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneSided {
    pub namespace: String,
    pub set: String,
    pub digest: String,
    pub partition: u16,
    pub version: Version,
}

/// A record the two sites hold in different versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Different {
    pub namespace: String,
    pub set: String,
    pub digest: String,
    pub partition: u16,
    pub source: Version,
    pub destination: Version,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub namespaces: Vec<String>,
    /// True when no record differs among the versions compared.
    pub identical: bool,
    /// Versions at the source compared (tombstones included).
    pub records: u64,
    /// LUT bound of the comparison in ms since the Unix epoch; `None`: every version.
    pub watermark_ms: Option<u64>,
    /// Records left out because a site changed them after the watermark.
    pub newer_than_watermark: u64,
    pub partitions_compared: u64,
    /// Partitions holding at least one divergent record.
    pub partitions_differing: u64,
    pub missing_at_destination: Vec<OneSided>,
    pub missing_at_source: Vec<OneSided>,
    pub different: Vec<Different>,
    pub elapsed_ms: u64,
}

/// Where verification stands, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nodes that answered with their partition summaries, of all.
    Summaries { done: usize, total: usize },
    /// Partitions whose summaries differ compared record by record, of all such.
    Partitions { done: usize, total: usize },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Compares two sites of `topology` as `request` says.
pub async fn verify(
    topology: &Topology,
    request: &Request,
    mut progress: impl FnMut(Progress),
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let namespaces = shared_namespaces(topology, request)?;
    let watermark_ms = match request.watermark {
        Watermark::All => None,
        Watermark::At(ms) => Some(ms),
        Watermark::Live => Some(live_watermark(topology, &request.from, &request.to).await?),
    };
    let until = watermark_ms.unwrap_or(u64::MAX);
    let http = ops::admin_client_waiting(request.credential.as_ref(), REQUEST_TIMEOUT);
    let mut report = Report {
        from: request.from.clone(),
        to: request.to.clone(),
        namespaces: namespaces.clone(),
        identical: true,
        records: 0,
        watermark_ms,
        newer_than_watermark: 0,
        partitions_compared: 0,
        partitions_differing: 0,
        missing_at_destination: Vec::new(),
        missing_at_source: Vec::new(),
        different: Vec::new(),
        elapsed_ms: 0,
    };
    let sites = [request.from.as_str(), request.to.as_str()];
    let total = namespaces.len() * sites.iter().map(|s| nodes_of(topology, s).len()).sum::<usize>();
    let mut answered = 0;
    for ns in &namespaces {
        let mut owners = Vec::with_capacity(2);
        for site in sites {
            owners.push(
                site_summaries(&http, topology, site, ns, until, |n| {
                    progress(Progress::Summaries { done: answered + n, total });
                })
                .await?,
            );
            answered += nodes_of(topology, site).len();
        }
        let (source, destination) = (&owners[0], &owners[1]);
        report.partitions_compared += u64::from(PARTITIONS);
        report.records += source.iter().map(|o| o.summary.records).sum::<u64>();
        let mut differing = Vec::new();
        for (s, d) in source.iter().zip(destination) {
            if (s.summary.records, s.summary.hash) == (d.summary.records, d.summary.hash) {
                report.newer_than_watermark += s.summary.newer.max(d.summary.newer);
            } else {
                differing.push((s.clone(), d.clone()));
            }
        }
        let total = differing.len();
        let mut done = 0;
        for chunk in differing.chunks(DRILL_CONCURRENCY) {
            let mut listings = tokio::task::JoinSet::new();
            for (s, d) in chunk.iter().cloned() {
                let (http, ns) = (http.clone(), ns.clone());
                listings.spawn(async move {
                    let partition = s.summary.partition;
                    let source = list_partition(&http, &s, &ns).await?;
                    let destination = list_partition(&http, &d, &ns).await?;
                    Ok::<_, VerifyError>(compare_partition(
                        &ns,
                        partition,
                        &source,
                        &destination,
                        until,
                    ))
                });
            }
            while let Some(joined) = listings.join_next().await {
                let diff = joined.map_err(|e| VerifyError::Task(e.to_string()))??;
                report.newer_than_watermark += diff.newer;
                if !diff.is_empty() {
                    report.partitions_differing += 1;
                }
                report.missing_at_destination.extend(diff.missing_at_destination);
                report.missing_at_source.extend(diff.missing_at_source);
                report.different.extend(diff.different);
                done += 1;
                progress(Progress::Partitions { done, total });
            }
        }
    }
    let key = |ns: &str, p: u16, digest: &str| (ns.to_owned(), p, digest.to_owned());
    report.missing_at_destination.sort_by_key(|r| key(&r.namespace, r.partition, &r.digest));
    report.missing_at_source.sort_by_key(|r| key(&r.namespace, r.partition, &r.digest));
    report.different.sort_by_key(|r| key(&r.namespace, r.partition, &r.digest));
    report.identical = report.partitions_differing == 0;
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// The namespaces to compare: the request's, each served at both sites, or every shared one.
fn shared_namespaces(topology: &Topology, request: &Request) -> Result<Vec<String>, VerifyError> {
    let served = |site: &str| -> Result<Vec<String>, VerifyError> {
        let def = topology.site(site).ok_or_else(|| VerifyError::UnknownSite(site.to_owned()))?;
        Ok(def.namespaces.iter().map(|ns| ns.name.to_string()).collect())
    };
    let (from, to) = (served(&request.from)?, served(&request.to)?);
    if request.namespaces.is_empty() {
        let shared: Vec<String> = from.into_iter().filter(|ns| to.contains(ns)).collect();
        if shared.is_empty() {
            return Err(VerifyError::NothingShared(request.from.clone(), request.to.clone()));
        }
        return Ok(shared);
    }
    for ns in &request.namespaces {
        for (site, served) in [(&request.from, &from), (&request.to, &to)] {
            if !served.contains(ns) {
                let (site, namespace) = (site.clone(), ns.clone());
                return Err(VerifyError::UnknownNamespace { site, namespace });
            }
        }
    }
    Ok(request.namespaces.clone())
}

/// The live watermark between two sites: for every enabled link between them and every node
/// shipping on it, the node's sample time less its lag (every change older than that is
/// acknowledged), less [`LIVE_SLACK_MS`]; the smallest. With no enabled link: now.
pub async fn live_watermark(topology: &Topology, a: &str, b: &str) -> Result<u64, VerifyError> {
    let mut watermark = now_ms().saturating_sub(LIVE_SLACK_MS);
    let between = |l: &&ferry_topology::model::Link| {
        l.enabled && ((l.from == *a && l.to == *b) || (l.from == *b && l.to == *a))
    };
    for link in topology.links.iter().filter(between) {
        let Some(site) = topology.site(link.from.as_str()) else { continue };
        for node in &site.nodes {
            let sampled = now_ms();
            let stats = client::link_stats(node.client.addr(), link.to.as_str()).await.map_err(
                |source| VerifyError::LinkStats {
                    from: link.from.to_string(),
                    to: link.to.to_string(),
                    source: Box::new(source),
                },
            )?;
            let passed = sampled.saturating_sub(stats.counters.lag).saturating_sub(LIVE_SLACK_MS);
            watermark = watermark.min(passed);
        }
    }
    Ok(watermark)
}

/// The partition summary of one partition, with the node that masters it.
#[derive(Debug, Clone)]
struct Owner {
    node: SiteNode,
    summary: PartitionSummary,
}

#[derive(Debug, Deserialize)]
struct NodeSummaries {
    partitions: Vec<PartitionSummary>,
}

#[derive(Debug, Deserialize)]
struct PartitionListing {
    versions: Vec<VersionSummary>,
}

/// The nodes of `site` (the request checked that it exists).
fn nodes_of(topology: &Topology, site: &str) -> Vec<SiteNode> {
    ops::site_nodes(topology, site).unwrap_or_default()
}

/// Every partition of `ns` at `site`, summarized by its master; `answered(n)` after each of
/// the site's nodes answers.
async fn site_summaries(
    http: &reqwest::Client,
    topology: &Topology,
    site: &str,
    ns: &str,
    until_ms: u64,
    mut answered: impl FnMut(usize),
) -> Result<Vec<Owner>, VerifyError> {
    let mut requests = tokio::task::JoinSet::new();
    for node in nodes_of(topology, site) {
        let http = http.clone();
        let path = format!("/v1/verify/{ns}?until_ms={until_ms}");
        requests.spawn(async move {
            let answer: NodeSummaries = ops::admin_get(&http, &node, &path).await?;
            Ok::<_, VerifyError>((node, answer.partitions))
        });
    }
    let mut owners: Vec<Option<Owner>> = vec![None; usize::from(PARTITIONS)];
    let mut nodes = 0;
    while let Some(joined) = requests.join_next().await {
        let (node, partitions) = joined.map_err(|e| VerifyError::Task(e.to_string()))??;
        for summary in partitions {
            if let Some(slot) = owners.get_mut(usize::from(summary.partition)) {
                *slot = Some(Owner { node: node.clone(), summary });
            }
        }
        nodes += 1;
        answered(nodes);
    }
    let unowned: Vec<String> = (0..PARTITIONS)
        .filter(|&p| owners[usize::from(p)].is_none())
        .map(|p| p.to_string())
        .collect();
    if !unowned.is_empty() {
        let shown = if unowned.len() > 10 {
            format!("{}, … ({} in all)", unowned[..10].join(", "), unowned.len())
        } else {
            unowned.join(", ")
        };
        return Err(VerifyError::Unowned {
            site: site.to_owned(),
            namespace: ns.to_owned(),
            partitions: shown,
        });
    }
    Ok(owners.into_iter().flatten().collect())
}

/// Every version of one partition of `ns` at `site`, from the node that masters it there.
pub async fn partition_versions(
    http: &reqwest::Client,
    topology: &Topology,
    site: &str,
    ns: &str,
    partition: u16,
) -> Result<Vec<VersionSummary>, VerifyError> {
    let unknown =
        || VerifyError::UnknownNamespace { site: site.to_owned(), namespace: ns.to_owned() };
    let map = ferry_topology::placement::PartitionMap::for_namespace(topology, site, ns)
        .map_err(|_| unknown())?;
    let master = map.master(partition);
    let node = nodes_of(topology, site)
        .into_iter()
        .find(|n| n.id == master.as_str())
        .ok_or_else(unknown)?;
    let owner =
        Owner { node, summary: PartitionSummary { partition, records: 0, newer: 0, hash: 0 } };
    list_partition(http, &owner, ns).await
}

/// Every version of one partition at its master.
async fn list_partition(
    http: &reqwest::Client,
    owner: &Owner,
    ns: &str,
) -> Result<Vec<VersionSummary>, VerifyError> {
    let path = format!("/v1/verify/{ns}/{}", owner.summary.partition);
    let listing: PartitionListing = ops::admin_get(http, &owner.node, &path).await?;
    Ok(listing.versions)
}

/// The divergent records of one partition.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PartitionDiff {
    pub missing_at_destination: Vec<OneSided>,
    pub missing_at_source: Vec<OneSided>,
    pub different: Vec<Different>,
    /// Records left out: one site holds a version newer than the watermark.
    pub newer: u64,
}

impl PartitionDiff {
    /// Whether no record of the partition diverges.
    pub fn is_empty(&self) -> bool {
        self.missing_at_destination.is_empty()
            && self.missing_at_source.is_empty()
            && self.different.is_empty()
    }
}

/// Joins the versions two sites hold of one partition (each in digest order) by digest and
/// names every record that diverges, leaving out records either site changed after
/// `until_ms`.
pub fn compare_partition(
    ns: &str,
    partition: u16,
    source: &[VersionSummary],
    destination: &[VersionSummary],
    until_ms: u64,
) -> PartitionDiff {
    let mut by_digest: BTreeMap<&str, (Option<&VersionSummary>, Option<&VersionSummary>)> =
        BTreeMap::new();
    for v in source {
        by_digest.entry(&v.digest).or_default().0 = Some(v);
    }
    for v in destination {
        by_digest.entry(&v.digest).or_default().1 = Some(v);
    }
    let mut diff = PartitionDiff::default();
    let one_sided = |v: &VersionSummary| OneSided {
        namespace: ns.to_owned(),
        set: v.set.clone(),
        digest: v.digest.clone(),
        partition,
        version: Version::from(v),
    };
    for (s, d) in by_digest.into_values() {
        if s.iter().chain(&d).any(|v| v.last_update_ms > until_ms) {
            diff.newer += 1;
            continue;
        }
        let gone = |v: &VersionSummary| v.tombstone || v.expired;
        match (s, d) {
            (Some(s), None) if !gone(s) => diff.missing_at_destination.push(one_sided(s)),
            (None, Some(d)) if !gone(d) => diff.missing_at_source.push(one_sided(d)),
            (Some(s), Some(d)) if s.hash != d.hash && !(gone(s) && gone(d)) => {
                diff.different.push(Different {
                    namespace: ns.to_owned(),
                    set: s.set.clone(),
                    digest: s.digest.clone(),
                    partition,
                    source: Version::from(s),
                    destination: Version::from(d),
                });
            }
            _ => {}
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(digest: u8, generation: u16, lut: u64, tombstone: bool) -> VersionSummary {
        VersionSummary {
            digest: format!("{digest:040x}"),
            set: "s".to_owned(),
            generation,
            last_update_ms: lut,
            origin_site: 1,
            tombstone,
            expired: false,
            hash: u64::from(digest) << 32 | u64::from(generation) << 16 | u64::from(tombstone),
        }
    }

    #[test]
    fn every_kind_of_divergence_is_named_and_deletions_match_absence() {
        let source = [
            version(1, 1, 10, false),                                     // same on both
            version(2, 1, 10, false), // missing at the destination
            version(3, 2, 20, false), // different
            version(4, 2, 20, true),  // deleted here, never arrived there: the same
            version(6, 3, 30, true),  // deleted on both, different tombstones: the same
            VersionSummary { expired: true, ..version(8, 1, 10, false) }, // expired, reclaimed there
        ];
        let destination = [
            version(1, 1, 10, false),
            version(3, 1, 10, false),
            version(5, 1, 10, false), // missing at the source
            version(6, 4, 31, true),
            version(7, 1, 10, true),
        ];
        let diff = compare_partition("test", 9, &source, &destination, 100);
        let digests = |list: &[OneSided]| list.iter().map(|r| r.digest.clone()).collect::<Vec<_>>();
        assert_eq!(digests(&diff.missing_at_destination), [format!("{:040x}", 2)]);
        assert_eq!(digests(&diff.missing_at_source), [format!("{:040x}", 5)]);
        assert_eq!(diff.different.len(), 1);
        let different = &diff.different[0];
        assert_eq!((different.source.generation, different.destination.generation), (2, 1));
        assert_eq!((different.partition, different.namespace.as_str()), (9, "test"));
        assert_eq!(diff.newer, 0);
    }

    #[test]
    fn records_either_site_changed_after_the_watermark_are_left_out() {
        let source = [version(1, 2, 500, false), version(2, 1, 10, false)];
        let destination = [version(1, 1, 10, false), version(3, 1, 600, false)];
        let diff = compare_partition("test", 0, &source, &destination, 100);
        assert_eq!(diff.newer, 2, "record 1 changed at the source, record 3 at the destination");
        assert_eq!(diff.missing_at_destination.len(), 1, "record 2 is old and missing");
        assert!(diff.different.is_empty() && diff.missing_at_source.is_empty());
    }
}
