//! Prints how evenly placement spreads masters and how many partitions move when a node
//! joins or leaves, next to the ideal (1/N of the partitions). Run with
//! `cargo run --release -p ferry-topology --example placement_movement`.

#![allow(clippy::print_stdout)]

use ferry_topology::model::{NodeId, PlacementPolicy};
use ferry_topology::placement::{Member, PARTITIONS, PartitionMap};

fn members(count: usize, racks: u32) -> Vec<Member> {
    (0..count)
        .map(|i| Member {
            id: NodeId::try_from(format!("node-{i:03}")).expect("valid id"),
            rack: i as u32 % racks,
            zone: None,
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = PlacementPolicy::default();
    let partitions = f64::from(PARTITIONS);
    println!(
        "{:>5} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "nodes", "racks", "spread", "leave moved", "join moved", "ideal", "copies moved"
    );
    for &(count, racks) in
        &[(3, 2), (4, 2), (6, 2), (6, 3), (8, 4), (12, 3), (16, 4), (32, 4), (64, 8)]
    {
        let all = members(count + 1, racks);
        let before = PartitionMap::compute(&all[..count], 2, policy)?;
        let masters = before.masters_per_node();
        let (min, max) = (
            masters.iter().min().copied().unwrap_or(0),
            masters.iter().max().copied().unwrap_or(0),
        );
        let mean = partitions / count as f64;
        // A node leaves: drop the middle one.
        let mut without = all[..count].to_vec();
        without.remove(count / 2);
        let left = PartitionMap::compute(&without, 2, policy)?;
        // A node joins.
        let joined = PartitionMap::compute(&all, 2, policy)?;
        println!(
            "{count:>5} {racks:>6} {:>11.1}% {:>11.1}% {:>11.1}% {:>11.1}% {:>11.1}%",
            (max - min) as f64 / mean * 100.0,
            before.masters_moved(&left) as f64 / partitions * 100.0,
            before.masters_moved(&joined) as f64 / partitions * 100.0,
            100.0 / count as f64,
            before.replica_sets_changed(&left) as f64 / partitions * 100.0,
        );
    }
    Ok(())
}
