//! The topology model: what one topology file describes, as typed values.
//!
//! The same types are read from the TOML file (kebab-case keys, Aerospike's parameter names where
//! Aerospike has the concept), stored as JSON in the version store and served by the topology
//! service. Newtypes reject out-of-range values while parsing, so a field error carries the
//! file position of the offending value; cross-references are checked by [`crate::validate`].
//! Every default is written next to its field.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A whole deployment: sites, their nodes and namespaces, the DR links between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Topology {
    /// Free-form deployment name, shown by `ferry status`. Default: `"ferry"`.
    #[serde(default = "default_deployment_name")]
    pub name: String,
    /// How replicas are placed inside every site.
    #[serde(default)]
    pub placement: PlacementPolicy,
    /// The sites (Aerospike clusters), at least one.
    #[serde(default)]
    pub sites: Vec<Site>,
    /// Directed DR links between sites.
    #[serde(default)]
    pub links: Vec<Link>,
}

fn default_deployment_name() -> String {
    "ferry".to_owned()
}

/// Rack and zone awareness of replica placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PlacementPolicy {
    /// No two copies of a partition on one rack when the site has enough racks. Default: true.
    #[serde(default = "yes")]
    pub rack_aware: bool,
    /// Prefer copies in different zones before different racks. Default: false.
    #[serde(default)]
    pub zone_spread: bool,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self { rack_aware: true, zone_spread: false }
    }
}

fn yes() -> bool {
    true
}

/// One site: a cluster of storage nodes in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Site {
    /// Unique site name, e.g. `us-east`; also the cluster name clients see.
    pub name: SiteName,
    /// Numeric site id carried in every record version (Aerospike's `src-id`), 1..=255, unique.
    pub src_id: SiteId,
    /// Availability zones of the site. Default: none (nodes then carry no zone).
    #[serde(default)]
    pub zones: Vec<String>,
    /// Whether the site takes client writes (`active`) or receives replication (`standby`).
    pub role: Role,
    /// Which writes the site refuses. Default: by role ([`Site::fence`]): an active site
    /// refuses none, a standby refuses client writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_fence: Option<WriteFence>,
    /// Aerospike security on the site's client port: clients log in, and users, roles and
    /// privileges (kept by the topology service) decide what each may do. Default: off, as in
    /// Aerospike.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub security: bool,
    /// The storage nodes, at least one.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Namespaces served by every node of the site.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
}

impl Site {
    /// The writes the site refuses: its `write-fence`, or when it has none, what its role
    /// implies (a standby takes writes only from replication unless its fence says `none`).
    pub fn fence(&self) -> WriteFence {
        self.write_fence.unwrap_or(match self.role {
            Role::Active => WriteFence::None,
            Role::Standby => WriteFence::ClientWrites,
        })
    }
}

/// A site's role in replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Active,
    Standby,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Active => "active",
            Role::Standby => "standby",
        })
    }
}

/// Write fencing of a site: which writers it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteFence {
    /// Accepts client and XDR writes.
    #[default]
    None,
    /// Refuses client writes (Aerospike "forbidden"), accepts XDR writes.
    ClientWrites,
    /// Refuses XDR writes, accepts client writes.
    XdrWrites,
}

impl std::fmt::Display for WriteFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteFence::None => "none",
            WriteFence::ClientWrites => "client-writes",
            WriteFence::XdrWrites => "xdr-writes",
        })
    }
}

/// One storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Node {
    /// Stable node id, unique in the deployment: 1..=19 bytes of `[A-Za-z0-9_-]`.
    pub id: NodeId,
    /// Rack of the node (Aerospike's `rack-id`). Default: 0.
    #[serde(default)]
    pub rack_id: u32,
    /// Zone of the node, one of the site's `zones`. Default: the site's only zone, if it has one.
    #[serde(default)]
    pub zone: Option<String>,
    /// Address of the Aerospike client protocol.
    pub client: Endpoint,
    /// Address of the intra-site fabric (replication, membership).
    pub fabric: Endpoint,
    /// UDP address of the XDR QUIC endpoint.
    pub xdr: Endpoint,
    /// Address of the admin HTTP server (status, metrics).
    pub admin: Endpoint,
}

/// One namespace of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Namespace {
    /// Namespace name, 1..=31 bytes.
    pub name: NamespaceName,
    /// Copies of each record in the site, 1..=nodes in the site. Default: 2.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u8,
    /// How a remote version competes with the local one. Default: `generation`.
    #[serde(default)]
    pub conflict_resolution_policy: ConflictPolicy,
    /// TTL in seconds of records written with TTL 0; 0 means never expire. Default: 0.
    #[serde(default)]
    pub default_ttl: u32,
    /// Seconds a durable-delete tombstone is kept before it is reclaimed. Default: 86400.
    #[serde(default = "default_tombstone_ttl")]
    pub tombstone_ttl: u32,
    /// When a write is acknowledged relative to its fsync. Default: `group`.
    #[serde(default)]
    pub commit_mode: CommitMode,
    /// Longest a write lingers for others to share its fsync, in microseconds. Default: 0 (no
    /// linger: writes arriving while an fsync runs share the next one anyway).
    #[serde(default = "default_commit_max_wait_us")]
    pub commit_max_wait_us: u32,
    /// Most writes sharing one fsync. Default: 1024.
    #[serde(default = "default_commit_max_batch")]
    pub commit_max_batch: u32,
    /// Storage directory, relative to the node's state directory unless absolute.
    /// Default: the namespace name.
    #[serde(default)]
    pub storage_dir: Option<String>,
    /// Largest record this namespace stores, in bytes (Aerospike's `max-record-size`): a client
    /// write over it is refused with `RECORD_TOO_BIG`, and so is a shipped version over it.
    /// 1 KiB to [`MAX_RECORD_SIZE_LIMIT`]. Default: 1 MiB.
    #[serde(default = "default_max_record_size")]
    pub max_record_size: u32,
}

/// The highest `max-record-size` a namespace may set: 8 MiB, like Aerospike's; it keeps every
/// record shippable inside one XDR frame.
pub const MAX_RECORD_SIZE_LIMIT: u32 = 8 << 20;
/// The lowest `max-record-size` a namespace may set.
pub const MIN_RECORD_SIZE_LIMIT: u32 = 1 << 10;

fn default_replication_factor() -> u8 {
    2
}
fn default_max_record_size() -> u32 {
    1 << 20
}
fn default_tombstone_ttl() -> u32 {
    86_400
}
fn default_commit_max_wait_us() -> u32 {
    0
}
fn default_commit_max_batch() -> u32 {
    1024
}

impl Namespace {
    /// The storage directory, defaulted to the namespace name.
    pub fn storage_dir(&self) -> &str {
        self.storage_dir.as_deref().unwrap_or(self.name.as_str())
    }
}

impl fmt::Display for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictPolicy::Generation => "generation",
            ConflictPolicy::LastUpdateTime => "last-update-time",
        })
    }
}

/// Aerospike's `conflict-resolution-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Apply a remote version iff its generation is newer (wrap-aware).
    #[default]
    Generation,
    /// Apply a remote version iff its (last-update-time, origin site id) is greater.
    LastUpdateTime,
}

/// Durability of an acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    /// Acknowledge after the fsync shared by the group (durable).
    #[default]
    Group,
    /// Acknowledge before the fsync: the last window is lost on power loss.
    Buffered,
}

/// A directed DR link: `from` ships the listed namespaces to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Link {
    /// Shipping site.
    pub from: SiteName,
    /// Receiving site.
    pub to: SiteName,
    /// Namespaces shipped; each must exist at both ends.
    pub namespaces: Vec<NamespaceName>,
    /// Whether the link ships. Default: true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Shipper wake-up period in milliseconds (Aerospike `period-ms`). Default: 100.
    #[serde(default = "default_period_ms")]
    pub period_ms: u32,
    /// Extra delay before a change ships, in milliseconds (`delay-ms`). Default: 0.
    #[serde(default)]
    pub delay_ms: u32,
    /// Window in which repeated changes of one key ship once (`hot-key-ms`). Default: 100.
    #[serde(default = "default_hot_key_ms")]
    pub hot_key_ms: u32,
    /// Most records shipped per second (`max-throughput`). Default: 100000.
    #[serde(default = "default_max_throughput")]
    pub max_throughput: u32,
    /// Ship only the sets in `ship-set` (`ship-only-specified-sets`). Default: false.
    #[serde(default)]
    pub ship_only_specified_sets: bool,
    /// Sets shipped when `ship-only-specified-sets` is true.
    #[serde(default)]
    pub ship_set: Vec<String>,
    /// Sets never shipped.
    #[serde(default)]
    pub ignore_set: Vec<String>,
    /// Ship deletes caused by expiration and eviction (`ship-nsup-deletes`). Default: false.
    #[serde(default)]
    pub ship_nsup_deletes: bool,
    /// Ship records that arrived from another site onwards (`forward`). Default: false.
    #[serde(default)]
    pub forward: bool,
    /// zstd level of shipped batches, 1..=22 (`compression-level`). Default: 1.
    #[serde(default = "default_compression_level")]
    pub compression_level: u8,
    /// Batches smaller than this many bytes ship uncompressed. Default: 128.
    #[serde(default = "default_compression_threshold")]
    pub compression_threshold: u32,
    /// Simulated WAN conditions for this link, applied by a userspace relay on one machine.
    #[serde(default)]
    pub simulate_wan: Option<SimulatedWan>,
}

fn default_period_ms() -> u32 {
    100
}
fn default_hot_key_ms() -> u32 {
    100
}
fn default_max_throughput() -> u32 {
    100_000
}
fn default_compression_level() -> u8 {
    1
}
fn default_compression_threshold() -> u32 {
    128
}

impl Link {
    /// The link's display name, `from→to`.
    pub fn name(&self) -> String {
        format!("{}→{}", self.from, self.to)
    }
}

/// WAN conditions a relay imposes on a link (per direction).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SimulatedWan {
    /// One-way delay in milliseconds. Default: 0.
    #[serde(default)]
    pub delay_ms: u32,
    /// Uniform jitter added to the delay, in milliseconds. Default: 0.
    #[serde(default)]
    pub jitter_ms: u32,
    /// Probability in [0, 1) that a packet is dropped. Default: 0.
    #[serde(default)]
    pub loss: f64,
    /// Bandwidth cap in Mbit/s; absent means unlimited.
    #[serde(default)]
    pub rate_mbit: Option<u32>,
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value)?;
                Ok(Self(value))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(value: &str) -> Result<Self, String> {
                Self::try_from(value.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

fn check_identifier(what: &str, value: &str, max_len: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max_len {
        return Err(format!("{what} '{value}' must be 1 to {max_len} bytes long"));
    }
    if let Some(bad) =
        value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!("{what} '{value}' contains '{bad}'; use letters, digits, '-' and '_'"));
    }
    Ok(())
}

string_newtype!(
    /// A site name: 1..=63 bytes of `[A-Za-z0-9_-]`.
    SiteName,
    |v| check_identifier("site name", v, 63)
);
string_newtype!(
    /// A node id: 1..=19 bytes of `[A-Za-z0-9_-]` (Aerospike node names are under 20 bytes).
    NodeId,
    |v| check_identifier("node id", v, 19)
);
string_newtype!(
    /// A namespace name: 1..=31 bytes (Aerospike's limit), no NUL, ':', ';' or space.
    NamespaceName,
    |v| {
        if v.is_empty() || v.len() > 31 {
            return Err(format!("namespace name '{v}' must be 1 to 31 bytes long"));
        }
        if let Some(bad) = v.chars().find(|c| matches!(c, '\0' | ':' | ';' | ' ')) {
            return Err(format!("namespace name '{v}' contains {bad:?}, which info commands reserve"));
        }
        Ok(())
    }
);

/// A site id (Aerospike's `src-id`): 1..=255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u8")]
pub struct SiteId(u8);

impl SiteId {
    /// The id as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for SiteId {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        match u8::try_from(value) {
            Ok(id) if id >= 1 => Ok(Self(id)),
            _ => Err(format!("src-id {value} is out of range; use 1 to 255")),
        }
    }
}

impl From<SiteId> for u8 {
    fn from(value: SiteId) -> u8 {
        value.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A fixed `ip:port` address (port 0 is refused: peers must know where to find a node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint(SocketAddr);

impl Endpoint {
    /// The socket address.
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let addr: SocketAddr = value.parse().map_err(|_| {
            format!("'{value}' is not an address; write ip:port, e.g. 127.0.0.1:3000")
        })?;
        if addr.port() == 0 {
            return Err(format!("'{value}' has port 0; give a fixed port"));
        }
        Ok(Self(addr))
    }
}

impl From<Endpoint> for String {
    fn from(value: Endpoint) -> String {
        value.0.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Topology {
    /// The site with this name.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == *name)
    }
}

impl Site {
    /// The namespace with this name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == *name)
    }

    /// The node's zone: its own, or the site's only zone.
    pub fn zone_of<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        match (&node.zone, self.zones.as_slice()) {
            (Some(zone), _) => Some(zone),
            (None, [only]) => Some(only),
            (None, _) => None,
        }
    }

    /// Distinct racks of the site's nodes.
    pub fn rack_count(&self) -> usize {
        let mut racks: Vec<u32> = self.nodes.iter().map(|n| n.rack_id).collect();
        racks.sort_unstable();
        racks.dedup();
        racks.len()
    }
}
