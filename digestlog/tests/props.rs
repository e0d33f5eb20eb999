//! Property tests over the crash-simulating `MemStorage`:
//! - a crash at any byte offset, with any torn tail, recovers exactly a prefix of the
//!   submitted entries that contains every acknowledged one, and nothing invented;
//! - cursors never move backwards, across reopens and crashes;
//! - the size cap never loses an entry for a cursor without marking that cursor overflowed
//!   with a watermark that covers the entry.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::small;
use ferry_digestlog::{
    Batch, Config, CrashTear, Cursor, CursorStart, DigestLog, Entry, Lsn, MemStorage, Op,
    RECORD_LEN,
};
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Entry number `id`, with LUTs that are not monotonic in `id`.
fn entry(id: u64) -> Entry {
    let mut digest = [0u8; 20];
    digest[..8].copy_from_slice(&id.to_le_bytes());
    Entry {
        digest: digest.into(),
        namespace: 1,
        partition: (id % 4096) as u16,
        generation: id as u16,
        lut_ms: 1_000_000 + (id * 7919) % 1000,
        op: Op::Write,
        xdr_applied: false,
        origin_site: 1,
        copy: false,
    }
}

fn id_of(e: &Entry) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&e.digest[..8]);
    u64::from_le_bytes(b)
}

/// Reads everything currently flushed through `c` (entries only; stops at an overflow).
fn drain(c: &mut Cursor) -> Vec<ferry_digestlog::LoggedEntry> {
    let mut out = Vec::new();
    while let Some(Batch::Entries(es)) = c.try_next_batch(1000).expect("read") {
        out.extend(es);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn crash_at_any_offset_recovers_a_prefix_of_acknowledged(
        groups in prop::collection::vec(1usize..16, 1..10),
        budget_records in 0u64..160,
        budget_extra in 0u64..(RECORD_LEN as u64),
        keep_unsynced in prop_oneof![Just(0u64), 0u64..200, Just(u64::MAX)],
        per_segment in 2u64..10,
    ) {
        let rt = rt();
        let mem = MemStorage::new();
        let config = small(per_segment);
        // The budget covers headers and checkpoints too, so this lands anywhere: in a
        // record, a segment header, a temp file.
        mem.set_write_budget(budget_records * RECORD_LEN as u64 + budget_extra);
        let mut acked: BTreeMap<Lsn, u64> = BTreeMap::new();
        let mut submitted = 0u64;
        if let Ok((log, _)) = DigestLog::open(Arc::new(mem.clone()), config) {
            let log = Arc::new(log);
            rt.block_on(async {
                for size in groups {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..size {
                        let id = submitted;
                        submitted += 1;
                        let log = Arc::clone(&log);
                        tasks.spawn(async move { (log.append(entry(id)).await, id) });
                    }
                    let mut failed = false;
                    while let Some(r) = tasks.join_next().await {
                        match r.expect("task") {
                            (Ok(lsn), id) => {
                                prop_assert!(acked.insert(lsn, id).is_none());
                            }
                            (Err(_), _) => failed = true,
                        }
                    }
                    if failed {
                        break;
                    }
                }
                Ok(())
            })?;
        }
        let image = mem.crash(CrashTear { keep_unsynced });
        let (log, _report) = DigestLog::open(Arc::new(image), config)
            .map_err(|e| TestCaseError::fail(format!("reopen after crash: {e}")))?;
        let mut c = log.open_cursor("check", CursorStart::Oldest).expect("cursor");
        let got = drain(&mut c);
        // Exactly a prefix: LSNs 1..=k in order.
        for (i, e) in got.iter().enumerate() {
            prop_assert_eq!(e.lsn, Lsn(i as u64 + 1));
        }
        let k = got.len() as u64;
        prop_assert_eq!(log.flushed_lsn(), Lsn(k));
        // Every acknowledged entry survived, unchanged.
        for (lsn, id) in &acked {
            prop_assert!(lsn.0 <= k, "acknowledged LSN {} lost (recovered {})", lsn, k);
            prop_assert_eq!(got[(lsn.0 - 1) as usize].entry, entry(*id));
        }
        // Nothing invented: each recovered entry was submitted, once.
        let mut ids = BTreeSet::new();
        for e in &got {
            let id = id_of(&e.entry);
            prop_assert!(id < submitted && ids.insert(id));
            prop_assert_eq!(e.entry, entry(id));
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Append(usize),
    Read(usize, usize),
    Commit(usize, u64),
    Ack(usize),
    Reopen,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..12).prop_map(Step::Append),
        3 => (0usize..2, 1usize..8).prop_map(|(c, n)| Step::Read(c, n)),
        3 => (0usize..2, 0u64..40).prop_map(|(c, back)| Step::Commit(c, back)),
        1 => (0usize..2).prop_map(Step::Ack),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
    ]
}

const NAMES: [&str; 2] = ["east", "west"];

/// What a cursor's consumer learned: entries delivered, overflows reported.
#[derive(Debug, Default)]
struct Seen {
    delivered: BTreeSet<Lsn>,
    overflows: Vec<ferry_digestlog::Overflow>,
    last_read: Lsn,
    committed: Lsn,
}

impl Seen {
    fn take(&mut self, batch: Option<Batch>) {
        match batch {
            Some(Batch::Entries(es)) => {
                for e in es {
                    self.last_read = e.lsn;
                    self.delivered.insert(e.lsn);
                }
            }
            Some(Batch::Overflowed(o)) if self.overflows.last() != Some(&o) => {
                self.overflows.push(o);
            }
            Some(Batch::Overflowed(_)) | None => {}
        }
    }
}

fn open(mem: &MemStorage, config: Config) -> (DigestLog, Vec<Cursor>) {
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("open");
    let cursors =
        NAMES.iter().map(|n| log.open_cursor(n, CursorStart::Oldest).expect("cursor")).collect();
    (log, cursors)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cursors_monotonic_and_overflow_never_silent(
        steps in prop::collection::vec(step(), 1..40),
        per_segment in 2u64..6,
    ) {
        let rt = rt();
        let mut config = small(per_segment);
        config.size_cap = config.segment_size * 3;
        let mut mem = MemStorage::new();
        let (mut log, mut cursors) = open(&mem, config);
        let mut seen: Vec<Seen> = NAMES.iter().map(|_| Seen::default()).collect();
        let mut luts: BTreeMap<Lsn, u64> = BTreeMap::new();
        let mut next_id = 0;
        for step in steps {
            match step {
                Step::Append(n) => {
                    for _ in 0..n {
                        let e = entry(next_id);
                        next_id += 1;
                        let lsn = rt.block_on(log.append(e)).expect("append");
                        luts.insert(lsn, e.lut_ms);
                    }
                }
                Step::Read(c, n) => {
                    let batch = cursors[c].try_next_batch(n).expect("read");
                    seen[c].take(batch);
                }
                Step::Commit(c, back) => {
                    let target = Lsn(seen[c].last_read.0.saturating_sub(back));
                    cursors[c].commit_blocking(target).expect("commit");
                }
                Step::Ack(c) => {
                    if let Some(o) = cursors[c].overflow() {
                        seen[c].take(Some(Batch::Overflowed(o)));
                        cursors[c].acknowledge_overflow(&o).expect("ack");
                    }
                }
                Step::Reopen | Step::Crash => {
                    drop(cursors);
                    log.close();
                    if matches!(step, Step::Crash) {
                        mem = mem.crash(CrashTear { keep_unsynced: 0 });
                    }
                    (log, cursors) = open(&mem, config);
                    for s in &mut seen {
                        s.last_read = Lsn::ZERO;
                    }
                }
            }
            for (c, s) in cursors.iter().zip(seen.iter_mut()) {
                prop_assert!(
                    c.committed() >= s.committed,
                    "cursor {} moved back from {} to {}", c.name(), s.committed, c.committed()
                );
                s.committed = c.committed();
                s.last_read = s.last_read.max(c.committed());
            }
        }
        // Drain: read everything, acknowledging overflows as a consumer would.
        for (c, s) in cursors.iter_mut().zip(seen.iter_mut()) {
            loop {
                let batch = c.try_next_batch(1000).expect("read");
                match batch {
                    Some(Batch::Overflowed(o)) => {
                        s.take(Some(Batch::Overflowed(o)));
                        c.acknowledge_overflow(&o).expect("ack");
                    }
                    Some(b) => s.take(Some(b)),
                    None => break,
                }
            }
        }
        // Every appended entry reached every cursor, or an overflow covering it was reported.
        for (name, s) in NAMES.iter().zip(&seen) {
            for (&lsn, &lut) in &luts {
                let covered = s.overflows.iter().any(|o| {
                    o.committed < lsn && lsn <= o.lost_through && o.min_lut_ms <= lut
                });
                prop_assert!(
                    s.delivered.contains(&lsn) || covered,
                    "cursor {} silently lost LSN {}", name, lsn
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Damage anywhere in a log directory (bit flips, truncations in any file) never panics
    /// open, salvage or reading: it is reported as an error or recovered.
    #[test]
    fn damaged_directory_never_panics(
        n in 0u64..40,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<usize>(), 1u8..=255), 0..4),
        truncs in prop::collection::vec((any::<prop::sample::Index>(), any::<usize>()), 0..2),
    ) {
        use ferry_digestlog::{RecoveryMode, Storage};
        let rt = rt();
        let mem = MemStorage::new();
        let config = small(4);
        {
            let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("open");
            let mut c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
            for i in 0..n {
                rt.block_on(log.append(entry(i))).expect("append");
            }
            if let Some(Batch::Entries(es)) = c.try_next_batch(5).expect("read") {
                c.commit_blocking(es[es.len() - 1].lsn).expect("commit");
            }
        }
        let mut names = mem.list().expect("list");
        names.sort();
        for (file, at, mask) in flips {
            let name = file.get(&names);
            let len = mem.contents(name).expect("contents").len();
            if len > 0 {
                mem.corrupt(name, at % len, mask).expect("corrupt");
            }
        }
        for (file, at) in truncs {
            let name = file.get(&names);
            let mut f = mem.open(name).expect("open");
            let len = f.size().expect("size");
            f.truncate(at as u64 % (len + 1)).expect("truncate");
        }
        for recovery in [RecoveryMode::Strict, RecoveryMode::Salvage] {
            let image = mem.crash(CrashTear { keep_unsynced: u64::MAX });
            let config = Config { recovery, ..config };
            if let Ok((log, _)) = DigestLog::open(Arc::new(image), config) {
                if let Ok(mut c) = log.open_cursor("reader", CursorStart::Oldest) {
                    while let Ok(Some(Batch::Entries(_))) = c.try_next_batch(7) {}
                }
                let _ = rt.block_on(log.append(entry(1000)));
            }
        }
    }
}
