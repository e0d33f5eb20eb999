//! The DR drills end to end on two sites whose nodes follow the topology service, under
//! write load: a switchover loses nothing and refuses writes only while roles swap; a
//! failover reports exactly the writes the lost site acknowledged and never shipped; a
//! failback ships them, lists the conflicts and converges; a drill that cannot finish, or is
//! interrupted, leaves the topology as it found it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aerospike::{
    Bins, Client, Error, Key, ReadPolicy, ResultCode, Value, WritePolicy, as_bin, as_key,
};
use ferry_tests::{Link, Role, Site, TopologyBuilder};
use serde_json::Value as Json;
use support::Deployment;

/// Site `a` active shipping to standby `b`; the reverse link exists, disabled.
async fn active_standby() -> Deployment {
    let built = TopologyBuilder::new("drills")
        .add_site(Site::new("a", 2).role(Role::Active))
        .add_site(Site::new("b", 2).role(Role::Standby))
        .link(Link::new("a", "b").period_ms(20))
        .link(Link::new("b", "a").period_ms(20).enabled(false))
        .build();
    Deployment::start_spec(&built.text, built.nodes, |spec| {
        spec.topology_service = Some(([127, 0, 0, 1], 0).into());
    })
    .await
}

/// Writes `records` keys of set `base` at `a`, waits until `b` holds them, then pauses the
/// link `a -> b`: from here on, what `a` takes stays there.
async fn converge_then_cut(deployment: &Deployment, a: &Client, records: i64) {
    for i in 0..records {
        let key = as_key!("test", "base", i);
        a.put(&WritePolicy::default(), &key, &[as_bin!("v", i)]).await.expect("put");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    deployment.ferry_link(&["pause", "a:b"]);
}

fn forbidden(error: &Error) -> bool {
    error.server_result_code() == Some(ResultCode::FailForbidden)
}

fn digest(key: &Key) -> String {
    key.digest().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `ferry drill ARGS --json`; returns the exit code and the report.
fn drill(deployment: &Deployment, args: &[&str]) -> (i32, Json) {
    let mut all = vec!["drill"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, stdout, stderr) = deployment.ferry(&all);
    match serde_json::from_str(&stdout) {
        Ok(report) => (code, report),
        // A drill that failed prints no report: its error stands in for it in assertions.
        Err(_) if code != 0 => (code, Json::String(stderr)),
        Err(e) => panic!("drill printed no report ({e}): {stdout}{stderr}"),
    }
}

/// Every digest a report's lost-write manifest lists.
fn manifest(report: &Json) -> BTreeSet<String> {
    let partitions = report["lost_writes"].as_array().expect("manifest");
    let digests = partitions.iter().flat_map(|p| p["digests"].as_array().expect("digests"));
    digests.map(|d| d.as_str().expect("hex").to_owned()).collect()
}

fn step_names(report: &Json) -> Vec<String> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

/// What a [`moving_writer`] did: the last value acknowledged per key, how often it was
/// refused, and whether it ended at the second site.
type Written = (BTreeMap<i64, i64>, u64, bool);

/// A client that writes keys `0..500` of `set` round and round to `first`, and moves to the
/// other site whenever the one it writes to refuses (a fence), until `stop`.
fn moving_writer(
    first: Arc<Client>,
    second: Arc<Client>,
    set: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Written> {
    tokio::spawn(async move {
        let wp = WritePolicy::default();
        let (mut acked, mut refused, mut at_second) = (BTreeMap::new(), 0u64, false);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0i64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let key = as_key!("test", set, i % 500);
            let site = if at_second { &second } else { &first };
            match site.put(&wp, &key, &[as_bin!("v", i)]).await {
                Ok(()) => {
                    acked.insert(i % 500, i);
                    i += 1;
                }
                Err(e) if forbidden(&e) => {
                    refused += 1;
                    at_second = !at_second;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("write {i}: {e}"),
            }
        }
        (acked, refused, at_second)
    })
}

async fn read_value(client: &Client, key: &Key) -> Option<Value> {
    let record = client.get(&ReadPolicy::default(), key, Bins::All).await.ok()?;
    record.bins.get("v").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_write_load_loses_nothing_and_refuses_only_while_roles_swap() {
    let deployment = active_standby().await;
    let (a, b) = (Arc::new(deployment.client("a").await), Arc::new(deployment.client("b").await));
    let stop = Arc::new(AtomicBool::new(false));
    // A client that writes to the active site and moves to the other when refused.
    let writer = moving_writer(a.clone(), b.clone(), "load", stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, report) = drill(&deployment, &["switchover", "--to", "b"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, refused, ended_at_b) = writer.await.expect("writer");
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (report["drill"].as_str(), report["from"].as_str(), report["to"].as_str()),
        (Some("switchover"), Some("a"), Some("b"))
    );
    assert_eq!(report["rpo_records"], 0, "{report}");
    assert_eq!(report["verified"], true);
    assert!(report["records_verified"].as_u64().expect("records") > 0, "{report}");
    assert!(report["rto_ms"].as_u64().expect("rto") < 30_000, "{report}");
    assert_eq!(step_names(&report), ["preflight", "fence", "drain", "verify", "swap", "confirm"]);
    assert!(refused > 0 && ended_at_b, "the writer was refused at a and moved to b ({refused})");

    // Nothing acknowledged was lost: every key holds its last acknowledged value at the new
    // active site, and b ships it back to a.
    for (k, v) in &acked {
        let key = as_key!("test", "load", *k);
        assert_eq!(read_value(&b, &key).await, Some(Value::Int(*v)), "key {k} at b");
    }
    deployment.wait_converged("b", "a", Duration::from_secs(60)).await;
    let (code, _, _) = deployment.ferry(&["verify", "--from", "b", "--to", "a", "--until", "all"]);
    assert_eq!(code, 0, "the sites are identical after the switchover");
    let put =
        a.put(&WritePolicy::default(), &as_key!("test", "load", 0), &[as_bin!("v", -1)]).await;
    assert!(put.as_ref().is_err_and(forbidden), "the new standby refuses writes: {put:?}");
    let reports = std::fs::read_dir(deployment.running.state.reports()).expect("reports").count();
    assert_eq!(reports, 2, "the drill's report and its verification's report are saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_reports_exactly_the_unshipped_writes_and_failback_ships_and_converges() {
    let deployment = active_standby().await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);
    let wp = WritePolicy::default();
    // Shipping is cut. A record both sites held is updated twice at a (generation 3 there), and
    // a writer keeps writing new keys at a until the failover fences it.
    converge_then_cut(&deployment, &a, 100).await;
    let contested = as_key!("test", "base", 0);
    for v in ["a once", "a twice"] {
        a.put(&wp, &contested, &[as_bin!("v", v)]).await.expect("update at a");
    }
    let writer = tokio::spawn(async move {
        let (mut acked, mut i) = (Vec::new(), 0i64);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let key = as_key!("test", "lost", i);
            match a.put(&WritePolicy::default(), &key, &[as_bin!("v", i)]).await {
                Ok(()) => acked.push(key),
                Err(e) if forbidden(&e) => return (acked, a),
                Err(e) => panic!("write {i}: {e}"),
            }
            i += 1;
        }
        panic!("the failover never fenced a");
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, report) = drill(&deployment, &["failover", "--lose", "a"]);
    let (acked, a) = writer.await.expect("writer");
    assert_eq!(code, 0, "{report}");
    assert_eq!((report["lost"].as_str(), report["promoted"].as_str()), (Some("a"), Some("b")));
    assert_eq!(report["rpo_exact"], true, "{report}");
    assert!(acked.len() > 10, "the load was real: {} writes", acked.len());
    let mut lost: BTreeSet<String> = acked.iter().map(digest).collect();
    lost.insert(digest(&contested));
    assert_eq!(report["rpo_records"], lost.len(), "every acknowledged unshipped write: {report}");
    assert_eq!(manifest(&report), lost);
    for partition in report["lost_writes"].as_array().expect("manifest") {
        let count = partition["count"].as_u64().expect("count");
        assert_eq!(count, partition["digests"].as_array().expect("digests").len() as u64);
        assert!(partition["lut_min"].as_u64() <= partition["lut_max"].as_u64(), "{partition}");
    }

    // The promoted site takes writes; one updates the contested record (generation 2 at b).
    b.put(&wp, &contested, &[as_bin!("v", "from b")]).await.expect("b is active");
    b.put(&wp, &as_key!("test", "after", 1), &[as_bin!("v", 1)]).await.expect("put at b");

    // Clients keep writing at b through the failback and move to a when b is fenced.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = moving_writer(b.clone(), a.clone(), "failback", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, report) = drill(&deployment, &["failback", "--to", "a"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (written, refused, ended_at_a) = writer.await.expect("writer");
    assert_eq!(code, 0, "{report}");
    assert!(refused > 0 && ended_at_a, "the writer was refused at b and moved to a");
    for (k, v) in &written {
        let key = as_key!("test", "failback", *k);
        assert_eq!(read_value(&a, &key).await, Some(Value::Int(*v)), "key {k} at a");
    }
    assert_eq!(report["lost_writes_shipped"], lost.len(), "{report}");
    assert!(report["shipped"]["a -> b"].as_u64().expect("a -> b") >= lost.len() as u64, "{report}");
    let conflicts: Vec<&str> = report["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .map(|c| c["digest"].as_str().expect("digest"))
        .collect();
    assert!(
        conflicts.contains(&digest(&contested).as_str()),
        "the contested record is listed: {report}"
    );
    assert_eq!(report["verified"], true);
    assert_eq!(step_names(&report)[..3], ["preflight", "lost writes", "reconcile"]);

    // Converged: the lost writes are at b; a's generation 3 beat b's generation 2 at both
    // sites (the generation policy); a is active again.
    for key in &acked {
        assert!(read_value(&b, key).await.is_some(), "lost write {key} shipped to b");
    }
    for client in [&a, &b] {
        assert_eq!(read_value(client, &contested).await, Some(Value::from("a twice")));
    }
    a.put(&wp, &as_key!("test", "after", 2), &[as_bin!("v", 2)]).await.expect("a active again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_that_cannot_finish_or_is_interrupted_restores_the_topology() {
    let mut deployment = active_standby().await;
    let a = deployment.client("a").await;
    let wp = WritePolicy::default();
    a.put(&wp, &as_key!("test", "x", 1), &[as_bin!("v", 1)]).await.expect("put");
    // Unhealthy: one node of b is gone. The drill refuses unless forced.
    let gone = deployment.ids("b")[1].clone();
    deployment.kill_node(&gone);
    let (code, _, stderr) = deployment.ferry(&["drill", "switchover", "--to", "b"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not healthy") && stderr.contains(&gone), "{stderr}");

    // Forced, the nodes of b never all apply the fence: the drill gives up and lifts it.
    let (code, _, stderr) =
        deployment.ferry(&["drill", "switchover", "--to", "b", "--force", "--timeout", "3"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("fence failed") && stderr.contains("restored"), "{stderr}");
    a.put(&wp, &as_key!("test", "x", 2), &[as_bin!("v", 2)]).await.expect("the fence is lifted");

    // Interrupted while it waits: Ctrl-C undoes the fence as well.
    let child = std::process::Command::new(support::ferry_bin())
        .args(["drill", "switchover", "--to", "b", "--force", "--timeout", "60", "--dir"])
        .arg(&deployment.running.state.root)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the drill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("interrupt");
    let output = tokio::task::block_in_place(|| child.wait_with_output()).expect("drill ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted during fence") && stderr.contains("restored"), "{stderr}");
    a.put(&wp, &as_key!("test", "x", 3), &[as_bin!("v", 3)]).await.expect("the fence is lifted");
    let topology = std::fs::read_to_string(deployment.topology_file()).expect("topology file");
    assert!(
        !topology.contains("client-writes"),
        "the file shows the restored version:\n{topology}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_site_fails_over_with_a_bound_and_fails_back_exactly() {
    let deployment = active_standby().await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);
    let wp = WritePolicy::default();
    converge_then_cut(&deployment, &a, 20).await;
    let lost: Vec<Key> = (0..6).map(|i| as_key!("test", "frozen", i)).collect();
    for key in &lost {
        a.put(&wp, key, &[as_bin!("v", 1)]).await.expect("put while paused");
    }
    // The bound comes from what the link last reported: wait until it reported these.
    let deadline = Instant::now() + Duration::from_secs(10);
    while deployment.link_sum("a", "b", |c| c.in_queue).await < lost.len() as u64 {
        assert!(Instant::now() < deadline, "the link never reported its queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, report) = drill(&deployment, &["failover", "--lose", "a", "--freeze"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (&report["rpo_exact"], &report["rpo_records"]),
        (&Json::Bool(false), &lost.len().into()),
        "{report}"
    );
    assert_eq!(report["lost_writes"], Json::Array(Vec::new()), "no manifest from a frozen site");
    assert!(step_names(&report).contains(&"cut off".to_owned()), "{report}");
    let topology =
        ferry_topology::load_topology(&deployment.topology_file()).expect("topology").topology;
    let processes = ferry::ops::local_processes(&deployment.running.state.root, &topology, "a")
        .expect("processes");
    assert_eq!(processes.len(), 2);
    assert!(processes.iter().all(|(_, p)| p.frozen), "a's nodes are frozen: {processes:?}");
    b.put(&wp, &as_key!("test", "after", 1), &[as_bin!("v", 1)]).await.expect("b is active");

    let (code, report) = drill(&deployment, &["failback", "--to", "a"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(step_names(&report)[0], "bring back", "{report}");
    assert_eq!(report["lost_writes_shipped"], lost.len(), "exact once a is back: {report}");
    assert_eq!(manifest(&report), lost.iter().map(digest).collect::<BTreeSet<_>>());
    assert_eq!(report["verified"], true);
    for key in &lost {
        assert!(read_value(&b, key).await.is_some(), "{key} shipped to b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_version_the_nodes_follow_not_the_file_they_started_from() {
    let deployment = active_standby().await;
    let service = deployment.topology_service();
    let current = service.current().await.expect("current version");
    let fenced = current.content.replacen(
        "role = \"active\"",
        "role = \"active\"\nwrite-fence = \"client-writes\"",
        1,
    );
    let request = ferry_topology::store::ApplyRequest {
        source: "operator.toml".to_owned(),
        content: fenced,
        author: "test".to_owned(),
        comment: "fence a by hand".to_owned(),
        expected_parent: Some(current.version),
    };
    service.apply(&request).await.expect("apply");
    let (code, json, stderr) = deployment.ferry(&["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: Json = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(status["sites"][0]["write_fence"], "client-writes", "{status}");
    let file = std::fs::read_to_string(deployment.topology_file()).expect("file");
    assert!(!file.contains("client-writes"), "the file is not what status read");
}
