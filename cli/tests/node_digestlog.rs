//! Every client write, touch and delete on a real node lands in its digest log, durably: after
//! SIGKILL and restart, `ferry digestlog dump` lists an entry for every acknowledged change.

mod support;

use std::process::Command;

use aerospike::{WritePolicy, as_bin, as_key};
use support::{Deployment, ferry_bin};

fn dump(dir: &std::path::Path) -> Vec<String> {
    let output = Command::new(ferry_bin())
        .args(["digestlog", "dump"])
        .arg(dir)
        .output()
        .expect("run ferry digestlog dump");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_are_in_the_digest_log_after_a_crash() {
    let mut site = Deployment::one_site(1, 1).await;
    let id = site.ids("local").remove(0);
    let client = site.client("local").await;
    let wp = WritePolicy::default();
    for i in 0..50i64 {
        client.put(&wp, &as_key!("test", "log", i), &[as_bin!("i", i)]).await.expect("put");
    }
    for i in 0..5i64 {
        client.touch(&wp, &as_key!("test", "log", i)).await.expect("touch");
    }
    for i in 40..50i64 {
        assert!(client.delete(&wp, &as_key!("test", "log", i)).await.expect("delete"));
    }
    client.close().await.expect("close");
    site.kill_node(&id);

    let log_dir = site.running.launcher().node_dir(&id).join("digestlog");
    let entries = dump(&log_dir);
    assert_eq!(entries.len(), 65, "50 puts + 5 touches + 10 deletes:\n{}", entries.join("\n"));
    let deletes = entries.iter().filter(|e| e.contains("delete")).count();
    assert_eq!(deletes, 10, "{}", entries.join("\n"));

    // The node restarts on the same log and keeps appending after it.
    site.start_node(&id).await;
    let client = site.client("local").await;
    client.put(&wp, &as_key!("test", "log", 99), &[as_bin!("i", 99)]).await.expect("put");
    client.close().await.expect("close");
    site.kill_node(&id);
    assert_eq!(dump(&log_dir).len(), 66);

    let inspect = Command::new(ferry_bin()).args(["digestlog", "inspect"]).arg(&log_dir).output();
    let inspect = inspect.expect("run ferry digestlog inspect");
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
}
