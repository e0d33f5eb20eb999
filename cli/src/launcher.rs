//! Starts and stops real node processes (`ferry node run`): the one launcher under
//! [`crate::deploy`], which `ferry up` and the end-to-end tests share. Each node gets its own state directory and log file;
//! a dropped [`NodeProcess`] is killed, so no test leaves a process behind.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How to start nodes: which binary, which topology file, which state root.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub binary: PathBuf,
    pub topology: PathBuf,
    /// Node `X` keeps its state in `<state_root>/X` and logs to `<state_root>/X/node.log`.
    pub state_root: PathBuf,
    /// Extra arguments for every `ferry node run`.
    pub node_args: Vec<String>,
}

/// Why a node could not be started or did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error("start node {node}: {source}")]
    Spawn { node: String, source: std::io::Error },
    #[error(
        "node {node} exited ({status}) before listening on {addr}; end of its log:\n{log_tail}"
    )]
    Exited { node: String, addr: SocketAddr, status: ExitStatus, log_tail: String },
    #[error("node {node} did not listen on {addr} within {timeout:?}; end of its log:\n{log_tail}")]
    NotReady { node: String, addr: SocketAddr, timeout: Duration, log_tail: String },
}

/// A running node process.
#[derive(Debug)]
pub struct NodeProcess {
    pub node: String,
    pub client: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Launcher {
    /// The state directory of a node.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state_root.join(node)
    }

    /// Where a node finds its certificates: `<node dir>/certs`, holding every site's CA
    /// certificate and its own certificate and key (see `ferry_transport::certs::export_node`);
    /// the deployment's `<state_root>/certs`, with every CA key, is the operator's alone.
    pub fn node_certs_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("certs")
    }

    /// Spawns `ferry node run` for `node`; its output goes to its log file.
    pub fn start(&self, node: &str, client: SocketAddr) -> Result<NodeProcess, LaunchError> {
        self.start_with(node, client, &[])
    }

    /// [`Launcher::start`] with extra arguments for this node only (e.g. its `--xdr-route`s).
    /// The node runs in its own process group, so a Ctrl-C at the terminal reaches only the
    /// launching process, which stops its nodes in order.
    pub fn start_with(
        &self,
        node: &str,
        client: SocketAddr,
        extra_args: &[String],
    ) -> Result<NodeProcess, LaunchError> {
        let spawn_error = |source| LaunchError::Spawn { node: node.to_owned(), source };
        let dir = self.node_dir(node);
        std::fs::create_dir_all(&dir).map_err(spawn_error)?;
        let log = dir.join("node.log");
        let out = File::options().create(true).append(true).open(&log).map_err(spawn_error)?;
        let err = out.try_clone().map_err(spawn_error)?;
        let child = Command::new(&self.binary)
            .arg("node")
            .arg("run")
            .arg("--topology")
            .arg(&self.topology)
            .arg("--node")
            .arg(node)
            .arg("--dir")
            .arg(&dir)
            .arg("--certs")
            .arg(self.node_certs_dir(node))
            .args(&self.node_args)
            .args(extra_args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(spawn_error)?;
        Ok(NodeProcess { node: node.to_owned(), client, log, child: Some(child) })
    }
}

impl NodeProcess {
    /// Waits until the node answers clients (its storage open, serving).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if answers_info(self.client) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(LaunchError::Exited {
                    node: self.node.clone(),
                    addr: self.client,
                    status,
                    log_tail: log_tail(&self.log),
                });
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::NotReady {
                    node: self.node.clone(),
                    addr: self.client,
                    timeout,
                    log_tail: log_tail(&self.log),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the node with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM without waiting (stop many nodes at once, then [`NodeProcess::stop`] each).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// Asks the node to stop (SIGTERM), escalating to SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        let Some(mut child) = self.child.take() else { return Stopped::NotRunning };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Stopped::Exited(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Stopped::Killed
    }
}

/// How [`NodeProcess::stop`] ended a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within the grace period.
    Exited(ExitStatus),
    /// It was still running after the grace period and was killed.
    Killed,
    /// It had already been killed or stopped.
    NotRunning,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether a node at `addr` answers an info request. Its sockets are bound before it opens
/// storage, so a completed TCP connect alone does not mean it serves: only an answer does.
fn answers_info(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let timeout = Duration::from_millis(500);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    let request = ferry_node::proto::frame(ferry_node::proto::TYPE_INFO, b"node\n");
    let mut header = [0u8; 8];
    stream.set_read_timeout(Some(timeout)).is_ok()
        && stream.write_all(&request).is_ok()
        && stream.read_exact(&mut header).is_ok()
        && ferry_node::proto::ProtoHeader::parse(header)
            .is_ok_and(|h| h.kind == ferry_node::proto::TYPE_INFO && h.size > 0)
}
/// The command line of process `pid` if it is a `ferry node run` (so a pid read from a file,
/// or found in `/proc`, is known not to be a recycled one).
pub fn node_run_args(pid: i32) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.windows(2).any(|w| w[0] == "node" && w[1] == "run").then_some(args)
}
