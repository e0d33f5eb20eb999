//! The topology version store: every applied topology file, with history, in SQL.
//!
//! One schema serves SQLite (the embedded default: a file, zero set-up) and PostgreSQL (by URL,
//! for deployments) through sqlx's `Any` driver; migrations run on open. A version records the
//! file content, its parsed form, author, time, comment and parent. Version numbers are assigned
//! as `parent + 1` by the writer, so of two concurrent writers exactly one inserts the next number
//! and the other gets [`StoreError::Conflict`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::audit::AuditEvent;
use crate::{InvalidTopology, Topology, parse_topology};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A version number; the first applied file is version 1.
pub type VersionNumber = i64;

/// One stored topology version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub version: VersionNumber,
    /// The version this one replaced; `None` for the first.
    pub parent: Option<VersionNumber>,
    /// Where the content came from (the file name given to `apply`).
    pub source: String,
    /// The topology file, byte for byte.
    pub content: String,
    /// The parsed and validated form of `content`.
    pub topology: Topology,
    pub author: String,
    pub comment: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// A version without its content, as listed by history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSummary {
    pub version: VersionNumber,
    pub parent: Option<VersionNumber>,
    pub source: String,
    pub author: String,
    pub comment: String,
    pub created_at_ms: i64,
}

/// What to apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// File name, used in diagnostics and history.
    pub source: String,
    /// The topology file's text.
    pub content: String,
    pub author: String,
    pub comment: String,
    /// Apply only if this is still the current version (compare-and-set; 0 for an empty store);
    /// `None` applies on top of whatever is current when the write happens.
    pub expected_parent: Option<VersionNumber>,
}

/// The outcome of an apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Applied {
    /// A new version was stored.
    Created { version: VersionNumber },
    /// The content equals the current version's; nothing was stored.
    Unchanged { version: VersionNumber },
}

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("connect to topology store {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrate topology store {url}: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    #[error("topology store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("topology refused, nothing changed:\n{0}")]
    Invalid(#[from] InvalidTopology),
    #[error(
        "conflict: version {attempted} was written by another apply meanwhile (current is \
         {current}); nothing changed — review the new version and apply again"
    )]
    Conflict { attempted: VersionNumber, current: VersionNumber },
    #[error("topology version {0} does not exist")]
    NotFound(VersionNumber),
    #[error("no topology has been applied yet")]
    Empty,
    #[error("topology version {version} in the store is corrupt: {reason}")]
    Corrupt { version: VersionNumber, reason: String },
    #[error("topology store busy: {0}")]
    Busy(&'static str),
    #[error("the security document of site '{site}' in the store is corrupt: {reason}")]
    CorruptSecurity { site: String, reason: String },
}

/// A connection pool to the version store.
#[derive(Debug, Clone)]
pub struct TopologyStore {
    pool: AnyPool,
}

const SELECT_VERSION: &str = "SELECT version, parent, source, content, parsed, author, comment, \
     created_at_ms FROM topology_versions WHERE version = $1";
const INSERT_VERSION: &str = "INSERT INTO topology_versions (version, parent, source, content, \
     parsed, author, comment, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

impl TopologyStore {
    /// Opens (creating if needed) the store at `url`: `sqlite://PATH`, `postgres://…`, or a plain
    /// file path (SQLite). Runs pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = normalize_url(url);
        let shown = redact(&url);
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Connect {
                    url: shown.clone(),
                    source: sqlx::Error::Io(e),
                })?;
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { url: shown.clone(), source })?;
        MIGRATOR.run(&pool).await.map_err(|source| StoreError::Migrate { url: shown, source })?;
        Ok(Self { pool })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The newest version number, if any (cheap: used for change polling).
    pub async fn head(&self) -> Result<Option<VersionNumber>, StoreError> {
        let row =
            sqlx::query("SELECT MAX(version) FROM topology_versions").fetch_one(&self.pool).await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// The current (newest) version.
    pub async fn current(&self) -> Result<Version, StoreError> {
        let head = self.head().await?.ok_or(StoreError::Empty)?;
        self.get(head).await
    }

    /// One version, checked against corruption.
    pub async fn get(&self, version: VersionNumber) -> Result<Version, StoreError> {
        let row = sqlx::query(SELECT_VERSION)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound(version))?;
        decode_version(&row)
    }

    /// Every version, oldest first.
    pub async fn history(&self) -> Result<Vec<VersionSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, parent, source, author, comment, created_at_ms \
             FROM topology_versions ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(VersionSummary {
                    version: row.try_get(0)?,
                    parent: row.try_get(1)?,
                    source: row.try_get(2)?,
                    author: row.try_get(3)?,
                    comment: row.try_get(4)?,
                    created_at_ms: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// Validates and stores a topology file as the next version, written straight to the store
    /// (its audit event's origin and recorder: `store`). An invalid file, a stale
    /// `expected_parent` or a concurrent writer changes nothing.
    pub async fn apply(&self, request: ApplyRequest) -> Result<Applied, StoreError> {
        self.apply_from(request, "store", "store").await
    }

    /// [`TopologyStore::apply`] for a caller at `origin`, recorded by `recorded_by` (the
    /// topology service's authenticated caller). A new version and its audit event
    /// (`topology.apply`) are stored together or not at all.
    pub async fn apply_from(
        &self,
        request: ApplyRequest,
        origin: &str,
        recorded_by: &str,
    ) -> Result<Applied, StoreError> {
        let validated = parse_topology(&request.source, &request.content)?;
        let head = self.head().await?;
        // An expected parent of 0 means "the store is empty".
        if let Some(expected) = request.expected_parent
            && expected != head.unwrap_or(0)
        {
            return Err(StoreError::Conflict {
                attempted: expected + 1,
                current: head.unwrap_or(0),
            });
        }
        if let Some(current) = head {
            let row = sqlx::query("SELECT content FROM topology_versions WHERE version = $1")
                .bind(current)
                .fetch_one(&self.pool)
                .await?;
            if row.try_get::<String, _>(0)? == request.content {
                return Ok(Applied::Unchanged { version: current });
            }
        }
        let version = head.unwrap_or(0) + 1;
        let parsed = serde_json::to_string(&validated.topology)
            .map_err(|e| StoreError::Corrupt { version, reason: format!("encode: {e}") })?;
        let mut event = AuditEvent::now(
            &request.author,
            origin,
            "topology.apply",
            &format!("version {version}"),
        )
        .detail(format!("source: {}; comment: {}", request.source, request.comment));
        event.recorded_by = recorded_by.to_owned();
        let mut transaction = self.pool.begin().await?;
        let inserted = sqlx::query(INSERT_VERSION)
            .bind(version)
            .bind(head)
            .bind(&request.source)
            .bind(&request.content)
            .bind(&parsed)
            .bind(&request.author)
            .bind(&request.comment)
            .bind(event.at_ms)
            .execute(&mut *transaction)
            .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let current = self.head().await?.unwrap_or(version);
                return Err(StoreError::Conflict { attempted: version, current });
            }
            Err(e) => return Err(e.into()),
        }
        crate::audit::insert_in(&mut transaction, &mut event).await?;
        transaction.commit().await?;
        event.log();
        Ok(Applied::Created { version })
    }

    /// Stores version `to`'s content again as a new version on top of the current one.
    pub async fn rollback(
        &self,
        to: VersionNumber,
        author: &str,
        comment: &str,
    ) -> Result<Applied, StoreError> {
        let target = self.get(to).await?;
        let head = self.head().await?;
        self.apply(ApplyRequest {
            source: target.source,
            content: target.content,
            author: author.to_owned(),
            comment: if comment.is_empty() {
                format!("rollback to version {to}")
            } else {
                comment.to_owned()
            },
            expected_parent: head,
        })
        .await
    }
}

fn decode_version(row: &AnyRow) -> Result<Version, StoreError> {
    let version: i64 = row.try_get(0)?;
    let content: String = row.try_get(3)?;
    let source: String = row.try_get(2)?;
    let parsed: String = row.try_get(4)?;
    let corrupt = |reason: String| StoreError::Corrupt { version, reason };
    let topology: Topology = serde_json::from_str(&parsed)
        .map_err(|e| corrupt(format!("parsed form does not decode: {e}")))?;
    // The content is the source of truth; a row whose two forms disagree was altered. Only
    // parse it (no cross-field validation), so a later, stricter validator does not turn old
    // versions into "corrupt" ones.
    let reparsed: Topology = toml::from_str(&content)
        .map_err(|e| corrupt(format!("stored content no longer parses: {}", e.message())))?;
    if reparsed != topology {
        return Err(corrupt("parsed form does not match the stored content".into()));
    }
    Ok(Version {
        version,
        parent: row.try_get(1)?,
        source,
        content,
        topology,
        author: row.try_get(5)?,
        comment: row.try_get(6)?,
        created_at_ms: row.try_get(7)?,
    })
}

/// A plain path means an SQLite file; SQLite URLs get `mode=rwc` so the file is created.
fn normalize_url(url: &str) -> String {
    let url = if url.contains("://") { url.to_owned() } else { format!("sqlite://{url}") };
    if url.starts_with("sqlite://") && !url.contains("mode=") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url
    }
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_and_redacted() {
        assert_eq!(normalize_url("data/t.db"), "sqlite://data/t.db?mode=rwc");
        assert_eq!(normalize_url("sqlite://x.db?mode=ro"), "sqlite://x.db?mode=ro");
        assert_eq!(normalize_url("postgres://u:p@h/db"), "postgres://u:p@h/db");
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
