//! Cursor checkpoint files: a cursor's committed position and overflow state in 48 bytes
//! (magic, version, CRC32C), written crash-safely (temp file, fsync, rename, directory fsync).

use std::fmt;

use crate::entry::{self, Lsn};

/// Magic bytes at the start of every checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"FERRYDLC";
/// Current checkpoint format version.
pub const CHECKPOINT_VERSION: u16 = 1;
/// Bytes of a checkpoint file.
pub const CHECKPOINT_LEN: usize = 48;

const SUFFIX: &str = ".cursor";
const FLAG_OVERFLOWED: u16 = 1;

/// A validated cursor name: 1–64 bytes of `[A-Za-z0-9_.-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CursorName(String);

impl CursorName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<CursorName, InvalidCursorName> {
        let ok = (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok { Ok(CursorName(name.to_owned())) } else { Err(InvalidCursorName(name.to_owned())) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn file_name(&self) -> String {
        format!("{}{SUFFIX}", self.0)
    }

    pub(crate) fn from_file_name(file: &str) -> Option<CursorName> {
        CursorName::new(file.strip_suffix(SUFFIX)?).ok()
    }
}

impl fmt::Display for CursorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cursor name that is empty, too long or holds characters outside `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor name {0:?}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")]
pub struct InvalidCursorName(pub String);

/// Entries a cursor lost to the size cap before consuming them.
///
/// The consumer must recover them another way: scan the store for records whose LUT is at
/// least `min_lut_ms` (in the lost partitions), then acknowledge the overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// The cursor had committed every entry up to and including this LSN.
    pub committed: Lsn,
    /// Entries `committed + 1 ..= lost_through` were deleted unconsumed.
    pub lost_through: Lsn,
    /// No lost entry has a LUT below this (0 if unknown): the store scan's lower bound.
    pub min_lut_ms: u64,
}

impl Overflow {
    /// Folds a later overflow into this unacknowledged one.
    pub(crate) fn merge(self, later: Overflow) -> Overflow {
        Overflow {
            committed: self.committed.min(later.committed),
            lost_through: self.lost_through.max(later.lost_through),
            min_lut_ms: self.min_lut_ms.min(later.min_lut_ms),
        }
    }
}

/// The persisted state of one cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) committed: Lsn,
    pub(crate) overflow: Option<Overflow>,
}

/// Why a checkpoint file could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Not `CHECKPOINT_LEN` bytes.
    #[error("checkpoint is {0} bytes, expected {CHECKPOINT_LEN}")]
    BadLength(usize),
    /// Wrong magic.
    #[error("checkpoint magic mismatch")]
    BadMagic,
    /// A version this build cannot read.
    #[error("unsupported checkpoint version {0}")]
    BadVersion(u16),
    /// CRC32C mismatch.
    #[error("checkpoint CRC32C mismatch")]
    BadCrc,
    /// Unknown flag bits.
    #[error("checkpoint flags {0:#06x} are invalid")]
    BadFlags(u16),
    /// An LSN above `Lsn::MAX`, or an overflow range that ends before it starts.
    #[error("checkpoint LSNs are out of range")]
    BadLsn,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut b = [0u8; CHECKPOINT_LEN];
        b[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
        b[8..10].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        let (flags, o) = match self.overflow {
            Some(o) => (FLAG_OVERFLOWED, o),
            None => (0, Overflow { committed: Lsn::ZERO, lost_through: Lsn::ZERO, min_lut_ms: 0 }),
        };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.committed.0.to_le_bytes());
        b[20..28].copy_from_slice(&o.committed.0.to_le_bytes());
        b[28..36].copy_from_slice(&o.lost_through.0.to_le_bytes());
        b[36..44].copy_from_slice(&o.min_lut_ms.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Checkpoint, CheckpointError> {
        if b.len() != CHECKPOINT_LEN {
            return Err(CheckpointError::BadLength(b.len()));
        }
        if b[0..8] != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let version = entry::u16_at(b, 8);
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError::BadVersion(version));
        }
        if entry::u32_at(b, 44) != crc32c::crc32c(&b[0..44]) {
            return Err(CheckpointError::BadCrc);
        }
        let flags = entry::u16_at(b, 10);
        let overflow = match flags {
            0 => None,
            FLAG_OVERFLOWED => Some(Overflow {
                committed: Lsn(entry::u64_at(b, 20)),
                lost_through: Lsn(entry::u64_at(b, 28)),
                min_lut_ms: entry::u64_at(b, 36),
            }),
            other => return Err(CheckpointError::BadFlags(other)),
        };
        let committed = Lsn(entry::u64_at(b, 12));
        let in_range = committed <= Lsn::MAX
            && overflow.is_none_or(|o| o.committed <= o.lost_through && o.lost_through <= Lsn::MAX);
        if !in_range {
            return Err(CheckpointError::BadLsn);
        }
        Ok(Checkpoint { committed, overflow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Locks the version-1 checkpoint bytes drawn in docs/digestlog-format.md.
    #[test]
    fn golden_checkpoint_bytes() {
        let cp = Checkpoint {
            committed: Lsn(0x10),
            overflow: Some(Overflow {
                committed: Lsn(0x0c),
                lost_through: Lsn(0x0f),
                min_lut_ms: 0x20,
            }),
        };
        let b = cp.encode();
        let expected: Vec<u8> = [
            &b"FERRYDLC"[..],
            &[1, 0],                      // version
            &[1, 0],                      // flags: overflowed
            &[0x10, 0, 0, 0, 0, 0, 0, 0], // committed
            &[0x0c, 0, 0, 0, 0, 0, 0, 0], // overflow.committed
            &[0x0f, 0, 0, 0, 0, 0, 0, 0], // overflow.lost_through
            &[0x20, 0, 0, 0, 0, 0, 0, 0], // overflow.min_lut_ms
            &[0x11, 0xe0, 0x6a, 0xcb],    // crc32c of bytes 0..44
        ]
        .concat();
        assert_eq!(b[..], expected[..]);
        assert_eq!(Checkpoint::decode(&b), Ok(cp));
    }

    #[test]
    fn rejects_damage() {
        let cp = Checkpoint { committed: Lsn(3), overflow: None };
        let good = cp.encode();
        assert_eq!(Checkpoint::decode(&good), Ok(cp));
        assert_eq!(Checkpoint::decode(&good[..47]), Err(CheckpointError::BadLength(47)));
        let huge = Checkpoint { committed: Lsn(u64::MAX), overflow: None };
        assert_eq!(Checkpoint::decode(&huge.encode()), Err(CheckpointError::BadLsn));
        for i in 0..CHECKPOINT_LEN {
            let mut b = good;
            b[i] ^= 0x40;
            assert!(Checkpoint::decode(&b).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn names() {
        assert!(CursorName::new("dc-west_2.a").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(CursorName::new(bad).is_err(), "{bad:?} accepted");
        }
        let n = CursorName::new("west").expect("valid");
        assert_eq!(n.file_name(), "west.cursor");
        assert_eq!(CursorName::from_file_name("west.cursor"), Some(n));
        assert_eq!(CursorName::from_file_name("west.cursor.tmp"), None);
    }
}
