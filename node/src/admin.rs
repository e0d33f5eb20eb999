//! The node's admin HTTP API (the `admin` address in the topology): the same numbers as the
//! info protocol, as JSON, and the link controls. Every route needs a bearer token the node's
//! access file accepts ([`ferry_auth`]): `read-only` for GET, `operator` for the link controls
//! ([`required_role`]); the API serves plain HTTP on loopback addresses only.
//!
//! - `GET /v1/status`: node, site, the topology service version applied here (0: the file it
//!   started with) and the write fence up, per-namespace records and partitions owned, counters.
//! - `GET /v1/xdr`: the receiver's counters and every link's stats.
//! - `GET /v1/xdr/links/{dc}`: one link's stats (404 if no link to `dc` ships from here).
//! - `GET /v1/xdr/conflicts?limit=N`: the last N (default 100) shipped versions that lost
//!   their conflict here, oldest first.
//! - `GET /v1/xdr/links/{dc}/unshipped`: the records this node changed that the link has not
//!   shipped (past its cursor, or parked) ([`crate::unshipped`]).
//! - `POST /v1/xdr/links/{dc}/pause`, `…/resume`, `…/drain`, `…/rewind?from_ms=T` (T = 0 or absent: all).
//! - `GET /v1/verify/{ns}?until_ms=W`: per partition this node masters, the count and hash of
//!   its versions with LUT ≤ W (absent: all) and how many are newer ([`crate::verify`]).
//! - `GET /v1/verify/{ns}/{partition}`: every version of a partition this node masters.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `GET /health`: 200 while the node serves and can acknowledge writes (the admin API runs
//!   only once storage is open, so this is readiness too); 503 with the reasons otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use ferry_topology::audit::AuditEvent;
use ferry_xdr::ship::LinkCommand;
use ferry_xdr::stats::LinkSnapshot;

use crate::node::NodeState;

/// The role a request needs: `operator` to control a link, `read-only` to read.
pub fn required_role(method: &Method, _path: &str) -> ferry_auth::Role {
    if method == Method::GET { ferry_auth::Role::ReadOnly } else { ferry_auth::Role::Operator }
}

/// Serves the admin API on `listener`, behind `gate`, until `shutdown` resolves.
pub async fn serve(
    state: Arc<NodeState>,
    listener: TcpListener,
    gate: ferry_auth::Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/xdr", get(xdr))
        .route("/v1/xdr/conflicts", get(conflicts))
        .route("/v1/xdr/links/{dc}", get(link))
        .route("/v1/xdr/links/{dc}/unshipped", get(unshipped))
        .route("/v1/xdr/links/{dc}/{action}", post(control))
        .route("/v1/verify/{ns}", get(verify_partitions))
        .route("/v1/verify/{ns}/{partition}", get(verify_versions))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state);
    let app = gate.protect(app);
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let stats = &state.stats;
    let view = state.cluster();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let namespaces: Vec<Value> = state
        .store
        .namespace_names()
        .iter()
        .map(|ns| {
            json!({
                "name": ns,
                "records": state.store.approximate_len(ns).unwrap_or(0),
                "partitions_owned": view.owned_partitions(ns),
                "partitions_filling": view.filling_partitions(ns),
            })
        })
        .collect();
    let membership = state.member_status().map(|member| {
        json!({
            "epoch": member.epoch,
            "leader": member.leader,
            "term": member.term,
            "down": member.down,
            "lease_ms": member.lease_ms,
            "silent_ms": member.silent_ms,
            "pending_partitions": view.membership().pending_partitions(),
        })
    });
    Json(json!({
        "node": state.this_node().id.as_str(),
        "site": state.site().name.as_str(),
        "topology_version": state.topology_version.load(Ordering::SeqCst),
        "write_fence": state.fence.current().to_string(),
        "epoch": view.epoch(),
        "membership": membership,
        "migrations": {
            "migrating": load(&state.migrations.migrating),
            "partitions_sent": load(&state.migrations.partitions_sent),
            "records_sent": load(&state.migrations.records_sent),
            "bytes_sent": load(&state.migrations.bytes_sent),
            "records_received": load(&state.migrations.records_received),
            "records_dropped": load(&state.migrations.records_dropped),
            "records_merged": load(&state.migrations.records_merged),
        },
        "namespaces": namespaces,
        "counters": {
            "reads": load(&stats.reads),
            "writes": load(&stats.writes),
            "deletes": load(&stats.deletes),
            "forwarded": load(&stats.forwarded),
            "errors": load(&stats.errors),
        },
    }))
}

async fn xdr(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let registry = &state.xdr;
    let links: BTreeMap<String, LinkSnapshot> = registry
        .dcs()
        .into_iter()
        .filter_map(|dc| Some((dc.clone(), registry.get(&dc)?.snapshot())))
        .collect();
    Json(json!({ "receiver": registry.receiver_snapshot(), "links": links }))
}

#[derive(Debug, serde::Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn conflicts(
    State(state): State<Arc<NodeState>>,
    Query(query): Query<LimitQuery>,
) -> Response {
    Json(state.xdr.conflicts(query.limit.unwrap_or(100))).into_response()
}

async fn metrics(State(state): State<Arc<NodeState>>) -> Response {
    let text = crate::metrics::render(&state);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn health(State(state): State<Arc<NodeState>>) -> Response {
    let mut failing = Vec::new();
    if let Err(error) = state.store.writable() {
        failing.push(error.to_string());
    }
    if let Err(error) = state.log_healthy() {
        failing.push(format!("digest log: {error}"));
    }
    if failing.is_empty() {
        Json(json!({ "status": "ok" })).into_response()
    } else {
        let body = Json(json!({ "status": "failing", "reasons": failing }));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[derive(Debug, serde::Deserialize)]
struct VerifyQuery {
    until_ms: Option<u64>,
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Runs a store scan on the blocking pool (verification reads whole partitions; the workers
/// answering clients must not wait behind it) and answers its result as JSON.
async fn scan_answer<T: serde::Serialize + Send + 'static>(
    scan: impl FnOnce() -> Result<T, crate::storage::StoreError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(scan).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(error)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

fn unknown_namespace(ns: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, format!("namespace '{ns}' is not served here"))
}

async fn verify_partitions(
    State(state): State<Arc<NodeState>>,
    Path(ns): Path<String>,
    Query(query): Query<VerifyQuery>,
) -> Response {
    if !state.store.has_namespace(&ns) {
        return unknown_namespace(&ns);
    }
    let until_ms = query.until_ms.unwrap_or(u64::MAX);
    scan_answer(move || {
        let owned = (0..ferry_topology::placement::PARTITIONS)
            .filter(|&p| state.cluster().is_master(&ns, p));
        let partitions = owned
            .map(|p| crate::verify::summarize_partition(&state.store, &ns, p, until_ms))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "node": state.this_node().id.as_str(), "partitions": partitions }))
    })
    .await
}

async fn verify_versions(
    State(state): State<Arc<NodeState>>,
    Path((ns, partition)): Path<(String, u16)>,
) -> Response {
    if !state.store.has_namespace(&ns) {
        return unknown_namespace(&ns);
    }
    if !state.cluster().is_master(&ns, partition) {
        let message = format!("partition {partition} of '{ns}' is not mastered here");
        return error_response(StatusCode::NOT_FOUND, message);
    }
    scan_answer(move || {
        let versions = crate::verify::list_partition(&state.store, &ns, partition)?;
        Ok(json!({ "partition": partition, "versions": versions }))
    })
    .await
}

fn no_link(dc: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, format!("no link to dc '{dc}' ships from this node"))
}

async fn link(State(state): State<Arc<NodeState>>, Path(dc): Path<String>) -> Response {
    match state.xdr.get(&dc) {
        Some(stats) => Json(stats.snapshot()).into_response(),
        None => no_link(&dc),
    }
}

async fn unshipped(State(state): State<Arc<NodeState>>, Path(dc): Path<String>) -> Response {
    use crate::unshipped::UnshippedError;
    match crate::unshipped::unshipped(state, dc).await {
        Ok(report) => Json(report).into_response(),
        Err(error @ (UnshippedError::NoLink(_) | UnshippedError::NoCursor(_))) => {
            error_response(StatusCode::NOT_FOUND, error.to_string())
        }
        Err(error) => error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

#[derive(Debug, serde::Deserialize)]
struct RewindQuery {
    from_ms: Option<u64>,
}

async fn control(
    State(state): State<Arc<NodeState>>,
    axum::Extension(caller): axum::Extension<ferry_auth::Principal>,
    Path((dc, action)): Path<(String, String)>,
    Query(query): Query<RewindQuery>,
) -> Response {
    let Some(command) = LinkCommand::parse(&action, query.from_ms.unwrap_or(0)) else {
        let message = format!("unknown action '{action}': pause, resume, rewind or drain");
        return error_response(StatusCode::BAD_REQUEST, message);
    };
    let done = state.xdr.command(&dc, command);
    let target = format!("{} -> {dc}", state.site().name);
    let event = AuditEvent::now(&caller.name, &caller.origin(), &format!("link.{action}"), &target)
        .detail(format!("node {} (admin API){}", state.this_node().id, rewind_from(&query)))
        .outcome(if done { "ok" } else { "no such link here" });
    state.audit.record(event);
    if done { Json(json!({ "dc": dc, "action": action })).into_response() } else { no_link(&dc) }
}

/// `, from_ms=T` for a rewind that names where from.
fn rewind_from(query: &RewindQuery) -> String {
    query.from_ms.map(|from| format!(", from_ms={from}")).unwrap_or_default()
}
