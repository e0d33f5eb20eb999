//! Per-link shipping counters and the receiver's counters, under Aerospike's XDR stat names,
//! and the registry the info protocol (`get-stats:context=xdr;dc=NAME`) reads them from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::conflict::VersionStamp;
use crate::link::{LinkCommand, LinkControl, LinkState};

/// Counters of one link's shipper. Gauges (`lag`, `in_queue`, …) are set by the shipper.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Milliseconds: now − LUT of the oldest unacknowledged change (see [`crate::link`]).
    pub lag: AtomicU64,
    /// Logged changes not yet acknowledged by the destination.
    pub in_queue: AtomicU64,
    /// Records in batches sent and not yet acknowledged.
    pub in_progress: AtomicU64,
    /// Records the destination acknowledged (applied or already current there).
    pub success: AtomicU64,
    /// Records given up: the destination refused them permanently.
    pub abandoned: AtomicU64,
    /// Logged changes whose record was gone locally (no tombstone) at ship time.
    pub not_found: AtomicU64,
    /// Changes skipped by the link's filters or loop prevention.
    pub filtered_out: AtomicU64,
    /// Retries after a lost connection or timeout.
    pub retry_conn_reset: AtomicU64,
    /// Retries after the destination answered with a retryable error.
    pub retry_dest: AtomicU64,
    /// Overflow recoveries and rewinds run.
    pub recoveries: AtomicU64,
    /// Drains completed (everything logged before the request acknowledged).
    pub drains: AtomicU64,
    /// Changes folded into a later change of the same key.
    pub hot_keys: AtomicU64,
    /// Milliseconds from send to acknowledgement of the last batch.
    pub latency_ms: AtomicU64,
    /// Records acknowledged per second, over the last second.
    pub throughput: AtomicU64,
    /// Raw bytes per 1000 bytes on the wire (1000 = no gain).
    pub compression_ratio_milli: AtomicU64,
    /// Payload bytes sent, after compression.
    pub bytes_shipped: AtomicU64,
    /// Payload bytes before compression.
    pub bytes_raw: AtomicU64,
    /// Entries read from the digest log.
    pub entries_read: AtomicU64,
    /// Seconds until the backlog would overflow the digest log at current rates; `u64::MAX`
    /// while it is not growing (shown as `unbounded`).
    pub log_time_left: AtomicU64,
    state: Mutex<Option<LinkState>>,
}

/// One counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One gauge.
pub fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}

impl LinkStats {
    pub fn set_state(&self, state: LinkState) {
        if let Ok(mut slot) = self.state.lock() {
            *slot = Some(state);
        }
    }

    pub fn state(&self) -> Option<LinkState> {
        self.state.lock().ok().and_then(|s| *s)
    }

    /// `name=value` pairs in Aerospike's order and naming.
    pub fn snapshot(&self) -> Vec<(&'static str, String)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let ratio = self.compression_ratio_milli.load(Ordering::Relaxed);
        vec![
            ("state", self.state().map_or_else(|| "starting".to_owned(), |s| s.to_string())),
            ("lag", get(&self.lag)),
            ("in_queue", get(&self.in_queue)),
            ("in_progress", get(&self.in_progress)),
            ("success", get(&self.success)),
            ("abandoned", get(&self.abandoned)),
            ("not_found", get(&self.not_found)),
            ("filtered_out", get(&self.filtered_out)),
            ("retry_conn_reset", get(&self.retry_conn_reset)),
            ("retry_dest", get(&self.retry_dest)),
            ("recoveries", get(&self.recoveries)),
            ("drains", get(&self.drains)),
            ("hot_keys", get(&self.hot_keys)),
            ("latency_ms", get(&self.latency_ms)),
            ("throughput", get(&self.throughput)),
            ("compression_ratio", format!("{}.{:03}", ratio / 1000, ratio % 1000)),
            ("bytes_shipped", get(&self.bytes_shipped)),
            ("bytes_raw", get(&self.bytes_raw)),
            ("entries_read", get(&self.entries_read)),
            (
                "log_time_left",
                match self.log_time_left.load(Ordering::Relaxed) {
                    u64::MAX => "unbounded".to_owned(),
                    seconds => seconds.to_string(),
                },
            ),
        ]
    }
}

/// Counters of the receiving side of a node.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Records stored.
    pub applied: AtomicU64,
    /// Records that lost their conflict against the local version.
    pub lost_conflict: AtomicU64,
    /// Batches refused: malformed, from a site without a link, or for an unknown namespace.
    pub rejected: AtomicU64,
    /// Records that could not be applied (e.g. no owner for their partition).
    pub failed: AtomicU64,
    /// Records another node of this site forwarded here because this node owns them (already
    /// counted in `applied`/`lost_conflict` at the node that received them over the link).
    pub forwarded_in: AtomicU64,
    /// Batches received.
    pub batches: AtomicU64,
}

impl ReceiverStats {
    pub fn snapshot(&self) -> Vec<(&'static str, String)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        vec![
            ("applied", get(&self.applied)),
            ("lost_conflict", get(&self.lost_conflict)),
            ("rejected", get(&self.rejected)),
            ("failed", get(&self.failed)),
            ("forwarded_in", get(&self.forwarded_in)),
            ("batches", get(&self.batches)),
        ]
    }
}

/// A shipped version that lost against the local one at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub namespace: String,
    pub digest: [u8; 20],
    /// The version kept.
    pub local: VersionStamp,
    /// The version refused.
    pub incoming: VersionStamp,
    /// When it was refused, ms since the Unix epoch.
    pub at_ms: u64,
}

impl std::fmt::Display for Conflict {
    /// `ns,digest-hex,at_ms,kept gen/lut/origin,lost gen/lut/origin`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest: String = self.digest.iter().map(|b| format!("{b:02x}")).collect();
        let stamp =
            |s: &VersionStamp| format!("{}/{}/{}", s.generation, s.last_update_ms, s.origin_site);
        write!(
            f,
            "{},{digest},{},{},{}",
            self.namespace,
            self.at_ms,
            stamp(&self.local),
            stamp(&self.incoming)
        )
    }
}

/// Conflicts kept per node; older ones are dropped (and still counted in `lost_conflict`).
pub const CONFLICT_LOG_LEN: usize = 1_000;

/// Every link's stats and operator controls on a node, by destination site (`dc`), the
/// receiver's stats and its bounded log of lost conflicts.
#[derive(Debug, Default)]
pub struct Registry {
    links: Mutex<BTreeMap<String, Arc<LinkStats>>>,
    controls: Mutex<BTreeMap<String, watch::Sender<LinkControl>>>,
    conflicts: Mutex<VecDeque<Conflict>>,
    pub receiver: ReceiverStats,
}

impl Registry {
    /// The stats of link `dc`, created on first use.
    pub fn link(&self, dc: &str) -> Arc<LinkStats> {
        match self.links.lock() {
            Ok(mut links) => links.entry(dc.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// The control channel of link `dc`, created on first use (the shipper subscribes).
    pub fn control(&self, dc: &str) -> watch::Receiver<LinkControl> {
        match self.controls.lock() {
            Ok(mut controls) => controls
                .entry(dc.to_owned())
                .or_insert_with(|| watch::channel(LinkControl::default()).0)
                .subscribe(),
            Err(_) => watch::channel(LinkControl::default()).1,
        }
    }

    /// Sends `command` to link `dc`; false if no such link runs here.
    pub fn command(&self, dc: &str, command: LinkCommand) -> bool {
        let Ok(controls) = self.controls.lock() else { return false };
        match controls.get(dc) {
            Some(sender) => {
                sender.send_modify(|control| command.apply(control));
                true
            }
            None => false,
        }
    }

    /// Records a lost conflict, dropping the oldest beyond [`CONFLICT_LOG_LEN`].
    pub fn record_conflict(&self, conflict: Conflict) {
        if let Ok(mut log) = self.conflicts.lock() {
            if log.len() == CONFLICT_LOG_LEN {
                log.pop_front();
            }
            log.push_back(conflict);
        }
    }

    /// The most recent `limit` conflicts, oldest first.
    pub fn conflicts(&self, limit: usize) -> Vec<Conflict> {
        let Ok(log) = self.conflicts.lock() else { return Vec::new() };
        log.iter().skip(log.len().saturating_sub(limit)).cloned().collect()
    }

    /// The names of the links with stats.
    pub fn dcs(&self) -> Vec<String> {
        self.links.lock().map(|l| l.keys().cloned().collect()).unwrap_or_default()
    }

    /// The stats of link `dc`, if it exists.
    pub fn get(&self, dc: &str) -> Option<Arc<LinkStats>> {
        self.links.lock().ok()?.get(dc).cloned()
    }
}

/// Formats pairs as the info protocol does: `a=1;b=2`.
pub fn info_format(pairs: &[(&'static str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}
