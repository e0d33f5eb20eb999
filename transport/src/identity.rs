//! Who a peer is: the (site, node) a verified certificate names, and the authorization hook.
//!
//! A node certificate carries its identity as a SAN URI `ferry://site/<site>/node/<node>` (the
//! authoritative name) and a DNS name `<node>.<site>.ferry` (the TLS server name a dialer asks
//! for). Verification maps a certificate that chains to its site's CA to a [`PeerIdentity`];
//! a [`PeerAuthorizer`] then decides whether that peer may talk to this node at all — the XDR
//! layer plugs in its "has a DR link into this site" rule.
//!
//! The names are the transport's own ([`SiteName`], [`NodeId`]): whatever names sites and
//! nodes elsewhere converts into them, so this crate needs nothing from the topology.

use std::fmt;

/// The URI scheme and prefix of a node identity.
const URI_PREFIX: &str = "ferry://site/";
/// The DNS suffix of node server names.
const DNS_SUFFIX: &str = "ferry";

/// Longest site or node name: a DNS label.
const MAX_NAME: usize = 63;

/// A name that is not usable in a certificate identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} '{value}' is not 1 to {MAX_NAME} bytes of letters, digits, '-' and '_'")]
pub struct InvalidName {
    what: &'static str,
    value: String,
}

fn check_name(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let valid = !value.is_empty()
        && value.len() <= MAX_NAME
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid { Ok(()) } else { Err(InvalidName { what, value: value.to_owned() }) }
}

macro_rules! identity_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;
            fn try_from(value: &str) -> Result<Self, InvalidName> {
                check_name($what, value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identity_name!(
    /// A site as certificates name it: 1..=63 bytes of `[A-Za-z0-9_-]`.
    SiteName,
    "site name"
);
identity_name!(
    /// A node as certificates name it: 1..=63 bytes of `[A-Za-z0-9_-]`.
    NodeId,
    "node id"
);

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

    /// The identity of the node named `node` in the site named `site`.
    pub fn named(site: &str, node: &str) -> Result<PeerIdentity, InvalidName> {
        Ok(PeerIdentity { site: SiteName::try_from(site)?, node: NodeId::try_from(node)? })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(site: &str, node: &str) -> PeerIdentity {
        PeerIdentity::named(site, node).expect("valid names")
    }

    #[test]
    fn names_fit_a_uri_segment_and_a_dns_label() {
        assert!(SiteName::try_from("eu-west_2").is_ok());
        for bad in ["", "eu west", "eu/west", "ü", &"x".repeat(64)] {
            assert!(SiteName::try_from(bad).is_err(), "{bad:?}");
        }
        assert!(NodeId::try_from(&*"n".repeat(63)).is_ok());
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
