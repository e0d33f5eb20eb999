//! Per-link shipping counters and the receiver's counters, under Aerospike's XDR stat names,
//! and the registry the info protocol (`get-stats:context=xdr;dc=NAME`) reads them from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_digestlog::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::conflict::VersionStamp;
use crate::link::{LinkCommand, LinkControl, LinkState};

/// How a stat reads in the info protocol.
#[derive(Debug, Clone, Copy)]
enum Shown {
    /// A plain number.
    Number,
    /// Thousandths shown as a decimal (`1.234`).
    Milli,
    /// A number, with `u64::MAX` shown as `unbounded`.
    Bounded,
}

impl Shown {
    fn show(self, value: u64) -> String {
        match self {
            Shown::Number => value.to_string(),
            Shown::Milli => format!("{}.{:03}", value / 1000, value % 1000),
            Shown::Bounded if value == u64::MAX => "unbounded".to_owned(),
            Shown::Bounded => value.to_string(),
        }
    }

    fn read(self, name: &str, fields: &BTreeMap<&str, &str>) -> Result<u64, StatsError> {
        let text = *fields.get(name).ok_or(StatsError::Missing(name.to_owned()))?;
        let bad = || StatsError::Bad { name: name.to_owned(), value: text.to_owned() };
        match self {
            Shown::Bounded if text == "unbounded" => Ok(u64::MAX),
            Shown::Number | Shown::Bounded => text.parse().map_err(|_| bad()),
            Shown::Milli => {
                let (whole, fraction) = text.split_once('.').ok_or_else(bad)?;
                let whole: u64 = whole.parse().map_err(|_| bad())?;
                let fraction: u64 = fraction.parse().map_err(|_| bad())?;
                (fraction < 1000 && text.len() - whole.to_string().len() == 4)
                    .then(|| whole.saturating_mul(1000).saturating_add(fraction))
                    .ok_or_else(bad)
            }
        }
    }
}

/// An info answer that is not the stats it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    #[error("the stats have no '{0}'")]
    Missing(String),
    #[error("stat '{name}' is '{value}', not what it should be")]
    Bad { name: String, value: String },
    #[error("the node answered an error: {0}")]
    Refused(String),
}

/// An info answer of the form `a=1;b=2` as a map; an error answer is refused with its
/// message.
pub fn info_fields(text: &str) -> Result<BTreeMap<&str, &str>, StatsError> {
    if let Some(message) = info_error(text) {
        return Err(StatsError::Refused(message.to_owned()));
    }
    Ok(text.split(';').filter_map(|pair| pair.split_once('=')).collect())
}

/// The message of an info error answer: `ERROR:<code>:<message>` (Aerospike 7.2 and later),
/// `ERROR::<message>` or `ERROR:<message>` (older servers); `None` for any other answer.
pub fn info_error(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("ERROR:")?;
    Some(match rest.split_once(':') {
        Some((code, message)) if code.bytes().all(|b| b.is_ascii_digit()) => message,
        _ => rest,
    })
}

/// Declares a family of stats once: the live counters (atomics the I/O shells bump), the
/// snapshot they read into (serde for JSON), and its info-protocol form in both directions.
macro_rules! stats_family {
    (
        $(#[$live_doc:meta])* $live:ident $({ $( $(#[$extra_doc:meta])* $extra:ident: $extra_ty:ty, )* })?
        => $(#[$snap_doc:meta])* $snap:ident {
            $( $(#[$doc:meta])* $name:ident: $shown:ident, )*
        }
    ) => {
        $(#[$live_doc])*
        #[derive(Debug, Default)]
        pub struct $live {
            $( $(#[$doc])* pub $name: AtomicU64, )*
            $( $( $(#[$extra_doc])* $extra: $extra_ty, )* )?
        }

        $(#[$snap_doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $snap {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl $live {
            /// The counters now.
            pub fn counters(&self) -> $snap {
                $snap { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl $snap {
            /// `name=value` pairs in the info protocol's form.
            fn info_pairs(&self) -> Vec<String> {
                vec![$( format!("{}={}", stringify!($name), Shown::$shown.show(self.$name)), )*]
            }

            /// Reads the pairs [`Self::info_pairs`] wrote.
            fn from_fields(fields: &BTreeMap<&str, &str>) -> Result<$snap, StatsError> {
                Ok($snap { $( $name: Shown::$shown.read(stringify!($name), fields)?, )* })
            }
        }
    };
}

stats_family! {
    /// Counters and gauges of one link's shipper, under Aerospike's XDR stat names. Gauges
    /// (`lag`, `in_queue`, …) are set by the shipper.
    LinkStats {
        /// Published by the shipper; `None` until it starts.
        state: Mutex<Option<LinkState>>,
        /// Why the shipper last stopped on its own; cleared once its restart reaches the
        /// destination.
        error: Mutex<Option<String>>,
        /// What belongs to each namespace of the link, by name.
        namespaces: Mutex<BTreeMap<String, NamespaceStats>>,
        /// Partitions this node took over and the shipper has not been told of yet.
        takeovers: Mutex<TakeoverQueue>,
        /// Every change with an older LUT is acknowledged at the destination (0: unknown),
        /// re-shipped ones included — of every takeover queued up to `covers`.
        shipped: Mutex<Shipped>,
    } => /// [`LinkStats`] read at one instant.
    LinkCounters {
        /// Milliseconds: now − LUT of the oldest unacknowledged change (see [`crate::link`]).
        lag: Number,
        /// Changes not yet applied at the destination: logged and not acknowledged, plus
        /// `parked`.
        in_queue: Number,
        /// Records in batches sent and not yet acknowledged.
        in_progress: Number,
        /// Records the destination acknowledged (applied or already current there).
        success: Number,
        /// Records parked now: the destination refused them for good; listed by
        /// `ferry link parked`, shipped again by `--retry`, dropped by `--discard`.
        parked: Number,
        /// Parked records an operator discarded.
        discarded: Number,
        /// Logged changes whose record was gone locally (no tombstone) at ship time.
        not_found: Number,
        /// Changes skipped by the link's filters or loop prevention.
        filtered_out: Number,
        /// Retries after a lost connection or timeout.
        retry_conn_reset: Number,
        /// Retries after the destination answered with a retryable error.
        retry_dest: Number,
        /// Overflow recoveries and rewinds run.
        recoveries: Number,
        /// Drains completed (everything logged before the request acknowledged).
        drains: Number,
        /// Times the shipper stopped on its own and was restarted.
        restarts: Number,
        /// Changes folded into a later change of the same key.
        hot_keys: Number,
        /// Milliseconds from send to acknowledgement of the last batch.
        latency_ms: Number,
        /// Records acknowledged per second, over the last second.
        throughput: Number,
        /// Raw bytes per 1000 bytes on the wire (1000 = no gain); info shows `1.000`.
        compression_ratio: Milli,
        /// Payload bytes sent, after compression.
        bytes_shipped: Number,
        /// Payload bytes before compression.
        bytes_raw: Number,
        /// Entries read from the digest log.
        entries_read: Number,
        /// Seconds until the backlog would overflow the digest log at current rates; `u64::MAX`
        /// (info: `unbounded`) while it is not growing.
        log_time_left: Bounded,
    }
}

stats_family! {
    /// Counters of the receiving side of a node.
    ReceiverStats => /// [`ReceiverStats`] read at one instant.
    ReceiverCounters {
        /// Records stored.
        applied: Number,
        /// Records that lost their conflict against the local version.
        lost_conflict: Number,
        /// Batches refused: malformed, from a site without a link, or for an unknown namespace.
        rejected: Number,
        /// Records refused for good (they break a limit of the namespace here); their sender
        /// parks them.
        refused: Number,
        /// Records another node of this site forwarded here because this node owns them
        /// (already counted in `applied`/`lost_conflict` at the node that received them over
        /// the link).
        forwarded_in: Number,
        /// Batches received.
        batches: Number,
    }
}

/// One counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// One gauge.
pub fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}

/// One link's stats as `get-stats:context=xdr;dc=NAME` answers them and the admin API shows
/// them: `state` (`starting` until the shipper published one), then the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    /// `None` while the shipper starts (shown as `starting`).
    #[serde(with = "state_or_starting")]
    pub state: Option<LinkState>,
    #[serde(flatten)]
    pub counters: LinkCounters,
    /// Why the shipper last stopped on its own, until its restart reaches the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LinkSnapshot {
    /// The state's name: `active`, `paused`, …, or `starting` before the shipper published one.
    pub fn state_name(&self) -> String {
        state_or_starting::name(self.state)
    }

    /// The info protocol's form: `state=active;lag=0;…`, then `error=…` when there is one
    /// (its `;` and `=` shown as `,` and `:`).
    pub fn to_info(&self) -> String {
        let state = format!("state={}", self.state_name());
        let error =
            self.error.as_ref().map(|e| format!("error={}", e.replace(';', ",").replace('=', ":")));
        std::iter::once(state)
            .chain(self.counters.info_pairs())
            .chain(error)
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Reads an info answer written by [`LinkSnapshot::to_info`].
    pub fn from_info(text: &str) -> Result<LinkSnapshot, StatsError> {
        let fields = info_fields(text)?;
        let state = fields.get("state").ok_or(StatsError::Missing("state".to_owned()))?;
        let state = state_or_starting::parse(state).ok_or_else(|| StatsError::Bad {
            name: "state".to_owned(),
            value: (*state).to_owned(),
        })?;
        let error = fields.get("error").map(|e| (*e).to_owned());
        Ok(LinkSnapshot { state, counters: LinkCounters::from_fields(&fields)?, error })
    }
}

/// The receiver's stats and the links that ship from the node, as `get-stats:context=xdr`
/// answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverSnapshot {
    #[serde(flatten)]
    pub counters: ReceiverCounters,
    /// The destinations of the links with stats on this node.
    pub dcs: Vec<String>,
}

impl ReceiverSnapshot {
    /// The info protocol's form: `applied=…;…;dcs=a,b`.
    pub fn to_info(&self) -> String {
        let mut pairs = self.counters.info_pairs();
        pairs.push(format!("dcs={}", self.dcs.join(",")));
        pairs.join(";")
    }

    /// Reads an info answer written by [`ReceiverSnapshot::to_info`].
    pub fn from_info(text: &str) -> Result<ReceiverSnapshot, StatsError> {
        let fields = info_fields(text)?;
        let dcs = fields.get("dcs").ok_or(StatsError::Missing("dcs".to_owned()))?;
        let dcs = dcs.split(',').filter(|dc| !dc.is_empty()).map(str::to_owned).collect();
        Ok(ReceiverSnapshot { counters: ReceiverCounters::from_fields(&fields)?, dcs })
    }
}

/// A partition this node now masters, and the LUT through which its previous master had
/// shipped this link (0: unknown, ship all of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    pub namespace: String,
    pub partition: u16,
    pub since_lut_ms: u64,
}

/// Takeovers queued for a link's shipper, numbered.
#[derive(Debug, Default)]
pub struct TakeoverQueue {
    queued: Vec<Takeover>,
    /// Takeovers queued so far (the number of the latest).
    seq: u64,
    /// The number of the latest takeover the shipper took.
    taken: u64,
}

/// How far a link shipped, and which takeovers that counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    /// Every change with a LUT before this (ms) is acknowledged at the destination.
    pub through: u64,
    /// The number of the latest takeover whose re-shipping `through` accounts for: each
    /// up to it is either re-shipped below `through` or still holds `through` back.
    pub covers: u64,
}

impl LinkStats {
    /// Every change with a LUT before this (ms) is acknowledged at the destination, re-shipped
    /// ones included; 0 before the shipper first published.
    pub fn shipped_through(&self) -> u64 {
        self.shipped().through
    }

    /// [`LinkStats::shipped_through`] with the takeovers it accounts for.
    pub fn shipped(&self) -> Shipped {
        self.shipped.lock().map(|shipped| *shipped).unwrap_or_default()
    }

    /// Publishes [`LinkStats::shipped_through`], computed by a shipper that holds back for
    /// every takeover it took.
    pub fn set_shipped_through(&self, lut_ms: u64) {
        let covers = self.takeovers.lock().map_or(0, |queue| queue.taken);
        if let Ok(mut shipped) = self.shipped.lock() {
            *shipped = Shipped { through: lut_ms, covers };
        }
    }

    /// Queues `takeovers` again for a shipper that starts (one that stopped lost what it had
    /// taken), besides those queued already; returns their number (see [`Shipped::covers`]).
    pub fn requeue_takeovers(&self, takeovers: Vec<Takeover>) -> u64 {
        let Ok(mut queue) = self.takeovers.lock() else { return 0 };
        for takeover in takeovers {
            if !queue.queued.contains(&takeover) {
                queue.queued.push(takeover);
            }
        }
        queue.seq += 1;
        queue.seq
    }

    /// The takeovers not yet handed to the shipper, oldest first.
    pub fn take_takeovers(&self) -> Vec<Takeover> {
        let Ok(mut queue) = self.takeovers.lock() else { return Vec::new() };
        queue.taken = queue.seq;
        std::mem::take(&mut queue.queued)
    }

    /// Publishes the link's state.
    pub fn set_state(&self, state: LinkState) {
        if let Ok(mut slot) = self.state.lock() {
            *slot = Some(state);
        }
    }

    /// The state the shipper published last.
    pub fn state(&self) -> Option<LinkState> {
        self.state.lock().ok().and_then(|s| *s)
    }

    /// Shows why the shipper stopped on its own (`None`: it ships again).
    pub fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = error;
        }
    }

    /// Why the shipper last stopped on its own, until its restart reaches the destination.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// The link's state and counters now.
    pub fn snapshot(&self) -> LinkSnapshot {
        LinkSnapshot { state: self.state(), counters: self.counters(), error: self.error() }
    }

    /// Adds counts and sets the gauges of namespace `ns`.
    pub fn publish_namespace(
        &self,
        ns: &str,
        counts: Option<crate::engine::NamespaceCounts>,
        gauges: Option<crate::engine::NamespaceGauges>,
    ) {
        let mut namespaces =
            self.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = namespaces.entry(ns.to_owned()).or_default();
        if let Some(counts) = counts {
            stats.counts.add(counts);
        }
        if let Some(gauges) = gauges {
            stats.gauges = gauges;
        }
    }

    /// The link's snapshot as namespace `ns` sees it (Aerospike's per-namespace
    /// `get-stats`): its own `lag`, `in_queue`, `in_progress`, `success`, `not_found`,
    /// `filtered_out` and `hot_keys`; the other counters are the link's. `None` until the
    /// shipper published anything for `ns`.
    pub fn namespace_snapshot(&self, ns: &str) -> Option<LinkSnapshot> {
        let namespaces = self.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = namespaces.get(ns)?;
        let mut snapshot = self.snapshot();
        let counters = &mut snapshot.counters;
        counters.lag = stats.gauges.lag_ms;
        counters.in_queue = stats.gauges.in_queue;
        counters.in_progress = stats.gauges.in_progress;
        counters.success = stats.counts.success;
        counters.not_found = stats.counts.not_found;
        counters.filtered_out = stats.counts.filtered_out;
        counters.hot_keys = stats.counts.hot_keys;
        Some(snapshot)
    }
}

/// One namespace's share of a link's stats.
#[derive(Debug, Default, Clone, Copy)]
struct NamespaceStats {
    counts: crate::engine::NamespaceCounts,
    gauges: crate::engine::NamespaceGauges,
}

/// A link state in stats: its name, or `starting` before the shipper published one.
mod state_or_starting {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::link::LinkState;

    const STARTING: &str = "starting";
    const STATES: [LinkState; 6] = [
        LinkState::Active,
        LinkState::Paused,
        LinkState::Down,
        LinkState::Recovering,
        LinkState::Draining,
        LinkState::Degraded,
    ];

    pub(super) fn name(state: Option<LinkState>) -> String {
        state.map_or_else(|| STARTING.to_owned(), |s| s.to_string())
    }

    pub(super) fn parse(text: &str) -> Option<Option<LinkState>> {
        if text == STARTING {
            return Some(None);
        }
        STATES.into_iter().find(|s| s.to_string() == text).map(Some)
    }

    pub(super) fn serialize<S: Serializer>(
        state: &Option<LinkState>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&name(*state))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<LinkState>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown link state '{text}'")))
    }
}

/// A shipped version that lost against the local one at this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub namespace: String,
    #[serde(with = "crate::parked::hex_digest")]
    pub digest: Digest,
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
        let stamp =
            |s: &VersionStamp| format!("{}/{}/{}", s.generation, s.last_update_ms, s.origin_site);
        write!(
            f,
            "{},{},{},{},{}",
            self.namespace,
            self.digest,
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

    /// Has link `dc` re-ship `partitions` this node took over: at once if its shipper runs,
    /// else when it starts (it reads what was queued for it). Returns the takeover's number
    /// (see [`Shipped::covers`]) and whether the shipper runs.
    pub fn take_over(&self, dc: &str, partitions: Vec<Takeover>) -> (u64, bool) {
        let seq = match self.link(dc).takeovers.lock() {
            Ok(mut queue) => {
                queue.queued.extend(partitions);
                queue.seq += 1;
                queue.seq
            }
            Err(_) => 0,
        };
        let Ok(controls) = self.controls.lock() else { return (seq, false) };
        let Some(sender) = controls.get(dc) else { return (seq, false) };
        sender.send_modify(|control| control.takeover_seq += 1);
        (seq, true)
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

impl Registry {
    /// The receiver's counters and the links with stats.
    pub fn receiver_snapshot(&self) -> ReceiverSnapshot {
        ReceiverSnapshot { counters: self.receiver.counters(), dcs: self.dcs() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_link() -> LinkSnapshot {
        let stats = LinkStats::default();
        stats.set_state(LinkState::Down);
        set(&stats.lag, 1_500);
        add(&stats.success, 42);
        set(&stats.compression_ratio, 3_075);
        set(&stats.log_time_left, u64::MAX);
        stats.snapshot()
    }

    #[test]
    fn link_stats_read_back_from_their_info_form() {
        let snapshot = busy_link();
        let info = snapshot.to_info();
        assert!(info.starts_with("state=down;lag=1500;in_queue=0;"), "{info}");
        assert!(info.contains(";success=42;"), "{info}");
        assert!(info.contains(";compression_ratio=3.075;"), "{info}");
        assert!(info.ends_with(";log_time_left=unbounded"), "{info}");
        assert_eq!(LinkSnapshot::from_info(&info), Ok(snapshot));
    }

    #[test]
    fn a_starting_link_says_so() {
        let snapshot = LinkStats::default().snapshot();
        assert!(snapshot.to_info().starts_with("state=starting;"));
        assert_eq!(LinkSnapshot::from_info(&snapshot.to_info()).map(|s| s.state), Ok(None));
    }

    #[test]
    fn the_json_form_has_the_same_names() {
        let json = serde_json::to_value(busy_link()).expect("json");
        assert_eq!(json["state"], "down");
        assert_eq!(json["lag"], 1_500);
        assert_eq!(json["success"], 42);
        let back: LinkSnapshot = serde_json::from_value(json).expect("from json");
        assert_eq!(back, busy_link());
    }

    #[test]
    fn receiver_stats_carry_the_links() {
        let registry = Registry::default();
        add(&registry.receiver.applied, 7);
        let _ = registry.link("eu-west");
        let _ = registry.link("ap-south");
        let snapshot = registry.receiver_snapshot();
        assert_eq!(snapshot.dcs, ["ap-south", "eu-west"]);
        let info = snapshot.to_info();
        assert!(info.starts_with("applied=7;"), "{info}");
        assert!(info.ends_with(";dcs=ap-south,eu-west"), "{info}");
        assert_eq!(ReceiverSnapshot::from_info(&info), Ok(snapshot));
        let none = ReceiverSnapshot::from_info(&Registry::default().receiver_snapshot().to_info());
        assert_eq!(none.map(|s| s.dcs), Ok(Vec::new()));
    }

    #[test]
    fn answers_that_are_not_stats_are_refused_with_the_reason() {
        assert_eq!(
            LinkSnapshot::from_info("ERROR:2:no link to dc 'x' ships from this node"),
            Err(StatsError::Refused("no link to dc 'x' ships from this node".to_owned()))
        );
        for old in ["ERROR::gone", "ERROR:gone"] {
            assert_eq!(info_error(old), Some("gone"));
        }
        assert_eq!(info_error("objects=1"), None);
        let info = busy_link().to_info();
        let missing = info.replace(";success=42", "");
        assert_eq!(LinkSnapshot::from_info(&missing), Err(StatsError::Missing("success".into())));
        for (bad, name) in [
            (info.replace("lag=1500", "lag=soon"), "lag"),
            (info.replace("state=down", "state=sleepy"), "state"),
            (
                info.replace("compression_ratio=3.075", "compression_ratio=3.75"),
                "compression_ratio",
            ),
            (info.replace("compression_ratio=3.075", "compression_ratio=3"), "compression_ratio"),
        ] {
            assert!(
                matches!(LinkSnapshot::from_info(&bad), Err(StatsError::Bad { name: n, .. }) if n == name),
                "{bad}"
            );
        }
    }
}
