//! What changes between two topologies: the text, the meaning (sites, nodes, links, roles) and
//! the effect on placement (partitions whose master or replica set moves).

use std::fmt;

use serde::Serialize;

use crate::Topology;
use crate::model::{Link, Site};
use crate::placement::{PARTITIONS, PartitionMap};

/// Placement effect on one namespace of one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacementChange {
    pub site: String,
    pub namespace: String,
    /// Partitions whose master node changes.
    pub masters_moved: usize,
    /// Partitions whose set of replica nodes changes.
    pub replica_sets_changed: usize,
}

/// The difference between an old and a new topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopologyDiff {
    /// Changes in meaning, one sentence each, e.g. "link us-east→eu-west enabled".
    pub changes: Vec<String>,
    /// Namespaces whose partition map changes.
    pub placement: Vec<PlacementChange>,
    /// Line diff of the file texts, unified format (empty when the texts are equal).
    pub text: String,
}

impl TopologyDiff {
    /// Compares two topologies and, when given, their file texts.
    pub fn between(old: &Topology, new: &Topology, texts: Option<(&str, &str)>) -> Self {
        let mut changes = Vec::new();
        for site in &old.sites {
            match new.site(site.name.as_str()) {
                None => changes.push(format!("site {} removed", site.name)),
                Some(after) => site_changes(site, after, &mut changes),
            }
        }
        for site in new.sites.iter().filter(|s| old.site(s.name.as_str()).is_none()) {
            changes.push(format!("site {} added ({} nodes)", site.name, site.nodes.len()));
        }
        if old.placement != new.placement {
            changes.push(format!("placement policy {:?} → {:?}", old.placement, new.placement));
        }
        link_changes(&old.links, &new.links, &mut changes);
        let text = texts
            .map(|(a, b)| {
                similar::TextDiff::from_lines(a, b)
                    .unified_diff()
                    .context_radius(2)
                    .header("old", "new")
                    .to_string()
            })
            .unwrap_or_default();
        Self { changes, placement: placement_changes(old, new), text }
    }

    /// Whether the two topologies mean the same.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.placement.is_empty()
    }
}

fn site_changes(before: &Site, after: &Site, changes: &mut Vec<String>) {
    let name = &before.name;
    if before.role != after.role {
        changes.push(format!("site {name}: role {:?} → {:?}", before.role, after.role));
    }
    if before.fence() != after.fence() {
        changes.push(format!("site {name}: write fence {} → {}", before.fence(), after.fence()));
    }
    if before.src_id != after.src_id {
        changes.push(format!("site {name}: src-id {} → {}", before.src_id, after.src_id));
    }
    for node in &before.nodes {
        match after.nodes.iter().find(|n| n.id == node.id) {
            None => changes.push(format!("site {name}: node {} removed", node.id)),
            Some(now) if now != node => changes
                .push(format!("site {name}: node {} changed (rack, zone or addresses)", node.id)),
            Some(_) => {}
        }
    }
    for node in after.nodes.iter().filter(|n| !before.nodes.iter().any(|b| b.id == n.id)) {
        changes.push(format!("site {name}: node {} added on rack {}", node.id, node.rack_id));
    }
    for ns in &before.namespaces {
        match after.namespace(ns.name.as_str()) {
            None => changes.push(format!("site {name}: namespace {} removed", ns.name)),
            Some(now) if now != ns => {
                changes.push(format!("site {name}: namespace {} settings changed", ns.name))
            }
            Some(_) => {}
        }
    }
    for ns in after.namespaces.iter().filter(|n| before.namespace(n.name.as_str()).is_none()) {
        changes.push(format!("site {name}: namespace {} added", ns.name));
    }
}

fn link_changes(before: &[Link], after: &[Link], changes: &mut Vec<String>) {
    let find = |links: &'_ [Link], link: &Link| {
        links.iter().find(|l| l.from == link.from && l.to == link.to).cloned()
    };
    for link in before {
        match find(after, link) {
            None => changes.push(format!("link {} removed", link.name())),
            Some(now) => {
                if now.enabled != link.enabled {
                    let state = if now.enabled { "enabled" } else { "disabled" };
                    changes.push(format!("link {} {state}", link.name()));
                }
                let settings_only = Link { enabled: link.enabled, ..now.clone() };
                if &settings_only != link {
                    changes.push(format!("link {} settings changed", link.name()));
                }
            }
        }
    }
    for link in after.iter().filter(|l| find(before, l).is_none()) {
        let state = if link.enabled { "" } else { " (disabled)" };
        changes.push(format!("link {} added{state}", link.name()));
    }
}

fn placement_changes(old: &Topology, new: &Topology) -> Vec<PlacementChange> {
    let mut out = Vec::new();
    for site in &new.sites {
        for ns in &site.namespaces {
            let name = (site.name.as_str(), ns.name.as_str());
            let before = PartitionMap::for_namespace(old, name.0, name.1);
            let after = PartitionMap::for_namespace(new, name.0, name.1);
            if let (Ok(before), Ok(after)) = (before, after) {
                let masters_moved = before.masters_moved(&after);
                let replica_sets_changed = before.replica_sets_changed(&after);
                if masters_moved > 0 || replica_sets_changed > 0 {
                    out.push(PlacementChange {
                        site: name.0.to_owned(),
                        namespace: name.1.to_owned(),
                        masters_moved,
                        replica_sets_changed,
                    });
                }
            }
        }
    }
    out
}

impl fmt::Display for TopologyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.text.is_empty() {
            writeln!(f, "{}", self.text.trim_end())?;
        }
        if self.is_empty() {
            return writeln!(f, "no change in meaning");
        }
        for change in &self.changes {
            writeln!(f, "* {change}")?;
        }
        for p in &self.placement {
            writeln!(
                f,
                "* {}/{}: {} of {PARTITIONS} partitions change master, {} change replica set",
                p.site, p.namespace, p.masters_moved, p.replica_sets_changed
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_topology;

    const EXAMPLE: &str = include_str!("../../examples/two-sites.toml");

    fn parse(text: &str) -> Topology {
        parse_topology("t.toml", text).expect("valid topology").topology
    }

    #[test]
    fn identical_topologies_have_no_diff() {
        let topology = parse(EXAMPLE);
        let diff = TopologyDiff::between(&topology, &topology, Some((EXAMPLE, EXAMPLE)));
        assert!(diff.is_empty());
        assert!(diff.text.is_empty());
    }

    #[test]
    fn enabling_a_link_and_removing_a_node_are_reported_with_their_placement_effect() {
        let old = parse(EXAMPLE);
        let mut new = old.clone();
        new.links[1].enabled = true;
        new.sites[1].nodes.retain(|n| n.id.as_str() != "euw-c");
        let diff = TopologyDiff::between(&old, &new, None);
        assert!(diff.changes.contains(&"link eu-west→us-east enabled".to_owned()), "{diff}");
        assert!(diff.changes.contains(&"site eu-west: node euw-c removed".to_owned()), "{diff}");
        assert_eq!(diff.placement.len(), 1, "{diff}");
        let moved = &diff.placement[0];
        assert_eq!((moved.site.as_str(), moved.namespace.as_str()), ("eu-west", "test"));
        // A third of the masters lived on the removed node.
        assert!((1300..1500).contains(&moved.masters_moved), "{moved:?}");
    }

    #[test]
    fn text_diff_shows_changed_lines() {
        let changed = EXAMPLE.replace("name = \"two-sites\"", "name = \"renamed\"");
        let diff =
            TopologyDiff::between(&parse(EXAMPLE), &parse(&changed), Some((EXAMPLE, &changed)));
        assert!(diff.text.contains("-name = \"two-sites\""), "{}", diff.text);
        assert!(diff.text.contains("+name = \"renamed\""), "{}", diff.text);
    }
}
