//! A node's seat in its site's membership group: the async shell around openraft, the failure
//! detector and the lease. It heartbeats every peer, answers peers' requests ([`Member::handle`]),
//! and while it leads, commits the removals and re-admissions the detector judges.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::{Config, ServerState};
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
    /// The site's provisioned nodes (this one included): the group's voters.
    pub voters: Vec<String>,
    /// Where the group's log, vote and snapshot live.
    pub dir: PathBuf,
    pub heartbeat: Heartbeat,
    /// How long a majority's answers let this node acknowledge writes; shorter than the
    /// failure-detection timeout.
    pub lease: Duration,
    /// A hash of what the node derives partition maps from besides the committed membership
    /// (its topology's site): answers from a node whose fingerprint differs renew no lease, so
    /// nodes running different topologies cannot both master a partition.
    pub fingerprint: u64,
}

impl MemberConfig {
    /// Aerospike's heartbeat defaults (150 ms × 10) and a lease of two thirds of the timeout.
    pub fn new(me: &str, voters: Vec<String>, dir: PathBuf) -> Self {
        let heartbeat = Heartbeat::default();
        let lease = heartbeat.timeout() * 2 / 3;
        Self { me: me.to_owned(), voters, dir, heartbeat, lease, fingerprint: 0 }
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

struct Inner<T> {
    config: MemberConfig,
    planner: Arc<dyn Planner>,
    names: BTreeMap<u64, String>,
    raft: Raft,
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
    /// Opens the group's store, starts openraft (initializing the group with every voter on
    /// first start: safe on every node with the same voters) and the heartbeat and judge loops.
    /// `planner` turns intents into changes while this node leads.
    pub async fn start(
        config: MemberConfig,
        transport: Arc<T>,
        planner: Arc<dyn Planner>,
    ) -> Result<Self, MembershipError> {
        if !config.voters.contains(&config.me) {
            return Err(MembershipError::NotAVoter(config.me.clone()));
        }
        let timeout = config.heartbeat.timeout();
        if config.lease >= timeout {
            return Err(MembershipError::LeaseTooLong { lease: config.lease, timeout });
        }
        let mut names = BTreeMap::new();
        for voter in &config.voters {
            if let Some(other) = names.insert(raft_id(voter), voter.clone()) {
                return Err(MembershipError::IdCollision(other, voter.clone()));
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
        let voters: BTreeMap<u64, Peer> =
            names.iter().map(|(&id, name)| (id, Peer { name: name.clone() })).collect();
        match raft.initialize(voters).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(error) => return Err(MembershipError::Raft(error.to_string())),
        }
        let now = Instant::now();
        let inner = Arc::new(Inner {
            detector: Mutex::new(FailureDetector::new(config.heartbeat, now)),
            lease: Mutex::new(Lease::new(config.lease, config.voters.len())),
            config,
            planner,
            names,
            raft,
            transport,
            membership,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(heartbeat_loop(Arc::clone(&inner)));
        tasks.spawn(judge_loop(Arc::clone(&inner)));
        Ok(Self { inner, tasks })
    }

    /// Answers a peer's encoded request.
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        let inner = &self.inner;
        let reply = match serde_json::from_slice::<Request>(request) {
            Err(error) => Reply::Refused(format!("undecodable request: {error}")),
            Ok(Request::Heartbeat { from, .. }) => {
                if inner.config.voters.contains(&from) {
                    inner.detector().heard(&from, Instant::now());
                    let membership = inner.membership.borrow();
                    Reply::Heartbeat {
                        from: inner.config.me.clone(),
                        epoch: membership.epoch,
                        sender_down: !membership.is_live(&from),
                        fingerprint: inner.config.fingerprint,
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
        let Some(leader) = leader.and_then(|id| inner.names.get(&id)) else {
            return Err("no leader".to_owned());
        };
        let timeout = inner.config.heartbeat.timeout();
        match rpc::call(&*inner.transport, leader, &Request::Propose(intent), timeout).await {
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

    /// Whether this node may acknowledge writes now: a majority answered it within the lease,
    /// and the committed membership it knows has it in.
    pub fn lease_holds(&self) -> bool {
        let inner = &self.inner;
        inner.membership.borrow().is_live(&inner.config.me) && inner.lease().holds(Instant::now())
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
            .config
            .voters
            .iter()
            .filter(|voter| **voter != inner.config.me)
            .map(|voter| (voter.clone(), detector.silence(voter, now).as_millis() as u64))
            .collect();
        MemberStatus {
            leader: metrics.current_leader.and_then(|id| inner.names.get(&id).cloned()),
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

    fn peers(&self) -> impl Iterator<Item = &String> {
        self.config.voters.iter().filter(|voter| **voter != self.config.me)
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
        for peer in inner.peers() {
            let inner = Arc::clone(&inner);
            let peer = peer.clone();
            in_flight.spawn(async move {
                let sent = Instant::now();
                let epoch = inner.membership.borrow().epoch;
                let request = Request::Heartbeat { from: inner.config.me.clone(), epoch };
                let reply = rpc::call(&*inner.transport, &peer, &request, inner.config.lease).await;
                match reply {
                    Ok(Reply::Heartbeat { from, epoch: theirs, sender_down, fingerprint })
                        if from == peer =>
                    {
                        inner.detector().heard(&peer, Instant::now());
                        // A peer that already committed a newer epoch, has this node out, or
                        // places partitions differently vouches for nothing: this node's view
                        // may hand out partitions the majority has moved.
                        let same = fingerprint == inner.config.fingerprint;
                        if theirs <= epoch && !sender_down && same {
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

/// While this node leads, commits what the detector judges, one change at a time (each
/// planned on the membership the previous one left).
async fn judge_loop<T: Transport>(inner: Arc<Inner<T>>) {
    let mut ticks = tokio::time::interval(inner.config.heartbeat.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !inner.leading() {
            continue;
        }
        let membership = inner.membership.borrow().clone();
        let judged = inner.detector().judge(
            &inner.config.me,
            &inner.config.voters,
            &membership,
            Instant::now(),
        );
        for intent in judged {
            if let Err(error) = inner.commit(&intent).await {
                tracing::warn!(%intent, %error, "membership change not committed; retrying");
                break;
            }
        }
    }
}
