//! What one DR link ships and where: derived once from the topology (and again when it
//! changes). Pure: the filters decide per logged change and per record read, and the remote
//! partition maps say which destination node owns each record.

use std::collections::HashMap;
use std::net::SocketAddr;

use ferry_digestlog::Entry;
use ferry_topology::Topology;
use ferry_topology::model::{Link, NodeId};
use ferry_topology::placement::{PartitionMap, PlacementError, partition_of};

/// A namespace the link ships, with the remote site's map of it.
#[derive(Debug, Clone)]
pub struct ShippedNamespace {
    pub name: String,
    /// The digest log's id of the namespace.
    pub log_id: u32,
    /// The destination site's partition map.
    pub remote_map: PartitionMap,
}

/// A destination node: its identity and XDR address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationNode {
    pub id: NodeId,
    pub xdr: SocketAddr,
}

/// Everything the shipper of one link needs to know from the topology.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    /// The link as configured.
    pub link: Link,
    /// `src-id` of the shipping site (stamped on batches).
    pub local_site_id: u8,
    /// `src-id` of the destination: versions that came from there never ship back.
    pub remote_site_id: u8,
    pub namespaces: Vec<ShippedNamespace>,
    pub remote_nodes: HashMap<NodeId, DestinationNode>,
}

/// Why a link cannot be planned (the topology was validated, so this means it changed under us).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("link {from} -> {to}: site '{0}' is not in the topology", from = .1, to = .2)]
    UnknownSite(String, String, String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// Why a logged change or a record is not shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A namespace this link does not ship.
    Namespace,
    /// The version came from the destination (loop prevention).
    FromDestination,
    /// The version came from another site and the link does not `forward`.
    NotForwarded,
    /// A set filter (`ship-only-specified-sets`, `ship-set`, `ignore-set`).
    Set,
}

impl LinkPlan {
    /// The plan of `link` in `topology`.
    pub fn new(topology: &Topology, link: &Link) -> Result<LinkPlan, PlanError> {
        let site = |name: &str| {
            topology.site(name).ok_or_else(|| {
                PlanError::UnknownSite(name.to_owned(), link.from.to_string(), link.to.to_string())
            })
        };
        let (local, remote) = (site(link.from.as_str())?, site(link.to.as_str())?);
        let namespaces = link
            .namespaces
            .iter()
            .map(|ns| {
                Ok(ShippedNamespace {
                    name: ns.to_string(),
                    log_id: ferry_digestlog::namespace_id(ns.as_str()),
                    remote_map: PartitionMap::for_namespace(
                        topology,
                        remote.name.as_str(),
                        ns.as_str(),
                    )?,
                })
            })
            .collect::<Result<_, PlanError>>()?;
        let remote_nodes = remote
            .nodes
            .iter()
            .map(|n| (n.id.clone(), DestinationNode { id: n.id.clone(), xdr: n.xdr.addr() }))
            .collect();
        Ok(LinkPlan {
            link: link.clone(),
            local_site_id: local.src_id.get(),
            remote_site_id: remote.src_id.get(),
            namespaces,
            remote_nodes,
        })
    }

    /// The link's name in stats and commands: the destination site (Aerospike's `dc`).
    pub fn dc(&self) -> &str {
        self.link.to.as_str()
    }

    /// Decides on a logged change before reading the record: `Ok(namespace index)` to ship.
    pub fn admit_entry(&self, entry: &Entry) -> Result<usize, Skip> {
        let ns = self
            .namespaces
            .iter()
            .position(|ns| ns.log_id == entry.namespace)
            .ok_or(Skip::Namespace)?;
        // Deletes need no filter here: only client (durable) deletes are logged, and they always
        // ship; expirations are not logged yet, which is `ship-nsup-deletes = false`.
        self.admit_origin(entry.origin_site)?;
        Ok(ns)
    }

    /// Loop prevention on a version's origin site.
    pub fn admit_origin(&self, origin_site: u8) -> Result<(), Skip> {
        if origin_site == self.remote_site_id {
            Err(Skip::FromDestination)
        } else if origin_site != self.local_site_id && !self.link.forward {
            Err(Skip::NotForwarded)
        } else {
            Ok(())
        }
    }

    /// The set filters.
    pub fn admit_set(&self, set: &str) -> Result<(), Skip> {
        let listed = self.link.ship_set.iter().any(|s| s == set);
        let ignored = self.link.ignore_set.iter().any(|s| s == set);
        if ignored || (self.link.ship_only_specified_sets && !listed) {
            Err(Skip::Set)
        } else {
            Ok(())
        }
    }

    /// The destination node owning `digest` of namespace number `ns`.
    pub fn destination(&self, ns: usize, digest: &[u8; 20]) -> Option<&DestinationNode> {
        let map = &self.namespaces.get(ns)?.remote_map;
        self.remote_nodes.get(map.master(partition_of(digest)))
    }
}
