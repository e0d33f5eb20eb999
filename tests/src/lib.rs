//! Helpers for the end-to-end tests: locating the `ferry` binary built by this workspace.
