//! Who a peer is: the (site, node) a verified certificate names, and the authorization hook.
//!
//! A node certificate carries its identity as a SAN URI `ferry://site/<site>/node/<node>` (the
//! authoritative name) and a DNS name `<node>.<site>.ferry` (the TLS server name a dialer asks
//! for). Verification maps a certificate that chains to its site's CA to a [`PeerIdentity`];
//! a [`PeerAuthorizer`] then decides whether that peer may talk to this node at all — the XDR
//! layer plugs in its "has a DR link into this site" rule, and [`LinkAuthorizer`] is that rule
//! read straight from the topology.

use std::fmt;

use ferry_topology::SharedTopology;
use ferry_topology::model::{NodeId, SiteName};

/// The URI scheme and prefix of a node identity.
const URI_PREFIX: &str = "ferry://site/";
/// The DNS suffix of node server names.
const DNS_SUFFIX: &str = "ferry";

/// The verified identity of a peer node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The peer's site.
    pub site: SiteName,
    /// The peer's node.
    pub node: NodeId,
}

impl PeerIdentity {
    /// The identity of `node` in `site`.
    pub fn new(site: SiteName, node: NodeId) -> PeerIdentity {
        PeerIdentity { site, node }
    }

    /// The SAN URI naming this identity: `ferry://site/<site>/node/<node>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/node/{}", self.site, self.node)
    }

    /// The DNS name used as TLS server name: `<node>.<site>.ferry`.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.{DNS_SUFFIX}", self.node, self.site)
    }

    /// Parses a SAN URI written by [`PeerIdentity::uri`]; `None` if it is not one.
    pub fn from_uri(uri: &str) -> Option<PeerIdentity> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (site, node) = rest.split_once("/node/")?;
        Some(PeerIdentity {
            site: SiteName::try_from(site).ok()?,
            node: NodeId::try_from(node).ok()?,
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node '{}' of site '{}'", self.node, self.site)
    }
}

/// Decides whether a verified peer may use this endpoint.
///
/// Called during the TLS handshake of every inbound connection, after the certificate chain
/// and the identity were verified. The error text completes the sentence
/// "certificate of ADDR names site 'S' which …", e.g. `has no link into 'us-east'`.
pub trait PeerAuthorizer: Send + Sync + fmt::Debug {
    /// `Ok` to admit the peer, `Err(reason)` to refuse it.
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String>;
}

/// Admits every peer whose certificate verified (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl PeerAuthorizer for AllowAll {
    fn authorize(&self, _peer: &PeerIdentity) -> Result<(), String> {
        Ok(())
    }
}

/// Admits peers of `local_site` itself (a node forwards shipped records to the node of its
/// site that owns them) and peers whose site has a DR link (enabled or not) into `local_site`.
///
/// Disabled links are admitted because a failover enables them without restarting endpoints;
/// the XDR layer refuses batches on a disabled link itself.
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
        let linked = peer.site == self.local_site
            || self
                .topology
                .get()
                .links
                .iter()
                .any(|link| link.from == peer.site && link.to == self.local_site);
        if linked { Ok(()) } else { Err(format!("has no link into '{}'", self.local_site)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(site: &str, node: &str) -> PeerIdentity {
        PeerIdentity::new(
            SiteName::try_from(site).expect("site"),
            NodeId::try_from(node).expect("node"),
        )
    }

    #[test]
    fn uri_round_trips() {
        let peer = id("eu-west", "euw_a");
        assert_eq!(peer.uri(), "ferry://site/eu-west/node/euw_a");
        assert_eq!(PeerIdentity::from_uri(&peer.uri()), Some(peer.clone()));
        assert_eq!(peer.dns_name(), "euw_a.eu-west.ferry");
    }

    #[test]
    fn foreign_uris_are_not_identities() {
        for uri in [
            "https://site/eu-west/node/a",
            "ferry://site/eu-west",
            "ferry://site/eu west/node/a",
            "ferry://site/eu-west/node/a/b",
            "ferry://site//node/a",
        ] {
            assert_eq!(PeerIdentity::from_uri(uri), None, "{uri}");
        }
    }
}
