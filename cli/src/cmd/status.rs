//! `ferry status`: one screen (or one JSON document) for a deployment started by `ferry up`:
//! sites, nodes (up/down, partitions owned, records) and links (state, lag, shipped, queue,
//! errors), read from every node's info port. The JSON schema is in docs/ferry-up.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use ferry::client::{self, ClientError, NamespaceCounts};
use ferry_topology::Topology;
use ferry_xdr::stats::LinkCounters;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// State directory of the deployment.
    #[arg(long, default_value = "ferry-data")]
    dir: PathBuf,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

/// The JSON document (`"schema": 2`).
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    schema: u32,
    dir: String,
    sites: Vec<SiteStatus>,
    links: Vec<LinkStatus>,
}

#[derive(Debug, Serialize)]
struct SiteStatus {
    name: String,
    src_id: u8,
    role: String,
    write_fence: String,
    nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize)]
struct NodeStatus {
    id: String,
    client: String,
    up: bool,
    /// The node's view of its site: membership epoch, nodes in, partitions migrating.
    cluster: client::ClusterCounts,
    namespaces: Vec<NamespaceStatus>,
}

#[derive(Debug, Serialize)]
struct NamespaceStatus {
    name: String,
    records: u64,
    partitions_owned: u64,
}

#[derive(Debug, Serialize)]
struct LinkStatus {
    from: String,
    to: String,
    enabled: bool,
    /// Worst state over the source nodes (`active` only when all are).
    state: String,
    /// Largest lag over the source nodes, in ms.
    lag_ms: u64,
    shipped: u64,
    in_queue: u64,
    /// Records the destination refused for good, parked (`ferry link parked`).
    parked: u64,
    retries: u64,
    nodes: Vec<LinkNodeStatus>,
}

#[derive(Debug, Serialize)]
struct LinkNodeStatus {
    node: String,
    state: String,
    lag_ms: u64,
    shipped: u64,
    in_queue: u64,
    parked: u64,
    retries: u64,
    /// Why the node's shipper last stopped on its own, until it ships again.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("start async runtime")?;
    loop {
        // Read each time: the service's current version is what the nodes follow.
        let topology = super::deployment_topology(None, &args.dir)?;
        let status = runtime.block_on(collect(&topology, &args.dir));
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status).context("encode status")?);
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H");
            }
            print_table(&status);
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub(crate) async fn collect(topology: &Topology, dir: &std::path::Path) -> Status {
    let mut sites = Vec::new();
    for site in &topology.sites {
        let mut nodes = Vec::new();
        for node in &site.nodes {
            let mut up = true;
            let mut namespaces = Vec::new();
            for ns in &site.namespaces {
                let counts =
                    match client::namespace_counts(node.client.addr(), ns.name.as_str()).await {
                        Ok(counts) => counts,
                        Err(error) => {
                            up &= !matches!(error, ClientError::Unreachable { .. });
                            NamespaceCounts::default()
                        }
                    };
                namespaces.push(NamespaceStatus {
                    name: ns.name.to_string(),
                    records: counts.objects,
                    partitions_owned: counts.partitions_owned,
                });
            }
            let cluster = client::cluster_counts(node.client.addr()).await.unwrap_or_default();
            nodes.push(NodeStatus {
                id: node.id.to_string(),
                client: node.client.to_string(),
                up,
                cluster,
                namespaces,
            });
        }
        sites.push(SiteStatus {
            name: site.name.to_string(),
            src_id: site.src_id.get(),
            role: site.role.to_string(),
            write_fence: site.fence().to_string(),
            nodes,
        });
    }
    let mut links = Vec::new();
    for link in &topology.links {
        let mut nodes = Vec::new();
        if let Some(site) = topology.site(link.from.as_str()) {
            for node in &site.nodes {
                let (state, counters, error) =
                    match client::link_stats(node.client.addr(), link.to.as_str()).await {
                        Ok(stats) => (stats.state_name(), stats.counters, stats.error),
                        Err(ClientError::Unreachable { .. }) => {
                            ("unreachable".to_owned(), LinkCounters::default(), None)
                        }
                        Err(_) => ("unknown".to_owned(), LinkCounters::default(), None),
                    };
                let state = if link.enabled { state } else { "disabled".to_owned() };
                nodes.push(LinkNodeStatus {
                    node: node.id.to_string(),
                    state,
                    lag_ms: counters.lag,
                    shipped: counters.success,
                    in_queue: counters.in_queue,
                    parked: counters.parked,
                    retries: counters.retry_conn_reset + counters.retry_dest,
                    error,
                });
            }
        }
        let state = nodes
            .iter()
            .map(|n| n.state.clone())
            .find(|s| s != "active")
            .unwrap_or_else(|| "active".to_owned());
        links.push(LinkStatus {
            from: link.from.to_string(),
            to: link.to.to_string(),
            enabled: link.enabled,
            state,
            lag_ms: nodes.iter().map(|n| n.lag_ms).max().unwrap_or(0),
            shipped: nodes.iter().map(|n| n.shipped).sum(),
            in_queue: nodes.iter().map(|n| n.in_queue).sum(),
            parked: nodes.iter().map(|n| n.parked).sum(),
            retries: nodes.iter().map(|n| n.retries).sum(),
            nodes,
        });
    }
    Status { schema: 2, dir: dir.display().to_string(), sites, links }
}

fn print_table(status: &Status) {
    for site in &status.sites {
        println!(
            "site {} (src-id {}, {}, fence {})",
            site.name, site.src_id, site.role, site.write_fence
        );
        for node in &site.nodes {
            let namespaces: Vec<String> = node
                .namespaces
                .iter()
                .map(|ns| {
                    format!(
                        "{}: {} records, {} partitions",
                        ns.name, ns.records, ns.partitions_owned
                    )
                })
                .collect();
            let up = if node.up { "up" } else { "DOWN" };
            let cluster = &node.cluster;
            let migrating = if !node.up {
                String::new()
            } else if cluster.migrating_out + cluster.migrating_in > 0 {
                format!(
                    "; epoch {}, {} nodes, migrating {} out / {} in",
                    cluster.epoch, cluster.size, cluster.migrating_out, cluster.migrating_in
                )
            } else {
                format!("; epoch {}, {} nodes", cluster.epoch, cluster.size)
            };
            println!(
                "  {:<10} {:<4} {:<18} {}{migrating}",
                node.id,
                up,
                node.client,
                namespaces.join("; ")
            );
        }
    }
    println!(
        "\n{:<24} {:<11} {:>8} {:>10} {:>9} {:>9} {:>8}",
        "link", "state", "lag ms", "shipped", "in_queue", "parked", "retries"
    );
    for link in &status.links {
        println!(
            "{:<24} {:<11} {:>8} {:>10} {:>9} {:>9} {:>8}",
            format!("{} -> {}", link.from, link.to),
            link.state,
            link.lag_ms,
            link.shipped,
            link.in_queue,
            link.parked,
            link.retries
        );
        for node in link.nodes.iter().filter(|n| n.error.is_some()) {
            println!("  {}: {}", node.node, node.error.as_deref().unwrap_or_default());
        }
    }
}
