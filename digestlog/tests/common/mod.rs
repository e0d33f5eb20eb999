//! Helpers shared by the integration tests: sample entries and backends that hand out fresh
//! handles to one log directory.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use ferry_digestlog::{Config, Entry, FileStorage, MemStorage, Op, Storage};

pub fn entry(i: u64) -> Entry {
    let mut digest = [0u8; 20];
    digest[..8].copy_from_slice(&i.to_le_bytes());
    Entry {
        digest: digest.into(),
        namespace: (i % 3) as u32,
        partition: (i % 4096) as u16,
        generation: i as u16,
        lut_ms: 1_700_000_000_000 + i,
        op: if i.is_multiple_of(5) { Op::Delete } else { Op::Write },
        xdr_applied: i.is_multiple_of(7),
        origin_site: (i % 4) as u8,
        copy: false,
    }
}

/// A config with segments of `per_segment` records.
pub fn small(per_segment: u64) -> Config {
    let segment_size =
        ferry_digestlog::HEADER_LEN as u64 + per_segment * ferry_digestlog::RECORD_LEN as u64;
    Config { segment_size, size_cap: segment_size * 1000, ..Config::default() }
}

/// A log directory that can be opened repeatedly.
pub trait Backend {
    /// A handle for opening the log (locks a file directory).
    fn storage(&self) -> Arc<dyn Storage>;
    /// A handle for looking at the files while the log is open.
    fn peek(&self) -> Arc<dyn Storage>;
}

#[derive(Debug, Default)]
pub struct Mem(pub MemStorage);

impl Backend for Mem {
    fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(self.0.clone())
    }

    fn peek(&self) -> Arc<dyn Storage> {
        self.storage()
    }
}

#[derive(Debug)]
pub struct Disk(pub tempfile::TempDir);

impl Disk {
    pub fn new() -> Disk {
        Disk(tempfile::tempdir().expect("create temp dir"))
    }
}

impl Backend for Disk {
    fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(FileStorage::open(self.0.path()).expect("open file storage"))
    }

    fn peek(&self) -> Arc<dyn Storage> {
        Arc::new(FileStorage::open_unlocked(self.0.path()).expect("open file storage"))
    }
}
