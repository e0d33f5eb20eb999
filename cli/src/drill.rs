//! The drills (DESIGN §9): switchover, failover and failback of a running deployment, each a
//! sequence of timed steps that ends in a report.
//!
//! Every change of roles, fences and links is a new topology version applied through the
//! topology service (compare-and-set on the version the drill read, so a concurrent operator
//! change stops the drill instead of being overwritten), and a step waits until every node it
//! concerns reports that version applied before the next step begins. A drill that fails after
//! it fenced client writes restores the version it started from; an interrupted one is undone
//! the same way by [`Drills::undo`]. Each version is whole and valid, so the topology is
//! consistent whenever a drill stops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_topology::Topology;
use ferry_topology::edit::{EditError, TopologyEdit};
use ferry_topology::model::{Role, WriteFence};
use ferry_topology::service::{ClientError as ServiceError, TopologyClient};
use ferry_topology::store::{Applied, ApplyRequest, Version};
use ferry_xdr::stats::{Conflict, LinkSnapshot};
use serde::{Deserialize, Serialize};

use crate::ops::{self, OpsError, Waiting};
use crate::verify::{self, VerifyError, Watermark};

/// Why a drill stopped without completing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrillError {
    #[error("topology service: {0}")]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The drill does not start: the deployment is not in a state it can run from.
    #[error("{0}")]
    Refused(String),
    /// A step failed after the drill changed something; what it changed was undone.
    #[error("{step} failed: {reason}; {undone}")]
    Aborted { step: String, reason: String, undone: String },
}

/// One step of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub ms: u64,
    /// What the step found or did, in a few words.
    pub detail: String,
}

/// The report of `ferry drill switchover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchoverReport {
    pub drill: String,
    pub from: String,
    pub to: String,
    /// Records acknowledged at `from` that `to` did not hold when roles swapped.
    pub rpo_records: u64,
    /// How long client writes were refused: from the fence until the new active took writes.
    pub rto_ms: u64,
    pub verified: bool,
    pub records_verified: u64,
    pub topology_version: i64,
    pub steps: Vec<Step>,
}

/// The records of one partition a lost site had acknowledged and not shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostPartition {
    pub namespace: String,
    pub partition: u16,
    pub count: u64,
    pub lut_min: u64,
    pub lut_max: u64,
    pub digests: Vec<String>,
}

/// The report of `ferry drill failover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub drill: String,
    pub lost: String,
    pub promoted: String,
    /// Records the lost site acknowledged to clients and did not ship. Exact when
    /// `rpo_exact`; otherwise an estimate from the link's last reported queue (`rpo_note`).
    pub rpo_records: u64,
    pub rpo_exact: bool,
    /// Why the RPO is not exact, and what the estimate counts; empty when it is exact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rpo_note: String,
    /// Per partition: count, LUT range and digests (empty when the RPO is an estimate).
    pub lost_writes: Vec<LostPartition>,
    /// From the start of the drill until the promoted site took client writes.
    pub rto_ms: u64,
    pub topology_version: i64,
    pub steps: Vec<Step>,
}

/// The report of `ferry drill failback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailbackReport {
    pub drill: String,
    /// The site that returns to active.
    pub to: String,
    /// The site that was active meanwhile.
    pub from: String,
    /// What the returning site had not shipped when it was lost, now shipped.
    pub lost_writes_shipped: u64,
    pub lost_writes: Vec<LostPartition>,
    /// Records each direction shipped while the sites reconciled.
    pub shipped: BTreeMap<String, u64>,
    /// Versions that lost their conflict at either site while they reconciled.
    pub conflicts: Vec<Conflict>,
    pub verified: bool,
    pub records_verified: u64,
    pub rto_ms: u64,
    pub topology_version: i64,
    pub steps: Vec<Step>,
}

/// Where a drill stands, shared with whoever may interrupt it.
#[derive(Debug, Default)]
struct Journal {
    steps: Vec<Step>,
    /// The step running now.
    current: Option<String>,
    /// What to restore if the drill stops now, while client writes are fenced for it.
    restore: Option<Restore>,
    /// Node processes the drill froze and has not yet handed over to a promoted site: resumed
    /// if the drill stops before the promotion is published.
    frozen: Vec<(String, ops::LocalProcess)>,
}

/// The topology a stopped drill puts back.
#[derive(Debug, Clone)]
struct Restore {
    /// The content the drill published (or was publishing) to fence writes: restore only if
    /// it is still the current version, never over someone else's change.
    fenced: String,
    /// The content the drill started from.
    original: String,
}

/// What the drills need: the topology service, the nodes' admin APIs, where the deployment
/// keeps its topology file.
#[derive(Debug, Clone)]
pub struct Drills {
    service: TopologyClient,
    http: reqwest::Client,
    /// What `service` and `http` present, for the verifications a drill runs.
    credential: Option<ferry_auth::Token>,
    /// The deployment's `topology.toml`, rewritten with every version the drill applies (so
    /// `ferry status`, the link commands and restarted nodes see it).
    topology_file: Option<PathBuf>,
    /// Longest wait of any one step.
    pub timeout: Duration,
    /// Run even when the deployment is unhealthy.
    pub force: bool,
    /// The state directory of a deployment on this machine, whose node processes a failover
    /// may freeze and a failback resumes.
    pub local_dir: Option<PathBuf>,
    journal: Arc<Mutex<Journal>>,
    on_step: fn(&Step),
}

/// A version the drill applied or read.
#[derive(Debug, Clone)]
struct Current {
    version: i64,
    content: String,
    topology: Topology,
}

impl From<Version> for Current {
    fn from(v: Version) -> Current {
        Current { version: v.version, content: v.content, topology: v.topology }
    }
}

/// The longest a drill waits for a site it may have lost, or for nodes to show they follow the
/// topology service, unless `--timeout` is shorter.
const SHORT_WAIT: Duration = Duration::from_secs(10);

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn version_number(version: i64) -> u64 {
    u64::try_from(version).unwrap_or(0)
}

impl Drills {
    /// Drills through the topology service at `service_url`, presenting `credential` to it and
    /// to the nodes; `on_step` hears of each step as it completes.
    pub fn new(
        service_url: &str,
        credential: Option<ferry_auth::Token>,
        topology_file: Option<PathBuf>,
        on_step: fn(&Step),
    ) -> Drills {
        Drills {
            service: TopologyClient::new(service_url, credential.clone()),
            http: ops::admin_client(credential.as_ref()),
            credential,
            topology_file,
            timeout: Duration::from_secs(120),
            force: false,
            local_dir: None,
            journal: Arc::default(),
            on_step,
        }
    }

    /// Reports `event` to the audit trail through the topology service. A failure is logged,
    /// never fatal: the drill's own report is saved either way.
    pub async fn audit(&self, event: &ferry_topology::audit::AuditEvent) {
        if let Err(error) = self.service.record(event).await {
            tracing::warn!(%error, action = %event.action, "audit event not recorded");
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn steps(&self) -> Vec<Step> {
        self.journal().steps.clone()
    }

    /// Runs one step, timing it; `work` returns the step's result and its detail.
    async fn step<T>(
        &self,
        name: &str,
        work: impl Future<Output = Result<(T, String), DrillError>>,
    ) -> Result<T, DrillError> {
        self.journal().current = Some(name.to_owned());
        let started = Instant::now();
        let outcome = work.await;
        let ms = ms_since(started);
        match outcome {
            Ok((value, detail)) => {
                let step = Step { name: name.to_owned(), ms, detail };
                (self.on_step)(&step);
                let mut journal = self.journal();
                journal.steps.push(step);
                journal.current = None;
                Ok(value)
            }
            Err(error) => Err(self.abort(name, error.to_string()).await),
        }
    }

    /// Undoes what the drill changed after `step` failed.
    async fn abort(&self, step: &str, reason: String) -> DrillError {
        let undone = self.unwind().await.unwrap_or_else(|| "nothing to undo".to_owned());
        DrillError::Aborted { step: step.to_owned(), reason, undone }
    }

    /// Resumes processes the drill froze and restores the topology it fenced; says what it did,
    /// `None` when there was nothing to undo.
    async fn unwind(&self) -> Option<String> {
        let mut done = Vec::new();
        let frozen = std::mem::take(&mut self.journal().frozen);
        if !frozen.is_empty() {
            ops::signal(&frozen, nix::sys::signal::Signal::SIGCONT);
            done.push(format!("resumed the {} node processes it froze", frozen.len()));
        }
        match self.restore().await {
            Ok(Some(restored)) => done.push(restored),
            Ok(None) => {}
            Err(error) => done.push(format!("could not restore the topology: {error}")),
        }
        (!done.is_empty()).then(|| done.join("; "))
    }

    /// Publishes the content the drill started from if the drill's fence is still the current
    /// version; says what it did.
    async fn restore(&self) -> Result<Option<String>, DrillError> {
        let Some(restore) = self.journal().restore.clone() else { return Ok(None) };
        let head = self.current().await?;
        if head.content != restore.fenced {
            self.journal().restore = None;
            return Ok(Some(format!(
                "not restoring: the topology changed since the drill fenced writes (now version \
                 {}); check `ferry status`",
                head.version
            )));
        }
        let restored =
            self.publish(&head, restore.original, "restore after an interrupted drill").await?;
        self.journal().restore = None;
        let sites: Vec<String> =
            restored.topology.sites.iter().map(|s| s.name.to_string()).collect();
        let sites: Vec<&str> = sites.iter().map(String::as_str).collect();
        // A node that is gone applies it from the service when it returns.
        let waiting = (Waiting::Reachable, self.timeout);
        let number = version_number(restored.version);
        let applied = ops::wait_applied(&self.http, &restored.topology, &sites, number, waiting);
        let behind = match applied.await {
            Ok(()) => String::new(),
            Err(error) => format!(" ({error})"),
        };
        Ok(Some(format!(
            "restored the topology as it was before the drill (version {}){behind}",
            restored.version
        )))
    }

    /// After an interrupt: undoes what the drill changed, and says where things stand.
    pub async fn undo(&self) -> String {
        let step = self.journal().current.clone().unwrap_or_else(|| "start".to_owned());
        match self.unwind().await {
            Some(done) => {
                format!("interrupted during {step}: {done}; run the drill again to retry")
            }
            None => match self.service.current().await {
                Ok(v) => format!(
                    "interrupted during {step}: topology version {} is in effect and \
                     consistent; nothing to undo (run the drill again to continue)",
                    v.version
                ),
                Err(error) => format!("interrupted during {step}; topology service: {error}"),
            },
        }
    }

    /// Stores `content` as the version after `parent` and rewrites the deployment's file.
    async fn publish(
        &self,
        parent: &Current,
        content: String,
        comment: &str,
    ) -> Result<Current, DrillError> {
        let topology = ferry_topology::parse_topology("drill.toml", &content)
            .map_err(EditError::Invalid)?
            .topology;
        let request = ApplyRequest {
            source: "ferry drill".to_owned(),
            content: content.clone(),
            author: "ferry drill".to_owned(),
            comment: comment.to_owned(),
            expected_parent: Some(parent.version),
        };
        let version = match self.service.apply(&request).await? {
            Applied::Created { version } | Applied::Unchanged { version } => version,
        };
        if let Some(file) = &self.topology_file {
            let temporary = file.with_extension("toml.tmp");
            let written = std::fs::write(&temporary, &content)
                .and_then(|()| std::fs::rename(&temporary, file));
            if let Err(error) = written {
                tracing::warn!(%error, file = %file.display(), "could not rewrite the topology file");
            }
        }
        Ok(Current { version, content, topology })
    }

    /// `parent`'s content with `edit` made, validated.
    fn edited(
        parent: &Current,
        edit: impl FnOnce(&mut TopologyEdit) -> Result<(), EditError>,
    ) -> Result<String, DrillError> {
        let mut document = TopologyEdit::new(&parent.content)?;
        edit(&mut document)?;
        Ok(document.finish("drill.toml")?.0)
    }

    /// Waits until every node of `sites` has applied `version`.
    async fn applied(&self, version: &Current, sites: &[&str]) -> Result<(), DrillError> {
        let number = version_number(version.version);
        let waiting = (Waiting::Every, self.timeout);
        Ok(ops::wait_applied(&self.http, &version.topology, sites, number, waiting).await?)
    }

    /// Applies `edit` to `parent` as a new version and waits until every node of `sites` has
    /// applied it.
    async fn change(
        &self,
        parent: &Current,
        edit: impl FnOnce(&mut TopologyEdit) -> Result<(), EditError>,
        comment: &str,
        sites: &[&str],
    ) -> Result<Current, DrillError> {
        let next = self.publish(parent, Self::edited(parent, edit)?, comment).await?;
        self.applied(&next, sites).await?;
        Ok(next)
    }

    async fn current(&self) -> Result<Current, DrillError> {
        Ok(Current::from(self.service.current().await?))
    }

    /// Refuses to start on an unhealthy deployment unless forced.
    async fn preflight(
        &self,
        topology: &Topology,
        sites: &[&str],
        version: i64,
    ) -> Result<((), String), DrillError> {
        if self.force {
            return Ok(((), "skipped (--force)".to_owned()));
        }
        let failing = ops::unhealthy(&self.http, topology, sites).await;
        if !failing.is_empty() {
            return Err(DrillError::Refused(format!(
                "the deployment is not healthy (pass --force to drill anyway): {}",
                failing.join("; ")
            )));
        }
        let waiting = (Waiting::Every, self.timeout.min(SHORT_WAIT));
        ops::wait_applied(&self.http, topology, sites, version_number(version), waiting)
            .await
            .map_err(|error| {
                DrillError::Refused(format!(
                    "{error}: the nodes must follow the topology service (`ferry up` starts them so)"
                ))
            })?;
        Ok(((), format!("{} healthy, on topology version {version}", sites.join(" and "))))
    }

    /// `ferry drill switchover --to SITE`: fence client writes at the active site, drain every
    /// link between the two, verify, swap roles and link directions, lift the fence at the new
    /// active site. RPO 0, proven by the verification.
    pub async fn switchover(&self, to: &str) -> Result<SwitchoverReport, DrillError> {
        let start = self.current().await?;
        let from = active_source(&start.topology, to)?;
        let sites = [from.as_str(), to];
        self.step("preflight", async {
            let ((), detail) = self.preflight(&start.topology, &sites, start.version).await?;
            let links = healthy_link(&start.topology, &from, to).await?;
            Ok(((), format!("{detail}; {links}")))
        })
        .await?;
        let outcome = self.switch_roles(start, &from, to).await?;
        Ok(SwitchoverReport {
            drill: "switchover".to_owned(),
            from: from.clone(),
            to: to.to_owned(),
            // The verification found the sites identical with writes fenced and every link
            // drained: nothing acknowledged at `from` is missing at `to`.
            rpo_records: 0,
            rto_ms: outcome.rto_ms,
            verified: true,
            records_verified: outcome.records_verified,
            topology_version: outcome.version,
            steps: self.steps(),
        })
    }

    /// The heart of switchover and failback: fence `from`, drain, verify, swap, confirm.
    async fn switch_roles(
        &self,
        start: Current,
        from: &str,
        to: &str,
    ) -> Result<Switched, DrillError> {
        let sites = [from, to];
        // Client writes are refused from the moment the fence is published.
        let fenced_at = Instant::now();
        let fenced = self
            .step("fence", async {
                let content = Self::edited(&start, |e| {
                    e.set_fence(from, Some(WriteFence::ClientWrites)).map(drop)
                })?;
                // Armed before publishing: a publish whose answer is lost may still have landed.
                self.journal().restore =
                    Some(Restore { fenced: content.clone(), original: start.content.clone() });
                let comment = format!("drill: fence client writes at {from}");
                let fenced = self.publish(&start, content, &comment).await?;
                self.applied(&fenced, &sites).await?;
                let detail =
                    format!("client writes refused at {from} (version {})", fenced.version);
                Ok((fenced, detail))
            })
            .await?;
        self.step("drain", async {
            let mut drained = Vec::new();
            for link in fenced.topology.links.iter().filter(|l| l.enabled && between(l, from, to)) {
                ops::drain_link(
                    &self.http,
                    &fenced.topology,
                    link.from.as_str(),
                    link.to.as_str(),
                    self.timeout,
                )
                .await?;
                drained.push(format!("{} -> {}", link.from, link.to));
            }
            Ok(((), format!("lag 0 on {}", drained.join(", "))))
        })
        .await?;
        let verification = self
            .step("verify", async {
                let request = verify::Request {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    namespaces: Vec::new(),
                    watermark: Watermark::All,
                    credential: self.credential.clone(),
                };
                let verifying = verify::verify(&fenced.topology, &request, |_| {});
                let report =
                    tokio::time::timeout(self.timeout, verifying).await.map_err(|_| {
                        DrillError::Refused(format!("no verdict within {:?}", self.timeout))
                    })??;
                if !report.identical {
                    return Err(DrillError::Refused(format!(
                        "the sites differ after the drain: {} missing at {to}, {} missing at \
                         {from}, {} different (see `ferry verify --from {from} --to {to}`)",
                        report.missing_at_destination.len(),
                        report.missing_at_source.len(),
                        report.different.len()
                    )));
                }
                let detail =
                    format!("{} records identical in {} ms", report.records, report.elapsed_ms);
                Ok((report, detail))
            })
            .await?;
        let swapped = self
            .step("swap", async {
                let content = Self::edited(&fenced, |e| {
                    e.hand_over(from, to)?
                        .set_link_enabled(from, to, false)?
                        .add_reverse_link(from, to)?
                        .set_link_enabled(to, from, true)
                        .map(drop)
                })?;
                let comment = format!("drill: {to} active, {from} standby");
                let swapped = self.publish(&fenced, content, &comment).await?;
                // Published: from here `to` may acknowledge writes, so nothing may undo it.
                self.journal().restore = None;
                self.applied(&swapped, &sites).await.map_err(|error| {
                    DrillError::Refused(format!(
                        "version {} ({to} active) is published but not yet applied everywhere: \
                         {error}",
                        swapped.version
                    ))
                })?;
                let detail = format!(
                    "{to} active and taking writes, {from} standby; {to} -> {from} enabled (version {})",
                    swapped.version
                );
                Ok((swapped, detail))
            })
            .await?;
        let rto_ms = ms_since(fenced_at);
        self.step("confirm", async {
            wait_link_active(&swapped.topology, to, from, self.timeout).await?;
            Ok(((), format!("{to} -> {from} active on every node")))
        })
        .await?;
        Ok(Switched { version: swapped.version, rto_ms, records_verified: verification.records })
    }

    /// `ferry drill failover --lose SITE`: declare the active site lost, promote the standby
    /// it shipped to, and report what the lost site acknowledged and never shipped; then enable
    /// the reverse link for the later failback. With `freeze`, the lost site's node processes
    /// on this machine are stopped (SIGSTOP) first, as if its region were gone: the RPO is then
    /// an estimate until the failback brings them back, and the reverse link waits for the
    /// failback too (shipping the promoted site's writes into the lost one before its unshipped
    /// writes are listed would hide those it overwrote).
    pub async fn failover(
        &self,
        lost: &str,
        promote: Option<&str>,
        freeze: bool,
    ) -> Result<FailoverReport, DrillError> {
        let started = Instant::now();
        let start = self.current().await?;
        let promoted = match promote {
            Some(site) => linked_site(&start.topology, lost, site)?,
            None => standby_target(&start.topology, lost)?,
        };
        let promoted = promoted.as_str();
        self.step("preflight", async {
            self.preflight(&start.topology, &[promoted], start.version).await
        })
        .await?;
        let (queued, answered) = self
            .step("sample", async {
                let (queued, answered, nodes) = queued_bound(&start.topology, lost, promoted).await;
                let detail = format!(
                    "{answered} of {nodes} nodes of {lost} answered; {queued} changes queued"
                );
                Ok(((queued, answered == nodes), detail))
            })
            .await?;
        if freeze {
            self.step("cut off", async {
                let processes = self.local_processes(&start.topology, lost)?;
                ops::signal(&processes, nix::sys::signal::Signal::SIGSTOP);
                let detail =
                    format!("froze {} node processes of {lost} (SIGSTOP)", processes.len());
                self.journal().frozen = processes;
                Ok(((), detail))
            })
            .await?;
        }
        let promoted_version = self
            .step("promote", async {
                let content = Self::edited(&start, |e| {
                    e.hand_over(lost, promoted)?
                        .set_link_enabled(lost, promoted, false)?
                        .add_reverse_link(lost, promoted)?
                        .set_link_enabled(promoted, lost, false)
                        .map(drop)
                })?;
                let comment = format!("drill: {lost} lost, {promoted} promoted");
                let next = self.publish(&start, content, &comment).await?;
                // Published: the promoted site may take writes now; the frozen stay frozen.
                self.journal().frozen.clear();
                self.applied(&next, &[promoted]).await?;
                let detail = format!(
                    "{promoted} active and taking writes; {lost} standby (version {})",
                    next.version
                );
                Ok((next, detail))
            })
            .await?;
        let rto_ms = ms_since(started);
        let (lost_writes, exact, note) = self
            .step("lost writes", async {
                let (manifest, note) =
                    match self.exact_lost_writes(&promoted_version, lost, promoted, freeze).await {
                        Ok(manifest) => (Some(manifest), String::new()),
                        Err(reason) => (None, reason),
                    };
                let detail = match &manifest {
                    Some(m) => format!(
                        "{} records, exact (from {lost}'s digest logs)",
                        m.iter().map(|p| p.count).sum::<u64>()
                    ),
                    None => format!("{note}; estimated from the link's last report"),
                };
                let exact = manifest.is_some();
                Ok(((manifest.unwrap_or_default(), exact, note), detail))
            })
            .await?;
        let mut version = promoted_version;
        if exact {
            version = self
                .step("reverse", async {
                    let next = self
                        .change(
                            &version,
                            |e| e.set_link_enabled(promoted, lost, true).map(drop),
                            &format!("drill: {promoted} ships to {lost} for the failback"),
                            &[promoted],
                        )
                        .await?;
                    let detail = format!("{promoted} -> {lost} enabled (version {})", next.version);
                    Ok((next, detail))
                })
                .await?;
        }
        let (rpo_records, rpo_note) = if exact {
            (lost_writes.iter().map(|p| p.count).sum(), String::new())
        } else {
            let reporting = if answered { "every node" } else { "not every node" };
            let note = format!(
                "{note}: an estimate, the changes the link last reported queued ({reporting} \
                 of {lost} answered; changes after that report are not counted); the failback \
                 lists them exactly"
            );
            (queued, note)
        };
        Ok(FailoverReport {
            drill: "failover".to_owned(),
            lost: lost.to_owned(),
            promoted: promoted.to_owned(),
            rpo_records,
            rpo_exact: exact,
            rpo_note,
            lost_writes,
            rto_ms,
            topology_version: version.version,
            steps: self.steps(),
        })
    }

    /// The exact lost-write manifest once `lost` has applied `version` (its shippers to
    /// `survivor` stopped); why there is none otherwise.
    async fn exact_lost_writes(
        &self,
        version: &Current,
        lost: &str,
        survivor: &str,
        frozen: bool,
    ) -> Result<Vec<LostPartition>, String> {
        if frozen {
            return Err(format!("{lost} is frozen"));
        }
        let number = version_number(version.version);
        let waiting = (Waiting::Every, self.timeout.min(SHORT_WAIT));
        ops::wait_applied(&self.http, &version.topology, &[lost], number, waiting)
            .await
            .map_err(|error| format!("{lost} is unreachable ({error})"))?;
        self.lost_writes(&version.topology, lost, survivor)
            .await
            .map_err(|error| format!("{lost}'s unshipped records could not be listed ({error})"))
    }

    /// The records `lost` has not shipped to `survivor` and `survivor` does not hold, grouped
    /// by partition.
    async fn lost_writes(
        &self,
        topology: &Topology,
        lost: &str,
        survivor: &str,
    ) -> Result<Vec<LostPartition>, DrillError> {
        let mut unshipped = Vec::new();
        for report in ops::unshipped(&self.http, topology, lost, survivor).await? {
            unshipped.extend(report.records);
        }
        // A batch can be applied at the survivor and its acknowledgement lost on the way
        // back: a record the survivor holds in the very version unshipped is not lost. Look
        // each partition up at the survivor.
        let mut by_partition: BTreeMap<(String, u16), Vec<ferry_node::unshipped::Unshipped>> =
            BTreeMap::new();
        for record in unshipped {
            by_partition
                .entry((record.namespace.clone(), record.partition))
                .or_default()
                .push(record);
        }
        let mut manifest = Vec::new();
        let topology = Arc::new(topology.clone());
        let partitions: Vec<_> = by_partition.into_iter().collect();
        for chunk in partitions.chunks(LOOKUP_CONCURRENCY) {
            let mut lookups = tokio::task::JoinSet::new();
            for ((namespace, partition), records) in chunk.iter().cloned() {
                let (http, topology, survivor) =
                    (self.http.clone(), topology.clone(), survivor.to_owned());
                lookups.spawn(async move {
                    let held = verify::partition_versions(
                        &http, &topology, &survivor, &namespace, partition,
                    )
                    .await?;
                    Ok::<_, DrillError>((namespace, partition, records, held))
                });
            }
            while let Some(joined) = lookups.join_next().await {
                let (namespace, partition, records, held) = joined
                    .map_err(|e| DrillError::Refused(format!("survivor lookup failed: {e}")))??;
                if let Some(lost) = lost_in_partition(namespace, partition, records, held) {
                    manifest.push(lost);
                }
            }
        }
        manifest.sort_by(|a, b| (&a.namespace, a.partition).cmp(&(&b.namespace, b.partition)));
        Ok(manifest)
    }

    /// `ferry drill failback --to SITE`: the site lost in a failover ships what it never
    /// shipped (and takes what changed meanwhile), conflicts resolve by policy and are listed,
    /// the sites are verified, then it becomes active again.
    pub async fn failback(&self, to: &str) -> Result<FailbackReport, DrillError> {
        let start = self.current().await?;
        let from = failback_source(&start.topology, to)?;
        let from = from.as_str();
        let sites = [from, to];
        if let Some(dir) = &self.local_dir {
            let frozen: Vec<_> = ops::local_processes(dir, &start.topology, to)?
                .into_iter()
                .filter(|(_, p)| p.frozen)
                .collect();
            if !frozen.is_empty() {
                self.step("bring back", async {
                    ops::signal(&frozen, nix::sys::signal::Signal::SIGCONT);
                    let number = version_number(start.version);
                    let waiting = (Waiting::Every, self.timeout);
                    ops::wait_applied(&self.http, &start.topology, &[to], number, waiting).await?;
                    let detail = format!(
                        "resumed {} node processes of {to}; on version {}",
                        frozen.len(),
                        start.version
                    );
                    Ok(((), detail))
                })
                .await?;
            }
        }
        self.step("preflight", async {
            self.preflight(&start.topology, &sites, start.version).await
        })
        .await?;
        let lost_writes = self
            .step("lost writes", async {
                let linked = start.topology.links.iter().any(|l| l.from == *to && l.to == *from);
                let manifest = if linked {
                    self.lost_writes(&start.topology, to, from).await?
                } else {
                    Vec::new()
                };
                let count: u64 = manifest.iter().map(|p| p.count).sum();
                Ok((manifest, format!("{to} holds {count} records it never shipped to {from}")))
            })
            .await?;
        let before = shipped_counts(&start.topology, &sites).await;
        let reconcile_started_ms = verify::now_ms();
        let reconciled = self
            .step("reconcile", async {
                let next = self
                    .change(
                        &start,
                        |e| {
                            e.add_reverse_link(from, to)?
                                .set_link_enabled(to, from, true)?
                                .set_link_enabled(from, to, true)
                                .map(drop)
                        },
                        &format!("drill: {to} and {from} ship to each other"),
                        &sites,
                    )
                    .await?;
                for (a, b) in [(to, from), (from, to)] {
                    ops::drain_link(&self.http, &next.topology, a, b, self.timeout).await?;
                }
                Ok((next, format!("{to} -> {from} and {from} -> {to} drained")))
            })
            .await?;
        let after = shipped_counts(&reconciled.topology, &sites).await;
        let shipped: BTreeMap<String, u64> = after
            .iter()
            .map(|(link, n)| {
                (link.clone(), n.saturating_sub(before.get(link).copied().unwrap_or(0)))
            })
            .collect();
        // Conflicts over the diverged records may have resolved before the failback, as the
        // reverse link shipped the other site's writes to the returning one.
        let diverged: BTreeSet<String> =
            lost_writes.iter().flat_map(|p| p.digests.iter().cloned()).collect();
        let conflicts = conflicts_since(
            &self.http,
            &reconciled.topology,
            &sites,
            reconcile_started_ms,
            &diverged,
        )
        .await;
        let outcome = self.switch_roles(reconciled, from, to).await?;
        Ok(FailbackReport {
            drill: "failback".to_owned(),
            to: to.to_owned(),
            from: from.to_owned(),
            lost_writes_shipped: lost_writes.iter().map(|p| p.count).sum(),
            lost_writes,
            shipped,
            conflicts,
            verified: true,
            records_verified: outcome.records_verified,
            rto_ms: outcome.rto_ms,
            topology_version: outcome.version,
            steps: self.steps(),
        })
    }
}

/// Partitions looked up at a survivor at once while listing lost writes.
const LOOKUP_CONCURRENCY: usize = 16;

/// The records of one partition a lost site had not shipped, less those the survivor holds in
/// the very version unshipped (applied there, the acknowledgement lost); `None` if none is left.
fn lost_in_partition(
    namespace: String,
    partition: u16,
    records: Vec<ferry_node::unshipped::Unshipped>,
    held: Vec<ferry_node::verify::VersionSummary>,
) -> Option<LostPartition> {
    let held: BTreeMap<String, (u16, u64)> =
        held.into_iter().map(|v| (v.digest, (v.generation, v.last_update_ms))).collect();
    let lost: Vec<_> = records
        .into_iter()
        .filter(|r| held.get(&r.digest) != Some(&(r.generation, r.lut_ms)))
        .collect();
    if lost.is_empty() {
        return None;
    }
    let digests: BTreeSet<String> = lost.iter().map(|r| r.digest.clone()).collect();
    Some(LostPartition {
        namespace,
        partition,
        count: digests.len() as u64,
        lut_min: lost.iter().map(|r| r.lut_ms).min().unwrap_or(0),
        lut_max: lost.iter().map(|r| r.lut_ms).max().unwrap_or(0),
        digests: digests.into_iter().collect(),
    })
}

/// What [`Drills::switch_roles`] achieved.
#[derive(Debug)]
struct Switched {
    version: i64,
    rto_ms: u64,
    records_verified: u64,
}

fn between(link: &ferry_topology::model::Link, a: &str, b: &str) -> bool {
    (link.from == *a && link.to == *b) || (link.from == *b && link.to == *a)
}

/// `site`, checked to exist and (with `active`) to have that role or not.
fn site_role(topology: &Topology, site: &str, active: bool) -> Result<(), DrillError> {
    let role = topology
        .site(site)
        .ok_or_else(|| DrillError::Refused(format!("no site '{site}' in the topology")))?
        .role;
    match (role == Role::Active, active) {
        (true, false) => Err(DrillError::Refused(format!("site '{site}' is already active"))),
        (false, true) => {
            Err(DrillError::Refused(format!("site '{site}' is not active; nothing to fail over")))
        }
        _ => Ok(()),
    }
}

/// Which links [`partner`] follows from a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linked {
    /// Enabled links out of the site.
    To,
    /// Enabled links into the site.
    From,
    /// Any link either way, enabled or not.
    Either,
}

/// The first site linked with `site` as `linked` says that passes `wanted`.
fn partner(
    topology: &Topology,
    site: &str,
    linked: Linked,
    wanted: impl Fn(&ferry_topology::model::Site) -> bool,
) -> Option<String> {
    topology.links.iter().find_map(|l| {
        let far = match linked {
            Linked::To if l.enabled && l.from == *site => &l.to,
            Linked::From if l.enabled && l.to == *site => &l.from,
            Linked::Either if l.from == *site => &l.to,
            Linked::Either if l.to == *site => &l.from,
            _ => return None,
        };
        topology.site(far.as_str()).is_some_and(&wanted).then(|| far.to_string())
    })
}

/// The active site with an enabled link to `to` (a standby).
fn active_source(topology: &Topology, to: &str) -> Result<String, DrillError> {
    site_role(topology, to, false)?;
    partner(topology, to, Linked::From, |s| s.role == Role::Active).ok_or_else(|| {
        DrillError::Refused(format!("no active site ships to '{to}' over an enabled link"))
    })
}

/// The active site linked with `to` (a standby lost in a failover) either way.
fn failback_source(topology: &Topology, to: &str) -> Result<String, DrillError> {
    site_role(topology, to, false)?;
    partner(topology, to, Linked::Either, |s| s.role == Role::Active)
        .ok_or_else(|| DrillError::Refused(format!("no active site is linked with '{to}'")))
}

/// The standby `lost` (an active site) ships to over an enabled link.
fn standby_target(topology: &Topology, lost: &str) -> Result<String, DrillError> {
    site_role(topology, lost, true)?;
    partner(topology, lost, Linked::To, |s| s.role == Role::Standby).ok_or_else(|| {
        DrillError::Refused(format!(
            "'{lost}' ships to no standby; name the site to promote with --promote"
        ))
    })
}

/// `promote`, checked to be a site `lost` (an active site) ships to over an enabled link.
fn linked_site(topology: &Topology, lost: &str, promote: &str) -> Result<String, DrillError> {
    site_role(topology, lost, true)?;
    partner(topology, lost, Linked::To, |s| s.name == *promote).ok_or_else(|| {
        DrillError::Refused(format!("'{lost}' has no enabled link to '{promote}' to promote"))
    })
}

impl Drills {
    /// The node processes of `site` on this machine; an error unless there are some.
    fn local_processes(
        &self,
        topology: &Topology,
        site: &str,
    ) -> Result<Vec<(String, ops::LocalProcess)>, DrillError> {
        let dir = self.local_dir.as_ref().ok_or_else(|| {
            DrillError::Refused("--freeze needs the deployment's state directory".to_owned())
        })?;
        let processes = ops::local_processes(dir, topology, site)?;
        if processes.is_empty() {
            return Err(DrillError::Refused(format!(
                "no node process of '{site}' runs from {} on this machine: --freeze works on a \
                 local deployment",
                dir.display()
            )));
        }
        Ok(processes)
    }
}

/// Checks the link `from -> to` is active, unparked and error-free on every node.
async fn healthy_link(topology: &Topology, from: &str, to: &str) -> Result<String, DrillError> {
    let mut problems = Vec::new();
    for (node, stats) in ops::link_stats(topology, from, to).await? {
        match stats {
            Ok(s) if s.state_name() == "active" && s.counters.parked == 0 => {}
            Ok(s) => problems.push(format!(
                "{node}: {} with {} parked",
                s.state_name(),
                s.counters.parked
            )),
            Err(error) => problems.push(format!("{node}: {error}")),
        }
    }
    if problems.is_empty() {
        Ok(format!("{from} -> {to} active on every node"))
    } else {
        Err(DrillError::Refused(format!(
            "link {from} -> {to} is not healthy (pass --force to drill anyway): {}",
            problems.join("; ")
        )))
    }
}

/// Waits until the link `from -> to` reports `active` on every node of `from`.
async fn wait_link_active(
    topology: &Topology,
    from: &str,
    to: &str,
    timeout: Duration,
) -> Result<(), DrillError> {
    let deadline = Instant::now() + timeout;
    loop {
        let answers = ops::link_stats(topology, from, to).await?;
        let idle: Vec<String> = answers
            .iter()
            .filter(|(_, s)| !matches!(s, Ok(s) if s.state_name() == "active"))
            .map(|(node, s)| {
                format!(
                    "{node}: {}",
                    s.as_ref().map_or_else(ToString::to_string, LinkSnapshot::state_name)
                )
            })
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DrillError::Refused(format!(
                "link {from} -> {to} not active after {timeout:?}: {}",
                idle.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The changes queued on the link `lost -> to` by the nodes of `lost` that answer within a
/// moment: (sum of `in_queue`, nodes that answered, nodes).
async fn queued_bound(topology: &Topology, lost: &str, to: &str) -> (u64, usize, usize) {
    let Ok(nodes) = ops::site_nodes(topology, lost) else { return (0, 0, 0) };
    let (mut queued, mut answered) = (0, 0);
    for node in &nodes {
        let asked = crate::client::link_stats(node.client, to);
        if let Ok(Ok(stats)) = tokio::time::timeout(Duration::from_secs(2), asked).await {
            queued += stats.counters.in_queue;
            answered += 1;
        }
    }
    (queued, answered, nodes.len())
}

/// Records acknowledged so far on every link among `sites`, by `from -> to`.
async fn shipped_counts(topology: &Topology, sites: &[&str]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for link in topology
        .links
        .iter()
        .filter(|l| sites.contains(&l.from.as_str()) && sites.contains(&l.to.as_str()))
    {
        let Ok(answers) = ops::link_stats(topology, link.from.as_str(), link.to.as_str()).await
        else {
            continue;
        };
        let success: u64 =
            answers.iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.counters.success).sum();
        counts.insert(format!("{} -> {}", link.from, link.to), success);
    }
    counts
}

/// The conflicts the nodes of `sites` recorded since `since_ms` or over one of `digests`,
/// oldest first.
async fn conflicts_since(
    http: &reqwest::Client,
    topology: &Topology,
    sites: &[&str],
    since_ms: u64,
    digests: &BTreeSet<String>,
) -> Vec<Conflict> {
    let mut recent = Vec::new();
    for site in sites {
        for node in ops::site_nodes(topology, site).unwrap_or_default() {
            let path = "/v1/xdr/conflicts?limit=100000";
            if let Ok(list) = ops::admin_get::<Vec<Conflict>>(http, &node, path).await {
                recent
                    .extend(list.into_iter().filter(|c| {
                        c.at_ms >= since_ms || digests.contains(&c.digest.to_string())
                    }));
            }
        }
    }
    recent.sort_by_key(|c| c.at_ms);
    recent
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_node::unshipped::Unshipped;
    use ferry_node::verify::VersionSummary;

    fn unshipped(digest: &str, generation: u16, lut_ms: u64) -> Unshipped {
        Unshipped {
            namespace: "test".to_owned(),
            partition: 7,
            digest: digest.to_owned(),
            generation,
            lut_ms,
            parked: false,
        }
    }

    fn held(digest: &str, generation: u16, last_update_ms: u64) -> VersionSummary {
        VersionSummary {
            digest: digest.to_owned(),
            set: String::new(),
            generation,
            last_update_ms,
            origin_site: 1,
            tombstone: false,
            expired: false,
            hash: 0,
        }
    }

    #[test]
    fn a_record_the_survivor_holds_in_that_very_version_is_not_lost() {
        let records = vec![unshipped("aa", 2, 20), unshipped("bb", 3, 30), unshipped("cc", 1, 5)];
        // aa arrived (acknowledgement lost); bb is there in an older version; cc never arrived.
        let survivor = vec![held("aa", 2, 20), held("bb", 2, 25)];
        let lost = lost_in_partition("test".to_owned(), 7, records, survivor).expect("lost");
        assert_eq!(lost.digests, ["bb", "cc"]);
        assert_eq!((lost.count, lost.lut_min, lost.lut_max), (2, 5, 30));
        let arrived = lost_in_partition(
            "test".to_owned(),
            7,
            vec![unshipped("aa", 2, 20)],
            vec![held("aa", 2, 20)],
        );
        assert_eq!(arrived, None);
    }
}
