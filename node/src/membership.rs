//! The node's seat in its site's membership group (sites of three nodes or more): the group's
//! messages over the fabric, the planner that turns the leader's intents into changes from the
//! topology's placement, and the follower that installs each committed epoch's view.
//!
//! The planner reads the node's current topology (it follows the topology service), so a node
//! added to the site there is admitted by the leader (see `ferry_membership::Member`) and
//! filled by migrations, without restarting the others.
//!
//! Sites of one or two nodes run no group: a majority of two is both, so no node could take
//! over for the other; their membership stays at epoch 1 and writes need no lease.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_membership::{Change, Intent, Member, MemberConfig, Planner, SiteMembership, Transport};
use ferry_topology::placement::PARTITIONS;
use ferry_topology::{SharedTopology, Topology};

use crate::cluster::{ClusterView, PartitionCopies, placement};
use crate::fabric::{self, Fabric, Kind};
use crate::node::{NodeConfig, NodeState};
use crate::takeovers::TakeoverJournal;

pub use ferry_membership::Heartbeat;

/// A member whose messages travel over the fabric.
pub type SiteMember = Member<FabricTransport>;

/// Nodes a site needs for automatic takeover: a majority must survive a loss.
pub const MIN_NODES_FOR_TAKEOVER: usize = 3;

/// How long a write waits for this node's lease before it is refused as unavailable (a node
/// just started, or a blip): about one heartbeat timeout.
const LEASE_PATIENCE: Duration = Duration::from_millis(1_500);

/// Carries the group's messages to peers' fabric listeners on its own connections, at the
/// addresses the current topology gives them.
#[derive(Debug)]
pub struct FabricTransport {
    fabric: Fabric,
    topology: SharedTopology,
    site: String,
    routes: BTreeMap<String, SocketAddr>,
}

impl Transport for FabricTransport {
    async fn call(
        &self,
        peer: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, std::io::Error> {
        let topology = self.topology.get();
        let node = topology
            .site(&self.site)
            .and_then(|site| site.nodes.iter().find(|node| node.id.as_str() == peer));
        let node = node.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no node '{peer}'"))
        })?;
        let addr = fabric::route(&self.routes, node);
        let reply = self
            .fabric
            .exchange(addr, &fabric::frame(Kind::Membership, &request), timeout)
            .await
            .map_err(std::io::Error::other)?;
        let payload = fabric::payload(&reply, Kind::Membership).map_err(std::io::Error::other)?;
        Ok(payload.to_vec())
    }
}

/// Plans membership changes from the current topology's placement.
#[derive(Debug)]
pub struct SitePlanner {
    topology: SharedTopology,
    site: String,
}

impl Planner for SitePlanner {
    fn plan(&self, current: &SiteMembership, intent: &Intent) -> Option<Change> {
        let topology = self.topology.get();
        let site = topology.site(&self.site)?;
        let provisioned = |node: &str| site.nodes.iter().any(|n| n.id == *node);
        let mut down = current.down.clone();
        let mut members = current.members.clone();
        let (lost, filled) = match intent {
            Intent::Remove { node } if provisioned(node) && down.insert(node.clone()) => {
                (Some(node.as_str()), None)
            }
            Intent::Readmit { node } if down.remove(node) => (None, None),
            // Placed like a returning node: filled wherever placement puts it.
            Intent::Join { node }
                if provisioned(node)
                    && members.as_mut().is_some_and(|m| m.insert(node.clone())) =>
            {
                (None, None)
            }
            // Only if the node took every write of these partitions since the push began: it
            // stayed in, was not re-admitted (it had lost its copies) and the placement, which
            // decides whom writes reach, did not change.
            Intent::Filled { node, namespace, partitions, since }
                if current.is_live(node)
                    && *since >= current.placed_at
                    && current.readmitted.get(node).is_none_or(|back| since >= back) =>
            {
                (None, Some((node, namespace, partitions)))
            }
            _ => return None,
        };
        let next =
            SiteMembership { down: down.clone(), members: members.clone(), ..current.clone() };
        let mut holders = BTreeMap::new();
        let mut restarted: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for ns in &site.namespaces {
            let name = ns.name.as_str();
            let before = placement(&topology, &self.site, name, current).ok()?;
            let after = placement(&topology, &self.site, name, &next).ok()?;
            let held_before = current.holders.get(name);
            let mut changed = BTreeMap::new();
            for p in 0..PARTITIONS {
                let exception = held_before.and_then(|h| h.get(&p));
                let copies = PartitionCopies::derive(&before, exception, p);
                let mut full: BTreeSet<String> =
                    copies.full.iter().map(ToString::to_string).collect();
                if let Some(lost) = lost {
                    full.remove(lost);
                }
                if let Some((node, _, partitions)) = filled.filter(|f| f.1 == name)
                    && partitions.contains(&p)
                    && copies.filling.iter().any(|n| n.as_str() == node)
                {
                    full.insert(node.clone());
                }
                let placed: BTreeSet<String> = after.replicas(p).map(ToString::to_string).collect();
                // Back to the placement's list when every placed node holds a copy, or when no
                // copy survived (nothing to wait for).
                let next_exception = if full.is_superset(&placed) || full.is_empty() {
                    if full.is_empty() {
                        tracing::error!(namespace = name, partition = p, "every copy lost");
                        restarted.entry(name.to_owned()).or_default().push(p);
                    }
                    None
                } else {
                    Some(full.into_iter().collect::<Vec<_>>())
                };
                if next_exception.as_ref() != exception {
                    changed.insert(p, next_exception);
                }
            }
            if !changed.is_empty() {
                holders.insert(name.to_owned(), changed);
            }
        }
        let joined = members != current.members;
        if down == current.down && holders.is_empty() && !joined {
            return None;
        }
        let members = if joined { members } else { None };
        Some(Change {
            base_epoch: current.epoch,
            down,
            holders,
            restarted,
            members,
            reason: intent.clone(),
        })
    }

    fn nodes(&self) -> Vec<String> {
        let topology = self.topology.get();
        let site = topology.site(&self.site);
        site.map(|site| site.nodes.iter().map(|n| n.id.to_string()).collect()).unwrap_or_default()
    }

    fn fingerprint(&self, membership: &SiteMembership) -> u64 {
        let topology = self.topology.get();
        topology.site(&self.site).map_or(0, |site| {
            placement_fingerprint(&topology, site, |node| membership.is_member(node))
        })
    }

    fn roster(&self) -> u64 {
        let topology = self.topology.get();
        topology.site(&self.site).map_or(0, |site| placement_fingerprint(&topology, site, |_| true))
    }
}

/// FNV-1a over what placement reads from the topology for `site`: its nodes that `counts`
/// keeps (id, rack, zone), namespaces and copies, and the placement policy.
fn placement_fingerprint(
    topology: &Topology,
    site: &ferry_topology::model::Site,
    counts: impl Fn(&str) -> bool,
) -> u64 {
    let mut inputs = format!("{:?}", topology.placement);
    for node in site.nodes.iter().filter(|node| counts(node.id.as_str())) {
        inputs.push_str(&format!("|{}:{}:{:?}", node.id, node.rack_id, site.zone_of(node)));
    }
    for ns in &site.namespaces {
        inputs.push_str(&format!("|{}:{}", ns.name, ns.replication_factor));
    }
    ferry_membership::raft_id(&inputs)
}

/// Why a node could not take its seat in the site's group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    #[error(transparent)]
    Membership(#[from] ferry_membership::MembershipError),
    #[error(transparent)]
    Takeovers(#[from] crate::takeovers::JournalError),
}

/// Joins the site's membership group when the site has three nodes or more, and installs the
/// view of each committed epoch as it commits.
pub async fn join(state: &Arc<NodeState>, config: &NodeConfig) -> Result<(), JoinError> {
    let site = state.site();
    if site.nodes.len() < MIN_NODES_FOR_TAKEOVER {
        return Ok(());
    }
    let mut member_config =
        MemberConfig::new(state.this_node().id.as_str(), config.data_dir.join("membership"));
    member_config.heartbeat = config.heartbeat;
    member_config.lease = config.heartbeat.timeout() * 2 / 3;
    let transport = FabricTransport {
        fabric: Fabric::default(),
        topology: state.topology.clone(),
        site: site.name.to_string(),
        routes: config.fabric_routes.clone(),
    };
    let planner = SitePlanner { topology: state.topology.clone(), site: site.name.to_string() };
    // Before XDR starts: each shipper that starts is queued the takeovers it holds.
    let journal = TakeoverJournal::open(&config.data_dir.join(TAKEOVER_JOURNAL))?;
    let _ = state.takeovers.set(journal);
    let member = Member::start(member_config, Arc::new(transport), Arc::new(planner)).await?;
    let mut committed = member.membership();
    if state.member.set(member).is_err() {
        return Ok(());
    }
    tokio::spawn(announce_shipped(Arc::clone(state)));
    tokio::spawn(crate::migrate::run(Arc::clone(state)));
    let state = Arc::clone(state);
    tokio::spawn(async move {
        loop {
            let membership = committed.borrow_and_update().clone();
            let (site, node) = (state.site().name.to_string(), state.this_node().id.to_string());
            // The current topology: a node admitted at this epoch is in it (the leader admits
            // a node only once every live member's topology lists it).
            let topology = state.topology.get();
            match ClusterView::at(&topology, &site, &node, &membership) {
                Ok(view) => {
                    tracing::info!(
                        epoch = membership.epoch,
                        down = ?membership.down,
                        pending = membership.pending_partitions(),
                        "partition map of a new epoch"
                    );
                    let before = state.cluster();
                    let taken = takeovers(&state, &before, &view);
                    state.set_cluster(view);
                    // After the new view is in place: from now on the previous masters' copies
                    // of these changes are this node's to ship.
                    for (dc, partitions) in taken {
                        let count = partitions.len();
                        let Some(journal) = state.takeovers.get() else { break };
                        let now = crate::record::now_ms();
                        let (running, journaled) =
                            journal.take_over(&state.xdr, &dc, partitions, now);
                        if running {
                            tracing::info!(dc, partitions = count, "took over shipping partitions");
                        }
                        if let Err(error) = journaled {
                            // Queued anyway: only a restart before they ship would lose them.
                            tracing::error!(%error, dc, "takeovers not journaled");
                        }
                    }
                }
                Err(error) => tracing::error!(%error, "no partition map for the new epoch"),
            }
            if committed.changed().await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

impl NodeState {
    /// Whether this node may acknowledge a write now: always in a site without a membership
    /// group, else while its lease holds — waiting up to [`LEASE_PATIENCE`] for it.
    pub async fn write_lease(&self) -> bool {
        let Some(member) = self.member.get() else { return true };
        within_patience(|| member.lease_holds()).await
    }

    /// Whether this node knows the site's partition map, waiting up to [`LEASE_PATIENCE`]
    /// for it: always in a site without a group; a node joining a running site serves nothing
    /// until the group's members reach it.
    pub async fn map_known(&self) -> bool {
        within_patience(|| self.map_settled()).await
    }

    /// Whether this node knows the site's partition map now (always in a site without a
    /// group).
    pub fn map_settled(&self) -> bool {
        self.member.get().is_none_or(Member::settled)
    }

    /// Whether this node's lease still holds now (always in a site without a group): checked
    /// again before a write is acknowledged, so a write that took longer than the lease is not.
    pub fn lease_holds(&self) -> bool {
        self.member.get().is_none_or(Member::lease_holds)
    }

    /// Whether this node applies `topology`'s changes to its site without a restart: the
    /// same id and namespaces, and the same nodes — or, in a site with a membership group,
    /// nodes added (the group admits them).
    pub fn applies_live(&self, topology: &Topology) -> bool {
        let site = self.site();
        let Some(now) = topology.site(site.name.as_str()) else { return false };
        let kept = site.nodes.iter().all(|node| now.nodes.contains(node));
        let same_nodes = kept && now.nodes.len() == site.nodes.len();
        now.src_id == site.src_id
            && now.namespaces == site.namespaces
            && (same_nodes || kept && self.member.get().is_some())
    }

    /// The membership group as this node sees it, if the site runs one.
    pub fn member_status(&self) -> Option<ferry_membership::MemberStatus> {
        self.member.get().map(Member::status)
    }
}

/// Whether `ready` holds within [`LEASE_PATIENCE`] (checked every 10 ms).
async fn within_patience(ready: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + LEASE_PATIENCE;
    loop {
        if ready() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The takeover journal's file in the node's directory.
const TAKEOVER_JOURNAL: &str = "xdr-takeovers.json";

/// How often a node tells its peers how far its links shipped.
const SHIPPED_EVERY: Duration = Duration::from_millis(500);
/// Taken off a previous master's watermark: node clocks may differ a little, and re-shipping
/// a little more is harmless (apply is idempotent).
const TAKEOVER_SLACK_MS: u64 = 2_000;

/// How far one node's links shipped: every change with a LUT before the watermark is
/// acknowledged at the destination (now − the link's lag, which counts unread changes too, or
/// older while a recovery still re-ships).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shipped {
    pub from: String,
    pub links: BTreeMap<String, u64>,
}

/// Every [`SHIPPED_EVERY`], tells each live peer how far this node's links shipped, and
/// drops the journaled takeovers they have shipped.
async fn announce_shipped(state: Arc<NodeState>) {
    let fabric = Fabric::default();
    let mut ticks = tokio::time::interval(SHIPPED_EVERY);
    loop {
        ticks.tick().await;
        if let Some(Err(error)) = state.takeovers.get().map(|journal| journal.trim(&state.xdr)) {
            tracing::warn!(%error, "shipped takeovers not dropped from the journal");
        }
        let registry = &state.xdr;
        let links = registry
            .dcs()
            .into_iter()
            .filter_map(|dc| {
                let through = registry.get(&dc)?.shipped_through();
                (through > 0).then_some((dc, through))
            })
            .collect();
        let shipped = Shipped { from: state.this_node().id.to_string(), links };
        let Ok(payload) = serde_json::to_vec(&shipped) else { continue };
        let request = fabric::frame(Kind::Shipped, &payload);
        for peer in state.cluster().live_peers() {
            if let Err(error) =
                fabric.exchange(state.fabric_addr(peer), &request, SHIPPED_EVERY).await
            {
                tracing::trace!(peer = %peer.id, %error, "shipping watermark not delivered");
            }
        }
    }
}

/// The partitions this node masters in `after` and did not in `before`, per link out of this
/// site: each to be re-shipped since its previous master's watermark for the link.
fn takeovers(
    state: &NodeState,
    before: &ClusterView,
    after: &ClusterView,
) -> BTreeMap<String, Vec<ferry_xdr::stats::Takeover>> {
    let me = &state.this_node().id;
    let heard = state.shipped.lock().map(|heard| heard.clone()).unwrap_or_default();
    let mut by_dc: BTreeMap<String, Vec<ferry_xdr::stats::Takeover>> = BTreeMap::new();
    let dcs = state.xdr.dcs();
    for ns in &state.site().namespaces {
        let ns = ns.name.as_str();
        for partition in 0..PARTITIONS {
            let (Some(was), Some(now)) =
                (before.copies(ns, partition), after.copies(ns, partition))
            else {
                continue;
            };
            if now.master() != me || was.master() == me {
                continue;
            }
            let previous = heard.get(was.master().as_str());
            for dc in &dcs {
                let watermark = previous.and_then(|p| p.links.get(dc)).copied().unwrap_or(0);
                by_dc.entry(dc.clone()).or_default().push(ferry_xdr::stats::Takeover {
                    namespace: ns.to_owned(),
                    partition,
                    since_lut_ms: watermark.saturating_sub(TAKEOVER_SLACK_MS),
                });
            }
        }
    }
    by_dc
}

impl NodeState {
    /// A peer's shipping watermarks arrived.
    pub(crate) fn heard_shipped(&self, payload: &[u8]) {
        match serde_json::from_slice::<Shipped>(payload) {
            Ok(shipped) => {
                if let Ok(mut heard) = self.shipped.lock() {
                    heard.insert(shipped.from.clone(), shipped);
                }
            }
            Err(error) => tracing::warn!(%error, "undecodable shipping watermark"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Arc<Topology> {
        let parsed = ferry_topology::parse_topology(
            "two-sites.toml",
            include_str!("../../examples/two-sites.toml"),
        );
        Arc::new(parsed.expect("valid").topology)
    }

    fn view(topology: &Topology, node: &str, membership: &SiteMembership) -> ClusterView {
        ClusterView::at(topology, "us-east", node, membership).expect("view")
    }

    /// Fills every partition being filled, as the masters' migrations would.
    fn fill_all(planner: &SitePlanner, membership: &mut SiteMembership) {
        let topology = planner.topology.get();
        let any = view(&topology, "use-a", membership);
        let mut by_node: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for p in 0..PARTITIONS {
            for node in &any.copies("test", p).expect("copies").filling {
                by_node.entry(node.to_string()).or_default().push(p);
            }
        }
        for (node, partitions) in by_node {
            let since = membership.epoch;
            let intent = Intent::Filled { node, namespace: "test".into(), partitions, since };
            let change = planner.plan(membership, &intent).expect("a change");
            assert!(membership.apply(&change));
        }
    }

    #[test]
    fn a_loss_then_a_return_fill_every_placed_copy_and_end_balanced() {
        let topology = example();
        let shared = SharedTopology::new(Arc::clone(&topology));
        let planner = SitePlanner { topology: shared, site: "us-east".into() };
        let mut membership = SiteMembership::default();
        let initial = view(&topology, "use-c", &membership);
        let c_copies = (0..PARTITIONS)
            .filter(|&p| {
                initial
                    .copies("test", p)
                    .expect("copies")
                    .full
                    .iter()
                    .any(|n| n.as_str() == "use-c")
            })
            .count();

        let remove = Intent::Remove { node: "use-c".into() };
        let change = planner.plan(&membership, &remove).expect("a change");
        assert!(membership.apply(&change));
        let lost = view(&topology, "use-a", &membership);
        assert_eq!(lost.filling_partitions("test"), c_copies, "every copy use-c held is refilled");
        fill_all(&planner, &mut membership);
        assert!(membership.holders.is_empty());

        let readmit = Intent::Readmit { node: "use-c".into() };
        let change = planner.plan(&membership, &readmit).expect("a change");
        assert!(membership.apply(&change));
        let back = view(&topology, "use-c", &membership);
        assert_eq!(back.owned_partitions("test"), 0, "use-c holds nothing yet");
        assert_eq!(back.filling_partitions("test"), c_copies, "use-c is filled wherever placed");
        fill_all(&planner, &mut membership);
        assert!(membership.holders.is_empty());
        let settled = view(&topology, "use-c", &membership);
        assert_eq!(settled.owned_partitions("test"), initial.owned_partitions("test"));
    }
}
