//! Builders that make tests read like sentences: GitLab push payloads, app specs.

use serde_json::{json, Value};

/// A GitLab Push Hook (or Tag Push Hook) as GitLab sends it, trimmed to what matters.
#[derive(Clone)]
pub struct GitlabPush {
    pub project: String,
    pub git_url: String,
    pub git_ref: String,
    pub before: String,
    pub after: String,
    pub tag: bool,
    /// The head commit's message and author name, listed in `commits` as GitLab does; none by
    /// default (`commits` empty, as in a push of more than 20 commits).
    pub head: Option<(String, String)>,
}

impl GitlabPush {
    pub fn branch(project: &str, git_url: &str, branch: &str, commit: &str) -> GitlabPush {
        GitlabPush {
            project: project.into(),
            git_url: git_url.into(),
            git_ref: format!("refs/heads/{branch}"),
            before: "0".repeat(40),
            after: commit.into(),
            tag: false,
            head: None,
        }
    }

    /// The push lists its head commit with this message and author, and its web URL.
    pub fn with_head_commit(mut self, message: &str, author: &str) -> GitlabPush {
        self.head = Some((message.into(), author.into()));
        self
    }

    /// Where GitLab shows the head commit: `<project URL>/-/commit/<sha>`.
    pub fn commit_url(&self) -> String {
        format!("{}/-/commit/{}", self.git_url.trim_end_matches(".git"), self.after)
    }

    pub fn tag(project: &str, git_url: &str, tag: &str, commit: &str) -> GitlabPush {
        GitlabPush { git_ref: format!("refs/tags/{tag}"), tag: true, ..GitlabPush::branch(project, git_url, "x", commit) }
    }

    /// The push that deletes the branch: `after` is all zeros.
    pub fn deleting(mut self) -> GitlabPush {
        self.before = self.after.clone();
        self.after = "0".repeat(40);
        self
    }

    pub fn event(&self) -> &'static str {
        if self.tag { "Tag Push Hook" } else { "Push Hook" }
    }

    pub fn body(&self) -> Value {
        let deleted = self.after.chars().all(|c| c == '0');
        json!({
            "object_kind": if self.tag { "tag_push" } else { "push" },
            "event_name": if self.tag { "tag_push" } else { "push" },
            "before": self.before,
            "after": self.after,
            "ref": self.git_ref,
            "checkout_sha": if deleted { Value::Null } else { json!(self.after) },
            "user_username": "dev",
            "project_id": 15,
            "project": {
                "id": 15,
                "name": self.project.rsplit('/').next().unwrap(),
                "path_with_namespace": self.project,
                "git_http_url": self.git_url,
                "default_branch": "main"
            },
            "commits": match &self.head {
                Some((message, author)) => json!([{
                    "id": self.after,
                    "message": message,
                    "title": message.lines().next().unwrap_or_default(),
                    "timestamp": "2024-05-01T10:00:00+02:00",
                    "url": self.commit_url(),
                    "author": { "name": author, "email": "dev@example.com" }
                }]),
                None => json!([]),
            },
            "total_commits_count": 1,
            "repository": { "name": self.project.rsplit('/').next().unwrap(), "git_http_url": self.git_url }
        })
    }
}

/// An app spec for `POST /api/v1/apps`.
pub fn app_spec(name: &str, git_url: &str, project: &str, image_repository: &str, secret: &str) -> Value {
    json!({
        "name": name,
        "git_url": git_url,
        "project_path": project,
        "kind": "auto",
        "image_repository": image_repository,
        "webhook_secret": secret,
    })
}

/// Commits the sample app `fixture` as the first commit of repo `path` (`tenant/name`) on `git`;
/// returns its sha and the spec of an app named `name` that builds it into
/// `REGISTRY/path`, cloning with `git_token`, with `extra`'s fields set over the defaults.
pub fn fixture_app(
    git: &crate::support::git_server::GitServer,
    registry: &str,
    path: &str,
    fixture: &str,
    secrets: (&str, &str),
    extra: Value,
) -> (String, Value) {
    let (webhook_secret, git_token) = secrets;
    let name = path.rsplit('/').next().expect("path is tenant/name");
    let repo = git.create_repo(path);
    let files = fixture_files(fixture);
    let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
    let sha = repo.commit_files(&files, "first");
    let mut spec = app_spec(name, &git.url(path), path, &format!("{registry}/{path}"), webhook_secret);
    spec["git_token"] = git_token.into();
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    (sha, spec)
}

/// The files of a sample app under `tests/fixtures/apps/NAME`: (path, content, executable).
pub fn fixture_files(app: &str) -> Vec<(String, Vec<u8>, bool)> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/apps").join(app);
    let mut files = vec![];
    collect(&root, &root, &mut files);
    files
}

fn collect(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>, bool)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&path).unwrap(), false));
        }
    }
}

/// A busybox base image (`/bin/busybox`, `/bin/sh`) pushed to `registry` as
/// `library/busybox:1`, assembled by Kiln itself (there is no internet to pull one from).
pub fn push_busybox_base(registry: &str) -> String {
    let bin = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", bin.path().join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.path().join("sh")).unwrap();
    push_base(registry, "library/busybox:1", &["--add".into(), format!("{}:/bin", bin.path().display())])
}

/// A stand-in for a JRE base image, pushed to `registry`: no layers, only `JAVA_HOME` in its
/// config (the tests start the images' classes on the host's `java`). A Maven app needs a base
/// (its image starts `java`); this one adds nothing to the image's layers.
pub fn push_java_base(registry: &str) -> String {
    push_base(registry, "library/jre:17", &["--env".into(), "JAVA_HOME=/opt/java".into()])
}

/// A stand-in for a JRE base image whose env sets `JAVA_TOOL_OPTIONS` of its own as well, pushed
/// to `registry` as `library/jre-tuned:17`.
pub fn push_java_base_with_options(registry: &str, java_tool_options: &str) -> String {
    let env = ["--env".into(), "JAVA_HOME=/opt/java".into(), "--env".into(), format!("JAVA_TOOL_OPTIONS={java_tool_options}")];
    push_base(registry, "library/jre-tuned:17", &env)
}

/// `kiln step assemble` of `args` over scratch, pushed as `registry/name`; returns the reference.
fn push_base(registry: &str, name: &str, args: &[String]) -> String {
    let base = format!("{registry}/{name}");
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["step", "assemble", "--base", "scratch", "--image", &base])
        .args(args)
        .arg("--result-file")
        .arg(dir.path().join("result.json"))
        .env("KILN_INSECURE_REGISTRIES", registry)
        .status()
        .unwrap();
    assert!(status.success(), "pushing the base image {base} failed");
    base
}

/// A `go` for builds that runs `body` (shell) first, then the real `go` with the same arguments:
/// a build whose compile prints, floods or stalls as a test needs. Written as `DIR/name`.
pub fn fake_go(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let script = dir.join(name);
    std::fs::write(&script, format!("#!/bin/sh\n{body}\nexec go \"$@\"\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// A stand-in for `go build` that writes its `-o` output at once: builds that cost nothing to
/// compile, for tests that need many.
pub fn instant_go(dir: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("instant-go");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && out=\"$2\"; shift; done\n\
         mkdir -p \"$(dirname \"$out\")\" && printf '#!/bin/sh\\necho hello\\n' > \"$out\" && chmod +x \"$out\" && echo \"compiled $out\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// Shell that prints `slow line 1..=n`, one every `ms`.
pub fn numbered_lines(n: u32, ms: u32) -> String {
    format!("i=1\nwhile [ $i -le {n} ]; do echo \"slow line $i\"; i=$((i+1)); sleep {}; done", ms as f64 / 1000.0)
}

/// Shell that prints `slow line 1..=n`, one every `ms`, and after line `hold_at` waits until the
/// file `gate` exists: a test that needs every build mid-step at some moment (a kill) gets it
/// however slowly a loaded machine started them, and lets them go on by creating `gate`.
pub fn numbered_lines_held(n: u32, ms: u32, hold_at: u32, gate: &std::path::Path) -> String {
    format!(
        "i=1\nwhile [ $i -le {n} ]; do echo \"slow line $i\"; \
         if [ $i -eq {hold_at} ]; then while [ ! -e '{}' ]; do sleep 0.02; done; fi; i=$((i+1)); sleep {}; done",
        gate.display(),
        ms as f64 / 1000.0
    )
}
