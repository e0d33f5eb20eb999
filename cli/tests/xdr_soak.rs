//! A seeded randomized soak of one link `a -> b` with real processes: valid writes (some with
//! a TTL, so they expire into shipped tombstones), writes over Aerospike's limits, deletes,
//! pauses longer than `tombstone-ttl`, SIGKILL of either site's node, and a 64 KiB digest log
//! (so the link overflows and recovers by scan). Every run must end with both sites equal by
//! `verify-digest`, every acknowledged write that nothing later replaced readable at `b` with
//! its value, and link stats that say so (and never said "caught up" while paused behind).
//!
//! Each run prints its seed. CI runs the seeds in [`CI_SEEDS`]; a longer soak:
//! `FERRY_SOAK_SEEDS=20 cargo test -p ferry --test xdr_soak -- --nocapture` (random seeds),
//! and `FERRY_SOAK_SEED=N` replays one.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aerospike::{Bins, Client, Expiration, ReadPolicy, Value, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, Namespace, Site, TestTopology, TopologyBuilder};
use ferry_xdr::link::LinkState;
use support::Deployment;

/// Seeds CI runs: fixed, so a red run is replayed exactly.
const CI_SEEDS: [u64; 2] = [11, 42];
/// Operations per run.
const STEPS: usize = 200;
/// Keys the run writes and deletes.
const KEYS: i64 = 120;

/// A small deterministic generator (xorshift64*), so a seed replays the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What `b` must hold for a key once everything shipped.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    /// The last acknowledged write, which never expires.
    Value(i64),
    /// Deleted, or written with a TTL: absent once the TTL passed.
    Gone,
    /// A write or delete whose outcome the client never learned (its node was killed).
    Unknown,
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("FERRY_SOAK_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    match std::env::var("FERRY_SOAK_SEEDS").ok().and_then(|n| n.parse::<usize>().ok()) {
        Some(count) => {
            let mut rng = Rng(std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15);
            (0..count).map(|_| rng.next() % 1_000_000).collect()
        }
        None => CI_SEEDS.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_end_with_equal_sites_and_truthful_stats() {
    for seed in seeds() {
        println!("xdr soak: seed {seed} (replay: FERRY_SOAK_SEED={seed})");
        soak(seed).await;
    }
}

async fn soak(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let TestTopology { text, nodes } = TopologyBuilder::new("soak")
        .add_site(Site::new("a", 1))
        .add_site(Site::new("b", 1))
        .namespace(Namespace::new("test").tombstone_ttl(2))
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20).ship_nsup_deletes(true))
        .build();
    let args = ["--nsup-period-secs", "1", "--digest-log-cap", "65536"].map(str::to_owned);
    let mut deployment = Deployment::start_with(&text, nodes, args.to_vec()).await;
    let mut a = deployment.client("a").await;
    let mut expected: BTreeMap<i64, Expected> = BTreeMap::new();
    let mut write = WritePolicy::default();
    write.base_policy.total_timeout = 5_000;
    let started = Instant::now();
    for step in 0..STEPS {
        assert!(started.elapsed() < Duration::from_secs(240), "seed {seed}: the run took too long");
        let key = rng.below(KEYS as u64) as i64;
        match rng.below(100) {
            0..=54 => {
                let value = (step as i64) << 8 | key;
                let expires = rng.below(5) == 0;
                let mut policy = write.clone();
                if expires {
                    policy.expiration = Expiration::Seconds(1 + rng.below(2) as u32);
                }
                let bins =
                    [as_bin!("v", value), as_bin!("pad", "x".repeat(rng.below(600) as usize))];
                let outcome = match a.put(&policy, &as_key!("test", "soak", key), &bins).await {
                    Ok(()) if expires => Expected::Gone,
                    Ok(()) => Expected::Value(value),
                    Err(_) => Expected::Unknown,
                };
                expected.insert(key, outcome);
            }
            55..=69 => {
                let outcome = match a.delete(&write, &as_key!("test", "soak", key)).await {
                    Ok(_) => Expected::Gone,
                    Err(_) => Expected::Unknown,
                };
                // Deleting a key never written leaves nothing either way.
                expected.entry(key).and_modify(|e| *e = outcome.clone()).or_insert(outcome);
            }
            70..=79 => {
                // Over Aerospike's limits: refused at the edge, never stored nor shipped.
                let addr = deployment.site("a")[0].client;
                let (set, bin, len) = match rng.below(3) {
                    0 => ("s".repeat(64), "v".to_owned(), 10),
                    1 => ("soak".to_owned(), "b".repeat(16), 10),
                    _ => ("soak".to_owned(), "v".to_owned(), 2 << 20),
                };
                let code = support::raw::put_blob(addr, 0xee, &set, &bin, len).await;
                assert_ne!(
                    code, 0,
                    "seed {seed} step {step}: a write over the limits was acknowledged"
                );
            }
            80..=84 => {
                // Paused longer than tombstone-ttl, with writes and deletes behind it.
                deployment.ferry_link(&["pause", "b"]);
                for k in 0..20 {
                    let key = (key + k) % KEYS;
                    let outcome = match a.delete(&write, &as_key!("test", "soak", key)).await {
                        Ok(_) => Expected::Gone,
                        Err(_) => Expected::Unknown,
                    };
                    expected.insert(key, outcome);
                }
                tokio::time::sleep(Duration::from_millis(2_500 + rng.below(1_500))).await;
                let stats = deployment.link_stats("a", "b").await.remove(0);
                assert_eq!(stats.state, Some(LinkState::Paused), "seed {seed}: {stats:#?}");
                assert!(
                    stats.counters.lag > 0,
                    "seed {seed}: a paused link said lag 0: {stats:#?}"
                );
                deployment.ferry_link(&["resume", "b"]);
            }
            85..=92 => {
                // SIGKILL the source node mid-stream; what was in flight is unknown.
                deployment.kill_node("a-0");
                deployment.start_node("a-0").await;
                a = deployment.client("a").await;
            }
            _ => {
                deployment.kill_node("b-0");
                tokio::time::sleep(Duration::from_millis(rng.below(1_000))).await;
                deployment.start_node("b-0").await;
            }
        }
    }

    // Everything ships, every TTL passes, and both sites reclaim the same tombstones.
    tokio::time::sleep(Duration::from_secs(3)).await;
    deployment.wait_converged("a", "b", Duration::from_secs(120)).await;
    let b = deployment.client("b").await;
    check_values(seed, &b, &expected).await;
    let stats = deployment.link_stats("a", "b").await.remove(0);
    assert_eq!(stats.state, Some(LinkState::Active), "seed {seed}: {stats:#?}");
    let c = &stats.counters;
    assert_eq!(
        (c.in_queue, c.lag, c.parked, c.in_progress),
        (0, 0, 0, 0),
        "seed {seed}: {stats:#?}"
    );
    assert_eq!(deployment.receiver_sum("b", |c| c.refused).await, 0, "seed {seed}");
}

/// Every key whose last acknowledged write stands reads back at `b` with that value; every
/// deleted or expired one is gone.
async fn check_values(seed: u64, b: &Client, expected: &BTreeMap<i64, Expected>) {
    let read = ReadPolicy::default();
    for (key, want) in expected {
        let got = b.get(&read, &as_key!("test", "soak", *key), Bins::All).await.ok();
        let value = got.as_ref().and_then(|record| record.bins.get("v").cloned());
        match want {
            Expected::Value(v) => {
                assert_eq!(value, Some(Value::Int(*v)), "seed {seed}: key {key} at b")
            }
            Expected::Gone => assert_eq!(value, None, "seed {seed}: key {key} at b"),
            Expected::Unknown => {}
        }
    }
}
