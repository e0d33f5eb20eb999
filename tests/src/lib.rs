//! Shared test support for every crate's tests and benches: the typed test-topology builder
//! ([`TopologyBuilder`]) on free loopback ports, and small helpers (`a=b;c=d` stats, one HTTP
//! request). End-to-end tests live with the `ferry` binary (`cli/tests/`), where Cargo builds
//! it for them; they start deployments through `ferry::deploy`, as `ferry up` does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The root of the workspace (the directory holding `examples/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Distinct free TCP ports on 127.0.0.1 (bound, then released; a test-only race accepted).
/// Take every port of a topology in one call: ports taken in separate calls may be handed out
/// twice.
///
/// # Panics
///
/// If no port can be bound.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("bind a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap_or_else(|e| panic!("local address: {e}")).port())
        .collect()
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

/// A topology file's text and the nodes it declares.
#[derive(Debug, Clone)]
pub struct TestTopology {
    pub text: String,
    pub nodes: Vec<TestNode>,
}

/// Builds test topologies: sites of nodes on two racks and free loopback ports, namespace
/// `test`, and DR links between the sites.
///
/// Site `i` (from 0) gets src-id `i + 1` and is `active` when it is the first site or ships
/// somewhere, `standby` otherwise. Node `j` of site `s` is `s-j` (`node-j` in a site named
/// `local`), on rack `j % 2`.
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    name: String,
    sites: Vec<(String, usize)>,
    links: Vec<(String, String, String)>,
    replication_factor: u8,
    policy: String,
}

impl TopologyBuilder {
    /// An empty topology named `name`: replication factor 1, `generation` conflict policy.
    pub fn new(name: &str) -> TopologyBuilder {
        TopologyBuilder {
            name: name.to_owned(),
            sites: Vec::new(),
            links: Vec::new(),
            replication_factor: 1,
            policy: "generation".to_owned(),
        }
    }

    /// Adds site `name` with `nodes` nodes.
    pub fn site(mut self, name: &str, nodes: usize) -> TopologyBuilder {
        self.sites.push((name.to_owned(), nodes));
        self
    }

    /// Adds a link `from -> to` shipping namespace `test`, with `settings` as extra TOML lines
    /// (e.g. `period-ms = 20`).
    pub fn link(mut self, from: &str, to: &str, settings: &str) -> TopologyBuilder {
        self.links.push((from.to_owned(), to.to_owned(), settings.to_owned()));
        self
    }

    /// Copies of each partition of namespace `test` in every site.
    pub fn replication_factor(mut self, rf: u8) -> TopologyBuilder {
        self.replication_factor = rf;
        self
    }

    /// The namespace's `conflict-resolution-policy` (`generation` or `last-update-time`).
    pub fn conflict_policy(mut self, policy: &str) -> TopologyBuilder {
        self.policy = policy.to_owned();
        self
    }

    /// The topology text, with every port of every node taken in one [`free_ports`] call.
    pub fn build(self) -> TestTopology {
        let total: usize = self.sites.iter().map(|(_, nodes)| nodes).sum();
        let ports = free_ports(total * 4);
        let mut ports = ports.chunks(4);
        let mut text = format!("name = \"{}\"\n", self.name);
        let mut nodes = Vec::new();
        for (i, (site, count)) in self.sites.iter().enumerate() {
            let ships = self.links.iter().any(|(from, _, _)| from == site);
            let role = if i == 0 || ships { "active" } else { "standby" };
            let src_id = i + 1;
            let _ = write!(
                text,
                "\n[[sites]]\nname = \"{site}\"\nsrc-id = {src_id}\nrole = \"{role}\"\n"
            );
            for j in 0..*count {
                let id = if site == "local" { format!("node-{j}") } else { format!("{site}-{j}") };
                let p = ports.next().unwrap_or_default();
                let addr =
                    |k: usize| SocketAddr::from(([127, 0, 0, 1], p.get(k).copied().unwrap_or(0)));
                let node = TestNode {
                    site: site.clone(),
                    id,
                    client: addr(0),
                    fabric: addr(1),
                    xdr: addr(2),
                    admin: addr(3),
                };
                let _ = write!(
                    text,
                    "\n[[sites.nodes]]\nid = \"{}\"\nrack-id = {}\nclient = \"{}\"\n\
                     fabric = \"{}\"\nxdr = \"{}\"\nadmin = \"{}\"\n",
                    node.id,
                    j % 2,
                    node.client,
                    node.fabric,
                    node.xdr,
                    node.admin
                );
                nodes.push(node);
            }
            let _ = write!(
                text,
                "\n[[sites.namespaces]]\nname = \"test\"\nreplication-factor = {}\n\
                 conflict-resolution-policy = \"{}\"\n",
                self.replication_factor, self.policy
            );
        }
        for (from, to, settings) in &self.links {
            let _ = write!(
                text,
                "\n[[links]]\nfrom = \"{from}\"\nto = \"{to}\"\nnamespaces = [\"test\"]\n{settings}\n"
            );
        }
        TestTopology { text, nodes }
    }
}

/// A one-site topology of `nodes` nodes on two racks, namespace `test` with `rf` copies, on free
/// loopback ports. Returns the file text and each node's (id, client address).
pub fn one_site_topology(nodes: usize, rf: u8) -> (String, Vec<(String, SocketAddr)>) {
    let built =
        TopologyBuilder::new("test-site").site("local", nodes).replication_factor(rf).build();
    (built.text, built.nodes.into_iter().map(|n| (n.id, n.client)).collect())
}

/// Sites `a` (src-id 1) and `b` (src-id 2) of `nodes` nodes each, namespace `test` under
/// `policy`, and a link `a -> b` with the extra TOML `link_a_b`; with `b_to_a` set, also a link
/// `b -> a` with the same settings (active-active).
pub fn two_site_topology(
    nodes: usize,
    policy: &str,
    link_a_b: &str,
    b_to_a: bool,
) -> (String, Vec<TestNode>) {
    let mut links = vec![("a", "b", link_a_b)];
    if b_to_a {
        links.push(("b", "a", link_a_b));
    }
    multi_site_topology(&["a", "b"], nodes, policy, &links)
}

/// Sites named `sites` of `nodes` nodes each, namespace `test` under `policy`, and links
/// `(from, to, extra TOML)`.
pub fn multi_site_topology(
    sites: &[&str],
    nodes: usize,
    policy: &str,
    links: &[(&str, &str, &str)],
) -> (String, Vec<TestNode>) {
    let builder =
        sites.iter().fold(TopologyBuilder::new("xdr-test").conflict_policy(policy), |b, site| {
            b.site(site, nodes)
        });
    let built = links.iter().fold(builder, |b, (from, to, extra)| b.link(from, to, extra)).build();
    (built.text, built.nodes)
}

/// `a=1;b=2` as a map.
pub fn stat_fields(value: &str) -> std::collections::HashMap<String, String> {
    value
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// One HTTP/1.1 request without a body to `addr` (the admin API); returns the status code and
/// the body.
///
/// # Panics
///
/// If the server cannot be reached or answers something that is not HTTP.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the admin API at {addr}: {e}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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

    #[test]
    fn built_topologies_give_every_node_its_own_ports_and_name_roles_by_links() {
        let built = TopologyBuilder::new("t")
            .site("a", 2)
            .site("b", 1)
            .site("c", 1)
            .link("a", "b", "period-ms = 20")
            .build();
        let mut ports: Vec<u16> = built
            .nodes
            .iter()
            .flat_map(|n| [n.client, n.fabric, n.xdr, n.admin].map(|a| a.port()))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16, "four distinct ports per node");
        let ids: Vec<&str> = built.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a-0", "a-1", "b-0", "c-0"]);
        assert!(built.text.contains("name = \"b\"\nsrc-id = 2\nrole = \"standby\""));
        assert!(
            built
                .text
                .contains("from = \"a\"\nto = \"b\"\nnamespaces = [\"test\"]\nperiod-ms = 20")
        );
    }
}
