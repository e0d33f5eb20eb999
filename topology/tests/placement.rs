//! Property tests of replica placement: determinism, rack separation, balance, minimal movement.

use std::collections::BTreeSet;

use ferry_topology::model::{NodeId, PlacementPolicy};
use ferry_topology::placement::{Member, PARTITIONS, PartitionMap};
use ferry_topology::{Topology, parse_topology};
use proptest::prelude::*;

fn members(count: usize, racks: u32, zones: u32, salt: u32) -> Vec<Member> {
    (0..count)
        .map(|i| Member {
            id: NodeId::try_from(format!("n{salt}-{i}")).expect("valid id"),
            rack: i as u32 % racks,
            zone: Some(format!("z{}", i as u32 % zones)),
        })
        .collect()
}

fn policy(zone_spread: bool) -> PlacementPolicy {
    PlacementPolicy { rack_aware: true, zone_spread }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_members_in_any_order_give_the_same_map(
        count in 1usize..12, racks in 1u32..4, copies in 1usize..4, salt in 0u32..1000,
    ) {
        let nodes = members(count, racks, 1, salt);
        let a = PartitionMap::compute(&nodes, copies, policy(false)).expect("placement");
        let mut reversed = nodes.clone();
        reversed.reverse();
        let b = PartitionMap::compute(&reversed, copies, policy(false)).expect("placement");
        prop_assert_eq!(a, b);
    }

    #[test]
    fn copies_never_share_a_rack_when_racks_suffice(
        count in 2usize..16, racks in 1u32..6, copies in 1usize..4, zone_spread: bool,
        salt in 0u32..1000,
    ) {
        let nodes = members(count, racks, 2, salt);
        let map = PartitionMap::compute(&nodes, copies, policy(zone_spread)).expect("placement");
        let distinct_racks = nodes.iter().map(|m| m.rack).collect::<BTreeSet<_>>().len();
        for p in 0..PARTITIONS {
            let replicas: Vec<&NodeId> = map.replicas(p).collect();
            let unique: BTreeSet<&NodeId> = replicas.iter().copied().collect();
            prop_assert_eq!(unique.len(), replicas.len(), "partition {} repeats a node", p);
            if distinct_racks >= map.copies() {
                let used: BTreeSet<u32> = replicas
                    .iter()
                    .map(|id| nodes.iter().find(|m| &m.id == *id).expect("member").rack)
                    .collect();
                prop_assert_eq!(used.len(), replicas.len(), "partition {} shares a rack", p);
            }
        }
    }

    #[test]
    fn masters_are_balanced_within_a_few_percent(
        count in 2usize..24, racks in 1u32..5, salt in 0u32..1000,
    ) {
        let map = PartitionMap::compute(&members(count, racks, 1, salt), 2, policy(false))
            .expect("placement");
        let masters = map.masters_per_node();
        let (min, max) = (masters.iter().min().copied(), masters.iter().max().copied());
        let (min, max) = (min.expect("nodes"), max.expect("nodes"));
        let mean = f64::from(PARTITIONS) / count as f64;
        prop_assert!(
            (max - min) as f64 <= (mean * 0.03).max(2.0),
            "masters per node {:?}: spread {} exceeds 3% of {:.1}", masters, max - min, mean
        );
    }

    #[test]
    fn a_leaving_or_joining_node_moves_close_to_the_ideal_share(
        count in 3usize..16, racks in 1u32..4, leaver in 0usize..16, salt in 0u32..1000,
    ) {
        let everyone = members(count + 1, racks, 1, salt);
        let before = PartitionMap::compute(&everyone[..count], 2, policy(false)).expect("placement");
        let mut fewer = everyone[..count].to_vec();
        let gone = fewer.remove(leaver % count);
        let after = PartitionMap::compute(&fewer, 2, policy(false)).expect("placement");
        let owned = (0..PARTITIONS).filter(|&p| *before.master(p) == gone.id).count();
        let moved = before.masters_moved(&after);
        // Every partition the leaver mastered must move; hardly any other may.
        let ideal = f64::from(PARTITIONS) / count as f64;
        prop_assert!(moved >= owned);
        prop_assert!(moved as f64 <= ideal * 1.35, "leave moved {} of {} (ideal {:.0})", moved, PARTITIONS, ideal);

        let joined = PartitionMap::compute(&everyone, 2, policy(false)).expect("placement");
        let moved = before.masters_moved(&joined);
        let ideal = f64::from(PARTITIONS) / (count + 1) as f64;
        prop_assert!(moved as f64 <= ideal * 1.35, "join moved {} (ideal {:.0})", moved, ideal);
    }
}

#[test]
fn the_example_places_each_partition_on_two_racks_of_its_site() {
    let text = include_str!("../../examples/two-sites.toml");
    let topology: Topology = parse_topology("two-sites.toml", text).expect("valid").topology;
    for site in ["us-east", "eu-west"] {
        let map = PartitionMap::for_namespace(&topology, site, "test").expect("placement");
        assert_eq!(map.copies(), 2);
        let racks = |id: &NodeId| {
            topology
                .site(site)
                .expect("site")
                .nodes
                .iter()
                .find(|n| &n.id == id)
                .expect("node")
                .rack_id
        };
        for p in 0..PARTITIONS {
            let replicas: Vec<&NodeId> = map.replicas(p).collect();
            assert_ne!(racks(replicas[0]), racks(replicas[1]), "partition {p} at {site}");
        }
        // Same input, same map: what every node of the site computes independently.
        assert_eq!(map, PartitionMap::for_namespace(&topology, site, "test").expect("placement"));
    }
    assert!(PartitionMap::for_namespace(&topology, "nowhere", "test").is_err());
    assert!(PartitionMap::for_namespace(&topology, "us-east", "users").is_err());
}
