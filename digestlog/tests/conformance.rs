//! The conformance suite: every storage backend must pass every check here, run once against
//! `FileStorage` on a temp directory and once against `MemStorage`.

mod common;

use std::time::Duration;

use common::{Backend, Disk, Mem, entry, small};
use ferry_digestlog::{
    Batch, CorruptionKind, CursorError, CursorStart, DigestLog, HEADER_LEN, Lsn, OpenError,
    RECORD_LEN, RecoveryMode, Storage,
};

const SEG: &str = "00000000000000000001.seg";

fn storage_basics(b: &dyn Backend) {
    let s = b.storage();
    let mut f = s.create("a.tmp").expect("create");
    f.append(b"hello ").expect("append");
    f.append(b"world").expect("append");
    f.sync().expect("sync");
    assert_eq!(f.size().expect("size"), 11);
    let mut buf = [0u8; 5];
    assert_eq!(f.read_at(6, &mut buf).expect("read"), 5);
    assert_eq!(&buf, b"world");
    assert_eq!(f.read_at(11, &mut buf).expect("read at end"), 0);
    f.truncate(5).expect("truncate");
    assert_eq!(f.size().expect("size"), 5);
    drop(f);
    s.rename("a.tmp", "a").expect("rename");
    s.create("b").expect("create b").append(b"x").expect("append b");
    s.rename("b", "a").expect("rename replaces");
    s.sync_dir().expect("sync dir");
    let mut names = s.list().expect("list");
    names.sort();
    assert_eq!(names, vec!["a".to_owned()]);
    let f = s.open("a").expect("open");
    assert_eq!(f.size().expect("size"), 1);
    s.remove("a").expect("remove");
    assert!(s.open("a").is_err());
    assert!(s.list().expect("list").is_empty());
}

async fn append_reopen_read(b: &dyn Backend) {
    let (log, report) = DigestLog::open(b.storage(), small(16)).expect("open");
    assert_eq!(report.torn_tail, None);
    let log = std::sync::Arc::new(log);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100u64 {
        let log = std::sync::Arc::clone(&log);
        tasks.spawn(async move { (log.append(entry(i)).await.expect("append"), i) });
    }
    let mut by_lsn = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (lsn, i) = r.expect("task");
        assert!(by_lsn.insert(lsn, i).is_none(), "LSN {lsn} assigned twice");
    }
    assert_eq!(by_lsn.keys().copied().collect::<Vec<_>>(), (1..=100).map(Lsn).collect::<Vec<_>>());
    assert_eq!(log.flushed_lsn(), Lsn(100));
    assert!(log.metrics().syncs <= 100);
    std::sync::Arc::try_unwrap(log).expect("sole owner").close();

    let (log, report) = DigestLog::open(b.storage(), small(16)).expect("reopen");
    assert_eq!(report.torn_tail, None);
    assert_eq!(log.flushed_lsn(), Lsn(100));
    let mut c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
    let mut got = Vec::new();
    while got.len() < 100 {
        match c.next_batch(7).await.expect("read") {
            Batch::Entries(es) => got.extend(es),
            Batch::Overflowed(o) => panic!("unexpected overflow {o:?}"),
        }
    }
    for e in &got {
        assert_eq!(e.entry, entry(by_lsn[&e.lsn]));
    }
    assert_eq!(log.append(entry(100)).await.expect("append after reopen"), Lsn(101));
}

async fn retention_follows_slowest_cursor(b: &dyn Backend) {
    let (log, _) = DigestLog::open(b.storage(), small(10)).expect("open");
    let mut fast = log.open_cursor("fast", CursorStart::Oldest).expect("fast");
    let mut slow = log.open_cursor("slow", CursorStart::Oldest).expect("slow");
    for i in 0..55 {
        log.append(entry(i)).await.expect("append");
    }
    let segs =
        |s: &dyn Storage| s.list().expect("list").iter().filter(|n| n.ends_with(".seg")).count();
    assert_eq!(segs(b.peek().as_ref()), 6);
    // The fast cursor reading everything does not delete what the slow one needs.
    let Batch::Entries(es) = fast.next_batch(100).await.expect("read") else { panic!() };
    assert_eq!(es.len(), 55);
    fast.commit(Lsn(55)).await.expect("commit fast");
    assert_eq!(segs(b.peek().as_ref()), 6);
    let Batch::Entries(es) = slow.next_batch(25).await.expect("read") else { panic!() };
    assert_eq!(es.last().map(|e| e.lsn), Some(Lsn(25)));
    slow.commit(Lsn(25)).await.expect("commit slow");
    // Segments 1..=10 and 11..=20 are passed by both; 21..=30 is not.
    assert_eq!(segs(b.peek().as_ref()), 4);
    assert_eq!(log.metrics().segments_deleted, 2);
    assert_eq!(log.metrics().overflows, 0);
    // Never backwards: committing lower is a no-op, committing unread data an error.
    slow.commit(Lsn(3)).await.expect("no-op");
    assert_eq!(slow.committed(), Lsn(25));
    assert!(matches!(slow.commit(Lsn(26)).await, Err(CursorError::NotRead { .. })));
    assert!(matches!(log.open_cursor("slow", CursorStart::Oldest), Err(CursorError::InUse(_))));
    drop((fast, slow));
    log.close();

    // Checkpoints survive reopen; reading resumes after the committed LSN.
    let (log, _) = DigestLog::open(b.storage(), small(10)).expect("reopen");
    let mut slow = log.open_cursor("slow", CursorStart::Latest).expect("slow");
    assert_eq!(slow.committed(), Lsn(25));
    let Batch::Entries(es) = slow.next_batch(1).await.expect("read") else { panic!() };
    assert_eq!(es[0].lsn, Lsn(26));
    drop(slow);
    log.remove_cursor("slow").expect("remove");
    assert!(matches!(log.remove_cursor("slow"), Err(CursorError::NotFound(_))));
    // Only "fast" (at 55) is left, so every sealed segment goes.
    assert_eq!(segs(b.peek().as_ref()), 1);
}

async fn size_cap_overflows_cursor(b: &dyn Backend) {
    let mut config = small(10);
    config.size_cap = config.segment_size * 3;
    let (log, _) = DigestLog::open(b.storage(), config).expect("open");
    let mut c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
    let Batch::Entries(_) = ({
        log.append(entry(0)).await.expect("append");
        c.next_batch(1).await.expect("read")
    }) else {
        panic!()
    };
    c.commit(Lsn(1)).await.expect("commit");
    for i in 1..45 {
        log.append(entry(i)).await.expect("append");
    }
    // 45 entries in 5 segments; the cap keeps 2 sealed + the active one.
    let Batch::Overflowed(o) = c.next_batch(100).await.expect("read") else {
        panic!("expected overflow")
    };
    assert_eq!(o.committed, Lsn(1));
    assert_eq!(o.lost_through, Lsn(20));
    assert_eq!(o.min_lut_ms, entry(0).lut_ms);
    assert_eq!(log.metrics().overflows, 2);
    assert_eq!(log.metrics().entries_lost_to_overflow, 19);
    // Still reported until acknowledged, and across a reopen.
    assert_eq!(c.next_batch(100).await.expect("read"), Batch::Overflowed(o));
    drop(c);
    log.close();
    let (log, _) = DigestLog::open(b.storage(), config).expect("reopen");
    let mut c = log.open_cursor("west", CursorStart::Oldest).expect("cursor");
    assert_eq!(c.overflow(), Some(o));
    c.acknowledge_overflow(&o).expect("ack");
    let Batch::Entries(es) = c.next_batch(100).await.expect("read") else { panic!() };
    assert_eq!(es.first().map(|e| e.lsn), Some(Lsn(21)));
    assert_eq!(es.last().map(|e| e.lsn), Some(Lsn(45)));
}

fn rewrite(s: &dyn Storage, name: &str, edit: impl FnOnce(&mut Vec<u8>)) {
    let f = s.open(name).expect("open");
    let len = f.size().expect("size") as usize;
    let mut bytes = vec![0; len];
    let mut done = 0;
    while done < len {
        done += f.read_at(done as u64, &mut bytes[done..]).expect("read");
    }
    drop(f);
    edit(&mut bytes);
    let mut f = s.create(name).expect("create");
    f.append(&bytes).expect("append");
    f.sync().expect("sync");
}

async fn torn_tail_is_cut_and_reported(b: &dyn Backend) {
    let (log, _) = DigestLog::open(b.storage(), small(100)).expect("open");
    for i in 0..5 {
        log.append(entry(i)).await.expect("append");
    }
    log.close();
    let end = (HEADER_LEN + 5 * RECORD_LEN) as u64;
    // Half a record, then a CRC mismatch in the last whole record.
    rewrite(b.storage().as_ref(), SEG, |bytes| {
        bytes.extend_from_within(HEADER_LEN..HEADER_LEN + 20);
        bytes[HEADER_LEN + 4 * RECORD_LEN + 30] ^= 0xff;
    });
    let (log, report) = DigestLog::open(b.storage(), small(100)).expect("reopen");
    let cut = report.torn_tail.expect("torn tail reported");
    assert_eq!(cut.at.segment, SEG);
    assert_eq!(cut.at.offset, end - RECORD_LEN as u64);
    assert_eq!(cut.bytes_cut, RECORD_LEN as u64 + 20);
    assert!(matches!(cut.at.kind, CorruptionKind::Record(_)));
    assert_eq!(log.flushed_lsn(), Lsn(4));
    assert_eq!(log.append(entry(9)).await.expect("append"), Lsn(5));
}

async fn corruption_before_tail_names_segment_and_offset(b: &dyn Backend) {
    let (log, _) = DigestLog::open(b.storage(), small(4)).expect("open");
    for i in 0..10 {
        log.append(entry(i)).await.expect("append");
    }
    log.close();
    // A sealed segment shortened by a record: detected from its length, no body scan.
    let sealed = "00000000000000000005.seg";
    rewrite(b.storage().as_ref(), sealed, |bytes| bytes.truncate(bytes.len() - 1));
    let err = DigestLog::open(b.storage(), small(4)).expect_err("strict open must fail");
    let OpenError::Corrupt(c) = err else { panic!("wrong error {err}") };
    assert_eq!(c.segment, sealed);
    assert_eq!(c.offset, (HEADER_LEN + 4 * RECORD_LEN - 1) as u64);
    // Salvage cuts the log at the damage: entries 5..=7 stay, 8.. go.
    let mut config = small(4);
    config.recovery = RecoveryMode::Salvage;
    let (log, report) = DigestLog::open(b.storage(), config).expect("salvage");
    let cut = report.salvaged.expect("salvage reported");
    assert_eq!(cut.at.segment, sealed);
    assert_eq!(cut.at.offset, (HEADER_LEN + 3 * RECORD_LEN) as u64);
    assert_eq!(cut.segments_deleted, vec!["00000000000000000009.seg".to_owned()]);
    assert_eq!(log.flushed_lsn(), Lsn(7));
    assert_eq!(log.append(entry(0)).await.expect("append"), Lsn(8));
}

async fn tailing_reader_wakes_on_flush(b: &dyn Backend) {
    let (log, _) = DigestLog::open(b.storage(), small(8)).expect("open");
    let mut c = log.open_cursor("tail", CursorStart::Latest).expect("cursor");
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 20 {
            match c.next_batch(64).await.expect("read") {
                Batch::Entries(es) => seen.extend(es.into_iter().map(|e| e.lsn)),
                Batch::Overflowed(o) => panic!("overflow {o:?}"),
            }
        }
        seen
    });
    for i in 0..20 {
        log.append(entry(i)).await.expect("append");
    }
    let seen = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("reader woke")
        .expect("task");
    assert_eq!(seen, (1..=20).map(Lsn).collect::<Vec<_>>());
}

macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn storage_basics() {
                super::storage_basics(&$backend);
            }

            #[tokio::test]
            async fn append_reopen_read() {
                super::append_reopen_read(&$backend).await;
            }

            #[tokio::test]
            async fn retention_follows_slowest_cursor() {
                super::retention_follows_slowest_cursor(&$backend).await;
            }

            #[tokio::test]
            async fn size_cap_overflows_cursor() {
                super::size_cap_overflows_cursor(&$backend).await;
            }

            #[tokio::test]
            async fn torn_tail_is_cut_and_reported() {
                super::torn_tail_is_cut_and_reported(&$backend).await;
            }

            #[tokio::test]
            async fn corruption_before_tail_names_segment_and_offset() {
                super::corruption_before_tail_names_segment_and_offset(&$backend).await;
            }

            #[tokio::test]
            async fn tailing_reader_wakes_on_flush() {
                super::tailing_reader_wakes_on_flush(&$backend).await;
            }
        }
    };
}

suite!(file_backend, Disk::new());
suite!(mem_backend, Mem::default());
