//! Operator tools behind `ferry digestlog inspect` and `ferry digestlog dump`: read-only
//! views of a log directory (safe on a live log; they never truncate or delete).

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use crate::checkpoint::{Checkpoint, CursorName};
use crate::cursor::CursorInfo;
use crate::entry::Lsn;
use crate::error::{OpenError, ReadError};
use crate::read;
use crate::recovery::{self, Cut, RecoveryMode};
use crate::storage::{self, FileStorage, Storage};

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// File name.
    pub name: String,
    /// First LSN.
    pub first: Lsn,
    /// Number of valid entries.
    pub entries: u64,
    /// Valid bytes.
    pub bytes: u64,
}

/// What `ferry digestlog inspect DIR` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Oldest LSN in the log (meaningless if the log is empty).
    pub first_lsn: Lsn,
    /// Last valid LSN (`first_lsn - 1` if empty).
    pub last_lsn: Lsn,
    /// Torn tail the next open would truncate.
    pub torn_tail: Option<Cut>,
    /// Cursors with lag measured against `last_lsn`.
    pub cursors: Vec<CursorInfo>,
    /// Cursor checkpoints that failed to decode, with the reason.
    pub bad_cursors: Vec<(String, String)>,
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: u64 = self.segments.iter().map(|s| s.bytes).sum();
        writeln!(
            f,
            "LSN range {}..={} ({} entries), {} segments, {} bytes",
            self.first_lsn,
            self.last_lsn,
            (self.last_lsn.0 + 1).saturating_sub(self.first_lsn.0),
            self.segments.len(),
            bytes
        )?;
        for s in &self.segments {
            writeln!(
                f,
                "segment {}: first LSN {}, {} entries, {} bytes",
                s.name, s.first, s.entries, s.bytes
            )?;
        }
        if let Some(cut) = &self.torn_tail {
            writeln!(f, "torn tail: {} ({} bytes would be cut on open)", cut.at, cut.bytes_cut)?;
        }
        for c in &self.cursors {
            writeln!(f, "{c}")?;
        }
        for (name, why) in &self.bad_cursors {
            writeln!(f, "cursor checkpoint {name}: CORRUPT ({why})")?;
        }
        Ok(())
    }
}

/// Inspects the log in `dir` without changing it or taking its lock. On a live log the
/// active segment may be mid-write, so a reported torn tail can be an in-flight group.
pub fn inspect(dir: &Path) -> Result<Inspection, OpenError> {
    let storage = FileStorage::open_unlocked(dir).map_err(OpenError::io("open log directory"))?;
    inspect_storage(&storage)
}

pub(crate) fn inspect_storage(storage: &dyn Storage) -> Result<Inspection, OpenError> {
    let analysis = recovery::analyze(storage, RecoveryMode::Strict)?;
    let last_lsn = Lsn(analysis.next_lsn.0 - 1);
    let first_lsn = analysis.segments.first().map_or(analysis.next_lsn, |s| s.first);
    let segments = analysis
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let end = analysis.segments.get(i + 1).map_or(analysis.next_lsn, |n| n.first);
            SegmentInfo { name: s.name(), first: s.first, entries: end.0 - s.first.0, bytes: s.len }
        })
        .collect();
    let mut cursors = Vec::new();
    let mut bad_cursors = Vec::new();
    let mut names = storage.list().map_err(OpenError::io("list log directory"))?;
    names.sort();
    for file in names {
        let Some(name) = CursorName::from_file_name(&file) else {
            continue;
        };
        let bytes = storage
            .open(&file)
            .and_then(|f| storage::read_all(f.as_ref()))
            .map_err(OpenError::io(format!("read cursor checkpoint {file}")))?;
        match Checkpoint::decode(&bytes) {
            Ok(cp) => {
                cursors.push(CursorInfo::new(name.to_string(), cp.committed, last_lsn, cp.overflow))
            }
            Err(e) => bad_cursors.push((file, e.to_string())),
        }
    }
    Ok(Inspection {
        segments,
        first_lsn,
        last_lsn,
        torn_tail: analysis.torn_tail,
        cursors,
        bad_cursors,
    })
}

/// Why a dump stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The log could not be opened for reading.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Reading entries failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the output failed.
    #[error("write dump output: {0}")]
    Output(#[source] io::Error),
}

/// Writes the valid entries of the log in `dir` from LSN `from` (default: the oldest), at most
/// `limit` of them (default: all), one line each, to `out`. Returns how many were written.
pub fn dump(
    dir: &Path,
    from: Option<Lsn>,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<u64, DumpError> {
    let storage = FileStorage::open_unlocked(dir).map_err(OpenError::io("open log directory"))?;
    dump_storage(&storage, from, limit, out)
}

pub(crate) fn dump_storage(
    storage: &dyn Storage,
    from: Option<Lsn>,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<u64, DumpError> {
    const CHUNK: usize = 4096;
    let analysis = recovery::analyze(storage, RecoveryMode::Strict)?;
    let last = Lsn(analysis.next_lsn.0 - 1);
    let oldest = analysis.segments.first().map_or(analysis.next_lsn, |s| s.first);
    let mut next = from.unwrap_or(oldest).max(oldest);
    let mut left = limit.unwrap_or(u64::MAX);
    let mut open = None;
    let mut written = 0;
    while next <= last && left > 0 {
        let max = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let entries = read::read_range(storage, &analysis.segments, &mut open, next, last, max)?;
        for e in &entries {
            writeln!(out, "{e}").map_err(DumpError::Output)?;
        }
        let n = entries.len() as u64;
        next = Lsn(next.0 + n);
        left -= n;
        written += n;
    }
    Ok(written)
}
