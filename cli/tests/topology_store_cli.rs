//! `ferry topology apply/history/diff/rollback/show/serve` as real processes over a real store.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferry_tests::workspace_root;
use ferry_topology::service::{ClientError, TopologyClient};
use support::ferry_bin;

fn ferry(store: &str, args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .env("FERRY_TOPOLOGY_STORE", store)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("run the ferry binary: {e}"))
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn versions_are_applied_listed_diffed_and_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("state").join("topology.db").display().to_string();
    let example = "examples/two-sites.toml";
    let enabled = dir.path().join("enabled.toml");
    let text = std::fs::read_to_string(workspace_root().join(example)).expect("example");
    std::fs::write(&enabled, text.replace("enabled = false", "enabled = true")).expect("write");
    let enabled = enabled.display().to_string();

    let out = ok(&ferry(&store, &["topology", "apply", "--dry-run", example]));
    assert!(out.contains("would become version 1"), "{out}");
    assert!(
        ok(&ferry(&store, &["topology", "apply", example, "--comment", "first"]))
            .contains("applied as version 1")
    );
    assert!(ok(&ferry(&store, &["topology", "apply", example])).contains("unchanged"));

    let dry = ok(&ferry(&store, &["topology", "apply", "--dry-run", &enabled]));
    assert!(dry.contains("* link eu-west→us-east enabled"), "{dry}");
    assert!(dry.contains("+enabled = true"), "{dry}");
    assert!(ok(&ferry(&store, &["topology", "apply", &enabled])).contains("applied as version 2"));

    // An invalid file is refused with positions and the store keeps its two versions.
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, text.replace("src-id = 2", "src-id = 1")).expect("write");
    let refused = ferry(&store, &["topology", "apply", &invalid.display().to_string()]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("invalid.toml:"), "{stderr}");
    assert!(stderr.contains("error: sites[1].src-id: src-id 1 is already used"), "{stderr}");
    assert!(stderr.contains("invalid.toml: invalid (1 error)"), "{stderr}");
    assert!(stderr.contains("nothing changed"), "{stderr}");

    // Compare-and-set from the command line: a stale expectation changes nothing.
    let stale = ferry(&store, &["topology", "apply", "--expect-version", "1", example]);
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("conflict"));

    let history = ok(&ferry(&store, &["topology", "history"]));
    let rows: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert!(rows[0].contains("first"), "{history}");

    let diff = ok(&ferry(&store, &["topology", "diff", "1", "2"]));
    assert!(diff.contains("-enabled = false") && diff.contains("link eu-west→us-east enabled"));

    assert!(ok(&ferry(&store, &["topology", "rollback", "1"])).contains("applied as version 3"));
    assert_eq!(ok(&ferry(&store, &["topology", "show"])), text);
    let json = ok(&ferry(&store, &["topology", "show", "--version", "2", "--json"]));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("show --json is JSON");
    assert_eq!(parsed["version"], 2);
    assert_eq!(parsed["topology"]["links"][1]["enabled"], true);

    let missing = ferry(&store, &["topology", "show", "--version", "42"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("version 42 does not exist"));
}

#[test]
fn serve_answers_clients_and_stops_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("topology.db").display().to_string();
    ok(&ferry(&store, &["topology", "apply", "examples/two-sites.toml"]));
    let access = dir.path().join("access.toml").display().to_string();
    let credential = dir.path().join("reader.token");
    let granted = Command::new(ferry_bin())
        .args(["access", "grant", "reader", "--role", "read-only", "--access", &access, "--out"])
        .arg(&credential)
        .output()
        .expect("run ferry access grant");
    ok(&granted);
    let token = ferry_auth::access::read_credential(&credential).expect("a private credential");

    let mut child = Command::new(ferry_bin())
        .args(["topology", "serve", "--listen", "127.0.0.1:0", "--store", &store])
        .args(["--access", &access])
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferry topology serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first_line = String::new();
    BufReader::new(stdout).read_line(&mut first_line).expect("read banner");
    let base = first_line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first_line:?}"))
        .to_owned();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let refused = runtime.block_on(TopologyClient::new(&base, None).current());
    assert!(
        matches!(refused, Err(ClientError::Refused { status: 401, .. })),
        "a caller without a token was answered {refused:?}"
    );
    let version = runtime
        .block_on(TopologyClient::new(&base, Some(token)).current())
        .expect("current version over HTTP");
    assert_eq!(version.version, 1);
    assert_eq!(version.topology.sites.len(), 2);

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}
