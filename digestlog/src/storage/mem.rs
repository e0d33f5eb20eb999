//! An in-memory backend that models what survives a crash: per file, the bytes made durable
//! by `sync` (plus, optionally, a torn prefix of the rest); per directory, the names made
//! durable by `sync_dir`. It can also stop the "process" after a byte budget and fail syncs.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Storage, StorageFile};

/// How much of the unsynced data of each file a simulated crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashTear {
    /// At most this many unsynced bytes survive per file (a torn write); 0 keeps only
    /// synced bytes.
    pub keep_unsynced: u64,
}

/// Simulated storage for tests; cheap to clone (clones share state).
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    /// File contents by inode; never freed, so the durable directory can still name them.
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// The directory as the running process sees it.
    dir: BTreeMap<String, u64>,
    /// The directory as of the last `sync_dir`.
    durable_dir: BTreeMap<String, u64>,
    /// Bytes that may still be appended before the process "dies".
    budget: Option<u64>,
    /// The process has died: every operation fails.
    dead: bool,
    /// Every `sync` fails while set.
    fail_syncs: bool,
    /// Every `sync` takes this long — a slow disk.
    sync_delay: Duration,
    /// Bytes read so far, to check what recovery reads.
    bytes_read: u64,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable_len: usize,
}

impl MemState {
    fn alive(&self) -> io::Result<()> {
        if self.dead { Err(io::Error::other("simulated crash: process is dead")) } else { Ok(()) }
    }

    fn inode_of(&self, name: &str) -> io::Result<u64> {
        self.dir
            .get(name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }
}

impl MemStorage {
    /// An empty directory.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After `bytes` more appended bytes (the last append may land partially) the process
    /// "dies": that append and every later operation fail.
    pub fn set_write_budget(&self, bytes: u64) {
        self.lock().budget = Some(bytes);
    }

    /// Makes every later `sync` fail (or succeed again) — a failing disk.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// Makes every later `sync` take `delay` — a slow disk.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.lock().sync_delay = delay;
    }

    /// Total bytes read through this storage so far.
    pub fn bytes_read(&self) -> u64 {
        self.lock().bytes_read
    }

    /// Flips bits of `name` at `offset` (XOR with `mask`), durably — media corruption.
    pub fn corrupt(&self, name: &str, offset: usize, mask: u8) -> io::Result<()> {
        let mut s = self.lock();
        let id = s.inode_of(name)?;
        let inode = s.inodes.entry(id).or_default();
        let byte = inode
            .data
            .get_mut(offset)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past end"))?;
        *byte ^= mask;
        Ok(())
    }

    /// Current contents of `name` (written bytes, synced or not).
    pub fn contents(&self, name: &str) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let id = s.inode_of(name)?;
        Ok(s.inodes.get(&id).map(|i| i.data.clone()).unwrap_or_default())
    }

    /// What a machine crash leaves behind, as a fresh storage: the durable directory, and in
    /// each file its synced bytes plus up to `tear.keep_unsynced` of the bytes written after.
    pub fn crash(&self, tear: CrashTear) -> MemStorage {
        let s = self.lock();
        let mut next = MemState::default();
        for (name, id) in &s.durable_dir {
            let old = s.inodes.get(id).cloned().unwrap_or_default();
            let keep_extra = usize::try_from(tear.keep_unsynced).unwrap_or(usize::MAX);
            let len = old.durable_len.saturating_add(keep_extra).min(old.data.len());
            let inode = Inode { data: old.data[..len].to_vec(), durable_len: len };
            let nid = next.next_inode;
            next.next_inode += 1;
            next.inodes.insert(nid, inode);
            next.dir.insert(name.clone(), nid);
        }
        next.durable_dir = next.dir.clone();
        MemStorage { state: Arc::new(Mutex::new(next)) }
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.alive()?;
        Ok(s.dir.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.lock();
        s.alive()?;
        let id = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(id, Inode::default());
        s.dir.insert(name.to_owned(), id);
        Ok(Box::new(MemFile { state: Arc::clone(&self.state), id }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let s = self.lock();
        s.alive()?;
        let id = s.inode_of(name)?;
        Ok(Box::new(MemFile { state: Arc::clone(&self.state), id }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        s.inode_of(name)?;
        s.dir.remove(name);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        let id = s.inode_of(from)?;
        s.dir.remove(from);
        s.dir.insert(to.to_owned(), id);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.alive()?;
        s.durable_dir = s.dir.clone();
        Ok(())
    }
}

#[derive(Debug)]
struct MemFile {
    state: Arc<Mutex<MemState>>,
    id: u64,
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut MemState, u64) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.alive()?;
        f(&mut s, self.id)
    }
}

impl StorageFile for MemFile {
    fn size(&self) -> io::Result<u64> {
        self.with(|s, id| Ok(s.inodes.get(&id).map_or(0, |i| i.data.len() as u64)))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|s, id| {
            let data = s.inodes.get(&id).map(|i| i.data.as_slice()).unwrap_or(&[]);
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            s.bytes_read += n as u64;
            Ok(n)
        })
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.with(|s, id| {
            let allowed = match s.budget {
                Some(budget) => usize::try_from(budget).unwrap_or(usize::MAX).min(data.len()),
                None => data.len(),
            };
            if let Some(budget) = s.budget.as_mut() {
                *budget -= allowed as u64;
            }
            s.inodes.entry(id).or_default().data.extend_from_slice(&data[..allowed]);
            if allowed < data.len() {
                s.dead = true;
                return Err(io::Error::other("simulated crash during write"));
            }
            Ok(())
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        let delay = self.with(|s, _| Ok(s.sync_delay))?;
        std::thread::sleep(delay);
        self.with(|s, id| {
            if s.fail_syncs {
                return Err(io::Error::other("simulated fsync failure"));
            }
            let inode = s.inodes.entry(id).or_default();
            inode.durable_len = inode.data.len();
            Ok(())
        })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.with(|s, id| {
            let inode = s.inodes.entry(id).or_default();
            let len = usize::try_from(len).unwrap_or(usize::MAX).min(inode.data.len());
            inode.data.truncate(len);
            inode.durable_len = inode.durable_len.min(len);
            Ok(())
        })
    }
}
