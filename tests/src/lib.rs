//! Shared test support for every crate's tests and benches: the typed test-topology builder
//! ([`TopologyBuilder`]) on free loopback ports, and one small helper (an HTTP request to the
//! admin API). End-to-end tests live with the `ferry` binary (`cli/tests/`), where Cargo builds
//! it for them; they start deployments through `ferry::deploy`, as `ferry up` does.
//!
//! This crate depends on no ferry crate (it is a dev-dependency of them, and a dependency would
//! make a cycle): the builder gives the topology's text, and a test that wants the model parses
//! it with `ferry_topology::parse_topology`. Tests about the file text itself (diagnostics with
//! line and column, the files in `topology/tests/bad/`, `examples/`) keep their literal TOML.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The root of the workspace (the directory holding `examples/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Distinct ports on 127.0.0.1 free for both TCP and UDP (bound, then released; a test-only
/// race accepted): a node's XDR endpoint is UDP, and QUIC sockets and relays elsewhere hold
/// UDP ports that a TCP-only check would hand out. A process never gets the same port twice, so
/// tests running side by side cannot collide (one's nodes not yet bound, another's taking it).
///
/// The ports lie outside the kernel's ephemeral range (`ip_local_port_range`): the kernel gives
/// every outgoing connection a local port from that range, so a port picked there could be
/// taken by some process's connection between the pick and the node's bind (seen in CI: a
/// node's fabric address "already in use"). Each process starts at its own offset (from its
/// pid), so test binaries run one after another do not walk the same ports.
///
/// # Panics
///
/// If `count` free ports cannot be found.
pub fn free_ports(count: usize) -> Vec<u16> {
    /// The ports this process may hand out, where it looks next, and what it handed out.
    struct Cursor {
        candidates: Vec<u16>,
        next: usize,
        handed_out: std::collections::BTreeSet<u16>,
    }
    static CURSOR: std::sync::Mutex<Option<Cursor>> = std::sync::Mutex::new(None);
    let mut cursor = CURSOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cursor = cursor.get_or_insert_with(|| {
        let candidates = ports_outside_ephemeral_range();
        Cursor {
            next: std::process::id() as usize * 97 % candidates.len().max(1),
            candidates,
            handed_out: std::collections::BTreeSet::new(),
        }
    });
    let mut held = Vec::with_capacity(count);
    // Each candidate is tried once; when the kernel's range leaves none (it covers every port
    // from 10000), the kernel picks (port 0) and a bounded number of picks is tried.
    for _ in 0..cursor.candidates.len().max(count * 64) {
        if held.len() == count {
            break;
        }
        let at = cursor.next % cursor.candidates.len().max(1);
        let wanted = cursor.candidates.get(at).copied().unwrap_or(0);
        cursor.next += 1;
        let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", wanted)) else { continue };
        let Ok(port) = tcp.local_addr().map(|addr| addr.port()) else { continue };
        if cursor.handed_out.contains(&port) {
            continue;
        }
        if let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            held.push((port, tcp, udp));
        }
    }
    assert!(held.len() == count, "only {} of {count} free ports on 127.0.0.1", held.len());
    let ports: Vec<u16> = held.into_iter().map(|(port, _, _)| port).collect();
    cursor.handed_out.extend(&ports);
    ports
}

/// Unprivileged ports the kernel never hands to an outgoing connection: those outside
/// `/proc/sys/net/ipv4/ip_local_port_range` (Linux's default range 32768–60999 when it cannot
/// be read).
fn ports_outside_ephemeral_range() -> Vec<u16> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|b| b.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below 10000 sit well-known services (and the example topologies' fixed ports).
    (10_000..=u16::MAX).filter(|port| *port < low || *port > high).collect()
}

/// A node of a test topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestNode {
    pub site: String,
    pub id: String,
    pub client: SocketAddr,
    pub fabric: SocketAddr,
    pub xdr: SocketAddr,
    pub admin: SocketAddr,
}

impl TestNode {
    /// The node's addresses in [`AddressKind`] order: client, fabric, xdr, admin.
    pub fn addresses(&self) -> [SocketAddr; 4] {
        [self.client, self.fabric, self.xdr, self.admin]
    }
}

/// What a site does with client writes (`role` of `[[sites]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes client writes.
    Active,
    /// Receives replication.
    Standby,
}

/// Which writes a site refuses (`write-fence` of `[[sites]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFence {
    /// Accepts client and XDR writes (the file's default).
    None,
    /// Refuses client writes, accepts XDR writes.
    ClientWrites,
    /// Refuses XDR writes, accepts client writes.
    XdrWrites,
}

/// How a namespace resolves a remote version against the local one
/// (`conflict-resolution-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The newer generation wins (the file's default).
    Generation,
    /// The greater (last-update-time, origin src-id) pair wins.
    LastUpdateTime,
}

/// When a namespace acknowledges a write (`commit-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// After the shared fsync (the file's default).
    Group,
    /// Before the fsync.
    Buffered,
}

/// One of the four addresses of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// `client`: the Aerospike client protocol (TCP).
    Client,
    /// `fabric`: replication and membership inside a site (TCP).
    Fabric,
    /// `xdr`: the XDR QUIC endpoint (UDP).
    Xdr,
    /// `admin`: the admin HTTP API (TCP).
    Admin,
}

impl AddressKind {
    const ALL: [AddressKind; 4] =
        [AddressKind::Client, AddressKind::Fabric, AddressKind::Xdr, AddressKind::Admin];

    /// The key of this address in `[[sites.nodes]]`.
    fn key(self) -> &'static str {
        match self {
            AddressKind::Client => "client",
            AddressKind::Fabric => "fabric",
            AddressKind::Xdr => "xdr",
            AddressKind::Admin => "admin",
        }
    }
}

/// A value as TOML writes it.
trait TomlValue {
    fn toml(&self) -> String;
}

impl TomlValue for u8 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for u32 {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for bool {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl TomlValue for f64 {
    fn toml(&self) -> String {
        // `{:?}` keeps the decimal point (`0.0`, not `0`), so TOML reads a float.
        format!("{self:?}")
    }
}

impl TomlValue for &str {
    fn toml(&self) -> String {
        format!("\"{self}\"")
    }
}

impl TomlValue for &[&str] {
    fn toml(&self) -> String {
        format!("[{}]", self.iter().map(TomlValue::toml).collect::<Vec<_>>().join(", "))
    }
}

macro_rules! toml_enum {
    ($($ty:ty { $($variant:ident => $text:literal),* })*) => {$(
        impl TomlValue for $ty {
            fn toml(&self) -> String {
                match self { $(<$ty>::$variant => $text.toml()),* }
            }
        }
    )*};
}

toml_enum! {
    Role { Active => "active", Standby => "standby" }
    WriteFence { None => "none", ClientWrites => "client-writes", XdrWrites => "xdr-writes" }
    ConflictPolicy { Generation => "generation", LastUpdateTime => "last-update-time" }
    CommitMode { Group => "group", Buffered => "buffered" }
}

/// `key = value` lines of one table, in the order first set; setting a key again replaces its
/// value.
#[derive(Debug, Clone, Default)]
struct Settings(Vec<(&'static str, String)>);

impl Settings {
    fn set(&mut self, key: &'static str, value: impl TomlValue) {
        let value = value.toml();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn write_to(&self, text: &mut String) {
        for (key, value) in &self.0 {
            let _ = writeln!(text, "{key} = {value}");
        }
    }
}

/// Setters that each write one key of the table's [`Settings`].
macro_rules! setters {
    ($($(#[$doc:meta])* $method:ident($ty:ty) => $key:literal;)*) => {$(
        $(#[$doc])*
        pub fn $method(mut self, value: $ty) -> Self {
            self.settings.set($key, value);
            self
        }
    )*};
}

/// A namespace (`[[sites.namespaces]]`). Only the keys set are written, so the others take the
/// file's defaults (docs/topology.md), except `replication-factor`, which is always written.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
    settings: Settings,
}

impl Namespace {
    /// Namespace `name` with one copy of each partition (the file's default, 2, needs two
    /// nodes in every site).
    pub fn new(name: &str) -> Namespace {
        Namespace { name: name.to_owned(), settings: Settings::default() }.replication_factor(1)
    }

    setters! {
        /// `replication-factor`: copies of each partition in the site; 1 unless set.
        replication_factor(u8) => "replication-factor";
        /// `conflict-resolution-policy`; the file's default is `generation`.
        conflict_policy(ConflictPolicy) => "conflict-resolution-policy";
        /// `default-ttl` in seconds; the file's default is 0 (never expire).
        default_ttl(u32) => "default-ttl";
        /// `tombstone-ttl` in seconds; the file's default is 86400.
        tombstone_ttl(u32) => "tombstone-ttl";
        /// `commit-mode`; the file's default is `group`.
        commit_mode(CommitMode) => "commit-mode";
        /// `commit-max-wait-us`; the file's default is 0.
        commit_max_wait_us(u32) => "commit-max-wait-us";
        /// `commit-max-batch`; the file's default is 1024.
        commit_max_batch(u32) => "commit-max-batch";
        /// `storage-dir`; the file's default is the namespace name.
        storage_dir(&str) => "storage-dir";
        /// `max-record-size` in bytes; the file's default is 1 MiB.
        max_record_size(u32) => "max-record-size";
    }

    fn write_to(&self, text: &mut String) {
        let _ = writeln!(text, "\n[[sites.namespaces]]\nname = {}", self.name.as_str().toml());
        self.settings.write_to(text);
    }
}

/// WAN conditions a relay imposes on a link (`[links.simulate-wan]`). Only the keys set are
/// written; the file's defaults are no delay, no jitter, no loss and no rate cap.
#[derive(Debug, Clone, Default)]
pub struct SimulateWan {
    settings: Settings,
}

impl SimulateWan {
    setters! {
        /// `delay-ms`: one-way delay.
        delay_ms(u32) => "delay-ms";
        /// `jitter-ms`: uniform jitter added to the delay.
        jitter_ms(u32) => "jitter-ms";
        /// `loss`: probability that a packet is dropped, in [0, 1).
        loss(f64) => "loss";
        /// `rate-mbit`: a bandwidth cap in Mbit/s.
        rate_mbit(u32) => "rate-mbit";
    }
}

/// A directed DR link (`[[links]]`), shipping namespace `test` unless told otherwise. Only the
/// settings set are written, so the others take the file's defaults (docs/topology.md).
#[derive(Debug, Clone)]
pub struct Link {
    from: String,
    to: String,
    namespaces: Vec<String>,
    settings: Settings,
    simulate_wan: Option<SimulateWan>,
}

impl Link {
    /// The link `from -> to`, shipping namespace `test`.
    pub fn new(from: &str, to: &str) -> Link {
        Link {
            from: from.to_owned(),
            to: to.to_owned(),
            namespaces: vec!["test".to_owned()],
            settings: Settings::default(),
            simulate_wan: None,
        }
    }

    /// The namespaces the link ships, instead of `test`.
    pub fn namespaces(mut self, namespaces: &[&str]) -> Link {
        self.namespaces = namespaces.iter().map(|&n| n.to_owned()).collect();
        self
    }

    /// `[links.simulate-wan]`: WAN conditions on this link; absent unless set.
    pub fn simulate_wan(mut self, wan: SimulateWan) -> Link {
        self.simulate_wan = Some(wan);
        self
    }

    setters! {
        /// `enabled`; the file's default is true.
        enabled(bool) => "enabled";
        /// `period-ms`: how often the shipper wakes up; the file's default is 100.
        period_ms(u32) => "period-ms";
        /// `delay-ms`: extra delay before a change ships; the file's default is 0.
        delay_ms(u32) => "delay-ms";
        /// `hot-key-ms`: the hot-key window; the file's default is 100.
        hot_key_ms(u32) => "hot-key-ms";
        /// `max-throughput`: records per second; the file's default is 100000.
        max_throughput(u32) => "max-throughput";
        /// `ship-only-specified-sets`; the file's default is false.
        ship_only_specified_sets(bool) => "ship-only-specified-sets";
        /// `ship-set`; the file's default is empty.
        ship_set(&[&str]) => "ship-set";
        /// `ignore-set`; the file's default is empty.
        ignore_set(&[&str]) => "ignore-set";
        /// `ship-nsup-deletes`; the file's default is false.
        ship_nsup_deletes(bool) => "ship-nsup-deletes";
        /// `forward`: ship onwards what arrived from another site; the file's default is false.
        forward(bool) => "forward";
        /// `compression-level` (zstd, 1–22); the file's default is 1.
        compression_level(u8) => "compression-level";
        /// `compression-threshold` in bytes; the file's default is 128.
        compression_threshold(u32) => "compression-threshold";
    }

    fn write_to(&self, text: &mut String) {
        let namespaces: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
        let _ = writeln!(
            text,
            "\n[[links]]\nfrom = {}\nto = {}\nnamespaces = {}",
            self.from.as_str().toml(),
            self.to.as_str().toml(),
            namespaces.as_slice().toml()
        );
        self.settings.write_to(text);
        if let Some(wan) = &self.simulate_wan {
            text.push_str("\n[links.simulate-wan]\n");
            wan.settings.write_to(text);
        }
    }
}

/// A site (`[[sites]]`) for [`TopologyBuilder::add_site`].
///
/// Unless set: src-id is the site's position from 1, the role is `active` (a standby refuses
/// client writes, and most tests write at every site), node `j` is `<site>-<j>` on rack
/// `j % 2` with no zone, and the namespaces are the builder's.
#[derive(Debug, Clone)]
pub struct Site {
    name: String,
    nodes: Vec<String>,
    src_id: Option<u8>,
    role: Option<Role>,
    write_fence: Option<WriteFence>,
    security: bool,
    racks: Vec<u32>,
    zones: Vec<String>,
    namespaces: Vec<Namespace>,
}

impl Site {
    /// Site `name` of `nodes` nodes `<name>-0`, `<name>-1`, ….
    pub fn new(name: &str, nodes: usize) -> Site {
        Site {
            name: name.to_owned(),
            nodes: (0..nodes).map(|j| format!("{name}-{j}")).collect(),
            src_id: None,
            role: None,
            write_fence: None,
            security: false,
            racks: vec![0, 1],
            zones: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    /// The nodes by id, instead of `<name>-<j>`.
    pub fn node_ids(mut self, ids: &[&str]) -> Site {
        self.nodes = ids.iter().map(|&id| id.to_owned()).collect();
        self
    }

    /// `src-id`.
    pub fn src_id(mut self, src_id: u8) -> Site {
        self.src_id = Some(src_id);
        self
    }

    /// `role`.
    pub fn role(mut self, role: Role) -> Site {
        self.role = Some(role);
        self
    }

    /// `write-fence`; not written unless set (the file's default is `none`).
    pub fn write_fence(mut self, fence: WriteFence) -> Site {
        self.write_fence = Some(fence);
        self
    }

    /// `security = true`: Aerospike logins, users and roles on the site's client port.
    pub fn security(mut self) -> Site {
        self.security = true;
        self
    }

    /// Node `j` goes on rack `racks[j % racks.len()]` (instead of `j % 2`).
    ///
    /// # Panics
    ///
    /// If `racks` is empty.
    pub fn racks(mut self, racks: &[u32]) -> Site {
        assert!(!racks.is_empty(), "site {}: at least one rack", self.name);
        self.racks = racks.to_vec();
        self
    }

    /// The site's `zones`; node `j` goes in zone `zones[j % zones.len()]`.
    pub fn zones(mut self, zones: &[&str]) -> Site {
        self.zones = zones.iter().map(|&z| z.to_owned()).collect();
        self
    }

    /// Adds a namespace to this site; a site with namespaces of its own does not take the
    /// builder's.
    pub fn namespace(mut self, namespace: Namespace) -> Site {
        self.namespaces.push(namespace);
        self
    }
}

/// Where the builder takes ports from.
#[derive(Debug, Clone, Copy)]
enum Ports {
    /// Free loopback ports, all taken in one [`free_ports`] call.
    Free,
    /// Consecutive ports from this one.
    From(u16),
}

/// A topology file's text and the nodes it declares.
#[derive(Debug, Clone)]
pub struct TestTopology {
    pub text: String,
    pub nodes: Vec<TestNode>,
}

impl TestTopology {
    /// Each node's id and client address, in file order.
    pub fn clients(&self) -> Vec<(String, SocketAddr)> {
        self.nodes.iter().map(|n| (n.id.clone(), n.client)).collect()
    }
}

/// Builds test topologies: every `[[sites]]`, `[[sites.nodes]]`, `[[sites.namespaces]]` and
/// `[[links]]` table of a topology file, typed, on free loopback ports unless told otherwise.
///
/// Unless set: every site holds namespace `test` with one copy (see [`Site`] for the other
/// site defaults); the nodes take every address on 127.0.0.1, on free ports.
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    name: String,
    sites: Vec<Site>,
    links: Vec<Link>,
    namespaces: Vec<Namespace>,
    ports: Ports,
    ips: [IpAddr; 4],
}

impl TopologyBuilder {
    /// An empty topology named `name`.
    pub fn new(name: &str) -> TopologyBuilder {
        TopologyBuilder {
            name: name.to_owned(),
            sites: Vec::new(),
            links: Vec::new(),
            namespaces: Vec::new(),
            ports: Ports::Free,
            ips: [IpAddr::from([127, 0, 0, 1]); 4],
        }
    }

    /// Adds site `name` of `nodes` nodes with the [`Site`] defaults.
    pub fn site(self, name: &str, nodes: usize) -> TopologyBuilder {
        self.add_site(Site::new(name, nodes))
    }

    /// Adds sites named `names`, each of `nodes` nodes with the [`Site`] defaults.
    pub fn sites(self, names: &[&str], nodes: usize) -> TopologyBuilder {
        names.iter().fold(self, |builder, name| builder.site(name, nodes))
    }

    /// Adds a site.
    pub fn add_site(mut self, site: Site) -> TopologyBuilder {
        self.sites.push(site);
        self
    }

    /// Adds a link.
    pub fn link(mut self, link: Link) -> TopologyBuilder {
        self.links.push(link);
        self
    }

    /// Adds a namespace to every site that has none of its own; the first call replaces the
    /// default namespace `test`.
    pub fn namespace(mut self, namespace: Namespace) -> TopologyBuilder {
        self.namespaces.push(namespace);
        self
    }

    /// Fixed ports instead of free ones: node `k` of the topology (counting across sites, in
    /// order) takes `first + 4k` for `client`, then `fabric`, `xdr` and `admin`. For tests that
    /// parse a topology without binding its addresses, or need addresses nothing listens on.
    pub fn ports_from(mut self, first: u16) -> TopologyBuilder {
        self.ports = Ports::From(first);
        self
    }

    /// The IP of every node's `kind` address, instead of 127.0.0.1. Free ports are still
    /// probed on 127.0.0.1.
    pub fn ip(mut self, kind: AddressKind, ip: impl Into<IpAddr>) -> TopologyBuilder {
        self.ips[kind as usize] = ip.into();
        self
    }

    /// The topology, with every port of every node taken in one [`free_ports`] call (or from
    /// [`TopologyBuilder::ports_from`]).
    ///
    /// # Panics
    ///
    /// If fixed ports run past 65535.
    pub fn build(self) -> TestTopology {
        let count = self.sites.iter().map(|s| s.nodes.len()).sum::<usize>() * 4;
        let ports = match self.ports {
            Ports::Free => free_ports(count),
            Ports::From(first) => (0..count)
                .map(|k| {
                    u16::try_from(usize::from(first) + k)
                        .unwrap_or_else(|_| panic!("{count} ports from {first} pass 65535"))
                })
                .collect(),
        };
        let ips = self.ips;
        let addresses = ports
            .chunks(4)
            .map(|p| std::array::from_fn(|k| SocketAddr::new(ips[k], p[k])))
            .collect();
        self.render(addresses)
    }

    /// The topology on the addresses of `earlier`, node for node: the same deployment with
    /// other settings (a reconfiguration, as `ferry topology apply` would make).
    ///
    /// # Panics
    ///
    /// If this topology has more nodes than `earlier`.
    pub fn build_like(self, earlier: &TestTopology) -> TestTopology {
        self.render(earlier.nodes.iter().map(TestNode::addresses).collect())
    }

    fn render(self, addresses: Vec<[SocketAddr; 4]>) -> TestTopology {
        let mut addresses = addresses.into_iter();
        let test = [Namespace::new("test")];
        let default_namespaces: &[Namespace] =
            if self.namespaces.is_empty() { &test } else { &self.namespaces };
        let mut text = format!("name = {}\n", self.name.as_str().toml());
        let mut nodes = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            let role = site.role.unwrap_or(Role::Active);
            let src_id = site.src_id.unwrap_or_else(|| u8::try_from(i + 1).unwrap_or(u8::MAX));
            let _ = writeln!(
                text,
                "\n[[sites]]\nname = {}\nsrc-id = {src_id}\nrole = {}",
                site.name.as_str().toml(),
                role.toml()
            );
            if let Some(fence) = site.write_fence {
                let _ = writeln!(text, "write-fence = {}", fence.toml());
            }
            if site.security {
                let _ = writeln!(text, "security = true");
            }
            let zones: Vec<&str> = site.zones.iter().map(String::as_str).collect();
            if !zones.is_empty() {
                let _ = writeln!(text, "zones = {}", zones.as_slice().toml());
            }
            for (j, id) in site.nodes.iter().enumerate() {
                let [client, fabric, xdr, admin] = addresses.next().unwrap_or_else(|| {
                    panic!("no addresses left for node {id}: the earlier topology is smaller")
                });
                let _ = writeln!(
                    text,
                    "\n[[sites.nodes]]\nid = {}\nrack-id = {}",
                    id.as_str().toml(),
                    site.racks[j % site.racks.len()]
                );
                if !zones.is_empty() {
                    let _ = writeln!(text, "zone = {}", zones[j % zones.len()].toml());
                }
                let node = TestNode {
                    site: site.name.clone(),
                    id: id.clone(),
                    client,
                    fabric,
                    xdr,
                    admin,
                };
                for (kind, addr) in AddressKind::ALL.iter().zip(node.addresses()) {
                    let _ = writeln!(text, "{} = \"{addr}\"", kind.key());
                }
                nodes.push(node);
            }
            let namespaces =
                if site.namespaces.is_empty() { default_namespaces } else { &site.namespaces };
            for namespace in namespaces {
                namespace.write_to(&mut text);
            }
        }
        for link in &self.links {
            link.write_to(&mut text);
        }
        TestTopology { text, nodes }
    }
}

/// One HTTP/1.1 request without a body to `addr` (the admin API), presenting `token` (a bearer
/// token's text) when given; returns the status code and the body.
///
/// # Panics
///
/// If the server cannot be reached or answers something that is not HTTP.
pub fn http(addr: SocketAddr, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the admin API at {addr}: {e}"));
    let authorization =
        token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response from {addr}: {response}"));
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(topology: &TestTopology) -> toml::Table {
        toml::from_str(&topology.text).unwrap_or_else(|e| panic!("{e}\n{}", topology.text))
    }

    /// `table[key]` along `path` (`sites.1.nodes.0.id`), as TOML writes the value.
    fn at(table: &toml::Table, path: &str) -> String {
        let mut value = toml::Value::Table(table.clone());
        for part in path.split('.') {
            value = match part.parse::<usize>() {
                Ok(index) => value.get(index).cloned(),
                Err(_) => value.get(part).cloned(),
            }
            .unwrap_or_else(|| panic!("no {path} in {table}"));
        }
        value.to_string()
    }

    #[test]
    fn built_topologies_give_every_node_its_own_ports_and_name_roles_by_links() {
        let built = TopologyBuilder::new("t")
            .site("a", 2)
            .sites(&["b", "c"], 1)
            .link(Link::new("a", "b").period_ms(20))
            .build();
        let mut ports: Vec<u16> =
            built.nodes.iter().flat_map(|n| n.addresses().map(|a| a.port())).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16, "four distinct ports per node");
        let ids: Vec<&str> = built.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a-0", "a-1", "b-0", "c-0"]);
        let clients = built.clients();
        assert_eq!(clients.len(), 4);
        assert_eq!(clients[2], ("b-0".to_owned(), built.nodes[2].client));
        assert!(built.text.contains("name = \"b\"\nsrc-id = 2\nrole = \"active\""));
        assert!(
            built
                .text
                .contains("from = \"a\"\nto = \"b\"\nnamespaces = [\"test\"]\nperiod-ms = 20")
        );
        let table = parse(&built);
        assert_eq!(at(&table, "name"), "\"t\"");
        assert_eq!(at(&table, "sites.0.role"), "\"active\"");
        assert_eq!(at(&table, "sites.0.nodes.1.rack-id"), "1");
        assert_eq!(at(&table, "sites.2.namespaces.0.name"), "\"test\"");
        assert_eq!(at(&table, "sites.2.namespaces.0.replication-factor"), "1");
        let client = built.nodes[3].client.to_string();
        assert_eq!(at(&table, "sites.2.nodes.0.client"), format!("\"{client}\""));
    }

    #[test]
    fn site_knobs_set_ids_src_id_role_fence_racks_and_zones() {
        let site = Site::new("east", 3)
            .node_ids(&["e1", "e2", "e3"])
            .src_id(9)
            .role(Role::Standby)
            .write_fence(WriteFence::ClientWrites)
            .racks(&[4, 5, 6])
            .zones(&["z1", "z2"]);
        let built = TopologyBuilder::new("t").add_site(site).site("west", 1).build();
        let table = parse(&built);
        assert_eq!(at(&table, "sites.0.src-id"), "9");
        assert_eq!(at(&table, "sites.0.role"), "\"standby\"");
        assert_eq!(at(&table, "sites.0.write-fence"), "\"client-writes\"");
        assert_eq!(at(&table, "sites.0.zones"), "[\"z1\", \"z2\"]");
        for (j, (id, rack, zone)) in
            [("e1", 4, "z1"), ("e2", 5, "z2"), ("e3", 6, "z1")].iter().enumerate()
        {
            assert_eq!(at(&table, &format!("sites.0.nodes.{j}.id")), format!("\"{id}\""));
            assert_eq!(at(&table, &format!("sites.0.nodes.{j}.rack-id")), rack.to_string());
            assert_eq!(at(&table, &format!("sites.0.nodes.{j}.zone")), format!("\"{zone}\""));
        }
        // The second site keeps the defaults: src-id from its position, no fence, no zones.
        assert_eq!(at(&table, "sites.1.src-id"), "2");
        assert_eq!(at(&table, "sites.1.role"), "\"active\"");
        let west = table["sites"].get(1).expect("west");
        assert!(west.get("write-fence").is_none() && west.get("zones").is_none(), "{west}");
        assert!(west["nodes"].get(0).expect("node").get("zone").is_none(), "{west}");
    }

    #[test]
    fn namespaces_of_the_builder_replace_test_and_a_site_may_have_its_own() {
        let tuned = Namespace::new("tuned")
            .replication_factor(2)
            .conflict_policy(ConflictPolicy::LastUpdateTime)
            .default_ttl(30)
            .tombstone_ttl(60)
            .commit_mode(CommitMode::Buffered)
            .commit_max_wait_us(250)
            .commit_max_batch(8)
            .storage_dir("data/tuned");
        let built = TopologyBuilder::new("t")
            .namespace(tuned)
            .namespace(Namespace::new("other"))
            .site("a", 2)
            .add_site(Site::new("b", 1).namespace(Namespace::new("own").replication_factor(1)))
            .build();
        let table = parse(&built);
        let expected = [
            ("name", "\"tuned\""),
            ("replication-factor", "2"),
            ("conflict-resolution-policy", "\"last-update-time\""),
            ("default-ttl", "30"),
            ("tombstone-ttl", "60"),
            ("commit-mode", "\"buffered\""),
            ("commit-max-wait-us", "250"),
            ("commit-max-batch", "8"),
            ("storage-dir", "\"data/tuned\""),
        ];
        for (key, value) in expected {
            assert_eq!(at(&table, &format!("sites.0.namespaces.0.{key}")), value, "{key}");
        }
        assert_eq!(at(&table, "sites.0.namespaces.1.name"), "\"other\"");
        assert_eq!(at(&table, "sites.0.namespaces.1.replication-factor"), "1");
        let own = table["sites"].get(1).and_then(|b| b.get("namespaces")).expect("namespaces");
        assert_eq!(own.to_string(), "[{ name = \"own\", replication-factor = 1 }]");
    }

    #[test]
    fn link_knobs_write_every_setting_and_the_simulated_wan() {
        let link = Link::new("a", "b")
            .namespaces(&["test", "other"])
            .enabled(false)
            .period_ms(20)
            .delay_ms(5)
            .hot_key_ms(30)
            .max_throughput(400)
            .ship_only_specified_sets(true)
            .ship_set(&["users", "orders"])
            .ignore_set(&["tmp"])
            .ship_nsup_deletes(true)
            .forward(true)
            .compression_level(3)
            .compression_threshold(64)
            .period_ms(25)
            .simulate_wan(SimulateWan::default().delay_ms(35).jitter_ms(2).loss(0.0).rate_mbit(10));
        let built = TopologyBuilder::new("t")
            .namespace(Namespace::new("test"))
            .namespace(Namespace::new("other"))
            .site("a", 1)
            .site("b", 1)
            .link(link)
            .build();
        let table = parse(&built);
        let expected = [
            ("from", "\"a\""),
            ("to", "\"b\""),
            ("namespaces", "[\"test\", \"other\"]"),
            ("enabled", "false"),
            ("period-ms", "25"),
            ("delay-ms", "5"),
            ("hot-key-ms", "30"),
            ("max-throughput", "400"),
            ("ship-only-specified-sets", "true"),
            ("ship-set", "[\"users\", \"orders\"]"),
            ("ignore-set", "[\"tmp\"]"),
            ("ship-nsup-deletes", "true"),
            ("forward", "true"),
            ("compression-level", "3"),
            ("compression-threshold", "64"),
            ("simulate-wan.delay-ms", "35"),
            ("simulate-wan.jitter-ms", "2"),
            ("simulate-wan.loss", "0.0"),
            ("simulate-wan.rate-mbit", "10"),
        ];
        for (key, value) in expected {
            assert_eq!(at(&table, &format!("links.0.{key}")), value, "{key}");
        }
        assert_eq!(built.text.matches("period-ms").count(), 1, "a setting set twice is replaced");
    }

    #[test]
    fn fixed_ports_and_ips_give_known_addresses_without_binding() {
        let build = || {
            TopologyBuilder::new("t")
                .site("a", 1)
                .add_site(Site::new("b", 1))
                .ports_from(1)
                .ip(AddressKind::Admin, [127, 0, 0, 2])
                .ip(AddressKind::Xdr, std::net::Ipv6Addr::LOCALHOST)
                .build()
        };
        let built = build();
        let addresses: Vec<String> =
            built.nodes.iter().flat_map(|n| n.addresses().map(|a| a.to_string())).collect();
        assert_eq!(
            addresses,
            [
                "127.0.0.1:1",
                "127.0.0.1:2",
                "[::1]:3",
                "127.0.0.2:4",
                "127.0.0.1:5",
                "127.0.0.1:6",
                "[::1]:7",
                "127.0.0.2:8",
            ]
        );
        assert_eq!(build().text, built.text, "fixed ports build the same text every time");
        let table = parse(&built);
        assert_eq!(at(&table, "sites.1.nodes.0.admin"), "\"127.0.0.2:8\"");
        assert_eq!(at(&table, "sites.0.nodes.0.xdr"), "\"[::1]:3\"");
    }

    #[test]
    fn build_like_keeps_the_addresses_of_an_earlier_topology() {
        let builder = |period: u32| {
            TopologyBuilder::new("t")
                .site("a", 2)
                .site("b", 1)
                .link(Link::new("a", "b").period_ms(period))
        };
        let first = builder(20).build();
        let second = builder(50).build_like(&first);
        assert_eq!(second.nodes, first.nodes);
        assert_eq!(second.text, first.text.replace("period-ms = 20", "period-ms = 50"));
    }
}
