//! `ferry verify` end to end on two sites: identical sites verify clean (exit 0); every kind
//! of divergence is listed with exactly the records that diverge (exit 1); a busy live link
//! verifies clean below its watermark; a node that does not answer makes the verification
//! fail (exit 2), never pass.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aerospike::{Key, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TopologyBuilder};
use serde_json::Value;
use support::Deployment;

fn digest(key: &Key) -> String {
    key.digest().iter().map(|b| format!("{b:02x}")).collect()
}

/// The digests of one list of a verify report.
fn listed(report: &Value, list: &str) -> BTreeSet<String> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {report}"))
        .iter()
        .map(|r| r["digest"].as_str().expect("digest").to_owned())
        .collect()
}

fn verify_json(deployment: &Deployment, until: &str) -> (i32, Value) {
    let args = ["verify", "--from", "a", "--to", "b", "--json", "--until", until];
    let (code, stdout, stderr) = deployment.ferry(&args);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {stdout}{stderr}"));
    assert!(code == 0 || code == 1, "verify failed ({code}): {stderr}");
    (code, report)
}

async fn two_sites() -> Deployment {
    let built = TopologyBuilder::new("xdr-test")
        .sites(&["a", "b"], 2)
        .link(Link::new("a", "b").period_ms(20))
        .build();
    Deployment::start(&built.text, built.nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_exactly_the_records_that_diverge() {
    let mut deployment = two_sites().await;
    let (a, b) = (deployment.client("a").await, deployment.client("b").await);
    let wp = WritePolicy::default();
    for i in 0..300 {
        a.put(&wp, &as_key!("test", "v", i), &[as_bin!("i", i)]).await.expect("put");
    }
    for i in 0..20 {
        a.delete(&wp, &as_key!("test", "v", i)).await.expect("delete");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    let (code, report) = verify_json(&deployment, "all");
    assert_eq!((code, &report["identical"]), (0, &Value::Bool(true)), "{report}");
    assert_eq!(report["records"], 300, "280 records and 20 tombstones compared: {report}");
    assert_eq!(report["partitions_differing"], 0);

    // Missing at b: written at a while the link is paused.
    deployment.ferry_link(&["pause", "a:b"]);
    let unshipped: Vec<Key> = (1000..1005).map(|i| as_key!("test", "v", i)).collect();
    for key in &unshipped {
        a.put(&wp, key, &[as_bin!("i", 1)]).await.expect("put while paused");
    }
    // Missing at a: written only at b (nothing ships b -> a).
    let only_b: Vec<Key> = (2000..2003).map(|i| as_key!("test", "w", i)).collect();
    for key in &only_b {
        b.put(&wp, key, &[as_bin!("i", 2)]).await.expect("put at b");
    }
    // Different: updated at b only.
    let changed = as_key!("test", "v", 100);
    b.put(&wp, &changed, &[as_bin!("i", -1)]).await.expect("update at b");

    let (code, report) = verify_json(&deployment, "all");
    assert_eq!((code, &report["identical"]), (1, &Value::Bool(false)), "{report}");
    assert_eq!(listed(&report, "missing_at_destination"), unshipped.iter().map(digest).collect());
    assert_eq!(listed(&report, "missing_at_source"), only_b.iter().map(digest).collect());
    assert_eq!(listed(&report, "different"), BTreeSet::from([digest(&changed)]));
    let different = &report["different"][0];
    assert_eq!(
        (&different["source"]["generation"], &different["destination"]["generation"]),
        (&1.into(), &2.into())
    );
    assert_eq!(different["set"], "v");
    let partitions: BTreeSet<u64> = ["missing_at_destination", "missing_at_source", "different"]
        .iter()
        .flat_map(|list| {
            report[list]
                .as_array()
                .expect("list")
                .iter()
                .map(|r| r["partition"].as_u64().expect("partition"))
        })
        .collect();
    assert_eq!(report["partitions_differing"], partitions.len(), "{report}");

    // The live watermark stays behind the paused link: everything changed since the pause is
    // left out, so the sites are identical below it.
    let (code, live) = verify_json(&deployment, "live");
    assert_eq!((code, &live["identical"]), (0, &Value::Bool(true)), "{live}");
    assert!(live["newer_than_watermark"].as_u64().expect("newer") >= 9, "{live}");
    let watermark = live["watermark_ms"].as_u64().expect("a live watermark");
    assert!(watermark < ferry::verify::now_ms() - ferry::verify::LIVE_SLACK_MS, "{live}");

    // The table says the same.
    let (code, table, _) =
        deployment.ferry(&["verify", "--from", "a", "--to", "b", "--until", "all"]);
    assert_eq!(code, 1);
    assert!(table.contains("DIVERGENT") && table.contains("missing at b (5)"), "{table}");
    assert!(table.contains("missing at a (3)") && table.contains("different (1)"), "{table}");
    let reports =
        std::fs::read_dir(deployment.running.state.reports()).expect("reports saved").count();
    assert!(reports >= 4, "every verification saved its report");

    // A node that does not answer: the verification fails, it does not pass.
    let lost = deployment.ids("b")[1].clone();
    deployment.kill_node(&lost);
    let (code, _, stderr) = deployment.ferry(&["verify", "--from", "a", "--to", "b"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&lost), "the error names the silent node: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_live_link_verifies_clean_below_its_watermark() {
    let deployment = two_sites().await;
    let a = deployment.client("a").await;
    let writer = tokio::spawn(async move {
        let wp = WritePolicy::default();
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut i = 0i64;
        while Instant::now() < deadline && i < 200_000 {
            a.put(&wp, &as_key!("test", "busy", i), &[as_bin!("i", i)]).await.expect("put");
            i += 1;
        }
        i
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut verified = 0;
    while !writer.is_finished() && verified < 3 {
        let (code, report) = verify_json(&deployment, "live");
        assert_eq!(code, 0, "a healthy busy link verifies clean: {report}");
        assert!(report["records"].as_u64().expect("records") > 0, "{report}");
        verified += 1;
    }
    assert!(verified > 0, "verification ran while the link was busy");
    let written = writer.await.expect("writer");
    assert!(written > 1000, "the load was real: {written} writes");
    deployment.wait_converged("a", "b", Duration::from_secs(60)).await;
    let (code, report) = verify_json(&deployment, "all");
    assert_eq!((code, &report["newer_than_watermark"]), (0, &0.into()), "{report}");
}
