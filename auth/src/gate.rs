//! The HTTP gate in front of a control-plane API: every request needs a bearer token the
//! access file accepts (else 401) with a role at least what the route needs (else 403). The
//! route never runs for a refused request, so a refusal changes nothing. The caller's
//! [`Principal`] rides in the request's extensions for the handlers (who applied a version).
//!
//! Bearer tokens must not cross a network in the clear: [`require_loopback`] is the rule every
//! plain-HTTP listener checks before it binds.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::access::{AccessFile, Denied};
use crate::token::Role;

/// Who made a request, as the gate established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    pub role: Role,
    /// The caller's address, when the server records it (served with connect info).
    pub peer: Option<SocketAddr>,
}

impl Principal {
    /// Where the caller called from, for logs and the audit trail.
    pub fn origin(&self) -> String {
        self.peer.map_or_else(|| "unknown".to_owned(), |peer| peer.to_string())
    }
}

/// The role a request needs, from its method and path.
pub type Policy = fn(&Method, &str) -> Role;

/// An access file and the policy it enforces.
#[derive(Debug)]
pub struct Gate {
    access: Arc<AccessFile>,
    policy: Policy,
}

impl Gate {
    pub fn new(access: Arc<AccessFile>, policy: Policy) -> Gate {
        Gate { access, policy }
    }

    /// `router` behind this gate (unknown paths too: a caller without a token learns nothing
    /// of which routes exist).
    pub fn protect<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        router.layer(axum::middleware::from_fn_with_state(Arc::new(self), check))
    }

    /// Who the request's credentials name, and whether they may make it.
    fn admit(&self, request: &Request) -> Result<Principal, Refusal> {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer)
            .ok_or(Refusal::Unauthenticated(Denied::Missing))?;
        // Why the list cannot be read is for the server's log (it already says), not for a
        // caller who has not shown who it is.
        let list = self.access.current().map_err(|_| Refusal::Unavailable)?;
        let (name, role) = list.check(presented).map_err(Refusal::Unauthenticated)?;
        let needed = (self.policy)(request.method(), request.uri().path());
        if role < needed {
            return Err(Refusal::Forbidden { name, role, needed });
        }
        let peer =
            request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|info| info.0);
        Ok(Principal { name, role, peer })
    }
}

enum Refusal {
    Unauthenticated(Denied),
    Forbidden {
        name: String,
        role: Role,
        needed: Role,
    },
    /// The access list cannot be read: nobody is let in until it is fixed.
    Unavailable,
}

/// The token of an `Authorization` value of scheme Bearer (the scheme's case does not matter).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn check(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    match gate.admit(&request) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refusal) => {
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| info.0);
            refuse(refusal, &method, &path, peer)
        }
    }
}

fn refuse(refusal: Refusal, method: &Method, path: &str, peer: Option<SocketAddr>) -> Response {
    let (status, message) = match refusal {
        Refusal::Unauthenticated(denied) => (StatusCode::UNAUTHORIZED, denied.to_string()),
        Refusal::Forbidden { name, role, needed } => (
            StatusCode::FORBIDDEN,
            format!("token '{name}' has role {role}; {method} {path} needs {needed}"),
        ),
        Refusal::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the access list cannot be read; see the server's log".to_owned(),
        ),
    };
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::warn!(%method, path, %peer, status = status.as_u16(), reason = %message, "request refused");
    let body = axum::Json(serde_json::json!({ "error": message }));
    let mut response = (status, body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ferry\""));
    }
    response
}

/// A plain-HTTP listener asked for an address other hosts can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} on {addr}: plain HTTP is served on loopback addresses only (bearer tokens would \
     cross the network in the clear); listen on 127.0.0.1 or ::1 and reach it through an SSH \
     tunnel or a TLS-terminating proxy"
)]
pub struct NotLoopback {
    pub what: String,
    pub addr: SocketAddr,
}

/// Whether a plain-HTTP listener named `what` may listen on `addr`.
pub fn require_loopback(what: &str, addr: SocketAddr) -> Result<(), NotLoopback> {
    if addr.ip().is_loopback() { Ok(()) } else { Err(NotLoopback { what: what.to_owned(), addr }) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt as _;

    use super::*;
    use crate::access::AccessList;
    use crate::token::Token;

    fn policy(method: &Method, _path: &str) -> Role {
        if method == Method::GET { Role::ReadOnly } else { Role::Operator }
    }

    struct Fixture {
        router: Router,
        calls: Arc<AtomicUsize>,
        tokens: Vec<Token>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.toml");
        let mut list = AccessList::default();
        let tokens: Vec<Token> =
            ["ro", "ops"].iter().map(|n| Token::issue(n).expect("issue")).collect();
        list.grant(&tokens[0], Role::ReadOnly);
        list.grant(&tokens[1], Role::Operator);
        list.save(&path).expect("save");
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let router = Router::new().route("/read", get(|| async { "read" })).route(
            "/act",
            post(move |axum::Extension(who): axum::Extension<Principal>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { who.name }
            }),
        );
        let gate = Gate::new(Arc::new(AccessFile::open(&path).expect("open")), policy);
        Fixture { router: gate.protect(router), calls, tokens, _dir: dir }
    }

    async fn send(router: &Router, method: Method, path: &str, bearer: Option<&str>) -> u16 {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(bearer) = bearer {
            request = request.header(header::AUTHORIZATION, bearer);
        }
        let response = router.clone().oneshot(request.body(Body::empty()).expect("request")).await;
        response.expect("response").status().as_u16()
    }

    #[tokio::test]
    async fn requests_need_a_known_token_with_a_strong_enough_role() {
        let f = fixture();
        let ro = format!("Bearer {}", f.tokens[0].expose());
        let ops = format!("Bearer {}", f.tokens[1].expose());
        let forged = format!("Bearer {}", Token::issue("ops").expect("issue").expose());
        assert_eq!(send(&f.router, Method::GET, "/read", None).await, 401);
        assert_eq!(send(&f.router, Method::GET, "/read", Some("Basic b3BzOg==")).await, 401);
        assert_eq!(send(&f.router, Method::GET, "/read", Some("Bearer nonsense")).await, 401);
        let lower = format!("bearer {}", f.tokens[0].expose());
        assert_eq!(send(&f.router, Method::GET, "/read", Some(&lower)).await, 200);
        assert_eq!(send(&f.router, Method::POST, "/act", Some(&forged)).await, 401);
        assert_eq!(send(&f.router, Method::POST, "/act", Some(&ro)).await, 403);
        assert_eq!(send(&f.router, Method::GET, "/nowhere", None).await, 401);
        assert_eq!(f.calls.load(Ordering::SeqCst), 0, "a refused request ran its route");
        assert_eq!(send(&f.router, Method::GET, "/read", Some(&ro)).await, 200);
        assert_eq!(send(&f.router, Method::POST, "/act", Some(&ops)).await, 200);
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn plain_http_stays_on_loopback() {
        for ok in ["127.0.0.1:80", "127.3.2.1:1", "[::1]:80"] {
            assert!(require_loopback("admin", ok.parse().expect("addr")).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:80", "10.0.0.5:80", "[::]:80"] {
            let error = require_loopback("admin", refused.parse().expect("addr"));
            assert!(error.is_err(), "{refused}");
        }
    }
}
