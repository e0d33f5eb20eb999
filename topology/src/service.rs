//! The topology service: HTTP + JSON over the version store, with a long-poll watch so nodes
//! learn of a new version within a second, and the client and watcher nodes use.
//!
//! The server is embeddable: [`serve`] takes a bound listener, the gate that admits callers and a
//! shutdown future, so tests run it on port 0 and `ferry topology serve` runs it standalone.
//! Every route needs a bearer token ([`ferry_auth`]): reading versions needs `read-only`,
//! applying one `admin` ([`required_role`]); a version applied through the service records the
//! token's name as its author, whatever the request claims. Versions written to the store by
//! other processes (the CLI applying straight to the database) are found by polling the store's
//! head every [`STORE_POLL`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use ferry_auth::{Gate, Principal, Role, Token};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Diagnostic;
use crate::audit::AuditEvent;
use crate::security::{SecurityUpdate, SiteSecurity};
use crate::store::{
    Applied, ApplyRequest, StoreError, TopologyStore, Version, VersionNumber, VersionSummary,
};

/// How often the service looks for versions written by other processes.
pub const STORE_POLL: Duration = Duration::from_millis(200);
/// How long a client waits for the service to record a reported audit event.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default and largest long-poll wait of `/v1/topology/watch`.
const WATCH_DEFAULT: Duration = Duration::from_secs(30);
const WATCH_MAX: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct AppState {
    store: TopologyStore,
    head: watch::Receiver<Option<VersionNumber>>,
    head_sender: Arc<watch::Sender<Option<VersionNumber>>>,
    /// Turns true when the server starts shutting down, so long polls end at once.
    closing: watch::Receiver<bool>,
}

/// The role a request to the service needs: `admin` to apply a version, `read-only` for the
/// rest (reading, watching, and reporting an audit event: the trail records which token
/// reported it). A site's security document is further limited to the site's own nodes and
/// admins, by its handlers ([`may_keep_security`]).
pub fn required_role(method: &Method, path: &str) -> Role {
    if method == Method::GET || path == "/v1/audit" || path.starts_with("/v1/security/") {
        Role::ReadOnly
    } else {
        Role::Admin
    }
}

/// Serves the topology API on `listener`, behind `gate`, until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: TopologyStore,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let initial = store.head().await.ok().flatten();
    let (sender, head) = watch::channel(initial);
    let (close, closing) = watch::channel(false);
    let state = AppState { store: store.clone(), head, head_sender: Arc::new(sender), closing };
    let poller = tokio::spawn(poll_store_head(store, state.head_sender.clone()));
    let app = Router::new()
        .route("/v1/topology", get(current).post(apply))
        .route("/v1/topology/versions", get(history))
        .route("/v1/topology/versions/{version}", get(version))
        .route("/v1/topology/watch", get(watch_for_change))
        .route("/v1/audit", get(audit_trail).post(record))
        .route("/v1/security/{site}", get(site_security).put(update_security))
        .with_state(state);
    let app = gate.protect(app).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let shutdown = async move {
        shutdown.await;
        close.send_replace(true);
    };
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    poller.abort();
    result
}

/// Publishes the store's head whenever it moves; store errors are logged once per outage.
async fn poll_store_head(store: TopologyStore, sender: Arc<watch::Sender<Option<VersionNumber>>>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(STORE_POLL).await;
        match store.head().await {
            Ok(head) => {
                if failing {
                    tracing::info!("topology store reachable again");
                    failing = false;
                }
                sender.send_if_modified(|current| {
                    let newer = head > *current;
                    if newer {
                        *current = head;
                    }
                    newer
                });
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "poll topology store");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    diagnostics: Vec<Diagnostic>,
}

enum ApiError {
    Store(StoreError),
    /// The request body is not an apply request; answered in the same JSON shape.
    BadRequest(JsonRejection),
    /// A well-formed request the service will not carry out.
    Unprocessable(String),
    /// An authenticated caller this resource is not for.
    Forbidden(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = match self {
            ApiError::Store(error) => error,
            ApiError::BadRequest(rejection) => {
                let body = ErrorBody { error: rejection.body_text(), diagnostics: Vec::new() };
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            ApiError::Unprocessable(error) => {
                let body = ErrorBody { error, diagnostics: Vec::new() };
                return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
            }
            ApiError::Forbidden(error) => {
                let body = ErrorBody { error, diagnostics: Vec::new() };
                return (StatusCode::FORBIDDEN, Json(body)).into_response();
            }
        };
        let status = match &error {
            StoreError::NotFound(_) | StoreError::Empty => StatusCode::NOT_FOUND,
            StoreError::Conflict { .. } => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let diagnostics = match &error {
            StoreError::Invalid(invalid) => invalid.diagnostics.clone(),
            _ => Vec::new(),
        };
        (status, Json(ErrorBody { error: error.to_string(), diagnostics })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

async fn current(State(state): State<AppState>) -> Result<Json<Version>, ApiError> {
    Ok(Json(state.store.current().await?))
}

async fn history(State(state): State<AppState>) -> Result<Json<Vec<VersionSummary>>, ApiError> {
    Ok(Json(state.store.history().await?))
}

async fn version(
    State(state): State<AppState>,
    Path(number): Path<VersionNumber>,
) -> Result<Json<Version>, ApiError> {
    Ok(Json(state.store.get(number).await?))
}

async fn apply(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    request: Result<Json<ApplyRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Applied>), ApiError> {
    let Json(mut request) = request.map_err(ApiError::BadRequest)?;
    request.author = authenticated_author(&caller, &request.author);
    let applied = state.store.apply_from(request, &caller.origin(), &caller.name).await?;
    let status = match applied {
        Applied::Created { version } => {
            state.head_sender.send_if_modified(|current| {
                let newer = Some(version) > *current;
                if newer {
                    *current = Some(version);
                }
                newer
            });
            StatusCode::CREATED
        }
        Applied::Unchanged { .. } => StatusCode::OK,
    };
    Ok((status, Json(applied)))
}

/// The author a version records: the token that applied it, and what the request called
/// itself when that says more (`ferry drill via admin`).
fn authenticated_author(caller: &Principal, claimed: &str) -> String {
    if claimed.is_empty() || claimed == caller.name {
        caller.name.clone()
    } else {
        format!("{claimed} via {}", caller.name)
    }
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

/// The most events `GET /v1/audit` answers.
const AUDIT_MAX: i64 = 100_000;
/// The longest field of a reported audit event, in bytes.
const AUDIT_FIELD_MAX: usize = 1024;

async fn audit_trail(
    State(state): State<AppState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(0, AUDIT_MAX);
    Ok(Json(state.store.audit_trail(limit).await?))
}

/// Records an event a node or a tool reports; the trail keeps which token reported it, and
/// the caller's address when the event names no origin.
async fn record(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    event: Result<Json<AuditEvent>, JsonRejection>,
) -> Result<(StatusCode, Json<AuditEvent>), ApiError> {
    let Json(mut event) = event.map_err(ApiError::BadRequest)?;
    if event.action.starts_with("topology.") {
        // The service records those itself, with the version: a report cannot add one.
        let message = format!("'{}' events are recorded by the service itself", event.action);
        return Err(ApiError::Unprocessable(message));
    }
    let fields = [&event.actor, &event.origin, &event.action, &event.target];
    if fields.into_iter().chain([&event.detail, &event.outcome]).any(|f| f.len() > AUDIT_FIELD_MAX)
    {
        let message = format!("an audit event field is longer than {AUDIT_FIELD_MAX} bytes");
        return Err(ApiError::Unprocessable(message));
    }
    event.id = 0;
    event.at_ms = 0;
    event.recorded_by = caller.name.clone();
    if event.actor.is_empty() {
        event.actor = caller.name.clone();
    }
    if event.origin.is_empty() {
        event.origin = caller.origin();
    }
    Ok((StatusCode::CREATED, Json(state.store.record(event).await?)))
}

/// The token a node presents to the service (`ferry up` issues one per node).
pub fn node_token_name(node: &str) -> String {
    format!("node-{node}")
}

/// Whether `caller` may read and change the users and roles of `site`: an admin, or one of the
/// site's own nodes in the current topology (a node of another site may not, so one site's
/// nodes never learn another's password hashes).
async fn may_keep_security(
    state: &AppState,
    caller: &Principal,
    site: &str,
) -> Result<(), ApiError> {
    if caller.role >= Role::Admin {
        return Ok(());
    }
    let current = state.store.current().await?;
    let member = current
        .topology
        .sites
        .iter()
        .filter(|s| s.name.as_str() == site)
        .any(|s| s.nodes.iter().any(|node| node_token_name(node.id.as_str()) == caller.name));
    if member {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "'{}' is neither an admin nor a node of site '{site}'",
            caller.name
        )))
    }
}

async fn site_security(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(site): Path<String>,
) -> Result<Json<SiteSecurity>, ApiError> {
    may_keep_security(&state, &caller, &site).await?;
    Ok(Json(state.store.security(&site).await?))
}

/// What a replaced security document became.
#[derive(Debug, Serialize, Deserialize)]
struct Written {
    version: i64,
}

/// Whether `document` has the shape every node reads (`users`: name → {password, roles},
/// `roles`: name → privileges): a malformed one would leave the whole site unable to read its
/// users until an admin rewrote it.
fn security_document_shape(document: &serde_json::Value) -> Result<(), String> {
    let object = document.as_object().ok_or("not a JSON object")?;
    if let Some(key) = object.keys().find(|k| *k != "users" && *k != "roles") {
        return Err(format!("unknown key '{key}'"));
    }
    let users = object.get("users").map(|u| u.as_object().ok_or("'users' is not an object"));
    for (name, user) in users.transpose()?.into_iter().flatten() {
        let password = user.get("password").and_then(serde_json::Value::as_str);
        let roles = user.get("roles").is_none_or(serde_json::Value::is_array);
        if password.is_none() || !roles {
            return Err(format!("user '{name}' needs a password string and a roles list"));
        }
    }
    let roles = object.get("roles").map(|r| r.as_object().ok_or("'roles' is not an object"));
    for (name, privileges) in roles.transpose()?.into_iter().flatten() {
        if !privileges.is_array() {
            return Err(format!("role '{name}' needs a privileges list"));
        }
    }
    Ok(())
}

/// Replaces a site's security document over the version the caller read: 200 with the new
/// version, or 409 when another change came first (the caller reads again and retries).
async fn update_security(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(site): Path<String>,
    update: Result<Json<SecurityUpdate>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut update) = update.map_err(ApiError::BadRequest)?;
    may_keep_security(&state, &caller, &site).await?;
    if !update.event.action.starts_with("user.") && !update.event.action.starts_with("role.") {
        let message = format!("'{}' is not a user or role change", update.event.action);
        return Err(ApiError::Unprocessable(message));
    }
    update.event.id = 0;
    update.event.at_ms = 0;
    update.event.recorded_by = caller.name.clone();
    if update.event.origin.is_empty() {
        update.event.origin = caller.origin();
    }
    if !update.event.target.starts_with(&format!("{site}/")) {
        let message =
            format!("the event's target '{}' is not in site '{site}'", update.event.target);
        return Err(ApiError::Unprocessable(message));
    }
    if let Err(problem) = security_document_shape(&update.document) {
        return Err(ApiError::Unprocessable(format!("not a security document: {problem}")));
    }
    match state.store.update_security(&site, update).await? {
        Some(version) => Ok(Json(Written { version }).into_response()),
        None => Ok((
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: format!("the security of site '{site}' changed meanwhile"),
                diagnostics: Vec::new(),
            }),
        )
            .into_response()),
    }
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    after: Option<VersionNumber>,
    timeout_ms: Option<u64>,
}

async fn watch_for_change(
    State(state): State<AppState>,
    Query(query): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let after = query.after.unwrap_or(0);
    let wait = query.timeout_ms.map_or(WATCH_DEFAULT, Duration::from_millis).min(WATCH_MAX);
    let mut head = state.head.clone();
    let mut closing = state.closing.clone();
    // Timing out, or the service shutting down, means nothing newer.
    let newer = tokio::select! {
        changed = tokio::time::timeout(wait, head.wait_for(|h| h.is_some_and(|h| h > after))) => {
            changed.is_ok_and(|changed| changed.is_ok())
        }
        _ = closing.wait_for(|closing| *closing) => false,
    };
    if newer {
        Ok(Json(state.store.current().await?).into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// Failures talking to a topology service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("reach topology service at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("topology service answered {status}: {message}")]
    Refused { status: u16, message: String, diagnostics: Vec<Diagnostic> },
}

/// A client of the topology service.
#[derive(Debug, Clone)]
pub struct TopologyClient {
    base: String,
    http: reqwest::Client,
    /// What every request presents (`Authorization: Bearer …`).
    credential: Option<Token>,
}

impl TopologyClient {
    /// A client of the service at `base` (e.g. `http://127.0.0.1:7000`) presenting
    /// `credential` (without one, the service answers 401).
    pub fn new(base: &str, credential: Option<Token>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            credential,
        }
    }

    /// The current version.
    pub async fn current(&self) -> Result<Version, ClientError> {
        let response = self.send(self.http.get(self.url("/v1/topology"))).await?;
        self.decode(response).await
    }

    /// Applies a topology file through the service.
    pub async fn apply(&self, request: &ApplyRequest) -> Result<Applied, ClientError> {
        let response = self.send(self.http.post(self.url("/v1/topology")).json(request)).await?;
        self.decode(response).await
    }

    /// Reports an audit event (the service records who reported it); returns it as recorded.
    pub async fn record(&self, event: &AuditEvent) -> Result<AuditEvent, ClientError> {
        let request = self.http.post(self.url("/v1/audit")).json(event).timeout(REPORT_TIMEOUT);
        let response = self.send(request).await?;
        self.decode(response).await
    }

    /// The users and roles of `site`.
    pub async fn security(&self, site: &str) -> Result<SiteSecurity, ClientError> {
        let response = self.send(self.http.get(self.url(&format!("/v1/security/{site}")))).await?;
        self.decode(response).await
    }

    /// Replaces the users and roles of `site` over `update.expected`: the new version, or
    /// `None` when another change came first.
    pub async fn update_security(
        &self,
        site: &str,
        update: &SecurityUpdate,
    ) -> Result<Option<i64>, ClientError> {
        let request = self.http.put(self.url(&format!("/v1/security/{site}"))).json(update);
        let response = self.send(request.timeout(REPORT_TIMEOUT)).await?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Ok(None);
        }
        let written: Written = self.decode(response).await?;
        Ok(Some(written.version))
    }

    /// The newest `limit` events of the audit trail, oldest first.
    pub async fn audit_trail(&self, limit: i64) -> Result<Vec<AuditEvent>, ClientError> {
        let url = self.url(&format!("/v1/audit?limit={limit}"));
        let response = self.send(self.http.get(url)).await?;
        self.decode(response).await
    }

    /// Waits up to `timeout` for a version newer than `after`; `None` when none came.
    pub async fn watch(
        &self,
        after: VersionNumber,
        timeout: Duration,
    ) -> Result<Option<Version>, ClientError> {
        let url = self
            .url(&format!("/v1/topology/watch?after={after}&timeout_ms={}", timeout.as_millis()));
        let request = self.http.get(url).timeout(timeout + Duration::from_secs(5));
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.decode(response).await.map(Some)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let request = match &self.credential {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        };
        request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url: self.base.clone(), source })
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|source| ClientError::Unreachable { url: self.base.clone(), source });
        }
        let body: ErrorBody = response.json().await.unwrap_or_else(|e| ErrorBody {
            error: format!("unreadable error body: {e}"),
            diagnostics: Vec::new(),
        });
        Err(ClientError::Refused {
            status: status.as_u16(),
            message: body.error,
            diagnostics: body.diagnostics,
        })
    }
}

/// Follows the service's current version: the receiver holds the newest version seen. Errors
/// are retried with exponential backoff (100 ms doubling to 5 s) and logged once per outage.
pub fn spawn_watcher(client: TopologyClient) -> watch::Receiver<Option<Arc<Version>>> {
    let (sender, receiver) = watch::channel(None);
    tokio::spawn(async move {
        let mut after = 0;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        while !sender.is_closed() {
            match client.watch(after, WATCH_DEFAULT).await {
                Ok(found) => {
                    if failing {
                        tracing::info!("topology service reachable again");
                        failing = false;
                    }
                    backoff = Duration::from_millis(100);
                    if let Some(version) = found {
                        after = version.version;
                        sender.send_replace(Some(Arc::new(version)));
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "watch topology service; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn security_documents_are_checked_for_the_shape_nodes_read() {
        let good = json!({
            "users": { "admin": { "password": "$2b$10$x", "roles": ["user-admin"] } },
            "roles": { "ops": [{ "code": 1 }] }
        });
        assert_eq!(security_document_shape(&good), Ok(()));
        assert_eq!(security_document_shape(&json!({})), Ok(()));
        for bad in [
            json!([]),
            json!({ "users": "two" }),
            json!({ "users": { "a": { "roles": [] } } }),
            json!({ "users": { "a": { "password": "x", "roles": "read" } } }),
            json!({ "roles": { "ops": "sys-admin" } }),
            json!({ "admins": {} }),
        ] {
            assert!(security_document_shape(&bad).is_err(), "{bad}");
        }
    }
}
