//! Each site's security document (its users and roles, see `ferry_node::security`), kept in the
//! topology store as opaque JSON: read whole, and replaced whole only over the version the
//! writer read, with the audit event that says who changed what in the same transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::audit::{AuditEvent, insert_in};
use crate::store::{StoreError, TopologyStore};

/// A site's security document and how many changes made it (0: none yet, the document `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSecurity {
    pub version: i64,
    pub document: serde_json::Value,
}

/// A replacement of a site's document, written only if the stored one is still `expected`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityUpdate {
    pub expected: i64,
    pub document: serde_json::Value,
    /// What the change was, by whom: recorded with it.
    pub event: AuditEvent,
}

impl TopologyStore {
    /// The security document of `site`.
    pub async fn security(&self, site: &str) -> Result<SiteSecurity, StoreError> {
        let row = sqlx::query("SELECT version, document FROM site_security WHERE site = $1")
            .bind(site)
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else {
            return Ok(SiteSecurity { version: 0, document: serde_json::json!({}) });
        };
        let text: String = row.try_get(1)?;
        let document = serde_json::from_str(&text).map_err(|e| StoreError::CorruptSecurity {
            site: site.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(SiteSecurity { version: row.try_get(0)?, document })
    }

    /// Replaces the security document of `site` if its version is still `update.expected`,
    /// recording `update.event`; returns the new version, or `None` when another writer got
    /// there first (nothing changed).
    pub async fn update_security(
        &self,
        site: &str,
        mut update: SecurityUpdate,
    ) -> Result<Option<i64>, StoreError> {
        let text = update.document.to_string();
        let next = update.expected + 1;
        let mut transaction = self.pool().begin().await?;
        let written = if update.expected == 0 {
            let inserted = sqlx::query(
                "INSERT INTO site_security (site, version, document) VALUES ($1, $2, $3) \
                 ON CONFLICT (site) DO NOTHING",
            )
            .bind(site)
            .bind(next)
            .bind(&text)
            .execute(&mut *transaction)
            .await?;
            inserted.rows_affected()
        } else {
            sqlx::query(
                "UPDATE site_security SET version = $1, document = $2 \
                 WHERE site = $3 AND version = $4",
            )
            .bind(next)
            .bind(&text)
            .bind(site)
            .bind(update.expected)
            .execute(&mut *transaction)
            .await?
            .rows_affected()
        };
        if written == 0 {
            transaction.rollback().await?;
            return Ok(None);
        }
        if update.event.at_ms == 0 {
            update.event.at_ms = crate::store::now_ms();
        }
        insert_in(&mut transaction, &mut update.event).await?;
        transaction.commit().await?;
        update.event.log();
        Ok(Some(next))
    }
}
