//! What an operator sees at a terminal: `ferry status`, `ferry verify` and a drill run on a
//! pseudo-terminal, their tables rendered line by line (and verify's progress bar drawn, as it
//! is only on a terminal), and the same commands' `--json` parsing.

mod support;

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use aerospike::{WritePolicy, as_bin, as_key};
use ferry_tests::{Link, Role, Site, TopologyBuilder};
use support::{Deployment, ferry_bin};

/// Runs `ferry ARGS` with stdout and stderr on a new pseudo-terminal; returns its exit code
/// and everything it wrote there (the terminal's `\r\n` line ends made `\n`).
fn on_terminal(args: &[&str]) -> (i32, String) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let (master, slave): (OwnedFd, OwnedFd) = (pty.master, pty.slave);
    let mut child = Command::new(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("start ferry");
    let mut master = std::fs::File::from(master);
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    // Once the child (the last holder of the terminal's other end) exits, reads fail with EIO.
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    let status = child.wait().expect("ferry ends");
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&bytes).replace("\r\n", "\n"))
}

/// The line of `output` that starts with `start` (after indentation).
fn line<'a>(output: &'a str, start: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_verify_and_a_drill_render_on_a_terminal_and_as_json() {
    let built = TopologyBuilder::new("terminal")
        .add_site(Site::new("a", 2).role(Role::Active))
        .add_site(Site::new("b", 1).role(Role::Standby))
        .link(Link::new("a", "b").period_ms(20))
        .build();
    let deployment = Deployment::start_spec(&built.text, built.nodes, |spec| {
        spec.topology_service = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let a = deployment.client("a").await;
    for i in 0..10 {
        a.put(&WritePolicy::default(), &as_key!("test", "t", i), &[as_bin!("v", i)])
            .await
            .expect("put");
    }
    deployment.wait_converged("a", "b", std::time::Duration::from_secs(30)).await;
    let dir = deployment.running.state.root.to_str().expect("utf-8 path").to_owned();

    let (code, status) = tokio::task::block_in_place(|| on_terminal(&["status", "--dir", &dir]));
    assert_eq!(code, 0, "{status}");
    assert!(line(&status, "site a").contains("active, fence none"), "{status}");
    assert!(line(&status, "site b").contains("standby, fence client-writes"), "{status}");
    let header = line(&status, "link ");
    let row = line(&status, "a -> b");
    // The columns line up: each value ends where its header does.
    for (title, word) in [("lag ms", 4), ("shipped", 5), ("in_queue", 6), ("parked", 7)] {
        let end = header.find(title).expect("column") + title.len();
        let cell = row.split_whitespace().nth(word).expect("cell");
        assert_eq!(&row[end - cell.len()..end], cell, "column {title}:\n{header}\n{row}");
    }
    assert!(row.contains("active"), "{row}");
    let (code, json) =
        tokio::task::block_in_place(|| on_terminal(&["status", "--json", "--dir", &dir]));
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("status --json parses");
    assert_eq!(parsed["links"][0]["state"], "active");

    let (code, verify) = tokio::task::block_in_place(|| {
        on_terminal(&["verify", "--from", "a", "--to", "b", "--until", "all", "--dir", &dir])
    });
    assert_eq!(code, 0, "{verify}");
    assert!(
        verify.contains("nodes summarized") && verify.contains("\x1b[2K"),
        "a progress bar: {verify:?}"
    );
    assert!(line(&verify, "result").ends_with("IDENTICAL"), "{verify}");
    assert!(line(&verify, "records compared").ends_with("10"), "{verify}");

    let (code, drill) = tokio::task::block_in_place(|| {
        on_terminal(&["drill", "switchover", "--to", "b", "--timeout", "30", "--dir", &dir])
    });
    assert_eq!(code, 0, "{drill}");
    let header = line(&drill, "step ");
    assert!(header.contains("ms") && header.contains("detail"), "{header}");
    for step in ["preflight", "fence", "drain", "verify", "swap", "confirm"] {
        let row = line(&drill, &format!("{step} "));
        let ms = row.split_whitespace().nth(1).expect("ms");
        assert!(ms.parse::<u64>().is_ok(), "{step} took a number of ms: {row}");
    }
    assert!(line(&drill, "RPO").ends_with("0 records"), "{drill}");
    assert!(line(&drill, "verified").contains("true (10 records)"), "{drill}");
    assert!(line(&drill, "report saved:").contains("drill-switchover-"), "{drill}");

    let (code, json) = tokio::task::block_in_place(|| {
        on_terminal(&["drill", "switchover", "--to", "a", "--json", "--dir", &dir])
    });
    assert_eq!(code, 0, "{json}");
    // Progress goes to stderr on the same terminal; the report is the JSON document after it.
    let start = json.find("{\n").expect("a JSON document");
    let report: serde_json::Value =
        serde_json::from_str(&json[start..]).expect("drill --json parses");
    assert_eq!((report["from"].as_str(), report["to"].as_str()), (Some("b"), Some("a")));
}
