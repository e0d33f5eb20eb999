//! DR link changes apply live: nodes follow the topology service, and applying a new version
//! enables, reconfigures, disables and removes a link without restarting any process. A
//! disabled link keeps its place in the log, so enabling it ships what was written meanwhile;
//! a removed one drops it. A site's role and write fence apply live too.

mod support;

use std::time::{Duration, Instant};

use aerospike::{Client, ClientPolicy, Error, ResultCode, WritePolicy, as_bin, as_key};
use ferry_tests::{Link, Namespace, Role, Site, TopologyBuilder, WriteFence};
use ferry_topology::store::{ApplyRequest, TopologyStore};
use support::Deployment;

async fn apply(store: &TopologyStore, content: &str, comment: &str) {
    let request = ApplyRequest {
        source: "live.toml".to_owned(),
        content: content.to_owned(),
        author: "test".to_owned(),
        comment: comment.to_owned(),
        expected_parent: None,
    };
    store.apply(request).await.expect("apply a topology version");
}

/// Deploys `first` with the deployment's topology service (version 1), which the nodes follow;
/// returns the deployment and its topology store, where the test applies new versions.
async fn deploy_following(
    first: &str,
    nodes: Vec<ferry_tests::TestNode>,
) -> (Deployment, TopologyStore) {
    let deployment = Deployment::start_spec(first, nodes, |spec| {
        spec.topology_service = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let url = format!("sqlite://{}", deployment.running.state.topology_db().display());
    let store = TopologyStore::open(&url).await.expect("open the deployment's topology store");
    (deployment, store)
}

async fn put_range(client: &Client, keys: std::ops::Range<i64>) {
    let wp = WritePolicy::default();
    for i in keys {
        client.put(&wp, &as_key!("test", "live", i), &[as_bin!("v", i)]).await.expect("put");
    }
}

/// Waits until site `b` holds `records`, or panics after `timeout`.
async fn wait_records(deployment: &Deployment, records: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let held = deployment.site_digest("b").await.records;
        if held == records {
            return;
        }
        assert!(Instant::now() < deadline, "b holds {held} records, expected {records}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_reconfiguring_and_disabling_a_link_apply_without_restarts() {
    // One deployment on the same addresses, with the link a -> b set four ways.
    let sites = |enabled: bool, period: u32| {
        TopologyBuilder::new("xdr-test")
            .sites(&["a", "b"], 2)
            .link(Link::new("a", "b").enabled(enabled).period_ms(period))
    };
    let first = sites(false, 20).build();
    let (disabled, nodes) = (first.text.clone(), first.nodes.clone());
    let enabled = sites(true, 20).build_like(&first).text;
    let slower = sites(true, 50).build_like(&first).text;
    let disabled_again = sites(false, 50).build_like(&first).text;
    let removed = TopologyBuilder::new("xdr-test").sites(&["a", "b"], 2).build_like(&first).text;

    let (deployment, store) = deploy_following(&disabled, nodes).await;
    let seed = deployment.site("a")[0].client.to_string();
    let a = Client::new(&ClientPolicy::default(), &seed).await.expect("connect");

    // Disabled: nothing ships.
    put_range(&a, 0..200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deployment.site_digest("b").await.records, 0, "a disabled link ships nothing");

    // Enabled by a new version: what was written while disabled ships, and new writes too.
    apply(&store, &enabled, "enable the link").await;
    put_range(&a, 200..300).await;
    wait_records(&deployment, 300, Duration::from_secs(60)).await;
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;

    // A settings change restarts the link's shipper; nothing is lost across it.
    apply(&store, &slower, "period-ms 50").await;
    put_range(&a, 300..400).await;
    wait_records(&deployment, 400, Duration::from_secs(60)).await;

    // Disabled again: writes stay home.
    apply(&store, &disabled_again, "disable the link").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    put_range(&a, 400..450).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deployment.site_digest("b").await.records, 400, "a disabled link stops shipping");
    let cursors: Vec<_> = deployment
        .ids("a")
        .iter()
        .map(|id| deployment.running.launcher().node_dir(id).join("digestlog").join("xdr-b.cursor"))
        .collect();
    assert!(cursors.iter().all(|c| c.is_file()), "a disabled link keeps its cursor");

    // Removed: the cursors go, so the logs stop keeping the link's changes.
    apply(&store, &removed, "remove the link").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cursors.iter().any(|c| c.exists()) {
        assert!(Instant::now() < deadline, "a removed link's cursors stayed: {cursors:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_fence_and_a_standby_role_apply_live() {
    let sites = |role: Role, fence: Option<WriteFence>| {
        let a = Site::new("a", 2).role(role);
        let a = match fence {
            Some(fence) => a.write_fence(fence),
            None => a,
        };
        TopologyBuilder::new("xdr-test").add_site(a).site("b", 1).link(Link::new("a", "b"))
    };
    let first = sites(Role::Active, None).build();
    let fenced = sites(Role::Active, Some(WriteFence::ClientWrites)).build_like(&first).text;
    let standby = sites(Role::Standby, None).build_like(&first).text;
    let open_standby = sites(Role::Standby, Some(WriteFence::None)).build_like(&first).text;
    let (deployment, store) = deploy_following(&first.text, first.nodes.clone()).await;
    deployment.wait_applied("a", 1, Duration::from_secs(30)).await;
    let a = deployment.client("a").await;
    let put = |i: i64| {
        let a = &a;
        async move {
            a.put(&WritePolicy::default(), &as_key!("test", "fence", i), &[as_bin!("v", i)]).await
        }
    };
    let refused = |result: Result<(), Error>| {
        result.is_err_and(|e: Error| e.server_result_code() == Some(ResultCode::FailForbidden))
    };
    put(0).await.expect("an active site takes client writes");

    for (version, text, takes_writes) in [
        (2, &fenced, false),
        (3, &first.text, true),
        (4, &standby, false),
        (5, &open_standby, true),
    ] {
        apply(&store, text, "change the fence").await;
        deployment.wait_applied("a", version, Duration::from_secs(30)).await;
        let result = put(version.try_into().expect("small")).await;
        if takes_writes {
            result.unwrap_or_else(|e| panic!("version {version}: a write is taken: {e}"));
        } else {
            assert!(refused(result), "version {version}: a write is refused as forbidden");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aerospikes_xdr_config_commands_show_and_change_a_running_link() {
    let built = TopologyBuilder::new("xdr-test")
        .sites(&["a", "b"], 1)
        .namespace(Namespace::new("test"))
        .namespace(Namespace::new("other"))
        .link(Link::new("a", "b").namespaces(&["test", "other"]).period_ms(20))
        .build();
    let deployment = Deployment::start(&built.text, built.nodes).await;
    let info = |name: String| {
        let deployment = &deployment;
        async move { deployment.info("a", &name).await.remove(0) }
    };
    assert_eq!(info("get-config:context=xdr".into()).await, "dcs=b;src-id=1;trace-sample=0");
    let config = info("get-config:context=xdr;dc=b".into()).await;
    for setting in
        ["period-ms=20", "namespaces=test,other", "max-throughput=100000", "enabled=true"]
    {
        assert!(config.split(';').any(|s| s == setting), "{setting} in {config}");
    }

    // Throttled live to 50 records a second: 200 records take seconds to ship.
    let set = info("set-config:context=xdr;dc=b;namespace=test;max-throughput=50".into()).await;
    assert_eq!(set, "ok");
    let config = info("get-config:context=xdr;dc=b;namespace=test".into()).await;
    assert!(config.split(';').any(|s| s == "max-throughput=50"), "{config}");
    let a = deployment.client("a").await;
    let started = Instant::now();
    put_range(&a, 0..200).await;
    wait_records(&deployment, 200, Duration::from_secs(60)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "shipped at the throttled rate: {:?}",
        started.elapsed()
    );
    assert_eq!(info("set-config:context=xdr;dc=b;max-throughput=100000".into()).await, "ok");

    // Bad values and names change nothing.
    let refused = info("set-config:context=xdr;dc=b;compression-level=99".into()).await;
    assert!(refused.starts_with("ERROR:4:") && refused.contains("compression-level"), "{refused}");
    let unknown = info("set-config:context=xdr;dc=mars;period-ms=5".into()).await;
    assert!(unknown.starts_with("ERROR:2:"), "{unknown}");
    let config = info("get-config:context=xdr;dc=b".into()).await;
    assert!(config.split(';').any(|s| s == "compression-level=1"), "{config}");

    // Each namespace counts its own records.
    let wp = WritePolicy::default();
    for i in 0..7 {
        a.put(&wp, &as_key!("other", "o", i), &[as_bin!("v", i)]).await.expect("put other");
    }
    let success = |stats: &str| {
        let field = stats.split(';').find_map(|f| f.strip_prefix("success="));
        field.and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("success in {stats}"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let test = info("get-stats:context=xdr;dc=b;namespace=test".into()).await;
        let other = info("get-stats:context=xdr;dc=b;namespace=other".into()).await;
        if (success(&test), success(&other)) == (200, 7) {
            assert!(
                test.contains("in_queue=0;") && other.contains("in_queue=0;"),
                "{test}\n{other}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "per-namespace success: {test}\n{other}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = info("get-stats:context=xdr;dc=b;namespace=nope".into()).await;
    assert!(other.starts_with("ERROR:2:"), "{other}");
}
