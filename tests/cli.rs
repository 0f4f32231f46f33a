//! The `kiln` client commands as a person or a script runs them: the real binary against a real
//! `kiln serve` process (and, for releases, against Kiln with fake clusters), through tables,
//! `-o json` read back, followed logs redirected to a file, and the errors that say what to do.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use axum::http::Method;
use builder_api::store::{BuildState, NewBuild};
use serde_json::{json, Value};

use crate::support::fixtures::{fake_go, fixture_files, instant_go, numbered_lines};
use crate::support::git_server::GitServer;
use crate::support::kiln::ADMIN;
use crate::support::registry::{free_port, TestRegistry};
use crate::support::secrets;
use crate::support::serve_process::{write_config, ServeProcess};

const GIT_TOKEN: &str = "glpat-cli-token-24680";
const SECRET: &str = "hook-secret-of-the-cli";
const LIMIT: Duration = Duration::from_secs(120);

/// `kiln serve` in its own process with a token-protected git server holding the Go sample
/// (`team/<name>`), a registry, and `go` as given.
struct World {
    git: GitServer,
    registry: TestRegistry,
    serve: ServeProcess,
    dir: tempfile::TempDir,
    /// The tenant `team`'s owner token.
    token: String,
}

impl World {
    async fn new(go: impl FnOnce(&Path) -> PathBuf) -> World {
        crate::support::init();
        secrets::register(SECRET);
        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let go = go(dir.path());
        let rest = format!("[toolchains]\ngo = \"{}\"\ngoproxy = \"off\"\n[registry]\ninsecure = [\"{}\"]\n", go.display(), registry.host());
        let config = write_config(dir.path(), ADMIN, Path::new(env!("CARGO_BIN_EXE_kiln")), &rest);
        let serve = ServeProcess::start(&config, free_port());
        serve.ready().await;
        let token = serve.tenant(ADMIN, "team").await;
        std::fs::write(dir.path().join("hook.secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("git.token"), GIT_TOKEN).unwrap();
        World { git, registry, serve, dir, token }
    }

    /// Repository `team/NAME` with the Go sample; returns its commit.
    fn repo(&self, name: &str) -> String {
        let files = fixture_files("go-hello");
        let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c, x)| (p.as_str(), c.as_slice(), *x)).collect();
        self.git.create_repo(&format!("team/{name}")).commit_files(&files, "first")
    }

    /// The flags that create app NAME building `team/NAME`, its webhook secret from a file.
    fn create_args(&self, name: &str) -> Vec<String> {
        let mut args: Vec<String> = ["apps", "create", name, "--git-url"].map(String::from).to_vec();
        args.push(self.git.url(&format!("team/{name}")));
        args.extend(["--project-path".into(), format!("team/{name}"), "--image-repository".into(), format!("{}/team/{name}", self.registry.host())]);
        args.extend(["--webhook-secret-file".into(), self.dir.path().join("hook.secret").display().to_string()]);
        args
    }

    fn kiln(&self, token: &str) -> Cli {
        Cli { url: self.serve.url.clone(), token: token.into() }
    }

    /// The build's log as stored, over the API.
    async fn stored_log(&self, id: i64) -> String {
        let (status, log) = self.serve.call(Method::GET, &format!("/api/v1/builds/{id}/logs"), &self.token, None).await;
        assert!(status.is_success(), "{log}");
        log.as_str().unwrap().to_string()
    }
}

/// The `kiln` binary with `KILN_URL` and `KILN_TOKEN` set, its output on pipes (no colours).
struct Cli {
    url: String,
    token: String,
}

/// What one run printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Ran {
        assert_eq!(self.code, Some(0), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    fn failed(self, code: i32) -> Ran {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("-o json printed no JSON ({e}):\n{}", self.stdout))
    }
}

impl Cli {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args).env("KILN_URL", &self.url).env("KILN_TOKEN", &self.token).env("KILN_CLI_CONFIG", "/nonexistent/cli.toml").env_remove("NO_COLOR");
        cmd
    }

    async fn run(&self, args: &[&str]) -> Ran {
        self.run_with(args, None).await
    }

    /// With `stdin` fed to the command.
    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt as _;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(LIMIT, child.wait_with_output()).await.expect("the command did not end").unwrap();
        ran(args, out)
    }

    /// With stdout going to `file`, as `kiln … > file` does.
    async fn run_into(&self, args: &[&str], file: &Path) -> Ran {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null()).stdout(std::fs::File::create(file).unwrap()).stderr(Stdio::piped());
        // Not `output()`, which pipes stdout whatever was set.
        let out = tokio::time::timeout(LIMIT, cmd.spawn().unwrap().wait_with_output()).await.expect("the command did not end").unwrap();
        ran(args, out)
    }
}

/// The run's output, scanned for secrets like every answer of Kiln's.
fn ran(args: &[&str], out: Output) -> Ran {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    secrets::capture(&format!("kiln {} stdout", args.join(" ")), &stdout);
    secrets::capture(&format!("kiln {} stderr", args.join(" ")), &stderr);
    Ran { code: out.status.code(), stdout, stderr }
}

/// The value of `key` in `kiln apps show`'s `key  value` lines.
fn field(shown: &str, key: &str) -> String {
    let line = shown.lines().find(|l| l.split_whitespace().next() == Some(key)).unwrap_or_else(|| panic!("no {key} in\n{shown}"));
    line[key.len()..].trim().to_string()
}

/// The column where `header` starts in a table's first line, and that every other line has a
/// cell starting exactly there.
fn assert_column(table: &str, header: &str) {
    let lines: Vec<&str> = table.lines().collect();
    let at = lines[0].find(header).unwrap_or_else(|| panic!("no {header} in\n{table}"));
    for line in &lines[1..] {
        let b = line.as_bytes();
        assert!(b.len() > at && b[at - 1] == b' ' && b[at] != b' ', "{header} is not aligned at {at}:\n{table}");
    }
}

#[tokio::test]
async fn apps_are_created_changed_built_and_deleted_from_the_cli_with_json_that_reads_back() {
    let w = World::new(instant_go).await;
    let sha = w.repo("hello");
    let owner = w.kiln(&w.token);

    // Without a git token the app is made, but cannot clone; the token comes in from stdin.
    let args = w.create_args("hello");
    let created = owner.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await.ok();
    assert!(created.stdout.starts_with("created app hello") && field(&created.stdout, "git_token") == "not set", "{}", created.stdout);
    let updated = owner.run_with(&["apps", "update", "hello", "--git-token-file", "-", "--setting", "go_package=."], Some(GIT_TOKEN)).await.ok();
    assert_eq!(field(&updated.stdout, "git_token"), "set", "{}", updated.stdout);
    let shown = owner.run(&["apps", "show", "hello", "-o", "json"]).await.ok().json();
    assert_eq!((&shown["app"]["has_git_token"], &shown["app"]["settings"]["go_package"]), (&json!(true), &json!(".")), "{shown}");

    // Notification targets from stdin; read back as a table without the URL's token, and as JSON.
    let targets = r#"{"targets": [{"kind": "dingtalk", "url": "https://oapi.dingtalk.com/robot/send?access_token=cli-robot-token-1234", "secret": "SECcli", "events": ["failed", "fixed"]}]}"#;
    secrets::register("cli-robot-token-1234");
    owner.run_with(&["notifications", "hello", "--set", "-"], Some(targets)).await.ok();
    let listed = owner.run(&["notifications", "hello"]).await.ok();
    let row = listed.stdout.lines().nth(1).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(row, "app hello dingtalk https://oapi.dingtalk.com/… failed,fixed set", "{}", listed.stdout);
    assert!(!listed.stdout.contains("cli-robot-token"), "{}", listed.stdout);
    let read = owner.run(&["notifications", "hello", "-o", "json"]).await.ok().json();
    assert_eq!(read["targets"][0]["events"], json!(["failed", "fixed"]), "{read}");
    let refused = owner.run_with(&["notifications", "hello", "--set", "-"], Some(r#"{"targets": [{"kind": "pager", "url": "https://x", "events": ["failed"]}]}"#)).await.failed(1);
    assert!(refused.stderr.contains("unknown kind \"pager\""), "{}", refused.stderr);

    // A maven app without a Java base is refused with what to set; from a file with one, made.
    let mut maven = w.create_args("jvm");
    maven.extend(["--kind".into(), "maven".into()]);
    let refused = owner.run(&maven.iter().map(String::as_str).collect::<Vec<_>>()).await.failed(1);
    assert!(refused.stderr.contains("400") && refused.stderr.contains("base_image"), "{}", refused.stderr);
    let file = w.dir.path().join("jvm.json");
    let spec = json!({"name": "jvm", "git_url": w.git.url("team/jvm"), "kind": "maven", "base_image": format!("{}/library/jre:21", w.registry.host()),
                      "image_repository": format!("{}/team/jvm", w.registry.host()), "webhook_secret": SECRET});
    std::fs::write(&file, spec.to_string()).unwrap();
    let made = owner.run(&["apps", "create", "-f", file.to_str().unwrap(), "--setting", "maven_goals=[\"package\"]", "-o", "json"]).await.ok().json();
    assert_eq!((&made["app"]["kind"], &made["app"]["settings"]["maven_goals"]), (&json!("maven"), &json!(["package"])), "{made}");
    std::fs::write(&file, "{\"name\": ").unwrap();
    let broken = owner.run(&["apps", "create", "-f", file.to_str().unwrap()]).await.failed(1);
    assert!(broken.stderr.contains("jvm.json is not JSON"), "{}", broken.stderr);

    let listed = owner.run(&["apps"]).await.ok();
    assert!(listed.stdout.lines().count() == 3 && listed.stdout.contains("hello") && listed.stdout.contains("jvm"), "{}", listed.stdout);
    for header in ["TENANT", "KIND", "BRANCHES", "REPOSITORY", "IMAGE"] {
        assert_column(&listed.stdout, header);
    }
    let names: Vec<Value> = owner.run(&["apps", "list", "-o", "json"]).await.ok().json()["apps"].as_array().unwrap().iter().map(|a| a["name"].clone()).collect();
    assert_eq!(names, [json!("hello"), json!("jvm")]);

    // A build: its id on stderr, then its log on stdout — exactly the stored log — and the
    // result as the exit code, with the summary on stderr.
    let out = w.dir.path().join("build.log");
    let built = owner.run_into(&["build", "hello", "--commit", &sha], &out).await.ok();
    let id: i64 = built.stderr.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no id in {}", built.stderr));
    assert!(built.stderr.starts_with(&format!("build {id} of team/hello at {sha} queued")), "{}", built.stderr);
    assert!(built.stderr.contains(&format!("build {id} Succeeded")) && built.stderr.contains(&format!("image {}/team/hello@sha256:", w.registry.host())), "{}", built.stderr);
    let stored = w.stored_log(id).await;
    assert!(stored.contains("── step clone succeeded"), "{stored}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), stored, "the followed log is not the stored one");
    // `logs -f > file` of the finished build: the same bytes; `logs` without -f too.
    let followed = owner.run_into(&["logs", "-f", &id.to_string()], &out).await.ok();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), stored);
    assert!(followed.stderr.contains(&format!("build {id} Succeeded")), "{}", followed.stderr);
    assert_eq!(owner.run(&["logs", &id.to_string()]).await.ok().stdout, stored);
    let events: Vec<Value> = owner.run(&["logs", &id.to_string(), "-o", "json"]).await.ok().stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.last().unwrap()["data"]["state"], "Succeeded", "{events:?}");
    assert_eq!(events.iter().filter(|e| e["event"] != "end").count(), stored.lines().count(), "one event per stored line");

    // Retry: a new build of the same commit; detached, only its id.
    let again: i64 = owner.run(&["retry", &id.to_string(), "--detach"]).await.ok().stdout.trim().parse().unwrap();
    assert!(again > id);
    let retried = owner.run(&["retry", &id.to_string(), "-o", "json"]).await.ok().json();
    assert_eq!((&retried["retry_of"], &retried["build"]["commit"]), (&json!(id), &json!(sha)), "{retried}");
    let third = retried["build"]["id"].as_i64().unwrap();
    for build in [again, third] {
        owner.run(&["logs", "-f", &build.to_string()]).await.ok();
    }
    let builds = owner.run(&["builds", "-o", "json"]).await.ok().json();
    let listed: Vec<(i64, &str)> = builds["builds"].as_array().unwrap().iter().map(|b| (b["id"].as_i64().unwrap(), b["state"].as_str().unwrap())).collect();
    assert_eq!(listed, [(third, "Succeeded"), (again, "Succeeded"), (id, "Succeeded")]);
    let table = owner.run(&["builds"]).await.ok().stdout;
    for header in ["STATE", "APP", "REF", "COMMIT", "DIGEST"] {
        assert_column(&table, header);
    }
    // Cancelling a finished build is refused with the reason.
    let late = owner.run(&["cancel", &id.to_string()]).await.failed(1);
    assert!(late.stderr.contains("409") && late.stderr.contains("already ended Succeeded"), "{}", late.stderr);

    // Tenants (admin) and tokens (the owner's own tenant, found through whoami).
    let admin = w.kiln(ADMIN);
    let tenants = admin.run(&["tenants", "-o", "json"]).await.ok().json();
    assert_eq!(tenants["tenants"][0]["name"], "team", "{tenants}");
    assert!(admin.run(&["tenants"]).await.ok().stdout.lines().nth(1).unwrap().contains("team"));
    let tokens = owner.run(&["tokens", "-o", "json"]).await.ok().json();
    assert_eq!((&tokens["tenant"], &tokens["tokens"][0]["role"]), (&json!("team"), &json!("owner")), "{tokens}");
    assert!(owner.run(&["tokens"]).await.ok().stdout.contains("initial  owner"));
    let nameless = admin.run(&["tokens"]).await.failed(1);
    assert!(nameless.stderr.contains("kiln tokens TENANT"), "{}", nameless.stderr);
    assert_eq!(admin.run(&["tokens", "team", "-o", "json"]).await.ok().json()["tenant"], "team");

    // Delete: gone from the list, its builds kept.
    let deleted = owner.run(&["apps", "delete", "hello"]).await.ok();
    assert_eq!(deleted.stdout.trim(), "deleted app hello");
    let gone = owner.run(&["apps", "show", "hello"]).await.failed(1);
    assert!(gone.stderr.contains("404") && gone.stderr.contains("no app hello"), "{}", gone.stderr);
    assert_eq!(owner.run(&["builds", "-o", "json"]).await.ok().json()["builds"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_cli_says_what_to_do_about_a_bad_url_a_refused_token_and_a_missing_role() {
    let w = World::new(instant_go).await;
    let port = w.serve.url.trim_start_matches("http://").to_string();
    let owner = w.kiln(&w.token);

    let bare = owner.run(&["builds", "--url", &port]).await.failed(1);
    assert!(bare.stderr.contains(&format!("--url \"{port}\" has no scheme: add http:// (http://{port})")), "{}", bare.stderr);
    let from_env = Cli { url: port.clone(), token: w.token.clone() }.run(&["apps"]).await.failed(1);
    assert!(from_env.stderr.contains("KILN_URL") && from_env.stderr.contains("add http://"), "{}", from_env.stderr);
    // Something answers there, but it is a registry, not Kiln.
    let registry = format!("http://{}", w.registry.host());
    let elsewhere = owner.run(&["builds", "--url", &registry]).await.failed(1);
    assert!(elsewhere.stderr.contains("does not look like Kiln") && elsewhere.stderr.contains("KILN_URL"), "{}", elsewhere.stderr);
    let nobody = owner.run(&["builds", "--url", &format!("http://127.0.0.1:{}", free_port())]).await.failed(1);
    assert!(nobody.stderr.contains("cannot reach Kiln") && nobody.stderr.contains("kiln serve"), "{}", nobody.stderr);

    let wrong = w.kiln("not-a-token").run(&["builds"]).await.failed(1);
    assert!(wrong.stderr.contains("401") && wrong.stderr.contains("--token or KILN_TOKEN"), "{}", wrong.stderr);
    let (_, viewer) = w.serve.call(Method::POST, "/api/v1/tenants/team/tokens", &w.token, Some(json!({"role": "viewer"}))).await;
    let viewer = w.kiln(viewer["token"].as_str().unwrap());
    let low = viewer.run(&["build", "hello", "--ref", "main"]).await.failed(1);
    assert!(low.stderr.contains("403") && low.stderr.contains("developer role"), "{}", low.stderr);
    let unknown = viewer.run(&["releases", "nope"]).await.failed(1);
    assert!(unknown.stderr.contains("404") && unknown.stderr.contains("no app nope"), "{}", unknown.stderr);
    let nothing = owner.run(&["build", "hello"]).await.failed(2);
    assert!(nothing.stderr.contains("--ref"), "{}", nothing.stderr);

    // Every command explains itself.
    for command in ["apps", "build", "cancel", "retry", "releases", "rollback", "tenants", "tokens", "logs", "builds"] {
        let help = owner.run(&[command, "--help"]).await.ok();
        assert!(help.stdout.contains("Usage: kiln") && help.stdout.contains("--output"), "{command}:\n{}", help.stdout);
    }
    for sub in ["list", "show", "create", "update", "delete"] {
        assert!(owner.run(&["apps", sub, "--help"]).await.ok().stdout.contains(&format!("Usage: kiln apps {sub}")));
    }
}

#[tokio::test]
async fn a_running_build_is_cancelled_from_the_cli_and_its_follower_writes_exactly_the_stored_log() {
    let w = World::new(|dir| fake_go(dir, "slow-go", &numbered_lines(100_000, 50))).await;
    w.repo("slow");
    let owner = w.kiln(&w.token);
    let mut args = w.create_args("slow");
    args.extend(["--git-token-file".into(), w.dir.path().join("git.token").display().to_string()]);
    owner.run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await.ok();

    let id: i64 = owner.run(&["build", "slow", "--ref", "main", "-d"]).await.ok().stdout.trim().parse().unwrap();
    let out = w.dir.path().join("slow.log");
    let follower = {
        let mut cmd = owner.command(&["logs", "-f", &id.to_string()]);
        cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&out).unwrap()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !w.stored_log(id).await.contains("slow line 3") {
        assert!(tokio::time::Instant::now() < deadline, "the build never got going:\n{}", w.stored_log(id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An app that builds is not deleted without --force; the CLI says how.
    let kept = owner.run(&["apps", "delete", "slow"]).await.failed(1);
    assert!(kept.stderr.contains("409") && kept.stderr.contains(&id.to_string()) && kept.stderr.contains("--force"), "{}", kept.stderr);

    let cancelled = owner.run(&["cancel", &id.to_string()]).await.ok();
    assert!(cancelled.stdout.starts_with(&format!("build {id}: stopping")), "{}", cancelled.stdout);
    let ended = tokio::time::timeout(LIMIT, follower.wait_with_output()).await.expect("the follower did not end").unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr).into_owned();
    assert_eq!(ended.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains(&format!("build {id} Cancelled: cancelled during step compile")), "{stderr}");
    let stored = w.stored_log(id).await;
    assert!(stored.contains("slow line 3") && stored.trim_end().ends_with("Cancelled: cancelled during step compile"), "{stored}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), stored, "the file is not exactly the stored log");

    // A second build, then delete --force: cancelled, the app gone, the build kept.
    let second: i64 = owner.run(&["retry", &id.to_string(), "-d"]).await.ok().stdout.trim().parse().unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !w.stored_log(second).await.contains("slow line 1") {
        assert!(tokio::time::Instant::now() < deadline, "the retry never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forced = owner.run(&["apps", "delete", "slow", "--force"]).await.ok();
    assert_eq!(forced.stdout.trim(), format!("deleted app slow; cancelled builds {second}"));
    let followed = owner.run(&["logs", "-f", &second.to_string()]).await.failed(130);
    assert!(followed.stderr.contains("cancelled: app slow was deleted"), "{}", followed.stderr);
}

#[tokio::test]
async fn releases_and_a_rollback_from_the_cli_move_the_deployment_back_to_an_earlier_build() {
    use crate::rollouts::{image_of, RolloutWorld};
    const EAST: &str = "harbor.east.example:8443";
    let w = RolloutWorld::new().await;
    w.subscribe("east", "manual").await;
    let store = &w.kiln.ctx.store;
    let app = store.app_by_name(store.tenant_by_name("team").await.unwrap().unwrap().id, "hello").await.unwrap().unwrap();
    let mut builds = vec![];
    for (commit, digest) in [("1", "sha256:1111111111111111111111111111111111111111111111111111111111111111"), ("2", "sha256:2222222222222222222222222222222222222222222222222222222222222222")] {
        let build = store.create_build(&NewBuild { tenant_id: app.tenant_id, app_id: app.id, git_ref: None, commit: commit.repeat(40), trigger: "manual".into(), commit_info: Default::default() }).await.unwrap();
        store.set_build_image(build.id, &format!("{EAST}/team/hello@{digest}"), digest).await.unwrap();
        store.finish_build(build.id, BuildState::Succeeded, None).await.unwrap();
        builds.push((build.id, digest));
    }
    let cli = Cli { url: w.kiln.url(""), token: w.token.clone() };

    let none = cli.run(&["releases", "hello"]).await.ok();
    assert!(none.stdout.contains("east") && none.stdout.contains("shop/web (app)"), "{}", none.stdout);
    let bad = cli.run(&["rollback", "hello", "--to", "yesterday"]).await.failed(1);
    assert!(bad.stderr.contains("neither a build id") && bad.stderr.contains("kiln builds --app hello"), "{}", bad.stderr);
    let absent = cli.run(&["rollback", "hello", "--to", "999999"]).await.failed(1);
    assert!(absent.stderr.contains("404") && absent.stderr.contains("no build 999999"), "{}", absent.stderr);

    // By digest, then by build id in one cluster: each a rollout that completes.
    let ((first, d1), (_, d2)) = (builds[0], builds[1]);
    let moved = cli.run(&["rollback", "hello", "--to", d2, "-o", "json"]).await.ok().json();
    assert_eq!(moved["digest"], d2, "{moved}");
    let releases = w.settled().await;
    assert_eq!(releases["releases"][0]["digest"], d2);
    let back = cli.run(&["rollback", "hello", "--to", &first.to_string(), "--cluster", "east"]).await.ok();
    assert!(back.stdout.starts_with(&format!("rolling hello back to {d1}: rollouts ")), "{}", back.stdout);
    w.settled().await;
    assert_eq!(image_of(&w.east, "app"), format!("{EAST}/team/hello@{d1}"));

    let json = cli.run(&["releases", "hello", "-o", "json"]).await.ok().json();
    let history: Vec<(&str, &str)> = json["releases"][0]["history"].as_array().unwrap().iter().map(|r| (r["digest"].as_str().unwrap(), r["state"].as_str().unwrap())).collect();
    assert_eq!(history, [(d1, "Complete"), (d2, "Complete")], "{json}");
    assert_eq!(json["releases"][0]["digest"], d1);
    let table = cli.run(&["releases", "hello"]).await.ok().stdout;
    let current = table.lines().nth(1).unwrap();
    assert!(current.starts_with("east") && current.ends_with(&d1[..19]), "{table}");
    let rollouts: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("ROLLOUT")).collect();
    assert_eq!(rollouts.len(), 3, "{table}");
    assert_column(&rollouts.join("\n"), "STATE");
    assert!(rollouts[1].contains("Complete") && rollouts[1].contains(&d1[..19]) && rollouts[1].contains("rollback"), "{table}");
}

#[tokio::test]
async fn a_blue_green_release_is_set_promoted_and_aborted_from_the_cli() {
    use crate::rollouts::{RolloutWorld, D1, D3};
    let w = RolloutWorld::new().await;
    w.subscribe("east", "glob:v*").await;
    w.east.create("shop", "services", json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    let cli = Cli { url: w.kiln.url(""), token: w.token.clone() };
    let set = cli.run(&["strategy", "hello", "1", r#"{"kind": "blue-green", "min_ready_secs": 0, "promote": "manual"}"#]).await.ok();
    assert!(set.stdout.starts_with("subscription 1 of hello releases with {") && set.stdout.contains("\"blue-green\""), "{}", set.stdout);
    let bad = cli.run(&["strategy", "hello", "1", "sometimes"]).await.failed(1);
    assert!(bad.stderr.contains("kind is one of rolling, blue-green, canary"), "{}", bad.stderr);
    let nothing = cli.run(&["promote", "hello", "1"]).await.failed(1);
    assert!(nothing.stderr.contains("no release of subscription 1 is running"), "{}", nothing.stderr);

    // Waits until the newest release of the subscription has a step containing `text`.
    let world = &w;
    let waiting = |text: &'static str| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = world.releases().await;
            let newest = r["releases"][0]["history"][0].clone();
            if newest["steps"].as_array().is_some_and(|s| s.iter().any(|st| st["step"].as_str().unwrap().contains(text))) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no step {text:?}: {r:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    w.pushed_to_east(D1, "v1.0.0").await;
    waiting("web-green waits for promotion").await;
    let promoted = cli.run(&["promote", "hello", "1"]).await.ok();
    assert!(promoted.stdout.starts_with("promote of rollout ") && promoted.stdout.contains("asked"), "{}", promoted.stdout);
    w.settled().await;
    assert_eq!(w.east.get("services", "shop", "web").unwrap()["spec"]["selector"]["kiln.dev/colour"], "green");

    w.pushed_to_east(D3, "v2.0.0").await;
    waiting("web-blue waits for promotion").await;
    cli.run(&["abort", "hello", "1"]).await.ok();
    let releases = w.settled().await;
    assert_eq!(releases["releases"][0]["history"][0]["state"], "Aborted", "{releases:#}");
    assert_eq!(w.east.get("services", "shop", "web").unwrap()["spec"]["selector"]["kiln.dev/colour"], "green");
    let table = cli.run(&["releases", "hello"]).await.ok().stdout;
    assert!(table.contains("blue-green") && table.contains("Aborted"), "{table}");
    assert!(table.contains("promoted (by token:") && table.contains("aborted; web-blue scaled to zero (by token:"), "{table}");
}
