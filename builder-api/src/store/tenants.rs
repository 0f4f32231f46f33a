//! Tenants and their API tokens. Tokens are random and stored only as their SHA-256.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, json_doc, now_ms, text, Result, Store, StoreError};
use crate::validate::Invalid;

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub settings: TenantSettings,
}

/// What an admin sets per tenant (`PUT /api/v1/tenants/{tenant}/settings`). Every field is
/// optional: unset means the service-wide value of the config (`[kube]`, `[executor]`) or, for
/// CPU and memory, the Job template's own. Stored as JSON in `tenants.settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// Kubernetes namespace of the tenant's build Jobs (DNS-1123 label); `<kube.namespace_prefix><tenant>`
    /// when unset.
    pub namespace: Option<String>,
    /// The Harbor project the tenant's images must go to: every app's `image_repository` path
    /// starts with it (checked when an app is created and when this is set).
    pub registry_project: Option<String>,
    /// Secret (in the tenant namespace; keys `username`, `password`) with the credentials for
    /// pushing; `kube.registry_secret` when unset.
    pub registry_secret: Option<String>,
    /// Secret (in the tenant namespace; keys `username`, `password`) with a read-only credential
    /// for private base images of Dockerfile builds, visible to the build; `kube.pull_secret`
    /// when unset.
    pub pull_secret: Option<String>,
    /// Builds of this tenant running at once (at least 1), under the global
    /// `executor.max_concurrent_builds`; no own cap when unset.
    pub max_concurrent_builds: Option<u32>,
    /// CPU request and limit of the container that compiles (`compile`; BuildKit's for
    /// Dockerfile builds), e.g. `500m`, `2`; the template's when unset.
    pub cpu: Option<String>,
    /// Memory request and limit of that container, e.g. `512Mi`, `2Gi`; the template's when unset.
    pub memory: Option<String>,
    /// Ephemeral-storage request and limit of that container, e.g. `20Gi`; the template's when
    /// unset. The largest container's limit is the build pod's disk budget: the kubelet evicts the
    /// pod when its emptyDirs (workspace, caches, /tmp), writable layers and logs together pass it.
    pub ephemeral_storage: Option<String>,
    /// The `workspace` emptyDir's sizeLimit (the source, the build's output, HOME), e.g. `8Gi`;
    /// the template's when unset. Without `ephemeral_storage`, that container's ephemeral-storage
    /// limit grows by as much as this exceeds the template's workspace, so the disk budget keeps
    /// the template's room for everything else; with it, it must be at least this.
    pub workspace_size: Option<String>,
    /// A build running longer ends TimedOut (60..=86400); `executor.build_timeout_secs` when unset.
    pub build_timeout_secs: Option<u64>,
    /// PersistentVolumeClaim (in the tenant namespace) for the Go and Maven caches;
    /// `kube.cache_claim` when unset.
    pub cache_claim: Option<String>,
    /// Namespaces (DNS-1123 labels) the tenant's apps may be rolled out to: subscriptions and
    /// `kiln.dev/app` annotations count only there, and every rollout is checked against it before
    /// Kiln touches the Deployment. Unset is none: a deploy target is granted by an admin, never
    /// claimed by a tenant, and the build namespace is no deploy target by default (it runs
    /// untrusted build code and holds the git-token Secrets).
    pub deploy_namespaces: Option<Vec<String>>,
}

impl TenantSettings {
    pub const MIN_TIMEOUT_SECS: u64 = 60;
    pub const MAX_TIMEOUT_SECS: u64 = 86_400;

    /// Every set value against its rule; the error names the field and the rule.
    pub fn validate(&self) -> std::result::Result<(), Invalid> {
        use crate::validate::{self, QuantityOf};
        if let Some(ns) = &self.namespace {
            validate::dns_label("namespace", ns)?;
        }
        if let Some(project) = &self.registry_project {
            // A Harbor project is one path component of a repository.
            if project.contains('/') || validate::image_repository_path(project).is_err() {
                return Err(Invalid(format!(
                    "registry_project {project:?} is not a registry project name: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, no '/'"
                )));
            }
        }
        if let Some(secret) = &self.registry_secret {
            validate::dns_subdomain("registry_secret", secret)?;
        }
        if let Some(secret) = &self.pull_secret {
            validate::dns_subdomain("pull_secret", secret)?;
        }
        if let Some(claim) = &self.cache_claim {
            validate::dns_subdomain("cache_claim", claim)?;
        }
        if self.max_concurrent_builds == Some(0) {
            return Err(Invalid("max_concurrent_builds must be at least 1 (leave it unset for no cap of the tenant's own)".into()));
        }
        if let Some(cpu) = &self.cpu {
            validate::quantity("cpu", cpu, QuantityOf::Cpu)?;
        }
        if let Some(memory) = &self.memory {
            validate::quantity("memory", memory, QuantityOf::Memory)?;
        }
        // Disk is counted in bytes with the suffixes of memory.
        let storage = self.ephemeral_storage.as_ref().map(|s| validate::quantity("ephemeral_storage", s, QuantityOf::Memory)).transpose()?;
        let workspace = self.workspace_size.as_ref().map(|s| validate::quantity("workspace_size", s, QuantityOf::Memory)).transpose()?;
        if let (Some(storage), Some(workspace)) = (storage, workspace) {
            // The workspace counts against the pod's disk budget: a smaller budget would evict the
            // build before the workspace is full.
            if storage < workspace {
                return Err(Invalid(format!(
                    "ephemeral_storage {:?} is less than workspace_size {:?}: the build's disk budget must hold its workspace",
                    self.ephemeral_storage.as_deref().unwrap_or_default(),
                    self.workspace_size.as_deref().unwrap_or_default()
                )));
            }
        }
        if let Some(namespaces) = &self.deploy_namespaces {
            validate_deploy_namespaces(namespaces)?;
        }
        if let Some(secs) = self.build_timeout_secs {
            if !(Self::MIN_TIMEOUT_SECS..=Self::MAX_TIMEOUT_SECS).contains(&secs) {
                return Err(Invalid(format!(
                    "build_timeout_secs {secs} is out of range: use {} to {} seconds",
                    Self::MIN_TIMEOUT_SECS,
                    Self::MAX_TIMEOUT_SECS
                )));
            }
        }
        Ok(())
    }

    /// Whether the tenant may deploy into `namespace` (one of `deploy_namespaces`).
    pub fn allows_deploy_namespace(&self, namespace: &str) -> bool {
        self.deploy_namespaces.iter().flatten().any(|ns| ns == namespace)
    }

    /// Whether an image repository (`host/path`) is in the tenant's project; always, without one.
    pub fn allows_repository(&self, image_repository: &str) -> bool {
        let Some(project) = &self.registry_project else { return true };
        let path = image_repository.split_once('/').map_or("", |(_, path)| path);
        path.split_once('/').is_some_and(|(first, _)| first == project)
    }
}

/// At most this many deploy namespaces per tenant: each is listed on every discovery pass.
pub const MAX_DEPLOY_NAMESPACES: usize = 100;

/// Each a DNS-1123 label, none twice, none of Kubernetes' own (`kube-` is reserved for the
/// control plane: no tenant's image belongs in `kube-system`).
fn validate_deploy_namespaces(namespaces: &[String]) -> std::result::Result<(), Invalid> {
    if namespaces.len() > MAX_DEPLOY_NAMESPACES {
        return Err(Invalid(format!("deploy_namespaces has {} namespaces: at most {MAX_DEPLOY_NAMESPACES}", namespaces.len())));
    }
    for (i, ns) in namespaces.iter().enumerate() {
        crate::validate::dns_label("deploy_namespaces", ns)?;
        if ns.starts_with("kube-") {
            return Err(Invalid(format!("deploy_namespaces: {ns:?} is a Kubernetes system namespace (the kube- prefix is reserved); Kiln never deploys there")));
        }
        if namespaces[..i].contains(ns) {
            return Err(Invalid(format!("deploy_namespaces: {ns:?} is listed twice")));
        }
    }
    Ok(())
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
    /// It is the tenant's last usable owner token: revoking it would leave nobody able to manage
    /// the tenant but an admin.
    LastOwner,
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

const TENANT_COLUMNS: &str = "id, name, created_at, settings";

/// The names a tenant's columns are read by.
pub(super) struct TenantColumnNames {
    id: &'static str,
    name: &'static str,
    created_at: &'static str,
    settings: &'static str,
}

/// [`TENANT_COLUMNS`]: the table's own names.
const TENANT: TenantColumnNames = TenantColumnNames { id: "id", name: "name", created_at: "created_at", settings: "settings" };

/// A tenant's columns (the table as `t`) beside another table's, whose `id`, `name` and
/// `created_at` they would otherwise shadow; read with [`JOINED_TENANT`].
pub(super) const JOINED_TENANT_COLUMNS: &str =
    r#"t.id AS "tenant.id", t.name AS "tenant.name", t.created_at AS "tenant.created_at", t.settings AS "tenant.settings""#;

/// The names of [`JOINED_TENANT_COLUMNS`].
pub(super) const JOINED_TENANT: TenantColumnNames =
    TenantColumnNames { id: "tenant.id", name: "tenant.name", created_at: "tenant.created_at", settings: "tenant.settings" };

fn tenant_from_row(r: &AnyRow) -> Result<Tenant> {
    tenant_from_columns(r, &TENANT)
}

/// A tenant from the columns of a row with these names.
pub(super) fn tenant_from_columns(r: &AnyRow, names: &TenantColumnNames) -> Result<Tenant> {
    let id: i64 = r.get(names.id);
    let settings: String = r.get(names.settings);
    let settings = serde_json::from_str(&settings).map_err(|e| StoreError::Corrupt(format!("settings of tenant {id}: {e}")))?;
    Ok(Tenant { id, name: r.get(names.name), created_at: r.get(names.created_at), settings })
}

/// A tenant's `settings.max_concurrent_builds` as a BIGINT column expression (NULL: no cap).
pub(super) fn tenant_cap_column(backend: super::Backend) -> String {
    format!("CAST({} AS BIGINT)", backend.json_field("settings", "max_concurrent_builds"))
}

impl Store {
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let now = now_ms();
        let id = sqlx::query("INSERT INTO tenants (name, created_at) VALUES ($1, $2) RETURNING id")
            .bind(text(name))
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(format!("tenant {name}")) } else { e.into() })?
            .get("id");
        Ok(Tenant { id, name: name.into(), created_at: now, settings: TenantSettings::default() })
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name");
        sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(tenant_from_row).collect()
    }

    pub async fn tenant(&self, id: i64) -> Result<Option<Tenant>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?.as_ref().map(tenant_from_row).transpose()
    }

    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
        sqlx::query(&sql).bind(text(name)).fetch_optional(&self.pool).await?.as_ref().map(tenant_from_row).transpose()
    }

    /// Replaces a tenant's settings (already validated by the caller). False: no such tenant.
    pub async fn set_tenant_settings(&self, id: i64, settings: &TenantSettings) -> Result<bool> {
        let json = json_doc(settings);
        let n = sqlx::query("UPDATE tenants SET settings = $1 WHERE id = $2").bind(json).bind(id).execute(&self.writer).await?.rows_affected();
        Ok(n > 0)
    }

    /// The tenants that have a concurrency cap of their own: tenant id → cap; tenants without
    /// one are absent (only the global cap applies to them). One read of the tenants table (one
    /// row per tenant, the database reading one JSON field each), cheap enough for the scheduler
    /// to call per pick or to cache.
    pub async fn tenant_caps(&self) -> Result<HashMap<i64, u32>> {
        let cap = tenant_cap_column(self.backend);
        let sql = format!("SELECT id, cap FROM (SELECT id, {cap} AS cap FROM tenants) t WHERE cap IS NOT NULL");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let (id, cap): (i64, i64) = (r.try_get("id")?, r.try_get("cap")?);
                let cap = u32::try_from(cap).ok().filter(|c| *c >= 1);
                cap.map(|c| (id, c)).ok_or_else(|| StoreError::Corrupt(format!("max_concurrent_builds of tenant {id}")))
            })
            .collect()
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
            "INSERT INTO api_tokens (tenant_id, token_sha256, name, role, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id",
        )
        .bind(tenant_id)
        .bind(token_sha256(token))
        .bind(text(name))
        .bind(role.as_str())
        .bind(expires_at)
        .bind(now)
        .fetch_one(&self.writer)
        .await?
        .get("id");
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
             WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiToken {
                    id: r.get("id"),
                    name: r.get("name"),
                    role: stored_role(r.get("role"))?,
                    created_at: r.get("created_at"),
                    expires_at: r.get("expires_at"),
                    last_used_at: r.get("last_used_at"),
                    revoked_at: r.get("revoked_at"),
                })
            })
            .collect()
    }

    /// Revokes token `id` of the tenant. Another tenant's token is `NoSuchToken`.
    pub async fn revoke_token(&self, tenant_id: i64, id: i64) -> Result<Revoked> {
        let now = now_ms();
        // One statement, so two revokes at once cannot each leave the other as the last owner.
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND tenant_id = $3 AND revoked_at IS NULL
               AND (role != 'owner' OR (SELECT COUNT(*) FROM api_tokens WHERE tenant_id = $3 AND role = 'owner'
                    AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)) > 1)",
        )
        .bind(now)
        .bind(id)
        .bind(tenant_id)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if revoked > 0 {
            return Ok(Revoked::Now);
        }
        let row = sqlx::query("SELECT role, revoked_at FROM api_tokens WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&self.writer)
            .await?;
        Ok(match row {
            None => Revoked::NoSuchToken,
            Some(r) if r.get::<Option<i64>, _>("revoked_at").is_some() => Revoked::Already,
            Some(_) => Revoked::LastOwner,
        })
    }

    /// Looks a bearer token up by its hash. The hash is the index key, so the comparison never
    /// touches the secret itself.
    pub async fn principal_for_token(&self, token: &str) -> Result<TokenLookup> {
        let row = sqlx::query(
            "SELECT t.id, t.tenant_id, n.name AS tenant_name, t.name, t.role, t.expires_at, t.revoked_at, t.last_used_at
             FROM api_tokens t LEFT JOIN tenants n ON n.id = t.tenant_id WHERE t.token_sha256 = $1",
        )
        .bind(token_sha256(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(TokenLookup::Unknown) };
        let now = now_ms();
        if r.get::<Option<i64>, _>("revoked_at").is_some() {
            return Ok(TokenLookup::Unknown);
        }
        if r.get::<Option<i64>, _>("expires_at").is_some_and(|expires| expires <= now) {
            return Ok(TokenLookup::Expired);
        }
        let token_id: i64 = r.get("id");
        if r.get::<Option<i64>, _>("last_used_at").is_none_or(|used| now - used >= LAST_USED_RESOLUTION_MS) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2").bind(now).bind(token_id).execute(&self.writer).await?;
        }
        let principal = match r.get::<Option<i64>, _>("tenant_id") {
            None => Principal::Admin,
            Some(id) => {
                Principal::Tenant {
                    id,
                    name: r.get("tenant_name"),
                    role: stored_role(r.get("role"))?,
                    token_id,
                    token_name: r.get("name"),
                }
            }
        };
        Ok(TokenLookup::Valid(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tenant_caps_lists_only_tenants_with_a_cap_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let a = store.create_tenant("team-a").await.unwrap();
        let b = store.create_tenant("team-b").await.unwrap();
        let c = store.create_tenant("team-c").await.unwrap();
        assert!(store.tenant_caps().await.unwrap().is_empty());

        let capped = |n| TenantSettings { max_concurrent_builds: Some(n), ..TenantSettings::default() };
        assert!(store.set_tenant_settings(a.id, &capped(3)).await.unwrap());
        assert!(store.set_tenant_settings(b.id, &TenantSettings { cpu: Some("2".into()), ..TenantSettings::default() }).await.unwrap());
        assert!(store.set_tenant_settings(c.id, &capped(1)).await.unwrap());
        assert_eq!(store.tenant_caps().await.unwrap(), HashMap::from([(a.id, 3), (c.id, 1)]));

        // Replacing the settings without a cap removes the tenant from the map.
        assert!(store.set_tenant_settings(c.id, &TenantSettings::default()).await.unwrap());
        assert_eq!(store.tenant_caps().await.unwrap(), HashMap::from([(a.id, 3)]));
        assert!(!store.set_tenant_settings(9999, &capped(2)).await.unwrap());

        // The settings round-trip with the tenant, by id and by name.
        let read = store.tenant(b.id).await.unwrap().unwrap();
        assert_eq!(read.settings.cpu.as_deref(), Some("2"));
        assert_eq!(store.tenant_by_name("team-a").await.unwrap().unwrap().settings, capped(3));
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        assert!(TenantSettings::default().validate().is_ok());
        let full = TenantSettings {
            namespace: Some("builds-payments".into()),
            registry_project: Some("payments".into()),
            registry_secret: Some("harbor-robot".into()),
            pull_secret: Some("harbor-pull-robot".into()),
            max_concurrent_builds: Some(4),
            cpu: Some("1500m".into()),
            memory: Some("3Gi".into()),
            ephemeral_storage: Some("20Gi".into()),
            workspace_size: Some("8Gi".into()),
            build_timeout_secs: Some(900),
            cache_claim: Some("payments-cache".into()),
            deploy_namespaces: Some(vec!["payments".into(), "payments-staging".into()]),
        };
        assert!(full.validate().is_ok());
        for (bad, field) in [
            (TenantSettings { namespace: Some("Builds".into()), ..full.clone() }, "namespace"),
            (TenantSettings { registry_project: Some("a/b".into()), ..full.clone() }, "registry_project"),
            (TenantSettings { registry_secret: Some("robot$x".into()), ..full.clone() }, "registry_secret"),
            (TenantSettings { pull_secret: Some("Pull Robot".into()), ..full.clone() }, "pull_secret"),
            (TenantSettings { max_concurrent_builds: Some(0), ..full.clone() }, "max_concurrent_builds"),
            (TenantSettings { cpu: Some("2Gi".into()), ..full.clone() }, "cpu"),
            (TenantSettings { memory: Some("lots".into()), ..full.clone() }, "memory"),
            (TenantSettings { ephemeral_storage: Some("20GB".into()), ..full.clone() }, "ephemeral_storage"),
            (TenantSettings { workspace_size: Some("0".into()), ..full.clone() }, "workspace_size"),
            (TenantSettings { ephemeral_storage: Some("4Gi".into()), ..full.clone() }, "ephemeral_storage"),
            (TenantSettings { build_timeout_secs: Some(59), ..full.clone() }, "build_timeout_secs"),
            (TenantSettings { build_timeout_secs: Some(86_401), ..full.clone() }, "build_timeout_secs"),
            (TenantSettings { cache_claim: Some("".into()), ..full.clone() }, "cache_claim"),
            (TenantSettings { deploy_namespaces: Some(vec!["Payments".into()]), ..full.clone() }, "deploy_namespaces"),
            (TenantSettings { deploy_namespaces: Some(vec!["kube-system".into()]), ..full.clone() }, "deploy_namespaces"),
            (TenantSettings { deploy_namespaces: Some(vec!["a".into(), "a".into()]), ..full.clone() }, "deploy_namespaces"),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.0.starts_with(field), "{field}: {e}");
        }
        assert!(full.allows_repository("harbor.example.com/payments/ledger"));
        assert!(full.allows_repository("harbor.example.com/payments/team/ledger"));
        assert!(!full.allows_repository("harbor.example.com/payments-old/ledger"));
        assert!(!full.allows_repository("harbor.example.com/payments"));
        assert!(TenantSettings::default().allows_repository("harbor.example.com/anything/app"));
        assert!(full.allows_deploy_namespace("payments-staging"));
        assert!(!full.allows_deploy_namespace("kube-system"));
        assert!(!TenantSettings::default().allows_deploy_namespace("builds-payments"), "unset grants none");
    }
}
