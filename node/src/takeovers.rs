//! Takeovers this node has still to re-ship, kept on disk until each link has shipped them.
//!
//! When a node becomes master of partitions another node mastered, its links re-ship those
//! partitions from the previous master's watermark (see `membership`): the changes it logged
//! as copies before then were passed over by its shippers. That obligation lived only in
//! memory; a node that restarts in the middle of it would leave those changes unshipped. The
//! journal is written (fsynced, then renamed into place) before a takeover is queued, read
//! again at start to queue every takeover not known shipped, and trimmed once a link's
//! published watermark accounts for a takeover and has passed the moment it was queued.
//! Re-shipping more than needed is harmless: apply is idempotent.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ferry_xdr::stats::{Registry, Takeover};
use serde::{Deserialize, Serialize};

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
    #[error("{path} is not a takeover journal (remove it to re-ship nothing): {source}")]
    Corrupt { path: String, source: serde_json::Error },
}

/// One takeover of one partition for one link, not yet known shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    dc: String,
    namespace: String,
    partition: u16,
    since_lut_ms: u64,
    /// When it was queued (this node's clock): shipped once the link's watermark passes it.
    queued_at_ms: u64,
    /// Its number in this run's queue of the link (0: not queued yet in this run).
    #[serde(skip)]
    seq: u64,
}

/// The journal of a node's pending takeovers.
#[derive(Debug)]
pub struct TakeoverJournal {
    path: PathBuf,
    pending: Mutex<Vec<Pending>>,
}

impl TakeoverJournal {
    /// Reads the journal at `path` (none yet: nothing pending).
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let display = path.display().to_string();
        let pending: Vec<Pending> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| JournalError::Corrupt { path: display.clone(), source })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(JournalError::Io { action: "read", path: display, source }),
        };
        Ok(Self { path: path.to_owned(), pending: Mutex::new(pending) })
    }

    /// Queues every takeover of link `dc` the journal holds for its shipper, which starts.
    pub fn requeue(&self, registry: &Registry, dc: &str) {
        let mut pending = self.pending();
        let takeovers: Vec<Takeover> =
            pending.iter().filter(|p| p.dc == dc).map(takeover).collect();
        if takeovers.is_empty() {
            return;
        }
        tracing::info!(dc, partitions = takeovers.len(), "re-shipping takeovers not yet shipped");
        let seq = registry.link(dc).requeue_takeovers(takeovers);
        pending.iter_mut().filter(|p| p.dc == dc).for_each(|p| p.seq = seq);
    }

    /// Records `takeovers` for link `dc` durably, then queues them on its shipper (queued even
    /// when the journal could not be written: only a restart would lose them then). Returns
    /// whether the shipper runs, and whether they were journaled.
    pub fn take_over(
        &self,
        registry: &Registry,
        dc: &str,
        takeovers: Vec<Takeover>,
        now_ms: u64,
    ) -> (bool, Result<(), JournalError>) {
        let mut pending = self.pending();
        let first = pending.len();
        pending.extend(takeovers.iter().map(|t| Pending {
            dc: dc.to_owned(),
            namespace: t.namespace.clone(),
            partition: t.partition,
            since_lut_ms: t.since_lut_ms,
            queued_at_ms: now_ms,
            seq: 0,
        }));
        let journaled = self.write(&pending);
        let (seq, running) = registry.take_over(dc, takeovers);
        pending[first..].iter_mut().for_each(|p| p.seq = seq);
        (running, journaled)
    }

    /// Drops the takeovers every link has shipped; returns how many are left.
    pub fn trim(&self, registry: &Registry) -> Result<usize, JournalError> {
        let mut pending = self.pending();
        let before = pending.len();
        pending.retain(|p| {
            let shipped = registry.get(&p.dc).map(|link| link.shipped()).unwrap_or_default();
            !(p.seq > 0 && shipped.covers >= p.seq && shipped.through >= p.queued_at_ms)
        });
        if pending.len() != before {
            self.write(&pending)?;
        }
        Ok(pending.len())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the file: written and fsynced beside it, renamed over it, directory fsynced.
    fn write(&self, pending: &[Pending]) -> Result<(), JournalError> {
        let io = |action, source| JournalError::Io {
            action,
            path: self.path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec(pending).map_err(|e| io("encode", e.into()))?;
        let temporary = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(|e| io("create", e))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| io("write", e))?;
        std::fs::rename(&temporary, &self.path).map_err(|e| io("rename", e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", e))?;
        }
        Ok(())
    }
}

fn takeover(pending: &Pending) -> Takeover {
    Takeover {
        namespace: pending.namespace.clone(),
        partition: pending.partition,
        since_lut_ms: pending.since_lut_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(partition: u16) -> Takeover {
        Takeover { namespace: "test".into(), partition, since_lut_ms: 1_000 }
    }

    #[test]
    fn takeovers_survive_restarts_until_the_link_shipped_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("takeovers.json");
        let registry = Registry::default();
        let journal = TakeoverJournal::open(&path).expect("open");
        let (_, journaled) = journal.take_over(&registry, "b", vec![taken(5), taken(9)], 10_000);
        journaled.expect("journaled");
        let link = registry.get("b").expect("link");
        link.set_shipped_through(20_000);
        assert_eq!(journal.trim(&registry).expect("trim"), 2, "the shipper has not taken them");
        assert_eq!(link.take_takeovers(), vec![taken(5), taken(9)]);

        // The shipper stops having taken them: the next one is queued them again, and its
        // watermark, not the stopped one's, decides.
        link.set_shipped_through(9_000);
        journal.requeue(&registry, "b");
        link.set_shipped_through(20_000);
        assert_eq!(journal.trim(&registry).expect("trim"), 2, "the new shipper did not take them");

        // A node restart: the queue is gone, the journal queues both for the new shipper.
        let registry = Registry::default();
        let journal = TakeoverJournal::open(&path).expect("reopen");
        journal.requeue(&registry, "b");
        let link = registry.get("b").expect("link");
        assert_eq!(link.take_takeovers(), vec![taken(5), taken(9)]);
        link.set_shipped_through(9_999);
        assert_eq!(journal.trim(&registry).expect("trim"), 2, "not shipped past the takeover");
        link.set_shipped_through(10_000);
        assert_eq!(journal.trim(&registry).expect("trim"), 0);
        let registry = Registry::default();
        TakeoverJournal::open(&path).expect("reopen").requeue(&registry, "b");
        assert!(registry.get("b").is_none(), "nothing left to queue");
    }

    #[test]
    fn a_corrupt_journal_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("takeovers.json");
        std::fs::write(&path, b"[{").expect("write");
        let error = TakeoverJournal::open(&path).expect_err("corrupt");
        assert!(error.to_string().contains("takeovers.json is not a takeover journal"), "{error}");
    }
}
