//! Every client write, touch and delete on a real node gets a digest-log entry. Storage's
//! journal is the write-ahead log and the log is written in the background, so a SIGKILL may
//! cut the log short (what is on disk is a dense prefix); the restarted node relogs what it lost
//! before anything reads the log. After SIGKILL and restart, `ferry digestlog dump` lists an
//! entry for the final version of every acknowledged change.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use aerospike::{Key, WritePolicy, as_bin, as_key};
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

/// Whether `entries` hold the change of `key` to generation `generation` (`op`: write, delete).
fn logged(entries: &[String], key: &Key, generation: u16, op: &str) -> bool {
    let digest: String = key.digest().iter().map(|b| format!("{b:02x}")).collect();
    let (digest, generation, op) =
        (format!("digest={digest} "), format!("gen={generation} "), format!("op={op} "));
    entries.iter().any(|e| e.contains(&digest) && e.contains(&generation) && e.contains(&op))
}

/// The final version of every change the test made: key, generation, op.
fn final_versions() -> Vec<(Key, u16, &'static str)> {
    (0..50i64)
        .map(|i| match i {
            0..5 => (as_key!("test", "log", i), 2, "write"),
            40.. => (as_key!("test", "log", i), 2, "delete"),
            _ => (as_key!("test", "log", i), 1, "write"),
        })
        .collect()
}

/// Dumps the log of a running node until every `(key, generation, op)` has its entry.
fn wait_logged(log_dir: &std::path::Path, wanted: &[(Key, u16, &'static str)]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = dump(log_dir);
        let missing: Vec<_> =
            wanted.iter().filter(|(key, g, op)| !logged(&entries, key, *g, op)).collect();
        if missing.is_empty() {
            return entries;
        }
        assert!(Instant::now() < deadline, "not logged: {missing:?}\n{}", entries.join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    }
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

    // Whatever the kill left of the log is a dense prefix of the 65 changes.
    let log_dir = site.running.launcher().node_dir(&id).join("digestlog");
    let on_disk = dump(&log_dir);
    assert!(on_disk.len() <= 65, "{}", on_disk.join("\n"));
    for (lsn, entry) in (1..).zip(&on_disk) {
        assert!(entry.starts_with(&format!("lsn={lsn} ")), "{}", on_disk.join("\n"));
    }

    // The restarted node relogs what the log lost, then keeps appending after it.
    site.start_node(&id).await;
    let entries = wait_logged(&log_dir, &final_versions());
    let deletes = entries.iter().filter(|e| e.contains("op=delete")).count();
    assert_eq!(deletes, 10, "{}", entries.join("\n"));
    let client = site.client("local").await;
    let late = as_key!("test", "log", 99);
    client.put(&wp, &late, &[as_bin!("i", 99)]).await.expect("put");
    client.close().await.expect("close");
    wait_logged(&log_dir, &[(late, 1, "write")]);
    site.kill_node(&id);

    let inspect = Command::new(ferry_bin()).args(["digestlog", "inspect"]).arg(&log_dir).output();
    let inspect = inspect.expect("run ferry digestlog inspect");
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
}
