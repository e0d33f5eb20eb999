//! The access file a server checks tokens against, and the credential files holders keep.
//!
//! An access file is TOML, one `[[token]]` per holder: `name`, `role` and `sha256` (of the
//! secret). It holds no secret, so servers can share it freely; [`AccessFile`] re-reads it when it
//! changes, so granting or revoking needs no restart. A file that cannot be read or parsed denies
//! every request until it is fixed (a revocation must never be undone by a typo), and says why in
//! the server's log.
//!
//! A credential file holds one token, for its holder alone: written with mode 0600, and refused
//! when group or others may read it.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::token::{Role, Token, TokenError, check_name, hashes_equal};

/// One holder in an access file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessEntry {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token's secret, 64 hex digits.
    pub sha256: String,
}

/// Why an access or credential file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}:{line}: {message}")]
    Entry { origin: String, line: usize, message: String },
    #[error("{path}: {source}")]
    Token { path: PathBuf, source: TokenError },
    #[error(
        "{path} may be read by others (mode {mode:o}): a credential must be its holder's alone \
         (chmod 600)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "{path} may be written by others (mode {mode:o}): anyone who can write it can grant \
         themselves any role (chmod 644)"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} has no token named '{name}'")]
    NoSuchToken { path: PathBuf, name: String },
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    #[error("no credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("{0}")]
    Malformed(TokenError),
    #[error("token '{0}' is not accepted here")]
    Unknown(String),
}

/// A parsed access file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessList {
    entries: BTreeMap<String, AccessEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    token: Vec<toml::Spanned<EntryForm>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryForm {
    name: String,
    role: Role,
    sha256: String,
}

const HEADER: &str = "# Ferry access list: who may call the control plane (admin HTTP API, topology \
                      service).\n# Only SHA-256 hashes of token secrets: the tokens stay with \
                      their holders.\n";

impl AccessList {
    /// Reads an access file's text; `origin` names it in errors, which give the line.
    pub fn parse(origin: &str, text: &str) -> Result<AccessList, AccessError> {
        let form: FileForm = toml::from_str(text).map_err(|e| AccessError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut entries = BTreeMap::new();
        for spanned in form.token {
            let line = text.as_bytes()[..spanned.span().start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            let entry = spanned.into_inner();
            let fail =
                |message: String| AccessError::Entry { origin: origin.to_owned(), line, message };
            check_name(&entry.name).map_err(|e| fail(e.to_string()))?;
            let hex = entry.sha256.len() == 64
                && entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return Err(fail(format!(
                    "sha256 of '{}' is not 64 lowercase hex digits",
                    entry.name
                )));
            }
            if entries.contains_key(&entry.name) {
                return Err(fail(format!("token '{}' is listed twice", entry.name)));
            }
            let entry = AccessEntry { name: entry.name, role: entry.role, sha256: entry.sha256 };
            entries.insert(entry.name.clone(), entry);
        }
        Ok(AccessList { entries })
    }

    /// Reads the access file at `path`; refuses one that group or others may write.
    pub fn load(path: &Path) -> Result<AccessList, AccessError> {
        AccessList::parse(&path.display().to_string(), &read_access_file(path)?)
    }

    /// The access list at `path`, or an empty one when there is no file yet.
    pub fn load_or_empty(path: &Path) -> Result<AccessList, AccessError> {
        match std::fs::metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(AccessList::default()),
            _ => AccessList::load(path),
        }
    }

    /// Changes the access file at `path` (an empty list if there is none) with `change`, under
    /// an exclusive lock on `<path>.lock`, so two writers never lose each other's change; the
    /// file is written only if `change` succeeded and changed the list.
    pub fn update<T>(
        path: &Path,
        change: impl FnOnce(&mut AccessList) -> Result<T, AccessError>,
    ) -> Result<T, AccessError> {
        let failed = |source| AccessError::Write { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path.with_extension("lock"))
            .map_err(failed)?;
        // Released when `lock` is dropped, after the write.
        lock.lock().map_err(failed)?;
        let before = AccessList::load_or_empty(path)?;
        let mut list = before.clone();
        let outcome = change(&mut list)?;
        if list != before {
            list.save(path)?;
        }
        Ok(outcome)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = HEADER.to_owned();
        for entry in self.entries.values() {
            text.push_str(&format!(
                "\n[[token]]\nname = \"{}\"\nrole = \"{}\"\nsha256 = \"{}\"\n",
                entry.name, entry.role, entry.sha256
            ));
        }
        text
    }

    /// Writes the file atomically (a reader sees the old list or the new one, never half).
    pub fn save(&self, path: &Path) -> Result<(), AccessError> {
        write_atomically(path, self.render().as_bytes(), 0o644)
    }

    /// Accepts `token` with `role` (replacing any token of the same name).
    pub fn grant(&mut self, token: &Token, role: Role) {
        let entry = AccessEntry { name: token.name().to_owned(), role, sha256: token.hash() };
        self.entries.insert(entry.name.clone(), entry);
    }

    /// Stops accepting the token named `name`; false if there was none.
    pub fn revoke(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// The holders, by name.
    pub fn entries(&self) -> impl Iterator<Item = &AccessEntry> {
        self.entries.values()
    }

    /// Whether this list accepts `token`, and with which role.
    pub fn role_of(&self, token: &Token) -> Option<Role> {
        let entry = self.entries.get(token.name())?;
        hashes_equal(&entry.sha256, &token.hash()).then_some(entry.role)
    }

    /// The role of the bearer of `presented` (the header value after `Bearer `).
    pub fn check(&self, presented: &str) -> Result<(String, Role), Denied> {
        let token = Token::parse(presented).map_err(Denied::Malformed)?;
        let role = self.role_of(&token).ok_or_else(|| Denied::Unknown(token.name().to_owned()))?;
        Ok((token.name().to_owned(), role))
    }
}

/// The access file's text, refused when group or others may write it.
fn read_access_file(path: &Path) -> Result<String, AccessError> {
    read_guarded(path, 0o022, |path, mode| AccessError::Writable { path, mode })
}

/// The text of `path`, refused with `refusal` when its mode has any bit of `forbidden`.
fn read_guarded(
    path: &Path,
    forbidden: u32,
    refusal: fn(PathBuf, u32) -> AccessError,
) -> Result<String, AccessError> {
    let read_failed = |source| AccessError::Read { path: path.to_path_buf(), source };
    let mode = std::fs::metadata(path).map_err(read_failed)?.permissions().mode();
    if mode & forbidden != 0 {
        return Err(refusal(path.to_path_buf(), mode & 0o777));
    }
    std::fs::read_to_string(path).map_err(read_failed)
}

#[derive(Debug)]
struct Cached {
    /// The text last read; the list is parsed again only when the text differs.
    text: Option<String>,
    list: Result<Arc<AccessList>, String>,
}

/// An access file a server follows: [`AccessFile::current`] reads it on every request and
/// parses it again when its text changed (comparing text, not timestamps: a rewrite that
/// keeps the size and modification time must not leave a revoked token working).
#[derive(Debug)]
pub struct AccessFile {
    path: PathBuf,
    cached: Mutex<Cached>,
}

impl AccessFile {
    /// Follows the access file at `path`; fails if it cannot be read now (a server must not
    /// start open, nor start closed without saying why).
    pub fn open(path: &Path) -> Result<AccessFile, AccessError> {
        let text = read_access_file(path)?;
        let list = AccessList::parse(&path.display().to_string(), &text)?;
        Ok(AccessFile {
            path: path.to_path_buf(),
            cached: Mutex::new(Cached { text: Some(text), list: Ok(Arc::new(list)) }),
        })
    }

    /// The list as the file says now; an error (and every request denied) while the file
    /// cannot be read or parsed.
    pub fn current(&self) -> Result<Arc<AccessList>, String> {
        let text = read_access_file(&self.path);
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        let unchanged = match (&text, &cached.text) {
            (Ok(now), Some(before)) => now == before,
            _ => false,
        };
        if unchanged {
            return cached.list.clone();
        }
        let was_ok = cached.list.is_ok();
        let list = text.as_ref().map_err(ToString::to_string).and_then(|text| {
            AccessList::parse(&self.path.display().to_string(), text)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match &list {
            Ok(list) => tracing::info!(
                path = %self.path.display(),
                tokens = list.entries.len(),
                "access list read"
            ),
            Err(error) if was_ok || cached.text.is_some() => {
                tracing::error!(%error, "access list unreadable: every request is refused");
            }
            Err(_) => {}
        }
        *cached = Cached { text: text.ok(), list };
        cached.list.clone()
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it, created with `mode`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AccessError> {
    use std::io::Write as _;
    let failed = |source| AccessError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    // A name no one else uses, created only if absent (so never through a planted symlink).
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let unique = format!("tmp.{}.{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed));
    let temporary = path.with_extension(unique);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(failed)?;
    // The mode given at creation is masked by the umask.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

/// Writes a credential file holding `token`, readable by its owner alone.
pub fn write_credential(path: &Path, token: &Token) -> Result<(), AccessError> {
    write_atomically(path, format!("{}\n", token.expose()).as_bytes(), 0o600)
}

/// Writes a secret (a password) to a file readable by its owner alone.
pub fn write_secret(path: &Path, secret: &str) -> Result<(), AccessError> {
    write_atomically(path, format!("{secret}\n").as_bytes(), 0o600)
}

/// Reads a secret file written by [`write_secret`]; refuses one that group or others may read.
pub fn read_secret(path: &Path) -> Result<String, AccessError> {
    let text = read_guarded(path, 0o077, |path, mode| AccessError::Exposed { path, mode })?;
    Ok(text.trim_end_matches('\n').to_owned())
}

/// Reads a credential file; refuses one that group or others may read.
pub fn read_credential(path: &Path) -> Result<Token, AccessError> {
    let text = read_guarded(path, 0o077, |path, mode| AccessError::Exposed { path, mode })?;
    Token::parse(&text).map_err(|source| AccessError::Token { path: path.to_path_buf(), source })
}

/// Makes sure the holder of the credential file `credential` may call with `role` per the
/// access file `access`: keeps the token already there if the access file accepts it with that
/// role, else issues a new one named `name`, grants it, and writes both files. Returns the
/// token.
pub fn ensure_credential(
    access: &Path,
    credential: &Path,
    name: &str,
    role: Role,
) -> Result<Token, AccessError> {
    AccessList::update(access, |list| {
        if let Ok(token) = read_credential(credential)
            && token.name() == name
            && list.role_of(&token) == Some(role)
        {
            return Ok(token);
        }
        let token = Token::issue(name)
            .map_err(|source| AccessError::Token { path: credential.into(), source })?;
        write_credential(credential, &token)?;
        list.grant(&token, role);
        Ok(token)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(names: &[(&str, Role)]) -> (AccessList, Vec<Token>) {
        let mut list = AccessList::default();
        let tokens = names
            .iter()
            .map(|(name, role)| {
                let token = Token::issue(name).expect("issue");
                list.grant(&token, *role);
                token
            })
            .collect();
        (list, tokens)
    }

    #[test]
    fn a_list_checks_tokens_and_survives_its_own_file() {
        let (list, tokens) = granted(&[("ops", Role::Operator), ("ro", Role::ReadOnly)]);
        assert_eq!(list.check(&tokens[0].expose()), Ok(("ops".into(), Role::Operator)));
        assert_eq!(list.check(&tokens[1].expose()), Ok(("ro".into(), Role::ReadOnly)));
        let stranger = Token::issue("ops").expect("issue");
        assert_eq!(list.check(&stranger.expose()), Err(Denied::Unknown("ops".into())));
        assert_eq!(list.check("secret"), Err(Denied::Malformed(TokenError::Malformed)));
        let reread = AccessList::parse("access.toml", &list.render()).expect("parse");
        assert_eq!(reread, list);
        assert!(!list.render().contains(&tokens[0].expose()));
    }

    #[test]
    fn a_bad_access_file_is_refused_with_its_line() {
        let hash = "a".repeat(64);
        let cases = [
            (format!("[[token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"{hash}\"\n"), "line 3"),
            ("[[token]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"abc\"\n".to_owned(), ":1:"),
            (
                format!(
                    "[[token]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n\n\
                     [[token]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n"
                ),
                ":6:",
            ),
            ("[[tokens]]\nname = \"x\"\n".to_owned(), "unknown field"),
        ];
        for (text, expected) in cases {
            let error = AccessList::parse("access.toml", &text).expect_err(&text).to_string();
            assert!(error.contains(expected), "{error} lacks {expected}");
        }
    }

    #[test]
    fn the_followed_file_applies_grants_and_revocations_and_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.toml");
        let (mut list, tokens) = granted(&[("ops", Role::Operator)]);
        list.save(&path).expect("save");
        let file = AccessFile::open(&path).expect("open");
        let ops = tokens[0].expose();
        assert!(file.current().expect("list").check(&ops).is_ok());
        list.revoke("ops");
        list.save(&path).expect("save");
        assert!(file.current().expect("list").check(&ops).is_err());
        std::fs::write(&path, "[[token]]\nname = ").expect("write");
        assert!(file.current().is_err(), "a broken file must deny, not keep the old list");
        std::fs::remove_file(&path).expect("remove");
        assert!(file.current().is_err());
        assert!(AccessFile::open(&path).is_err());
    }

    #[test]
    fn a_same_size_rewrite_with_the_old_timestamp_is_still_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.toml");
        let (list, tokens) = granted(&[("aa", Role::Admin)]);
        list.save(&path).expect("save");
        let file = AccessFile::open(&path).expect("open");
        let before = std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
        // Another token of a same-length name: the file keeps its size.
        let (other, _) = granted(&[("bb", Role::Admin)]);
        std::fs::write(&path, other.render()).expect("rewrite in place");
        let times = std::fs::FileTimes::new().set_modified(before);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_times(times))
            .expect("keep mtime");
        assert!(file.current().expect("list").check(&tokens[0].expose()).is_err());
    }

    #[test]
    fn concurrent_grants_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.toml");
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let token = Token::issue(&format!("t{i}")).expect("issue");
                    AccessList::update(&path, |list| {
                        list.grant(&token, Role::ReadOnly);
                        Ok(())
                    })
                    .expect("update");
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        assert_eq!(AccessList::load(&path).expect("load").entries().count(), 8);
    }

    #[test]
    fn an_access_file_others_may_write_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.toml");
        granted(&[("a", Role::Admin)]).0.save(&path).expect("save");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(matches!(AccessList::load(&path), Err(AccessError::Writable { .. })));
        assert!(AccessFile::open(&path).is_err());
    }

    #[test]
    fn credentials_are_private_and_ensured_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (access, credential) = (dir.path().join("access.toml"), dir.path().join("a.token"));
        let first = ensure_credential(&access, &credential, "admin", Role::Admin).expect("ensure");
        let mode = std::fs::metadata(&credential).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_credential(&credential).expect("read"), first);
        let again = ensure_credential(&access, &credential, "admin", Role::Admin).expect("ensure");
        assert_eq!(again, first, "a valid credential is kept");
        let list = AccessList::load(&access).expect("load");
        assert_eq!(list.role_of(&first), Some(Role::Admin));
        std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(read_credential(&credential), Err(AccessError::Exposed { .. })));
    }
}
