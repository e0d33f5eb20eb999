//! Log entries: what a caller appends, what a reader gets back, and their on-disk record
//! encoding (length prefix, CRC32C, fixed 46-byte payload in format version 1).

use std::fmt;

use crate::Digest;

/// Log sequence number: assigned by the log, dense and strictly increasing from 1.
///
/// `Lsn(0)` never names an entry; it means "before the first entry".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position before any entry.
    pub const ZERO: Lsn = Lsn(0);
    /// The largest LSN a valid log holds (2^63 - 1); larger values read from disk are
    /// rejected, so LSN arithmetic on them cannot overflow.
    pub const MAX: Lsn = Lsn(u64::MAX >> 1);

    /// The LSN after this one.
    #[must_use]
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The log's id of a namespace: FNV-1a of its name, stable across topology edits.
pub fn namespace_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5, |hash, b| (hash ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// What happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A write or touch: the record exists with a new generation.
    Write,
    /// A delete (durable or expunge).
    Delete,
    /// An expiration or eviction by the namespace supervisor (nsup), logged as the tombstone
    /// that replaced the record; links ship it only with `ship-nsup-deletes`.
    Expire,
}

/// One change to one record, as the node appends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// RIPEMD-160 digest of the record key.
    pub digest: Digest,
    /// Namespace id.
    pub namespace: u32,
    /// Partition id (0..4096).
    pub partition: u16,
    /// Record generation after the change (wraps).
    pub generation: u16,
    /// Last-update time of the record after the change, in milliseconds since the Unix epoch.
    pub lut_ms: u64,
    /// Write or delete.
    pub op: Op,
    /// The change was applied by XDR from another site (not a local client write).
    pub xdr_applied: bool,
    /// Site the change originated at (the local site for client writes).
    pub origin_site: u8,
    /// The node stored the change as a copy of another node's write (it was not the
    /// partition's master): it ships it only if it masters the partition when it reads it.
    pub copy: bool,
}

/// An entry together with the LSN the log assigned to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoggedEntry {
    /// Position in the log.
    pub lsn: Lsn,
    /// The change.
    pub entry: Entry,
}

impl fmt::Display for LoggedEntry {
    /// One line per entry, as `ferry digestlog dump` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.entry;
        write!(f, "lsn={} digest={}", self.lsn, e.digest)?;
        let op = match e.op {
            Op::Write => "write",
            Op::Delete => "delete",
            Op::Expire => "expire",
        };
        write!(
            f,
            " ns={} partition={} gen={} lut_ms={} op={op} xdr_applied={} origin={}{}",
            e.namespace,
            e.partition,
            e.generation,
            e.lut_ms,
            e.xdr_applied,
            e.origin_site,
            if e.copy { " copy" } else { "" }
        )
    }
}

/// Payload bytes of one entry in format version 1.
pub(crate) const PAYLOAD_LEN: usize = 46;
/// Bytes of the record header: length (u32) and CRC32C (u32).
pub(crate) const RECORD_HEADER_LEN: usize = 8;
/// Bytes of one whole record in format version 1.
pub const RECORD_LEN: usize = RECORD_HEADER_LEN + PAYLOAD_LEN;

const FLAG_WRITE: u8 = 0b001;
const FLAG_DELETE: u8 = 0b010;
const FLAG_XDR_APPLIED: u8 = 0b100;
const FLAG_EXPIRE: u8 = 0b1000;
const FLAG_COPY: u8 = 0b1_0000;

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than a whole record remain.
    #[error("record truncated: {available} of {RECORD_LEN} bytes present")]
    Truncated {
        /// Bytes present.
        available: usize,
    },
    /// The length prefix is not the version-1 payload length.
    #[error("record length prefix {0} is not {PAYLOAD_LEN}")]
    BadLength(u32),
    /// The CRC32C does not match the length and payload.
    #[error("record CRC32C mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC stored in the record.
        stored: u32,
        /// CRC computed over the bytes read.
        computed: u32,
    },
    /// The flags byte holds unknown bits or not exactly one of write/delete/expire.
    #[error("record flags {0:#04x} are invalid")]
    BadFlags(u8),
}

/// Encodes one record (length, CRC32C, payload) onto `out`.
pub(crate) fn encode_record(lsn: Lsn, entry: &Entry, out: &mut Vec<u8>) {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[0..8].copy_from_slice(&lsn.0.to_le_bytes());
    payload[8..28].copy_from_slice(entry.digest.as_bytes());
    payload[28..32].copy_from_slice(&entry.namespace.to_le_bytes());
    payload[32..34].copy_from_slice(&entry.partition.to_le_bytes());
    payload[34..36].copy_from_slice(&entry.generation.to_le_bytes());
    payload[36..44].copy_from_slice(&entry.lut_ms.to_le_bytes());
    let op = match entry.op {
        Op::Write => FLAG_WRITE,
        Op::Delete => FLAG_DELETE,
        Op::Expire => FLAG_EXPIRE,
    };
    payload[44] = op
        | if entry.xdr_applied { FLAG_XDR_APPLIED } else { 0 }
        | if entry.copy { FLAG_COPY } else { 0 };
    payload[45] = entry.origin_site;
    let len = (PAYLOAD_LEN as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Decodes the record at the start of `bytes`; on success the record is `RECORD_LEN` bytes long.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<LoggedEntry, RecordError> {
    let Some(record) = bytes.get(..RECORD_LEN) else {
        return Err(RecordError::Truncated { available: bytes.len() });
    };
    let len = u32_at(record, 0);
    if len as usize != PAYLOAD_LEN {
        return Err(RecordError::BadLength(len));
    }
    let stored = u32_at(record, 4);
    let payload = &record[RECORD_HEADER_LEN..];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&record[0..4]), payload);
    if stored != computed {
        return Err(RecordError::BadCrc { stored, computed });
    }
    let flags = payload[44];
    let op = match flags & !(FLAG_XDR_APPLIED | FLAG_COPY) {
        FLAG_WRITE => Op::Write,
        FLAG_DELETE => Op::Delete,
        FLAG_EXPIRE => Op::Expire,
        _ => return Err(RecordError::BadFlags(flags)),
    };
    let mut digest = Digest::default();
    digest.0.copy_from_slice(&payload[8..28]);
    Ok(LoggedEntry {
        lsn: Lsn(u64_at(payload, 0)),
        entry: Entry {
            digest,
            namespace: u32_at(payload, 28),
            partition: u16_at(payload, 32),
            generation: u16_at(payload, 34),
            lut_ms: u64_at(payload, 36),
            op,
            xdr_applied: flags & FLAG_XDR_APPLIED != 0,
            origin_site: payload[45],
            copy: flags & FLAG_COPY != 0,
        },
    })
}

/// Little-endian integer readers over slices whose length the caller has already checked.
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(i: u64) -> Entry {
        let mut digest = [0u8; 20];
        digest[..8].copy_from_slice(&i.to_le_bytes());
        digest[19] = 0xd1;
        Entry {
            digest: Digest(digest),
            namespace: (i % 3) as u32,
            partition: (i % 4096) as u16,
            generation: i as u16,
            lut_ms: 1_700_000_000_000 + i,
            op: if i.is_multiple_of(5) { Op::Delete } else { Op::Write },
            xdr_applied: i.is_multiple_of(7),
            origin_site: (i % 4) as u8,
            copy: i.is_multiple_of(3),
        }
    }

    /// Locks the version-1 record bytes drawn in docs/digestlog-format.md.
    #[test]
    fn golden_record_bytes() {
        let entry = Entry {
            digest: Digest(core::array::from_fn(|i| i as u8 + 1)),
            namespace: 0x0102_0304,
            partition: 0x0a0b,
            generation: 0x0c0d,
            lut_ms: 0x0000_018b_cfe5_6800,
            op: Op::Write,
            xdr_applied: true,
            origin_site: 9,
            copy: false,
        };
        let mut out = Vec::new();
        encode_record(Lsn(0x1122_3344_5566_7788), &entry, &mut out);
        let expected: Vec<u8> = [
            &[0x2e, 0, 0, 0][..],                              // length 46
            &[0x60, 0x9f, 0x67, 0xa4],                         // crc32c
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], // lsn
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], // digest
            &[0x04, 0x03, 0x02, 0x01],                         // namespace
            &[0x0b, 0x0a],                                     // partition
            &[0x0d, 0x0c],                                     // generation
            &[0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0],       // lut_ms
            &[0b101],                                          // flags: write | xdr-applied
            &[9],                                              // origin site
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(out.len(), RECORD_LEN);
        let back = decode_record(&out).expect("decode golden record");
        assert_eq!(back.entry, entry);
        assert_eq!(back.lsn, Lsn(0x1122_3344_5566_7788));
    }

    #[test]
    fn round_trip_and_rejects() {
        for i in 0..50 {
            let mut out = Vec::new();
            encode_record(Lsn(i + 1), &sample(i), &mut out);
            let back = decode_record(&out).expect("decode");
            assert_eq!((back.lsn, back.entry), (Lsn(i + 1), sample(i)));
        }
        let mut out = Vec::new();
        encode_record(Lsn(1), &sample(1), &mut out);
        assert_eq!(decode_record(&out[..10]), Err(RecordError::Truncated { available: 10 }));
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert!(matches!(decode_record(&bad), Err(RecordError::BadCrc { .. })));
        let mut bad = out.clone();
        bad[0] = 45;
        assert_eq!(decode_record(&bad), Err(RecordError::BadLength(45)));
        // Flags with both write and delete, CRC recomputed so only the flags are wrong.
        let mut bad = out;
        bad[8 + 44] = 0b011;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bad[0..4]), &bad[8..]);
        bad[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_record(&bad), Err(RecordError::BadFlags(0b011)));
    }

    #[test]
    fn display_is_one_line() {
        let line = LoggedEntry { lsn: Lsn(7), entry: sample(7) }.to_string();
        assert!(line.starts_with("lsn=7 digest=0700000000000000"));
        assert!(line.ends_with("op=write xdr_applied=true origin=3"));
    }
}
