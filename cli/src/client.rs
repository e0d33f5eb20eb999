//! Typed questions to a node over its info port: what the subcommands, [`crate::deploy`] and
//! the end-to-end tests ask, so each answer is parsed in one place (the stats types' own
//! `from_info`).

use std::net::SocketAddr;

use ferry_node::proto::info;
use ferry_xdr::parked::ParkedRecord;
use ferry_xdr::stats::{LinkSnapshot, ReceiverSnapshot, StatsError, info_fields};

/// Why a node's answer could not be had or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("ask {addr} for {name}: {source}")]
    Unreachable { addr: SocketAddr, name: String, source: std::io::Error },
    #[error("{name} from {addr}: {source}")]
    Answer { addr: SocketAddr, name: String, source: StatsError },
}

/// The value of info `name` at `addr` (empty when the node has no answer for it).
pub async fn ask(addr: SocketAddr, name: &str) -> Result<String, ClientError> {
    let reply = info::ask(addr, &[name]).await.map_err(|source| ClientError::Unreachable {
        addr,
        name: name.to_owned(),
        source,
    })?;
    Ok(reply.into_iter().next().map(|(_, value)| value).unwrap_or_default())
}

async fn ask_parsed<T>(
    addr: SocketAddr,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, StatsError>,
) -> Result<T, ClientError> {
    let value = ask(addr, name).await?;
    parse(&value).map_err(|source| ClientError::Answer { addr, name: name.to_owned(), source })
}

/// The stats of the link to `dc` shipping from the node at `addr`.
pub async fn link_stats(addr: SocketAddr, dc: &str) -> Result<LinkSnapshot, ClientError> {
    ask_parsed(addr, &format!("get-stats:context=xdr;dc={dc}"), LinkSnapshot::from_info).await
}

/// The receiver's stats of the node at `addr`, and the links shipping from it.
pub async fn receiver_stats(addr: SocketAddr) -> Result<ReceiverSnapshot, ClientError> {
    ask_parsed(addr, "get-stats:context=xdr", ReceiverSnapshot::from_info).await
}

/// The records the link to `dc` parked on the node at `addr`, oldest change first, at most
/// `limit`.
pub async fn parked(
    addr: SocketAddr,
    dc: &str,
    limit: usize,
) -> Result<Vec<ParkedRecord>, ClientError> {
    ask_parsed(addr, &format!("xdr-parked:dc={dc};limit={limit}"), |text| {
        if let Some(message) = ferry_xdr::stats::info_error(text) {
            return Err(StatsError::Refused(message.to_owned()));
        }
        serde_json::from_str(text).map_err(|_| bad("parked records", text))
    })
    .await
}

/// What `namespace/<ns>` says of the namespace's size on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceCounts {
    /// Records stored (tombstones not counted).
    pub objects: u64,
    /// Partitions this node is master of.
    pub partitions_owned: u64,
}

/// [`NamespaceCounts`] of namespace `ns` at the node at `addr`.
pub async fn namespace_counts(addr: SocketAddr, ns: &str) -> Result<NamespaceCounts, ClientError> {
    ask_parsed(addr, &format!("namespace/{ns}"), |text| {
        Ok(NamespaceCounts {
            objects: number(text, "objects")?,
            partitions_owned: number(text, "partitions-owned")?,
        })
    })
    .await
}

/// A node's place in its site's cluster, from its `statistics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterCounts {
    /// The membership epoch (Aerospike's `cluster_key`).
    pub epoch: u64,
    /// Nodes in the membership.
    pub size: u64,
    /// Partitions this node masters and still fills other nodes with.
    pub migrating_out: u64,
    /// Partitions this node is being filled for.
    pub migrating_in: u64,
}

/// A node's [`ClusterCounts`].
pub async fn cluster_counts(addr: SocketAddr) -> Result<ClusterCounts, ClientError> {
    ask_parsed(addr, "statistics", |text| {
        let key = field(text, "cluster_key")?;
        Ok(ClusterCounts {
            epoch: u64::from_str_radix(key, 16).map_err(|_| bad("cluster_key", key))?,
            size: number(text, "cluster_size")?,
            migrating_out: number(text, "migrate_tx_partitions_remaining")?,
            migrating_in: number(text, "migrate_rx_partitions_remaining")?,
        })
    })
    .await
}

/// A node's `verify-digest` of a namespace: its versions hashed and XORed, so the digests of
/// a site's nodes XOR into the site's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionDigest {
    /// Versions stored, tombstones included.
    pub records: u64,
    /// Tombstones among them.
    pub tombstones: u64,
    /// XOR of every version's hash.
    pub xor: u64,
}

impl VersionDigest {
    /// Two parts of a site combined.
    pub fn combine(self, other: VersionDigest) -> VersionDigest {
        VersionDigest {
            records: self.records + other.records,
            tombstones: self.tombstones + other.tombstones,
            xor: self.xor ^ other.xor,
        }
    }
}

/// The [`VersionDigest`] of namespace `ns` at the node at `addr`.
pub async fn verify_digest(addr: SocketAddr, ns: &str) -> Result<VersionDigest, ClientError> {
    ask_parsed(addr, &format!("verify-digest:namespace={ns}"), |text| {
        let xor = field(text, "xor")?;
        Ok(VersionDigest {
            records: number(text, "records")?,
            tombstones: number(text, "tombstones")?,
            xor: u64::from_str_radix(xor, 16).map_err(|_| bad("xor", xor))?,
        })
    })
    .await
}

fn field<'a>(text: &'a str, name: &str) -> Result<&'a str, StatsError> {
    info_fields(text)?.get(name).copied().ok_or_else(|| StatsError::Missing(name.to_owned()))
}

fn number(text: &str, name: &str) -> Result<u64, StatsError> {
    let value = field(text, name)?;
    value.parse().map_err(|_| bad(name, value))
}

fn bad(name: &str, value: &str) -> StatsError {
    StatsError::Bad { name: name.to_owned(), value: value.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_numbers_are_read_or_refused_with_the_reason() {
        let text = "objects=12;replication-factor=1;partitions-owned=4096";
        assert_eq!(number(text, "objects"), Ok(12));
        assert_eq!(number(text, "partitions-owned"), Ok(4096));
        assert_eq!(number(text, "tombstones"), Err(StatsError::Missing("tombstones".into())));
        assert_eq!(number("objects=many", "objects"), Err(bad("objects", "many")));
        assert_eq!(
            number("ERROR:20:no namespace", "objects"),
            Err(StatsError::Refused("no namespace".into()))
        );
    }

    #[test]
    fn digests_of_a_sites_nodes_combine() {
        let a = VersionDigest { records: 2, tombstones: 1, xor: 0b1100 };
        let b = VersionDigest { records: 3, tombstones: 0, xor: 0b1010 };
        assert_eq!(a.combine(b), VersionDigest { records: 5, tombstones: 1, xor: 0b0110 });
    }
}
