//! openraft's type configuration for a site's membership group.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::Change;

openraft::declare_raft_types!(
    /// The membership group's types: planned changes in, the epoch after each out (0 for a
    /// change planned on an epoch that had passed, which changes nothing).
    pub TypeConfig:
        D = Change,
        R = u64,
        NodeId = u64,
        Node = Peer,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A voter of the group, by its node id in the topology (its address is looked up when
/// dialing, so a changed fabric address needs no membership change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The raft id of a node: FNV-1a (64-bit) of its node id, stable across restarts and topology
/// edits (a member refuses to start when two of its site's node ids collide).
pub fn raft_id(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Vote = openraft::Vote<u64>;
pub(crate) type StorageError = openraft::StorageError<u64>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, Peer>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, Peer>;
pub(crate) type Snapshot = openraft::Snapshot<TypeConfig>;
