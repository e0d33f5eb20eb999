//! `--log-format json` (or `FERRY_LOG_FORMAT=json`): every line a node logs is one JSON object
//! a log collector can read, with the level and the message as fields.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::{TestTopology, TopologyBuilder};
use support::ferry_bin;

#[test]
fn a_node_logs_json_lines_when_asked() {
    let TestTopology { text, nodes } = TopologyBuilder::new("logs").site("a", 1).build();
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = dir.path().join("topology.toml");
    std::fs::write(&topology, text).expect("write topology");
    // A node serves its admin API only to the holders of tokens its access file lists.
    let granted = Command::new(ferry_bin())
        .args(["access", "grant", "ops", "--role", "admin", "--access"])
        .arg(dir.path().join("state").join("access.toml"))
        .arg("--out")
        .arg(dir.path().join("ops.token"))
        .output()
        .expect("run ferry access grant");
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let mut node = Command::new(ferry_bin())
        .args(["--log-format", "json", "node", "run", "--topology"])
        .arg(&topology)
        .args(["--node", &nodes[0].id, "--dir"])
        .arg(dir.path().join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a node");
    let stderr = node.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ready = line.contains("node ready");
            if lines_tx.send(line).is_err() || ready {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.contains("node ready")) {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = node.kill();
    let _ = node.wait();
    assert!(seen.iter().any(|l| l.contains("node ready")), "never ready:\n{}", seen.join("\n"));
    for line in &seen {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["level"].is_string() && object["fields"]["message"].is_string(), "{line}");
    }
    let ready: serde_json::Value =
        serde_json::from_str(seen.last().expect("a line")).expect("JSON");
    assert_eq!(ready["fields"]["message"], "node ready");
    assert_eq!(ready["level"], "INFO");
}
