//! Aerospike security on the client port, for sites whose topology turns `security` on (off by
//! default, as in Aerospike). Clients log in (user and the client's hash of the password), get
//! a session token that their other connections to this node present, and each command is
//! checked against the privileges of the user's roles: `NOT_AUTHENTICATED` (80) without a
//! login, `ROLE_VIOLATION` (81) without the privilege.
//!
//! A site's users and roles live in the deployment's topology service (its SQL store, like
//! Aerospike's system metadata is the cluster's): every node of the site reads them, follows
//! changes within a second, and writes the admin commands its clients send (create user, grant
//! roles, …) through it, over the version it read, each change audited there. Sessions are this
//! node's own, as in Aerospike (clients keep one per node).

pub mod db;
pub mod password;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ferry_topology::audit::AuditEvent;
use ferry_topology::security::SecurityUpdate;
use ferry_topology::service::TopologyClient;
use sha2::{Digest as _, Sha256};

use self::db::{Change, Permission, Privilege, SecurityDb, code, privilege};
use crate::proto::admin::{AdminCommand, AdminRequest, ReplyBuilder, field, reply};

/// How long a session lasts (Aerospike's `session-ttl` default).
pub const SESSION_TTL: Duration = Duration::from_secs(86_400);
/// How often a node reads its site's users and roles again.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// The shortest time between two reads of the users and roles on demand.
const CATCH_UP_EVERY: Duration = Duration::from_millis(100);
/// Sessions a node keeps at most; past it, expired ones go, then the oldest.
const MAX_SESSIONS: usize = 100_000;
/// Times a change is tried again when another node's change came first.
const CHANGE_ATTEMPTS: usize = 8;
/// Aerospike's generic server error.
const SERVER_ERROR: u8 = 1;

/// Who a client connection is: nobody until it logs in or presents a session.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub user: Option<String>,
    pub peer: Option<SocketAddr>,
}

impl Caller {
    pub fn new(peer: Option<SocketAddr>) -> Caller {
        Caller { user: None, peer }
    }
}

/// A site's users and roles as this node last read them, with each user's privileges.
#[derive(Debug, Default)]
struct Loaded {
    version: i64,
    db: SecurityDb,
    grants: HashMap<String, Vec<Privilege>>,
}

impl Loaded {
    fn new(version: i64, db: SecurityDb) -> Loaded {
        let grants = db
            .users
            .keys()
            .map(|user| (user.clone(), db.grants(user).unwrap_or_default()))
            .collect();
        Loaded { version, db, grants }
    }
}

#[derive(Debug)]
struct Session {
    user: String,
    /// The user's stored password when the session began: a new password ends it.
    sealed: String,
    expires: Instant,
}

/// Security on this node's client port.
#[derive(Debug)]
pub struct Security {
    site: String,
    enabled: bool,
    service: OnceLock<TopologyClient>,
    loaded: RwLock<Arc<Loaded>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Per user, the digest of the last client hash that matched its stored password, and that
    /// password: a login repeating it skips the (slow on purpose) bcrypt.
    verified: Mutex<HashMap<String, ([u8; 32], String)>>,
    /// When the users and roles were last read on demand (see [`Security::catch_up`]).
    caught_up: Mutex<Option<Instant>>,
}

impl Security {
    /// Security of site `site`, on or off (the topology's `security`).
    pub fn new(site: &str, enabled: bool) -> Security {
        Security {
            site: site.to_owned(),
            enabled,
            service: OnceLock::new(),
            loaded: RwLock::default(),
            sessions: Mutex::default(),
            verified: Mutex::default(),
            caught_up: Mutex::default(),
        }
    }

    /// Reads the users and roles now, unless that was done in the last [`CATCH_UP_EVERY`]:
    /// before answering a query, or a login by a user not known yet (created through another
    /// node moments ago), so neither waits for the next [`FOLLOW_EVERY`].
    async fn catch_up(&self) {
        {
            let mut last = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < CATCH_UP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(error) = self.refresh().await {
            tracing::debug!(%error, "could not read the site's users and roles");
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps the site's users and roles in the topology service `client` asks: reads them now,
    /// then every [`FOLLOW_EVERY`] in the task returned.
    pub async fn follow(self: &Arc<Self>, client: TopologyClient) -> tokio::task::JoinHandle<()> {
        let _ = self.service.set(client);
        let mut failing = false;
        if let Err(error) = self.refresh().await {
            tracing::warn!(%error, "users and roles not readable yet: logins wait for them");
            failing = true;
        }
        let security = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                match security.refresh().await {
                    Ok(()) if failing => {
                        tracing::info!("users and roles readable again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        tracing::warn!(%error, "could not read the site's users and roles; keeping those known");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        })
    }

    fn loaded(&self) -> Arc<Loaded> {
        Arc::clone(&self.loaded.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes `db` at `version` unless a newer one is known already.
    fn install(&self, version: i64, db: SecurityDb) {
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        if version > loaded.version {
            *loaded = Arc::new(Loaded::new(version, db));
        }
    }

    /// Reads the site's users and roles from the topology service.
    pub async fn refresh(&self) -> Result<(), String> {
        let (version, db) = self.read().await?;
        self.install(version, db);
        Ok(())
    }

    async fn read(&self) -> Result<(i64, SecurityDb), String> {
        let service = self.service.get().ok_or("no topology service")?;
        let current = service.security(&self.site).await.map_err(|e| e.to_string())?;
        let db = serde_json::from_value(current.document)
            .map_err(|e| format!("the site's security document: {e}"))?;
        Ok((current.version, db))
    }

    /// Whether `caller` may do what needs `permission` on `namespace`/`set`: `Err` carries the
    /// result code (80 without a login or for a user since dropped, 81 without the privilege).
    pub fn check(
        &self,
        caller: &Caller,
        permission: Permission,
        namespace: &str,
        set: &str,
    ) -> Result<(), u8> {
        if !self.enabled {
            return Ok(());
        }
        let user = caller.user.as_deref().ok_or(code::NOT_AUTHENTICATED)?;
        let loaded = self.loaded();
        let grants = loaded.grants.get(user).ok_or(code::NOT_AUTHENTICATED)?;
        if db::allowed(grants, permission, namespace, set) {
            Ok(())
        } else {
            Err(code::ROLE_VIOLATION)
        }
    }

    /// Answers an admin message (the reply body, framing left to the caller); a login or an
    /// accepted session makes `caller` its user.
    pub async fn admin(&self, caller: &mut Caller, request: &AdminRequest) -> Vec<u8> {
        if !self.enabled {
            // Clients take it as a login that needs no session.
            return reply(code::SECURITY_NOT_ENABLED).to_vec();
        }
        let command = match AdminCommand::parse(request) {
            Ok(command) => command,
            Err(result) => return reply(result).to_vec(),
        };
        match self.answer(caller, command).await {
            Ok(body) => body,
            Err(result) => reply(result).to_vec(),
        }
    }

    async fn answer(&self, caller: &mut Caller, command: AdminCommand) -> Result<Vec<u8>, u8> {
        let change = match command {
            AdminCommand::Login { user, credential } => {
                return self.login(caller, user, credential).await;
            }
            AdminCommand::Authenticate { user, token } => {
                let session = self.session(&token)?;
                if user.as_ref().is_some_and(|user| *user != session) {
                    return Err(code::INVALID_CREDENTIAL);
                }
                caller.user = Some(session);
                return Ok(reply(code::OK).to_vec());
            }
            AdminCommand::QueryUsers { user } => {
                self.catch_up().await;
                return self.query_users(caller, user);
            }
            AdminCommand::QueryRoles { role } => {
                self.catch_up().await;
                return self.query_roles(caller, role);
            }
            AdminCommand::ChangePassword { user, old, password } => {
                let me = caller.user.as_deref().ok_or(code::NOT_AUTHENTICATED)?;
                if me != user {
                    // Clients send it only for their own user; anyone else's is SET_PASSWORD.
                    self.check(caller, Permission::UserAdmin, "", "")?;
                }
                let sealed = self.loaded().db.users.get(&user).map(|u| u.password.clone());
                let sealed = sealed.ok_or(code::INVALID_USER)?;
                if !self.verify(&user, &sealed, &old).await {
                    return Err(code::INVALID_PASSWORD);
                }
                Change::SetPassword { user, password: seal(password).await? }
            }
            AdminCommand::Unsupported { command } => {
                self.check(caller, Permission::UserAdmin, "", "")?;
                tracing::debug!(command, "admin command not supported");
                return Err(if command == crate::proto::admin::command::CREATE_ROLE {
                    code::QUOTAS_NOT_ENABLED
                } else {
                    code::INVALID_COMMAND
                });
            }
            command => {
                self.check(caller, Permission::UserAdmin, "", "")?;
                user_admin_change(command).await?
            }
        };
        self.commit(caller, &change).await?;
        Ok(reply(code::OK).to_vec())
    }

    async fn login(
        &self,
        caller: &mut Caller,
        user: String,
        credential: String,
    ) -> Result<Vec<u8>, u8> {
        let stored = || self.loaded().db.users.get(&user).map(|u| u.password.clone());
        let mut sealed = stored();
        if sealed.is_none() {
            self.catch_up().await;
            sealed = stored();
        }
        let Some(sealed) = sealed else {
            // An unknown user costs a bcrypt too: the answer's time tells no users apart.
            let check = move || password::matches(&UNKNOWN_USER, &credential);
            let _ = tokio::task::spawn_blocking(check).await;
            tracing::info!(user, peer = ?caller.peer, "login refused: no such user");
            return Err(code::INVALID_CREDENTIAL);
        };
        let mut sealed = sealed;
        if !self.verify(&user, &sealed, &credential).await {
            // The password may have changed through another node moments ago.
            self.catch_up().await;
            let renewed = stored().filter(|renewed| *renewed != sealed);
            let matched = match renewed {
                Some(renewed) => {
                    sealed = renewed;
                    self.verify(&user, &sealed, &credential).await
                }
                None => false,
            };
            if !matched {
                tracing::info!(user, peer = ?caller.peer, "login refused: wrong password");
                return Err(code::INVALID_CREDENTIAL);
            }
        }
        let token: [u8; 32] = rand::random();
        let session = Session { user: user.clone(), sealed, expires: Instant::now() + SESSION_TTL };
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.len() >= MAX_SESSIONS {
                let now = Instant::now();
                sessions.retain(|_, s| s.expires > now);
            }
            if sessions.len() >= MAX_SESSIONS {
                let oldest = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(t, _)| *t);
                if let Some(oldest) = oldest {
                    sessions.remove(&oldest);
                }
            }
            sessions.insert(token, session);
        }
        caller.user = Some(user);
        let ttl = u32::try_from(SESSION_TTL.as_secs()).unwrap_or(u32::MAX);
        let mut body = ReplyBuilder::default();
        body.record(code::OK).bytes(field::SESSION_TOKEN, &token).u32(field::SESSION_TTL, ttl);
        Ok(body.finish())
    }

    /// The user of a live session `token`, which ends if it expired, its user was dropped or
    /// its password changed.
    fn session(&self, token: &[u8]) -> Result<String, u8> {
        let token: [u8; 32] = token.try_into().map_err(|_| code::INVALID_CREDENTIAL)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(&token).ok_or(code::INVALID_CREDENTIAL)?;
        let loaded = self.loaded();
        let current = loaded.db.users.get(&session.user).map(|u| u.password.as_str());
        if session.expires <= Instant::now() || current != Some(session.sealed.as_str()) {
            sessions.remove(&token);
            return Err(code::EXPIRED_SESSION);
        }
        Ok(session.user.clone())
    }

    /// Whether `credential` is the client hash `sealed` was made from; repeats of the last
    /// match per user skip the bcrypt.
    async fn verify(&self, user: &str, sealed: &str, credential: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        let known = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(user).cloned();
        if known.is_some_and(|(d, s)| d == digest && s == sealed) {
            return true;
        }
        let (sealed_owned, credential) = (sealed.to_owned(), credential.to_owned());
        let matched =
            tokio::task::spawn_blocking(move || password::matches(&sealed_owned, &credential))
                .await
                .unwrap_or(false);
        if matched {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            verified.insert(user.to_owned(), (digest, sealed.to_owned()));
        }
        matched
    }

    fn query_users(&self, caller: &Caller, user: Option<String>) -> Result<Vec<u8>, u8> {
        let me = caller.user.as_deref().ok_or(code::NOT_AUTHENTICATED)?;
        if user.as_deref() != Some(me) {
            self.check(caller, Permission::UserAdmin, "", "")?;
        }
        let loaded = self.loaded();
        let mut body = ReplyBuilder::default();
        let users: Vec<(&String, &db::User)> = match &user {
            Some(name) => {
                let found = loaded.db.users.get_key_value(name).ok_or(code::INVALID_USER)?;
                vec![found]
            }
            None => loaded.db.users.iter().collect(),
        };
        for (name, user) in users {
            body.record(code::OK)
                .bytes(field::USER, name.as_bytes())
                .names(field::ROLES, user.roles.iter().map(String::as_str));
        }
        body.record(code::QUERY_END);
        Ok(body.finish())
    }

    fn query_roles(&self, caller: &Caller, role: Option<String>) -> Result<Vec<u8>, u8> {
        self.check(caller, Permission::UserAdmin, "", "")?;
        let loaded = self.loaded();
        let predefined = privilege::NAMED.iter().map(|(_, name)| (*name).to_owned());
        let names: Vec<String> = match role {
            Some(role) if loaded.db.role_exists(&role) => vec![role],
            Some(_) => return Err(code::INVALID_ROLE),
            None => predefined.chain(loaded.db.roles.keys().cloned()).collect(),
        };
        let mut body = ReplyBuilder::default();
        for name in names {
            let privileges = loaded.db.privileges_of(&name);
            body.record(code::OK).bytes(field::ROLE, name.as_bytes()).privileges(&privileges);
        }
        body.record(code::QUERY_END);
        Ok(body.finish())
    }

    /// Writes `change` to the site's users and roles in the topology service, over the version
    /// read just before (again if another change came first); audited there as `caller`'s.
    async fn commit(&self, caller: &Caller, change: &Change) -> Result<(), u8> {
        let service = self.service.get().ok_or(SERVER_ERROR)?;
        let actor = caller.user.clone().unwrap_or_default();
        let origin = caller.peer.map_or_else(|| "client".to_owned(), |p| format!("client {p}"));
        let (action, target) = change.action();
        for _ in 0..CHANGE_ATTEMPTS {
            let (version, mut db) = self.read().await.map_err(|error| {
                tracing::warn!(%error, "users and roles unreadable; admin command refused");
                SERVER_ERROR
            })?;
            db.apply(change)?;
            let event =
                AuditEvent::now(&actor, &origin, action, &format!("{}/{target}", self.site))
                    .detail(change.detail());
            let document = serde_json::to_value(&db).map_err(|_| SERVER_ERROR)?;
            let update = SecurityUpdate { expected: version, document, event };
            match service.update_security(&self.site, &update).await {
                Ok(Some(version)) => {
                    self.install(version, db);
                    return Ok(());
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "could not write a user or role change");
                    return Err(SERVER_ERROR);
                }
            }
        }
        Err(SERVER_ERROR)
    }
}

/// A stored password no login matches, checked against for unknown users.
static UNKNOWN_USER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| password::seal("no user has this").unwrap_or_default());

/// Seals a client's password hash off the async workers; `INVALID_PASSWORD` for anything that
/// is not a client hash.
async fn seal(client_hash: String) -> Result<String, u8> {
    if !password::is_client_hash(&client_hash) {
        return Err(code::INVALID_PASSWORD);
    }
    tokio::task::spawn_blocking(move || password::seal(&client_hash))
        .await
        .map_err(|_| SERVER_ERROR)?
        .map_err(|_| SERVER_ERROR)
}

/// The change a user-admin command makes.
async fn user_admin_change(command: AdminCommand) -> Result<Change, u8> {
    let set = |items: Vec<String>| items.into_iter().collect();
    Ok(match command {
        AdminCommand::CreateUser { user, password, roles } => {
            Change::CreateUser { user, password: seal(password).await?, roles: set(roles) }
        }
        AdminCommand::DropUser { user } => Change::DropUser { user },
        AdminCommand::SetPassword { user, password } => {
            Change::SetPassword { user, password: seal(password).await? }
        }
        AdminCommand::GrantRoles { user, roles } => Change::GrantRoles { user, roles: set(roles) },
        AdminCommand::RevokeRoles { user, roles } => {
            Change::RevokeRoles { user, roles: set(roles) }
        }
        AdminCommand::CreateRole { role, privileges } => {
            Change::CreateRole { role, privileges: privileges.into_iter().collect() }
        }
        AdminCommand::DropRole { role } => Change::DropRole { role },
        AdminCommand::GrantPrivileges { role, privileges } => {
            Change::GrantPrivileges { role, privileges: privileges.into_iter().collect() }
        }
        AdminCommand::RevokePrivileges { role, privileges } => {
            Change::RevokePrivileges { role, privileges: privileges.into_iter().collect() }
        }
        _ => return Err(code::INVALID_COMMAND),
    })
}
