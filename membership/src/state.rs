//! What a site's membership group agrees on: which provisioned nodes are out of placement,
//! which nodes hold full copies of partitions whose copies are not where placement puts them
//! (after a loss, until migrations fill the new places), and the epoch that numbers every
//! change. The partition map is a pure function of this and the topology, so every node
//! derives the same map for an epoch.
//!
//! The group does not know the topology: the leader plans each [`Change`] from an [`Intent`]
//! (through the node's [`Planner`]) and the group commits the planned result. A change names
//! the epoch it was planned on, and applies only on that epoch, so two plans made from the
//! same state cannot both apply.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Per namespace, per partition: the nodes holding a full copy, where that differs from the
/// placement's replica list.
pub type Holders = BTreeMap<String, BTreeMap<u16, Vec<String>>>;

/// The committed membership of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteMembership {
    /// Numbers the committed changes; starts at 1 (every provisioned node in, every copy where
    /// placement puts it).
    pub epoch: u64,
    /// Provisioned nodes taken out of placement (failed, not yet re-admitted).
    pub down: BTreeSet<String>,
    /// Full copies that are not where placement puts them.
    pub holders: Holders,
    /// The epoch at which each re-admitted node came back: a migration to it that started
    /// before then filled a copy it has since lost.
    #[serde(default)]
    pub readmitted: BTreeMap<String, u64>,
    /// The epoch at which `down` last changed, and with it the placement: a migration that
    /// started before then may have filled a node that stopped taking the partition's writes.
    #[serde(default)]
    pub placed_at: u64,
    /// Partitions that lost every copy (and started over empty) at the given epoch: a node
    /// returning with old records of one holds the only copy of them, not stale ones.
    #[serde(default)]
    pub restarted: BTreeMap<String, BTreeMap<u16, u64>>,
    /// The nodes placement may use: the group's first voters, then each node the leader
    /// admitted. `None` until the group's first membership applies (or in a site without a
    /// group): every node of the topology's site.
    #[serde(default)]
    pub members: Option<BTreeSet<String>>,
}

impl Default for SiteMembership {
    fn default() -> Self {
        Self {
            epoch: 1,
            down: BTreeSet::new(),
            holders: Holders::new(),
            readmitted: BTreeMap::new(),
            placed_at: 1,
            restarted: BTreeMap::new(),
            members: None,
        }
    }
}

impl SiteMembership {
    /// Whether `node` takes part in placement: admitted and not down.
    pub fn is_live(&self, node: &str) -> bool {
        self.is_member(node) && !self.down.contains(node)
    }

    /// Whether `node` was admitted to placement (every node is until members are known).
    pub fn is_member(&self, node: &str) -> bool {
        self.members.as_ref().is_none_or(|members| members.contains(node))
    }

    /// Records the group's first voters as the members, unless members are known already.
    /// Changes no epoch: those voters are the topology's nodes the group started with, which
    /// placement used before.
    pub fn seed_members(&mut self, voters: impl IntoIterator<Item = String>) {
        if self.members.is_none() {
            self.members = Some(voters.into_iter().collect());
        }
    }

    /// Partitions whose copies are not all where placement puts them.
    pub fn pending_partitions(&self) -> usize {
        self.holders.values().map(BTreeMap::len).sum()
    }

    /// Applies a committed change if it was planned on this epoch; returns whether it applied
    /// (and so bumped the epoch).
    pub fn apply(&mut self, change: &Change) -> bool {
        if change.base_epoch != self.epoch {
            return false;
        }
        let epoch = self.epoch + 1;
        for back in self.down.difference(&change.down) {
            self.readmitted.insert(back.clone(), epoch);
        }
        if self.down != change.down {
            self.placed_at = epoch;
        }
        self.down.clone_from(&change.down);
        if let Some(members) = &change.members
            && self.members.as_ref() != Some(members)
        {
            // A node that joins holds nothing yet, like one re-admitted after a loss.
            let joined: Vec<String> =
                members.iter().filter(|node| !self.is_member(node)).cloned().collect();
            for node in joined {
                self.readmitted.insert(node, epoch);
            }
            self.members = Some(members.clone());
            self.placed_at = epoch;
        }
        for (namespace, partitions) in &change.holders {
            let held = self.holders.entry(namespace.clone()).or_default();
            for (&partition, holders) in partitions {
                match holders {
                    Some(holders) => held.insert(partition, holders.clone()),
                    None => held.remove(&partition),
                };
            }
        }
        self.holders.retain(|_, partitions| !partitions.is_empty());
        for (namespace, partitions) in &change.restarted {
            let restarted = self.restarted.entry(namespace.clone()).or_default();
            restarted.extend(partitions.iter().map(|&p| (p, epoch)));
        }
        self.epoch = epoch;
        true
    }
}

/// A change the leader commits: the new down set and the partitions whose holders change
/// (`None`: back to the placement's list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The epoch this change was planned on; on any other it does nothing.
    pub base_epoch: u64,
    pub down: BTreeSet<String>,
    pub holders: BTreeMap<String, BTreeMap<u16, Option<Vec<String>>>>,
    /// Partitions that lose their last copy with this change.
    #[serde(default)]
    pub restarted: BTreeMap<String, Vec<u16>>,
    /// The new members, when the change admits a node.
    #[serde(default)]
    pub members: Option<BTreeSet<String>>,
    /// Why, for the log.
    pub reason: Intent,
}

/// What someone wants changed; the leader's [`Planner`] turns it into a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    /// Take a node that stopped answering out of placement.
    Remove { node: String },
    /// Put a node that answers again back into placement.
    Readmit { node: String },
    /// `node` now holds full copies of these partitions: migrations that started at epoch
    /// `since` filled them (void if the placement changed, or the node was re-admitted, after
    /// `since`).
    Filled { node: String, namespace: String, partitions: Vec<u16>, since: u64 },
    /// Add a node that joined the group (a voter now) to placement: it is filled wherever
    /// placement puts it, and takes reads and mastership as its copies fill.
    Join { node: String },
}

impl std::fmt::Display for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Intent::Remove { node } => write!(f, "remove {node}"),
            Intent::Readmit { node } => write!(f, "readmit {node}"),
            Intent::Join { node } => write!(f, "admit {node} to placement"),
            Intent::Filled { node, namespace, partitions, .. } => {
                write!(f, "{node} filled {} partitions of {namespace}", partitions.len())
            }
        }
    }
}

/// Plans changes with what the group does not know: the topology and its placement.
pub trait Planner: Send + Sync + 'static {
    /// The change that carries out `intent` on `current`, or `None` when it changes nothing.
    fn plan(&self, current: &SiteMembership, intent: &Intent) -> Option<Change>;

    /// The site's nodes as this node's topology lists them now (itself included): who may
    /// heartbeat it, and whom the leader adds to the group when they answer.
    fn nodes(&self) -> Vec<String>;

    /// A hash of what this node derives partition maps from besides `membership`: the
    /// placement inputs of its members and namespaces. Answers from a node whose fingerprint
    /// differs renew no lease, so nodes running different topologies cannot both master a
    /// partition.
    fn fingerprint(&self, membership: &SiteMembership) -> u64;

    /// A hash of every listed node's placement inputs: equal on two nodes once both know the
    /// same nodes, so the leader admits a node to placement only when every live member can
    /// place it.
    fn roster(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(base_epoch: u64, down: &[&str], partition: u16, holders: Option<&[&str]>) -> Change {
        let holders = holders.map(|h| h.iter().map(|n| n.to_string()).collect());
        Change {
            base_epoch,
            down: down.iter().map(|n| n.to_string()).collect(),
            holders: BTreeMap::from([("test".into(), BTreeMap::from([(partition, holders)]))]),
            restarted: BTreeMap::new(),
            members: None,
            reason: Intent::Remove { node: "b".into() },
        }
    }

    #[test]
    fn a_change_applies_only_on_the_epoch_it_was_planned_on() {
        let mut site = SiteMembership::default();
        let removal = change(1, &["b"], 7, Some(&["a"]));
        assert!(site.apply(&removal));
        assert!(!site.apply(&removal), "planned on epoch 1, now 2");
        assert_eq!(site.epoch, 2);
        assert!(!site.is_live("b"));
        assert_eq!(site.holders["test"][&7], ["a"]);
        assert_eq!(site.pending_partitions(), 1);
        assert!(site.apply(&change(2, &[], 7, None)));
        assert!(site.is_live("b"));
        assert_eq!(site.readmitted["b"], 3, "back at epoch 3");
        assert!(site.holders.is_empty(), "an emptied namespace is dropped");
        assert_eq!(site.epoch, 3);
    }
}
