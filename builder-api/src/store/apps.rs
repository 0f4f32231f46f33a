//! Apps: what to build (git URL, branch filter, build kind and its settings) and where the image
//! goes. Secrets (webhook secret, git token) are kept for use and never serialised.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{is_unique_violation, now_ms, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    Go,
    Maven,
    Dockerfile,
    Auto,
}

impl BuildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Go => "go",
            BuildKind::Maven => "maven",
            BuildKind::Dockerfile => "dockerfile",
            BuildKind::Auto => "auto",
        }
    }
    pub fn parse(s: &str) -> Option<BuildKind> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }
}

/// Settings per build kind; every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KindSettings {
    /// Go: the package to build (default `.`).
    pub go_package: Option<String>,
    /// Go: `-ldflags` (default `-s -w`).
    pub go_ldflags: Option<String>,
    /// Maven: goals and options (default `package -DskipTests`).
    pub maven_goals: Option<Vec<String>>,
    /// Dockerfile path inside the repository (default `Dockerfile`).
    pub dockerfile: Option<String>,
    /// Multi-stage target.
    pub dockerfile_target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// A new push to a branch cancels the app's older queued or running builds of that branch
    /// (default true; false builds every push).
    pub supersede: Option<bool>,
    /// An APM agent injected into every image of the app (`crate::apm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apm: Option<crate::apm::ApmSetting>,
}

#[derive(Clone, Serialize)]
pub struct App {
    pub id: i64,
    pub tenant_id: i64,
    pub tenant: String,
    pub name: String,
    pub git_url: String,
    /// GitLab's `path_with_namespace`, used to find the app for a push webhook.
    pub project_path: Option<String>,
    pub branch_filter: String,
    pub kind: BuildKind,
    pub settings: KindSettings,
    pub base_image: Option<String>,
    pub image_repository: String,
    #[serde(skip)]
    pub webhook_secret: String,
    #[serde(skip)]
    pub git_token: Option<String>,
    pub has_git_token: bool,
    pub created_at: i64,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("id", &self.id).field("tenant", &self.tenant).field("name", &self.name).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewApp {
    pub tenant_id: i64,
    pub name: String,
    pub git_url: String,
    pub project_path: Option<String>,
    pub branch_filter: String,
    pub kind: BuildKind,
    pub settings: KindSettings,
    pub base_image: Option<String>,
    pub image_repository: String,
    pub webhook_secret: String,
    pub git_token: Option<String>,
}

const APP_COLUMNS: &str = "a.id, a.tenant_id, t.name, a.name, a.git_url, a.project_path, a.branch_filter, a.kind,
    a.settings, a.base_image, a.image_repository, a.webhook_secret, a.git_token, a.created_at";

fn app_from_row(r: &SqliteRow) -> Result<App> {
    let kind: String = r.get(7);
    let settings: String = r.get(8);
    let git_token: Option<String> = r.get(12);
    Ok(App {
        id: r.get(0),
        tenant_id: r.get(1),
        tenant: r.get(2),
        name: r.get(3),
        git_url: r.get(4),
        project_path: r.get(5),
        branch_filter: r.get(6),
        kind: BuildKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("app kind {kind:?}")))?,
        settings: serde_json::from_str(&settings).map_err(|e| StoreError::Corrupt(format!("app settings: {e}")))?,
        base_image: r.get(9),
        image_repository: r.get(10),
        webhook_secret: r.get(11),
        has_git_token: git_token.is_some(),
        git_token,
        created_at: r.get(13),
    })
}

impl Store {
    pub async fn create_app(&self, new: &NewApp) -> Result<App> {
        let settings = serde_json::to_string(&new.settings).expect("settings serialise");
        let id: i64 = sqlx::query(
            "INSERT INTO apps (tenant_id, name, git_url, project_path, branch_filter, kind, settings, base_image,
                               image_repository, webhook_secret, git_token, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(new.tenant_id)
        .bind(&new.name)
        .bind(&new.git_url)
        .bind(&new.project_path)
        .bind(&new.branch_filter)
        .bind(new.kind.as_str())
        .bind(settings)
        .bind(&new.base_image)
        .bind(&new.image_repository)
        .bind(&new.webhook_secret)
        .bind(&new.git_token)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(format!("app {}", new.name)) } else { e.into() })?
        .get(0);
        Ok(self.app(id).await?.expect("just inserted"))
    }

    pub async fn app(&self, id: i64) -> Result<Option<App>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = ?");
        sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?.as_ref().map(app_from_row).transpose()
    }

    pub async fn app_by_name(&self, tenant_id: i64, name: &str) -> Result<Option<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.tenant_id = ? AND a.name = ?"
        );
        sqlx::query(&sql).bind(tenant_id).bind(name).fetch_optional(&self.pool).await?.as_ref().map(app_from_row).transpose()
    }

    /// Apps of one tenant, or of all tenants when `tenant_id` is None.
    pub async fn apps(&self, tenant_id: Option<i64>) -> Result<Vec<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id
             WHERE (?1 IS NULL OR a.tenant_id = ?1) ORDER BY t.name, a.name"
        );
        sqlx::query(&sql).bind(tenant_id).fetch_all(&self.pool).await?.iter().map(app_from_row).collect()
    }

    /// Apps a GitLab push for this project (or repository URL) may be meant for.
    pub async fn apps_for_project(&self, project_path: &str, git_urls: &[&str]) -> Result<Vec<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id
             WHERE a.project_path = ? OR a.git_url IN (?, ?) ORDER BY a.id"
        );
        sqlx::query(&sql)
            .bind(project_path)
            .bind(git_urls.first().copied().unwrap_or(""))
            .bind(git_urls.get(1).copied().unwrap_or(""))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(app_from_row)
            .collect()
    }
}
