//! Who may call Ferry's control plane (the nodes' admin HTTP API and the topology service).
//!
//! Callers present a bearer token (`Authorization: Bearer fy1.<name>.<secret>`). A server keeps
//! only the SHA-256 of each token's secret, with the token's name and [`Role`], in an access file
//! ([`access`]): reading it tells nothing that lets one call. Tokens carry 256 random bits, so a
//! fast hash is enough (passwords, which are guessable, are another matter). Each route needs a
//! role; the [`gate`] answers 401 to a missing, malformed or unknown token and 403 to a role too
//! weak, before the route runs, so neither changes anything.
//!
//! - [`token`]: roles, tokens, issuing and hashing them.
//! - [`access`]: the access file (hashes and roles), reloaded when it changes, and the
//!   credential files holders keep (mode 0600).
//! - [`gate`]: the axum middleware, and the rule that plain HTTP serves only loopback.

pub mod access;
pub mod gate;
pub mod token;

pub use access::{AccessEntry, AccessError, AccessFile, AccessList};
pub use gate::{Gate, Principal};
pub use token::{Role, Token, TokenError};
