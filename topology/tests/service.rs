//! The topology service over real HTTP on loopback: apply, read, long-poll watch, errors, the
//! watcher's recovery when the service comes back, and the gate (tokens and roles).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_auth::{AccessFile, AccessList, Gate, Role, Token};
use ferry_topology::service::{ClientError, TopologyClient, serve, spawn_watcher};
use ferry_topology::store::{Applied, ApplyRequest, TopologyStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const EXAMPLE: &str = include_str!("../../examples/two-sites.toml");

fn request(content: &str, expected_parent: Option<i64>) -> ApplyRequest {
    ApplyRequest {
        source: "two-sites.toml".into(),
        content: content.into(),
        author: "tester".into(),
        comment: String::new(),
        expected_parent,
    }
}

fn variant(n: usize) -> String {
    EXAMPLE.replace("name = \"two-sites\"", &format!("name = \"v{n}\""))
}

/// An access file under a test's directory accepting one token of each role.
struct Access {
    path: std::path::PathBuf,
    tokens: Vec<(Role, Token)>,
}

impl Access {
    fn new(dir: &Path) -> Access {
        let mut list = AccessList::default();
        let tokens = Role::ALL
            .into_iter()
            .map(|role| {
                let token = Token::issue(role.as_str()).expect("issue");
                list.grant(&token, role);
                (role, token)
            })
            .collect();
        let path = dir.join("access.toml");
        list.save(&path).expect("save access file");
        Access { path, tokens }
    }

    fn token(&self, role: Role) -> Token {
        self.tokens.iter().find(|(r, _)| *r == role).map(|(_, t)| t.clone()).expect("token")
    }
}

struct Running {
    base: String,
    /// A client with the admin token.
    client: TopologyClient,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `store` on `listener` behind `access`.
async fn start(store: TopologyStore, listener: TcpListener, access: &Access) -> Running {
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    let file = AccessFile::open(&access.path).expect("open access file");
    let gate = Gate::new(std::sync::Arc::new(file), ferry_topology::service::required_role);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, store, gate, async {
        let _ = stopped.await;
    }));
    let client = TopologyClient::new(&base, Some(access.token(Role::Admin)));
    Running { client, base, stop: Some(stop), task }
}

/// A service on port 0 over an empty SQLite store at `<dir>/t.db`, behind a fresh [`Access`].
async fn serve_empty_store() -> (tempfile::TempDir, Access, Running) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("t.db").display().to_string();
    let store = TopologyStore::open(&url).await.expect("store");
    let access = Access::new(dir.path());
    let running =
        start(store, TcpListener::bind("127.0.0.1:0").await.expect("bind"), &access).await;
    (dir, access, running)
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task").expect("server ran");
    }
}

#[tokio::test]
async fn apply_read_and_watch_over_http() {
    let (dir, access, running) = serve_empty_store().await;
    let client = &running.client;

    match client.current().await {
        Err(ClientError::Refused { status: 404, .. }) => {}
        other => panic!("empty store should answer 404: {other:?}"),
    }
    assert_eq!(
        client.apply(&request(EXAMPLE, None)).await.expect("apply"),
        Applied::Created { version: 1 }
    );
    assert_eq!(
        client.apply(&request(EXAMPLE, None)).await.expect("apply"),
        Applied::Unchanged { version: 1 }
    );
    assert_eq!(client.current().await.expect("current").topology.name, "two-sites");

    // Invalid files come back as 422 with positioned diagnostics.
    let broken = EXAMPLE.replace("src-id = 2", "src-id = 1");
    match client.apply(&request(&broken, None)).await {
        Err(ClientError::Refused { status: 422, diagnostics, .. }) => {
            let first = diagnostics.first().expect("a diagnostic");
            assert_eq!(first.field, "sites[1].src-id");
            assert!(first.line > 1);
        }
        other => panic!("invalid apply should answer 422: {other:?}"),
    }
    // A stale compare-and-set is 409.
    match client.apply(&request(&variant(9), Some(0))).await {
        Err(ClientError::Refused { status: 409, message, .. }) => {
            assert!(message.contains("conflict"), "{message}")
        }
        other => panic!("stale apply should answer 409: {other:?}"),
    }

    // A body that is not an apply request gets the same JSON error shape.
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/topology", running.base))
        .bearer_auth(access.token(Role::Admin).expose())
        .header("content-type", "application/json")
        .body("{\"content\": 1}")
        .send()
        .await
        .expect("post");
    assert_eq!(raw.status(), 400);
    let body: serde_json::Value = raw.json().await.expect("JSON error body");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");

    // A watch with nothing newer times out empty.
    assert!(client.watch(1, Duration::from_millis(200)).await.expect("watch").is_none());

    // A waiting watch is answered by an apply through the service…
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.watch(1, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.apply(&request(&variant(2), None)).await.expect("apply");
    let seen = waiting.await.expect("task").expect("watch").expect("a newer version");
    assert_eq!(seen.version, 2);

    // …and by a version written straight to the store by another process, within a second.
    let watcher = spawn_watcher(client.clone());
    let url = dir.path().join("t.db").display().to_string();
    let direct = TopologyStore::open(&url).await.expect("second handle");
    let started = Instant::now();
    direct.apply(request(&variant(3), None)).await.expect("apply directly");
    let mut watcher = watcher;
    tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if watcher.borrow().as_ref().is_some_and(|v| v.version == 3) {
                break;
            }
            watcher.changed().await.expect("watcher alive");
        }
    })
    .await
    .expect("watcher learned of version 3 within a second");
    assert!(started.elapsed() < Duration::from_secs(1));
    running.stop().await;
}

#[tokio::test]
async fn watcher_retries_until_the_service_is_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("t.db").display().to_string();
    let store = TopologyStore::open(&url).await.expect("store");
    store.apply(request(EXAMPLE, None)).await.expect("apply");

    // Reserve a port, leave it closed for a while, then serve on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    drop(listener);
    let access = Access::new(dir.path());
    let client = TopologyClient::new(&format!("http://{addr}"), Some(access.token(Role::ReadOnly)));
    let mut watcher = spawn_watcher(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watcher.borrow().is_none(), "nothing can be known while the service is down");

    let running = start(store, TcpListener::bind(addr).await.expect("rebind"), &access).await;
    tokio::time::timeout(Duration::from_secs(10), watcher.changed())
        .await
        .expect("watcher recovered")
        .expect("watcher alive");
    assert_eq!(watcher.borrow().as_ref().map(|v| v.version), Some(1));
    running.stop().await;
}

#[tokio::test]
async fn callers_need_a_token_with_the_role_the_route_needs() {
    let (_dir, access, running) = serve_empty_store().await;
    let base = running.base.as_str();
    running.client.apply(&request(EXAMPLE, None)).await.expect("the admin applies");
    let forged = Token::issue("admin").expect("issue");
    let clients = [
        ("no token", TopologyClient::new(base, None), 401),
        ("an unknown token", TopologyClient::new(base, Some(forged)), 401),
        ("a read-only token", TopologyClient::new(base, Some(access.token(Role::ReadOnly))), 403),
        ("an operator token", TopologyClient::new(base, Some(access.token(Role::Operator))), 403),
    ];
    for (who, client, refused) in &clients {
        match client.apply(&request(&variant(2), None)).await {
            Err(ClientError::Refused { status, .. }) => assert_eq!(status, *refused, "{who}"),
            other => panic!("an apply with {who} answered {other:?}"),
        }
        let reads = client.current().await;
        match (refused, reads) {
            (401, Err(ClientError::Refused { status: 401, .. })) => {}
            (403, Ok(version)) => assert_eq!(version.version, 1, "{who} reads"),
            (_, other) => panic!("a read with {who} answered {other:?}"),
        }
    }
    let current = running.client.current().await.expect("current");
    assert_eq!(current.version, 1, "a refused apply stored a version");
    assert_eq!(current.author, "tester via admin", "the author is the token that applied");
    running.stop().await;
}
