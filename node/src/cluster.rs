//! A node's view of its site: who owns which partition, and the info answers clients use to
//! route (`replicas`, `peers-clear-std`, `rack-ids` and their generations).
//!
//! The view is derived from the topology alone (every node computes the same partition maps);
//! membership changes through the site's consensus group come with the site-cluster work.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use ferry_topology::Topology;
use ferry_topology::model::{Node, Site};
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

/// The site as one node sees it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    site: Site,
    node: Node,
    maps: BTreeMap<String, PartitionMap>,
    /// Bumped whenever this node's claims in `replicas` change.
    partition_generation: u64,
    /// Bumped whenever the peer list changes.
    peers_generation: u64,
}

impl ClusterView {
    /// The view of `node` in `site`.
    pub fn new(topology: &Topology, site: &str, node: &str) -> Result<Self, ClusterError> {
        let site_def =
            topology.site(site).ok_or_else(|| ClusterError::UnknownSite(site.to_owned()))?;
        let node_def = site_def.nodes.iter().find(|n| n.id == *node).ok_or_else(|| {
            ClusterError::UnknownNode {
                site: site.to_owned(),
                node: node.to_owned(),
                known: site_def.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", "),
            }
        })?;
        let mut maps = BTreeMap::new();
        for ns in &site_def.namespaces {
            maps.insert(
                ns.name.to_string(),
                PartitionMap::for_namespace(topology, site, ns.name.as_str())?,
            );
        }
        Ok(Self {
            site: site_def.clone(),
            node: node_def.clone(),
            maps,
            partition_generation: 1,
            peers_generation: 1,
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

    /// The partition map of a namespace.
    pub fn map(&self, ns: &str) -> Option<&PartitionMap> {
        self.maps.get(ns)
    }

    /// The node that masters a partition of a namespace.
    pub fn master(&self, ns: &str, partition: u16) -> Option<&Node> {
        let id = self.maps.get(ns)?.master(partition);
        self.site.nodes.iter().find(|n| &n.id == id)
    }

    /// Whether this node masters the partition.
    pub fn is_master(&self, ns: &str, partition: u16) -> bool {
        self.maps.get(ns).is_some_and(|m| *m.master(partition) == self.node.id)
    }

    /// Partitions of a namespace this node masters.
    pub fn owned_partitions(&self, ns: &str) -> usize {
        self.maps
            .get(ns)
            .map_or(0, |m| (0..PARTITIONS).filter(|&p| *m.master(p) == self.node.id).count())
    }

    pub fn partition_generation(&self) -> u64 {
        self.partition_generation
    }

    pub fn peers_generation(&self) -> u64 {
        self.peers_generation
    }

    /// `replicas`: per namespace `ns:0,copies,bitmap…`, one MSB-first base64 bitmap of the
    /// partitions this node holds per replica row; no trailing `;`.
    pub fn replicas(&self) -> String {
        let mut entries = Vec::with_capacity(self.maps.len());
        for (ns, map) in &self.maps {
            let mut entry = format!("{ns}:0,{}", map.copies());
            for row in 0..map.copies() {
                let mut bitmap = [0u8; PARTITIONS as usize / 8];
                for p in 0..PARTITIONS {
                    if map.replicas(p).nth(row) == Some(&self.node.id) {
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

    /// `peers-clear-std`: `generation,default-port,[[name,,[addr:port]],…]` for the other nodes.
    pub fn peers(&self) -> String {
        let mut out = format!("{},{},[", self.peers_generation, self.node.client.addr().port());
        let mut first = true;
        for peer in self.site.nodes.iter().filter(|n| n.id != self.node.id) {
            if !first {
                out.push(',');
            }
            first = false;
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
        self.maps
            .keys()
            .map(|ns| format!("{ns}:{}", self.node.rack_id))
            .collect::<Vec<_>>()
            .join(";")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Topology {
        ferry_topology::parse_topology(
            "two-sites.toml",
            include_str!("../../examples/two-sites.toml"),
        )
        .expect("valid")
        .topology
    }

    #[test]
    fn masters_of_all_nodes_cover_every_partition_once() {
        let topology = example();
        let views: Vec<ClusterView> = ["use-a", "use-b", "use-c"]
            .iter()
            .map(|n| ClusterView::new(&topology, "us-east", n).expect("view"))
            .collect();
        for p in 0..PARTITIONS {
            assert_eq!(views.iter().filter(|v| v.is_master("test", p)).count(), 1, "partition {p}");
        }
        let total: usize = views.iter().map(|v| v.owned_partitions("test")).sum();
        assert_eq!(total, usize::from(PARTITIONS));
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
