//! Replica placement: a pure, deterministic function from a site's members to a partition map.
//!
//! Each of the 4096 partitions gets an ordered replica list, master first. The order of
//! candidates per partition is rendezvous hashing (highest score of `hash(node id, partition)`),
//! which moves only the partitions of a node that joins or leaves. Two refinements on top:
//!
//! - **Bounded load**: a node takes at most `ceil(P/N)` masters (and `ceil(P·copies/N)` copies);
//!   a partition whose first choice is full goes to its next choice. This keeps masters per node
//!   within a few percent of each other at the price of a little extra movement.
//! - **Rack and zone awareness**: replicas after the master prefer a rack (and, with
//!   `zone-spread`, a zone) not yet holding a copy, so no two copies share a rack when the site
//!   has at least as many racks as copies. Rack separation outranks zone spread.
//!
//! Members are sorted by node id first, so the map does not depend on the order of the file.

use std::collections::BTreeSet;

use crate::model::{NodeId, PlacementPolicy, Topology};

/// Partitions per namespace, as in Aerospike.
pub const PARTITIONS: u16 = 4096;

/// Headroom over a perfectly even share before a node refuses more masters or copies. Zero
/// gives near-perfect balance; measured movement stays within about 1.2× the ideal 1/N for
/// sites up to 16 nodes (see `docs/placement.md` and the `placement_movement` example).
const LOAD_SLACK: f64 = 0.0;

/// The partition of a record digest: the low 12 bits of its first four bytes, little-endian.
pub fn partition_of(digest: &[u8; 20]) -> u16 {
    let word = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (word & u32::from(PARTITIONS - 1)) as u16
}

/// A node taking part in placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub rack: u32,
    pub zone: Option<String>,
}

/// Why no partition map can be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("site '{0}' is not in the topology")]
    UnknownSite(String),
    #[error("namespace '{namespace}' is not defined at site '{site}'")]
    UnknownNamespace { site: String, namespace: String },
    #[error("no member to place partitions on")]
    NoMembers,
    #[error("node id '{0}' appears twice among the members")]
    DuplicateMember(NodeId),
}

/// Replica lists of all partitions of one namespace in one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    nodes: Vec<NodeId>,
    copies: usize,
    /// `copies` node indexes per partition, master first.
    replicas: Vec<u16>,
}

impl PartitionMap {
    /// The map of `namespace` at `site`, over all the site's nodes.
    pub fn for_namespace(
        topology: &Topology,
        site: &str,
        namespace: &str,
    ) -> Result<Self, PlacementError> {
        Self::for_live_nodes(topology, site, namespace, |_| true)
    }

    /// The map of `namespace` at `site` over the nodes `is_live` keeps (the site's committed
    /// membership).
    pub fn for_live_nodes(
        topology: &Topology,
        site: &str,
        namespace: &str,
        is_live: impl Fn(&str) -> bool,
    ) -> Result<Self, PlacementError> {
        let site_def =
            topology.site(site).ok_or_else(|| PlacementError::UnknownSite(site.to_owned()))?;
        let ns = site_def.namespace(namespace).ok_or_else(|| PlacementError::UnknownNamespace {
            site: site.to_owned(),
            namespace: namespace.to_owned(),
        })?;
        let members: Vec<Member> = site_def
            .nodes
            .iter()
            .filter(|node| is_live(node.id.as_str()))
            .map(|node| Member {
                id: node.id.clone(),
                rack: node.rack_id,
                zone: site_def.zone_of(node).map(str::to_owned),
            })
            .collect();
        Self::compute(&members, usize::from(ns.replication_factor), topology.placement)
    }

    /// Places `replication_factor` copies of every partition on `members` (fewer copies when
    /// there are fewer members).
    pub fn compute(
        members: &[Member],
        replication_factor: usize,
        policy: PlacementPolicy,
    ) -> Result<Self, PlacementError> {
        let mut members: Vec<&Member> = members.iter().collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = members.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(PlacementError::DuplicateMember(pair[0].id.clone()));
        }
        let count = members.len();
        if count == 0 {
            return Err(PlacementError::NoMembers);
        }
        let copies = replication_factor.clamp(1, count);
        let partitions = usize::from(PARTITIONS);
        let share = partitions as f64 / count as f64;
        let master_cap = (share * (1.0 + LOAD_SLACK)).ceil() as usize;
        let copy_cap = (share * copies as f64 * (1.0 + LOAD_SLACK)).ceil() as usize;
        let hashes: Vec<u64> = members.iter().map(|m| fnv1a(m.id.as_str().as_bytes())).collect();

        let mut masters = vec![0usize; count];
        let mut held = vec![0usize; count];
        let mut replicas = Vec::with_capacity(partitions * copies);
        let mut order: Vec<usize> = (0..count).collect();
        for partition in 0..PARTITIONS {
            order.sort_by_key(|&i| std::cmp::Reverse(score(hashes[i], partition)));
            // Caps sum to at least P, so some candidate always has room.
            let master =
                order.iter().copied().find(|&i| masters[i] < master_cap).unwrap_or(order[0]);
            masters[master] += 1;
            held[master] += 1;
            let mut chosen = vec![master];
            while chosen.len() < copies {
                let preference = |i: usize| {
                    let new_zone = policy.zone_spread
                        && chosen.iter().all(|&c| members[c].zone != members[i].zone);
                    let new_rack = policy.rack_aware
                        && chosen.iter().all(|&c| members[c].rack != members[i].rack);
                    (new_rack, new_zone, held[i] < copy_cap)
                };
                let candidates = order.iter().copied().filter(|i| !chosen.contains(i));
                // max_by_key keeps the last maximum; reversing keeps the highest-scored one.
                let Some(next) = candidates.rev().max_by_key(|&i| preference(i)) else {
                    break;
                };
                held[next] += 1;
                chosen.push(next);
            }
            replicas.extend(chosen.iter().map(|&i| i as u16));
        }
        // Zones only constrain the lift when zone spread is asked for.
        let places: Vec<(u32, Option<&str>)> = members
            .iter()
            .map(|m| (m.rack, m.zone.as_deref().filter(|_| policy.zone_spread)))
            .collect();
        lift_underloaded_masters(&hashes, &places, copies, &mut masters, &mut replicas);
        Ok(Self { nodes: members.iter().map(|m| m.id.clone()).collect(), copies, replicas })
    }

    /// The nodes of the map, sorted by id.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Copies per partition.
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// The replica list of a partition, master first.
    pub fn replicas(&self, partition: u16) -> impl Iterator<Item = &NodeId> + '_ {
        let start = usize::from(partition % PARTITIONS) * self.copies;
        self.replicas[start..start + self.copies].iter().map(|&i| &self.nodes[usize::from(i)])
    }

    /// The master of a partition.
    pub fn master(&self, partition: u16) -> &NodeId {
        let start = usize::from(partition % PARTITIONS) * self.copies;
        &self.nodes[usize::from(self.replicas[start])]
    }

    /// Masters held by each node, in [`Self::nodes`] order.
    pub fn masters_per_node(&self) -> Vec<usize> {
        let mut counts = vec![0; self.nodes.len()];
        for partition in 0..PARTITIONS {
            let start = usize::from(partition) * self.copies;
            counts[usize::from(self.replicas[start])] += 1;
        }
        counts
    }

    /// Partitions whose master differs between two maps.
    pub fn masters_moved(&self, other: &PartitionMap) -> usize {
        (0..PARTITIONS).filter(|&p| self.master(p) != other.master(p)).count()
    }

    /// Partitions whose set of replica nodes differs between two maps.
    pub fn replica_sets_changed(&self, other: &PartitionMap) -> usize {
        (0..PARTITIONS)
            .filter(|&p| {
                let a: BTreeSet<&NodeId> = self.replicas(p).collect();
                let b: BTreeSet<&NodeId> = other.replicas(p).collect();
                a != b
            })
            .count()
    }
}

/// Caps alone can leave a node short when the last partitions spill onto whoever has room.
/// Each node below the even share takes mastership from nodes above it, choosing partitions
/// where it ranks highest: preferably ones it already holds a copy of (a swap inside the replica
/// list), else ones whose other copies sit on other racks and zones, so neither rack separation
/// nor zone spread gets worse.
fn lift_underloaded_masters(
    hashes: &[u64],
    places: &[(u32, Option<&str>)],
    copies: usize,
    masters: &mut [usize],
    replicas: &mut [u16],
) {
    let floor = usize::from(PARTITIONS) / hashes.len();
    for under in 0..hashes.len() {
        while masters[under] < floor {
            let rank = |partition: u16| {
                let own = score(hashes[under], partition);
                hashes.iter().filter(|&&h| score(h, partition) > own).count()
            };
            let candidate = (0..PARTITIONS)
                .filter_map(|p| {
                    let list = &replicas[usize::from(p) * copies..][..copies];
                    let master = usize::from(list[0]);
                    if master == under || masters[master] <= floor {
                        return None;
                    }
                    match list.iter().position(|&i| usize::from(i) == under) {
                        Some(slot) => Some((false, rank(p), p, Some(slot))),
                        None if list[1..].iter().all(|&i| {
                            let (rack, zone) = places[usize::from(i)];
                            rack != places[under].0 && (zone.is_none() || zone != places[under].1)
                        }) =>
                        {
                            Some((true, rank(p), p, None))
                        }
                        None => None,
                    }
                })
                .min();
            let Some((_, _, partition, slot)) = candidate else {
                break;
            };
            let start = usize::from(partition) * copies;
            masters[usize::from(replicas[start])] -= 1;
            masters[under] += 1;
            match slot {
                Some(slot) => replicas.swap(start, start + slot),
                None => replicas[start] = under as u16,
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Rendezvous score of a node (by id hash) for a partition: splitmix64 of both.
fn score(node_hash: u64, partition: u16) -> u64 {
    let mut z = node_hash ^ u64::from(partition).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(racks: &[u32]) -> Vec<Member> {
        racks
            .iter()
            .enumerate()
            .map(|(i, &rack)| Member {
                id: NodeId::try_from(format!("node-{i}")).expect("valid id"),
                rack,
                zone: None,
            })
            .collect()
    }

    #[test]
    fn partition_is_low_twelve_bits_of_first_word() {
        let mut digest = [0u8; 20];
        digest[0] = 0xff;
        digest[1] = 0x1f;
        digest[2] = 0xaa;
        assert_eq!(partition_of(&digest), 0x0fff);
    }

    #[test]
    fn copies_are_capped_by_member_count() {
        let map = PartitionMap::compute(&members(&[0, 1]), 3, PlacementPolicy::default())
            .expect("placement");
        assert_eq!(map.copies(), 2);
        for p in 0..PARTITIONS {
            let replicas: Vec<_> = map.replicas(p).collect();
            assert_ne!(replicas[0], replicas[1]);
        }
    }

    #[test]
    fn duplicate_and_missing_members_are_refused() {
        let mut twice = members(&[0]);
        twice.push(twice[0].clone());
        assert!(matches!(
            PartitionMap::compute(&twice, 1, PlacementPolicy::default()),
            Err(PlacementError::DuplicateMember(_))
        ));
        assert_eq!(
            PartitionMap::compute(&[], 1, PlacementPolicy::default()),
            Err(PlacementError::NoMembers)
        );
    }
}
