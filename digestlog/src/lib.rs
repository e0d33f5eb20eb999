//! The digest log: a durable, segmented record of every changed record's digest.
//!
//! Every write on a node appends an [`Entry`]; each DR link reads the log through its own
//! named, persisted [`Cursor`]. See `docs/digestlog.md` for the design and how it avoids each
//! failure of Aerospike's old digest log, and `docs/digestlog-format.md` for the bytes.
//!
//! Features:
//! - **Group commit** on a dedicated writer thread: concurrent [`DigestLog::append`]s share
//!   one fdatasync; an append resolves once its entry is durable ([`CommitPolicy`], with an
//!   explicit [`Durability::Buffered`] mode). Written and flushed LSNs are kept apart and
//!   readers only see flushed entries. A failed write or fsync poisons the writer.
//! - **Segments** of bounded size named by first LSN; records length-prefixed and CRC32C'd.
//! - **Cursors** with crash-safe checkpoints; **retention** deletes a segment once every
//!   cursor passed it; a **size cap** marks cursors left behind as overflowed (with an LSN and
//!   LUT watermark) before deleting anything — never silently.
//! - **Recovery** truncates a torn tail and reports it; corruption before the tail is an
//!   error naming segment and offset ([`RecoveryMode::Salvage`] cuts there instead). Open
//!   reads only headers and the last segment.
//! - [`Storage`] backends: [`FileStorage`] and the crash-simulating [`MemStorage`].
//!
//! Non-goals: storing record data (the shipper reads the current record at ship time), and
//! ordering across nodes.

mod checkpoint;
mod cursor;
mod digest;
mod entry;
mod error;
mod log;
mod policy;
mod read;
mod recovery;
mod segment;
mod storage;
mod tools;
mod writer;

pub use checkpoint::{
    CHECKPOINT_LEN, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, CheckpointError, CursorName,
    InvalidCursorName, Overflow,
};
pub use cursor::{Batch, Cursor, CursorInfo, CursorStart};
pub use digest::{Digest, DigestHex, DigestLength};
pub use entry::{Entry, LoggedEntry, Lsn, Op, RECORD_LEN, RecordError, namespace_id};
pub use error::{
    AppendError, ConfigError, Corruption, CorruptionKind, CursorError, OpenError, ReadError,
};
pub use log::{Config, DigestLog, Metrics};
pub use policy::{CommitPolicy, Durability};
pub use recovery::{Cut, RecoveryMode, RecoveryReport};
pub use segment::{
    DecodedSegment, FORMAT_VERSION, HEADER_LEN, HeaderError, SEGMENT_MAGIC, ScanStop,
    decode_segment,
};
pub use storage::{CrashTear, FileStorage, MemStorage, Storage, StorageFile};
pub use tools::{DumpError, Inspection, SegmentInfo, dump, inspect};

/// Opens the log in directory `dir` on the real file system (locking it against a second
/// writer). Shorthand for [`DigestLog::open`] with a [`FileStorage`].
pub fn open_dir(
    dir: impl AsRef<std::path::Path>,
    config: Config,
) -> Result<(DigestLog, RecoveryReport), OpenError> {
    let storage = FileStorage::open(dir.as_ref())
        .map_err(OpenError::io(format!("open log directory {}", dir.as_ref().display())))?;
    DigestLog::open(std::sync::Arc::new(storage), config)
}
