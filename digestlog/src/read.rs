//! Reading runs of flushed entries out of segment files by LSN (version-1 records have a fixed
//! size, so a position is computed, not searched), verifying each record's CRC and LSN.

use crate::entry::{self, LoggedEntry, Lsn, RECORD_LEN};
use crate::error::{Corruption, CorruptionKind, ReadError};
use crate::recovery::SegmentMeta;
use crate::segment::{self, ScanStop};
use crate::storage::{self, Storage, StorageFile};

/// Where `lsn` lives: the first LSN of its segment and the first LSN of the next segment (if
/// any). `None` if `lsn` is older than every segment.
pub(crate) fn locate(segments: &[SegmentMeta], lsn: Lsn) -> Option<(Lsn, Option<Lsn>)> {
    let i = segments.partition_point(|s| s.first <= lsn).checked_sub(1)?;
    Some((segments[i].first, segments.get(i + 1).map(|s| s.first)))
}

/// An open segment file, kept between reads of the same segment.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    first: Lsn,
    file: Box<dyn StorageFile>,
}

/// Reads `count` entries starting at `from`, all in the segment starting at `first`, onto
/// `out`, reusing (or replacing) the open file in `open`.
pub(crate) fn read_run(
    storage: &dyn Storage,
    open: &mut Option<SegmentFile>,
    first: Lsn,
    from: Lsn,
    count: usize,
    out: &mut Vec<LoggedEntry>,
) -> Result<(), ReadError> {
    let name = segment::segment_name(first);
    let file = match open {
        Some(f) if f.first == first => f,
        _ => {
            let file = storage.open(&name).map_err(|source| ReadError::Io {
                context: format!("open segment {name}"),
                source,
            })?;
            open.insert(SegmentFile { first, file })
        }
    };
    let offset = segment::record_offset(first, from);
    let mut bytes = vec![0u8; count * RECORD_LEN];
    storage::read_exact_at(file.file.as_ref(), offset, &mut bytes).map_err(|source| {
        ReadError::Io { context: format!("read segment {name} at offset {offset}"), source }
    })?;
    for (i, record) in bytes.chunks_exact(RECORD_LEN).enumerate() {
        let at = offset + (i * RECORD_LEN) as u64;
        let expected = Lsn(from.0 + i as u64);
        let corrupt = |kind: ScanStop| {
            ReadError::Corrupt(Corruption {
                segment: name.clone(),
                offset: at,
                kind: CorruptionKind::Record(kind),
            })
        };
        let logged = entry::decode_record(record).map_err(|e| corrupt(e.into()))?;
        if logged.lsn != expected {
            return Err(corrupt(ScanStop::LsnMismatch { expected, found: logged.lsn }));
        }
        out.push(logged);
    }
    Ok(())
}

/// Reads up to `max` entries from `from` to `last` inclusive across segments.
pub(crate) fn read_range(
    storage: &dyn Storage,
    segments: &[SegmentMeta],
    open: &mut Option<SegmentFile>,
    from: Lsn,
    last: Lsn,
    max: usize,
) -> Result<Vec<LoggedEntry>, ReadError> {
    let mut out = Vec::new();
    let mut next = from;
    while next <= last && out.len() < max {
        let (first, next_first) = locate(segments, next).ok_or(ReadError::Missing(next))?;
        let seg_last = next_first.map_or(last, |n| Lsn(n.0 - 1)).min(last);
        let want = (seg_last.0 - next.0 + 1).min((max - out.len()) as u64) as usize;
        read_run(storage, open, first, next, want, &mut out)?;
        next = Lsn(next.0 + want as u64);
    }
    Ok(out)
}
