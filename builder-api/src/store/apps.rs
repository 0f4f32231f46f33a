//! Apps: what to build (git URL, branch filter, build kind and its settings) and where the image
//! goes. Secrets (webhook secret, git token) are kept for use and never serialised.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, json_doc, now_ms, opt_text, text, Result, Store, StoreError};

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
    /// The `name` of the app's GitLab commit statuses (default `kiln`): two apps building one
    /// commit show two statuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_status_name: Option<String>,
    /// GitLab's base URL for commit statuses (`https://gitlab.example`), when it is not the
    /// scheme and host of `git_url` (default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_url: Option<String>,
    /// An APM agent injected into every image of the app (`crate::apm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apm: Option<super::ApmSetting>,
    /// JVM heap sizing for the container (`store::JvmSetting`): a Maven app's image gets the
    /// defaults without it; a Dockerfile app's image only with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jvm: Option<super::JvmSetting>,
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
    /// GitLab API token (`api` scope) for commit statuses; write-only like `git_token`.
    #[serde(skip)]
    pub gitlab_token: Option<String>,
    pub has_gitlab_token: bool,
    pub created_at: i64,
    /// When the app was deleted (`DELETE /api/v1/apps/{app}`): only an app read by id for a
    /// build's history has one; lookups by name, lists and webhooks never see deleted apps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
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
    pub gitlab_token: Option<String>,
}

impl NewApp {
    /// A Go app `hello` of `team/hello` for the store's own tests: each test sets what it needs
    /// over it.
    #[cfg(test)]
    pub(crate) fn sample(tenant_id: i64) -> NewApp {
        NewApp {
            tenant_id,
            name: "hello".into(),
            git_url: "http://git.example/team/hello.git".into(),
            project_path: Some("team/hello".into()),
            branch_filter: "*".into(),
            kind: BuildKind::Go,
            settings: KindSettings::default(),
            base_image: None,
            image_repository: "registry.example/team/hello".into(),
            webhook_secret: "s".into(),
            git_token: None,
            gitlab_token: None,
        }
    }
}

/// The associated data of the apps' sealed secrets (see `store::secrets`).
const WEBHOOK_SECRET: &str = "apps.webhook_secret";
const GIT_TOKEN: &str = "apps.git_token";
const GITLAB_TOKEN: &str = "apps.gitlab_token";

/// Read by name in [`app_from_row`]; the tenant's name is `tenant` beside the app's `name`.
const APP_COLUMNS: &str = "a.id, a.tenant_id, t.name AS tenant, a.name, a.git_url, a.project_path, a.branch_filter, a.kind,
    a.settings, a.base_image, a.image_repository, a.webhook_secret, a.git_token, a.gitlab_token, a.created_at, a.deleted_at";

/// An app from its row, its secrets opened with `key`.
fn app_from_row(key: &super::SecretKey, r: &AnyRow) -> Result<App> {
    let kind: String = r.get("kind");
    let settings: String = r.get("settings");
    let id: i64 = r.get("id");
    let webhook_secret: String = r.get("webhook_secret");
    let webhook_secret = key.open(WEBHOOK_SECRET, &webhook_secret, &|| format!("{WEBHOOK_SECRET} of app {id}"))?;
    let git_token: Option<String> = r.get("git_token");
    let git_token = git_token.map(|t| key.open(GIT_TOKEN, &t, &|| format!("{GIT_TOKEN} of app {id}"))).transpose()?;
    let gitlab_token: Option<String> = r.get("gitlab_token");
    let gitlab_token = gitlab_token.map(|t| key.open(GITLAB_TOKEN, &t, &|| format!("{GITLAB_TOKEN} of app {id}"))).transpose()?;
    Ok(App {
        id,
        tenant_id: r.get("tenant_id"),
        tenant: r.get("tenant"),
        name: r.get("name"),
        git_url: r.get("git_url"),
        project_path: r.get("project_path"),
        branch_filter: r.get("branch_filter"),
        kind: BuildKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("app kind {kind:?}")))?,
        settings: serde_json::from_str(&settings).map_err(|e| StoreError::Corrupt(format!("app settings: {e}")))?,
        base_image: r.get("base_image"),
        image_repository: r.get("image_repository"),
        webhook_secret,
        has_git_token: git_token.is_some(),
        git_token,
        has_gitlab_token: gitlab_token.is_some(),
        gitlab_token,
        created_at: r.get("created_at"),
        deleted_at: r.get("deleted_at"),
    })
}

/// What [`Store::delete_app`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum AppDeletion {
    /// Deleted, with the subscriptions deleted along; these of its builds were still queued or
    /// running (for the caller to cancel).
    Deleted { unfinished_builds: Vec<i64>, subscriptions: Vec<i64> },
    /// Not deleted (without `force`): builds still queued or running, subscriptions that still
    /// follow its images.
    Refused { unfinished_builds: Vec<i64>, subscriptions: Vec<i64> },
    /// No such app, or deleted already.
    NotFound,
}

impl Store {
    pub async fn create_app(&self, new: &NewApp) -> Result<App> {
        let settings = json_doc(&new.settings);
        let id: i64 = sqlx::query(
            "INSERT INTO apps (tenant_id, name, git_url, project_path, branch_filter, kind, settings, base_image,
                               image_repository, webhook_secret, git_token, gitlab_token, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(new.tenant_id)
        .bind(text(&new.name))
        .bind(text(&new.git_url))
        .bind(opt_text(new.project_path.as_deref()))
        .bind(text(&new.branch_filter))
        .bind(new.kind.as_str())
        .bind(settings)
        .bind(opt_text(new.base_image.as_deref()))
        .bind(text(&new.image_repository))
        .bind(self.key.seal(WEBHOOK_SECRET, &new.webhook_secret))
        .bind(new.git_token.as_deref().map(|t| self.key.seal(GIT_TOKEN, t)))
        .bind(new.gitlab_token.as_deref().map(|t| self.key.seal(GITLAB_TOKEN, t)))
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict(format!("app {}", new.name)) } else { e.into() })?
        .get("id");
        self.app_directory.invalidate();
        Ok(self.app(id).await?.expect("just inserted"))
    }

    /// An app by id, deleted or not: a build's app, for its history.
    pub async fn app(&self, id: i64) -> Result<Option<App>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = $1");
        sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?.as_ref().map(|r| app_from_row(&self.key, r)).transpose()
    }

    /// The app and its tenant in one read: what every build needs before it starts. A deleted
    /// app too (its `deleted_at` set): a build of it that Kiln was running when it stopped is
    /// stopped through its executor, which needs both.
    pub async fn app_with_tenant(&self, id: i64) -> Result<Option<(App, super::Tenant)>> {
        use super::tenants::{tenant_from_columns, JOINED_TENANT, JOINED_TENANT_COLUMNS};
        let sql = format!("SELECT {APP_COLUMNS}, {JOINED_TENANT_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = $1");
        let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await? else { return Ok(None) };
        Ok(Some((app_from_row(&self.key, &row)?, tenant_from_columns(&row, &JOINED_TENANT)?)))
    }

    pub async fn app_by_name(&self, tenant_id: i64, name: &str) -> Result<Option<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id WHERE a.tenant_id = $1 AND a.name = $2 AND a.deleted_at IS NULL"
        );
        sqlx::query(&sql).bind(tenant_id).bind(text(name)).fetch_optional(&self.pool).await?.as_ref().map(|r| app_from_row(&self.key, r)).transpose()
    }

    /// Apps of one tenant, or of all tenants when `tenant_id` is None; deleted apps are not.
    pub async fn apps(&self, tenant_id: Option<i64>) -> Result<Vec<App>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM apps a JOIN tenants t ON t.id = a.tenant_id
             WHERE ($1 IS NULL OR a.tenant_id = $1) AND a.deleted_at IS NULL ORDER BY t.name, a.name"
        );
        sqlx::query(&sql).bind(tenant_id).fetch_all(&self.pool).await?.iter().map(|r| app_from_row(&self.key, r)).collect()
    }

    /// Apps a GitLab push for this project (or repository URL) may be meant for, oldest first.
    /// Answered from memory (see [`AppDirectory`]): every webhook asks this before anything else.
    pub async fn apps_for_project(&self, project_path: &str, git_urls: &[&str]) -> Result<Vec<App>> {
        // On PostgreSQL other replicas change apps too, and only this process's changes drop the
        // index: there it is read again when older than `SHARED_DIRECTORY_MAX_AGE`, and at once
        // when it knows no app for the push (an app just created on another replica).
        if let Some(hits) = self.apps_in_directory(project_path, git_urls) {
            return Ok(hits);
        }
        // One read at a time: the webhooks of a burst that find the index stale wait for the
        // first one's read instead of each reading every app.
        let _one_reader = self.app_directory.reading.lock().await;
        if let Some(hits) = self.apps_in_directory(project_path, git_urls) {
            return Ok(hits);
        }
        let generation = self.app_directory.generation();
        let all = self.apps(None).await?;
        Ok(self.app_directory.install(generation, all).matching(project_path, git_urls))
    }

    /// The apps of a push from the directory, when it is fresh enough to answer: None when it
    /// must be read again.
    fn apps_in_directory(&self, project_path: &str, git_urls: &[&str]) -> Option<Vec<App>> {
        let shared = self.backend == super::Backend::Postgres;
        let index = self.app_directory.current(shared.then_some(SHARED_DIRECTORY_MAX_AGE))?;
        let hits = index.matching(project_path, git_urls);
        // A miss reads again only when the index is not fresh itself, so a flood of pushes for
        // unknown projects costs at most ten reads a second.
        let fresh = || self.app_directory.current(Some(SHARED_DIRECTORY_MISS_AGE)).is_some();
        (!hits.is_empty() || !shared || fresh()).then_some(hits)
    }

    /// Replaces the spec of app `id` (not deleted) with `spec`'s — everything but its tenant and
    /// name, which stay. None when there is no such app.
    pub async fn update_app(&self, id: i64, spec: &NewApp) -> Result<Option<App>> {
        let settings = json_doc(&spec.settings);
        let done = sqlx::query(
            "UPDATE apps SET git_url = $1, project_path = $2, branch_filter = $3, kind = $4, settings = $5, base_image = $6,
                             image_repository = $7, webhook_secret = $8, git_token = $9, gitlab_token = $10
             WHERE id = $11 AND deleted_at IS NULL",
        )
        .bind(text(&spec.git_url))
        .bind(opt_text(spec.project_path.as_deref()))
        .bind(text(&spec.branch_filter))
        .bind(spec.kind.as_str())
        .bind(settings)
        .bind(opt_text(spec.base_image.as_deref()))
        .bind(text(&spec.image_repository))
        .bind(self.key.seal(WEBHOOK_SECRET, &spec.webhook_secret))
        .bind(spec.git_token.as_deref().map(|t| self.key.seal(GIT_TOKEN, t)))
        .bind(spec.gitlab_token.as_deref().map(|t| self.key.seal(GITLAB_TOKEN, t)))
        .bind(id)
        .execute(&self.writer)
        .await?;
        // The project path and git URL the webhooks look apps up by may have changed.
        self.app_directory.invalidate();
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.app(id).await
    }

    /// Deletes app `id`, in one transaction: refused while builds of it are queued or running or
    /// subscriptions follow it, unless `force`, which deletes its subscriptions (and their
    /// rollouts) and leaves its unfinished builds to the caller to cancel. The row stays, marked
    /// deleted, for the history of its builds (migration 12), and its name is free for a new app.
    pub async fn delete_app(&self, id: i64, force: bool) -> Result<AppDeletion> {
        let mut tx = self.writer.begin().await?;
        let live: Option<i64> = sqlx::query_scalar("SELECT id FROM apps WHERE id = $1 AND deleted_at IS NULL").bind(id).fetch_optional(&mut *tx).await?;
        if live.is_none() {
            return Ok(AppDeletion::NotFound);
        }
        let unfinished_builds: Vec<i64> = sqlx::query_scalar("SELECT id FROM builds WHERE app_id = $1 AND state IN ('Queued', 'Running') ORDER BY id")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        let subscriptions: Vec<i64> = sqlx::query_scalar("SELECT id FROM subscriptions WHERE app_id = $1 ORDER BY id").bind(id).fetch_all(&mut *tx).await?;
        if !force && !(unfinished_builds.is_empty() && subscriptions.is_empty()) {
            return Ok(AppDeletion::Refused { unfinished_builds, subscriptions });
        }
        sqlx::query("DELETE FROM subscriptions WHERE app_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("UPDATE apps SET deleted_at = $1 WHERE id = $2").bind(now_ms()).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        // From now on no webhook finds it.
        self.app_directory.invalidate();
        Ok(AppDeletion::Deleted { unfinished_builds, subscriptions })
    }

    /// Drops a deleted app's git and GitLab tokens: nothing uses them again. (Not in
    /// [`Store::delete_app`]: cancelling its builds afterwards still posts their GitLab statuses.)
    pub async fn forget_app_tokens(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE apps SET git_token = NULL, gitlab_token = NULL WHERE id = $1 AND deleted_at IS NOT NULL").bind(id).execute(&self.writer).await?;
        Ok(())
    }
}

/// The apps by GitLab project path and git URL, in memory: every webhook asks for its apps
/// before anything is recorded, and from memory a burst of webhooks does not queue a read each
/// for the store's read connections. Every insert, update and delete of an app drops the index;
/// the generation keeps an index read before such a change from being installed after it.
#[derive(Default)]
pub(super) struct AppDirectory {
    /// The index and when it was read.
    index: RwLock<Option<(Arc<AppIndex>, std::time::Instant)>>,
    generation: AtomicU64,
    /// Held while the apps are read for a new index.
    reading: tokio::sync::Mutex<()>,
}

/// How stale the app directory may be on PostgreSQL, where other replicas change apps: a changed
/// webhook secret or project path reaches this replica's webhooks within this time.
const SHARED_DIRECTORY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// How old the index must be before a push it knows no app for reads it again (PostgreSQL).
const SHARED_DIRECTORY_MISS_AGE: std::time::Duration = std::time::Duration::from_millis(100);

impl AppDirectory {
    /// The index, unless there is none or it is older than `max_age`.
    fn current(&self, max_age: Option<std::time::Duration>) -> Option<Arc<AppIndex>> {
        let slot = self.index.read().unwrap();
        let (index, read_at) = slot.as_ref()?;
        match max_age {
            Some(age) if read_at.elapsed() > age => None,
            _ => Some(index.clone()),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Installs an index of `apps` read at `generation` (unless an app was added since) and
    /// returns it.
    fn install(&self, generation: u64, apps: Vec<App>) -> Arc<AppIndex> {
        let index = Arc::new(AppIndex::new(apps));
        let mut slot = self.index.write().unwrap();
        if self.generation() == generation {
            *slot = Some((index.clone(), std::time::Instant::now()));
        }
        index
    }

    /// An app was added, changed or deleted: the next lookup reads them all again.
    fn invalidate(&self) {
        let mut slot = self.index.write().unwrap();
        self.generation.fetch_add(1, Ordering::SeqCst);
        *slot = None;
    }
}

struct AppIndex {
    apps: Vec<App>,
    by_project: HashMap<String, Vec<usize>>,
    by_git_url: HashMap<String, Vec<usize>>,
}

impl AppIndex {
    fn new(mut apps: Vec<App>) -> AppIndex {
        apps.sort_by_key(|a| a.id);
        let (mut by_project, mut by_git_url) = (HashMap::<String, Vec<usize>>::new(), HashMap::<String, Vec<usize>>::new());
        for (i, app) in apps.iter().enumerate() {
            if let Some(p) = &app.project_path {
                by_project.entry(p.clone()).or_default().push(i);
            }
            by_git_url.entry(app.git_url.clone()).or_default().push(i);
        }
        AppIndex { apps, by_project, by_git_url }
    }

    fn matching(&self, project_path: &str, git_urls: &[&str]) -> Vec<App> {
        let mut hits: Vec<usize> = self.by_project.get(project_path).cloned().unwrap_or_default();
        for url in git_urls.iter().take(2) {
            hits.extend(self.by_git_url.get(*url).into_iter().flatten());
        }
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter().map(|i| self.apps[i].clone()).collect()
    }
}
