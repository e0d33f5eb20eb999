//! Site-to-site transport: QUIC endpoints secured by mutual TLS, message framing, development
//! certificates and the userspace WAN relay used to make loopback behave like a WAN
//! (see DESIGN.md §2, §6–7 and docs/transport.md).
//!
//! - [`frame`]: the pure wire format of one message (version, type, length, payload).
//! - [`certs`]: per-site CAs and per-node certificates (`ferry certs init/show`), and the
//!   [`TrustStore`] / [`NodeCredentials`] an endpoint loads.
//! - [`identity`]: the [`PeerIdentity`] a verified certificate names (the transport's own
//!   [`SiteName`] and [`NodeId`]) and the [`PeerAuthorizer`] hook the XDR layer plugs its
//!   DR-link rule into.
//! - [`Endpoint`]: serve requests with a [`Handler`], call peers with a [`Client`] (reconnect
//!   with backoff and jitter), drain on [`Endpoint::shutdown`].
//! - [`TransportSettings`]: timeouts and windows sized for a 150 ms long fat pipe.
//! - [`relay`]: the WAN relay (delay, jitter, loss, rate, partition), controllable at runtime.
//!
//! Non-goals: 0-RTT and session resumption (every connection is fully verified), unordered
//! datagrams, certificate revocation (remove the node from the topology instead).

mod backoff;
pub mod certs;
mod config;
mod endpoint;
mod error;
pub mod frame;
pub mod identity;
pub mod relay;
mod tls;

pub use backoff::Backoff;
pub use certs::{
    CertError, CertsReport, CertsSummary, NodeCredentials, NodeMember, SiteMembers, TrustStore,
};
pub use config::{Congestion, TransportSettings, Windows};
pub use endpoint::{
    Client, ClientStatus, Endpoint, EndpointStats, Handler, HandlerError, RequestContext,
    ShutdownReport,
};
pub use error::{PeerRejection, TransportError};
pub use frame::{DEFAULT_MAX_PAYLOAD, Frame, FrameError, FrameType};
pub use identity::{AllowAll, InvalidName, NodeId, PeerAuthorizer, PeerIdentity, SiteName};
pub use tls::ALPN;
