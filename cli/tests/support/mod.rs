//! What the end-to-end tests share: the `ferry` binary Cargo built for them, and a test's view
//! of a [`ferry::deploy::Deployment`] (the same deployment `ferry up` runs) in a temporary
//! directory, whose queries panic with the nodes' warnings instead of returning errors.

// Each test binary uses its own part of this module, and none of it leaves the test crate.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry::client::{self, VersionDigest};
use ferry::deploy::{DeploySpec, Deployment as Running};
use ferry_tests::{Namespace, TestNode, TopologyBuilder};
use ferry_xdr::stats::{LinkCounters, LinkSnapshot, ReceiverCounters};

/// The `ferry` binary of this build.
pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

/// Runs `tests/python/<script>` with `args` in the workspace's `.venv` (`bash .ci/test` creates
/// it with the `aerospike` package), and fails unless it exits 0 saying "all checks passed".
pub async fn python_check(script: &str, args: &[String]) {
    let python = ferry_tests::workspace_root().join(".venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `bash .ci/test`", python.display());
    let output = tokio::process::Command::new(&python)
        .arg(ferry_tests::workspace_root().join("tests/python").join(script))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{script}: {stdout}");
}

/// A running deployment of a test topology; every node is killed when it is dropped.
#[derive(Debug)]
pub struct Deployment {
    pub running: Running,
    pub nodes: Vec<TestNode>,
    /// Holds the state directory until the deployment is dropped.
    pub dir: tempfile::TempDir,
}

impl Deployment {
    /// Deploys `topology` (its nodes are `nodes`) and waits until every node accepts clients.
    pub async fn start(topology: &str, nodes: Vec<TestNode>) -> Deployment {
        Deployment::start_spec(topology, nodes, |_| {}).await
    }

    /// [`Deployment::start`] with extra `ferry node run` arguments for every node.
    pub async fn start_with(
        topology: &str,
        nodes: Vec<TestNode>,
        node_args: Vec<String>,
    ) -> Deployment {
        Deployment::start_spec(topology, nodes, |spec| spec.node_args = node_args).await
    }

    /// [`Deployment::start`] with the spec adjusted by `adjust` (relays, a topology service).
    pub async fn start_spec(
        topology: &str,
        nodes: Vec<TestNode>,
        adjust: impl FnOnce(&mut DeploySpec),
    ) -> Deployment {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut spec = DeploySpec::new(ferry_bin(), dir.path().join("state"), topology);
        adjust(&mut spec);
        let running = Running::start(spec).await.unwrap_or_else(|e| panic!("deploy: {e}"));
        Deployment { running, nodes, dir }
    }

    /// One site (`local`) of `nodes` nodes with namespace `test` of `rf` copies, no links.
    pub async fn one_site(nodes: usize, rf: u8) -> Deployment {
        let built = TopologyBuilder::new("test-site")
            .site("local", nodes)
            .namespace(Namespace::new("test").replication_factor(rf))
            .build();
        Deployment::start(&built.text, built.nodes).await
    }

    /// An `aerospike` client of `site`, seeded with its first node, once it has tended.
    pub async fn client(&self, site: &str) -> aerospike::Client {
        let seed = self.site(site)[0].client.to_string();
        aerospike::Client::new(&aerospike::ClientPolicy::default(), &seed)
            .await
            .unwrap_or_else(|e| self.fail(format!("connect a client to {site}: {e}")))
    }

    /// The ids of the nodes of `site`.
    pub fn ids(&self, site: &str) -> Vec<String> {
        self.site(site).iter().map(|n| n.id.clone()).collect()
    }

    /// The operator's token of `role` that the deployment issued (its credential file's text).
    pub fn token(&self, role: ferry_auth::Role) -> String {
        let file = self.running.state.credential(role);
        let token = ferry_auth::access::read_credential(&file)
            .unwrap_or_else(|e| panic!("the deployment's {role} credential: {e}"));
        token.expose()
    }

    /// The URL of the deployment's topology service.
    pub fn topology_service_url(&self) -> &str {
        self.running.service_url().unwrap_or_else(|| panic!("the deployment serves no topology"))
    }

    /// A client of the deployment's topology service presenting the admin token.
    pub fn topology_service(&self) -> ferry_topology::service::TopologyClient {
        let token = ferry_auth::Token::parse(&self.token(ferry_auth::Role::Admin))
            .unwrap_or_else(|e| panic!("the admin token: {e}"));
        ferry_topology::service::TopologyClient::new(self.topology_service_url(), Some(token))
    }

    /// Waits until every node of `site` reports topology `version` applied (`/v1/status`), or
    /// panics after `timeout` with the last status.
    pub async fn wait_applied(&self, site: &str, version: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.site(site) {
            loop {
                let (_, body) = self.admin(&node.id, "GET", "/v1/status");
                let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
                if status["topology_version"].as_u64() >= Some(version) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never applied version {version}: {body}",
                    node.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// `method path` on node `id`'s admin API with the admin token: status and body.
    pub fn admin(&self, id: &str, method: &str, path: &str) -> (u16, String) {
        let token = self.token(ferry_auth::Role::Admin);
        ferry_tests::http(self.node(id).admin, Some(&token), method, path)
    }

    /// The topology file the nodes run.
    pub fn topology_file(&self) -> PathBuf {
        self.running.state.topology()
    }

    /// Runs `ferry link ARGS` against this deployment (its topology, its admin credential);
    /// returns its output, or fails with it when the command fails.
    pub fn ferry_link(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(ferry_bin())
            .arg("link")
            .args(args)
            .arg("--topology")
            .arg(self.topology_file())
            .arg("--dir")
            .arg(&self.running.state.root)
            .output()
            .expect("run ferry link");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "ferry link {args:?}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    }

    /// Runs `ferry ARGS --dir <state directory>` against this deployment; returns the exit
    /// code, stdout and stderr.
    pub fn ferry(&self, args: &[&str]) -> (i32, String, String) {
        let output = std::process::Command::new(ferry_bin())
            .args(args)
            .arg("--dir")
            .arg(&self.running.state.root)
            .output()
            .expect("run ferry");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
    }

    /// The pid of node `id`, while it runs.
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.running.processes().get(id)?.pid()
    }

    /// Starts (or restarts) one node and waits until it accepts clients.
    pub async fn start_node(&mut self, id: &str) {
        self.running.start_node(id).await.unwrap_or_else(|e| panic!("start {id}: {e}"));
    }

    /// SIGKILLs one node.
    pub fn kill_node(&mut self, id: &str) {
        self.running.kill_node(id);
    }

    /// Warning and error lines of every node's log (the last 20 per node).
    pub fn log_warnings(&self) -> String {
        let mut out = String::new();
        for process in self.running.processes().values() {
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
    pub fn node(&self, id: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The nodes of `site`.
    pub fn site(&self, site: &str) -> Vec<&TestNode> {
        self.nodes.iter().filter(|n| n.site == site).collect()
    }

    /// Info `name` from every node of `site`, in node order.
    pub async fn info(&self, site: &str, name: &str) -> Vec<String> {
        self.running.info(site, name).await.unwrap_or_else(|e| self.fail(e))
    }

    /// The site's combined `verify-digest` of namespace `test`.
    pub async fn site_digest(&self, site: &str) -> VersionDigest {
        self.running.site_digest(site, "test").await.unwrap_or_else(|e| self.fail(e))
    }

    /// The stats of link `site -> dc` on every node of `site`.
    pub async fn link_stats(&self, site: &str, dc: &str) -> Vec<LinkSnapshot> {
        self.running.link_stats(site, dc).await.unwrap_or_else(|e| self.fail(e))
    }

    /// A counter of link `site -> dc` summed over the nodes of `site`.
    pub async fn link_sum(&self, site: &str, dc: &str, counter: fn(&LinkCounters) -> u64) -> u64 {
        self.link_stats(site, dc).await.iter().map(|s| counter(&s.counters)).sum()
    }

    /// A receiver counter summed over the nodes of `site`.
    pub async fn receiver_sum(&self, site: &str, counter: fn(&ReceiverCounters) -> u64) -> u64 {
        let mut sum = 0;
        for addr in self.running.clients(site).unwrap_or_else(|e| self.fail(e)) {
            let stats = client::receiver_stats(addr).await.unwrap_or_else(|e| self.fail(e));
            sum += counter(&stats.counters);
        }
        sum
    }

    fn fail(&self, error: impl std::fmt::Display) -> ! {
        panic!("{error}\nwarnings in node logs:\n{}", self.log_warnings())
    }

    /// Waits until sites `a` and `b` hold identical versions, or panics after `timeout` with
    /// both digests, the link's stats and the nodes' warnings.
    pub async fn wait_converged(&self, a: &str, b: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (da, db) = (self.site_digest(a).await, self.site_digest(b).await);
            if da == db {
                return;
            }
            if Instant::now() >= deadline {
                let stats = self.link_stats(a, b).await;
                panic!(
                    "sites {a} and {b} did not converge within {timeout:?}: {a} {da:?}, {b} {db:?}\n\
                     link stats: {stats:#?}\nwarnings in node logs:\n{}",
                    self.log_warnings()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `len` pseudo-random bytes from `state` (xorshift): incompressible test data, the same for
/// the same state.
pub fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    *state |= 1;
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// The node's client protocol spoken byte by byte, for requests the `aerospike` crate would
/// not send.
pub mod raw {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use bytes::Bytes;
    use ferry_node::proto::msg::{Field, Msg, Op, field, info2, op};
    use ferry_node::proto::{ProtoHeader, TYPE_MSG, frame};

    /// A connection with a 10 s read timeout.
    pub fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream
    }

    /// Reads one framed reply: (type, body).
    pub fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header)?;
        let parsed = ProtoHeader::parse(header).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; parsed.size as usize];
        stream.read_exact(&mut body)?;
        Ok((parsed.kind, body))
    }

    /// Sends `msg` and reads its reply.
    pub fn request(stream: &mut TcpStream, msg: &Msg) -> Msg {
        stream.write_all(&frame(TYPE_MSG, &msg.encode())).expect("send");
        let (kind, body) = read_frame(stream).expect("reply");
        assert_eq!(kind, TYPE_MSG);
        Msg::decode(&body).expect("decodable reply")
    }

    /// Writes one blob bin of `len` bytes (every byte `digest`) to record `[digest; 20]` of
    /// set `set` in namespace `test`, straight to the node at `addr`; returns the result code.
    pub async fn put_blob(addr: SocketAddr, digest: u8, set: &str, bin: &str, len: usize) -> u8 {
        let msg = Msg {
            info2: info2::WRITE,
            fields: vec![
                Field { kind: field::NAMESPACE, data: Bytes::from_static(b"test") },
                Field { kind: field::SET, data: Bytes::copy_from_slice(set.as_bytes()) },
                Field { kind: field::DIGEST, data: Bytes::copy_from_slice(&[digest; 20]) },
            ],
            ops: vec![Op {
                kind: op::WRITE,
                particle: 4, // blob
                name: bin.to_owned(),
                value: Bytes::from(vec![digest; len]),
            }],
            ..Msg::default()
        };
        tokio::task::spawn_blocking(move || request(&mut connect(addr), &msg).result_code)
            .await
            .expect("raw put")
    }

    /// The length of blob bin `bin` of record `[digest; 20]` in namespace `test`, read from
    /// the node at `addr` (`None` when the record is not found).
    pub async fn blob_len(addr: SocketAddr, digest: u8, bin: &str) -> Option<usize> {
        let msg = Msg {
            info1: ferry_node::proto::msg::info1::READ | ferry_node::proto::msg::info1::GET_ALL,
            fields: vec![
                Field { kind: field::NAMESPACE, data: Bytes::from_static(b"test") },
                Field { kind: field::DIGEST, data: Bytes::copy_from_slice(&[digest; 20]) },
            ],
            ..Msg::default()
        };
        let bin = bin.to_owned();
        tokio::task::spawn_blocking(move || {
            let reply = request(&mut connect(addr), &msg);
            reply.ops.iter().find(|op| op.name == bin).map(|op| op.value.len())
        })
        .await
        .expect("raw get")
    }
}

/// Load for the benchmarks: concurrent `aerospike` clients, and the CPU a process used.
pub mod load {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use aerospike::{Bins, Client, ReadPolicy, WritePolicy, as_bin, as_key};

    /// Most operations one task runs in a cell, whatever the time.
    const MAX_OPS_PER_TASK: usize = 200_000;

    /// Runs `tasks` concurrent clients doing `op` ("put" or "get") of `size`-byte values on
    /// `keys` keys for `cell`; returns (ops/s, p50 ms, p99 ms).
    pub async fn drive(
        client: Arc<Client>,
        op: &'static str,
        size: usize,
        tasks: usize,
        cell: Duration,
        keys: i64,
    ) -> (f64, f64, f64) {
        let payload = "x".repeat(size);
        let started = Instant::now();
        let mut handles = Vec::new();
        for task in 0..tasks {
            let client = client.clone();
            let payload = payload.clone();
            handles.push(tokio::spawn(async move {
                let (wp, rp) = (WritePolicy::default(), ReadPolicy::default());
                let mut latencies = Vec::new();
                let mut n = task as i64;
                while started.elapsed() < cell && latencies.len() < MAX_OPS_PER_TASK {
                    let key = as_key!("test", format!("bench{size}"), n % keys);
                    let t = Instant::now();
                    let ok = match op {
                        "put" => {
                            let bins = [as_bin!("p", payload.as_str())];
                            client.put(&wp, &key, &bins).await.is_ok()
                        }
                        _ => client.get(&rp, &key, Bins::All).await.is_ok(),
                    };
                    if ok {
                        latencies.push(t.elapsed());
                    }
                    n += tasks as i64;
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.expect("task"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort_unstable();
        let pct = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        (all.len() as f64 / elapsed, pct(0.5), pct(0.99))
    }

    /// CPU time (user + system) process `pid` has used so far, in seconds.
    pub fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of the stat line: 12 and 13 after the name.
        (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second()
    }

    /// The kernel's clock ticks per second (`getconf CLK_TCK`), asked once.
    fn clock_ticks_per_second() -> f64 {
        static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        *TICKS.get_or_init(|| {
            let output = std::process::Command::new("getconf").arg("CLK_TCK").output();
            output
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
                .unwrap_or(100.0)
        })
    }
}
