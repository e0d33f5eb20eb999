//! The node's admin HTTP API (the `admin` address in the topology): the same numbers as the
//! info protocol, as JSON, and the link controls.
//!
//! - `GET /v1/status`: node, site, the topology service version applied here (0: the file it
//!   started with) and the write fence up, per-namespace records and partitions owned, counters.
//! - `GET /v1/xdr`: the receiver's counters and every link's stats.
//! - `GET /v1/xdr/links/{dc}`: one link's stats (404 if no link to `dc` ships from here).
//! - `POST /v1/xdr/links/{dc}/pause`, `…/resume`, `…/drain`, `…/rewind?from_ms=T` (T = 0 or absent: all).
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `GET /health`: 200 while the node serves and can acknowledge writes (the admin API runs
//!   only once storage is open, so this is readiness too); 503 with the reasons otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use ferry_xdr::ship::LinkCommand;
use ferry_xdr::stats::LinkSnapshot;

use crate::node::NodeState;

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<NodeState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/xdr", get(xdr))
        .route("/v1/xdr/links/{dc}", get(link))
        .route("/v1/xdr/links/{dc}/{action}", post(control))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let stats = &state.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let namespaces: Vec<Value> = state
        .store
        .namespace_names()
        .iter()
        .map(|ns| {
            json!({
                "name": ns,
                "records": state.store.approximate_len(ns).unwrap_or(0),
                "partitions_owned": state.cluster.owned_partitions(ns),
            })
        })
        .collect();
    Json(json!({
        "node": state.cluster.node().id.as_str(),
        "site": state.cluster.site().name.as_str(),
        "topology_version": state.topology_version.load(Ordering::SeqCst),
        "write_fence": state.fence.current().to_string(),
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

fn no_link(dc: &str) -> Response {
    let message = format!("no link to dc '{dc}' ships from this node");
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}

async fn link(State(state): State<Arc<NodeState>>, Path(dc): Path<String>) -> Response {
    match state.xdr.get(&dc) {
        Some(stats) => Json(stats.snapshot()).into_response(),
        None => no_link(&dc),
    }
}

#[derive(Debug, serde::Deserialize)]
struct RewindQuery {
    from_ms: Option<u64>,
}

async fn control(
    State(state): State<Arc<NodeState>>,
    Path((dc, action)): Path<(String, String)>,
    Query(query): Query<RewindQuery>,
) -> Response {
    let Some(command) = LinkCommand::parse(&action, query.from_ms.unwrap_or(0)) else {
        let message = format!("unknown action '{action}': pause, resume, rewind or drain");
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    };
    if state.xdr.command(&dc, command) {
        Json(json!({ "dc": dc, "action": action })).into_response()
    } else {
        no_link(&dc)
    }
}
