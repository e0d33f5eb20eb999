//! The audit trail, kept in the topology store beside the versions (SQLite or PostgreSQL): who
//! did what to the deployment, when, from where, and how it ended. The topology service records
//! every version it stores; nodes report link controls and drills report their runs through the
//! service (`POST /v1/audit`), which records the token that reported each event. Every recorded
//! event is also a structured log event (target `ferry::audit`).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{StoreError, TopologyStore, now_ms};

/// One event of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the trail (assigned when recorded; 0 before).
    #[serde(default)]
    pub id: i64,
    /// Milliseconds since the Unix epoch (assigned when recorded if 0).
    #[serde(default)]
    pub at_ms: i64,
    /// Who did it: a token's name, or what a writer straight to the store says it is.
    pub actor: String,
    /// Where from: the caller's address, a node, or `store` for a writer straight to it.
    pub origin: String,
    /// What: `topology.apply`, `link.pause`, `drill.switchover`, …
    pub action: String,
    /// What it was done to: `version 3`, `a -> b`, …
    pub target: String,
    /// Anything else worth keeping (a version's comment, a drill's RTO).
    #[serde(default)]
    pub detail: String,
    /// `ok`, or why it failed.
    pub outcome: String,
    /// The token that recorded the event (the service's caller), or `store`.
    #[serde(default)]
    pub recorded_by: String,
}

impl AuditEvent {
    /// An event happening now, with outcome `ok`.
    pub fn now(actor: &str, origin: &str, action: &str, target: &str) -> AuditEvent {
        AuditEvent {
            id: 0,
            at_ms: now_ms(),
            actor: actor.to_owned(),
            origin: origin.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: String::new(),
            outcome: "ok".to_owned(),
            recorded_by: String::new(),
        }
    }

    /// With `detail`.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = detail.into();
        self
    }

    /// With `outcome`.
    pub fn outcome(mut self, outcome: impl Into<String>) -> AuditEvent {
        self.outcome = outcome.into();
        self
    }

    /// Emits the event as a structured log event.
    pub fn log(&self) {
        tracing::info!(
            target: "ferry::audit",
            actor = %self.actor,
            origin = %self.origin,
            action = %self.action,
            target_ = %self.target,
            detail = %self.detail,
            outcome = %self.outcome,
            recorded_by = %self.recorded_by,
            "audit"
        );
    }
}

/// Inserts `event` as the trail's next id (set on `event`), on `connection` (a transaction's,
/// so an event and what it records are stored together).
pub(crate) async fn insert(
    connection: &mut sqlx::AnyConnection,
    event: &mut AuditEvent,
) -> Result<(), sqlx::Error> {
    let row = sqlx::query("SELECT MAX(id) FROM audit_events").fetch_one(&mut *connection).await?;
    event.id = row.try_get::<Option<i64>, _>(0)?.unwrap_or(0) + 1;
    sqlx::query(
        "INSERT INTO audit_events (id, at_ms, actor, origin, action, target, detail, outcome, \
         recorded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(event.id)
    .bind(event.at_ms)
    .bind(&event.actor)
    .bind(&event.origin)
    .bind(&event.action)
    .bind(&event.target)
    .bind(&event.detail)
    .bind(&event.outcome)
    .bind(&event.recorded_by)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// How many times a writer tries the next id after losing it to a concurrent writer.
const ID_ATTEMPTS: usize = 16;

/// Inserts `event` inside `transaction` (so it is stored with what it records, or not at
/// all), each attempt in a savepoint: an id lost to a concurrent writer costs that attempt,
/// never the transaction (PostgreSQL aborts a whole transaction on a failed statement).
pub(crate) async fn insert_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: &mut AuditEvent,
) -> Result<(), StoreError> {
    use sqlx::Acquire as _;
    for _ in 0..ID_ATTEMPTS {
        let mut savepoint = (&mut **transaction).begin().await?;
        match insert(&mut savepoint, event).await {
            Ok(()) => return Ok(savepoint.commit().await?),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                savepoint.rollback().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Busy("audit trail: every id tried was taken by a concurrent writer"))
}

impl TopologyStore {
    /// Appends `event` to the trail (and logs it); returns it with its id and time.
    pub async fn record(&self, mut event: AuditEvent) -> Result<AuditEvent, StoreError> {
        if event.at_ms == 0 {
            event.at_ms = now_ms();
        }
        if event.recorded_by.is_empty() {
            event.recorded_by = "store".to_owned();
        }
        for _ in 0..ID_ATTEMPTS {
            let mut connection = self.pool().acquire().await?;
            match insert(&mut connection, &mut event).await {
                Ok(()) => {
                    event.log();
                    return Ok(event);
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Busy("audit trail: every id tried was taken by a concurrent writer"))
    }

    /// The newest `limit` events of the trail, oldest first.
    pub async fn audit_trail(&self, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, origin, action, target, detail, outcome, recorded_by \
             FROM audit_events ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.max(0))
        .fetch_all(self.pool())
        .await?;
        let mut events = rows
            .iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    actor: row.try_get(2)?,
                    origin: row.try_get(3)?,
                    action: row.try_get(4)?,
                    target: row.try_get(5)?,
                    detail: row.try_get(6)?,
                    outcome: row.try_get(7)?,
                    recorded_by: row.try_get(8)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        events.reverse();
        Ok(events)
    }
}
