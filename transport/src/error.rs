//! Transport errors: what failed, with whom, and whether retrying can help.
//!
//! [`TransportError::is_retryable`] is the one question the XDR shipper asks: a retryable error
//! means the request may or may not have been applied and can be sent again (apply is
//! idempotent); a non-retryable one needs an operator (certificates, topology, a bug).

use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::FrameError;
use crate::identity::{PeerIdentity, SiteName};

/// Why a peer certificate was refused. Displays as a phrase after "certificate of ADDR".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerRejection {
    /// No `ferry://site/<site>/node/<node>` SAN URI.
    #[error("carries no ferry identity (a SAN URI ferry://site/<site>/node/<node>)")]
    NoIdentity,
    /// The claimed site is not in the topology, or this node has no CA for it.
    #[error("names site '{site}' which is not a site of the topology with a known CA")]
    UnknownSite { site: SiteName },
    /// The chain does not lead to the CA of the claimed site.
    #[error("names site '{site}' but is not signed by the CA of site '{site}'")]
    WrongCa { site: SiteName },
    /// The certificate's validity ended.
    #[error("of {identity} has expired{}", not_after.map(|t| format!(" (not after {t}s since the Unix epoch)")).unwrap_or_default())]
    Expired { identity: PeerIdentity, not_after: Option<u64> },
    /// The certificate's validity has not begun (check clocks).
    #[error("of {identity} is not valid yet; check the clocks of both hosts")]
    NotYetValid { identity: PeerIdentity },
    /// The site is known but the node is not in the topology.
    #[error("names {identity}, which the topology does not list")]
    UnknownNode { identity: PeerIdentity },
    /// The [`crate::PeerAuthorizer`] refused the site.
    #[error("names site '{site}' which {reason}")]
    Unauthorized { site: SiteName, reason: String },
    /// A dialed peer presented another identity than the one the dialer asked for.
    #[error("names {found}, but {expected} was dialed; check the topology addresses")]
    UnexpectedPeer { expected: PeerIdentity, found: PeerIdentity },
    /// Anything else rustls refused.
    #[error("{reason}")]
    Invalid { reason: String },
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// We refused the certificate of `peer`.
    #[error("certificate of {peer} {rejection}")]
    Rejected { peer: SocketAddr, rejection: Box<PeerRejection> },
    /// `peer` refused our certificate or our handshake.
    #[error("{peer} refused the connection: {reason}")]
    RefusedByPeer { peer: SocketAddr, reason: String },
    /// The handshake or a connection attempt failed for a reason that may pass.
    #[error("connect to {peer}: {reason}")]
    Connect { peer: SocketAddr, reason: String },
    /// A connection attempt failed recently; the next one is allowed after `retry_in`.
    #[error("{peer} is unreachable (next attempt in {} ms): {last_error}", retry_in.as_millis())]
    Backoff { peer: SocketAddr, retry_in: Duration, last_error: String },
    /// The connection broke while a request was in flight: it may or may not have been handled.
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost { peer: SocketAddr, reason: String },
    /// No response within the request timeout: it may or may not have been handled.
    #[error("request to {peer} timed out after {} ms", timeout.as_millis())]
    Timeout { peer: SocketAddr, timeout: Duration },
    /// The peer's handler answered with an error.
    #[error("{peer} answered with an error: {message}")]
    Remote { peer: SocketAddr, retryable: bool, message: String },
    /// The peer sent bytes that are not a valid frame, or we tried to send an invalid one.
    #[error("frame from/to {peer}: {source}")]
    Frame { peer: SocketAddr, source: FrameError },
    /// The endpoint is shutting down and takes no new requests.
    #[error("endpoint is shutting down")]
    ShuttingDown,
    /// Local TLS setup failed (bad key, bad CA).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A socket could not be bound or configured.
    #[error("{action}: {source}")]
    Io { action: String, source: std::io::Error },
}

impl TransportError {
    /// Whether sending the request again later can succeed without operator action.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::Backoff { .. }
            | TransportError::ConnectionLost { .. }
            | TransportError::Timeout { .. }
            | TransportError::ShuttingDown => true,
            TransportError::Remote { retryable, .. } => *retryable,
            TransportError::Rejected { .. }
            | TransportError::RefusedByPeer { .. }
            | TransportError::Frame { .. }
            | TransportError::Tls(_)
            | TransportError::Io { .. } => false,
        }
    }
}
