//! APM agent injection end to end: a real Java agent (compiled here, `Premain-Class` printing a
//! marker), real Maven and buildah builds through Kiln, a real registry, and the image started by
//! the host JVM from its unpacked layers with the image's own `JAVA_TOOL_OPTIONS` and
//! entrypoint/cmd — the agent's marker must come before the app's first line.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use builder_api::config::{AgentSource, ApmAgent};
use builder_api::store::{Build, BuildState};
use registry_sync::{ImageRef, PulledImage, RegistryOptions};
use serde_json::{json, Value};

use crate::support::fixtures::{app_spec, fixture_files, GitlabPush};
use crate::support::git_server::{GitServer, RepoHandle};
use crate::support::kiln::{test_config, TestKiln};
use crate::support::registry::TestRegistry;

const GIT_TOKEN: &str = "glpat-apm-token-abcdef";
const SECRET: &str = "hook-secret-apm";
const BUILD_LIMIT: Duration = Duration::from_secs(300);
pub(crate) const MARKER: &str = "KILN-APM-AGENT-LOADED";

/// A git server, a registry, Kiln with three agents configured, and the agent sources (also the
/// world of `jvm_sizing`, whose options must work with an agent).
pub(crate) struct World {
    pub(crate) git: GitServer,
    pub(crate) registry: TestRegistry,
    pub(crate) kiln: TestKiln,
    pub(crate) token: String,
    /// Keeps the agent sources (and the tools' scratch) alive.
    _work: tempfile::TempDir,
}

impl World {
    pub(crate) async fn new() -> World {
        let work = tempfile::tempdir().unwrap();
        // tracer 1.0 from a directory, tracer 2.0 from a .tar.gz, ghost 1.0 from nowhere.
        let v1 = work.path().join("tracer-1.0");
        agent_jar(&work.path().join("build-1.0"), "1.0", &v1.join("tracer.jar"));
        let v2_dir = work.path().join("tracer-2.0");
        agent_jar(&work.path().join("build-2.0"), "2.0", &v2_dir.join("tracer.jar"));
        let v2 = work.path().join("tracer-2.0.tar.gz");
        run(Command::new("tar").arg("-czf").arg(&v2).arg("-C").arg(&v2_dir).arg("tracer.jar"));

        let git = GitServer::start_with_token(GIT_TOKEN).await;
        let registry = TestRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &[&registry.host()]);
        let agent = |name: &str, version: &str, source: AgentSource| ApmAgent {
            name: name.into(),
            version: version.into(),
            source,
            java_options: "-javaagent:/opt/apm/{agent}.jar -Dapm.service.name={app} -Dapm.tenant={tenant}".into(),
        };
        config.apm.agents = vec![
            agent("tracer", "1.0", AgentSource { dir: Some(v1), ..Default::default() }),
            agent("tracer", "2.0", AgentSource { tar_gz: Some(v2), ..Default::default() }),
            agent("ghost", "1.0", AgentSource { dir: Some(work.path().join("no-such-agent")), ..Default::default() }),
        ];
        let kiln = TestKiln::start_with(dir, config).await;
        let token = kiln.tenant("team").await;
        World { git, registry, kiln, token, _work: work }
    }

    pub(crate) fn opts(&self) -> RegistryOptions {
        RegistryOptions { insecure_registries: vec![self.registry.host()], ..Default::default() }
    }

    /// Repo `team/NAME` with `files` and an app for it with `extra` merged into its spec.
    pub(crate) async fn app(&self, name: &str, files: &[(String, Vec<u8>)], extra: Value) -> (String, RepoHandle) {
        let repo = self.git.create_repo(&format!("team/{name}"));
        let files: Vec<(&str, &[u8], bool)> = files.iter().map(|(p, c)| (p.as_str(), c.as_slice(), false)).collect();
        let sha = repo.commit_files(&files, "first");
        let mut spec = app_spec(
            name,
            &self.git.url(&format!("team/{name}")),
            &format!("team/{name}"),
            &format!("{}/team/{name}", self.registry.host()),
            SECRET,
        );
        spec["git_token"] = GIT_TOKEN.into();
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        self.kiln.app(&self.token, spec).await;
        (sha, repo)
    }

    pub(crate) async fn push(&self, name: &str, sha: &str) -> i64 {
        let push = GitlabPush::branch(&format!("team/{name}"), &self.git.url(&format!("team/{name}")), "main", sha);
        self.kiln.push_hook(&push, SECRET).await
    }

    pub(crate) async fn finished(&self, id: i64, state: BuildState) -> (Build, String) {
        let build = self.kiln.wait_final(id, BUILD_LIMIT).await;
        let log = self.kiln.log(id).await;
        assert_eq!(build.state, state, "reason: {:?}\nlog:\n{log}", build.reason);
        (build, log)
    }

    pub(crate) async fn pull(&self, image: &str) -> PulledImage {
        registry_sync::pull_image(&image.parse().unwrap(), &self.opts()).await.unwrap()
    }

    /// Blobs the registry stores (layers and configs), by digest.
    fn stored_blobs(&self) -> BTreeSet<String> {
        let root = self.registry.storage().join("docker/registry/v2/blobs/sha256");
        let mut out = BTreeSet::new();
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
                out.insert(format!("sha256:{}", blob.file_name().to_string_lossy()));
            }
        }
        out
    }
}

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Compiles `sources` (path, text) into a jar at `jar`, with `manifest` lines if given.
pub(crate) fn compile_jar(scratch: &Path, sources: &[(&str, &str)], manifest: Option<&str>, classpath: Option<&Path>, jar: &Path) {
    let src = scratch.join("src");
    let classes = scratch.join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    let mut javac = Command::new("javac");
    javac.arg("-d").arg(&classes);
    if let Some(cp) = classpath {
        javac.arg("-cp").arg(cp);
    }
    for (path, text) in sources {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        javac.arg(&file);
    }
    run(&mut javac);
    std::fs::create_dir_all(jar.parent().unwrap()).unwrap();
    let mut cmd = Command::new("jar");
    match manifest {
        Some(lines) => {
            let mf = scratch.join("manifest.txt");
            std::fs::write(&mf, lines).unwrap();
            cmd.arg("cfm").arg(jar).arg(mf)
        }
        None => cmd.arg("cf").arg(jar),
    };
    run(cmd.arg("-C").arg(&classes).arg("."));
}

/// A Java agent whose `premain` prints the marker with its version and the service name it was
/// given (`-Dapm.service.name`).
fn agent_jar(scratch: &Path, version: &str, jar: &Path) {
    let source = format!(
        "package dev.kiln.apm;\n\
         public class Agent {{\n\
             public static void premain(String args) {{\n\
                 System.out.println(\"{MARKER} {version} service=\" + System.getProperty(\"apm.service.name\"));\n\
             }}\n\
         }}\n"
    );
    compile_jar(scratch, &[("dev/kiln/apm/Agent.java", &source)], Some("Premain-Class: dev.kiln.apm.Agent\n"), None, jar);
}

/// The layered Maven fixture plus its dependency jar (`lib/greeting-1.0.jar`).
fn layered_app_files(scratch: &Path) -> Vec<(String, Vec<u8>)> {
    let jar = scratch.join("greeting-1.0.jar");
    compile_jar(
        &scratch.join("greeting"),
        &[("dev/kiln/greeting/Greeting.java", "package dev.kiln.greeting;\npublic class Greeting { public static String word() { return \"greetings\"; } }\n")],
        None,
        None,
        &jar,
    );
    let mut files: Vec<(String, Vec<u8>)> = fixture_files("maven-layered").into_iter().map(|(p, c, _)| (p, c)).collect();
    files.push(("lib/greeting-1.0.jar".into(), std::fs::read(jar).unwrap()));
    files
}

/// `KEY` → value from the image config's env.
pub(crate) fn image_env(config: &Value, key: &str) -> Option<String> {
    config["config"]["Env"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|e| e.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Starts the image the way a container runtime would, on the host JVM: the entrypoint + cmd of
/// the image's config, with `/app/…` and `/opt/apm/…` paths resolved inside the unpacked layers,
/// and the image's `JAVA_TOOL_OPTIONS` (rewritten the same way). Returns stdout.
pub(crate) fn start_like_a_container(pulled: &PulledImage, root: &Path) -> String {
    let inner = &pulled.config["config"];
    let strings = |key: &str| -> Vec<String> {
        inner[key].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect()).unwrap_or_default()
    };
    let root_s = root.display().to_string();
    let inside = |s: &str| s.replace("/app/", &format!("{root_s}/app/")).replace("/opt/apm/", &format!("{root_s}/opt/apm/"));
    let argv: Vec<String> = strings("Entrypoint").into_iter().chain(strings("Cmd")).map(|a| inside(&a)).collect();
    assert_eq!(argv.first().map(String::as_str), Some("java"), "the image does not start java: {argv:?}");
    let mut cmd = Command::new("java");
    cmd.args(&argv[1..]).env_remove("JAVA_TOOL_OPTIONS");
    if let Some(options) = image_env(&pulled.config, "JAVA_TOOL_OPTIONS") {
        cmd.env("JAVA_TOOL_OPTIONS", inside(&options));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{argv:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

pub(crate) fn unpack(pulled: &PulledImage) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    registry_sync::unpack_layers(pulled, dir.path()).unwrap();
    dir
}

fn layer_digests(pulled: &PulledImage) -> Vec<String> {
    pulled.manifest.layers.iter().map(|l| l.digest.clone()).collect()
}

#[tokio::test]
async fn a_maven_app_with_apm_starts_the_agent_first_keeps_its_layers_apart_and_takes_another_version_without_a_rebuild() {
    let w = World::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let files = layered_app_files(scratch.path());
    let base = crate::support::fixtures::push_java_base(&w.registry.host());
    let (first_sha, repo) = w.app("shop", &files, json!({"base_image": base, "settings": {"apm": {"agent": "tracer", "version": "1.0"}}})).await;
    let (first, log) = w.finished(w.push("shop", &first_sha).await, BuildState::Succeeded).await;
    assert!(log.contains("injecting APM agent tracer 1.0"), "{log}");

    // The build record (and its API answer) names the agent and keeps the image before injection.
    let (status, body) = w.kiln.request(Method::GET, &format!("/api/v1/builds/{}", first.id), Some(&w.token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["build"]["apm_agent"].as_str(), body["build"]["apm_version"].as_str()), (Some("tracer"), Some("1.0")), "{body}");
    let original = first.original_image.clone().expect("original image recorded");
    assert_ne!(Some(&original), first.image.as_ref());

    // Layers: dependencies, resources, classes (the original), then the agent on top.
    let pulled = w.pull(first.image.as_deref().unwrap()).await;
    let before = w.pull(&original).await;
    assert_eq!(layer_digests(&before).len(), 3, "{:?}", before.manifest.layers);
    assert_eq!(layer_digests(&pulled)[..3], layer_digests(&before)[..], "the original layers stay as they are");
    assert_eq!(layer_digests(&pulled).len(), 4);
    let root = unpack(&pulled);
    for (path, what) in [("app/libs/greeting-1.0.jar", "dependency"), ("app/classes/app.properties", "resource"), ("opt/apm/tracer.jar", "agent")] {
        assert!(root.path().join(path).is_file(), "no {what} at /{path}");
    }
    let options = image_env(&pulled.config, "JAVA_TOOL_OPTIONS").unwrap();
    // Kiln's JVM sizing first (a Maven image has it by default, see jvm_sizing.rs), the agent after.
    assert_eq!(
        options,
        "-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError -javaagent:/opt/apm/tracer.jar -Dapm.service.name=shop -Dapm.tenant=team"
    );

    let out = start_like_a_container(&pulled, root.path());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, [&format!("{MARKER} 1.0 service=shop") as &str, "hello from kiln layered sample: greetings!"], "{out}");
    // Without the agent the same image starts the app alone (the marker is the agent's doing).
    let plain = start_like_a_container(&before, unpack(&before).path());
    assert_eq!(plain, "hello from kiln layered sample: greetings!\n");

    // A code-only change: only the classes layer is new in the registry (plus the two configs of
    // the original and the injected image); dependencies, resources and the agent are not
    // uploaded again, and the agent layer is the same blob.
    let stored = w.stored_blobs();
    let main_java = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/apps/maven-layered/src/main/java/dev/kiln/layered/Main.java"),
    )
    .unwrap()
    .replace("hello from kiln layered sample", "hello again from kiln layered sample");
    let second_sha = repo.commit_files(&[("src/main/java/dev/kiln/layered/Main.java", main_java.as_bytes(), false)], "code change");
    let (second, _) = w.finished(w.push("shop", &second_sha).await, BuildState::Succeeded).await;
    let second_pulled = w.pull(second.image.as_deref().unwrap()).await;
    let new_blobs: BTreeSet<String> = w.stored_blobs().difference(&stored).cloned().collect();
    let (l1, l2) = (layer_digests(&pulled), layer_digests(&second_pulled));
    assert_eq!(l1[..2], l2[..2], "dependency and resource layers are unchanged");
    assert_ne!(l1[2], l2[2], "the classes layer changed");
    assert_eq!(l1[3], l2[3], "the same agent gives the same agent layer");
    // The registry keeps manifests in its blob store too.
    let second_original = w.pull(second.original_image.as_deref().unwrap()).await;
    let expected: BTreeSet<String> = [
        l2[2].clone(),
        second_original.manifest.config.digest.clone(),
        second_pulled.manifest.config.digest.clone(),
        second_original.manifest_digest.clone(),
        second_pulled.manifest_digest.clone(),
    ]
    .into();
    assert_eq!(new_blobs, expected, "only the classes layer, two configs and two manifests are new");
    let out = start_like_a_container(&second_pulled, unpack(&second_pulled).path());
    assert!(out.starts_with(MARKER) && out.ends_with("hello again from kiln layered sample: greetings!\n"), "{out}");

    // Re-inject version 2.0 (from a .tar.gz) into the second build: a new image from the
    // original, no new build, the record follows.
    let builds_before = w.kiln.ctx.store.builds(None, None, None, 100).await.unwrap().len();
    let (status, body) = w
        .kiln
        .request(Method::POST, &format!("/api/v1/builds/{}/apm", second.id), Some(&w.token), Some(json!({"agent": "tracer", "version": "2.0"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let digest = body["digest"].as_str().unwrap();
    assert_ne!(Some(digest), second.image_digest.as_deref());
    assert_eq!(body["original_image"].as_str(), second.original_image.as_deref());
    assert_eq!(w.kiln.ctx.store.builds(None, None, None, 100).await.unwrap().len(), builds_before, "no rebuild");
    let record = w.kiln.build(second.id).await;
    assert_eq!((record.image_digest.as_deref(), record.apm_version.as_deref()), (Some(digest), Some("2.0")));
    assert_eq!(record.original_image, second.original_image);
    let reinjected = w.pull(body["image"].as_str().unwrap()).await;
    assert_eq!(reinjected.manifest_digest, digest);
    assert_eq!(
        image_env(&reinjected.config, "JAVA_TOOL_OPTIONS").unwrap().matches("-javaagent:").count(),
        1,
        "agents do not stack: injection starts from the original"
    );
    let out = start_like_a_container(&reinjected, unpack(&reinjected).path());
    assert!(out.starts_with(&format!("{MARKER} 2.0 service=shop\n")), "{out}");

    // Version 1.0 again, its layer built this time by the server into its own cache: the same
    // digest as the build step made.
    let (status, body) = w
        .kiln
        .request(Method::POST, &format!("/api/v1/builds/{}/apm", second.id), Some(&w.token), Some(json!({"agent": "tracer", "version": "1.0"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let again = w.pull(body["image"].as_str().unwrap()).await;
    assert_eq!(layer_digests(&again)[3], l1[3]);
    assert_eq!(again.manifest_digest, second.image_digest.clone().unwrap(), "the same injection is the same image");

    // An agent that is not configured is a 422 that says which ones are.
    let (status, body) = w
        .kiln
        .request(Method::POST, &format!("/api/v1/builds/{}/apm", second.id), Some(&w.token), Some(json!({"agent": "nope"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("tracer 2.0"), "{body}");
}

/// The `dockerfile-java` fixture with its `app.jar` (compiled here), and the JRE-like base its
/// Dockerfile takes as the `BASE` build arg, pushed to the world's registry (assembled by Kiln
/// itself: no internet here). Returns the base and the files.
pub(crate) fn dockerfile_java_app(w: &World, scratch: &Path) -> (String, Vec<(String, Vec<u8>)>) {
    let base = format!("{}/library/jre:17", w.registry.host());
    std::fs::write(scratch.join("release"), "JAVA_VERSION=\"17\"\n").unwrap();
    run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["step", "assemble", "--base", "scratch", "--image", &base, "--env", "JAVA_HOME=/opt/java"])
        .arg("--add")
        .arg(format!("{}:/opt/java/release", scratch.join("release").display()))
        .arg("--result-file")
        .arg(scratch.join("result.json"))
        .env("KILN_INSECURE_REGISTRIES", w.registry.host()));

    let jar = scratch.join("app.jar");
    compile_jar(
        &scratch.join("app"),
        &[("dev/kiln/df/Main.java", "package dev.kiln.df;\npublic class Main { public static void main(String[] a) { System.out.println(\"hello from a Dockerfile image, sample=\" + System.getProperty(\"kiln.sample\")); } }\n")],
        Some("Main-Class: dev.kiln.df.Main\n"),
        None,
        &jar,
    );
    let mut files: Vec<(String, Vec<u8>)> = fixture_files("dockerfile-java").into_iter().map(|(p, c, _)| (p, c)).collect();
    files.push(("app.jar".into(), std::fs::read(&jar).unwrap()));
    (base, files)
}

#[tokio::test]
async fn a_dockerfile_image_gets_the_agent_and_keeps_its_own_java_tool_options() {
    let w = World::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let (base, files) = dockerfile_java_app(&w, scratch.path());
    let (sha, _repo) = w
        .app("dfjava", &files, json!({"settings": {"build_args": {"BASE": base}, "apm": {"agent": "tracer"}}}))
        .await;
    let (build, _) = w.finished(w.push("dfjava", &sha).await, BuildState::Succeeded).await;
    assert_eq!(build.kind.as_deref(), Some("dockerfile"));
    assert_eq!(build.apm_version.as_deref(), Some("2.0"), "no version: the last one configured");
    assert_eq!(build.jvm_options, None, "a Dockerfile app without settings.jvm gets no JVM options");

    let pulled = w.pull(build.image.as_deref().unwrap()).await;
    let options = image_env(&pulled.config, "JAVA_TOOL_OPTIONS").unwrap();
    assert_eq!(options, "-Dkiln.sample=kept -javaagent:/opt/apm/tracer.jar -Dapm.service.name=dfjava -Dapm.tenant=team");
    assert_eq!(pulled.config["config"]["Cmd"], json!(["java", "-jar", "/app/app.jar"]), "the start command stays");
    let root = unpack(&pulled);
    let out = start_like_a_container(&pulled, root.path());
    assert_eq!(out, format!("{MARKER} 2.0 service=dfjava\nhello from a Dockerfile image, sample=kept\n"));
}

#[tokio::test]
async fn a_missing_agent_source_or_a_non_java_image_fails_clearly_and_pushes_no_image() {
    let w = World::new().await;
    // Unknown agents are refused when the app is made.
    let mut spec = app_spec("x", &w.git.url("team/x"), "team/x", &format!("{}/team/x", w.registry.host()), SECRET);
    spec["settings"] = json!({"apm": {"agent": "tracer", "version": "9.9"}});
    let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps", Some(&w.token), Some(spec)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"tracer\" version \"9.9\" is not configured"), "{body}");

    // An agent whose source is gone.
    // (A Go app: the agent's source is read before anything is built or pushed.)
    let files: Vec<(String, Vec<u8>)> = fixture_files("go-hello").into_iter().map(|(p, c, _)| (p, c)).collect();
    let (sha, _repo) = w.app("ghostly", &files, json!({"settings": {"apm": {"agent": "ghost"}}})).await;
    let (build, _) = w.finished(w.push("ghostly", &sha).await, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains("APM agent ghost 1.0: source") && reason.contains("no-such-agent does not exist"), "{reason}");
    assert!(build.image.is_none());
    let steps = w.kiln.ctx.store.steps(build.id).await.unwrap();
    assert_eq!(steps.last().map(|s| (s.name.as_str(), s.state.as_str())), Some(("image", "Failed")));

    // A Go binary is no Java image: refused before the injected image is pushed.
    let files: Vec<(String, Vec<u8>)> = fixture_files("go-hello").into_iter().map(|(p, c, _)| (p, c)).collect();
    let (sha, _repo) = w.app("gopher", &files, json!({"settings": {"apm": {"agent": "tracer"}}})).await;
    let (build, _) = w.finished(w.push("gopher", &sha).await, BuildState::Failed).await;
    let reason = build.reason.clone().unwrap();
    assert!(reason.contains("does not look like a Java image") && reason.contains("nothing was pushed"), "{reason}");
    assert!(build.image.is_none() && build.apm_agent.is_none(), "{build:?}");
    let tag: ImageRef = format!("{}/team/gopher:{}", w.registry.host(), &sha[..12]).parse().unwrap();
    let e = registry_sync::pull_image(&tag, &w.opts()).await.unwrap_err();
    assert!(matches!(e, registry_sync::PullError::NotFound(_)), "the build's tag must not exist: {e}");
}
