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
    // Cargo sets these for the running test; inherited, they would make build scripts that
    // watch them (ring watches CARGO_MANIFEST_DIR) rerun, and everything above them rebuild,
    // on every call and again on the next top-level `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo_for_tests = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_by_cargo_for_tests {
            command.env_remove(name.as_ref());
        }
    }
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

/// A node of a test topology.
#[derive(Debug, Clone)]
pub struct TestNode {
    pub site: String,
    pub id: String,
    pub client: std::net::SocketAddr,
    pub xdr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

/// Writes one `[[sites]]` block of one node per four `ports` (client, fabric, xdr, admin), on
/// two racks (ids `<prefix>-<i>`), namespace `test` with `rf` copies under `policy`. The
/// caller takes every port of a topology in one [`free_ports`] call: ports taken in separate
/// calls may be handed out twice.
fn site_block(
    text: &mut String,
    (name, src_id, role): (&str, u8, &str),
    ports: &[u16],
    rf: u8,
    policy: &str,
) -> Vec<TestNode> {
    use std::fmt::Write as _;
    let _ = write!(text, "\n[[sites]]\nname = \"{name}\"\nsrc-id = {src_id}\nrole = \"{role}\"\n");
    let mut members = Vec::new();
    for (i, p) in ports.chunks(4).enumerate() {
        let id = if name == "local" { format!("node-{i}") } else { format!("{name}-{i}") };
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
        let client = std::net::SocketAddr::from(([127, 0, 0, 1], p[0]));
        let xdr = std::net::SocketAddr::from(([127, 0, 0, 1], p[2]));
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], p[3]));
        members.push(TestNode { site: name.to_owned(), id, client, xdr, admin });
    }
    let _ = write!(
        text,
        "\n[[sites.namespaces]]\nname = \"test\"\nreplication-factor = {rf}\n\
         conflict-resolution-policy = \"{policy}\"\n"
    );
    members
}

/// A one-site topology of `nodes` nodes on two racks, namespace `test` with `rf` copies, on free
/// loopback ports. Returns the file text and each node's (id, client address).
pub fn one_site_topology(nodes: usize, rf: u8) -> (String, Vec<(String, std::net::SocketAddr)>) {
    let mut text = String::from("name = \"test-site\"\n");
    let ports = free_ports(nodes * 4);
    let members = site_block(&mut text, ("local", 1, "active"), &ports, rf, "generation");
    (text, members.into_iter().map(|n| (n.id, n.client)).collect())
}

/// Sites `a` (src-id 1) and `b` (src-id 2) of `nodes` nodes each, namespace `test` under
/// `policy`, and a link `a -> b` with the extra TOML `link_a_b`; with `b_to_a` set, also a link
/// `b -> a` with the same settings (active-active).
pub fn two_site_topology(
    nodes: usize,
    policy: &str,
    link_a_b: &str,
    b_to_a: bool,
) -> (String, Vec<TestNode>) {
    let mut links = vec![("a", "b", link_a_b)];
    if b_to_a {
        links.push(("b", "a", link_a_b));
    }
    multi_site_topology(&["a", "b"], nodes, policy, &links)
}

/// Sites named `sites` (src-ids 1, 2, …; the first active, the others active only when they
/// ship somewhere) of `nodes` nodes each, namespace `test` under `policy`, and links
/// `(from, to, extra TOML)`.
pub fn multi_site_topology(
    sites: &[&str],
    nodes: usize,
    policy: &str,
    links: &[(&str, &str, &str)],
) -> (String, Vec<TestNode>) {
    let mut text = String::from("name = \"xdr-test\"\n");
    let mut members = Vec::new();
    let all_ports = free_ports(sites.len() * nodes * 4);
    for (i, site) in sites.iter().enumerate() {
        let ships = links.iter().any(|(from, _, _)| from == site);
        let role = if i == 0 || ships { "active" } else { "standby" };
        let src_id = u8::try_from(i + 1).unwrap_or(u8::MAX);
        let ports = &all_ports[i * nodes * 4..(i + 1) * nodes * 4];
        members.extend(site_block(&mut text, (site, src_id, role), ports, 1, policy));
    }
    for (from, to, extra) in links {
        text.push_str(&format!(
            "\n[[links]]\nfrom = \"{from}\"\nto = \"{to}\"\nnamespaces = [\"test\"]\n{extra}\n"
        ));
    }
    (text, members)
}

/// Real node processes of a topology written to a temporary directory, with dev certificates;
/// every process is killed when this is dropped.
#[derive(Debug)]
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub launcher: ferry_node::launcher::Launcher,
    pub nodes: Vec<TestNode>,
    pub processes: std::collections::BTreeMap<String, ferry_node::launcher::NodeProcess>,
}

impl Deployment {
    /// Writes `topology`, creates certificates with `ferry certs init`, starts every node and
    /// waits until each accepts clients.
    ///
    /// # Panics
    ///
    /// If any step fails (the message carries the failing node's log tail).
    pub fn start(topology: &str, nodes: Vec<TestNode>) -> Deployment {
        Deployment::start_with(topology, nodes, Vec::new())
    }

    /// [`Deployment::start`] with extra `ferry node run` arguments for every node.
    ///
    /// # Panics
    ///
    /// If any step fails.
    pub fn start_with(topology: &str, nodes: Vec<TestNode>, node_args: Vec<String>) -> Deployment {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, topology).unwrap_or_else(|e| panic!("write topology: {e}"));
        let launcher = ferry_node::launcher::Launcher {
            binary: ferry_bin(),
            topology: path.clone(),
            state_root: dir.path().join("state"),
            node_args,
        };
        let certs = Command::new(ferry_bin())
            .args(["certs", "init", "--topology"])
            .arg(&path)
            .arg("--out")
            .arg(launcher.certs_dir())
            .output()
            .unwrap_or_else(|e| panic!("run ferry certs init: {e}"));
        assert!(certs.status.success(), "certs init: {}", String::from_utf8_lossy(&certs.stderr));
        let mut deployment =
            Deployment { dir, launcher, nodes, processes: std::collections::BTreeMap::new() };
        let ids: Vec<String> = deployment.nodes.iter().map(|n| n.id.clone()).collect();
        for id in &ids {
            deployment.start_node(id);
        }
        deployment
    }

    /// Starts (or restarts) one node and waits until it accepts clients.
    ///
    /// # Panics
    ///
    /// If the node is unknown or does not come up.
    pub fn start_node(&mut self, id: &str) {
        let node = self.node(id).clone();
        let mut process = self
            .launcher
            .start(&node.id, node.client)
            .unwrap_or_else(|e| panic!("start {}: {e}", node.id));
        process
            .wait_ready(std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{}: {e}", node.id));
        self.processes.insert(node.id.clone(), process);
    }

    /// SIGKILLs one node.
    pub fn kill_node(&mut self, id: &str) {
        if let Some(mut process) = self.processes.remove(id) {
            process.kill();
        }
    }

    /// Warning and error lines of every node's log (the last 20 per node).
    pub fn log_warnings(&self) -> String {
        let mut out = String::new();
        for process in self.processes.values() {
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            let lines: Vec<&str> =
                text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                out.push_str(&format!("{}: {line}\n", process.node));
            }
        }
        out
    }

    /// The node `id`.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn node(&self, id: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The nodes of `site`.
    pub fn site(&self, site: &str) -> Vec<&TestNode> {
        self.nodes.iter().filter(|n| n.site == site).collect()
    }

    /// Info `name` from every node of `site`, in node order.
    ///
    /// # Panics
    ///
    /// If a node does not answer.
    pub async fn info(&self, site: &str, name: &str) -> Vec<String> {
        let mut values = Vec::new();
        for node in self.site(site) {
            let reply = ferry_node::proto::info::ask(node.client, &[name])
                .await
                .unwrap_or_else(|e| panic!("info {name} from {}: {e}", node.id));
            values.push(reply.into_iter().next().map(|(_, v)| v).unwrap_or_default());
        }
        values
    }

    /// The site's combined `verify-digest` of namespace `test`: (records, XOR of versions).
    pub async fn site_digest(&self, site: &str) -> (u64, u64) {
        let mut records = 0;
        let mut xor = 0;
        for value in self.info(site, "verify-digest:namespace=test").await {
            let fields = stat_fields(&value);
            records += fields.get("records").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            xor ^= fields.get("xor").and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
        }
        (records, xor)
    }

    /// A link stat summed over the source site's nodes (`get-stats:context=xdr;dc=DC`).
    pub async fn link_stat(&self, site: &str, dc: &str, stat: &str) -> u64 {
        self.info(site, &format!("get-stats:context=xdr;dc={dc}"))
            .await
            .iter()
            .map(|v| stat_fields(v).get(stat).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum()
    }

    /// Waits until sites `a` and `b` hold identical versions, or panics after `timeout`
    /// with both digests.
    ///
    /// # Panics
    ///
    /// If the sites have not converged in time.
    pub async fn wait_converged(&self, a: &str, b: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (da, db) = (self.site_digest(a).await, self.site_digest(b).await);
            if da == db {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let stats = self.info(a, &format!("get-stats:context=xdr;dc={b}")).await;
                panic!(
                    "sites {a} and {b} did not converge within {timeout:?}: {a} {da:?}, {b} {db:?}\n\
                     link stats: {stats:#?}\nwarnings in node logs:\n{}",
                    self.log_warnings()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// `a=1;b=2` as a map.
pub fn stat_fields(value: &str) -> std::collections::HashMap<String, String> {
    value
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A WAN relay shaped by `shape` in front of every node of `site`; returns the relays and the
/// `--xdr-route` arguments that make the other sites' nodes dial them.
///
/// # Panics
///
/// If a relay cannot start.
pub async fn relays_in_front_of(
    nodes: &[TestNode],
    site: &str,
    shape: ferry_transport::relay::LinkShape,
) -> (Vec<ferry_transport::relay::RelayHandle>, Vec<String>) {
    use ferry_transport::relay::{Relay, RelayConfig};
    let mut relays = Vec::new();
    let mut args = Vec::new();
    for node in nodes.iter().filter(|n| n.site == site) {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let relay = Relay::start(RelayConfig::new(listen, node.xdr).with_shape(shape))
            .await
            .unwrap_or_else(|e| panic!("start a relay for {}: {e}", node.id));
        args.extend(["--xdr-route".to_owned(), format!("{}={}", node.id, relay.listen_addr())]);
        relays.push(relay);
    }
    (relays, args)
}

/// One HTTP/1.1 request without a body to `addr` (the admin API); returns the status code and
/// the body.
///
/// # Panics
///
/// If the server cannot be reached or answers something that is not HTTP.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the admin API at {addr}: {e}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}: {response}"));
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
