//! The group's messages between nodes and openraft's network over them. The node carries the
//! encoded messages on its fabric ([`Transport`]); this module only encodes, decodes and
//! dispatches them.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::state::Intent;
use crate::types::{Peer, TypeConfig};

/// Carries an encoded request to a peer (by node id) and brings back its encoded reply.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        peer: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, std::io::Error>> + Send;
}

/// A request between members.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// "I am alive", sent to every peer each heartbeat interval, with the sender's committed
    /// epoch.
    Heartbeat {
        from: String,
        epoch: u64,
    },
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// To the leader: plan and commit this.
    Propose(Intent),
}

/// The reply to a [`Request`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// The answer, with the responder's committed epoch, whether it has the sender out, and
    /// its placement fingerprint: an answer from a newer epoch, one that has the sender out,
    /// or one from a node placing partitions differently renews no lease.
    Heartbeat {
        from: String,
        epoch: u64,
        sender_down: bool,
        /// The responder's [`crate::Planner::fingerprint`] under its committed membership.
        fingerprint: u64,
        /// Whether the responder's raft state is past pristine (a group exists).
        #[serde(default)]
        initialized: bool,
        /// The responder's [`crate::Planner::roster`].
        #[serde(default)]
        roster: u64,
    },
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The epoch after the proposal, or why it was not committed.
    Proposed(Result<u64, String>),
    /// The request could not be decoded (or this node runs no group).
    Refused(String),
}

/// Why a reply is not the one asked for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplyError {
    #[error("undecodable reply: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("peer refused the request: {0}")]
    Refused(String),
    #[error("reply of the wrong kind")]
    WrongKind,
}

/// Sends `request` to `peer` and decodes the reply.
pub(crate) async fn call<T: Transport>(
    transport: &T,
    peer: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let encoded = serde_json::to_vec(request).map_err(ReplyError::from)?;
    let reply = transport.call(peer, encoded, timeout).await?;
    match serde_json::from_slice(&reply).map_err(ReplyError::from)? {
        Reply::Refused(why) => Err(ReplyError::Refused(why).into()),
        reply => Ok(reply),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error(transparent)]
    Unreachable(#[from] std::io::Error),
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

/// Makes openraft's connections to peers.
#[derive(Debug)]
pub(crate) struct Network<T> {
    pub(crate) transport: Arc<T>,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Connection<T>;

    async fn new_client(&mut self, target: u64, node: &Peer) -> Self::Network {
        Connection { transport: Arc::clone(&self.transport), target, peer: node.name.clone() }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub(crate) struct Connection<T> {
    transport: Arc<T>,
    target: u64,
    peer: String,
}

impl<T: Transport> Connection<T> {
    async fn send<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<u64, Peer, E>> {
        call(&*self.transport, &self.peer, &request, option.hard_ttl()).await.map_err(|error| {
            match error {
                CallError::Unreachable(error) => RPCError::Unreachable(Unreachable::new(&error)),
                CallError::Reply(error) => RPCError::Network(NetworkError::new(&error)),
            }
        })
    }

    fn remote<E: std::error::Error>(&self, error: E) -> RPCError<u64, Peer, E> {
        RPCError::RemoteError(RemoteError::new(self.target, error))
    }
}

fn wrong_kind<E: std::error::Error>() -> RPCError<u64, Peer, E> {
    RPCError::Network(NetworkError::new(&ReplyError::WrongKind))
}

impl<T: Transport> RaftNetwork<TypeConfig> for Connection<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Peer, RaftError<u64>>> {
        match self.send(Request::Append(rpc), &option).await? {
            Reply::Append(reply) => reply.map_err(|e| self.remote(e)),
            _ => Err(wrong_kind()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Peer, RaftError<u64, InstallSnapshotError>>,
    > {
        match self.send(Request::Snapshot(rpc), &option).await? {
            Reply::Snapshot(reply) => reply.map_err(|e| self.remote(e)),
            _ => Err(wrong_kind()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Peer, RaftError<u64>>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Reply::Vote(reply) => reply.map_err(|e| self.remote(e)),
            _ => Err(wrong_kind()),
        }
    }
}
