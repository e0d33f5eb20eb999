//! The writer thread: takes appends from the queue (in the LSN order the log assigned),
//! encodes records, and follows the [`GroupCommit`] policy to write, fsync and publish what is
//! acknowledged; rotates segments and runs retention. Any write or fsync failure poisons it
//! for good.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::entry::{self, Entry, Lsn, RECORD_LEN};
use crate::log::{Shared, create_segment, lock};
use crate::policy::{GroupCommit, Step};
use crate::recovery::SegmentMeta;
use crate::segment::{HEADER_LEN, NO_LUT};
use crate::storage::StorageFile;

/// One queued append.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) lsn: Lsn,
    pub(crate) entry: Entry,
    /// The append took a queue slot, handed back when the writer takes it.
    pub(crate) holds_slot: bool,
}

#[derive(Debug)]
pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Request>,
    flushed: watch::Sender<Lsn>,
    acknowledged: watch::Sender<Lsn>,
    gc: GroupCommit,
    /// The active segment.
    file: Box<dyn StorageFile>,
    /// Bytes in the active segment, counting `buf`.
    seg_len: u64,
    /// Smallest LUT in the active segment.
    seg_min_lut: u64,
    next_lsn: Lsn,
    /// Encoded records not yet written.
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Request>,
        flushed: watch::Sender<Lsn>,
        acknowledged: watch::Sender<Lsn>,
        file: Box<dyn StorageFile>,
        active: SegmentMeta,
        next_lsn: Lsn,
    ) -> Writer {
        Writer {
            gc: GroupCommit::new(shared.config.commit),
            shared,
            rx,
            flushed,
            acknowledged,
            file,
            seg_len: active.len,
            seg_min_lut: active.min_lut,
            next_lsn,
            buf: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                return self.poison(e);
            }
        };
        loop {
            let now = Instant::now();
            let result = match self.gc.next(now, !self.rx.is_empty()) {
                Step::Take => match self.rx.try_recv() {
                    Ok(req) => self.accept(req, now),
                    Err(_) => Ok(()),
                },
                Step::Wait { deadline } => {
                    let got = match deadline {
                        None => Some(self.rx.blocking_recv()),
                        Some(d) => rt.block_on(async {
                            tokio::time::timeout_at(d.into(), self.rx.recv()).await.ok()
                        }),
                    };
                    match got {
                        Some(Some(req)) => self.accept(req, Instant::now()),
                        Some(None) => break,
                        None => Ok(()),
                    }
                }
                Step::WriteAndAck => self.write().map(|()| self.ack_all()),
                Step::Sync => self.sync(),
            };
            if let Err(e) = result {
                return self.poison(e);
            }
        }
        // Queue closed: make everything durable before exiting.
        if let Err(e) = self.sync() {
            self.poison(e);
        }
    }

    fn accept(&mut self, req: Request, now: Instant) -> io::Result<()> {
        if req.holds_slot {
            self.shared.queue_slots.add_permits(1);
        }
        debug_assert_eq!(req.lsn, self.next_lsn, "appends arrive in LSN order");
        if self.seg_len + RECORD_LEN as u64 > self.shared.config.segment_size {
            self.rotate()?;
        }
        self.next_lsn = req.lsn.next();
        entry::encode_record(req.lsn, &req.entry, &mut self.buf);
        self.seg_len += RECORD_LEN as u64;
        self.seg_min_lut = self.seg_min_lut.min(req.entry.lut_ms);
        self.gc.on_append(now);
        self.shared.counters.appends.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.append(&self.buf)?;
            self.buf.clear();
            let written = self.next_lsn.0 - 1;
            self.shared.written.store(written, Ordering::Release);
        }
        self.gc.on_written();
        Ok(())
    }

    /// Writes, fsyncs, publishes the flushed LSN and acknowledges every waiting append.
    fn sync(&mut self) -> io::Result<()> {
        self.write()?;
        let flushed = Lsn(self.next_lsn.0 - 1);
        if *self.flushed.borrow() != flushed {
            self.file.sync()?;
            self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
            self.flushed.send_replace(flushed);
        }
        self.gc.on_synced();
        self.ack_all();
        Ok(())
    }

    /// Publishes everything written so far as acknowledged (called once it is written under
    /// the buffered policy, once it is durable under the sync one).
    fn ack_all(&mut self) {
        let written = Lsn(self.next_lsn.0 - 1);
        self.acknowledged.send_if_modified(|acked| std::mem::replace(acked, written) != written);
    }

    /// Seals the active segment (durably) and starts the next one, then runs retention.
    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        let storage = Arc::clone(&self.shared.storage);
        let file = create_segment(storage.as_ref(), self.next_lsn, self.seg_min_lut)?;
        let plan = {
            let mut state = lock(&self.shared.state);
            if let Some(active) = state.segments.last_mut() {
                active.len = self.seg_len;
                active.min_lut = self.seg_min_lut;
            }
            state.segments.push(SegmentMeta {
                first: self.next_lsn,
                len: HEADER_LEN as u64,
                min_lut: NO_LUT,
            });
            state.plan_retention(&self.shared.config)
        };
        self.file = file;
        self.seg_len = HEADER_LEN as u64;
        self.seg_min_lut = NO_LUT;
        let overflowed = plan.has_overflow();
        self.shared.execute(plan);
        if overflowed {
            // Wake tailing readers so they see their overflow.
            self.flushed.send_modify(|_| ());
        }
        Ok(())
    }

    /// Records the failure for good: appends refuse from now on, waiting ones wake to the
    /// poison, and whatever is still queued is discarded until the log is dropped (tailing
    /// readers keep waiting, as for a log that stopped growing).
    fn poison(mut self, e: io::Error) {
        tracing::error!(error = %e, "digest log writer poisoned");
        let _ = self.shared.poison.set(Arc::new(e));
        self.acknowledged.send_modify(|_| ());
        while let Some(req) = self.rx.blocking_recv() {
            if req.holds_slot {
                self.shared.queue_slots.add_permits(1);
            }
        }
    }
}
