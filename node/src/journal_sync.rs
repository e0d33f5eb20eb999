//! Group commit's fsync of fjall's journal, without fjall's journal lock held across it.
//!
//! `Database::persist(SyncData)` keeps fjall's journal writer locked for the whole fdatasync,
//! so every insert made meanwhile (on a runtime worker) blocks for the fsync's length: under
//! load the workers spend their time parked on that lock and groups stay small. Instead the
//! syncer has fjall hand its buffer to the OS (`persist(Buffer)`, the lock held for one
//! `write`) and fdatasyncs the journal files itself. They are `<n>.jnl` in the database
//! directory, the newest being written; a rotation seals the previous one (fjall 3.1 syncs it
//! as it rotates, and syncing the newest two covers a rotation whose sync is deferred).
//! Should the layout differ (no journal found), it falls back to fjall's own persist; a unit
//! test pins the layout.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use fjall::{Database, PersistMode};

/// Journal files synced per group: the active one and the one before it.
const NEWEST: usize = 2;

/// The syncer's handles on the newest journal files.
#[derive(Debug)]
pub(crate) struct JournalSync {
    dir: PathBuf,
    /// Journal number and an open handle, newest first.
    open: Vec<(u64, File)>,
}

impl JournalSync {
    pub(crate) fn new(dir: &Path) -> JournalSync {
        JournalSync { dir: dir.to_path_buf(), open: Vec::new() }
    }

    /// Makes everything journaled before the call durable.
    pub(crate) fn sync(&mut self, db: &Database) -> Result<(), String> {
        db.persist(PersistMode::Buffer).map_err(|e| e.to_string())?;
        let newest = newest_journals(&self.dir).map_err(|e| format!("list journals: {e}"))?;
        if newest.is_empty() {
            return db.persist(PersistMode::SyncData).map_err(|e| e.to_string());
        }
        if self.open.iter().map(|(n, _)| *n).ne(newest.iter().copied()) {
            self.open = newest
                .into_iter()
                .map(|n| File::open(journal_path(&self.dir, n)).map(|file| (n, file)))
                .collect::<io::Result<_>>()
                .map_err(|e| format!("open journal: {e}"))?;
        }
        for (n, file) in &self.open {
            file.sync_data().map_err(|e| format!("fdatasync journal {n}: {e}"))?;
        }
        Ok(())
    }
}

fn journal_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n}.jnl"))
}

/// The numbers of the newest journal files in `dir`, newest first.
fn newest_journals(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name.to_str().and_then(|n| n.strip_suffix(".jnl")?.parse::<u64>().ok());
        numbers.extend(number);
    }
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers.truncate(NEWEST);
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::KeyspaceCreateOptions;

    #[test]
    fn fjall_keeps_its_journal_where_the_syncer_looks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::builder(dir.path()).manual_journal_persist(true).open().expect("open");
        let keyspace = db.keyspace("k", KeyspaceCreateOptions::default).expect("keyspace");
        keyspace.insert("key", "value").expect("insert");
        let mut sync = JournalSync::new(dir.path());
        sync.sync(&db).expect("sync");
        assert!(!sync.open.is_empty(), "no <n>.jnl journal in fjall's directory");
        let active = journal_path(dir.path(), sync.open[0].0);
        let len = std::fs::metadata(active).expect("journal").len();
        assert!(len > 0, "the buffered insert reached the journal file");
    }
}
