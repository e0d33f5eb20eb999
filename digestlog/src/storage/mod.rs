//! Storage backends: the small set of file operations the log needs, split so that *written*
//! bytes and *durable* bytes are distinct (a crash keeps only what was synced).
//!
//! [`FileStorage`] is the real thing; [`MemStorage`] simulates crashes at any byte offset for
//! tests. Both pass the conformance suite in `tests/conformance.rs`.

mod file;
mod mem;

use std::fmt::Debug;
use std::io;

pub use file::FileStorage;
pub use mem::{CrashTear, MemStorage};

/// A directory holding the log's files.
pub trait Storage: Debug + Send + Sync + 'static {
    /// Names of all files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates (or truncates) `name` for writing; not durable until [`Storage::sync_dir`].
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading and appending.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Removes `name`; not durable until [`Storage::sync_dir`].
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`; not durable until
    /// [`Storage::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// An open file.
pub trait StorageFile: Debug + Send + Sync {
    /// Current length in bytes (written, not necessarily durable).
    fn size(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends `data` at the end of the file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes every byte appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Shrinks the file to `len` bytes; durable after [`StorageFile::sync`].
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// Fills `buf` from `offset`, failing with `UnexpectedEof` if the file is shorter.
pub(crate) fn read_exact_at(file: &dyn StorageFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

/// Reads the whole file.
pub(crate) fn read_all(file: &dyn StorageFile) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.size()?).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0; len];
    read_exact_at(file, 0, &mut buf)?;
    Ok(buf)
}

/// Writes `data` as `name` crash-safely: temp file, fsync, rename, directory fsync.
pub(crate) fn write_atomic(storage: &dyn Storage, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}{TMP_SUFFIX}");
    let mut file = storage.create(&tmp)?;
    file.append(data)?;
    file.sync()?;
    drop(file);
    storage.rename(&tmp, name)?;
    storage.sync_dir()
}

/// Suffix of files being written by [`write_atomic`]; leftovers are removed on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";
