//! The unmodified Python `aerospike` client (C client inside) against a real 3-node site:
//! put/get/remove, exists, touch, operate (creating missing bins), batch and scan, with int,
//! str and bytes keys; removing the last bin deletes the record; truncate empties a set.
//! The Python environment is `.venv` at the workspace root (`bash .ci/test` creates it).

mod support;

use ferry_tests::workspace_root;
use support::Deployment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_works_against_a_three_node_site() {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `bash .ci/test` (it creates the venv with the aerospike package)",
        python.display()
    );
    let site = Deployment::one_site(3, 2).await;
    let seed = site.site("local")[1].client;
    let output = tokio::process::Command::new(&python)
        .arg(workspace_root().join("tests/python/client_check.py"))
        .arg(seed.to_string())
        .output()
        .await
        .expect("run the Python client check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
