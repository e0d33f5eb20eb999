//! The digest log: a durable, segmented record of every changed record's digest.
//!
//! Every write on a node appends an entry here; each DR link reads it through its own named,
//! persisted cursor. The format, group commit, retention and recovery rules are described in
//! `docs/digestlog-format.md` once the crate is built (see DESIGN.md §5).
