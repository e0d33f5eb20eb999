//! A site's users and roles, as Aerospike's security keeps them: each user has a password and
//! roles; a role is a set of privileges, each global or scoped to a namespace (and set). The
//! predefined roles are named after their privilege (`read`, `read-write`, `sys-admin`, …).
//! Pure: changes are applied to a value that the deployment's store keeps, and a check answers
//! whether a user's privileges allow an operation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::password::Secret;

/// Result codes of Aerospike's security commands.
pub mod code {
    pub const OK: u8 = 0;
    pub const QUERY_END: u8 = 50;
    pub const SECURITY_NOT_ENABLED: u8 = 52;
    pub const INVALID_COMMAND: u8 = 54;
    pub const INVALID_FIELD: u8 = 55;
    pub const INVALID_USER: u8 = 60;
    pub const USER_ALREADY_EXISTS: u8 = 61;
    pub const INVALID_PASSWORD: u8 = 62;
    pub const INVALID_CREDENTIAL: u8 = 65;
    pub const EXPIRED_SESSION: u8 = 66;
    pub const INVALID_ROLE: u8 = 70;
    pub const ROLE_ALREADY_EXISTS: u8 = 71;
    pub const INVALID_PRIVILEGE: u8 = 72;
    pub const QUOTAS_NOT_ENABLED: u8 = 74;
    pub const NOT_AUTHENTICATED: u8 = 80;
    pub const ROLE_VIOLATION: u8 = 81;
}

/// Privilege codes as clients send them; codes of 10 and up can be scoped.
pub mod privilege {
    pub const USER_ADMIN: u8 = 0;
    pub const SYS_ADMIN: u8 = 1;
    pub const DATA_ADMIN: u8 = 2;
    pub const UDF_ADMIN: u8 = 3;
    pub const SINDEX_ADMIN: u8 = 4;
    pub const READ: u8 = 10;
    pub const READ_WRITE: u8 = 11;
    pub const READ_WRITE_UDF: u8 = 12;
    pub const WRITE: u8 = 13;
    pub const TRUNCATE: u8 = 14;

    /// Each privilege with the name of its predefined role.
    pub const NAMED: [(u8, &str); 10] = [
        (USER_ADMIN, "user-admin"),
        (SYS_ADMIN, "sys-admin"),
        (DATA_ADMIN, "data-admin"),
        (UDF_ADMIN, "udf-admin"),
        (SINDEX_ADMIN, "sindex-admin"),
        (READ, "read"),
        (READ_WRITE, "read-write"),
        (READ_WRITE_UDF, "read-write-udf"),
        (WRITE, "write"),
        (TRUNCATE, "truncate"),
    ];

    /// Whether a privilege of `code` may name a namespace and set.
    pub fn scoped(code: u8) -> bool {
        code >= READ
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
    Truncate,
    /// Server configuration and XDR control (`set-config`, `xdr-link`).
    SysAdmin,
    UserAdmin,
}

impl Permission {
    /// The privileges that grant it, for a refusal's message.
    pub fn privileges(self) -> &'static str {
        match self {
            Permission::Read => "read, read-write or read-write-udf",
            Permission::Write => "write, read-write or read-write-udf",
            Permission::Truncate => "truncate or data-admin",
            Permission::SysAdmin => "sys-admin",
            Permission::UserAdmin => "user-admin",
        }
    }
}

/// One privilege: global (empty namespace) or scoped to a namespace, or to one of its sets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Privilege {
    pub code: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub set: String,
}

impl Privilege {
    pub fn global(code: u8) -> Privilege {
        Privilege { code, namespace: String::new(), set: String::new() }
    }

    /// Whether it is one Aerospike defines, with a scope only where one is allowed and a set
    /// only within a namespace.
    pub fn valid(&self) -> bool {
        privilege::NAMED.iter().any(|(code, _)| *code == self.code)
            && (privilege::scoped(self.code) || self.namespace.is_empty())
            && (self.set.is_empty() || !self.namespace.is_empty())
    }

    /// Whether this privilege allows `permission` on `namespace`/`set` (an empty namespace:
    /// an operation that names none, which only a global privilege allows).
    pub fn allows(&self, permission: Permission, namespace: &str, set: &str) -> bool {
        use privilege::*;
        let in_scope = self.namespace.is_empty()
            || (self.namespace == namespace && (self.set.is_empty() || self.set == set));
        let granted = match permission {
            Permission::Read => matches!(self.code, READ | READ_WRITE | READ_WRITE_UDF),
            Permission::Write => matches!(self.code, WRITE | READ_WRITE | READ_WRITE_UDF),
            Permission::Truncate => matches!(self.code, TRUNCATE | DATA_ADMIN),
            Permission::SysAdmin => self.code == SYS_ADMIN,
            Permission::UserAdmin => self.code == USER_ADMIN,
        };
        granted && in_scope
    }
}

/// A user: a password (a salted bcrypt of what the client sends, see [`super::password`]) and
/// the names of its roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub password: String,
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// Drawn at random when the user is created: a user dropped and created again under the
    /// same name is another user, and connections logged in as the first are not the second's.
    #[serde(default)]
    pub since: u64,
}

/// A site's users and the roles it defines besides the predefined ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityDb {
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeSet<Privilege>>,
}

/// A change to a site's users or roles: what an admin command does once its password, if any,
/// is sealed (see [`super::password::seal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateUser { user: String, password: Secret, roles: BTreeSet<String>, since: u64 },
    DropUser { user: String },
    SetPassword { user: String, password: Secret },
    GrantRoles { user: String, roles: BTreeSet<String> },
    RevokeRoles { user: String, roles: BTreeSet<String> },
    CreateRole { role: String, privileges: BTreeSet<Privilege> },
    DropRole { role: String },
    GrantPrivileges { role: String, privileges: BTreeSet<Privilege> },
    RevokePrivileges { role: String, privileges: BTreeSet<Privilege> },
}

impl Change {
    /// The audit trail's action, and what it acted on.
    pub fn action(&self) -> (&'static str, &str) {
        match self {
            Change::CreateUser { user, .. } => ("user.create", user),
            Change::DropUser { user } => ("user.drop", user),
            Change::SetPassword { user, .. } => ("user.set-password", user),
            Change::GrantRoles { user, .. } => ("user.grant-roles", user),
            Change::RevokeRoles { user, .. } => ("user.revoke-roles", user),
            Change::CreateRole { role, .. } => ("role.create", role),
            Change::DropRole { role } => ("role.drop", role),
            Change::GrantPrivileges { role, .. } => ("role.grant-privileges", role),
            Change::RevokePrivileges { role, .. } => ("role.revoke-privileges", role),
        }
    }

    /// What changed, for the audit trail: roles and privileges, never a password.
    pub fn detail(&self) -> String {
        let names = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(",");
        let privileges =
            |set: &BTreeSet<Privilege>| set.iter().map(describe).collect::<Vec<_>>().join(",");
        match self {
            Change::CreateUser { roles, .. }
            | Change::GrantRoles { roles, .. }
            | Change::RevokeRoles { roles, .. } => format!("roles={}", names(roles)),
            Change::CreateRole { privileges: p, .. }
            | Change::GrantPrivileges { privileges: p, .. }
            | Change::RevokePrivileges { privileges: p, .. } => {
                format!("privileges={}", privileges(p))
            }
            Change::DropUser { .. } | Change::SetPassword { .. } | Change::DropRole { .. } => {
                String::new()
            }
        }
    }
}

/// A privilege as `name[:namespace[.set]]`.
pub fn describe(privilege: &Privilege) -> String {
    let name = privilege::NAMED
        .iter()
        .find(|(code, _)| *code == privilege.code)
        .map_or_else(|| privilege.code.to_string(), |(_, name)| (*name).to_owned());
    match (privilege.namespace.as_str(), privilege.set.as_str()) {
        ("", _) => name,
        (ns, "") => format!("{name}:{ns}"),
        (ns, set) => format!("{name}:{ns}.{set}"),
    }
}

/// The privilege of a predefined role.
fn predefined(role: &str) -> Option<Privilege> {
    privilege::NAMED
        .iter()
        .find(|(_, name)| *name == role)
        .map(|(code, _)| Privilege::global(*code))
}

/// The roles of the user a site with security starts with.
pub const FIRST_ADMIN_ROLES: [&str; 4] = ["user-admin", "sys-admin", "data-admin", "read-write"];

impl SecurityDb {
    /// A site's users and roles when security is first turned on: one user, `admin`, whose
    /// stored password is `sealed`, with [`FIRST_ADMIN_ROLES`]: it manages users, configures
    /// links, truncates, and reads and writes every namespace.
    pub fn first(sealed: String) -> SecurityDb {
        let roles = FIRST_ADMIN_ROLES.iter().map(|r| (*r).to_owned()).collect();
        let admin = User { password: sealed, roles, since: rand::random() };
        SecurityDb { users: [("admin".to_owned(), admin)].into(), roles: BTreeMap::new() }
    }

    /// Whether `role` exists (predefined or defined here).
    pub fn role_exists(&self, role: &str) -> bool {
        predefined(role).is_some() || self.roles.contains_key(role)
    }

    /// The privileges of a role, predefined or defined here.
    pub fn privileges_of(&self, role: &str) -> Vec<Privilege> {
        match predefined(role) {
            Some(privilege) => vec![privilege],
            None => self.roles.get(role).map(|p| p.iter().cloned().collect()).unwrap_or_default(),
        }
    }

    /// Every privilege `user` holds through its roles; `None` for an unknown user.
    pub fn grants(&self, user: &str) -> Option<Vec<Privilege>> {
        let user = self.users.get(user)?;
        Some(user.roles.iter().flat_map(|role| self.privileges_of(role)).collect())
    }

    /// Applies `change`; on a refusal (an Aerospike result code) nothing changed.
    pub fn apply(&mut self, change: &Change) -> Result<(), u8> {
        let known_roles = |roles: &BTreeSet<String>| {
            if roles.iter().all(|r| self.role_exists(r)) { Ok(()) } else { Err(code::INVALID_ROLE) }
        };
        let valid = |privileges: &BTreeSet<Privilege>| {
            if privileges.iter().all(Privilege::valid) {
                Ok(())
            } else {
                Err(code::INVALID_PRIVILEGE)
            }
        };
        match change {
            Change::CreateUser { user, password, roles, since } => {
                if user.is_empty() || user.len() > 63 {
                    return Err(code::INVALID_USER);
                }
                if self.users.contains_key(user) {
                    return Err(code::USER_ALREADY_EXISTS);
                }
                known_roles(roles)?;
                let password = password.expose().to_owned();
                let user_record = User { password, roles: roles.clone(), since: *since };
                self.users.insert(user.clone(), user_record);
            }
            Change::DropUser { user } => {
                self.users.remove(user).ok_or(code::INVALID_USER)?;
            }
            Change::SetPassword { user, password } => {
                let stored = self.users.get_mut(user).ok_or(code::INVALID_USER)?;
                stored.password = password.expose().to_owned();
            }
            Change::GrantRoles { user, roles } => {
                known_roles(roles)?;
                let user = self.users.get_mut(user).ok_or(code::INVALID_USER)?;
                user.roles.extend(roles.iter().cloned());
            }
            Change::RevokeRoles { user, roles } => {
                let user = self.users.get_mut(user).ok_or(code::INVALID_USER)?;
                user.roles.retain(|r| !roles.contains(r));
            }
            Change::CreateRole { role, privileges } => {
                if role.is_empty() || role.len() > 63 {
                    return Err(code::INVALID_ROLE);
                }
                if self.role_exists(role) {
                    return Err(code::ROLE_ALREADY_EXISTS);
                }
                valid(privileges)?;
                self.roles.insert(role.clone(), privileges.clone());
            }
            Change::DropRole { role } => {
                // Predefined roles cannot be dropped.
                self.roles.remove(role).ok_or(code::INVALID_ROLE)?;
                for user in self.users.values_mut() {
                    user.roles.remove(role);
                }
            }
            Change::GrantPrivileges { role, privileges } => {
                valid(privileges)?;
                let held = self.roles.get_mut(role).ok_or(code::INVALID_ROLE)?;
                held.extend(privileges.iter().cloned());
            }
            Change::RevokePrivileges { role, privileges } => {
                let held = self.roles.get_mut(role).ok_or(code::INVALID_ROLE)?;
                held.retain(|p| !privileges.contains(p));
            }
        }
        Ok(())
    }
}

/// Whether `grants` allow `permission` on `namespace`/`set`.
pub fn allowed(grants: &[Privilege], permission: Permission, namespace: &str, set: &str) -> bool {
    grants.iter().any(|p| p.allows(permission, namespace, set))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
        items.iter().cloned().collect()
    }

    fn db_with(user: &str, roles: &[&str]) -> SecurityDb {
        let mut db = SecurityDb::default();
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        let password = Secret::new("h".into());
        let create = Change::CreateUser { user: user.into(), password, roles, since: 1 };
        db.apply(&create).expect("create");
        db
    }

    #[test]
    fn predefined_roles_grant_what_their_names_say() {
        let db = db_with("u", &["read-write"]);
        let grants = db.grants("u").expect("user");
        assert!(allowed(&grants, Permission::Read, "test", "s"));
        assert!(allowed(&grants, Permission::Write, "test", "s"));
        assert!(!allowed(&grants, Permission::SysAdmin, "", ""));
        let db = db_with("w", &["write"]);
        let grants = db.grants("w").expect("user");
        assert!(!allowed(&grants, Permission::Read, "test", "s"), "write alone does not read");
        let db = db_with("d", &["data-admin"]);
        assert!(allowed(&db.grants("d").expect("user"), Permission::Truncate, "test", ""));
    }

    #[test]
    fn scoped_privileges_hold_only_in_their_namespace_and_set() {
        let mut db = db_with("u", &[]);
        let scoped = Privilege { code: privilege::READ, namespace: "test".into(), set: "a".into() };
        let create = Change::CreateRole { role: "r".into(), privileges: set(&[scoped]) };
        db.apply(&create).expect("role");
        db.apply(&Change::GrantRoles { user: "u".into(), roles: set(&["r".to_owned()]) })
            .expect("grant");
        let grants = db.grants("u").expect("user");
        assert!(allowed(&grants, Permission::Read, "test", "a"));
        assert!(!allowed(&grants, Permission::Read, "test", "b"));
        assert!(!allowed(&grants, Permission::Read, "other", "a"));
        assert!(!allowed(&grants, Permission::Read, "", ""), "a scan of nothing named");
        // Dropping the role takes it from its users.
        db.apply(&Change::DropRole { role: "r".into() }).expect("drop");
        assert!(db.grants("u").expect("user").is_empty());
    }

    #[test]
    fn refusals_change_nothing_and_carry_aerospike_codes() {
        let mut db = db_with("u", &["read"]);
        let before = db.clone();
        let password = Secret::new("h".into());
        let again = Change::CreateUser { user: "u".into(), password, roles: set(&[]), since: 2 };
        assert_eq!(db.apply(&again), Err(code::USER_ALREADY_EXISTS));
        let unknown_role = Change::GrantRoles { user: "u".into(), roles: set(&["nope".into()]) };
        assert_eq!(db.apply(&unknown_role), Err(code::INVALID_ROLE));
        assert_eq!(db.apply(&Change::DropUser { user: "x".into() }), Err(code::INVALID_USER));
        let predefined = Change::CreateRole { role: "read".into(), privileges: set(&[]) };
        assert_eq!(db.apply(&predefined), Err(code::ROLE_ALREADY_EXISTS));
        assert_eq!(db.apply(&Change::DropRole { role: "read".into() }), Err(code::INVALID_ROLE));
        let scoped_admin =
            Privilege { code: privilege::SYS_ADMIN, namespace: "test".into(), set: String::new() };
        let bad = Change::CreateRole { role: "r".into(), privileges: set(&[scoped_admin]) };
        assert_eq!(db.apply(&bad), Err(code::INVALID_PRIVILEGE));
        assert_eq!(db, before);
    }

    #[test]
    fn the_audit_detail_never_shows_a_password() {
        let password = Secret::new("secret-hash".into());
        let change = Change::SetPassword { user: "u".into(), password };
        assert_eq!(change.action(), ("user.set-password", "u"));
        assert!(!change.detail().contains("secret"));
        assert!(!format!("{change:?}").contains("secret"), "{change:?}");
        let scoped = Privilege { code: privilege::READ, namespace: "test".into(), set: "s".into() };
        let grant = Change::GrantPrivileges { role: "r".into(), privileges: set(&[scoped]) };
        assert_eq!(grant.detail(), "privileges=read:test.s");
    }
}
