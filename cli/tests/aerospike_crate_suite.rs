//! The `aerospike` crate's own integration tests — its kv, batch, scan and truncate modules —
//! run unchanged against a real 3-node Ferry site: the conformance bar of DESIGN §3.
//!
//! The suite is the crate's published source in Cargo's registry (the version this workspace
//! locks). Nothing of it is kept in this repository: it is copied under
//! `target/aerospike-crate-suite/` at test time and built there by Cargo, then pointed at the
//! site with `AEROSPIKE_HOSTS`. Tests of features Ferry does not serve are skipped by name,
//! each with its reason ([`SKIPPED`], listed in docs/node.md too).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::workspace_root;
use support::Deployment;

/// The crate's test modules that are in scope.
const MODULES: &[&str] = &["src::kv::", "src::batch::", "src::scan::", "src::truncate::"];

/// Tests of those modules Ferry does not pass by design, and why.
const SKIPPED: &[(&str, &str)] = &[
    (
        "src::scan::",
        "every scan test takes the suite's shared client, whose set-up registers a Lua UDF and \
         creates a secondary index; Ferry serves neither (scans are covered by node_aerospike.rs \
         and the Python client check)",
    ),
    ("src::batch::batch_operate_read", "registers and runs a Lua UDF"),
    ("src::batch::batch_udf_nil_return_is_the_same_alone_and_grouped", "runs a Lua UDF"),
    ("src::batch::batch_operate_read_multi_op_single_bin", "CDT list operations"),
    ("src::batch::batch_write_repeat_compression", "a CDT list append"),
    ("src::batch::batch_row_error_detail_absent_at_verbosity_zero", "an HLL operation"),
    ("src::kv::operate_simple_write_between_cdt_ops_keeps_results_aligned", "CDT operations"),
    (
        "src::batch::dropping_batch_foreach_stops_the_hook",
        "assumes a one-node cluster: a parallel batch over three nodes calls the hook once per \
         node, as against three Aerospike nodes",
    ),
];

/// The source directory of the `aerospike` package this workspace locks.
fn registry_source() -> PathBuf {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("metadata");
    let packages = metadata["packages"].as_array().expect("packages");
    let aerospike = packages
        .iter()
        .find(|p| p["name"] == "aerospike")
        .expect("the workspace depends on the aerospike crate");
    let manifest = aerospike["manifest_path"].as_str().expect("manifest path");
    Path::new(manifest).parent().expect("package directory").to_path_buf()
}

/// Copies `from` into `to` (replacing it), as `cp -r` does.
fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to.parent().expect("parent")).expect("create the copy's parent");
    let status = Command::new("cp").arg("-r").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "copy {} to {}", from.display(), to.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aerospike_crates_kv_batch_scan_and_truncate_tests_pass() {
    let suite = workspace_root().join("target/aerospike-crate-suite");
    let source = suite.join("source");
    copy_tree(&registry_source(), &source);
    // The copy sits inside this workspace's directory but is a package of its own.
    let manifest = source.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read the crate's manifest");
    std::fs::write(&manifest, text + "\n[workspace]\n").expect("write the crate's manifest");

    let suite_command = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO"));
        command
            .arg("test")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--test", "lib", "--"])
            .args(args)
            .env("CARGO_TARGET_DIR", suite.join("target"))
            .env("AEROSPIKE_NAMESPACE", "test")
            .env_remove("RUSTFLAGS");
        command
    };

    // The tests in scope by exact name: a skipped name is never a prefix of one that runs.
    let listed = suite_command(&["--list"]).output().expect("list the crate's tests");
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let skipped = |name: &str| {
        SKIPPED
            .iter()
            .any(|(skip, _)| name == *skip || (skip.ends_with("::") && name.starts_with(skip)))
    };
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .filter(|name| MODULES.iter().any(|module| name.starts_with(module)) && !skipped(name))
        .collect();
    assert!(names.len() > 30, "too few tests in scope: {names:?}");

    let site = Deployment::one_site(3, 2).await;
    let seed = site.site("local")[0].client;
    let mut args = vec!["--exact"];
    args.extend(&names);
    let output = suite_command(&args)
        .env("AEROSPIKE_HOSTS", seed.to_string())
        .output()
        .expect("run the aerospike crate's tests");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = stdout.lines().filter(|l| l.starts_with("test result")).collect();
    assert!(
        output.status.success(),
        "the aerospike crate's tests failed against Ferry\n{stdout}\n{stderr}\nnode warnings:\n{}",
        site.log_warnings()
    );
    eprintln!("aerospike crate suite: {summary:?}");
}
