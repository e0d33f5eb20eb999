//! Per-site key custody with real processes: the nodes `ferry up`'s deployment starts read
//! their certificates from their own directories, which hold every site's CA certificate and
//! the node's own certificate and key only, so a node cannot present another node's or
//! another site's identity with the keys it can read; and the link still ships. A site added
//! to a running deployment is trusted by the running nodes without a restart: they reload
//! their certificate directory when the topology or its files change.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aerospike::{WritePolicy, as_bin, as_key};
use ferry_tests::{Link, TopologyBuilder};
use ferry_transport::certs::{CertificateAuthority, NodeCredentials};
use ferry_transport::{NodeId, SiteName};
use support::Deployment;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry").path()) {
        if entry.is_dir() {
            found.extend(files(&entry));
        } else {
            found.push(entry);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_no_key_but_its_own_and_cannot_pass_as_another_site() {
    let built = TopologyBuilder::new("custody")
        .sites(&["a", "b"], 2)
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    let deployment = Deployment::start(&built.text, built.nodes).await;
    let launcher = deployment.running.launcher();
    let (site_a, site_b) =
        (SiteName::try_from("a").expect("a"), SiteName::try_from("b").expect("b"));
    for id in ["a-0", "a-1", "b-0", "b-1"] {
        let node_dir = launcher.node_dir(id);
        let keys: Vec<String> = files(&node_dir)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "key"))
            .map(|f| f.strip_prefix(&node_dir).expect("under").display().to_string())
            .collect();
        let own_site = &id[..1];
        assert_eq!(keys, [format!("certs/{own_site}/{id}.key")], "the only key {id} can read");
        let certs = launcher.node_certs_dir(id);
        for site in [&site_a, &site_b] {
            assert!(CertificateAuthority::load(&certs, site).is_err(), "{id} can mint for {site}");
        }
        for other in ["a-0", "a-1", "b-0", "b-1"].into_iter().filter(|o| *o != id) {
            let site = if other.starts_with('a') { &site_a } else { &site_b };
            let node = NodeId::try_from(other).expect("node id");
            assert!(
                NodeCredentials::load(&certs, site, &node).is_err(),
                "{id} can present {other}'s identity"
            );
        }
    }

    // The nodes run on those directories: a write at a reaches b.
    let client = deployment.client("a").await;
    let key = as_key!("test", "custody", 1);
    client.put(&WritePolicy::default(), &key, &[as_bin!("v", 1)]).await.expect("put");
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_added_to_a_running_deployment_is_trusted_without_a_restart() {
    let sites = |with_c: bool| {
        let builder = TopologyBuilder::new("custody")
            .sites(&["a", "b"], 1)
            .link(Link::new("a", "b").period_ms(20).hot_key_ms(20));
        if with_c {
            builder.site("c", 1).link(Link::new("a", "c").period_ms(20).hot_key_ms(20))
        } else {
            builder
        }
    };
    let full = sites(true).build();
    let start = sites(false).build_like(&full);
    let mut deployment = Deployment::start_spec(&start.text, full.nodes.clone(), |spec| {
        spec.topology_service = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let pids = [deployment.pid("a-0"), deployment.pid("b-0")];
    let client = deployment.client("a").await;
    for i in 0..50 {
        let key = as_key!("test", "custody", i);
        client.put(&WritePolicy::default(), &key, &[as_bin!("v", i)]).await.expect("put");
    }
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;

    // The operator adds site c with a link a -> c: certificates, the new version, c's node.
    std::fs::write(deployment.topology_file(), &full.text).expect("rewrite the topology file");
    deployment.running.add_sites().expect("issue c's certificates to the running nodes");
    let request = ferry_topology::store::ApplyRequest {
        source: "custody.toml".to_owned(),
        content: full.text.clone(),
        author: String::new(),
        comment: "add site c".to_owned(),
        expected_parent: None,
    };
    deployment.topology_service().apply(&request).await.expect("publish site c");
    deployment.running.start_added_node("c-0").await.expect("start c-0");

    // a ships everything to c, over mutual TLS with a CA it did not know when it started.
    deployment.wait_converged("a", "c", Duration::from_secs(60)).await;
    assert_eq!(deployment.site_digest("c").await.records, 50);
    assert_eq!([deployment.pid("a-0"), deployment.pid("b-0")], pids, "a node was restarted");
    let log =
        std::fs::read_to_string(deployment.running.launcher().node_dir("a-0").join("node.log"))
            .expect("a-0's log");
    assert!(!log.contains("not trusted until"), "a-0 did not trust c at once:\n{log}");
}
