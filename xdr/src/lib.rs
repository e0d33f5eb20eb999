//! Cross-datacenter replication: one shipping pipeline per DR link and the receiver that applies
//! remote versions under the namespace's conflict-resolution policy (see DESIGN.md §6–7).
//!
//! - [`conflict`]: whether a shipped version replaces the local one.
//! - [`batch`]: the versioned, zstd-compressed batch format shipped between sites.
//! - [`window`]: batches in flight and the ordered acknowledgement that moves a link's cursor.

pub mod batch;
pub mod conflict;
pub mod window;
