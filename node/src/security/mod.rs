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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ferry_topology::audit::AuditEvent;
use ferry_topology::security::SecurityUpdate;
use ferry_topology::service::TopologyClient;
use sha2::{Digest as _, Sha256};

use self::db::{Change, Permission, Privilege, SecurityDb, code, privilege};
pub use self::password::Secret;
use crate::proto::admin::{AdminCommand, AdminRequest, ReplyBuilder, field, reply};

/// How long a session lasts (Aerospike's `session-ttl` default).
pub const SESSION_TTL: Duration = Duration::from_secs(86_400);
/// How often a node reads its site's users and roles again.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// The shortest time between two reads of the users and roles on demand.
const CATCH_UP_EVERY: Duration = Duration::from_millis(100);
/// Sessions a node keeps at most, and per user; past either, the oldest go.
const MAX_SESSIONS: usize = 100_000;
const MAX_SESSIONS_PER_USER: usize = 1_000;
/// Longest a login waits for a bcrypt slot before it is answered a server error.
const HASH_QUEUE: Duration = Duration::from_secs(2);
/// Times a change is tried again when another node's change came first.
const CHANGE_ATTEMPTS: usize = 8;
/// Aerospike's generic server error.
const SERVER_ERROR: u8 = 1;

/// Who a client connection is: nobody until it logs in or presents a session.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    login: Option<Login>,
    pub peer: Option<SocketAddr>,
}

/// A user a connection logged in as: which incarnation of the user (one dropped and created
/// again is another), and the stored password it logged in against (a session it opened ends
/// when the password changes; the connection itself goes on, as in Aerospike).
#[derive(Clone)]
struct Login {
    user: String,
    since: u64,
    sealed: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Caller {
    pub fn new(peer: Option<SocketAddr>) -> Caller {
        Caller { login: None, peer }
    }

    /// The user the connection logged in as.
    pub fn user(&self) -> Option<&str> {
        self.login.as_ref().map(|login| login.user.as_str())
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

    /// The stored password of `user`.
    fn sealed(&self, user: &str) -> Option<&str> {
        self.db.users.get(user).map(|u| u.password.as_str())
    }

    /// Whether `login`'s user still exists, as the same incarnation.
    fn holds(&self, login: &Login) -> bool {
        self.db.users.get(&login.user).is_some_and(|u| u.since == login.since)
    }
}

#[derive(Debug)]
struct Session {
    login: Login,
    expires: Instant,
}

/// This node's sessions, by token, and each user's tokens oldest first.
#[derive(Debug, Default)]
struct Sessions {
    by_token: HashMap<[u8; 32], Session>,
    by_user: HashMap<String, VecDeque<[u8; 32]>>,
}

impl Sessions {
    fn insert(&mut self, token: [u8; 32], session: Session) {
        let user = session.login.user.clone();
        let tokens = self.by_user.entry(user.clone()).or_default();
        tokens.retain(|t| self.by_token.contains_key(t));
        if tokens.len() >= MAX_SESSIONS_PER_USER
            && let Some(oldest) = tokens.pop_front()
        {
            self.by_token.remove(&oldest);
        }
        tokens.push_back(token);
        if self.by_token.len() >= MAX_SESSIONS {
            let now = Instant::now();
            self.by_token.retain(|_, s| s.expires > now);
        }
        if self.by_token.len() >= MAX_SESSIONS {
            let oldest = self.by_token.iter().min_by_key(|(_, s)| s.expires).map(|(t, _)| *t);
            if let Some(oldest) = oldest {
                self.by_token.remove(&oldest);
            }
        }
        self.by_token.insert(token, session);
    }
}

/// Security on this node's client port.
#[derive(Debug)]
pub struct Security {
    site: String,
    enabled: bool,
    service: OnceLock<TopologyClient>,
    loaded: RwLock<Arc<Loaded>>,
    sessions: Mutex<Sessions>,
    /// Per user, the digest of the last client hash that matched its stored password, and that
    /// password: a login repeating it skips the (slow on purpose) bcrypt.
    verified: Mutex<HashMap<String, ([u8; 32], String)>>,
    /// When the users and roles were last read on demand (see [`Security::catch_up`]).
    caught_up: Mutex<Option<Instant>>,
    /// Bcrypts running at once, at most one per core: a flood of logins waits here, never on
    /// the blocking pool that info requests share.
    hashing: tokio::sync::Semaphore,
}

impl Security {
    /// Security of site `site`, on or off (the topology's `security`).
    pub fn new(site: &str, enabled: bool) -> Security {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Security {
            site: site.to_owned(),
            enabled,
            service: OnceLock::new(),
            loaded: RwLock::default(),
            sessions: Mutex::default(),
            verified: Mutex::default(),
            caught_up: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(cores),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keeps the site's users and roles in the topology service `client` asks: reads them now,
    /// then every [`FOLLOW_EVERY`] in the task returned.
    pub async fn follow(self: &Arc<Self>, client: TopologyClient) -> tokio::task::JoinHandle<()> {
        let _ = self.service.set(client);
        // Made now, so the first login by an unknown user takes no longer than the next.
        let _ = tokio::task::spawn_blocking(|| std::sync::LazyLock::force(&UNKNOWN_USER)).await;
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

    /// Reads the users and roles from the topology service.
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

    /// Reads the users and roles now, unless that was done in the last [`CATCH_UP_EVERY`]:
    /// before answering a query, or a login by a user not known yet or whose password does not
    /// match (changed through another node moments ago), so none waits for [`FOLLOW_EVERY`].
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

    /// Whether `caller` may do what needs `permission` on `namespace`/`set`: `Err` carries the
    /// result code (80 without a login, or once its user was dropped, even if created again;
    /// 81 without the privilege).
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
        let login = caller.login.as_ref().ok_or(code::NOT_AUTHENTICATED)?;
        let loaded = self.loaded();
        if !loaded.holds(login) {
            return Err(code::NOT_AUTHENTICATED);
        }
        let grants = loaded.grants.get(&login.user).ok_or(code::NOT_AUTHENTICATED)?;
        if db::allowed(grants, permission, namespace, set) {
            Ok(())
        } else {
            Err(code::ROLE_VIOLATION)
        }
    }

    /// Answers an admin message (the reply body, framing left to the caller); a login or an
    /// accepted session makes `caller` its user, a refused one leaves it no one.
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
                caller.login = None;
                let login = self.login(caller, user, credential).await?;
                return Ok(self.open_session(caller, login));
            }
            AdminCommand::Authenticate { user, token } => {
                caller.login = None;
                let login = self.session(&token)?;
                if user.as_ref().is_some_and(|user| *user != login.user) {
                    return Err(code::INVALID_CREDENTIAL);
                }
                caller.login = Some(login);
                return Ok(reply(code::OK).to_vec());
            }
            AdminCommand::QueryUsers { user } => {
                let me = caller.user().ok_or(code::NOT_AUTHENTICATED)?;
                if user.as_deref() != Some(me) {
                    self.check(caller, Permission::UserAdmin, "", "")?;
                }
                self.catch_up().await;
                return self.query_users(user);
            }
            AdminCommand::QueryRoles { role } => {
                self.check(caller, Permission::UserAdmin, "", "")?;
                self.catch_up().await;
                return self.query_roles(role);
            }
            AdminCommand::ChangePassword { user, old, password } => {
                let me = caller.user().ok_or(code::NOT_AUTHENTICATED)?;
                let mine = me == user;
                if !mine {
                    // Clients send it only for their own user; anyone else's is SET_PASSWORD.
                    self.check(caller, Permission::UserAdmin, "", "")?;
                }
                let sealed = self.loaded().sealed(&user).map(str::to_owned);
                let sealed = sealed.ok_or(code::INVALID_USER)?;
                if !self.verify(&user, &sealed, old.expose()).await? {
                    return Err(code::INVALID_PASSWORD);
                }
                let whose = user.clone();
                let renewed = seal(password).await?;
                let change = Change::SetPassword { user, password: renewed.clone() };
                // The old password must still be the stored one when the change is written.
                self.commit(caller, &change, |db| match db.users.get(&whose) {
                    Some(u) if u.password == sealed => Ok(()),
                    _ => Err(code::INVALID_PASSWORD),
                })
                .await?;
                if mine && let Some(login) = caller.login.as_mut() {
                    // Sessions this connection opens from now on carry the new password.
                    login.sealed = renewed.expose().to_owned();
                }
                return Ok(reply(code::OK).to_vec());
            }
            AdminCommand::Unsupported { command, result } => {
                self.check(caller, Permission::UserAdmin, "", "")?;
                tracing::debug!(command, result, "admin command not supported");
                return Err(result);
            }
            command => {
                self.check(caller, Permission::UserAdmin, "", "")?;
                user_admin_change(command).await?
            }
        };
        let login = caller.login.clone().ok_or(code::NOT_AUTHENTICATED)?;
        // Checked again on what is written over: a user-admin role revoked, or the user
        // dropped, through another node moments ago holds here too.
        self.commit(caller, &change, |db| {
            if db.users.get(&login.user).is_none_or(|u| u.since != login.since) {
                return Err(code::NOT_AUTHENTICATED);
            }
            let grants = db.grants(&login.user).unwrap_or_default();
            if db::allowed(&grants, Permission::UserAdmin, "", "") {
                Ok(())
            } else {
                Err(code::ROLE_VIOLATION)
            }
        })
        .await?;
        Ok(reply(code::OK).to_vec())
    }

    /// The login of `user` if `credential` is its password's client hash.
    async fn login(&self, caller: &Caller, user: String, credential: Secret) -> Result<Login, u8> {
        let stored = || self.loaded().sealed(&user).map(str::to_owned);
        let mut sealed = stored();
        if sealed.is_none() {
            self.catch_up().await;
            sealed = stored();
        }
        let Some(mut sealed) = sealed else {
            // An unknown user costs a bcrypt too: the answer's time tells no users apart.
            let _ = self.verify(&user, &UNKNOWN_USER, credential.expose()).await;
            tracing::info!(user = ?user, peer = ?caller.peer, "login refused: no such user");
            return Err(code::INVALID_CREDENTIAL);
        };
        if !self.verify(&user, &sealed, credential.expose()).await? {
            // The password may have changed through another node moments ago.
            self.catch_up().await;
            let renewed = stored().filter(|renewed| *renewed != sealed);
            let matched = match renewed {
                Some(renewed) => {
                    sealed = renewed;
                    self.verify(&user, &sealed, credential.expose()).await?
                }
                None => false,
            };
            if !matched {
                tracing::info!(user = ?user, peer = ?caller.peer, "login refused: wrong password");
                return Err(code::INVALID_CREDENTIAL);
            }
        }
        let since = self.loaded().db.users.get(&user).map_or(0, |u| u.since);
        Ok(Login { user, since, sealed })
    }

    /// Starts a session for `login` on `caller`'s connection; the login reply.
    fn open_session(&self, caller: &mut Caller, login: Login) -> Vec<u8> {
        let token: [u8; 32] = rand::random();
        let session = Session { login: login.clone(), expires: Instant::now() + SESSION_TTL };
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(token, session);
        caller.login = Some(login);
        let ttl = u32::try_from(SESSION_TTL.as_secs()).unwrap_or(u32::MAX);
        let mut body = ReplyBuilder::default();
        body.record(code::OK).bytes(field::SESSION_TOKEN, &token).u32(field::SESSION_TTL, ttl);
        body.finish()
    }

    /// The login of a live session `token`, which ends if it expired, its user was dropped or
    /// its password changed.
    fn session(&self, token: &[u8]) -> Result<Login, u8> {
        let token: [u8; 32] = token.try_into().map_err(|_| code::INVALID_CREDENTIAL)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.by_token.get(&token).ok_or(code::INVALID_CREDENTIAL)?;
        let current = self.loaded().sealed(&session.login.user).map(str::to_owned);
        if session.expires <= Instant::now() || current.as_deref() != Some(&session.login.sealed) {
            sessions.by_token.remove(&token);
            return Err(code::EXPIRED_SESSION);
        }
        Ok(session.login.clone())
    }

    /// Whether `credential` is the client hash `sealed` was made from; repeats of the last
    /// match per user skip the bcrypt. `Err` (a server error) when no bcrypt slot came free
    /// within [`HASH_QUEUE`].
    async fn verify(&self, user: &str, sealed: &str, credential: &str) -> Result<bool, u8> {
        let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        let known = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(user).cloned();
        if known.is_some_and(|(d, s)| d == digest && s == sealed) {
            return Ok(true);
        }
        let (sealed_owned, credential) = (sealed.to_owned(), credential.to_owned());
        let matched = self.hashing(move || password::matches(&sealed_owned, &credential)).await?;
        if matched {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            verified.insert(user.to_owned(), (digest, sealed.to_owned()));
        }
        Ok(matched)
    }

    /// Runs a bcrypt once a slot is free (see [`Security::hashing`]).
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, u8> {
        let slot = tokio::time::timeout(HASH_QUEUE, self.hashing.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            tracing::warn!("too many logins at once: one refused with a server error");
            return Err(SERVER_ERROR);
        };
        tokio::task::spawn_blocking(work).await.map_err(|_| SERVER_ERROR)
    }

    fn query_users(&self, user: Option<String>) -> Result<Vec<u8>, u8> {
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

    fn query_roles(&self, role: Option<String>) -> Result<Vec<u8>, u8> {
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
    /// read just before (again if another change came first) and only if `allowed` holds on
    /// it; audited there as `caller`'s.
    async fn commit(
        &self,
        caller: &Caller,
        change: &Change,
        allowed: impl Fn(&SecurityDb) -> Result<(), u8>,
    ) -> Result<(), u8> {
        let service = self.service.get().ok_or(SERVER_ERROR)?;
        let actor = caller.user().unwrap_or_default();
        let origin = caller.peer.map_or_else(|| "client".to_owned(), |p| format!("client {p}"));
        let (action, target) = change.action();
        for _ in 0..CHANGE_ATTEMPTS {
            let (version, mut db) = self.read().await.map_err(|error| {
                tracing::warn!(%error, "users and roles unreadable; admin command refused");
                SERVER_ERROR
            })?;
            allowed(&db)?;
            db.apply(change)?;
            let event = AuditEvent::now(actor, &origin, action, &format!("{}/{target}", self.site))
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
async fn seal(client_hash: Secret) -> Result<Secret, u8> {
    if !password::is_client_hash(client_hash.expose()) {
        return Err(code::INVALID_PASSWORD);
    }
    tokio::task::spawn_blocking(move || password::seal(client_hash.expose()))
        .await
        .map_err(|_| SERVER_ERROR)?
        .map(Secret::new)
        .map_err(|_| SERVER_ERROR)
}

/// The change a user-admin command makes.
async fn user_admin_change(command: AdminCommand) -> Result<Change, u8> {
    let set = |items: Vec<String>| items.into_iter().collect();
    Ok(match command {
        AdminCommand::CreateUser { user, password, roles } => {
            let password = seal(password).await?;
            Change::CreateUser { user, password, roles: set(roles), since: rand::random() }
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
