//! The authenticated control plane with real processes: every route of a node's admin API and
//! of the topology service, tried without credentials, with wrong ones and with a role too
//! weak, is refused (401, 403) and changes nothing; the right role gets through; a revoked
//! token stops working at once, without a restart; the nodes follow the topology service with
//! tokens of their own; and a plain-HTTP listener off loopback is refused.

mod support;

use std::time::{Duration, Instant};

use ferry_auth::{Role, Token};
use ferry_tests::{Link, TopologyBuilder, http};
use ferry_topology::service::{ClientError, TopologyClient};
use ferry_topology::store::ApplyRequest;
use support::{Deployment, ferry_bin};

/// Two sites, a link `a -> b`, the topology service the nodes follow.
async fn deploy() -> Deployment {
    let built = TopologyBuilder::new("control")
        .sites(&["a", "b"], 1)
        .link(Link::new("a", "b").period_ms(20))
        .build();
    Deployment::start_spec(&built.text, built.nodes, |spec| {
        spec.topology_service = Some(([127, 0, 0, 1], 0).into());
    })
    .await
}

/// Every admin API route, with the role it needs.
const ADMIN_ROUTES: &[(&str, &str, Role)] = &[
    ("GET", "/v1/status", Role::ReadOnly),
    ("GET", "/v1/xdr", Role::ReadOnly),
    ("GET", "/v1/xdr/conflicts", Role::ReadOnly),
    ("GET", "/v1/xdr/links/b", Role::ReadOnly),
    ("GET", "/v1/xdr/links/b/unshipped", Role::ReadOnly),
    ("GET", "/v1/verify/test", Role::ReadOnly),
    ("GET", "/v1/verify/test/0", Role::ReadOnly),
    ("GET", "/metrics", Role::ReadOnly),
    ("GET", "/health", Role::ReadOnly),
    ("GET", "/no/such/route", Role::ReadOnly),
    ("POST", "/v1/xdr/links/b/pause", Role::Operator),
    ("POST", "/v1/xdr/links/b/drain", Role::Operator),
    ("POST", "/v1/xdr/links/b/rewind?from_ms=0", Role::Operator),
    ("POST", "/v1/xdr/links/b/resume", Role::Operator),
];

/// Credentials that must get 401 anywhere: none, not a token, and a forged one (a real name
/// with a secret the access file does not know).
fn unauthenticated() -> Vec<(&'static str, Option<String>)> {
    let forged = Token::issue("admin").expect("issue").expose();
    vec![("no token", None), ("not a token", Some("hunter2".to_owned())), ("forged", Some(forged))]
}

/// The link `a -> b`'s state at node a-0.
async fn link_state(deployment: &Deployment) -> String {
    deployment.link_stats("a", "b").await[0].state_name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_callers_without_the_role_it_needs() {
    let deployment = deploy().await;
    let admin = deployment.node("a-0").admin;
    let tokens: Vec<(Role, String)> =
        Role::ALL.into_iter().map(|role| (role, deployment.token(role))).collect();
    assert_eq!(link_state(&deployment).await, "active");

    for &(method, path, needed) in ADMIN_ROUTES {
        for (who, token) in unauthenticated() {
            let (status, body) = http(admin, token.as_deref(), method, path);
            assert_eq!(status, 401, "{method} {path} with {who}: {body}");
        }
        for (role, token) in tokens.iter().filter(|(role, _)| *role < needed) {
            let (status, body) = http(admin, Some(token), method, path);
            assert_eq!(status, 403, "{method} {path} as {role}: {body}");
            assert!(body.contains(needed.as_str()), "the refusal names the role needed: {body}");
        }
    }
    // Nothing a refused request asked for happened: the link was never paused, and no link
    // control reached its handler (each one that does is audited, in order: the operator's
    // pause below is the first).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(link_state(&deployment).await, "active", "a refused pause paused the link");
    let operator = deployment.token(Role::Operator);
    assert_eq!(http(admin, Some(&operator), "POST", "/v1/xdr/links/b/pause").0, 200);
    wait_event(&deployment, "link.pause", "operator").await;
    let controls: Vec<_> = audit_trail(&deployment)
        .into_iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("link.")))
        .collect();
    assert_eq!(controls.len(), 1, "a refused request reached a link control: {controls:#?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while link_state(&deployment).await != "paused" {
        assert!(Instant::now() < deadline, "the operator's pause did not pause the link");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The roles that suffice get through, and every route answers.
    for &(method, path, needed) in ADMIN_ROUTES.iter().filter(|(_, p, _)| !p.contains("such")) {
        for (role, token) in tokens.iter().filter(|(role, _)| *role >= needed) {
            let (status, body) = http(admin, Some(token), method, path);
            assert_eq!(status, 200, "{method} {path} as {role}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_service_refuses_callers_without_the_role_it_needs() {
    let deployment = deploy().await;
    let url = deployment.topology_service_url();
    let service_addr = url.trim_start_matches("http://").parse().expect("service address");
    let reads = [
        "/v1/topology",
        "/v1/topology/versions",
        "/v1/topology/versions/1",
        "/v1/topology/watch?after=1&timeout_ms=10",
    ];
    let tokens: Vec<(Role, String)> =
        Role::ALL.into_iter().map(|role| (role, deployment.token(role))).collect();
    for path in reads {
        for (who, token) in unauthenticated() {
            let (status, body) = http(service_addr, token.as_deref(), "GET", path);
            assert_eq!(status, 401, "GET {path} with {who}: {body}");
        }
        for (role, token) in &tokens {
            let (status, body) = http(service_addr, Some(token), "GET", path);
            assert!(matches!(status, 200 | 204), "GET {path} as {role}: {status} {body}");
        }
    }

    // An apply that would disable the link: refused for everyone but an admin.
    let current = deployment.topology_service().current().await.expect("current");
    let disabled = current.content.replace("[[links]]", "[[links]]\nenabled = false");
    assert_ne!(disabled, current.content, "the test's change must change something");
    let request = ApplyRequest {
        source: "control.toml".to_owned(),
        content: disabled,
        author: "intruder".to_owned(),
        comment: String::new(),
        expected_parent: None,
    };
    let mut callers: Vec<(String, Option<Token>, u16)> = unauthenticated()
        .into_iter()
        .map(|(who, token)| (who.to_owned(), token.and_then(|t| Token::parse(&t).ok()), 401))
        .collect();
    for (role, token) in tokens.iter().filter(|(role, _)| *role < Role::Admin) {
        callers.push((role.to_string(), Token::parse(token).ok(), 403));
    }
    for (who, token, refused) in callers {
        match TopologyClient::new(url, token).apply(&request).await {
            Err(ClientError::Refused { status, .. }) => assert_eq!(status, refused, "{who}"),
            other => panic!("an apply by {who} was answered {other:?}"),
        }
    }
    let admin = deployment.topology_service();
    assert_eq!(admin.current().await.expect("current").version, 1, "a refused apply stored one");
    assert_eq!(link_state(&deployment).await, "active");

    // The admin's apply goes through, records who applied it, and the nodes (following the
    // service with their own read-only tokens) apply it.
    let applied = admin.apply(&request).await.expect("the admin applies");
    assert!(matches!(applied, ferry_topology::store::Applied::Created { version: 2 }));
    let version = admin.current().await.expect("current");
    assert_eq!(version.author, "intruder via admin");
    for site in ["a", "b"] {
        deployment.wait_applied(site, 2, Duration::from_secs(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_without_a_restart() {
    let deployment = deploy().await;
    let admin = deployment.node("a-0").admin;
    let state = &deployment.running.state;
    let access = state.access().display().to_string();
    let credential = deployment.dir.path().join("auditor.token");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(ferry_bin())
            .args(args)
            .args(["--access", &access])
            .output()
            .expect("run ferry access");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    };
    let out = credential.display().to_string();
    run(&["access", "grant", "auditor", "--role", "read-only", "--out", &out]);
    let token = ferry_auth::access::read_credential(&credential).expect("credential").expose();
    assert_eq!(http(admin, Some(&token), "GET", "/v1/status").0, 200);
    assert!(run(&["access", "list"]).contains("auditor"));

    run(&["access", "revoke", "auditor"]);
    assert_eq!(http(admin, Some(&token), "GET", "/v1/status").0, 401);
    assert!(!run(&["access", "list"]).contains("auditor"));
    // The others' tokens still work.
    assert_eq!(http(admin, Some(&deployment.token(Role::ReadOnly)), "GET", "/v1/status").0, 200);
}

#[test]
fn plain_http_off_loopback_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let output = std::process::Command::new(ferry_bin())
        .args(["topology", "serve", "--listen", "0.0.0.0:0", "--store", &store])
        .args(["--access", &dir.path().join("access.toml").display().to_string()])
        .output()
        .expect("run ferry topology serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served plain HTTP on 0.0.0.0");
    assert!(stderr.contains("loopback"), "{stderr}");
}

/// The deployment's audit trail, as `ferry audit --json` prints it.
fn audit_trail(deployment: &Deployment) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = deployment.ferry(&["audit", "--json", "--limit", "1000"]);
    assert_eq!(code, 0, "ferry audit: {stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Waits until the trail holds an event with `action` and `actor`; returns it.
async fn wait_event(deployment: &Deployment, action: &str, actor: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let trail = audit_trail(deployment);
        if let Some(event) = trail.iter().find(|e| e["action"] == action && e["actor"] == actor) {
            return event.clone();
        }
        assert!(Instant::now() < deadline, "no {action} by {actor} in the trail: {trail:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_who_changed_what_from_where() {
    let deployment = deploy().await;
    let admin_api = deployment.node("a-0").admin;
    let operator = deployment.token(Role::Operator);
    let read_only = deployment.token(Role::ReadOnly);

    // A refused pause is not an action: it leaves no event.
    assert_eq!(http(admin_api, Some(&read_only), "POST", "/v1/xdr/links/b/pause").0, 403);
    // An operator's pause through the admin API, reported by the node with its own token.
    assert_eq!(http(admin_api, Some(&operator), "POST", "/v1/xdr/links/b/pause").0, 200);
    let paused = wait_event(&deployment, "link.pause", "operator").await;
    assert_eq!(paused["target"], "a -> b");
    assert_eq!(paused["outcome"], "ok");
    assert_eq!(paused["recorded_by"], "node-a-0", "{paused}");
    assert!(paused["origin"].as_str().is_some_and(|o| o.starts_with("127.0.0.1:")), "{paused}");

    // `ferry link` goes through the admin API with the deployment's admin credential.
    deployment.ferry_link(&["resume", "a:b"]);
    let resumed = wait_event(&deployment, "link.resume", "admin").await;
    assert_eq!(resumed["target"], "a -> b");

    // A topology version applied through the service: who, from where, which version.
    let service = deployment.topology_service();
    let current = service.current().await.expect("current");
    let renamed = current.content.replacen("name = \"control\"", "name = \"control-2\"", 1);
    let request = ApplyRequest {
        source: "control.toml".to_owned(),
        content: renamed,
        author: String::new(),
        comment: "rename".to_owned(),
        expected_parent: None,
    };
    service.apply(&request).await.expect("the admin applies");
    let applied = wait_event(&deployment, "topology.apply", "admin").await;
    assert_eq!(applied["target"], "version 2");
    assert_eq!(applied["recorded_by"], "admin");
    assert!(applied["detail"].as_str().is_some_and(|d| d.contains("rename")), "{applied}");
    let first = wait_event(&deployment, "topology.apply", "ferry up").await;
    assert_eq!(first["target"], "version 1");

    // Nothing else: the refused pause left no trace.
    let trail = audit_trail(&deployment);
    let pauses = trail.iter().filter(|e| e["action"] == "link.pause").count();
    assert_eq!(pauses, 1, "{trail:#?}");

    // A report cannot forge what the service records itself.
    let forged = ferry_topology::audit::AuditEvent::now("admin", "", "topology.apply", "version 9");
    let refused =
        TopologyClient::new(deployment.topology_service_url(), None).record(&forged).await;
    assert!(matches!(refused, Err(ClientError::Refused { status: 401, .. })), "{refused:?}");
    let read_only = Token::parse(&read_only).expect("token");
    let reporter = TopologyClient::new(deployment.topology_service_url(), Some(read_only));
    match reporter.record(&forged).await {
        Err(ClientError::Refused { status: 422, .. }) => {}
        other => panic!("a reported topology.apply was answered {other:?}"),
    }
}
