//! Behaviour of the log beyond the conformance suite: poisoning, group commit, buffered mode,
//! what open reads, checkpoint safety, operator tools.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Disk, Mem, entry, small};
use ferry_digestlog::{
    AppendError, Batch, CommitPolicy, Config, CursorStart, DigestLog, Lsn, MemStorage, OpenError,
    RECORD_LEN, Storage,
};

#[tokio::test]
async fn failed_fsync_poisons_the_writer() {
    let mem = MemStorage::new();
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), small(100)).expect("open");
    assert_eq!(log.append(entry(0)).await.expect("append"), Lsn(1));
    mem.set_fail_syncs(true);
    assert!(matches!(log.append(entry(1)).await, Err(AppendError::Poisoned(_))));
    // The disk recovering does not un-poison: nothing more is acknowledged.
    mem.set_fail_syncs(false);
    for i in 2..5 {
        assert!(matches!(log.append(entry(i)).await, Err(AppendError::Poisoned(_))));
    }
    assert_eq!(log.flushed_lsn(), Lsn(1));
    assert_eq!(log.written_lsn(), Lsn(2));
    log.close();
    // Reopening continues after what is on disk; entry 2 was written, never acknowledged.
    let (log, _) = DigestLog::open(Arc::new(mem), small(100)).expect("reopen");
    assert!(log.flushed_lsn() >= Lsn(1));
}

#[tokio::test]
async fn append_nowait_numbers_entries_in_call_order_and_they_flush_like_any_other() {
    let mem = MemStorage::new();
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), small(100)).expect("open");
    let lsns: Vec<Lsn> = (0..30).map(|i| log.append_nowait(entry(i)).expect("queued")).collect();
    assert_eq!(lsns, (1..=30).map(Lsn).collect::<Vec<_>>());
    // An awaited append after them is acknowledged only once they are durable too.
    assert_eq!(log.append(entry(30)).await.expect("append"), Lsn(31));
    assert!(log.flushed_lsn() >= Lsn(31));
    let mut cursor = log.open_cursor("all", CursorStart::Oldest).expect("cursor");
    let Some(Batch::Entries(read)) = cursor.try_next_batch(100).expect("read") else {
        panic!("nothing flushed")
    };
    let digests: Vec<_> = read.iter().map(|e| e.entry.digest).collect();
    assert_eq!(digests, (0..31).map(|i| entry(i).digest).collect::<Vec<_>>());
    // Once poisoned, no LSN is handed out.
    mem.set_fail_syncs(true);
    assert!(log.append(entry(31)).await.is_err());
    assert!(matches!(log.append_nowait(entry(32)), Err(AppendError::Poisoned(_))));
    assert!(log.poisoned().is_some());
}

#[tokio::test]
async fn entries_on_their_way_to_disk_count_as_logged_and_behind() {
    let config = Config { commit: CommitPolicy::buffered(Duration::from_secs(60)), ..small(100) };
    let (log, _) = DigestLog::open(Arc::new(MemStorage::new()), config).expect("open");
    let cursor = log.open_cursor("link", CursorStart::Oldest).expect("cursor");
    for i in 0..3 {
        log.append_nowait(entry(i)).expect("queued");
    }
    // Nothing is synced for a minute, yet a consumer is three changes behind now.
    assert_eq!(log.flushed_lsn(), Lsn(0));
    assert_eq!(log.logged_lsn(), Lsn(3));
    assert_eq!(cursor.logged(), Lsn(3));
    assert_eq!(cursor.backlog(), 3);
    assert_eq!(log.cursors()[0].lag, 3);
}

#[tokio::test]
async fn what_a_cursor_has_not_committed_reads_without_moving_it() {
    let config = Config { commit: CommitPolicy::buffered(Duration::from_millis(5)), ..small(4) };
    let (log, _) = DigestLog::open(Arc::new(MemStorage::new()), config).expect("open");
    let mut cursor = log.open_cursor("link", CursorStart::Oldest).expect("cursor");
    for i in 0..10 {
        log.append_nowait(entry(i)).expect("queued");
    }
    log.flushed_through(Lsn(10)).await.expect("flushed in the background");
    let Some(Batch::Entries(read)) = cursor.try_next_batch(4).expect("read") else {
        panic!("nothing flushed")
    };
    cursor.commit(read[3].lsn).await.expect("commit");
    let rest = log.read_flushed(cursor.committed(), 100).expect("read past the cursor");
    let lsns: Vec<u64> = rest.iter().map(|e| e.lsn.0).collect();
    assert_eq!(lsns, (5..=10).collect::<Vec<_>>(), "across segments of four entries");
    assert_eq!(rest[0].entry.digest, entry(4).digest);
    assert_eq!(log.read_flushed(Lsn(8), 1).expect("bounded").len(), 1);
    assert!(log.read_flushed(Lsn(10), 100).expect("nothing after the end").is_empty());
    assert_eq!(cursor.committed(), Lsn(4), "reading moved no cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let disk = Disk::new();
    let (log, _) = DigestLog::open(disk.storage(), Config::default()).expect("open");
    let log = Arc::new(log);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..128u64 {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            for i in 0..8 {
                log.append(entry(w * 8 + i)).await.expect("append");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let m = log.metrics();
    assert_eq!(m.appends, 1024);
    assert!(m.syncs < 1024 / 4, "group commit did not group: {m:?}");
}

#[tokio::test]
async fn buffered_mode_acks_before_fsync_but_readers_wait_for_it() {
    let mem = MemStorage::new();
    let mut config = small(100);
    config.commit = CommitPolicy::buffered(Duration::from_millis(20));
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("open");
    let mut c = log.open_cursor("r", CursorStart::Oldest).expect("cursor");
    assert_eq!(log.append(entry(0)).await.expect("append"), Lsn(1));
    // Acknowledged but (likely) not yet synced: a power loss now may lose it...
    // ...while readers only ever get it once it is flushed.
    let Batch::Entries(es) = tokio::time::timeout(Duration::from_secs(5), c.next_batch(10))
        .await
        .expect("flushed within max_wait")
        .expect("read")
    else {
        panic!("overflow")
    };
    assert_eq!(es[0].lsn, Lsn(1));
    assert!(log.flushed_lsn() >= Lsn(1));
    assert!(log.metrics().syncs >= 1);
}

#[tokio::test]
async fn open_reads_only_headers_and_the_last_segment() {
    let mem = MemStorage::new();
    let config = small(50);
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("open");
    for i in 0..1000 {
        log.append(entry(i)).await.expect("append");
    }
    log.close();
    let before = mem.bytes_read();
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("reopen");
    let read = mem.bytes_read() - before;
    // 20 segments: 20 headers plus one whole segment, not the 54 KB of records.
    assert!(read <= 20 * 32 + config.segment_size, "open read {read} bytes");
    assert_eq!(log.flushed_lsn(), Lsn(1000));
}

#[tokio::test]
async fn damaged_checkpoint_is_an_error_not_a_reset() {
    let mem = Mem::default();
    let (log, _) = DigestLog::open(mem.storage(), small(10)).expect("open");
    drop(log.open_cursor("west", CursorStart::Oldest).expect("cursor"));
    log.close();
    mem.0.corrupt("west.cursor", 13, 0x01).expect("corrupt");
    let err = DigestLog::open(mem.storage(), small(10)).expect_err("must fail");
    assert!(matches!(&err, OpenError::Checkpoint { file, .. } if file == "west.cursor"), "{err}");
}

#[tokio::test]
async fn cursor_ahead_of_log_is_an_error() {
    let mem = Mem::default();
    let (log, _) = DigestLog::open(mem.storage(), small(10)).expect("open");
    let mut c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
    for i in 0..5 {
        log.append(entry(i)).await.expect("append");
    }
    let _ = c.next_batch(10).await.expect("read");
    c.commit(Lsn(5)).await.expect("commit");
    drop(c);
    log.close();
    // The disk lost the tail (e.g. it lied about fsync).
    let seg = "00000000000000000001.seg";
    let mut f = mem.0.open(seg).expect("open");
    f.truncate((32 + 2 * RECORD_LEN) as u64).expect("truncate");
    let err = DigestLog::open(mem.storage(), small(10)).expect_err("must fail");
    assert!(matches!(err, OpenError::CursorAhead { committed: Lsn(5), last: Lsn(2), .. }), "{err}");
}

#[tokio::test]
async fn missing_segments_on_open_overflow_cursors() {
    let mem = Mem::default();
    let (log, _) = DigestLog::open(mem.storage(), small(10)).expect("open");
    drop(log.open_cursor("west", CursorStart::Oldest).expect("cursor"));
    for i in 0..25 {
        log.append(entry(i)).await.expect("append");
    }
    log.close();
    // An operator deleted the oldest segment by hand.
    mem.0.remove("00000000000000000001.seg").expect("remove");
    mem.0.create("stale.cursor.tmp").expect("leftover temp file");
    let (log, report) = DigestLog::open(mem.storage(), small(10)).expect("reopen");
    assert_eq!(report.cursors_overflowed, vec!["west".to_owned()]);
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(log.metrics().overflows, 1);
    let c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
    let o = c.overflow().expect("overflowed");
    assert_eq!((o.committed, o.lost_through, o.min_lut_ms), (Lsn(0), Lsn(10), 0));
}

#[test]
fn second_writer_is_locked_out_and_config_is_validated() {
    let disk = Disk::new();
    let first = disk.storage();
    let err = ferry_digestlog::open_dir(disk.0.path(), Config::default()).expect_err("locked");
    assert!(matches!(err, OpenError::Io { .. }), "{err}");
    drop(first);
    let bad = Config { size_cap: Config::default().segment_size, ..Config::default() };
    assert!(matches!(ferry_digestlog::open_dir(disk.0.path(), bad), Err(OpenError::Config(_))));
}

#[tokio::test]
async fn inspect_and_dump() {
    let disk = Disk::new();
    let (log, _) = DigestLog::open(disk.storage(), small(10)).expect("open");
    let mut c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
    for i in 0..25 {
        log.append(entry(i)).await.expect("append");
    }
    let _ = c.next_batch(5).await.expect("read");
    c.commit(Lsn(5)).await.expect("commit");
    drop(c);
    log.close();

    let ins = ferry_digestlog::inspect(disk.0.path()).expect("inspect");
    assert_eq!((ins.first_lsn, ins.last_lsn), (Lsn(1), Lsn(25)));
    assert_eq!(ins.segments.len(), 3);
    assert_eq!(ins.segments[2].entries, 5);
    assert_eq!(ins.cursors[0].lag, 20);
    let text = ins.to_string();
    assert!(text.contains("LSN range 1..=25 (25 entries), 3 segments"), "{text}");
    assert!(text.contains("cursor west: committed 5 lag 20"), "{text}");

    let mut out = Vec::new();
    let n = ferry_digestlog::dump(disk.0.path(), Some(Lsn(9)), Some(4), &mut out).expect("dump");
    assert_eq!(n, 4);
    let text = String::from_utf8(out).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("lsn=9 "), "{}", lines[0]);
    assert!(lines[3].starts_with("lsn=12 "), "{}", lines[3]);
    let mut all = Vec::new();
    assert_eq!(ferry_digestlog::dump(disk.0.path(), None, None, &mut all).expect("dump all"), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_disk_applies_backpressure_and_drops_nothing() {
    let mem = MemStorage::new();
    mem.set_sync_delay(Duration::from_millis(5));
    let mut config = small(1000);
    config.queue_depth = 2;
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("open");
    let log = Arc::new(log);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = Arc::clone(&log);
        tasks.spawn(async move { log.append(entry(i)).await.expect("append waits, never fails") });
    }
    let mut lsns = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lsns.push(r.expect("task"));
    }
    lsns.sort();
    assert_eq!(lsns, (1..=200).map(Lsn).collect::<Vec<_>>());
    let mut c = log.open_cursor("all", CursorStart::Oldest).expect("cursor");
    let Some(Batch::Entries(es)) = c.try_next_batch(1000).expect("read") else {
        panic!("nothing flushed")
    };
    assert_eq!(es.len(), 200);
}

#[tokio::test]
async fn retention_and_size_cap_read_no_segment_bytes() {
    let mem = MemStorage::new();
    let mut config = small(10);
    config.size_cap = config.segment_size * 3;
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), config).expect("open");
    let mut fast = log.open_cursor("fast", CursorStart::Oldest).expect("cursor");
    let slow = log.open_cursor("slow", CursorStart::Oldest).expect("cursor");
    for i in 0..30 {
        log.append(entry(i)).await.expect("append");
    }
    let _ = fast.next_batch(100).await.expect("read");
    let before = mem.bytes_read();
    fast.commit(Lsn(30)).await.expect("commit");
    for i in 30..100 {
        log.append(entry(i)).await.expect("append");
    }
    // Both cursor retention and the cap deleted segments (and marked "slow") without
    // reading a byte.
    assert_eq!(mem.bytes_read(), before);
    // 100 entries in 10 segments; the cap keeps 2 sealed and the active one.
    let m = log.metrics();
    assert_eq!(m.segments_deleted, 7);
    // "slow" lost 1..=70 and "fast" (committed 30) lost 31..=70.
    assert_eq!(m.entries_lost_to_overflow, 70 + 40);
    assert!(m.overflows >= 1);
    assert_eq!(slow.overflow().map(|o| o.lost_through), Some(Lsn(70)));
}

#[tokio::test]
async fn torn_segment_creation_is_a_torn_tail() {
    let mem = MemStorage::new();
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), small(10)).expect("open");
    for i in 0..2 {
        log.append(entry(i)).await.expect("append");
    }
    log.close();
    // A next segment holding a few bytes of a header and nothing else.
    let mut f = mem.create("00000000000000000003.seg").expect("create");
    f.append(b"FERRY").expect("append");
    mem.sync_dir().expect("sync dir");
    let (log, report) = DigestLog::open(Arc::new(mem.clone()), small(10)).expect("reopen");
    let cut = report.torn_tail.expect("reported");
    assert_eq!(cut.segments_deleted, vec!["00000000000000000003.seg".to_owned()]);
    assert_eq!(log.flushed_lsn(), Lsn(2));
    assert_eq!(log.append(entry(2)).await.expect("append"), Lsn(3));
}

#[tokio::test]
async fn damaged_header_under_records_is_an_error_until_salvaged() {
    let mem = MemStorage::new();
    let (log, _) = DigestLog::open(Arc::new(mem.clone()), small(10)).expect("open");
    for i in 0..3 {
        log.append(entry(i)).await.expect("append");
    }
    log.close();
    let seg = "00000000000000000001.seg";
    mem.corrupt(seg, 2, 0x20).expect("corrupt magic");
    let err = DigestLog::open(Arc::new(mem.clone()), small(10)).expect_err("strict");
    let OpenError::Corrupt(c) = err else { panic!("wrong error {err}") };
    assert_eq!((c.segment.as_str(), c.offset), (seg, 0));
    let config = Config { recovery: ferry_digestlog::RecoveryMode::Salvage, ..small(10) };
    let (log, report) = DigestLog::open(Arc::new(mem), config).expect("salvage");
    assert_eq!(report.salvaged.expect("reported").segments_deleted, vec![seg.to_owned()]);
    // Numbering restarts where the log started.
    assert_eq!(log.append(entry(0)).await.expect("append"), Lsn(1));
}
