//! Which credential the CLI presents to the control plane (the nodes' admin APIs and the
//! topology service): the token in `$FERRY_TOKEN` when set, else the admin credential `ferry up`
//! keeps in the deployment's state directory (`<dir>/credentials/admin.token`, mode 0600); and
//! a client of the deployment's topology service presenting it.

use std::path::Path;

use ferry_auth::{AccessError, Role, Token};
use ferry_topology::service::TopologyClient;

use crate::deploy::StateDir;

/// The environment variable holding a token to present instead of the state directory's.
pub const TOKEN_ENV: &str = "FERRY_TOKEN";

/// The credential for the deployment kept in `dir`: `$FERRY_TOKEN`, else its admin credential
/// file; `None` when there is neither (the control plane then answers 401).
pub fn for_deployment(dir: &Path) -> Result<Option<Token>, AccessError> {
    if let Ok(text) = std::env::var(TOKEN_ENV) {
        return Token::parse(&text)
            .map(Some)
            .map_err(|source| AccessError::Token { path: format!("${TOKEN_ENV}").into(), source });
    }
    let file = StateDir { root: dir.to_path_buf() }.credential(Role::Admin);
    if !file.exists() {
        return Ok(None);
    }
    ferry_auth::access::read_credential(&file).map(Some)
}

/// A client of the topology service the deployment kept in `dir` serves, presenting its
/// credential; `None` when it serves none.
pub fn service_client(dir: &Path) -> Result<Option<TopologyClient>, AccessError> {
    let file = StateDir { root: dir.to_path_buf() }.topology_service();
    let Ok(url) = std::fs::read_to_string(file) else { return Ok(None) };
    Ok(Some(TopologyClient::new(url.trim(), for_deployment(dir)?)))
}
