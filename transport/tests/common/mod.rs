//! Shared fixtures: three sites, in-memory CAs and endpoints on loopback port 0.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_transport::certs::{CertificateAuthority, Validity};
use ferry_transport::{
    AllowAll, Endpoint, Frame, FrameType, Handler, HandlerError, NodeCredentials, NodeId,
    NodeMember, PeerAuthorizer, PeerIdentity, RequestContext, SiteMembers, SiteName,
    TransportSettings, TrustStore,
};

/// Three sites of one node each.
pub const SITES: [(&str, &str); 3] =
    [("us-east", "use-a"), ("eu-west", "euw_a"), ("ap-south", "aps-a")];

/// DR links `from -> to` between them.
pub const LINKS: [(&str, &str); 3] =
    [("us-east", "eu-west"), ("eu-west", "us-east"), ("us-east", "ap-south")];

/// Admits the node's own site and sites with a link into it (the XDR layer's rule, restated
/// over [`LINKS`] so these tests need no topology).
#[derive(Debug)]
pub struct Linked {
    local: String,
}

impl PeerAuthorizer for Linked {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        let site = peer.site.as_str();
        let linked =
            site == self.local || LINKS.iter().any(|(from, to)| *from == site && *to == self.local);
        if linked { Ok(()) } else { Err(format!("has no link into '{}'", self.local)) }
    }
}

pub fn site(name: &str) -> SiteName {
    SiteName::try_from(name).expect("site name")
}

pub fn node(name: &str) -> NodeId {
    NodeId::try_from(name).expect("node id")
}

pub fn id(site_name: &str, node_name: &str) -> PeerIdentity {
    PeerIdentity::new(site(site_name), node(node_name))
}

/// The sites' members and one CA per site.
pub struct Pki {
    pub members: Vec<SiteMembers>,
    pub cas: BTreeMap<String, CertificateAuthority>,
}

impl Pki {
    pub fn new() -> Pki {
        let members: Vec<SiteMembers> = SITES
            .iter()
            .map(|(s, n)| SiteMembers {
                site: site(s),
                nodes: vec![NodeMember {
                    id: node(n),
                    ips: vec!["127.0.0.1".parse().expect("ip")],
                }],
            })
            .collect();
        let cas = members
            .iter()
            .map(|m| {
                let ca = CertificateAuthority::generate(&m.site, Validity::days_from_now(30))
                    .expect("CA");
                (m.site.to_string(), ca)
            })
            .collect();
        Pki { members, cas }
    }

    pub fn trust(&self) -> TrustStore {
        TrustStore::new(
            &self.members,
            self.cas.iter().map(|(s, ca)| (site(s), ca.cert_der().clone())),
        )
    }

    pub fn creds(&self, site_name: &str, node_name: &str) -> NodeCredentials {
        self.creds_valid(site_name, node_name, Validity::days_from_now(5))
    }

    pub fn creds_valid(
        &self,
        site_name: &str,
        node_name: &str,
        validity: Validity,
    ) -> NodeCredentials {
        let ip = "127.0.0.1".parse().expect("ip");
        self.cas[site_name].issue(&node(node_name), &[ip], validity).expect("issue")
    }

    /// An endpoint of `site/node` on 127.0.0.1:0 admitting sites with a link into it.
    pub fn endpoint(
        &self,
        site_name: &str,
        node_name: &str,
        settings: TransportSettings,
    ) -> Endpoint {
        let authorizer: Arc<dyn PeerAuthorizer> = Arc::new(Linked { local: site_name.to_owned() });
        self.endpoint_with(self.creds(site_name, node_name), authorizer, settings)
    }

    pub fn endpoint_with(
        &self,
        creds: NodeCredentials,
        authorizer: Arc<dyn PeerAuthorizer>,
        settings: TransportSettings,
    ) -> Endpoint {
        Endpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &creds,
            self.trust(),
            authorizer,
            settings,
        )
        .expect("bind endpoint")
    }

    pub fn open_endpoint(&self, site_name: &str, node_name: &str) -> Endpoint {
        self.endpoint_with(self.creds(site_name, node_name), Arc::new(AllowAll), fast_settings())
    }
}

/// Settings with short timeouts so failing tests fail fast.
pub fn fast_settings() -> TransportSettings {
    TransportSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        drain_timeout: Duration::from_secs(5),
        ..TransportSettings::default()
    }
}

pub const ECHO: u8 = 0x11;
pub const ECHO_REPLY: u8 = 0x12;
pub const FAIL: u8 = 0x13;
pub const SLOW: u8 = 0x14;

/// Echoes the payload; `FAIL` answers a retryable handler error; `SLOW` sleeps 300 ms first.
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    async fn handle(&self, _ctx: RequestContext, request: Frame) -> Result<Frame, HandlerError> {
        match request.frame_type.code() {
            FAIL => Err(HandlerError { retryable: true, message: "store busy".to_owned() }),
            SLOW => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(Frame::new(ty(ECHO_REPLY), request.payload))
            }
            _ => Ok(Frame::new(ty(ECHO_REPLY), request.payload)),
        }
    }
}

pub fn ty(code: u8) -> FrameType {
    FrameType::application(code).expect("application type")
}

/// A deterministic payload for message `i` of `len` bytes.
pub fn payload(i: u64, len: usize) -> Bytes {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn addr(endpoint: &Endpoint) -> SocketAddr {
    endpoint.local_addr().expect("local addr")
}
