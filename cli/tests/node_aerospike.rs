//! A real 3-node Ferry site (three `ferry node run` processes) driven by the unmodified Rust
//! `aerospike` client: connect and tend, every single-record operation, batch reads across
//! nodes, full scans, durability across SIGKILL, truncation of a set and of a namespace,
//! records deleted by removing their last bin, and a storm of clients connecting at once.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aerospike::query::PartitionFilter;
use aerospike::{
    BatchOperation, BatchPolicy, BatchReadPolicy, Bins, Expiration, GenerationPolicy, QueryPolicy,
    ReadPolicy, RecordExistsAction, ResultCode, Statement, Value, WritePolicy, as_bin, as_key,
    operations,
};
use futures::StreamExt;
use support::Deployment;

fn code(error: &aerospike::Error) -> Option<ResultCode> {
    error.server_result_code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_record_operations_behave_like_aerospike() {
    let site = Deployment::one_site(3, 2).await;
    let client = site.client("local").await;
    assert_eq!(client.nodes().len(), 3, "client discovered every node through peers");
    let wp = WritePolicy::default();
    let rp = ReadPolicy::default();

    // put / get, keys of every type, across all nodes (the client routes by partition map).
    for i in 0..60i64 {
        client
            .put(&wp, &as_key!("test", "kv", i), &[as_bin!("n", i), as_bin!("s", format!("v{i}"))])
            .await
            .expect("put int key");
    }
    client
        .put(&wp, &as_key!("test", "kv", "user1"), &[as_bin!("name", "John Doe")])
        .await
        .expect("put");
    client
        .put(&wp, &as_key!("test", "kv", vec![1u8, 2, 3]), &[as_bin!("f", 1.5)])
        .await
        .expect("put");
    for i in 0..60i64 {
        let record = client.get(&rp, &as_key!("test", "kv", i), Bins::All).await.expect("get");
        assert_eq!(record.bins["n"], Value::from(i));
        assert_eq!(record.bins["s"], Value::from(format!("v{i}")));
        assert_eq!(record.generation, 1);
        assert_eq!(record.time_to_live(), None, "default TTL 0 never expires");
    }
    let named = client.get(&rp, &as_key!("test", "kv", "user1"), ["name"]).await.expect("get");
    assert_eq!(named.bins["name"], Value::from("John Doe"));
    let header =
        client.get(&rp, &as_key!("test", "kv", "user1"), Bins::None).await.expect("header");
    assert!(header.bins.is_empty());
    assert_eq!(header.generation, 1);
    let blob =
        client.get(&rp, &as_key!("test", "kv", vec![1u8, 2, 3]), Bins::All).await.expect("get");
    assert_eq!(blob.bins["f"], Value::from(1.5));

    // exists / delete / touch
    let key = as_key!("test", "kv", 7);
    assert!(client.exists(&rp, &key).await.expect("exists"));
    client.touch(&wp, &key).await.expect("touch");
    assert_eq!(client.get(&rp, &key, Bins::All).await.expect("get").generation, 2);
    assert!(client.delete(&wp, &key).await.expect("delete"));
    assert!(!client.exists(&rp, &key).await.expect("exists after delete"));
    assert!(!client.delete(&wp, &key).await.expect("delete again"));
    let missing = client.get(&rp, &key, Bins::All).await.expect_err("deleted");
    assert_eq!(code(&missing), Some(ResultCode::KeyNotFoundError));
    let touch_missing = client.touch(&wp, &key).await.expect_err("touch missing");
    assert_eq!(code(&touch_missing), Some(ResultCode::KeyNotFoundError));
    client.put(&wp, &key, &[as_bin!("n", 70)]).await.expect("write after delete");
    // Written anew, the record starts over at generation 1, as in Aerospike.
    assert_eq!(client.get(&rp, &key, Bins::All).await.expect("get").generation, 1);

    // record-exists actions and generation policies
    let create_only = WritePolicy {
        record_exists_action: RecordExistsAction::CreateOnly,
        ..WritePolicy::default()
    };
    let exists = client.put(&create_only, &key, &[as_bin!("n", 1)]).await.expect_err("exists");
    assert_eq!(code(&exists), Some(ResultCode::KeyExistsError));
    let update_only = WritePolicy {
        record_exists_action: RecordExistsAction::UpdateOnly,
        ..WritePolicy::default()
    };
    let absent = client.put(&update_only, &as_key!("test", "kv", "nope"), &[as_bin!("n", 1)]).await;
    assert_eq!(code(&absent.expect_err("absent")), Some(ResultCode::KeyNotFoundError));
    let replace =
        WritePolicy { record_exists_action: RecordExistsAction::Replace, ..WritePolicy::default() };
    client.put(&replace, &key, &[as_bin!("other", 1)]).await.expect("replace");
    let replaced = client.get(&rp, &key, Bins::All).await.expect("get");
    assert!(!replaced.bins.contains_key("n") && replaced.bins.contains_key("other"));
    let mut expect_gen = WritePolicy {
        generation_policy: GenerationPolicy::ExpectGenEqual,
        generation: 1,
        ..WritePolicy::default()
    };
    let stale = client.put(&expect_gen, &key, &[as_bin!("n", 1)]).await.expect_err("stale gen");
    assert_eq!(code(&stale), Some(ResultCode::GenerationError));
    expect_gen.generation = replaced.generation;
    client.put(&expect_gen, &key, &[as_bin!("n", 1)]).await.expect("matching generation");

    // operate: add, append, prepend, read back in one round trip
    let counter = as_key!("test", "kv", "counter");
    client.put(&wp, &counter, &[as_bin!("c", 10), as_bin!("t", "mid")]).await.expect("put");
    let add = as_bin!("c", 5);
    let append = as_bin!("t", "-end");
    let prepend = as_bin!("t", "start-");
    let ops = [
        operations::add(&add),
        operations::append(&append),
        operations::prepend(&prepend),
        operations::get_bin("c"),
        operations::get_bin("t"),
    ];
    let result = client.operate(&wp, &counter, &ops).await.expect("operate");
    // With a write among the ops the server answers every op in order (writes as nil), and
    // the client gathers the answers of one bin into a list, as with Aerospike.
    assert_eq!(result.bins["c"], Value::MultiResult(vec![Value::Nil, Value::from(15)]));
    assert_eq!(
        result.bins["t"],
        Value::MultiResult(vec![Value::Nil, Value::Nil, Value::from("start-mid-end")])
    );
    client.add(&wp, &counter, &[as_bin!("c", -20)]).await.expect("add");
    assert_eq!(client.get(&rp, &counter, ["c"]).await.expect("get").bins["c"], Value::from(-5));
    let wrong_type = client.add(&wp, &counter, &[as_bin!("t", 1)]).await.expect_err("type");
    assert_eq!(code(&wrong_type), Some(ResultCode::BinTypeError));

    // TTL: a record written with a 1 s TTL reports it, then disappears.
    let short = as_key!("test", "kv", "short");
    let ttl = WritePolicy::new(0, Expiration::Seconds(1));
    client.put(&ttl, &short, &[as_bin!("x", 1)]).await.expect("put with ttl");
    let fresh = client.get(&rp, &short, Bins::All).await.expect("get");
    assert!(fresh.time_to_live().is_some_and(|t| t <= Duration::from_secs(1)), "{fresh:?}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!client.exists(&rp, &short).await.expect("exists after expiry"));
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_span_nodes_and_scans_return_every_record_once() {
    let site = Deployment::one_site(3, 2).await;
    let client = site.client("local").await;
    let wp = WritePolicy::default();
    const RECORDS: i64 = 500;
    for i in 0..RECORDS {
        client.put(&wp, &as_key!("test", "scan", i), &[as_bin!("i", i)]).await.expect("put");
    }
    client.put(&wp, &as_key!("test", "other", 1), &[as_bin!("i", -1)]).await.expect("put");

    // Batch: 40 present keys spread over all nodes, 10 missing.
    let policy = BatchReadPolicy::default();
    let mut batch: Vec<BatchOperation> = (0..50i64)
        .map(|i| BatchOperation::read(&policy, as_key!("test", "scan", i * 10 + 3), Bins::All))
        .collect();
    client.batch(&BatchPolicy::default(), &mut batch).await.expect("batch");
    for (i, op) in batch.iter().enumerate() {
        let want = i as i64 * 10 + 3;
        if want < RECORDS {
            let record = op.record().unwrap_or_else(|| panic!("row {i} has no record"));
            assert_eq!(record.bins["i"], Value::from(want));
        } else {
            assert!(op.record().is_none(), "row {i} should be missing");
            assert_eq!(op.result_code(), Some(ResultCode::KeyNotFoundError));
        }
    }

    // Scan of one set: every record exactly once, none of the other set.
    assert_eq!(scanned(&client, "scan").await, (0..RECORDS).collect::<BTreeSet<_>>());

    // Whole-namespace scan with a record cap per node answers at most the cap.
    let capped = QueryPolicy { max_records: 30, ..QueryPolicy::default() };
    let mut records = client
        .query(&capped, PartitionFilter::all(), Statement::new("test", "", Bins::None))
        .await
        .expect("capped scan")
        .into_stream();
    let mut count = 0;
    while let Some(record) = records.next().await {
        record.expect("record");
        count += 1;
    }
    assert!((1..=30).contains(&count), "capped scan returned {count}");
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let mut site = Deployment::one_site(3, 2).await;
    let client = site.client("local").await;
    let wp = WritePolicy::default();
    // Concurrent writers; every acknowledged key is remembered. They stop at their first
    // failure once the nodes are down.
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let crashed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in 0..8i64 {
        let client = client.clone();
        let wp = wp.clone();
        let (acked_so_far, crashed) = (Arc::clone(&acked_so_far), Arc::clone(&crashed));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..1_000i64 {
                let n = writer * 1000 + i;
                if client.put(&wp, &as_key!("test", "crash", n), &[as_bin!("n", n)]).await.is_ok() {
                    acked.push(n);
                    acked_so_far.fetch_add(1, Ordering::Relaxed);
                } else if crashed.load(Ordering::Relaxed) {
                    break;
                }
            }
            acked
        }));
    }
    // Crash every node while writes are in flight: once some were acknowledged (a slow
    // machine may take a while for the first).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked_so_far.load(Ordering::Relaxed) < 40 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in site.ids("local") {
        site.kill_node(&id);
    }
    crashed.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("writer"));
    }
    client.close().await.expect("close");
    assert!(!acked.is_empty(), "some writes were acknowledged before the crash");

    for id in site.ids("local") {
        site.start_node(&id).await;
    }
    let client = site.client("local").await;
    let rp = ReadPolicy::default();
    for n in &acked {
        let record = client
            .get(&rp, &as_key!("test", "crash", *n), Bins::All)
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {n} lost after SIGKILL: {e}"));
        assert_eq!(record.bins["n"], Value::from(*n));
    }
    client.close().await.expect("close");
}

/// Bin `i` of every record of set `set` a full scan of namespace `test` returns; fails on a
/// record returned twice.
async fn scanned(client: &aerospike::Client, set: &str) -> BTreeSet<i64> {
    let statement = Statement::new("test", set, Bins::All);
    let mut records = client
        .query(&QueryPolicy::default(), PartitionFilter::all(), statement)
        .await
        .expect("scan")
        .into_stream();
    let mut seen = BTreeSet::new();
    while let Some(record) = records.next().await {
        let record = record.expect("scan record");
        let Value::Int(i) = record.bins["i"] else { panic!("bin i is not an integer: {record:?}") };
        assert!(seen.insert(i), "record {i} returned twice");
    }
    seen
}

/// Objects of set `set` of namespace `test` over the site's nodes, from info `sets/test/<set>`.
async fn set_objects(site: &Deployment, set: &str) -> u64 {
    let answers = site.info("local", &format!("sets/test/{set}")).await;
    let objects = |answer: &String| -> u64 {
        let field = answer.split(':').find_map(|kv| kv.strip_prefix("objects="));
        field.map_or(0, |n| n.trim_end_matches(';').parse().expect("objects count"))
    };
    answers.iter().map(objects).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_removes_a_set_or_a_namespace_on_every_node_for_good() {
    let mut site = Deployment::one_site(3, 1).await;
    let client = site.client("local").await;
    let wp = WritePolicy::default();
    for i in 0..100i64 {
        for set in ["gone", "kept"] {
            client.put(&wp, &as_key!("test", set, i), &[as_bin!("i", i)]).await.expect("put");
        }
    }
    let admin = aerospike::AdminPolicy::default();

    assert_eq!(set_objects(&site, "gone").await, 100);
    // One node receives the command; every node truncates (each owns a third of the keys).
    client.truncate(&admin, "test", "gone", 0).await.expect("truncate a set");
    assert_eq!(set_objects(&site, "gone").await, 0, "the set's object count follows");
    assert_eq!(set_objects(&site, "kept").await, 100);
    client.put(&wp, &as_key!("test", "gone", 1000), &[as_bin!("i", 1000)]).await.expect("put");
    assert_eq!(scanned(&client, "gone").await, BTreeSet::from([1000]), "written after");
    assert_eq!(scanned(&client, "kept").await.len(), 100, "another set is untouched");
    let rp = ReadPolicy::default();
    let read = client.get(&rp, &as_key!("test", "gone", 5), Bins::All).await;
    assert_eq!(read.map(|_| ()).map_err(|e| code(&e)), Err(Some(ResultCode::KeyNotFoundError)));
    // A truncated key starts over: a new record of generation 1.
    client.put(&wp, &as_key!("test", "gone", 5), &[as_bin!("i", 5)]).await.expect("put again");
    let record = client.get(&rp, &as_key!("test", "gone", 5), Bins::All).await.expect("get");
    assert_eq!(record.generation, 1);

    // Up to a time in the past: only what was written before it goes. Last-update times are
    // in milliseconds: the cut-off is a few clear of the writes on either side.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.put(&wp, &as_key!("test", "kept", 500), &[as_bin!("i", 500)]).await.expect("put");
    let nanos = before.duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    client.truncate(&admin, "test", "", nanos as i64).await.expect("truncate the namespace");
    assert_eq!(scanned(&client, "kept").await, BTreeSet::from([500]));
    assert!(scanned(&client, "gone").await.is_empty());
    let future = (nanos + 3_600_000_000_000) as i64;
    assert!(client.truncate(&admin, "test", "kept", future).await.is_err(), "lut in the future");

    // Gone for good: every node restarts.
    client.close().await.expect("close");
    for id in site.ids("local") {
        site.kill_node(&id);
        site.start_node(&id).await;
    }
    let client = site.client("local").await;
    assert_eq!(scanned(&client, "kept").await, BTreeSet::from([500]));
    assert!(scanned(&client, "gone").await.is_empty());
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_bin_deletes_the_record() {
    let site = Deployment::one_site(1, 1).await;
    let client = site.client("local").await;
    let (wp, rp) = (WritePolicy::default(), ReadPolicy::default());
    let key = as_key!("test", "bins", 1);
    client.put(&wp, &key, &[as_bin!("a", 1), as_bin!("b", 2)]).await.expect("put");
    client.put(&wp, &key, &[as_bin!("a", None)]).await.expect("remove one bin");
    let record = client.get(&rp, &key, Bins::All).await.expect("one bin left");
    assert_eq!(record.bins.len(), 1);
    client.put(&wp, &key, &[as_bin!("b", None)]).await.expect("remove the last bin");
    let read = client.get(&rp, &key, Bins::All).await;
    assert_eq!(read.map(|_| ()).map_err(|e| code(&e)), Err(Some(ResultCode::KeyNotFoundError)));
    assert!(!client.exists(&rp, &key).await.expect("exists"));
    assert!(scanned(&client, "bins").await.is_empty(), "no empty record in scans");

    // Operations on bins that do not exist yet create them, on a new record too.
    let counter = as_key!("test", "bins", 2);
    let ops = [
        operations::add(&as_bin!("n", 5)),
        operations::append(&as_bin!("s", "tail")),
        operations::prepend(&as_bin!("p", "head")),
        operations::get(),
    ];
    let record = client.operate(&wp, &counter, &ops).await.expect("operate on a new record");
    assert_eq!(record.bins.get("n"), Some(&Value::from(5)));
    assert_eq!(record.bins.get("s"), Some(&Value::from("tail")));
    assert_eq!(record.bins.get("p"), Some(&Value::from("head")));
    client.close().await.expect("close");
}

/// Established TCP connections to `port` on this host (the server side of clients' sockets;
/// the fabric's pooled connections between nodes use other ports).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let local_port = format!(":{port:04X}");
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.get(1)?, *fields.get(3)?))
        })
        .filter(|(local, state)| local.ends_with(&local_port) && *state == "01")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_clients_gets_partition_maps_and_leaves_no_connection_behind() {
    const CLIENTS: usize = 48;
    let site = Deployment::one_site(3, 2).await;
    let ports: Vec<u16> = site.site("local").iter().map(|n| n.client.port()).collect();
    let before: Vec<usize> = ports.iter().map(|&port| connections_to(port)).collect();

    // Every client connects, tends (node, peers, partition-generation, replicas) and writes
    // and reads a key of its own at once, as a test suite creating a client per test does.
    let storm = (0..CLIENTS).map(|i| {
        let site = &site;
        async move {
            let client = site.client("local").await;
            let key = as_key!("test", "storm", i as i64);
            client.put(&WritePolicy::default(), &key, &[as_bin!("i", i as i64)]).await?;
            let record = client.get(&ReadPolicy::default(), &key, Bins::All).await?;
            client.close().await?;
            Ok::<_, aerospike::Error>(record.bins.get("i").cloned())
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(storm))
        .await
        .expect("the storm ends within a minute");
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.expect("every client works"), Some(Value::from(i as i64)));
    }

    // Closed clients leave no connection behind on any node.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let after: Vec<usize> = ports.iter().map(|&port| connections_to(port)).collect();
        if after.iter().zip(&before).all(|(after, before)| after <= before) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "client connections {before:?} -> {after:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
