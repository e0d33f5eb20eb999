//! `ferry topology validate`, run as a real process.

mod support;

use std::process::{Command, Output};

use ferry_tests::workspace_root;
use support::ferry_bin;

fn ferry(args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("run the ferry binary: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_two_site_example() {
    let output = ferry(&["topology", "validate", "examples/two-sites.toml"]);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("2 sites, 6 nodes, 2 links"), "stdout:\n{stdout}");
    assert!(stdout.contains("examples/two-sites.toml: valid"), "stdout:\n{stdout}");
    assert!(!stdout.contains("warning"), "stdout:\n{stdout}");
}

const UNKNOWN_LINK_NAMESPACE: &str = r#"name = "typo"

[[sites]]
name = "us-east"
src-id = 1
role = "active"

[[sites.nodes]]
id = "use-a"
client = "127.0.0.1:3000"
fabric = "127.0.0.1:3001"
xdr = "127.0.0.1:3002"
admin = "127.0.0.1:3003"

[[sites.namespaces]]
name = "test"
replication-factor = 1

[[sites]]
name = "eu-west"
src-id = 2
role = "standby"

[[sites.nodes]]
id = "euw-a"
client = "127.0.0.1:4000"
fabric = "127.0.0.1:4001"
xdr = "127.0.0.1:4002"
admin = "127.0.0.1:4003"

[[sites.namespaces]]
name = "test"
replication-factor = 1

[[links]]
from = "us-east"
to = "eu-west"
namespaces = ["tset"]
"#;

#[test]
fn validate_reports_an_unknown_link_namespace_with_its_position() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, UNKNOWN_LINK_NAMESPACE).expect("write the topology");
    // The diagnostic points at the misspelt value: line and column of `"tset"`, 1-based.
    let (line, column) = UNKNOWN_LINK_NAMESPACE
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"tset\"").map(|c| (i + 1, c + 1)))
        .expect("the topology names tset");
    assert_eq!((line, column), (38, 15));

    let file = path.to_str().expect("UTF-8 temporary path");
    let output = ferry(&["topology", "validate", file]);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let expected = format!(
        "{file}:{line}:{column}: error: links[0].namespaces[0]: link us-east→eu-west names \
         namespace 'tset', which no site defines; known: test"
    );
    assert!(stderr.contains(&expected), "stderr lacks\n{expected}\nstderr:\n{stderr}");
    assert!(stderr.contains(&format!("{file}: invalid (1 error)")), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

#[test]
fn validate_of_a_missing_file_names_it_without_panicking() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("no-such-topology.toml");
    let file = path.to_str().expect("UTF-8 temporary path");
    let output = ferry(&["topology", "validate", file]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "stderr:\n{stderr}");
    assert_ne!(output.status.code(), None, "killed by a signal; stderr:\n{stderr}");
    assert!(stderr.contains(file), "stderr should name {file}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}
