//! Cross-datacenter replication: one shipping pipeline per DR link and the receiver that applies
//! remote versions under the namespace's conflict-resolution policy (see DESIGN.md §6–7).
//!
//! Pure parts, tested without I/O:
//! - [`conflict`]: whether a shipped version replaces the local one.
//! - [`batch`]: the versioned, zstd-compressed batch format shipped between sites; [`ack`] its
//!   acknowledgement and the XDR frame types.
//! - [`window`]: batches in flight and the ordered acknowledgement that moves a link's cursor.
//! - [`link`]: operator controls, link states, retry backoff, `max-throughput`, and lag that
//!   cannot lie.
//! - [`plan`]: what a link ships and to which destination node (filters, loop prevention);
//!   [`sitemap`] the destination's current masters, learned from it.
//! - [`engine`]: every decision of a link's shipper (fold, cut, send, retry, commit, drain,
//!   pause, rewind, overflow recovery, heartbeat) as events in, actions out.
//!
//! Glue: [`admission`] (which peers may connect, and the topology's sites as the transport
//! names them).
//!
//! I/O shells: [`ship::Shipper`] (digest-log cursor → QUIC, driving the [`engine`]) and
//! [`receive::Receiver`] (QUIC → the node's store), with [`stats`] under Aerospike's names.

pub mod ack;
pub mod admission;
pub mod batch;
pub mod conflict;
pub mod engine;
pub mod link;
pub mod parked;
pub mod plan;
pub mod receive;
pub mod send;
pub mod ship;
pub mod sitemap;
pub mod stats;
pub mod window;
