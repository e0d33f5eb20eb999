//! The demo `ferry up` runs with the built-in example: a few writes at the active site with the
//! `aerospike` crate client, each shown arriving at the other site with its measured lag.

use std::time::{Duration, Instant};

use aerospike::{Bins, Client, ClientPolicy, ReadPolicy, Value, WritePolicy, as_bin, as_key};
use anyhow::{Context as _, bail};
use ferry_topology::Topology;
use ferry_topology::model::Site;

const RECORDS: usize = 3;

/// Seed list of a site's client addresses.
pub(crate) fn seeds(site: &Site) -> String {
    site.nodes.iter().map(|n| n.client.to_string()).collect::<Vec<_>>().join(",")
}

pub(crate) async fn run(topology: &Topology) -> anyhow::Result<()> {
    let Some(link) = topology.links.iter().find(|l| l.enabled) else {
        bail!("no enabled link to demonstrate");
    };
    let (from, to) = match (topology.site(link.from.as_str()), topology.site(link.to.as_str())) {
        (Some(from), Some(to)) => (from, to),
        _ => bail!("link {} -> {} names an unknown site", link.from, link.to),
    };
    let namespace = link.namespaces.first().context("the link ships no namespace")?.to_string();
    let policy = ClientPolicy::default();
    let source = Client::new(&policy, &seeds(from)).await.context("connect to the source site")?;
    let destination =
        Client::new(&policy, &seeds(to)).await.context("connect to the destination site")?;
    say!(
        "\ndemo: {RECORDS} writes at {} with the aerospike crate, read back at {}",
        from.name,
        to.name
    );
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for i in 0..RECORDS {
        let key = as_key!(namespace.as_str(), "demo", format!("demo-{i}"));
        let value = format!("hello from {} at {stamp} #{i}", from.name);
        let written = Instant::now();
        source
            .put(&WritePolicy::default(), &key, &[as_bin!("msg", value.as_str())])
            .await
            .with_context(|| format!("write demo-{i} at {}", from.name))?;
        let deadline = written + Duration::from_secs(10);
        loop {
            let read = destination.get(&ReadPolicy::default(), &key, Bins::All).await;
            if let Ok(record) = &read
                && record.bins.get("msg") == Some(&Value::from(value.as_str()))
            {
                say!(
                    "  demo-{i}: written at {}, arrived at {} after {} ms: msg = \"{value}\"",
                    from.name,
                    to.name,
                    written.elapsed().as_millis()
                );
                break;
            }
            if Instant::now() >= deadline {
                bail!("demo-{i} did not arrive at {} within 10 s", to.name);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    source.close().await.ok();
    destination.close().await.ok();
    Ok(())
}
