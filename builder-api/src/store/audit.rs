//! The audit log: who changed what, when, from where. One row per successful mutating API call
//! (written by the router's role check, see `router.rs`) and one per build a webhook started
//! (written with the delivery, see `deliveries.rs`); never updated or deleted.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, opt_text, text, Result, Store};

/// A row to write. `actor` is the token (`token:<id>:<name>`), `admin`, or `webhook:<source>`.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub actor: String,
    pub token_id: Option<i64>,
    pub tenant_id: Option<i64>,
    /// `build.trigger`, `token.revoke`, … (the route table names them).
    pub action: String,
    /// What was acted on: `build/42`, `app/api`, `token/7`.
    pub target: String,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub token_id: Option<i64>,
    pub tenant_id: Option<i64>,
    pub tenant: Option<String>,
    pub action: String,
    pub target: String,
    pub client_addr: Option<String>,
}

impl Store {
    pub async fn audit(&self, entry: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, token_id, tenant_id, action, target, client_addr) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(text(&entry.actor))
        .bind(entry.token_id)
        .bind(entry.tenant_id)
        .bind(text(&entry.action))
        .bind(text(&entry.target))
        .bind(opt_text(entry.client_addr.as_deref()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Newest first; `tenant` None: every tenant's entries and those of no tenant.
    pub async fn audit_log(&self, tenant: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT l.id, l.at, l.actor, l.token_id, l.tenant_id, t.name AS tenant, l.action, l.target, l.client_addr
             FROM audit_log l LEFT JOIN tenants t ON t.id = l.tenant_id
             WHERE $1 IS NULL OR l.tenant_id = $1 ORDER BY l.id DESC LIMIT $2",
        )
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get("id"),
                at: r.get("at"),
                actor: r.get("actor"),
                token_id: r.get("token_id"),
                tenant_id: r.get("tenant_id"),
                tenant: r.get("tenant"),
                action: r.get("action"),
                target: r.get("target"),
                client_addr: r.get("client_addr"),
            })
            .collect())
    }
}
