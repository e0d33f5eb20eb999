//! The fabric: requests between the nodes of a site over pooled TCP connections in Aerospike's
//! proto framing. Forwarded client requests travel as AS_MSG (type 3) and info (type 1);
//! Ferry's own site traffic travels as [`TYPE_FABRIC`] frames whose body starts with a
//! [`Kind`] byte: the membership group's messages, replica writes, migrations and shipping watermarks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::node::NodeState;
use crate::proto::{FrameError, ProtoHeader, TYPE_FABRIC};

/// What a fabric frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A message of the site's membership group.
    Membership = 1,
    /// A change the partition's master sends to another copy.
    Replica = 2,
    /// How far each of a node's links has shipped (for takeovers).
    Shipped = 3,
    /// Records of a partition pushed to a node being filled.
    Migrate = 4,
    /// Versions a node being filled held that the push did not bring, sent to the master.
    Merge = 5,
}

impl Kind {
    fn of(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Kind::Membership),
            2 => Some(Kind::Replica),
            3 => Some(Kind::Shipped),
            4 => Some(Kind::Migrate),
            5 => Some(Kind::Merge),
            _ => None,
        }
    }
}

/// A fabric frame of `kind` carrying `payload`.
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&ProtoHeader::encode(TYPE_FABRIC, payload.len() + 1));
    out.push(kind as u8);
    out.extend_from_slice(payload);
    out
}

/// The payload of a framed fabric reply of `kind`.
pub fn payload(reply: &[u8], kind: Kind) -> Result<&[u8], FrameError> {
    match reply.get(8..).and_then(<[u8]>::split_first) {
        Some((&got, payload)) if got == kind as u8 && reply[1] == TYPE_FABRIC => Ok(payload),
        _ => Err(FrameError::Malformed("fabric reply of the wrong kind")),
    }
}

/// Answers a fabric frame's body from a peer; the reply is framed.
pub async fn serve(state: &NodeState, body: &[u8]) -> Vec<u8> {
    let Some((&kind, request)) = body.split_first() else {
        return frame(Kind::Membership, b"");
    };
    match Kind::of(kind) {
        Some(Kind::Membership) => {
            let reply = match state.member.get() {
                Some(member) => member.handle(request).await,
                None => Vec::new(),
            };
            frame(Kind::Membership, &reply)
        }
        Some(Kind::Replica) => frame(Kind::Replica, &state.apply_replica(request).await),
        Some(Kind::Migrate) => frame(Kind::Migrate, &state.receive_migration(request).await),
        Some(Kind::Merge) => frame(Kind::Merge, &state.receive_merge(request).await),
        Some(Kind::Shipped) => {
            state.heard_shipped(request);
            frame(Kind::Shipped, b"")
        }
        None => {
            tracing::warn!(kind, "fabric frame of an unknown kind");
            frame(Kind::Replica, &crate::replica::refused())
        }
    }
}

/// Failure of a request to a peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    #[error("fabric request to {peer}: {source}")]
    Io { peer: SocketAddr, source: std::io::Error },
    #[error("fabric request to {peer}: bad reply: {source}")]
    Frame { peer: SocketAddr, source: FrameError },
    #[error("fabric request to {peer}: no reply within {timeout:?}")]
    Timeout { peer: SocketAddr, timeout: Duration },
}

/// Idle connections kept per peer.
const POOL_SIZE: usize = 16;

/// Pooled connections to peers' fabric listeners.
#[derive(Debug, Default)]
pub struct Fabric {
    pools: Mutex<HashMap<SocketAddr, Vec<TcpStream>>>,
}

impl Fabric {
    /// Sends a framed request to `peer` and returns its framed reply, all within `timeout`.
    pub async fn exchange(
        &self,
        peer: SocketAddr,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, ForwardError> {
        let pooled = self.pools.lock().ok().and_then(|mut pools| pools.get_mut(&peer)?.pop());
        // One deadline covers the connect too: a peer that is down but not refusing (a
        // blackholed address) must not hold the request past it.
        let exchange = async {
            let mut stream = match pooled {
                Some(stream) => stream,
                None => TcpStream::connect(peer).await.map_err(RoundTripError::Io)?,
            };
            round_trip(&mut stream, request).await.map(|reply| (stream, reply))
        };
        let (stream, reply) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout { peer, timeout })?
            .map_err(|e| match e {
                RoundTripError::Io(source) => ForwardError::Io { peer, source },
                RoundTripError::Frame(source) => ForwardError::Frame { peer, source },
            })?;
        if let Ok(mut pools) = self.pools.lock() {
            let pool = pools.entry(peer).or_default();
            if pool.len() < POOL_SIZE {
                pool.push(stream);
            }
        }
        Ok(reply)
    }
}

enum RoundTripError {
    Io(std::io::Error),
    Frame(FrameError),
}

async fn round_trip(stream: &mut TcpStream, request: &[u8]) -> Result<Vec<u8>, RoundTripError> {
    stream.write_all(request).await.map_err(RoundTripError::Io)?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.map_err(RoundTripError::Io)?;
    let parsed = ProtoHeader::parse(header).map_err(RoundTripError::Frame)?;
    let mut reply = Vec::with_capacity(8 + parsed.size as usize);
    reply.extend_from_slice(&header);
    reply.resize(8 + parsed.size as usize, 0);
    stream.read_exact(&mut reply[8..]).await.map_err(RoundTripError::Io)?;
    Ok(reply)
}

/// Where to reach `node`: its route when it has one (a relay or proxy), else its fabric address.
pub(crate) fn route(
    routes: &std::collections::BTreeMap<String, std::net::SocketAddr>,
    node: &ferry_topology::model::Node,
) -> std::net::SocketAddr {
    routes.get(node.id.as_str()).copied().unwrap_or_else(|| node.fabric.addr())
}
