//! Open-time recovery. [`analyze`] reads only segment headers, sealed segment lengths and the
//! last segment (never the bodies of sealed segments unless salvaging) and decides what is
//! valid; [`apply`] performs the cuts. Inspection runs `analyze` alone and changes nothing.

use crate::entry::{Lsn, RECORD_LEN};
use crate::error::{Corruption, CorruptionKind, OpenError};
use crate::segment::{self, HEADER_LEN, NO_LUT, SegmentHeader};
use crate::storage::{self, Storage};

/// How to treat corruption before the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Truncate a torn tail of the last segment; anything wrong before it is an error
    /// naming the segment and offset (default).
    #[default]
    Strict,
    /// Verify every record of every segment and cut the log at the first corruption,
    /// deleting everything after it (reported in [`RecoveryReport::salvaged`]). For operators
    /// recovering a damaged disk; entries after the cut are lost.
    Salvage,
}

/// Bytes cut from the end of the log by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Where the cut starts.
    pub at: Corruption,
    /// Bytes removed from that segment.
    pub bytes_cut: u64,
    /// Whole later segments deleted (salvage only).
    pub segments_deleted: Vec<String>,
}

/// What recovery found and did on open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// A torn tail truncated from the last segment (a crash during a write).
    pub torn_tail: Option<Cut>,
    /// A cut made in salvage mode.
    pub salvaged: Option<Cut>,
    /// Leftover temporary files removed.
    pub temp_files_removed: usize,
    /// Cursors found behind the oldest segment and marked overflowed.
    pub cursors_overflowed: Vec<String>,
    /// Cursors clamped to the end of the log after a salvage cut.
    pub cursors_clamped: Vec<String>,
}

/// One segment as recovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    pub(crate) first: Lsn,
    /// File length in bytes.
    pub(crate) len: u64,
    /// Smallest LUT of its entries (`NO_LUT` if none or not yet known for the active one).
    pub(crate) min_lut: u64,
}

impl SegmentMeta {
    pub(crate) fn name(&self) -> String {
        segment::segment_name(self.first)
    }
}

/// The valid log as found on disk, and the cuts needed to get there.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub(crate) segments: Vec<SegmentMeta>,
    /// The LSN the next append gets.
    pub(crate) next_lsn: Lsn,
    pub(crate) torn_tail: Option<Cut>,
    pub(crate) salvaged: Option<Cut>,
}

fn corrupt(first: Lsn, offset: u64, kind: impl Into<CorruptionKind>) -> Corruption {
    Corruption { segment: segment::segment_name(first), offset, kind: kind.into() }
}

/// Bytes of a sealed segment holding `first .. next_first` (saturating: the LSNs come from
/// file names on disk).
fn sealed_len(first: Lsn, next_first: Lsn) -> u64 {
    (next_first.0 - first.0).saturating_mul(RECORD_LEN as u64).saturating_add(HEADER_LEN as u64)
}

/// Reads what is needed to find the valid log. Changes nothing.
pub(crate) fn analyze(storage: &dyn Storage, mode: RecoveryMode) -> Result<Analysis, OpenError> {
    let names = storage.list().map_err(OpenError::io("list log directory"))?;
    let mut firsts: Vec<Lsn> =
        names.iter().filter_map(|n| segment::parse_segment_name(n)).collect();
    firsts.sort_unstable();

    // Pass 1: headers and lengths only.
    let mut found = Vec::with_capacity(firsts.len());
    for &first in &firsts {
        let name = segment::segment_name(first);
        let file = storage.open(&name).map_err(OpenError::io(format!("open segment {name}")))?;
        let len = file.size().map_err(OpenError::io(format!("stat segment {name}")))?;
        let mut buf = [0u8; HEADER_LEN];
        let got = usize::try_from(len).unwrap_or(usize::MAX).min(HEADER_LEN);
        storage::read_exact_at(file.as_ref(), 0, &mut buf[..got])
            .map_err(OpenError::io(format!("read header of segment {name}")))?;
        found.push((first, len, SegmentHeader::decode(&buf[..got])));
    }

    let mut segments: Vec<SegmentMeta> = Vec::with_capacity(found.len());
    // The earliest problem: where, and how many bytes of that segment are cut.
    let mut cut: Option<(Corruption, u64)> = None;
    for (i, &(first, len, header)) in found.iter().enumerate() {
        let sealed = i + 1 < found.len();
        let problem = match header {
            Err(e) => Some((0, CorruptionKind::Header(e))),
            Ok(h) if h.first_lsn != first => {
                Some((0, CorruptionKind::NameMismatch { header: h.first_lsn, name: first }))
            }
            Ok(_) if sealed && mode == RecoveryMode::Strict => {
                let expected = sealed_len(first, found[i + 1].0);
                (len != expected).then_some((
                    len.min(expected),
                    CorruptionKind::Length { expected, actual: len },
                ))
            }
            Ok(_) => None,
        };
        if let Some((offset, kind)) = problem {
            cut = Some((corrupt(first, offset, kind), len));
            break;
        }
        let min_lut = match found.get(i + 1) {
            Some((_, _, Ok(next))) => next.prev_min_lut,
            _ => NO_LUT,
        };
        segments.push(SegmentMeta { first, len, min_lut });
    }

    // Pass 2: record bodies, of the last kept segment only unless salvaging.
    let scan_from = match mode {
        RecoveryMode::Strict => segments.len().saturating_sub(1),
        RecoveryMode::Salvage => 0,
    };
    let mut next_lsn = found.first().map_or(Lsn(1), |f| f.0);
    for i in scan_from..segments.len() {
        let meta = segments[i].clone();
        let name = meta.name();
        let file = storage.open(&name).map_err(OpenError::io(format!("open segment {name}")))?;
        let bytes = storage::read_all(file.as_ref())
            .map_err(OpenError::io(format!("read segment {name}")))?;
        let header = SegmentHeader::decode(&bytes)
            .map_err(|e| OpenError::Corrupt(corrupt(meta.first, 0, e)))?;
        let scan = segment::scan(&header, &bytes, |_| {});
        next_lsn = scan.next_lsn;
        let next_first = segments.get(i + 1).map(|s| s.first);
        let complete = scan.valid_len == meta.len && next_first.is_none_or(|n| n == scan.next_lsn);
        if i + 1 == segments.len() || !complete {
            segments[i].min_lut = scan.min_lut;
        }
        if complete {
            continue;
        }
        let kind = match (scan.stop, next_first) {
            (Some(stop), _) => CorruptionKind::Record(stop),
            (None, Some(n)) => {
                CorruptionKind::Length { expected: sealed_len(meta.first, n), actual: meta.len }
            }
            // A last segment that is not complete always has a stop reason.
            (None, None) => CorruptionKind::Length { expected: scan.valid_len, actual: meta.len },
        };
        cut = Some((corrupt(meta.first, scan.valid_len, kind), meta.len - scan.valid_len));
        segments[i].len = scan.valid_len;
        segments.truncate(i + 1);
        break;
    }

    let mut torn_tail = None;
    let mut salvaged = None;
    if let Some((at, bytes_cut)) = cut {
        let cut_first = segment::parse_segment_name(&at.segment).unwrap_or(Lsn::ZERO);
        let in_last_file = found.last().is_some_and(|f| f.0 == cut_first);
        let segment_kept = segments.last().is_some_and(|s| s.first == cut_first);
        let segments_deleted: Vec<String> = found
            .iter()
            .filter(|f| f.0 > cut_first || (f.0 == cut_first && !segment_kept))
            .map(|f| segment::segment_name(f.0))
            .collect();
        // A torn tail: the cut is in the last file and loses at most a header's worth of a
        // file that never held a complete record, or the records after a torn write.
        let torn = in_last_file && (segment_kept || bytes_cut <= HEADER_LEN as u64);
        let cut = Cut { at, bytes_cut, segments_deleted };
        if torn {
            torn_tail = Some(cut);
        } else if mode == RecoveryMode::Salvage {
            salvaged = Some(cut);
        } else {
            return Err(OpenError::Corrupt(cut.at));
        }
    }
    if segments.is_empty() && !found.is_empty() {
        // Everything was cut; keep numbering where the log started.
        next_lsn = found[0].0;
    }
    Ok(Analysis { segments, next_lsn, torn_tail, salvaged })
}

/// Performs the cuts `analysis` calls for: truncates the last kept segment, deletes the
/// segment files after it, and makes both durable.
pub(crate) fn apply(storage: &dyn Storage, analysis: &Analysis) -> Result<(), OpenError> {
    for cut in [&analysis.torn_tail, &analysis.salvaged].into_iter().flatten() {
        if let Some(last) = analysis.segments.last() {
            let name = last.name();
            if name == cut.at.segment {
                let mut file =
                    storage.open(&name).map_err(OpenError::io(format!("open segment {name}")))?;
                file.truncate(last.len)
                    .and_then(|()| file.sync())
                    .map_err(OpenError::io(format!("truncate segment {name}")))?;
            }
        }
        for name in &cut.segments_deleted {
            storage.remove(name).map_err(OpenError::io(format!("remove segment {name}")))?;
        }
        storage.sync_dir().map_err(OpenError::io("sync log directory"))?;
        tracing::warn!(
            at = %cut.at,
            bytes_cut = cut.bytes_cut,
            segments_deleted = ?cut.segments_deleted,
            "digest log recovery cut the log"
        );
    }
    Ok(())
}
