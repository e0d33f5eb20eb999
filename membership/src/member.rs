//! A node's seat in its site's membership group: the async shell around openraft, the failure
//! detector and the lease. It heartbeats every peer, answers peers' requests ([`Member::handle`]),
//! and while it leads, commits the removals and re-admissions the detector judges and admits
//! nodes the topology added: first to the group (a learner, then a voter), then to placement.
//!
//! A pristine node (no raft log or vote) does not found a group on its own: it founds one
//! with every node its topology lists only once all of them answered pristine too (a site
//! starting for the first time), and otherwise waits to be added by the leader (a node
//! joining a running site).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::detector::{FailureDetector, Heartbeat};
use crate::lease::Lease;
use crate::rpc::{self, Network, Reply, Request, Transport};
use crate::state::{Intent, Planner, SiteMembership};
use crate::types::{Peer, Raft, raft_id};

/// How a member runs.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This node's id.
    pub me: String,
    /// Where the group's log, vote and snapshot live.
    pub dir: PathBuf,
    pub heartbeat: Heartbeat,
    /// How long a majority's answers let this node acknowledge writes; shorter than the
    /// failure-detection timeout.
    pub lease: Duration,
}

impl MemberConfig {
    /// Aerospike's heartbeat defaults (150 ms × 10) and a lease of two thirds of the timeout.
    pub fn new(me: &str, dir: PathBuf) -> Self {
        let heartbeat = Heartbeat::default();
        let lease = heartbeat.timeout() * 2 / 3;
        Self { me: me.to_owned(), dir, heartbeat, lease }
    }
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    #[error("open the membership store in {dir}: {source}")]
    Store { dir: String, source: fjall::Error },
    #[error("start the membership group: {0}")]
    Raft(String),
    #[error("node '{0}' is not among its site's nodes")]
    NotAVoter(String),
    #[error("node ids '{0}' and '{1}' have the same raft id; rename one")]
    IdCollision(String, String),
    #[error(
        "the lease ({lease:?}) must be shorter than the failure-detection timeout ({timeout:?})"
    )]
    LeaseTooLong { lease: Duration, timeout: Duration },
}

/// What `ferry status` and the admin API show of the group.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub leader: Option<String>,
    pub term: u64,
    pub epoch: u64,
    pub down: Vec<String>,
    /// Milliseconds the write lease still holds; 0 when it does not.
    pub lease_ms: u64,
    /// Milliseconds since each peer was last heard.
    pub silent_ms: BTreeMap<String, u64>,
}

/// What a peer said in its latest heartbeat answer.
#[derive(Debug, Clone, Copy)]
struct Report {
    initialized: bool,
    roster: u64,
}

struct Inner<T> {
    config: MemberConfig,
    planner: Arc<dyn Planner>,
    raft: Raft,
    /// Whether this node's raft state is past pristine (it founded the group, or joined it).
    initialized: AtomicBool,
    /// Whether this node founded the group: its topology's nodes are the first members, so
    /// the partition map it started with is the group's first.
    founder: AtomicBool,
    reports: Mutex<BTreeMap<String, Report>>,
    transport: Arc<T>,
    detector: Mutex<FailureDetector>,
    lease: Mutex<Lease>,
    membership: watch::Receiver<SiteMembership>,
}

/// A running member; stops its background work when dropped (call [`Member::shutdown`] to stop
/// openraft too).
pub struct Member<T> {
    inner: Arc<Inner<T>>,
    tasks: JoinSet<()>,
}

impl<T> std::fmt::Debug for Member<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("me", &self.inner.config.me).finish_non_exhaustive()
    }
}

impl<T: Transport> Member<T> {
    /// Opens the group's store, starts openraft and the heartbeat, judge and (on a pristine
    /// node) bootstrap loops. `planner` turns intents into changes while this node leads, and
    /// tells which nodes the site has now.
    pub async fn start(
        config: MemberConfig,
        transport: Arc<T>,
        planner: Arc<dyn Planner>,
    ) -> Result<Self, MembershipError> {
        let nodes = planner.nodes();
        if !nodes.contains(&config.me) {
            return Err(MembershipError::NotAVoter(config.me.clone()));
        }
        let timeout = config.heartbeat.timeout();
        if config.lease >= timeout {
            return Err(MembershipError::LeaseTooLong { lease: config.lease, timeout });
        }
        let mut names = BTreeMap::new();
        for node in &nodes {
            if let Some(other) = names.insert(raft_id(node), node.clone()) {
                return Err(MembershipError::IdCollision(other, node.clone()));
            }
        }
        let (published, membership) = watch::channel(SiteMembership::default());
        let (log, state_machine) =
            crate::store::open(&config.dir, published).map_err(|source| {
                MembershipError::Store { dir: config.dir.display().to_string(), source }
            })?;
        let interval = config.heartbeat.interval.as_millis() as u64;
        let raft_config = Config {
            cluster_name: "ferry-site".into(),
            heartbeat_interval: interval,
            election_timeout_min: interval * 4,
            election_timeout_max: interval * 6,
            ..Config::default()
        }
        .validate()
        .map_err(|e| MembershipError::Raft(e.to_string()))?;
        let network = Network { transport: Arc::clone(&transport) };
        let raft =
            Raft::new(raft_id(&config.me), Arc::new(raft_config), network, log, state_machine)
                .await
                .map_err(|e| MembershipError::Raft(e.to_string()))?;
        let initialized =
            raft.is_initialized().await.map_err(|e| MembershipError::Raft(e.to_string()))?;
        let now = Instant::now();
        let inner = Arc::new(Inner {
            detector: Mutex::new(FailureDetector::new(config.heartbeat, now)),
            lease: Mutex::new(Lease::new(config.lease, 0)),
            config,
            planner,
            raft,
            initialized: AtomicBool::new(initialized),
            founder: AtomicBool::new(false),
            reports: Mutex::default(),
            transport,
            membership,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(heartbeat_loop(Arc::clone(&inner)));
        tasks.spawn(while_leading(Arc::clone(&inner), judge));
        tasks.spawn(while_leading(Arc::clone(&inner), admit));
        if !initialized {
            tasks.spawn(bootstrap_loop(Arc::clone(&inner)));
        }
        Ok(Self { inner, tasks })
    }

    /// Answers a peer's encoded request.
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        let inner = &self.inner;
        let reply = match serde_json::from_slice::<Request>(request) {
            Err(error) => Reply::Refused(format!("undecodable request: {error}")),
            Ok(Request::Heartbeat { from, .. }) => {
                if inner.knows(&from) {
                    inner.detector().heard(&from, Instant::now());
                    let membership = inner.membership.borrow().clone();
                    Reply::Heartbeat {
                        from: inner.config.me.clone(),
                        epoch: membership.epoch,
                        sender_down: !membership.is_live(&from),
                        fingerprint: inner.planner.fingerprint(&membership),
                        initialized: inner.initialized.load(Ordering::Relaxed),
                        roster: inner.planner.roster(),
                    }
                } else {
                    Reply::Refused(format!("'{from}' is not a node of this site"))
                }
            }
            Ok(Request::Append(rpc)) => Reply::Append(inner.raft.append_entries(rpc).await),
            Ok(Request::Vote(rpc)) => Reply::Vote(inner.raft.vote(rpc).await),
            Ok(Request::Snapshot(rpc)) => Reply::Snapshot(inner.raft.install_snapshot(rpc).await),
            Ok(Request::Propose(intent)) => Reply::Proposed(if inner.leading() {
                inner.commit(&intent).await
            } else {
                Err("not the leader".to_owned())
            }),
        };
        serde_json::to_vec(&reply).unwrap_or_default()
    }

    /// Has the group carry out `intent`: here when this node leads, else at the leader.
    /// Returns the epoch after it.
    pub async fn propose(&self, intent: Intent) -> Result<u64, String> {
        let inner = &self.inner;
        if inner.leading() {
            return inner.commit(&intent).await;
        }
        let leader = inner.raft.metrics().borrow().current_leader;
        let Some(leader) = leader.and_then(|id| inner.name_of(id)) else {
            return Err("no leader".to_owned());
        };
        let timeout = inner.config.heartbeat.timeout();
        match rpc::call(&*inner.transport, &leader, &Request::Propose(intent), timeout).await {
            Ok(Reply::Proposed(outcome)) => outcome,
            Ok(_) => Err("reply of the wrong kind".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl<T> Member<T> {
    /// This node's id.
    pub fn name(&self) -> &str {
        &self.inner.config.me
    }

    /// The committed membership, updated as changes commit.
    pub fn membership(&self) -> watch::Receiver<SiteMembership> {
        self.inner.membership.clone()
    }

    /// Whether this node knows the site's partition map: it founded the group, or it has the
    /// group's members (a node joining a running site holds nothing until then, whatever its
    /// topology says).
    pub fn settled(&self) -> bool {
        let inner = &self.inner;
        inner.founder.load(Ordering::Relaxed) || inner.membership.borrow().members.is_some()
    }

    /// Whether this node may acknowledge writes now: it knows the site's map, a majority of
    /// the group's voters answered it within the lease, and the committed membership it knows
    /// has it in.
    pub fn lease_holds(&self) -> bool {
        let inner = &self.inner;
        self.settled()
            && inner.membership.borrow().is_live(&inner.config.me)
            && inner.lease().holds(Instant::now())
    }

    /// The group as this node sees it.
    pub fn status(&self) -> MemberStatus {
        let inner = &self.inner;
        let metrics = inner.raft.metrics().borrow().clone();
        let membership = inner.membership.borrow().clone();
        let now = Instant::now();
        let lease_ms = match inner.lease().expiry() {
            Some(expiry) if membership.is_live(&inner.config.me) => {
                expiry.saturating_duration_since(now).as_millis() as u64
            }
            _ => 0,
        };
        let detector = inner.detector();
        let silent_ms = inner
            .peers()
            .into_iter()
            .map(|peer| {
                let silence = detector.silence(&peer, now).as_millis() as u64;
                (peer, silence)
            })
            .collect();
        MemberStatus {
            leader: metrics.current_leader.and_then(|id| inner.name_of(id)),
            term: metrics.current_term,
            epoch: membership.epoch,
            down: membership.down.into_iter().collect(),
            lease_ms,
            silent_ms,
        }
    }

    /// Stops the loops and openraft.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "membership group did not stop cleanly");
        }
    }
}

impl<T> Inner<T> {
    fn detector(&self) -> std::sync::MutexGuard<'_, FailureDetector> {
        self.detector.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Report>> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `node` answered a heartbeat within the failure-detection timeout.
    fn answers(&self, node: &str) -> bool {
        self.detector().silence(node, Instant::now()) < self.config.heartbeat.timeout()
    }

    /// The group's voters and learners, by node id.
    fn group(&self) -> (Vec<String>, Vec<String>) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let name = |id: u64| membership.get_node(&id).map(|peer| peer.name.clone());
        let voters = membership.voter_ids().filter_map(name).collect();
        let learners = membership.learner_ids().filter_map(name).collect();
        (voters, learners)
    }

    fn name_of(&self, id: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().get_node(&id).map(|peer| peer.name.clone())
    }

    /// Every node this one heartbeats: the group's voters and learners, and the nodes its
    /// topology lists (which may be waiting to be added).
    fn peers(&self) -> BTreeSet<String> {
        let (voters, learners) = self.group();
        let mut peers: BTreeSet<String> = voters.into_iter().chain(learners).collect();
        peers.extend(self.planner.nodes());
        peers.remove(&self.config.me);
        peers
    }

    /// Whether `node` may heartbeat this one: a member of the group or a node of the site.
    fn knows(&self, node: &str) -> bool {
        let (voters, learners) = self.group();
        voters.iter().chain(&learners).any(|n| n == node)
            || self.planner.nodes().iter().any(|n| n == node)
    }

    fn leading(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader
            && metrics.current_leader == Some(raft_id(&self.config.me))
    }

    /// Plans `intent` on the committed membership and commits the change; returns the epoch
    /// after it. A leader cut off from its majority cannot commit: it gives up after a
    /// failure-detection timeout.
    async fn commit(&self, intent: &Intent) -> Result<u64, String> {
        let current = self.membership.borrow().clone();
        let Some(change) = self.planner.plan(&current, intent) else {
            return Ok(current.epoch);
        };
        tracing::info!(%intent, epoch = current.epoch, "proposing a membership change");
        let write = self.raft.client_write(change);
        match tokio::time::timeout(self.config.heartbeat.timeout(), write).await {
            // The state machine answers 0 for a change planned on an epoch that had passed.
            Ok(Ok(response)) if response.data == 0 => Err("planned on a stale epoch".to_owned()),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("not committed in time".to_owned()),
        }
    }
}

/// Every interval, a heartbeat to each peer; an answer renews the lease and tells the detector
/// the peer lives. Each heartbeat waits at most a lease: a later answer could not renew it.
async fn heartbeat_loop<T: Transport>(inner: Arc<Inner<T>>) {
    let mut ticks = tokio::time::interval(inner.config.heartbeat.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    loop {
        ticks.tick().await;
        while in_flight.try_join_next().is_some() {}
        let voters: Arc<BTreeSet<String>> = Arc::new(inner.group().0.into_iter().collect());
        inner.lease().set_voters(voters.len());
        // What this tick's heartbeats vouch for, computed once for every peer.
        let (epoch, mine) = {
            let membership = inner.membership.borrow();
            (membership.epoch, inner.planner.fingerprint(&membership))
        };
        for peer in inner.peers() {
            let inner = Arc::clone(&inner);
            let voters = Arc::clone(&voters);
            in_flight.spawn(async move {
                let sent = Instant::now();
                let request = Request::Heartbeat { from: inner.config.me.clone(), epoch };
                let reply = rpc::call(&*inner.transport, &peer, &request, inner.config.lease).await;
                match reply {
                    Ok(Reply::Heartbeat {
                        from,
                        epoch: theirs,
                        sender_down,
                        fingerprint,
                        initialized,
                        roster,
                    }) if from == peer => {
                        inner.detector().heard(&peer, Instant::now());
                        inner.reports().insert(peer.clone(), Report { initialized, roster });
                        // A peer that already committed a newer epoch, has this node out, or
                        // places partitions differently vouches for nothing: this node's view
                        // may hand out partitions the majority has moved. Only voters count
                        // toward the majority.
                        let same = fingerprint == mine;
                        if theirs <= epoch && !sender_down && same && voters.contains(&peer) {
                            inner.lease().answered(&peer, sent);
                        }
                    }
                    Ok(other) => tracing::debug!(%peer, ?other, "unexpected heartbeat answer"),
                    Err(error) => tracing::trace!(%peer, %error, "heartbeat unanswered"),
                }
            });
        }
    }
}

/// Every heartbeat interval while this node leads, one `step` (a separate task per kind of
/// step: catching a new node up must not delay a removal).
async fn while_leading<T, F, S>(inner: Arc<Inner<T>>, step: F)
where
    T: Transport,
    F: Fn(Arc<Inner<T>>) -> S,
    S: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(inner.config.heartbeat.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if inner.leading() {
            step(Arc::clone(&inner)).await;
        }
    }
}

/// Commits what the detector judges, one change at a time (each planned on the membership the
/// previous one left).
async fn judge<T: Transport>(inner: Arc<Inner<T>>) {
    let membership = inner.membership.borrow().clone();
    let (voters, _) = inner.group();
    let judged = inner.detector().judge(&inner.config.me, &voters, &membership, Instant::now());
    for intent in judged {
        if let Err(error) = inner.commit(&intent).await {
            tracing::warn!(%intent, %error, "membership change not committed; retrying");
            break;
        }
    }
}

/// How long the leader waits for a joining node to catch up with the group's log.
const CATCH_UP: Duration = Duration::from_secs(10);

/// One step of admitting the nodes the topology added, while this node leads: a node that
/// answers and is not in the group becomes a learner, then a voter; a voter not yet in
/// placement is admitted to it once every live member lists the same nodes (so each of them
/// derives the same partition map from the admission).
async fn admit<T: Transport>(inner: Arc<Inner<T>>) {
    let membership = inner.membership.borrow().clone();
    let (voters, learners) = inner.group();
    // Only a node that answered a heartbeat (not one merely not yet judged silent).
    let missing = inner.planner.nodes().into_iter().filter(|node| !voters.contains(node));
    let answering = |node: &String| inner.reports().contains_key(node) && inner.answers(node);
    if let Some(node) = missing.into_iter().find(answering) {
        let id = raft_id(&node);
        if let Some(other) = inner.name_of(id).filter(|other| *other != node) {
            tracing::error!(node, other, "node ids have the same raft id; rename one");
            return;
        }
        let outcome = if learners.contains(&node) {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            tracing::info!(node, "making a caught-up learner a voter");
            tokio::time::timeout(CATCH_UP, inner.raft.change_membership(change, false)).await
        } else {
            tracing::info!(node, "adding a new node to the group as a learner");
            let peer = Peer { name: node.clone() };
            tokio::time::timeout(CATCH_UP, inner.raft.add_learner(id, peer, true)).await
        };
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(node, %error, "group change not made; retrying"),
            Err(_) => tracing::warn!(node, "group change not made in time; retrying"),
        }
        return;
    }
    if membership.members.is_none() {
        return;
    }
    let roster = inner.planner.roster();
    let agreed = |peer: &String| {
        *peer == inner.config.me
            || !membership.is_live(peer)
            || inner.reports().get(peer).is_some_and(|report| report.roster == roster)
    };
    let placed = voters.iter().filter(|voter| !membership.is_member(voter));
    for node in placed.cloned().collect::<Vec<_>>() {
        if !voters.iter().all(agreed) {
            tracing::debug!(node, "not every member lists the joining node yet");
            return;
        }
        let intent = Intent::Join { node };
        if let Err(error) = inner.commit(&intent).await {
            tracing::warn!(%intent, %error, "admission not committed; retrying");
            return;
        }
    }
}

/// On a pristine node: founds the group with every node the topology lists once all of them
/// answered pristine, or waits (answering the leader) until the group adds it. Unanimity, not
/// a majority: nodes added to a running site may outnumber it, and a running node that does
/// not answer (or refuses a node its topology does not list yet) must not be outvoted into a
/// second group.
async fn bootstrap_loop<T: Transport>(inner: Arc<Inner<T>>) {
    let mut ticks = tokio::time::interval(inner.config.heartbeat.interval);
    loop {
        ticks.tick().await;
        if inner.raft.is_initialized().await.unwrap_or(false) {
            inner.initialized.store(true, Ordering::Relaxed);
            return;
        }
        let nodes = inner.planner.nodes();
        let reports = inner.reports().clone();
        let fresh: Vec<&Report> = nodes
            .iter()
            .filter(|node| **node != inner.config.me && inner.answers(node))
            .filter_map(|node| reports.get(node))
            .collect();
        if fresh.iter().any(|report| report.initialized) {
            continue; // a running group: the leader adds this node
        }
        if fresh.len() + 1 < nodes.len() {
            continue; // not every listed node answered yet
        }
        let voters: BTreeMap<u64, Peer> =
            nodes.iter().map(|name| (raft_id(name), Peer { name: name.clone() })).collect();
        match inner.raft.initialize(voters).await {
            Ok(()) => {
                inner.founder.store(true, Ordering::Relaxed);
                tracing::info!(nodes = ?nodes, "founded the site's membership group");
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(error) => {
                tracing::warn!(%error, "could not found the membership group; retrying");
                continue;
            }
        }
        inner.initialized.store(true, Ordering::Relaxed);
        return;
    }
}
