//! The unmodified Python `aerospike` client (C client inside) against a real 3-node site:
//! put/get/remove, exists, touch, operate, batch and scan, with int, str and bytes keys.
//! The Python environment is `.venv` at the workspace root (`bash .ci/test` creates it).

mod support;

use std::process::Command;
use std::time::Duration;

use ferry::launcher::Launcher;
use ferry_tests::{one_site_topology, workspace_root};
use support::ferry_bin;

#[test]
fn python_client_works_against_a_three_node_site() {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `bash .ci/test` (it creates the venv with the aerospike package)",
        python.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (text, clients) = one_site_topology(3, 2);
    let topology = dir.path().join("site.toml");
    std::fs::write(&topology, text).expect("write topology");
    let launcher = Launcher {
        binary: ferry_bin(),
        topology,
        state_root: dir.path().join("state"),
        node_args: Vec::new(),
    };
    let _nodes: Vec<_> = clients
        .iter()
        .map(|(id, addr)| {
            let mut node = launcher.start(id, *addr).expect("start node");
            node.wait_ready(Duration::from_secs(20)).expect("node ready");
            node
        })
        .collect();
    let output = Command::new(&python)
        .arg(workspace_root().join("tests/python/client_check.py"))
        .arg(clients[1].1.to_string())
        .output()
        .expect("run the Python client check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
