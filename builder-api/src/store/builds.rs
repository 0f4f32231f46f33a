//! Builds and their steps. A build moves Queued → Running → Succeeded | Failed | Cancelled |
//! TimedOut; each transition is one conditional UPDATE so two writers never both win.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{now_ms, opt_text, text, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl BuildState {
    pub const ALL: [BuildState; 6] = [
        BuildState::Queued,
        BuildState::Running,
        BuildState::Succeeded,
        BuildState::Failed,
        BuildState::Cancelled,
        BuildState::TimedOut,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "Queued",
            BuildState::Running => "Running",
            BuildState::Succeeded => "Succeeded",
            BuildState::Failed => "Failed",
            BuildState::Cancelled => "Cancelled",
            BuildState::TimedOut => "TimedOut",
        }
    }
    pub fn parse(s: &str) -> Option<BuildState> {
        BuildState::ALL.into_iter().find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
    pub fn is_final(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub id: i64,
    pub tenant_id: i64,
    pub tenant: String,
    pub app_id: i64,
    pub app: String,
    pub state: BuildState,
    pub reason: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub commit: String,
    pub trigger: String,
    /// The kind actually built (`auto` resolved after the clone).
    pub kind: Option<String>,
    /// The image reference pinned by digest, once pushed.
    pub image: Option<String>,
    pub image_digest: Option<String>,
    /// The APM agent and version injected into `image`, if any.
    pub apm_agent: Option<String>,
    pub apm_version: Option<String>,
    /// With APM: the image as built, before injection (by digest).
    pub original_image: Option<String>,
    /// The options Kiln put at the front of the image's `JAVA_TOOL_OPTIONS` (JVM sizing), if any;
    /// the image's own options come after them and win.
    pub jvm_options: Option<String>,
    pub queued_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Why GitLab refused the build's commit statuses (`refused: 403 …`) or why they could not
    /// be delivered; None when delivered or when the app posts none.
    pub gitlab_status: Option<String>,
    /// The built commit as the push webhook described it (`commit_message`, `commit_author`,
    /// `commit_url` in the JSON).
    #[serde(flatten)]
    pub commit_info: CommitInfo,
}

/// What the pages show of the built commit, as GitLab's push webhook carried it: nothing for a
/// build started by hand. Shown, never interpreted: the web page puts it in as text, and links
/// `url` only when it is http(s).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommitInfo {
    /// The whole message (the pages show its first line).
    #[serde(rename = "commit_message")]
    pub message: Option<String>,
    /// The author's name.
    #[serde(rename = "commit_author")]
    pub author: Option<String>,
    /// The commit's page in GitLab.
    #[serde(rename = "commit_url")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StepState {
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StepState {
    fn as_str(self) -> &'static str {
        match self {
            StepState::Running => "Running",
            StepState::Succeeded => "Succeeded",
            StepState::Failed => "Failed",
            StepState::Skipped => "Skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewBuild {
    pub tenant_id: i64,
    pub app_id: i64,
    pub git_ref: Option<String>,
    pub commit: String,
    /// `webhook`, `manual`, …
    pub trigger: String,
    pub commit_info: CommitInfo,
}

/// Read by name in [`build_from_row`]; the tenant's and the app's names are `tenant` and `app`.
const BUILD_COLUMNS: &str = "b.id, b.tenant_id, t.name AS tenant, b.app_id, a.name AS app, b.state, b.reason, b.git_ref, b.commit_sha,
    b.trigger, b.kind, b.image, b.image_digest, b.queued_at, b.started_at, b.finished_at,
    b.apm_agent, b.apm_version, b.original_image, b.jvm_options, b.gitlab_status, b.commit_message, b.commit_author, b.commit_url";
const BUILD_FROM: &str = "FROM builds b JOIN tenants t ON t.id = b.tenant_id JOIN apps a ON a.id = b.app_id";

fn build_from_row(r: &AnyRow) -> Result<Build> {
    let state: String = r.get("state");
    Ok(Build {
        id: r.get("id"),
        tenant_id: r.get("tenant_id"),
        tenant: r.get("tenant"),
        app_id: r.get("app_id"),
        app: r.get("app"),
        state: BuildState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("build state {state:?}")))?,
        reason: r.get("reason"),
        git_ref: r.get("git_ref"),
        commit: r.get("commit_sha"),
        trigger: r.get("trigger"),
        kind: r.get("kind"),
        image: r.get("image"),
        image_digest: r.get("image_digest"),
        queued_at: r.get("queued_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        apm_agent: r.get("apm_agent"),
        apm_version: r.get("apm_version"),
        original_image: r.get("original_image"),
        jvm_options: r.get("jvm_options"),
        gitlab_status: r.get("gitlab_status"),
        commit_info: CommitInfo { message: r.get("commit_message"), author: r.get("commit_author"), url: r.get("commit_url") },
    })
}

/// `$first, $first+1, …`: `n` placeholders for an `IN (…)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Inserts a Queued build inside the caller's transaction (so a webhook delivery and its build
/// are persisted together).
pub(super) async fn insert_build(conn: &mut AnyConnection, new: &NewBuild) -> Result<i64> {
    Ok(sqlx::query(
        "INSERT INTO builds (tenant_id, app_id, state, git_ref, commit_sha, trigger, queued_at, commit_message, commit_author, commit_url)
         VALUES ($1, $2, 'Queued', $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(new.tenant_id)
    .bind(new.app_id)
    .bind(opt_text(new.git_ref.as_deref()))
    .bind(text(&new.commit))
    .bind(text(&new.trigger))
    .bind(now_ms())
    .bind(opt_text(new.commit_info.message.as_deref()))
    .bind(opt_text(new.commit_info.author.as_deref()))
    .bind(opt_text(new.commit_info.url.as_deref()))
    .fetch_one(conn)
    .await?
    .get("id"))
}

impl Store {
    pub async fn create_build(&self, new: &NewBuild) -> Result<Build> {
        let mut conn = self.writer.acquire().await?;
        let id = insert_build(&mut conn, new).await?;
        drop(conn);
        self.announce(super::Signal::queued(vec![(id, new.tenant_id)])).await?;
        Ok(self.build(id).await?.expect("just inserted"))
    }

    pub async fn build(&self, id: i64) -> Result<Option<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} {BUILD_FROM} WHERE b.id = $1");
        sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?.as_ref().map(build_from_row).transpose()
    }

    /// Newest first; every filter optional.
    pub async fn builds(
        &self,
        tenant_id: Option<i64>,
        app_id: Option<i64>,
        state: Option<BuildState>,
        limit: i64,
    ) -> Result<Vec<Build>> {
        let sql = format!(
            "SELECT {BUILD_COLUMNS} {BUILD_FROM}
             WHERE ($1 IS NULL OR b.tenant_id = $1) AND ($2 IS NULL OR b.app_id = $2) AND ($3 IS NULL OR b.state = $3)
             ORDER BY b.id DESC LIMIT $4"
        );
        sqlx::query(&sql)
            .bind(tenant_id)
            .bind(app_id)
            .bind(state.map(BuildState::as_str))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(build_from_row)
            .collect()
    }

    /// Builds in the given state, oldest first.
    pub async fn builds_in_state(&self, state: BuildState) -> Result<Vec<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} {BUILD_FROM} WHERE b.state = $1 ORDER BY b.id");
        sqlx::query(&sql).bind(state.as_str()).fetch_all(&self.pool).await?.iter().map(build_from_row).collect()
    }

    /// `(id, tenant id)` of the Queued builds with an id above `after`, oldest first: what the
    /// scheduler reads on each wake (two integers a build, not the whole row).
    pub async fn queued_builds_after(&self, after: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT id, tenant_id FROM builds WHERE state = 'Queued' AND id > $1 ORDER BY id")
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get("id"), r.get("tenant_id"))).collect())
    }

    /// The builds with these ids, in id order.
    pub async fn builds_by_ids(&self, ids: &[i64]) -> Result<Vec<Build>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let marks = placeholders(1, ids.len());
        let sql = format!("SELECT {BUILD_COLUMNS} {BUILD_FROM} WHERE b.id IN ({marks}) ORDER BY b.id");
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        query.fetch_all(&self.pool).await?.iter().map(build_from_row).collect()
    }

    /// Queued or Running builds of `app_id` at `git_ref` older than `before`.
    pub async fn active_builds_of_ref(&self, app_id: i64, git_ref: &str, before: i64) -> Result<Vec<Build>> {
        let sql = format!(
            "SELECT {BUILD_COLUMNS} {BUILD_FROM} WHERE b.app_id = $1 AND b.git_ref = $2 AND b.id < $3 AND b.state IN ('Queued', 'Running') ORDER BY b.id"
        );
        sqlx::query(&sql).bind(app_id).bind(text(git_ref)).bind(before).fetch_all(&self.pool).await?.iter().map(build_from_row).collect()
    }

    /// Succeeded builds that produced `digest`, newest first.
    pub async fn succeeded_builds_with_digest(&self, digest: &str) -> Result<Vec<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} {BUILD_FROM} WHERE b.image_digest = $1 AND b.state = 'Succeeded' ORDER BY b.id DESC");
        sqlx::query(&sql).bind(text(digest)).fetch_all(&self.pool).await?.iter().map(build_from_row).collect()
    }

    /// The newest Succeeded build of `app_id` that produced each of `digests` (a digest no
    /// build of the app produced has none): which build a release runs.
    pub async fn builds_of_digests(&self, app_id: i64, digests: &[&str]) -> Result<Vec<Build>> {
        if digests.is_empty() {
            return Ok(vec![]);
        }
        let marks = placeholders(2, digests.len());
        let sql = format!(
            "SELECT {BUILD_COLUMNS} {BUILD_FROM} WHERE b.id IN (
                SELECT MAX(id) FROM builds WHERE app_id = $1 AND state = 'Succeeded' AND image_digest IN ({marks}) GROUP BY image_digest)
             ORDER BY b.id"
        );
        let mut query = sqlx::query(&sql).bind(app_id);
        for d in digests {
            query = query.bind(text(d));
        }
        query.fetch_all(&self.pool).await?.iter().map(build_from_row).collect()
    }

    /// Moves a build that is not yet final to a final state. False when it already was final.
    pub async fn finish_build(&self, id: i64, state: BuildState, reason: Option<&str>) -> Result<bool> {
        debug_assert!(state.is_final());
        let done = sqlx::query(
            "UPDATE builds SET state = $1, reason = $2, finished_at = $3 WHERE id = $4 AND state IN ('Queued', 'Running')",
        )
        .bind(state.as_str())
        .bind(opt_text(reason))
        .bind(now_ms())
        .bind(id)
        .execute(&self.writer)
        .await?;
        let ended = done.rows_affected() == 1;
        if ended {
            // Followers on other replicas end their streams; schedulers there have a slot of
            // this tenant's cap free again.
            self.announce(super::Signal::BuildEnded(id)).await?;
        }
        Ok(ended)
    }

    /// Queued → Cancelled. False when the build was no longer queued (the scheduler started it,
    /// or it is final): a running build is stopped by its executor, never finished from outside.
    pub async fn cancel_queued(&self, id: i64, reason: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE builds SET state = 'Cancelled', reason = $1, finished_at = $2 WHERE id = $3 AND state = 'Queued'")
            .bind(text(reason))
            .bind(now_ms())
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records why the build's GitLab commit statuses were refused or not delivered.
    pub async fn set_build_gitlab_status(&self, id: i64, outcome: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET gitlab_status = $1 WHERE id = $2").bind(text(outcome)).bind(id).execute(&self.writer).await?;
        Ok(())
    }

    pub async fn set_build_kind(&self, id: i64, kind: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET kind = $1 WHERE id = $2").bind(text(kind)).bind(id).execute(&self.writer).await?;
        Ok(())
    }

    pub async fn set_build_image(&self, id: i64, image: &str, digest: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET image = $1, image_digest = $2 WHERE id = $3")
            .bind(text(image))
            .bind(text(digest))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The agent in the build's image and the image before injection.
    pub async fn set_build_apm(&self, id: i64, agent: &str, version: &str, original_image: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET apm_agent = $1, apm_version = $2, original_image = $3 WHERE id = $4")
            .bind(text(agent))
            .bind(text(version))
            .bind(text(original_image))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The JVM options Kiln put into the build's image.
    pub async fn set_build_jvm_options(&self, id: i64, options: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET jvm_options = $1 WHERE id = $2").bind(text(options)).bind(id).execute(&self.writer).await?;
        Ok(())
    }

    /// A re-injection (`POST /builds/{id}/apm`): the build's image becomes the new one; the
    /// original is kept (set now if the build had no agent, whose image was the original).
    pub async fn set_build_reinjected(&self, id: i64, image: &str, digest: &str, agent: &str, version: &str) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET original_image = COALESCE(original_image, image), image = $1, image_digest = $2,
                    apm_agent = $3, apm_version = $4 WHERE id = $5",
        )
        .bind(text(image))
        .bind(text(digest))
        .bind(text(agent))
        .bind(text(version))
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn start_step(&self, build_id: i64, position: i64, name: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO build_steps (build_id, position, name, state, started_at) VALUES ($1, $2, $3, 'Running', $4)
             ON CONFLICT (build_id, name) DO UPDATE SET state = 'Running', started_at = excluded.started_at",
        )
        .bind(build_id)
        .bind(position)
        .bind(text(name))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn finish_step(&self, build_id: i64, name: &str, state: StepState, exit_code: Option<i32>) -> Result<()> {
        sqlx::query("UPDATE build_steps SET state = $1, exit_code = $2, finished_at = $3 WHERE build_id = $4 AND name = $5")
            .bind(state.as_str())
            .bind(exit_code)
            .bind(now_ms())
            .bind(build_id)
            .bind(text(name))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Steps still Running when their build ended (interrupted) are closed as Failed.
    pub async fn fail_open_steps(&self, build_id: i64) -> Result<()> {
        sqlx::query("UPDATE build_steps SET state = 'Failed', finished_at = $1 WHERE build_id = $2 AND state = 'Running'")
            .bind(now_ms())
            .bind(build_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn steps(&self, build_id: i64) -> Result<Vec<Step>> {
        let rows = sqlx::query(
            "SELECT name, state, exit_code, started_at, finished_at FROM build_steps WHERE build_id = $1 ORDER BY position",
        )
        .bind(build_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Step {
                name: r.get("name"),
                state: r.get("state"),
                exit_code: r.get("exit_code"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
            })
            .collect())
    }
}
