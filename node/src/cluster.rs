//! A node's view of its site at one membership epoch: who holds and who masters each
//! partition, and the info answers clients route by (`replicas`, `peers-clear-std`,
//! `rack-ids` and their generations).
//!
//! The view is a pure function of the topology and the committed [`SiteMembership`], so every
//! node derives the same one for an epoch. Per partition:
//! - the **placement** is the rack-aware map over the live nodes;
//! - the **holders** are the nodes with a full copy: the placement's nodes unless the
//!   membership says otherwise (after a loss, until migrations fill the new places);
//! - the **acting master** is the placement's first holder, else any holder, else (every copy
//!   lost) the placement's master;
//! - writes go to the master and every other holder and placement node (those without a full
//!   copy are being **filled**: they take writes, not reads).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use ferry_membership::SiteMembership;
use ferry_topology::Topology;
use ferry_topology::model::{Node, NodeId, Site};
use ferry_topology::placement::{PARTITIONS, PartitionMap, PlacementError};

/// Why a node cannot take its place in the site.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("site '{0}' is not in the topology")]
    UnknownSite(String),
    #[error("node '{node}' is not in site '{site}'; known: {known}")]
    UnknownNode { site: String, node: String, known: String },
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// The copies of one partition at an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCopies {
    /// Nodes with a full copy, the acting master first.
    pub full: Vec<NodeId>,
    /// Placement nodes still being filled: they take writes, not reads.
    pub filling: Vec<NodeId>,
}

impl PartitionCopies {
    /// The acting master.
    pub fn master(&self) -> &NodeId {
        &self.full[0]
    }

    /// Every node a write must reach besides the master.
    pub fn write_replicas(&self) -> impl Iterator<Item = &NodeId> {
        self.full[1..].iter().chain(&self.filling)
    }

    /// The copies of `partition` given its placement and the membership's holders for it.
    pub fn derive(placement: &PartitionMap, holders: Option<&Vec<String>>, partition: u16) -> Self {
        let listed: Vec<&NodeId> = placement.replicas(partition).collect();
        let Some(holders) = holders else {
            return Self { full: listed.into_iter().cloned().collect(), filling: Vec::new() };
        };
        let holds = |node: &NodeId| holders.iter().any(|h| h == node.as_str());
        let mut full: Vec<NodeId> =
            listed.iter().filter(|n| holds(n)).map(|&n| n.clone()).collect();
        // Holders outside the placement keep taking writes (so they stay full) until the
        // placement's own nodes are filled.
        for holder in holders {
            if !full.iter().any(|n| n.as_str() == holder)
                && let Ok(node) = NodeId::try_from(holder.as_str())
            {
                full.push(node);
            }
        }
        if full.is_empty() {
            // Every copy was lost: the placement's master starts the partition empty.
            full.push(listed[0].clone());
        }
        let filling = listed.into_iter().filter(|n| !full.contains(n)).cloned().collect();
        Self { full, filling }
    }
}

/// The copies of every partition of one namespace.
#[derive(Debug, Clone)]
struct NamespaceCopies {
    /// Copies per partition as placement asks (`replication-factor`, at most the live nodes).
    copies: usize,
    partitions: Vec<PartitionCopies>,
}

/// The site as one node sees it at one epoch.
#[derive(Debug, Clone)]
pub struct ClusterView {
    site: Site,
    node: Node,
    membership: SiteMembership,
    namespaces: BTreeMap<String, NamespaceCopies>,
}

impl ClusterView {
    /// The view of `node` in `site` before any membership change: every node live, every copy
    /// where placement puts it.
    pub fn new(topology: &Topology, site: &str, node: &str) -> Result<Self, ClusterError> {
        Self::at(topology, site, node, &SiteMembership::default())
    }

    /// The view of `node` in `site` under a committed membership.
    pub fn at(
        topology: &Topology,
        site: &str,
        node: &str,
        membership: &SiteMembership,
    ) -> Result<Self, ClusterError> {
        let site_def =
            topology.site(site).ok_or_else(|| ClusterError::UnknownSite(site.to_owned()))?;
        let node_def = site_def.nodes.iter().find(|n| n.id == *node).ok_or_else(|| {
            ClusterError::UnknownNode {
                site: site.to_owned(),
                node: node.to_owned(),
                known: site_def.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", "),
            }
        })?;
        let mut namespaces = BTreeMap::new();
        for ns in &site_def.namespaces {
            let name = ns.name.as_str();
            let placement = placement(topology, site, name, membership)?;
            let holders = membership.holders.get(name);
            let partitions = (0..PARTITIONS)
                .map(|p| PartitionCopies::derive(&placement, holders.and_then(|h| h.get(&p)), p))
                .collect();
            namespaces.insert(
                name.to_owned(),
                NamespaceCopies { copies: placement.copies(), partitions },
            );
        }
        Ok(Self {
            site: site_def.clone(),
            node: node_def.clone(),
            membership: membership.clone(),
            namespaces,
        })
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// This site.
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// The committed membership this view derives from.
    pub fn membership(&self) -> &SiteMembership {
        &self.membership
    }

    /// The membership epoch of this view.
    pub fn epoch(&self) -> u64 {
        self.membership.epoch
    }

    /// The copies of a partition of a namespace.
    pub fn copies(&self, ns: &str, partition: u16) -> Option<&PartitionCopies> {
        self.namespaces.get(ns)?.partitions.get(usize::from(partition))
    }

    /// A node of this site by id.
    pub fn site_node(&self, id: &NodeId) -> Option<&Node> {
        self.site.nodes.iter().find(|n| n.id == *id)
    }

    /// The node that masters a partition of a namespace.
    pub fn master(&self, ns: &str, partition: u16) -> Option<&Node> {
        self.site_node(self.copies(ns, partition)?.master())
    }

    /// Whether this node masters the partition.
    pub fn is_master(&self, ns: &str, partition: u16) -> bool {
        self.copies(ns, partition).is_some_and(|c| *c.master() == self.node.id)
    }

    /// Partitions of a namespace this node masters.
    pub fn owned_partitions(&self, ns: &str) -> usize {
        self.namespaces
            .get(ns)
            .map_or(0, |n| n.partitions.iter().filter(|c| *c.master() == self.node.id).count())
    }

    /// Partitions of a namespace some placement node still waits to be filled for.
    pub fn filling_partitions(&self, ns: &str) -> usize {
        self.namespaces
            .get(ns)
            .map_or(0, |n| n.partitions.iter().filter(|c| !c.filling.is_empty()).count())
    }

    /// Partitions (over every namespace) this node masters and still has to fill others
    /// with, and partitions it is itself being filled for: Aerospike's
    /// `migrate_tx_partitions_remaining` and `migrate_rx_partitions_remaining`.
    pub fn migrations_remaining(&self) -> (usize, usize) {
        let me = &self.node.id;
        let partitions = self.namespaces.values().flat_map(|n| &n.partitions);
        partitions.fold((0, 0), |(tx, rx), c| {
            let sends = c.master() == me && !c.filling.is_empty();
            (tx + usize::from(sends), rx + usize::from(c.filling.contains(me)))
        })
    }

    /// Nodes of the site in the committed membership (this one included).
    pub fn cluster_size(&self) -> usize {
        self.site.nodes.iter().filter(|n| self.membership.is_live(n.id.as_str())).count()
    }

    /// Changes with every epoch, so clients refetch `replicas`.
    pub fn partition_generation(&self) -> u64 {
        self.membership.epoch
    }

    /// Changes with every epoch, so clients refetch the peer list.
    pub fn peers_generation(&self) -> u64 {
        self.membership.epoch
    }

    /// `replicas`: per namespace `ns:0,copies,bitmap…`, one MSB-first base64 bitmap per
    /// replica row of the partitions this node serves in that row (full copies only, master
    /// row first); no trailing `;`.
    pub fn replicas(&self) -> String {
        let mut entries = Vec::with_capacity(self.namespaces.len());
        for (ns, copies) in &self.namespaces {
            let mut entry = format!("{ns}:0,{}", copies.copies);
            for row in 0..copies.copies {
                let mut bitmap = [0u8; PARTITIONS as usize / 8];
                for (p, partition) in (0..PARTITIONS).zip(&copies.partitions) {
                    if partition.full.get(row) == Some(&self.node.id) {
                        bitmap[usize::from(p >> 3)] |= 0x80 >> (p & 7);
                    }
                }
                entry.push(',');
                entry.push_str(&base64::engine::general_purpose::STANDARD.encode(bitmap));
            }
            entries.push(entry);
        }
        entries.join(";")
    }

    /// The other live nodes of the site.
    pub fn live_peers(&self) -> impl Iterator<Item = &Node> {
        self.site
            .nodes
            .iter()
            .filter(|n| n.id != self.node.id && self.membership.is_live(n.id.as_str()))
    }

    /// `peers-clear-std`: `generation,default-port,[[name,,[addr:port]],…]` for the other live
    /// nodes.
    pub fn peers(&self) -> String {
        let mut out = format!("{},{},[", self.peers_generation(), self.node.client.addr().port());
        for (i, peer) in self.live_peers().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let addr = peer.client.addr();
            let host = match addr {
                std::net::SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
                std::net::SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
            };
            let _ = write!(out, "[{},,[{host}]]", peer.id);
        }
        out.push(']');
        out
    }

    /// `rack-ids`: `ns:rack;…`.
    pub fn rack_ids(&self) -> String {
        self.namespaces
            .keys()
            .map(|ns| format!("{ns}:{}", self.node.rack_id))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The placement of a namespace over the membership's live nodes.
pub fn placement(
    topology: &Topology,
    site: &str,
    namespace: &str,
    membership: &SiteMembership,
) -> Result<PartitionMap, PlacementError> {
    PartitionMap::for_live_nodes(topology, site, namespace, |node| membership.is_live(node))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn example() -> Topology {
        ferry_topology::parse_topology(
            "two-sites.toml",
            include_str!("../../examples/two-sites.toml"),
        )
        .expect("valid")
        .topology
    }

    const NODES: [&str; 3] = ["use-a", "use-b", "use-c"];

    fn views(membership: &SiteMembership) -> Vec<ClusterView> {
        NODES
            .iter()
            .map(|n| ClusterView::at(&example(), "us-east", n, membership).expect("view"))
            .collect()
    }

    #[test]
    fn masters_of_all_nodes_cover_every_partition_once() {
        let views = views(&SiteMembership::default());
        for p in 0..PARTITIONS {
            assert_eq!(views.iter().filter(|v| v.is_master("test", p)).count(), 1, "partition {p}");
            let copies = views[0].copies("test", p).expect("copies");
            assert_eq!(copies.full.len(), 2, "RF 2");
            assert!(copies.filling.is_empty());
        }
        let total: usize = views.iter().map(|v| v.owned_partitions("test")).sum();
        assert_eq!(total, usize::from(PARTITIONS));
    }

    #[test]
    fn a_lost_master_is_replaced_by_a_node_that_holds_the_data() {
        let before = views(&SiteMembership::default());
        // As the planner commits a loss: use-c out, the surviving copies hold the data.
        let mut membership = SiteMembership {
            epoch: 2,
            down: BTreeSet::from(["use-c".to_owned()]),
            ..SiteMembership::default()
        };
        let after_placement = placement(&example(), "us-east", "test", &membership).expect("map");
        let mut holders = BTreeMap::new();
        for p in 0..PARTITIONS {
            let survivors: Vec<String> = before[0]
                .copies("test", p)
                .expect("copies")
                .full
                .iter()
                .filter(|n| n.as_str() != "use-c")
                .map(|n| n.to_string())
                .collect();
            let placed: BTreeSet<String> =
                after_placement.replicas(p).map(|n| n.to_string()).collect();
            if survivors.iter().cloned().collect::<BTreeSet<_>>() != placed {
                holders.insert(p, survivors);
            }
        }
        membership.holders.insert("test".into(), holders);
        let after = views(&membership);
        for p in 0..PARTITIONS {
            let old = before[0].copies("test", p).expect("copies");
            let new = after[0].copies("test", p).expect("copies");
            assert_ne!(new.master().as_str(), "use-c");
            assert!(
                old.full.contains(new.master()),
                "partition {p}: master {} had no copy",
                new.master()
            );
            assert_eq!(after.iter().filter(|v| v.is_master("test", p)).count(), 1);
        }
        assert!(after[0].filling_partitions("test") > 0, "the lost copies are being refilled");
        assert_eq!(after[0].partition_generation(), 2);
        assert_eq!(after[0].peers(), "2,3000,[[use-b,,[127.0.0.1:3010]]]", "use-c left the peers");
    }

    #[test]
    fn replicas_bitmaps_are_684_chars_msb_first_without_trailing_semicolon() {
        let topology = example();
        let view = ClusterView::new(&topology, "us-east", "use-a").expect("view");
        let replicas = view.replicas();
        assert!(!replicas.ends_with(';'));
        let (ns, rest) = replicas.split_once(':').expect("ns:");
        assert_eq!(ns, "test");
        let parts: Vec<&str> = rest.split(',').collect();
        assert_eq!(&parts[..2], ["0", "2"]);
        assert_eq!(parts.len(), 4);
        let master = base64::engine::general_purpose::STANDARD.decode(parts[2]).expect("base64");
        assert_eq!(parts[2].len(), 684);
        for p in 0..PARTITIONS {
            let bit = master[usize::from(p >> 3)] & (0x80 >> (p & 7)) != 0;
            assert_eq!(bit, view.is_master("test", p), "partition {p}");
        }
    }

    #[test]
    fn peers_list_the_other_nodes() {
        let view = ClusterView::new(&example(), "us-east", "use-a").expect("view");
        assert_eq!(view.peers(), "1,3000,[[use-b,,[127.0.0.1:3010]],[use-c,,[127.0.0.1:3020]]]");
        assert_eq!(view.rack_ids(), "test:1");
        assert!(matches!(
            ClusterView::new(&example(), "us-east", "nope"),
            Err(ClusterError::UnknownNode { .. })
        ));
    }
}
