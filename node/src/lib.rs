//! The Ferry storage node: records, durable storage, and Aerospike's client wire protocol.
//!
//! - [`record`]: records, bins and their storage encoding.
//! - [`storage`]: fjall-backed durable storage with group commit.

pub mod record;
pub mod storage;
