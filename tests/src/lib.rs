//! Helpers for the end-to-end tests: locating the `ferry` binary built by this workspace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The root of the workspace (the directory holding `examples/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// The `ferry` binary of the profile this test was built with, brought up to date.
///
/// `env!("CARGO_BIN_EXE_ferry")` only exists inside the `ferry-node` package, and a dev-dependency
/// on `ferry-node` is ignored (it has no library), so nothing makes `cargo test` build the binary
/// for this package. The first call therefore runs `cargo build --bin ferry` (a no-op when the
/// binary is fresh, and it keeps a stale binary from being tested); the binary sits next to the
/// test executable's `deps/` directory: `.../target/debug/deps/xxx` → `.../target/debug/ferry`.
///
/// # Panics
///
/// If the build fails, or the binary is still missing afterwards.
pub fn ferry_bin() -> PathBuf {
    static BUILD: OnceLock<Result<(), BuildError>> = OnceLock::new();
    let (profile_dir, path) = ferry_bin_path();
    match BUILD.get_or_init(|| build_ferry(&profile_dir)) {
        Ok(()) => {}
        // Without cargo (the test executable run by hand), an existing binary is the best guess.
        Err(BuildError::Spawn(_)) if path.is_file() => {}
        Err(error) => panic!(
            "could not build the ferry binary at {}; build it with `cargo build --bin ferry`: \
             {error}",
            path.display()
        ),
    }
    assert!(
        path.is_file(),
        "the ferry binary is missing at {}; build it with `cargo build --bin ferry`",
        path.display()
    );
    path
}

/// The profile directory of the running test executable and the `ferry` binary inside it.
fn ferry_bin_path() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().unwrap_or_else(|e| {
        panic!("cannot locate the test executable (to find the ferry binary): {e}")
    });
    // .../target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .unwrap_or_else(|| {
            panic!(
                "test executable {} is not in a target/<profile>/deps directory; build the ferry \
                 binary with `cargo build --bin ferry`",
                exe.display()
            )
        })
        .to_path_buf();
    let path = profile_dir.join(format!("ferry{}", std::env::consts::EXE_SUFFIX));
    (profile_dir, path)
}

#[derive(Debug)]
enum BuildError {
    /// Cargo could not be started.
    Spawn(String),
    /// Cargo ran and failed.
    Failed(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Spawn(message) | BuildError::Failed(message) => f.write_str(message),
        }
    }
}

/// Runs `cargo build --bin ferry` for the profile whose output directory is `profile_dir`.
fn build_ferry(profile_dir: &Path) -> Result<(), BuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "ferry-node",
        "--bin",
        "ferry",
    ]);
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let output = command.output().map_err(|e| {
        BuildError::Spawn(format!("cannot run {}: {e}", Path::new(&cargo).display()))
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(format!(
            "{:?} exited with {}:\n{}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Distinct free TCP ports on 127.0.0.1 (bound, then released; a test-only race accepted).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("bind a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap_or_else(|e| panic!("local address: {e}")).port())
        .collect()
}

/// A one-site topology of `nodes` nodes on two racks, namespace `test` with `rf` copies, on free
/// loopback ports. Returns the file text and each node's (id, client address).
pub fn one_site_topology(nodes: usize, rf: u8) -> (String, Vec<(String, std::net::SocketAddr)>) {
    use std::fmt::Write as _;
    let ports = free_ports(nodes * 4);
    let mut text = String::from(
        "name = \"test-site\"\n\n[[sites]]\nname = \"local\"\nsrc-id = 1\nrole = \"active\"\n",
    );
    let mut clients = Vec::new();
    for (i, p) in ports.chunks(4).enumerate() {
        let id = format!("node-{i}");
        let _ = write!(
            text,
            "\n[[sites.nodes]]\nid = \"{id}\"\nrack-id = {}\nclient = \"127.0.0.1:{}\"\n\
             fabric = \"127.0.0.1:{}\"\nxdr = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            i % 2,
            p[0],
            p[1],
            p[2],
            p[3]
        );
        clients.push((id, std::net::SocketAddr::from(([127, 0, 0, 1], p[0]))));
    }
    let _ = write!(text, "\n[[sites.namespaces]]\nname = \"test\"\nreplication-factor = {rf}\n");
    (text, clients)
}
