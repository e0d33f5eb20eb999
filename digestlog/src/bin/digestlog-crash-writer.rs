//! Test helper for `tests/crash.rs`: appends to the digest log in DIR from many tasks until
//! killed, printing `A <lsn> <id>` for every acknowledged append and `C <lsn>` for every
//! committed cursor position, one flushed line each. Not an operator tool.

use std::error::Error;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_digestlog::{Batch, Config, CursorStart, Entry, Op};

const WRITERS: u64 = 16;

/// The entry number `id` (the crash test derives the same entry from the id it reads back).
fn entry(id: u64) -> Entry {
    let mut digest = [0u8; 20];
    digest[..8].copy_from_slice(&id.to_le_bytes());
    digest[8..16].copy_from_slice(&id.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    Entry {
        digest: digest.into(),
        namespace: (id % 5) as u32,
        partition: (id % 4096) as u16,
        generation: id as u16,
        lut_ms: 1_700_000_000_000 + id,
        op: if id.is_multiple_of(9) { Op::Delete } else { Op::Write },
        xdr_applied: false,
        origin_site: 1,
        copy: false,
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // If the parent stopped reading, there is nobody left to tell.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: digestlog-crash-writer DIR FIRST_ID")?;
    let first_id: u64 = args.next().ok_or("missing FIRST_ID")?.parse()?;
    let config = Config { segment_size: 16 << 10, ..Config::default() };
    let (log, _report) = ferry_digestlog::open_dir(&dir, config)?;
    let log = Arc::new(log);
    let mut cursor = log.open_cursor("crash", CursorStart::Oldest)?;
    tokio::spawn(async move {
        while let Ok(batch) = cursor.next_batch(100).await {
            let last = match batch {
                Batch::Entries(es) => es.last().map(|e| e.lsn),
                Batch::Overflowed(_) => None,
            };
            if let Some(lsn) = last
                && cursor.commit(lsn).await.is_ok()
            {
                say(&format!("C {lsn}"));
            }
        }
    });
    let next_id = Arc::new(AtomicU64::new(first_id));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let log = Arc::clone(&log);
        let next_id = Arc::clone(&next_id);
        tasks.spawn(async move {
            loop {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                match log.append(entry(id)).await {
                    Ok(lsn) => say(&format!("A {lsn} {id}")),
                    Err(e) => return e.to_string(),
                }
            }
        });
    }
    // Writers stop only on an append error; report the first.
    match tasks.join_next().await {
        Some(why) => Err(why?.into()),
        None => Ok(()),
    }
}
