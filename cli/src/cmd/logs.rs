//! `ferry logs NODE [-f] [-n LINES]`: the last lines of a node's log in a deployment started
//! by `ferry up`, and with `-f` every line appended after them until Ctrl-C.
//!
//! The launcher writes node `X`'s output to `<dir>/X/node.log` and only ever appends to it. A
//! log that shrinks or is replaced (a new deployment in the same directory) is followed again
//! from its start.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// How often `-f` looks for appended lines.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The first stretch read from the end of the log when looking for the last lines; doubled
/// until it holds enough of them.
const TAIL_WINDOW: u64 = 64 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The node id, as in the topology (e.g. `a1`).
    node: String,
    /// Keep printing lines as the node appends them, until Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The deployment's state directory (`ferry up --dir`).
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
    /// How many lines to print from the end of the log.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
}

pub(crate) fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let path = log_path(&args.dir, &args.node)?;
    let tail = read_tail(&path, args.lines, TAIL_WINDOW)
        .with_context(|| format!("read {}", path.display()))?;
    if !emit(&tail.text)? {
        return Ok(ExitCode::SUCCESS);
    }
    if args.follow {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start async runtime")?;
        runtime.block_on(follow(&path, tail.file, tail.end))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `<dir>/<node>/node.log`, or an error naming the nodes that do have a log there.
fn log_path(dir: &Path, node: &str) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        bail!(
            "no deployment in {}: the directory does not exist; start one with `ferry up` \
             (or pass --dir to point at its state directory)",
            dir.display()
        );
    }
    let path = dir.join(node).join("node.log");
    if path.is_file() {
        return Ok(path);
    }
    let known = nodes_with_logs(dir).with_context(|| format!("list {}", dir.display()))?;
    if known.is_empty() {
        bail!("no node '{node}' in {}: it holds no node logs", dir.display());
    }
    bail!("no node '{node}' in {}; nodes: {}", dir.display(), known.join(", "))
}

/// The names of the directories under `dir` that hold a `node.log`, sorted.
fn nodes_with_logs(dir: &Path) -> io::Result<Vec<String>> {
    let mut nodes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.path().join("node.log").is_file() {
            nodes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    nodes.sort();
    Ok(nodes)
}

/// Prints appended bytes every [`POLL_INTERVAL`] until Ctrl-C or until stdout is closed.
async fn follow(path: &Path, mut file: FileId, mut pos: u64) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            result = &mut ctrl_c => {
                result.context("wait for Ctrl-C")?;
                return Ok(());
            }
            _ = interval.tick() => {
                let Some((now, bytes, end)) = read_appended(path, file, pos)
                    .with_context(|| format!("read {}", path.display()))?
                else {
                    continue; // The log is gone for now; it may come back.
                };
                if now != file || end < pos {
                    eprintln!(
                        "ferry logs: {} was truncated or replaced; following it from the start",
                        path.display()
                    );
                }
                (file, pos) = (now, end);
                if !emit(&bytes)? {
                    return Ok(());
                }
            }
        }
    }
}

/// Which file a path named: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self { dev: metadata.dev(), ino: metadata.ino() }
    }
}

/// Where to resume reading a log read up to `pos` of file `seen`, now that its path names
/// file `now` of `len` bytes: at `pos` if it is the same file and has not shrunk, else at 0.
fn resume_at(seen: FileId, pos: u64, now: FileId, len: u64) -> u64 {
    if now == seen && len >= pos { pos } else { 0 }
}

/// The bytes of the log from where reading resumes (see [`resume_at`]) to its end, with the
/// file they came from and the offset reached; `None` while the log does not exist.
fn read_appended(
    path: &Path,
    seen: FileId,
    pos: u64,
) -> io::Result<Option<(FileId, Vec<u8>, u64)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    let now = FileId::of(&metadata);
    let from = resume_at(seen, pos, now, metadata.len());
    let bytes = read_range(&mut file, from, metadata.len())?;
    let end = from + bytes.len() as u64;
    Ok(Some((now, bytes, end)))
}

/// The last lines of a log, the file they came from and the offset after them.
#[derive(Debug)]
struct Tail {
    text: Vec<u8>,
    file: FileId,
    end: u64,
}

/// Reads the last `lines` lines of the file at `path`, looking at a `window` of bytes from its
/// end and doubling it until it holds them all (or the whole file).
fn read_tail(path: &Path, lines: usize, window: u64) -> io::Result<Tail> {
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    let len = metadata.len();
    let mut window = window.max(1);
    loop {
        let start = len.saturating_sub(window);
        let bytes = read_range(&mut file, start, len)?;
        // More newlines than lines: the first, possibly partial, line is not among them.
        let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || newlines > lines {
            let end = start + bytes.len() as u64;
            let text = last_lines(&bytes, lines).to_vec();
            return Ok(Tail { text, file: FileId::of(&metadata), end });
        }
        window = window.saturating_mul(2);
    }
}

/// The bytes `from..to` of `file`, fewer if it has shrunk meanwhile.
fn read_range(file: &mut File, from: u64, to: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(to.saturating_sub(from)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last `n` lines of `text`: the suffix after its `n`-th last line break, not counting a
/// break that ends the text. A last line without a line break counts as a line.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}

/// Writes to stdout; `false` once stdout is closed (e.g. piped into `head`).
fn emit(bytes: &[u8]) -> anyhow::Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("write to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_counts_lines_not_line_breaks() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\nc\n", 1), b"c\n");
        assert_eq!(last_lines(b"a\nb\nc\n", 3), b"a\nb\nc\n");
        assert_eq!(last_lines(b"a\nb\nc\n", 10), b"a\nb\nc\n");
        assert_eq!(last_lines(b"a\nb\nc\n", 0), b"");
        assert_eq!(last_lines(b"", 5), b"");
        assert_eq!(last_lines(b"\n\n\n", 2), b"\n\n");
        assert_eq!(last_lines(b"only", 1), b"only");
    }

    #[test]
    fn reading_resumes_unless_the_log_shrank_or_was_replaced() {
        let log = FileId { dev: 1, ino: 10 };
        let other = FileId { dev: 1, ino: 11 };
        assert_eq!(resume_at(log, 100, log, 100), 100);
        assert_eq!(resume_at(log, 100, log, 150), 100);
        assert_eq!(resume_at(log, 100, log, 40), 0);
        assert_eq!(resume_at(log, 100, other, 150), 0);
    }

    #[test]
    fn tail_grows_its_window_until_it_holds_the_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).expect("write log");
        for window in [1, 4, 7, 1 << 20] {
            let tail = read_tail(&path, 3, window).expect("tail");
            assert_eq!(tail.text, b"line 97\nline 98\nline 99\n", "window {window}");
            assert_eq!(tail.end, text.len() as u64);
        }
        let all = read_tail(&path, 1000, 4).expect("tail");
        assert_eq!(all.text, text.as_bytes());
    }

    #[test]
    fn appended_bytes_are_read_from_the_last_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.log");
        std::fs::write(&path, "one\n").expect("write log");
        let tail = read_tail(&path, 10, TAIL_WINDOW).expect("tail");
        let mut file = File::options().append(true).open(&path).expect("open");
        file.write_all(b"two\n").expect("append");
        let (now, bytes, end) =
            read_appended(&path, tail.file, tail.end).expect("read").expect("exists");
        assert_eq!((now, bytes.as_slice(), end), (tail.file, &b"two\n"[..], 8));
        std::fs::remove_file(&path).expect("remove");
        assert!(read_appended(&path, now, end).expect("read").is_none());
    }

    #[test]
    fn unknown_node_lists_the_nodes_with_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for node in ["b1", "a1"] {
            std::fs::create_dir(dir.path().join(node)).expect("mkdir");
            std::fs::write(dir.path().join(node).join("node.log"), "").expect("write log");
        }
        std::fs::create_dir(dir.path().join("certs")).expect("mkdir");
        assert_eq!(log_path(dir.path(), "a1").expect("known"), dir.path().join("a1/node.log"));
        let error = log_path(dir.path(), "c1").expect_err("unknown").to_string();
        assert!(error.ends_with("nodes: a1, b1"), "{error}");
        let error = log_path(&dir.path().join("nope"), "a1").expect_err("no dir").to_string();
        assert!(error.contains("ferry up"), "{error}");
    }
}
