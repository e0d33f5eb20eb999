//! Shared fixtures: a three-site topology, in-memory CAs and endpoints on loopback port 0.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_topology::model::{NodeId, SiteName};
use ferry_topology::{SharedTopology, Topology};
use ferry_transport::certs::{CertificateAuthority, Validity};
use ferry_transport::{
    AllowAll, Endpoint, Frame, FrameType, Handler, HandlerError, LinkAuthorizer, NodeCredentials,
    PeerAuthorizer, PeerIdentity, RequestContext, TransportSettings, TrustStore,
};

pub const TOPOLOGY: &str = r#"
name = "transport-tests"

[[sites]]
name = "us-east"
src-id = 1
role = "active"
[[sites.nodes]]
id = "use-a"
client = "127.0.0.1:3000"
fabric = "127.0.0.1:3001"
xdr = "127.0.0.1:3002"
admin = "127.0.0.1:3003"
[[sites.namespaces]]
name = "test"
replication-factor = 1

[[sites]]
name = "eu-west"
src-id = 2
role = "standby"
[[sites.nodes]]
id = "euw_a"
client = "127.0.0.1:4000"
fabric = "127.0.0.1:4001"
xdr = "127.0.0.1:4002"
admin = "127.0.0.1:4003"
[[sites.namespaces]]
name = "test"
replication-factor = 1

[[sites]]
name = "ap-south"
src-id = 3
role = "standby"
[[sites.nodes]]
id = "aps-a"
client = "127.0.0.1:5000"
fabric = "127.0.0.1:5001"
xdr = "127.0.0.1:5002"
admin = "127.0.0.1:5003"
[[sites.namespaces]]
name = "test"
replication-factor = 1

[[links]]
from = "us-east"
to = "eu-west"
namespaces = ["test"]

[[links]]
from = "eu-west"
to = "us-east"
namespaces = ["test"]

[[links]]
from = "us-east"
to = "ap-south"
namespaces = ["test"]
"#;

pub fn site(name: &str) -> SiteName {
    SiteName::try_from(name).expect("site name")
}

pub fn node(name: &str) -> NodeId {
    NodeId::try_from(name).expect("node id")
}

pub fn id(site_name: &str, node_name: &str) -> PeerIdentity {
    PeerIdentity::new(site(site_name), node(node_name))
}

/// The topology and one CA per site.
pub struct Pki {
    pub topology: Arc<Topology>,
    pub cas: BTreeMap<String, CertificateAuthority>,
}

impl Pki {
    pub fn new() -> Pki {
        let topology =
            ferry_topology::parse_topology("test.toml", TOPOLOGY).expect("topology").topology;
        let cas = topology
            .sites
            .iter()
            .map(|s| {
                let ca = CertificateAuthority::generate(&s.name, Validity::days_from_now(30))
                    .expect("CA");
                (s.name.to_string(), ca)
            })
            .collect();
        Pki { topology: Arc::new(topology), cas }
    }

    pub fn trust(&self) -> TrustStore {
        TrustStore::new(
            &self.topology,
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
        let authorizer: Arc<dyn PeerAuthorizer> = Arc::new(LinkAuthorizer::new(
            SharedTopology::new(self.topology.clone()),
            site(site_name),
        ));
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
