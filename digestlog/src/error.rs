//! Error types of the public API: opening (and recovery), appending, reading, cursors.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::checkpoint::{CheckpointError, InvalidCursorName, Overflow};
use crate::entry::Lsn;
use crate::segment::{HeaderError, ScanStop};

/// What is wrong at a corrupt place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The segment header is damaged.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A record is damaged, torn or out of sequence.
    #[error(transparent)]
    Record(#[from] ScanStop),
    /// A sealed segment's length does not match the LSN range its neighbours imply.
    #[error("segment is {actual} bytes, its LSN range implies {expected}")]
    Length {
        /// Bytes implied by the LSN range.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The header's first LSN differs from the one in the file name.
    #[error("header says first LSN {header}, file name says {name}")]
    NameMismatch {
        /// First LSN in the header.
        header: Lsn,
        /// First LSN in the name.
        name: Lsn,
    },
}

/// A corrupt place in the log: which segment, which byte offset, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Segment file name.
    pub segment: String,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// What is wrong there.
    pub kind: CorruptionKind,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} at offset {}: {}", self.segment, self.offset, self.kind)
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest log configuration: {0}")]
pub struct ConfigError(pub(crate) String);

/// Opening (and recovering) a log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "read segment 00000000000000000001.seg".
        context: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Corruption before the tail (open with `RecoveryMode::Salvage` to cut the log there).
    #[error("corrupt digest log: {0} (open with salvage to cut the log there)")]
    Corrupt(Corruption),
    /// A cursor checkpoint is damaged; it is never silently reset.
    #[error("corrupt cursor checkpoint {file}: {source}")]
    Checkpoint {
        /// Checkpoint file name.
        file: String,
        /// What is wrong.
        #[source]
        source: CheckpointError,
    },
    /// A cursor has committed past the end of the log (entries it consumed are gone).
    #[error("cursor {cursor} committed LSN {committed} but the log ends at {last}")]
    CursorAhead {
        /// Cursor name.
        cursor: String,
        /// Its committed LSN.
        committed: Lsn,
        /// Last LSN in the log.
        last: Lsn,
    },
}

impl OpenError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
        let context = context.into();
        move |source| OpenError::Io { context, source }
    }
}

/// An append was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// An earlier write or fsync failed; the writer acknowledges nothing more. Reopen the
    /// log (after fixing the disk) to continue.
    #[error("digest log writer is poisoned by an earlier I/O failure: {0}")]
    Poisoned(#[source] Arc<io::Error>),
    /// The log was closed.
    #[error("digest log is closed")]
    Closed,
}

/// Reading entries failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A flushed entry failed its check.
    #[error("corrupt digest log: {0}")]
    Corrupt(Corruption),
    /// The segment holding this LSN is gone (retention removed it without an overflow mark:
    /// a bug, reported rather than skipped).
    #[error("no segment holds LSN {0}")]
    Missing(Lsn),
    /// The log was closed and no more entries will come.
    #[error("digest log is closed")]
    Closed,
}

/// A cursor operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// The name is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidCursorName),
    /// Another handle for this cursor is open.
    #[error("cursor {0} is already open")]
    InUse(String),
    /// No such cursor.
    #[error("no cursor named {0}")]
    NotFound(String),
    /// Commit beyond what this cursor has read.
    #[error("cannot commit LSN {requested}: cursor has only read up to {read}")]
    NotRead {
        /// Last LSN handed out by this cursor.
        read: Lsn,
        /// Requested position.
        requested: Lsn,
    },
    /// The overflow being acknowledged grew meanwhile; handle `current` and acknowledge it.
    #[error("overflow changed before it was acknowledged")]
    OverflowChanged {
        /// The overflow as it is now (`None` if there is none).
        current: Option<Overflow>,
    },
    /// Writing the checkpoint failed; the position did not move.
    #[error("write cursor checkpoint {file}: {source}")]
    Io {
        /// Checkpoint file name.
        file: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}
