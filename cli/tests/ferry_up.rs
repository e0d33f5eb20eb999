//! `ferry up` as a new user runs it: the built-in two-site example on its fixed ports, the demo,
//! writes with the Rust `aerospike` client at one site read at the other, `ferry status --json`,
//! a second `ferry up` refused, Ctrl-C (SIGINT) leaving no process, a restart that finds the
//! records, the Python seed example unchanged, and `ferry down`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aerospike::{Bins, Client, ClientPolicy, ReadPolicy, Value, WritePolicy, as_bin, as_key};
use ferry_tests::workspace_root;
use support::ferry_bin;

const US_EAST: &str = "127.0.0.1:3000";
const EU_WEST: &str = "127.0.0.1:4000";

/// Starts `ferry up` and returns once it printed `Running.`, with everything it printed.
fn up(dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(ferry_bin())
        .arg("up")
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry up");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading after the test stopped listening, as a terminal would.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
                if line.starts_with("Running.") {
                    return (child, printed);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry up did not get to `Running.`; it printed:\n{printed}");
            }
        }
    }
}

/// Node processes whose command line mentions `dir`.
fn nodes_of(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains("node run") && text.contains(&needle) {
            found.push(text);
        }
    }
    found
}

fn sigint_and_wait(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "ferry up exited with {status} after Ctrl-C");
            return;
        }
        assert!(Instant::now() < deadline, "ferry up still running 30 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn read_eventually(client: &Client, key: &aerospike::Key) -> aerospike::Record {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(record) = client.get(&ReadPolicy::default(), key, Bins::All).await {
            return record;
        }
        assert!(Instant::now() < deadline, "{key:?} never became readable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_up_runs_the_example_and_shows_writes_crossing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("ferry-data");
    let (mut first, printed) = tokio::task::block_in_place(|| up(&state, &[]));
    assert!(printed.contains("link us-east -> eu-west: active"), "{printed}");
    assert_eq!(printed.matches("arrived at eu-west after").count(), 3, "demo:\n{printed}");

    let policy = ClientPolicy::default();
    let east = Client::new(&policy, &US_EAST).await.expect("connect us-east");
    let west = Client::new(&policy, &EU_WEST).await.expect("connect eu-west");
    for i in 0..20 {
        let key = as_key!("test", "e2e", i);
        east.put(&WritePolicy::default(), &key, &[as_bin!("i", i)]).await.expect("put");
    }
    for i in 0..20 {
        let record = read_eventually(&west, &as_key!("test", "e2e", i)).await;
        assert_eq!(record.bins.get("i"), Some(&Value::Int(i)));
    }

    let status = Command::new(ferry_bin())
        .args(["status", "--json", "--dir"])
        .arg(&state)
        .output()
        .expect("ferry status");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status is JSON");
    assert_eq!(json["schema"], 2);
    let sites: Vec<&str> = json["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(sites, ["us-east", "eu-west"]);
    assert!(json["sites"][0]["nodes"].as_array().expect("nodes").iter().all(|n| n["up"] == true));
    let link = &json["links"][0];
    assert_eq!((link["from"].as_str(), link["to"].as_str()), (Some("us-east"), Some("eu-west")));
    assert_eq!(link["state"], "active");
    assert!(link["shipped"].as_u64().expect("shipped") >= 23, "{link}");

    let second =
        Command::new(ferry_bin()).arg("up").arg("--dir").arg(&state).output().expect("run");
    assert!(!second.status.success());
    let refusal = String::from_utf8_lossy(&second.stderr);
    assert!(refusal.contains("already running"), "{refusal}");

    east.close().await.ok();
    west.close().await.ok();
    tokio::task::block_in_place(|| sigint_and_wait(&mut first));
    assert_eq!(nodes_of(&state), Vec::<String>::new(), "no node left behind after Ctrl-C");

    // Again on the same directory: the data is still there, on both sites.
    let (mut again, _) = tokio::task::block_in_place(|| up(&state, &["--no-demo"]));
    let east = Client::new(&policy, &US_EAST).await.expect("connect us-east");
    let west = Client::new(&policy, &EU_WEST).await.expect("connect eu-west");
    for i in [0, 19] {
        for client in [&east, &west] {
            let record = client
                .get(&ReadPolicy::default(), &as_key!("test", "e2e", i), Bins::All)
                .await
                .expect("record survives a restart");
            assert_eq!(record.bins.get("i"), Some(&Value::Int(i)));
        }
    }

    // The data commands: a put at one site read back at the other.
    let ferry = |args: &[&str]| {
        Command::new(ferry_bin()).args(args).arg("--dir").arg(&state).output().expect("run ferry")
    };
    let put = ferry(&["put", "us-east", "cli-key", "name=Ann", "age=7"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let get = ferry(&["get", "eu-west", "cli-key"]);
        let text = String::from_utf8_lossy(&get.stdout);
        if get.status.success() {
            assert!(text.contains("name = \"Ann\"") && text.contains("age = 7"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "cli-key never arrived at eu-west");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = ferry(&["logs", "euw-a", "-n", "5"]);
    assert!(logs.status.success() && !logs.stdout.is_empty(), "ferry logs printed nothing");

    // The README's Python seed example, unchanged.
    let python = workspace_root().join(".venv/bin/python");
    let seed = Command::new(&python)
        .arg(workspace_root().join("tests/python/seed_example.py"))
        .arg(US_EAST)
        .output()
        .expect("run the Python seed example (bash .ci/test creates .venv)");
    assert!(
        seed.status.success() && String::from_utf8_lossy(&seed.stdout).contains("passed"),
        "{}{}",
        String::from_utf8_lossy(&seed.stdout),
        String::from_utf8_lossy(&seed.stderr)
    );

    let down =
        Command::new(ferry_bin()).arg("down").arg("--dir").arg(&state).output().expect("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let status = tokio::task::block_in_place(|| again.wait()).expect("ferry up exits");
    assert!(status.success(), "ferry up after ferry down: {status}");
    assert_eq!(nodes_of(&state), Vec::<String>::new(), "no node left behind after ferry down");
}
