//! What a site's membership group agrees on: which provisioned nodes are out of placement, and
//! the epoch that numbers every change. The partition map is a pure function of this and the
//! topology, so every node derives the same map for an epoch.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The committed membership of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteMembership {
    /// Numbers the committed changes; starts at 1 (every provisioned node in).
    pub epoch: u64,
    /// Provisioned nodes taken out of placement (failed, not yet re-admitted).
    pub down: BTreeSet<String>,
}

impl Default for SiteMembership {
    fn default() -> Self {
        Self { epoch: 1, down: BTreeSet::new() }
    }
}

impl SiteMembership {
    /// Whether `node` takes part in placement.
    pub fn is_live(&self, node: &str) -> bool {
        !self.down.contains(node)
    }

    /// Applies a committed command; returns whether it changed anything (and so bumped the
    /// epoch). A command that changes nothing (a repeat) leaves the epoch alone.
    pub fn apply(&mut self, command: &Command) -> bool {
        let changed = match command {
            Command::Remove { node } => self.down.insert(node.clone()),
            Command::Readmit { node } => self.down.remove(node),
        };
        if changed {
            self.epoch += 1;
        }
        changed
    }
}

/// A change the group's leader proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Take a node that stopped answering out of placement.
    Remove { node: String },
    /// Put a node that answers again back into placement.
    Readmit { node: String },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Remove { node } => write!(f, "remove {node}"),
            Command::Readmit { node } => write!(f, "readmit {node}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_changes_bump_the_epoch() {
        let mut site = SiteMembership::default();
        let remove = Command::Remove { node: "b".into() };
        assert!(site.apply(&remove));
        assert!(!site.apply(&remove), "a repeated removal changes nothing");
        assert_eq!(site.epoch, 2);
        assert!(!site.is_live("b"));
        assert!(site.apply(&Command::Readmit { node: "b".into() }));
        assert!(!site.apply(&Command::Readmit { node: "c".into() }), "c was never out");
        assert_eq!(site.epoch, 3);
        assert!(site.is_live("b"));
    }
}
