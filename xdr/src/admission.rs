//! DR-link admission: which peers may open a QUIC connection to a node, and the topology's
//! sites and nodes as the transport names them. The transport knows nothing of the topology;
//! this is the glue between the two.

use std::net::IpAddr;

use ferry_topology::model::{NodeId, SiteName};
use ferry_topology::{SharedTopology, Topology};
use ferry_transport::{InvalidName, NodeMember, PeerAuthorizer, PeerIdentity, SiteMembers};

/// The transport identity of node `node` of site `site`.
pub fn peer_identity(site: &SiteName, node: &NodeId) -> Result<PeerIdentity, InvalidName> {
    PeerIdentity::named(site.as_str(), node.as_str())
}

/// Every site of `topology` with its nodes and the addresses their certificates must name:
/// what certificates are issued for and what a node's trust store admits.
pub fn site_members(topology: &Topology) -> Result<Vec<SiteMembers>, InvalidName> {
    topology
        .sites
        .iter()
        .map(|site| {
            let nodes = site
                .nodes
                .iter()
                .map(|node| {
                    let ips: Vec<IpAddr> = [node.xdr, node.client, node.fabric, node.admin]
                        .iter()
                        .map(|e| e.addr().ip())
                        .collect();
                    Ok(NodeMember { id: ferry_transport::NodeId::try_from(node.id.as_str())?, ips })
                })
                .collect::<Result<_, InvalidName>>()?;
            Ok(SiteMembers {
                site: ferry_transport::SiteName::try_from(site.name.as_str())?,
                nodes,
            })
        })
        .collect()
}

/// Admits peers of `local_site` itself (a node forwards shipped records to the node of its
/// site that owns them) and peers whose site has a DR link (enabled or not) into `local_site`.
///
/// Disabled links are admitted because a failover enables them without restarting endpoints;
/// the receiver refuses batches on a disabled link itself.
#[derive(Debug, Clone)]
pub struct LinkAuthorizer {
    topology: SharedTopology,
    local_site: SiteName,
}

impl LinkAuthorizer {
    /// The link rule of the current `topology` (followed as it changes) for inbound
    /// connections to `local_site`.
    pub fn new(topology: SharedTopology, local_site: SiteName) -> LinkAuthorizer {
        LinkAuthorizer { topology, local_site }
    }
}

impl PeerAuthorizer for LinkAuthorizer {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        let peer_site = peer.site.as_str();
        let linked = peer_site == self.local_site.as_str()
            || self
                .topology
                .get()
                .links
                .iter()
                .any(|link| link.from.as_str() == peer_site && link.to == self.local_site);
        if linked { Ok(()) } else { Err(format!("has no link into '{}'", self.local_site)) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferry_tests::{AddressKind, Link, Role, Site, TopologyBuilder};

    use super::*;

    /// Sites `a`, `b` and `c` of one node each (`a0`, `b0`, `c0`, admin API on 127.0.0.2),
    /// namespace `test`, and a link `a -> b`.
    fn topology() -> Topology {
        let builder = ["a", "b", "c"].into_iter().fold(TopologyBuilder::new("ferry"), |b, site| {
            b.add_site(Site::new(site, 1).node_ids(&[&format!("{site}0")]).role(Role::Active))
        });
        let text = builder
            .link(Link::new("a", "b"))
            .ports_from(4000)
            .ip(AddressKind::Admin, [127, 0, 0, 2])
            .build()
            .text;
        ferry_topology::parse_topology("t.toml", &text).expect("valid").topology
    }

    #[test]
    fn only_the_own_site_and_linked_sites_are_admitted() {
        let topology = SharedTopology::new(Arc::new(topology()));
        let at_b = LinkAuthorizer::new(topology, SiteName::try_from("b").expect("site"));
        let peer = |site: &str| PeerIdentity::named(site, "n").expect("identity");
        assert_eq!(at_b.authorize(&peer("a")), Ok(()));
        assert_eq!(at_b.authorize(&peer("b")), Ok(()));
        assert_eq!(at_b.authorize(&peer("c")), Err("has no link into 'b'".to_owned()));
    }

    #[test]
    fn members_carry_every_address_of_each_node() {
        let members = site_members(&topology()).expect("names fit");
        assert_eq!(members.len(), 3);
        assert_eq!(members[1].site.as_str(), "b");
        assert_eq!(members[1].nodes[0].id.as_str(), "b0");
        let ips = &members[1].nodes[0].ips;
        assert!(ips.contains(&"127.0.0.1".parse().expect("ip")));
        assert!(ips.contains(&"127.0.0.2".parse().expect("ip")), "the admin address too");
    }
}
