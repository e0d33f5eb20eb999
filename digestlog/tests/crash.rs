//! Process crash test: a child process appends under load (16 concurrent writers plus a
//! committing cursor) and is SIGKILLed at random moments, over and over on the same log.
//! After each kill the log must open, and every acknowledged LSN must be present, CRC-valid
//! and hold the acknowledged entry; the cursor must be at or past its last reported commit.
//!
//! Seeded: set `DIGESTLOG_CRASH_SEED` to replay a failing run (the seed is printed on failure).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_digestlog::{Batch, Config, CursorStart, Lsn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEEDS: u64 = 4;
const KILLS_PER_SEED: usize = 6;
const BUDGET: Duration = Duration::from_secs(15);

struct Run {
    seed: u64,
    dir: tempfile::TempDir,
    /// Acknowledged LSN -> entry id.
    acked: BTreeMap<Lsn, u64>,
    committed: Lsn,
    next_id: u64,
}

impl Run {
    fn fail(&self, msg: String) -> ! {
        panic!("{msg}\nreplay with DIGESTLOG_CRASH_SEED={}", self.seed);
    }

    /// Starts the writer, kills it after `delay`, and records what it acknowledged.
    fn kill_after(&mut self, delay: Duration) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_digestlog-crash-writer"))
            .arg(self.dir.path())
            .arg(self.next_id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn crash writer");
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL crash writer");
        child.wait().expect("reap crash writer");
        let mut out = String::new();
        child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read child stdout");
        // A line cut by the kill has no newline and was never fully reported.
        let complete = out.rfind('\n').map_or("", |i| &out[..i]);
        for line in complete.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["A", lsn, id] => {
                    let lsn = Lsn(lsn.parse().expect("lsn"));
                    let id: u64 = id.parse().expect("id");
                    if self.acked.insert(lsn, id).is_some() {
                        self.fail(format!("LSN {lsn} acknowledged twice"));
                    }
                    self.next_id = self.next_id.max(id + 1);
                }
                ["C", lsn] => self.committed = self.committed.max(Lsn(lsn.parse().expect("lsn"))),
                _ => self.fail(format!("bad line from child: {line:?}")),
            }
        }
        // Ids handed out but never acknowledged must not be reused (nothing-invented check).
        self.next_id += 1000;
    }

    /// Reopens the log and checks every acknowledged entry.
    fn verify(&self) {
        let (log, report) = match ferry_digestlog::open_dir(self.dir.path(), Config::default()) {
            Ok(x) => x,
            Err(e) => self.fail(format!("reopen after SIGKILL: {e}")),
        };
        let mut c = log.open_cursor("verify", CursorStart::Oldest).expect("verify cursor");
        let mut got = Vec::new();
        loop {
            match c.try_next_batch(10_000) {
                Ok(Some(Batch::Entries(es))) => got.extend(es),
                Ok(None) => break,
                Ok(Some(Batch::Overflowed(o))) => self.fail(format!("overflow {o:?}")),
                Err(e) => self.fail(format!("read after SIGKILL (report {report:?}): {e}")),
            }
        }
        let first = got.first().map_or(log.flushed_lsn().next(), |e| e.lsn);
        let crash = log.cursors().into_iter().find(|c| c.name == "crash");
        let retired = crash.as_ref().map_or(Lsn::ZERO, |c| c.committed);
        for (lsn, id) in &self.acked {
            if *lsn < first {
                // Retention may delete what every cursor has passed, and nothing else.
                if *lsn > retired {
                    self.fail(format!("acknowledged LSN {lsn} deleted before being consumed"));
                }
                continue;
            }
            let Some(e) = got.get((lsn.0 - first.0) as usize) else {
                self.fail(format!("acknowledged LSN {lsn} missing; log ends at {}", got.len()))
            };
            let mut want = [0u8; 8];
            want.copy_from_slice(&e.entry.digest[..8]);
            if e.lsn != *lsn || u64::from_le_bytes(want) != *id {
                self.fail(format!("LSN {lsn}: expected id {id}, found {e}"));
            }
        }
        if let Some(info) = crash
            && info.committed < self.committed
        {
            self.fail(format!("cursor went back from {} to {}", self.committed, info.committed));
        }
        drop(c);
        log.remove_cursor("verify").expect("remove verify cursor");
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_entry() {
    let base = std::env::var("DIGESTLOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    let started = Instant::now();
    let mut total_acked = 0;
    for s in 0..SEEDS {
        let seed = base.wrapping_add(s);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut run = Run {
            seed,
            dir: tempfile::tempdir().expect("temp dir"),
            acked: BTreeMap::new(),
            committed: Lsn::ZERO,
            next_id: 0,
        };
        for _ in 0..KILLS_PER_SEED {
            if started.elapsed() > BUDGET {
                break;
            }
            run.kill_after(Duration::from_millis(rng.random_range(30..250)));
            run.verify();
        }
        total_acked += run.acked.len();
    }
    eprintln!("crash test: {total_acked} acknowledged appends checked, base seed {base}");
    assert!(total_acked > 0, "the child never acknowledged anything");
}
