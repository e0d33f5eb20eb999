//! A destination site's partition map as its nodes know it now: which node masters each
//! partition of each namespace at the site's current membership epoch. A shipper learns it
//! from the destination (the `MAP` request) whenever an acknowledgement shows a newer epoch or
//! a destination node stops answering, and sends each record straight to its current master
//! instead of to the master the topology file alone would name.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_topology::placement::PARTITIONS;
use serde::{Deserialize, Serialize};

/// The masters of every partition of the site's namespaces at one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteMap {
    /// The site's membership epoch (1 in a site without a membership group).
    pub epoch: u64,
    pub namespaces: BTreeMap<String, NamespaceMasters>,
}

/// The masters of one namespace's partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceMasters {
    /// The site's nodes that master some partition.
    pub nodes: Vec<String>,
    /// Per partition, the index of its master in `nodes`.
    pub masters: Vec<u16>,
}

/// A map a peer sent that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiteMapError {
    #[error("undecodable partition map: {0}")]
    Decode(String),
    #[error("namespace '{namespace}' lists {found} partitions, not {PARTITIONS}")]
    Partitions { namespace: String, found: usize },
    #[error("namespace '{namespace}' names master {index} of {nodes} nodes")]
    Master { namespace: String, index: u16, nodes: usize },
}

impl NamespaceMasters {
    /// The masters of `master_of(p)` for every partition `p`.
    pub fn from_fn<'a>(master_of: impl Fn(u16) -> Option<&'a str>) -> Self {
        let mut nodes: Vec<String> = Vec::new();
        let mut masters = Vec::with_capacity(usize::from(PARTITIONS));
        for partition in 0..PARTITIONS {
            let index = match master_of(partition) {
                Some(node) => match nodes.iter().position(|n| n == node) {
                    Some(index) => index,
                    None => {
                        nodes.push(node.to_owned());
                        nodes.len() - 1
                    }
                },
                // No master known: u16::MAX names none, and the shipper keeps its own choice.
                None => usize::from(u16::MAX),
            };
            masters.push(u16::try_from(index).unwrap_or(u16::MAX));
        }
        Self { nodes, masters }
    }
}

impl SiteMap {
    /// The master of `partition` of `namespace`, if the map names one.
    pub fn master(&self, namespace: &str, partition: u16) -> Option<&str> {
        let masters = self.namespaces.get(namespace)?;
        let index = *masters.masters.get(usize::from(partition))?;
        masters.nodes.get(usize::from(index)).map(String::as_str)
    }

    /// The wire form.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses and checks the wire form: every namespace lists every partition, each master
    /// index names a listed node (or none).
    pub fn decode(bytes: &[u8]) -> Result<SiteMap, SiteMapError> {
        let map: SiteMap =
            serde_json::from_slice(bytes).map_err(|e| SiteMapError::Decode(e.to_string()))?;
        for (namespace, masters) in &map.namespaces {
            if masters.masters.len() != usize::from(PARTITIONS) {
                return Err(SiteMapError::Partitions {
                    namespace: namespace.clone(),
                    found: masters.masters.len(),
                });
            }
            let nodes = masters.nodes.len();
            if let Some(&index) =
                masters.masters.iter().find(|&&i| i != u16::MAX && usize::from(i) >= nodes)
            {
                return Err(SiteMapError::Master { namespace: namespace.clone(), index, nodes });
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_maps_that_do_not_cover_the_partitions() {
        let nodes = ["b-0", "b-1", "b-2"];
        let masters =
            NamespaceMasters::from_fn(|p| (p != 7).then(|| nodes[usize::from(p) % nodes.len()]));
        let map = SiteMap { epoch: 4, namespaces: BTreeMap::from([("test".into(), masters)]) };
        let decoded = SiteMap::decode(&map.encode()).expect("decodes");
        assert_eq!(decoded, map);
        assert_eq!(decoded.master("test", 4), Some("b-1"));
        assert_eq!(decoded.master("test", 7), None, "no master known");
        assert_eq!(decoded.master("other", 4), None);

        let mut short = map.clone();
        short.namespaces.get_mut("test").expect("ns").masters.pop();
        assert!(matches!(
            SiteMap::decode(&short.encode()),
            Err(SiteMapError::Partitions { found: 4095, .. })
        ));
        let mut wrong = map;
        wrong.namespaces.get_mut("test").expect("ns").masters[0] = 3;
        assert!(matches!(
            SiteMap::decode(&wrong.encode()),
            Err(SiteMapError::Master { index: 3, nodes: 3, .. })
        ));
        assert!(matches!(SiteMap::decode(b"{"), Err(SiteMapError::Decode(_))));
    }
}
