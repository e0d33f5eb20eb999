//! The Ferry storage node: records, durable storage, and Aerospike's client wire protocol.
//!
//! - [`record`]: records, bins and their storage encoding.
//! - [`apply`]: versions shipped from other sites, resolved and stored.
//! - [`storage`]: fjall-backed durable storage with group commit.
//! - [`index`]: the primary index in memory (which digests are stored, and where logged).
//! - [`proto`]: the wire protocol as pure encoding and decoding.
//! - [`command`]: what each client command means and does.
//! - [`fence`]: the site's write fences on this node, changed live.
//! - [`cluster`]: the node's view of its site at a membership epoch (copies, masters,
//!   `replicas`, peers).
//! - [`membership`]: the node's seat in its site's membership group (openraft).
//! - [`fabric`]: requests between the site's nodes; [`replica`]: copies of every change;
//!   [`migrate`]: partitions pushed to the nodes being filled.
//! - [`info`]: answers to info commands.
//! - [`reclaim`]: background removal of expired records and old tombstones.
//! - [`node`] and [`server`]: the node's state and its network shell.
//! - [`admin`]: the admin HTTP API (status, XDR stats and link controls as JSON).
//! - [`audit`]: link controls this node was told to make, logged and reported to the audit
//!   trail.
//! - [`unshipped`]: what a link has not shipped from this node (a failover's lost writes).
//! - [`takeovers`]: partitions taken over and not yet re-shipped, journaled across restarts.
//! - [`verify`]: per-partition hashes and version lists two sites compare.
//! - [`metrics`]: Prometheus text for the admin API's `/metrics`.
//! - [`xdr_config`]: Aerospike's `get-config`/`set-config` for XDR links.
//! - [`start`]: the whole node as one value: [`Node::start`] on bound [`Listeners`].

pub mod admin;
pub mod apply;
pub mod audit;
pub mod cluster;
pub mod command;
pub mod crash;
pub mod fabric;
pub mod fence;
pub mod index;
pub mod info;
mod journal_sync;
pub mod membership;
pub mod metrics;
pub mod migrate;
pub mod node;
pub mod proto;
pub mod reclaim;
pub mod record;
pub mod replica;
pub mod security;
pub mod server;
mod start;
pub mod storage;
pub mod takeovers;
pub mod truncate;
pub mod unshipped;
pub mod verify;
pub mod xdr;
pub mod xdr_config;

pub use start::{Listeners, Node, NodeHandle, StartError};
