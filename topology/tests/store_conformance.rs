//! One conformance suite for every topology store backend: SQLite (a temp file) and PostgreSQL
//! (a fresh database on the server named by `FERRY_TEST_POSTGRES_URL`, which `.ci/test` starts).

use std::sync::atomic::{AtomicU32, Ordering};

use ferry_topology::audit::AuditEvent;
use ferry_topology::security::SecurityUpdate;
use ferry_topology::store::{Applied, ApplyRequest, StoreError, TopologyStore};
use sqlx::{Connection, Executor};

const EXAMPLE: &str = include_str!("../../examples/two-sites.toml");

fn request(content: &str, comment: &str, expected_parent: Option<i64>) -> ApplyRequest {
    ApplyRequest {
        source: "two-sites.toml".into(),
        content: content.into(),
        author: "tester".into(),
        comment: comment.into(),
        expected_parent,
    }
}

/// The example with its deployment name changed: a distinct, valid version.
fn variant(n: usize) -> String {
    EXAMPLE.replace("name = \"two-sites\"", &format!("name = \"two-sites-{n}\""))
}

async fn suite(url: &str) {
    let store = TopologyStore::open(url).await.expect("open store");

    // Empty store.
    assert_eq!(store.head().await.expect("head"), None);
    assert!(matches!(store.current().await, Err(StoreError::Empty)));

    // First version, read back whole.
    let applied = store.apply(request(EXAMPLE, "first", None)).await.expect("apply");
    assert_eq!(applied, Applied::Created { version: 1 });
    let current = store.current().await.expect("current");
    assert_eq!(current.version, 1);
    assert_eq!(current.parent, None);
    assert_eq!(current.content, EXAMPLE);
    assert_eq!(current.author, "tester");
    assert_eq!(current.comment, "first");
    assert_eq!(current.topology.sites.len(), 2);
    assert!(current.created_at_ms > 0);

    // Same content again stores nothing.
    let again = store.apply(request(EXAMPLE, "again", None)).await.expect("apply");
    assert_eq!(again, Applied::Unchanged { version: 1 });

    // Invalid content changes nothing and says why.
    let broken = EXAMPLE.replace("namespaces = [\"test\"]", "namespaces = [\"tset\"]");
    match store.apply(request(&broken, "broken", None)).await {
        Err(StoreError::Invalid(invalid)) => {
            assert!(invalid.to_string().contains("'tset', which no site defines"), "{invalid}");
        }
        other => panic!("invalid file was not refused: {other:?}"),
    }
    assert_eq!(store.head().await.expect("head"), Some(1));

    // The audit trail has the version (and nothing for the unchanged or refused applies).
    let trail = store.audit_trail(10).await.expect("audit trail");
    assert_eq!(trail.len(), 1, "{trail:?}");
    let applied = &trail[0];
    assert_eq!((applied.id, applied.action.as_str()), (1, "topology.apply"));
    assert_eq!((applied.actor.as_str(), applied.target.as_str()), ("tester", "version 1"));
    assert_eq!((applied.origin.as_str(), applied.recorded_by.as_str()), ("store", "store"));
    assert!(applied.detail.contains("first"), "{applied:?}");
    let reported = AuditEvent::now("ops", "127.0.0.1:9", "link.pause", "a -> b").outcome("ok");
    let recorded = store.record(reported).await.expect("record");
    assert_eq!(recorded.id, 2);
    let trail = store.audit_trail(1).await.expect("audit trail");
    assert_eq!(trail, vec![recorded], "the newest event, as recorded");

    // Second version records its parent; history is in order.
    let second = store.apply(request(&variant(2), "second", Some(1))).await.expect("apply");
    assert_eq!(second, Applied::Created { version: 2 });
    assert_eq!(store.get(2).await.expect("get").parent, Some(1));
    let history = store.history().await.expect("history");
    let numbers: Vec<i64> = history.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(history[1].comment, "second");

    // A stale compare-and-set is a conflict and changes nothing.
    match store.apply(request(&variant(3), "stale", Some(1))).await {
        Err(StoreError::Conflict { current: 2, .. }) => {}
        other => panic!("stale apply was not a conflict: {other:?}"),
    }
    assert_eq!(store.head().await.expect("head"), Some(2));

    // Concurrent writers from separate pools: exactly one wins each round.
    let other = TopologyStore::open(url).await.expect("open second handle");
    for round in 0..5 {
        let head = store.head().await.expect("head");
        let a = store.apply(request(&variant(100 + round), "a", head));
        let b = other.apply(request(&variant(200 + round), "b", head));
        let (a, b) = tokio::join!(a, b);
        let wins = [&a, &b].iter().filter(|r| matches!(r, Ok(Applied::Created { .. }))).count();
        let conflicts =
            [&a, &b].iter().filter(|r| matches!(r, Err(StoreError::Conflict { .. }))).count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {a:?} / {b:?}");
    }
    let head = store.head().await.expect("head").expect("versions exist");
    assert_eq!(head, 7);

    // Rollback stores the old content as a new version.
    let rolled = store.rollback(1, "tester", "").await.expect("rollback");
    assert_eq!(rolled, Applied::Created { version: 8 });
    let current = store.current().await.expect("current");
    assert_eq!(current.content, EXAMPLE);
    assert_eq!(current.parent, Some(7));
    assert_eq!(current.comment, "rollback to version 1");

    assert!(matches!(store.get(99).await, Err(StoreError::NotFound(99))));

    // Reopening runs no migration twice and finds everything.
    drop(other);
    let reopened = TopologyStore::open(url).await.expect("reopen");
    assert_eq!(reopened.history().await.expect("history").len(), 8);

    // A row altered behind the store's back is reported as corrupt, naming the version.
    let mut raw = sqlx::AnyConnection::connect(&raw_url(url)).await.expect("raw connection");
    raw.execute("UPDATE topology_versions SET parsed = '{\"name\": 1' WHERE version = 2")
        .await
        .expect("corrupt a row");
    raw.execute(
        "UPDATE topology_versions SET content = REPLACE(content, 'src-id = 2', 'src-id = 9') \
         WHERE version = 3",
    )
    .await
    .expect("alter content");
    match reopened.get(2).await {
        Err(StoreError::Corrupt { version: 2, reason }) => {
            assert!(reason.contains("does not decode"), "{reason}")
        }
        other => panic!("corrupt row not detected: {other:?}"),
    }
    match reopened.get(3).await {
        Err(StoreError::Corrupt { version: 3, reason }) => {
            assert!(reason.contains("does not match"), "{reason}")
        }
        other => panic!("altered row not detected: {other:?}"),
    }
    // The other versions still read.
    assert_eq!(reopened.get(1).await.expect("get").content, EXAMPLE);

    // Events reported while versions are applied: every apply and every event is stored,
    // each event once (an id lost to the other writer is retried, never a failed apply).
    let head = reopened.head().await.expect("head").expect("a version");
    let before = reopened.audit_trail(1_000).await.expect("trail").len();
    let reporters = (0..20).map(|i| {
        let store = reopened.clone();
        tokio::spawn(async move {
            let event = AuditEvent::now("node-x", "127.0.0.1:1", "link.pause", &format!("{i}"));
            store.record(event).await.expect("record an event beside the applies")
        })
    });
    let reporters: Vec<_> = reporters.collect();
    for n in 0..5 {
        let applied = reopened.apply(request(&variant(100 + n), "beside events", None)).await;
        let applied = applied.expect("an apply beside events");
        assert!(matches!(applied, Applied::Created { .. }), "{applied:?}");
    }
    for reporter in reporters {
        reporter.await.expect("reporter");
    }
    let trail = reopened.audit_trail(1_000).await.expect("trail");
    assert_eq!(trail.len(), before + 25, "every apply and every event, once");
    assert_eq!(reopened.head().await.expect("head"), Some(head + 5));

    security_documents(&reopened).await;
}

/// A site's users and roles: none at first, replaced only over the version read, each change
/// stored with its audit event; concurrent writers over one version: exactly one wins.
async fn security_documents(store: &TopologyStore) {
    let update = |expected, users: &str, target: &str| SecurityUpdate {
        expected,
        document: serde_json::json!({ "users": users }),
        event: AuditEvent::now("admin", "127.0.0.1:1", "user.create", target),
    };
    let none = store.security("a").await.expect("read");
    assert_eq!((none.version, none.document), (0, serde_json::json!({})));
    let before = store.audit_trail(10_000).await.expect("trail").len();
    assert_eq!(
        store.update_security("a", update(0, "one", "a/one")).await.expect("first"),
        Some(1)
    );
    assert_eq!(store.update_security("a", update(0, "lost", "a/x")).await.expect("stale"), None);
    assert_eq!(store.update_security("a", update(1, "two", "a/two")).await.expect("next"), Some(2));
    assert_eq!(store.update_security("b", update(0, "b", "b/b")).await.expect("site b"), Some(1));
    let a = store.security("a").await.expect("read a");
    assert_eq!((a.version, a.document), (2, serde_json::json!({ "users": "two" })));

    let writers = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let target = format!("a/w{i}");
            store.update_security("a", update(2, &format!("w{i}"), &target)).await
        })
    });
    let writers: Vec<_> = writers.collect();
    let mut won = 0;
    for writer in writers {
        won += usize::from(writer.await.expect("writer").expect("no store error").is_some());
    }
    assert_eq!(won, 1, "one writer over version 2");
    assert_eq!(store.security("a").await.expect("read").version, 3);
    // Each stored change has its event, and no refused one does.
    let trail = store.audit_trail(10_000).await.expect("trail");
    assert_eq!(trail.len(), before + 4, "{:#?}", &trail[before..]);
    assert!(!trail.iter().any(|e| e.target == "a/x"), "a refused change left an event");
}

fn raw_url(url: &str) -> String {
    if url.contains("://") { url.to_owned() } else { format!("sqlite://{url}") }
}

#[tokio::test]
async fn sqlite_backend_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested").join("topology.db");
    suite(path.to_str().expect("utf-8 path")).await;
}

#[tokio::test]
async fn sqlite_url_backend_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    suite(&url).await;
}

#[tokio::test]
async fn postgres_backend_conforms() {
    let Ok(admin_url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL conformance suite: set FERRY_TEST_POSTGRES_URL (bash .ci/test does)"
        );
        eprintln!("skipped: FERRY_TEST_POSTGRES_URL is not set (bash .ci/test sets it)");
        return;
    };
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let database = format!(
        "ferry_conformance_{}_{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::any::install_default_drivers();
    let mut admin = sqlx::AnyConnection::connect(&admin_url).await.expect("connect to PostgreSQL");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .await
        .expect("create database");
    let (base, _) = admin_url.rsplit_once('/').expect("URL names a database");
    suite(&format!("{base}/{database}")).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .await
        .expect("drop database");
}

#[tokio::test]
async fn unreachable_store_is_a_clear_error() {
    let error = TopologyStore::open("postgres://ferry:secret@127.0.0.1:1/ferry")
        .await
        .expect_err("nothing listens on port 1");
    let message = error.to_string();
    assert!(message.starts_with("connect to topology store postgres://ferry:***@"), "{message}");
    assert!(!message.contains("secret"), "password leaked: {message}");
}
