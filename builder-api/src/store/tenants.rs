//! Tenants and their API tokens. Tokens are random and stored only as their SHA-256.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{is_unique_violation, now_ms, Result, Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
}

/// What a token may do, lowest first: the order is the check (`role >= required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads its tenant's apps, builds, logs, releases.
    Viewer,
    /// A viewer who also triggers, cancels and re-syncs builds.
    Developer,
    /// The tenant's owner: its apps, subscriptions, rollbacks, tokens and audit log.
    Owner,
    /// Everything, in every tenant. Admin tokens belong to no tenant.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Developer, Role::Owner, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Owner => "owner",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The configured admin token or a stored one: every tenant, every right.
    Admin,
    /// A tenant's token: that tenant only, with the token's role.
    Tenant { id: i64, name: String, role: Role, token_id: i64, token_name: String },
}

/// A stored token as listed: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What a presented bearer token turned out to be.
#[derive(Debug)]
pub enum TokenLookup {
    Valid(Principal),
    Expired,
    /// Never issued, or revoked: the same answer, so a revoked token tells nothing more.
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    Now,
    Already,
    NoSuchToken,
}

fn stored_role(role: String) -> Result<Role> {
    Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("token role {role:?}")))
}

/// How often a token's `last_used_at` is written: often enough to tell an unused token, rarely
/// enough that reads do not queue on the one writer connection.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

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
    pub async fn add_token(
        &self,
        tenant_id: Option<i64>,
        name: &str,
        role: Role,
        expires_at: Option<i64>,
        token: &str,
    ) -> Result<ApiToken> {
        let now = now_ms();
        let id = sqlx::query(
            "INSERT INTO api_tokens (tenant_id, token_sha256, name, role, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?)
             RETURNING id",
        )
        .bind(tenant_id)
        .bind(token_sha256(token))
        .bind(name)
        .bind(role.as_str())
        .bind(expires_at)
        .bind(now)
        .fetch_one(&self.writer)
        .await?
        .get(0);
        Ok(ApiToken { id, name: name.into(), role, created_at: now, expires_at, last_used_at: None, revoked_at: None })
    }

    pub async fn has_admin_token(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE tenant_id IS NULL AND revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// A tenant's tokens, revoked ones included (with `revoked_at`), oldest first.
    pub async fn tokens(&self, tenant_id: i64) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, expires_at, last_used_at, revoked_at FROM api_tokens
             WHERE tenant_id = ? ORDER BY id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiToken {
                    id: r.get(0),
                    name: r.get(1),
                    role: stored_role(r.get(2))?,
                    created_at: r.get(3),
                    expires_at: r.get(4),
                    last_used_at: r.get(5),
                    revoked_at: r.get(6),
                })
            })
            .collect()
    }

    /// Revokes token `id` of the tenant. Another tenant's token is `NoSuchToken`.
    pub async fn revoke_token(&self, tenant_id: i64, id: i64) -> Result<Revoked> {
        let revoked = sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND tenant_id = ? AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .bind(tenant_id)
            .execute(&self.writer)
            .await?
            .rows_affected();
        if revoked > 0 {
            return Ok(Revoked::Now);
        }
        let exists = sqlx::query("SELECT 1 FROM api_tokens WHERE id = ? AND tenant_id = ?")
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        Ok(if exists { Revoked::Already } else { Revoked::NoSuchToken })
    }

    /// Looks a bearer token up by its hash. The hash is the index key, so the comparison never
    /// touches the secret itself.
    pub async fn principal_for_token(&self, token: &str) -> Result<TokenLookup> {
        let row = sqlx::query(
            "SELECT t.id, t.tenant_id, n.name, t.name, t.role, t.expires_at, t.revoked_at, t.last_used_at
             FROM api_tokens t LEFT JOIN tenants n ON n.id = t.tenant_id WHERE t.token_sha256 = ?",
        )
        .bind(token_sha256(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(TokenLookup::Unknown) };
        let now = now_ms();
        if r.get::<Option<i64>, _>(6).is_some() {
            return Ok(TokenLookup::Unknown);
        }
        if r.get::<Option<i64>, _>(5).is_some_and(|expires| expires <= now) {
            return Ok(TokenLookup::Expired);
        }
        let token_id: i64 = r.get(0);
        if r.get::<Option<i64>, _>(7).is_none_or(|used| now - used >= LAST_USED_RESOLUTION_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?").bind(now).bind(token_id).execute(&self.writer).await?;
        }
        let principal = match r.get::<Option<i64>, _>(1) {
            None => Principal::Admin,
            Some(id) => {
                Principal::Tenant {
                    id,
                    name: r.get(2),
                    role: stored_role(r.get(4))?,
                    token_id,
                    token_name: r.get(3),
                }
            }
        };
        Ok(TokenLookup::Valid(principal))
    }
}
