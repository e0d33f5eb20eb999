//! A site's membership: which of its provisioned nodes take part in placement, and the epoch
//! that numbers each change, agreed through **openraft** among the site's nodes (DESIGN §12).
//!
//! - [`state`]: what the group commits ([`SiteMembership`], [`Change`]) and how the node plans
//!   it ([`Planner`]).
//! - [`detector`]: failure detection from heartbeats, as a pure state machine.
//! - [`lease`]: the write lease that keeps a minority from acknowledging writes.
//! - [`Member`]: the async shell; the node carries its messages over the fabric
//!   ([`Transport`]) and hands peers' requests to [`Member::handle`].
//!
//! The raft log, vote and snapshot live in their own fjall database, fsynced before openraft
//! counts them written.

pub mod detector;
pub mod lease;
mod member;
mod rpc;
pub mod state;
mod store;
mod types;

pub use detector::Heartbeat;
pub use member::{Member, MemberConfig, MemberStatus, MembershipError};
pub use rpc::Transport;
pub use state::{Change, Holders, Intent, Planner, SiteMembership};
pub use types::{Peer, TypeConfig, raft_id};
