//! Tenants and their API tokens. Tokens are random and stored only as their SHA-256.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{is_unique_violation, now_ms, Result, Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant { id: i64, name: String },
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random API token: `kiln_` and 40 hex chars.
pub fn new_token() -> String {
    let bytes: [u8; 20] = rand::random();
    format!("kiln_{}", hex::encode(bytes))
}

impl Store {
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let now = now_ms();
        let id = sqlx::query("INSERT INTO tenants (name, created_at) VALUES (?, ?) RETURNING id")
            .bind(name)
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(format!("tenant {name}")) } else { e.into() })?
            .get(0);
        Ok(Tenant { id, name: name.into(), created_at: now })
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| Tenant { id: r.get(0), name: r.get(1), created_at: r.get(2) }).collect())
    }

    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Tenant { id: r.get(0), name: r.get(1), created_at: r.get(2) }))
    }

    /// Stores a token's hash; `tenant_id` None makes an admin token.
    pub async fn add_token(&self, tenant_id: Option<i64>, name: &str, token: &str) -> Result<()> {
        sqlx::query("INSERT INTO api_tokens (tenant_id, token_sha256, name, created_at) VALUES (?, ?, ?, ?)")
            .bind(tenant_id)
            .bind(token_sha256(token))
            .bind(name)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn has_admin_token(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE tenant_id IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Looks a bearer token up by its hash. The hash is the index key, so the comparison never
    /// touches the secret itself.
    pub async fn principal_for_token(&self, token: &str) -> Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT t.tenant_id, n.name FROM api_tokens t LEFT JOIN tenants n ON n.id = t.tenant_id
             WHERE t.token_sha256 = ?",
        )
        .bind(token_sha256(token))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| match r.get::<Option<i64>, _>(0) {
            None => Principal::Admin,
            Some(id) => Principal::Tenant { id, name: r.get(1) },
        }))
    }
}
