//! GitLab commit statuses (issue 20): `pending` when a build is queued, `running` when it starts,
//! then `success`, `failed` or `canceled`, posted to GitLab's commit status API
//! (`POST {gitlab}/api/v4/projects/{id or URL-encoded path}/statuses/{sha}`, `PRIVATE-TOKEN`).
//!
//! Delivery never blocks or fails a build: [`GitlabStatuses::post`] only queues. Each build has
//! a lane, one task delivering its statuses in order; a status behind one already queued (a late
//! `pending` after `running`, anything after the final state) is dropped, so a late `running`
//! never overwrites `success`. 429, 5xx and connection errors are retried with backoff; 400 is
//! GitLab's answer to a repeated transition (`running` → `running`) and counts as delivered;
//! 401/403/404 (and any other refusal) are recorded on the build (`gitlab_status`), as is a status
//! that could not be delivered after every attempt. An app without a `gitlab_token` posts nothing.
//! A 429 with `Retry-After` is retried after the pause GitLab asks for (at most 30 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use crate::outbound::{pause_before, percent_encode, retry_after, transport_error, MAX_IN_FLIGHT};
use crate::store::{App, Build, BuildState, Store};

/// Attempts per status (the first and the retries).
const ATTEMPTS: u32 = 5;
/// GitLab's limit on a status description.
const MAX_DESCRIPTION: usize = 255;
/// Lanes of finished builds kept (so a late status of a finished build is still dropped) before
/// the finished ones are forgotten.
const MAX_LANES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Success,
    Failed,
    Canceled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
        }
    }

    /// Statuses of one build only move forward: pending, running, then one final state.
    fn rank(self) -> u8 {
        match self {
            Status::Pending => 0,
            Status::Running => 1,
            Status::Success | Status::Failed | Status::Canceled => 2,
        }
    }

    /// The status of a build that ended in `state`.
    pub fn of_final(state: BuildState) -> Status {
        match state {
            BuildState::Succeeded => Status::Success,
            BuildState::Cancelled => Status::Canceled,
            BuildState::Queued => Status::Pending,
            BuildState::Running => Status::Running,
            BuildState::Failed | BuildState::TimedOut => Status::Failed,
        }
    }
}

/// The build a status is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub id: i64,
    /// `refs/heads/main`, `refs/tags/v1`, or none (a build of a bare commit).
    pub git_ref: Option<&'a str>,
    pub commit: &'a str,
}

impl<'a> From<&'a Build> for Subject<'a> {
    fn from(b: &'a Build) -> Self {
        Subject { id: b.id, git_ref: b.git_ref.as_deref(), commit: &b.commit }
    }
}

/// One status to deliver: where, with which token, and the fields.
struct Post {
    url: String,
    token: String,
    status: Status,
    body: serde_json::Value,
}

struct Lane {
    tx: mpsc::UnboundedSender<Post>,
    /// Rank of the last status queued.
    rank: u8,
}

/// The per-process deliverer `Context` holds.
pub struct GitlabStatuses {
    client: reqwest::Client,
    store: Store,
    public_base: String,
    lanes: Arc<Mutex<HashMap<i64, Lane>>>,
    /// The first pause between attempts; each next one doubles.
    retry_base: Duration,
    /// At most [`MAX_IN_FLIGHT`] requests open at once, over all lanes.
    in_flight: Arc<Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl GitlabStatuses {
    /// `public_base`: Kiln's public URL (`server.public_url`), the base of the build links.
    pub fn new(store: Store, public_base: String, metrics: Arc<crate::metrics::Metrics>) -> GitlabStatuses {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("an HTTP client");
        GitlabStatuses {
            client,
            store,
            public_base,
            lanes: Arc::default(),
            retry_base: Duration::from_millis(250),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        }
    }

    /// The build's page, the status's `target_url`.
    pub fn build_url(&self, id: i64) -> String {
        format!("{}/ui/builds/{id}", self.public_base)
    }

    /// Queues `status` of the build for delivery and returns at once. Nothing when the app has no
    /// GitLab token, or the build already has a later status queued.
    pub fn post(&self, app: &App, build: Subject<'_>, status: Status, description: &str) {
        let Some(token) = app.gitlab_token.clone() else { return };
        let Some(url) = statuses_url(app, build.commit) else {
            tracing::warn!(app = %app.name, "no GitLab base URL in the app's git_url: no commit status");
            return;
        };
        let mut body = json!({
            "state": status.as_str(),
            "name": app.settings.gitlab_status_name.as_deref().unwrap_or("kiln"),
            "target_url": self.build_url(build.id),
            "description": one_line(description),
        });
        if let Some(r) = build.git_ref {
            body["ref"] = json!(r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")).unwrap_or(r));
        }
        let post = Post { url, token, status, body };
        let mut lanes = self.lanes.lock().unwrap();
        if let Some(lane) = lanes.get_mut(&build.id) {
            if status.rank() < lane.rank || lane.rank == 2 {
                tracing::debug!(build = build.id, status = status.as_str(), "GitLab status behind a later one: dropped");
                return;
            }
            lane.rank = status.rank();
            let _ = lane.tx.send(post);
            return;
        }
        if lanes.len() >= MAX_LANES {
            lanes.retain(|_, l| l.rank < 2 || !l.tx.is_closed());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(post);
        lanes.insert(build.id, Lane { tx, rank: status.rank() });
        drop(lanes);
        let lane = LaneDeliverer {
            client: self.client.clone(),
            store: self.store.clone(),
            retry_base: self.retry_base,
            in_flight: self.in_flight.clone(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(lane.run(build.id, rx));
    }
}

/// What a lane's task needs to deliver.
struct LaneDeliverer {
    client: reqwest::Client,
    store: Store,
    retry_base: Duration,
    in_flight: Arc<Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl LaneDeliverer {
    /// Delivers one build's statuses in order until its final one.
    async fn run(self, build: i64, mut rx: mpsc::UnboundedReceiver<Post>) {
        while let Some(post) = rx.recv().await {
            let outcome = self.deliver(&post).await;
            // Counted where the status's fate is known; `deliver` words each Err from one of two
            // beginnings.
            self.metrics.gitlab_status(match &outcome {
                Ok(()) => "delivered",
                Err(why) if why.starts_with("refused") => "refused",
                Err(_) => "not_delivered",
            });
            if let Err(why) = outcome {
                tracing::warn!(build, status = post.status.as_str(), "GitLab commit status: {why}");
                if let Err(e) = self.store.set_build_gitlab_status(build, &why).await {
                    tracing::error!(build, "recording the GitLab status outcome: {e}");
                }
            }
            if post.status.rank() == 2 {
                break;
            }
        }
    }

    /// One status, retried; Err is what the build records.
    async fn deliver(&self, post: &Post) -> Result<(), String> {
        let mut last = String::new();
        let mut asked_pause = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(pause_before(attempt, self.retry_base, asked_pause.take())).await;
            }
            let answer = {
                let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
                self.client.post(&post.url).header("PRIVATE-TOKEN", &post.token).json(&post.body).send().await
            };
            match answer {
                Ok(r) if r.status().is_success() => return Ok(()),
                // GitLab's answer to a repeated transition (say running → running): nothing to retry.
                Ok(r) if r.status().as_u16() == 400 => return Ok(()),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    // GitLab's rate limits answer 429 with `Retry-After`.
                    asked_pause = retry_after(r.headers());
                    last = format!("{}", r.status());
                }
                Ok(r) => {
                    let code = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let message = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v.get("message").or_else(|| v.get("error")).map(|m| m.as_str().map(str::to_string).unwrap_or_else(|| m.to_string())))
                        .unwrap_or(text);
                    return Err(one_line(&format!("refused: {code} {} ({})", message.trim(), post.status.as_str())));
                }
                Err(e) => last = transport_error(e),
            }
        }
        Err(one_line(&format!("not delivered: {} after {ATTEMPTS} attempts: {last}", post.status.as_str())))
    }
}

/// `{gitlab}/api/v4/projects/{URL-encoded path}/statuses/{sha}`: the base is the app's
/// `settings.gitlab_url`, else the scheme and host of its `git_url`; the project its
/// `project_path`, else the `git_url`'s path without `.git`.
fn statuses_url(app: &App, sha: &str) -> Option<String> {
    let (scheme, rest) = app.git_url.split_once("://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let base = match &app.settings.gitlab_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("{scheme}://{host}"),
    };
    let project = match &app.project_path {
        Some(p) => p.clone(),
        None => path.trim_end_matches('/').trim_end_matches(".git").to_string(),
    };
    if project.is_empty() || host.is_empty() {
        return None;
    }
    Some(format!("{base}/api/v4/projects/{}/statuses/{sha}", percent_encode(&project)))
}

/// The first line, at most GitLab's 255 characters.
fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    if line.chars().count() <= MAX_DESCRIPTION {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_path_is_url_encoded_and_descriptions_are_one_short_line() {
        assert_eq!(percent_encode("group/sub group/app"), "group%2Fsub%20group%2Fapp");
        assert_eq!(one_line("compile failed: exit 2\nmore"), "compile failed: exit 2");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), 255);
    }

    fn app(git_url: &str, project_path: Option<&str>, gitlab_url: Option<&str>) -> App {
        App {
            id: 1,
            tenant_id: 1,
            tenant: "team".into(),
            name: "hello".into(),
            git_url: git_url.into(),
            project_path: project_path.map(String::from),
            branch_filter: "**".into(),
            kind: crate::store::BuildKind::Go,
            settings: crate::store::KindSettings { gitlab_url: gitlab_url.map(String::from), ..Default::default() },
            base_image: None,
            image_repository: "registry.example/team/hello".into(),
            webhook_secret: "s".into(),
            git_token: None,
            has_git_token: false,
            gitlab_token: Some("t".into()),
            has_gitlab_token: true,
            created_at: 0,
            deleted_at: None,
        }
    }

    #[test]
    fn the_statuses_url_is_the_git_urls_scheme_and_host_and_the_encoded_project() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let url = |a: &App| statuses_url(a, sha).unwrap();
        assert_eq!(
            url(&app("https://gitlab.example.com:8443/group/sub/hello.git", Some("group/sub/hello"), None)),
            format!("https://gitlab.example.com:8443/api/v4/projects/group%2Fsub%2Fhello/statuses/{sha}")
        );
        // Without a project path, the git URL's path without `.git`.
        assert_eq!(url(&app("http://git.local/team/hello.git", None, None)), format!("http://git.local/api/v4/projects/team%2Fhello/statuses/{sha}"));
        // settings.gitlab_url wins over the git URL's host.
        assert_eq!(
            url(&app("http://git.local/team/hello.git", Some("team/hello"), Some("https://gitlab.example/"))),
            format!("https://gitlab.example/api/v4/projects/team%2Fhello/statuses/{sha}")
        );
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(Status::Pending.rank() < Status::Running.rank());
        assert!(Status::Running.rank() < Status::Success.rank());
        assert_eq!(Status::of_final(BuildState::TimedOut), Status::Failed);
        assert_eq!(Status::of_final(BuildState::Cancelled), Status::Canceled);
    }
}
