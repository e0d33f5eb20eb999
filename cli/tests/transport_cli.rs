//! `ferry certs init|show` and `ferry wan` as real processes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{free_ports, workspace_root};
use support::ferry_bin;

#[test]
fn certs_init_writes_private_keys_and_show_reads_them_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let example = workspace_root().join("examples/two-sites.toml");
    let init = Command::new(ferry_bin())
        .args(["certs", "init", "--topology"])
        .arg(&example)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run ferry certs init");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    for (site, node) in [("us-east", "use-a"), ("eu-west", "euw-c")] {
        let key = out.join(site).join(format!("{node}.key"));
        let mode = std::fs::metadata(&key).expect("key exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        assert!(out.join(site).join("ca.pem").is_file());
    }
    let show = Command::new(ferry_bin()).args(["certs", "show"]).arg(&out).output().expect("show");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    assert!(text.contains("ferry://site/us-east/node/use-a"), "{text}");
    assert!(text.contains("days left"), "{text}");
}

#[test]
fn wan_relay_answers_its_control_socket_and_stops_on_sigint() {
    let ports = free_ports(3);
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut relay = Command::new(ferry_bin())
        .args(["wan", "--listen", &addr(ports[0]), "--forward", &addr(ports[1])])
        .args(["--control", &addr(ports[2]), "--delay-ms", "25", "--loss", "0.01"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferry wan");
    let mut banner = String::new();
    BufReader::new(relay.stdout.take().expect("stdout")).read_line(&mut banner).expect("banner");
    assert!(banner.contains("relaying"), "{banner}");

    let mut control = std::net::TcpStream::connect(addr(ports[2])).expect("control socket");
    control.write_all(b"show\n").expect("send show");
    let mut answer = String::new();
    BufReader::new(&control).read_line(&mut answer).expect("answer");
    let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert!(answer.contains("25"), "the configured delay shows: {json}");

    let pid = relay.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = relay.try_wait().expect("wait") {
            assert!(status.success(), "relay exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "relay did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}
