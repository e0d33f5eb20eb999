//! The library half of the `ferry` package: what the binary's subcommands and the end-to-end
//! tests share, so that the tests start deployments exactly the way `ferry up` does.
//!
//! - [`client`]: typed questions to a node over its info port (link and receiver stats,
//!   namespace counts, version digests).
//! - [`launcher`]: starts and stops `ferry node run` processes, one state directory each.
//! - [`deploy`]: a whole deployment of a topology on this machine — dev certificates, the
//!   topology service on SQLite, a WAN relay per simulated link, every node — and the queries
//!   an operator (or a test) asks of it while it runs.
//! - [`ops`]: link drains, node health and applied topology versions, unshipped records.
//! - [`drill`]: switchover, failover and failback, each ending in a report.
//! - [`verify`]: whether two sites hold the same data, and every record where they do not.
//! - [`credentials`]: the token the CLI presents to the control plane.

pub mod client;
pub mod credentials;
pub mod deploy;
pub mod drill;
pub mod launcher;
pub mod ops;
pub mod verify;
