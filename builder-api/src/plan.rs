//! The build plan: the steps of one build as data — argv and env, never text templated from user
//! strings. The local executor runs the steps as host processes; the kube executor renders the same
//! steps into the containers of one Job. `$(VAR)` in argv expands from the step's env, exactly as
//! Kubernetes expands container args; a workdir may use `$(WORKSPACE)` only (the renderer writes
//! the mount path, since Kubernetes does not expand workingDir).

use std::path::Path;

use crate::config::{ApmAgent, RegistryConfig, ToolchainConfig};
use crate::store::{App, Build, BuildKind, JvmSetting, KindSettings};

/// One step: a process with its argv and env.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub name: String,
    /// argv[0] `kiln` means the Kiln tools binary.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Env values that are secrets: masked in the log, mounted from a Secret in a cluster.
    pub secret_env: Vec<(String, String)>,
    pub workdir: Option<String>,
}

impl StepSpec {
    fn new(name: &str, argv: impl IntoIterator<Item = impl Into<String>>) -> StepSpec {
        StepSpec {
            name: name.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: vec![],
            secret_env: vec![],
            workdir: None,
        }
    }
    fn env(mut self, k: &str, v: impl Into<String>) -> StepSpec {
        self.env.push((k.into(), v.into()));
        self
    }
    fn secret(mut self, k: &str, v: Option<&str>) -> StepSpec {
        if let Some(v) = v {
            self.secret_env.push((k.into(), v.into()));
        }
        self
    }
}

/// Where the image step writes `{"image": …, "digest": …}` (a pod's termination message).
pub const RESULT_FILE: &str = "$(WORKSPACE)/.kiln/result.json";
/// Where the clone step writes what it checked out (`{"commit": …, "commit_time": …}`),
/// relative to the workspace.
pub const CLONE_INFO_FILE: &str = ".kiln/clone.json";
/// The same, as steps see it. Steps that need the commit time read it from here at run time, so
/// the whole plan is known before the commit is fetched (a Job is created in one write).
const CLONE_INFO: &str = "$(WORKSPACE)/.kiln/clone.json";
/// Where a Dockerfile build's compile step leaves the image (an OCI image layout) for the image
/// step to push.
const IMAGE_LAYOUT: &str = "$(WORKSPACE)/out/image";
/// The per-tenant cache (Go module and build cache, `~/.m2`): a host directory under the local
/// executor, a PVC or emptyDir mounted in a Job. Every executor sets `CACHE` in each step's env.
const CACHE: &str = "$(CACHE)";

/// Which tool builds a Dockerfile in the image step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerfileBuilder {
    /// buildah on the host (vfs storage, chroot isolation).
    Buildah,
    /// BuildKit rootless, daemonless, in the Job's image container.
    Buildkit,
}

/// What a build resolves to once its source is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedKind {
    Go,
    Maven,
    Dockerfile,
}

impl ResolvedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedKind::Go => "go",
            ResolvedKind::Maven => "maven",
            ResolvedKind::Dockerfile => "dockerfile",
        }
    }
}

/// The first step of every build.
pub fn clone_step(app: &App, build: &Build) -> StepSpec {
    StepSpec::new("clone", ["kiln", "step", "clone"])
        .env("KILN_GIT_URL", literal(&app.git_url))
        .env("KILN_GIT_COMMIT", literal(&build.commit))
        .env("KILN_GIT_REF", literal(build.git_ref.as_deref().unwrap_or_default()))
        .env("KILN_SOURCE_DIR", "$(WORKSPACE)/src")
        .secret("KILN_GIT_TOKEN", app.git_token.as_deref())
}

/// Why a commit cannot be built as the app says (the build's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// `auto`, and the commit has none of the files that say how to build it.
    #[error("cannot tell how to build this commit: no {dockerfile}, go.mod or pom.xml at the repository root")]
    Undetectable { dockerfile: String },
    /// The app builds from a Dockerfile that the commit does not have.
    #[error("the app builds from {dockerfile}, but the commit has no such file")]
    NoDockerfile { dockerfile: String },
    /// A Maven project (an `auto` app found `pom.xml`) without a `base_image`: its image would
    /// start `java` on `scratch`, which has none, so the build stops before compiling.
    #[error(
        "the commit is a Maven project (pom.xml), and a Maven image starts `java`, which the app's base image {base} does not have: \
         set the app's base_image to an image with a Java runtime (e.g. registry.example.com/library/eclipse-temurin:21-jre), \
         or add a Dockerfile"
    )]
    NoJavaBase { base: String },
    /// `settings.jvm` asks for JVM options, and the commit builds as Go: there is no JVM to take them.
    #[error(
        "the app's settings.jvm asks for JVM options, but the commit builds as go, whose image has no JVM: \
         remove settings.jvm, or set it to {{\"enabled\": false}}"
    )]
    JvmWithoutJava,
}

/// Refuses what would build an image that cannot start: a Maven image on `scratch` (an `auto`
/// app; an app of kind `maven` without a base is refused when it is created or changed) — and JVM
/// options asked for a Go image (an `auto` app; kind `go` is refused when the app is saved),
/// rather than leaving them out without a word.
pub fn check_runnable(kind: ResolvedKind, app: &App) -> Result<(), KindError> {
    match (kind, app.base_image.as_deref()) {
        (ResolvedKind::Maven, None | Some("scratch")) => Err(KindError::NoJavaBase { base: app.base_image.clone().unwrap_or_else(|| "scratch".into()) }),
        (ResolvedKind::Go, _) if app.settings.jvm.as_ref().is_some_and(|j| j.enabled) => Err(KindError::JvmWithoutJava),
        _ => Ok(()),
    }
}

/// The options a build of `kind` puts at the front of its image's `JAVA_TOOL_OPTIONS` (JVM
/// sizing): a Maven image gets the defaults unless `settings.jvm` says otherwise; a Dockerfile
/// image only when the app opts in with `settings.jvm` (Kiln cannot tell beforehand that it is a
/// Java image; the mutation refuses one that is not); a Go image never.
pub fn jvm_options(kind: ResolvedKind, settings: &KindSettings) -> Option<String> {
    match (kind, &settings.jvm) {
        (ResolvedKind::Maven, None) => JvmSetting::default().java_tool_options(),
        (ResolvedKind::Maven | ResolvedKind::Dockerfile, Some(jvm)) => jvm.java_tool_options(),
        (ResolvedKind::Dockerfile, None) | (ResolvedKind::Go, _) => None,
    }
}

/// Decides what to build from the checked-out source: a Dockerfile wins (a Go or Maven app that
/// ships one is built from it), then `go.mod`, then `pom.xml`.
pub fn resolve_kind(kind: BuildKind, dockerfile: &str, src: &Path) -> Result<ResolvedKind, KindError> {
    let has = |f: &str| src.join(f).is_file();
    let resolved = match kind {
        _ if kind != BuildKind::Auto && has(dockerfile) => ResolvedKind::Dockerfile,
        BuildKind::Go => ResolvedKind::Go,
        BuildKind::Maven => ResolvedKind::Maven,
        BuildKind::Dockerfile => ResolvedKind::Dockerfile,
        BuildKind::Auto if has(dockerfile) => ResolvedKind::Dockerfile,
        BuildKind::Auto if has("go.mod") => ResolvedKind::Go,
        BuildKind::Auto if has("pom.xml") => ResolvedKind::Maven,
        BuildKind::Auto => return Err(KindError::Undetectable { dockerfile: dockerfile.to_string() }),
    };
    if resolved == ResolvedKind::Dockerfile && !has(dockerfile) {
        return Err(KindError::NoDockerfile { dockerfile: dockerfile.to_string() });
    }
    Ok(resolved)
}

/// Everything the steps after the clone need.
pub struct PlanInput<'a> {
    pub app: &'a App,
    pub build: &'a Build,
    pub kind: ResolvedKind,
    pub toolchains: &'a ToolchainConfig,
    pub registry: &'a RegistryConfig,
    pub dockerfile_builder: DockerfileBuilder,
    /// The APM agent the app asked for, resolved from the config by the executor (which fails
    /// the build clearly when it is not configured).
    pub apm: Option<&'a ApmAgent>,
}

impl PlanInput<'_> {
    /// `repository:<first 12 of the commit>`; the build record pins the digest.
    pub fn target_image(&self) -> String {
        format!("{}:{}", self.app.image_repository, &self.build.commit[..12.min(self.build.commit.len())])
    }
}

/// The whole plan: clone, then compile and image. The commit time (image `created`, Maven's
/// `project.build.outputTimestamp`, so the same commit gives the same digest) is read by the
/// steps from the clone's result, so nothing here waits for the commit.
pub fn steps(p: &PlanInput) -> Vec<StepSpec> {
    let mut all = vec![clone_step(p.app, p.build)];
    all.extend(steps_after_clone(p));
    all
}

/// The compile and image steps for a resolved kind.
pub fn steps_after_clone(p: &PlanInput) -> Vec<StepSpec> {
    let s = &p.app.settings;
    let mut steps = Vec::new();
    // What the assemble step puts into the image: its own flags per kind.
    let content: Vec<String>;
    match p.kind {
        ResolvedKind::Go => {
            let ldflags = literal(s.go_ldflags.as_deref().unwrap_or("-s -w"));
            let package = literal(s.go_package.as_deref().unwrap_or("."));
            let mut compile = StepSpec::new(
                "compile",
                [&p.toolchains.go, "build", "-trimpath", "-buildvcs=false", "-ldflags", &ldflags, "-o"],
            );
            compile.argv.push("$(WORKSPACE)/out/app".into());
            // `--` keeps a package setting that starts with `-` from being read as a flag.
            compile.argv.push("--".into());
            compile.argv.push(package);
            compile.workdir = Some("$(WORKSPACE)/src".into());
            steps.push(
                compile
                    .env("CGO_ENABLED", "0")
                    .env("GOPROXY", &p.toolchains.goproxy)
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOCACHE", format!("{CACHE}/go-build"))
                    .env("GOMODCACHE", format!("{CACHE}/go-mod"))
                    .env("GOPATH", format!("{CACHE}/go")),
            );
            content = vec![
                "--add".into(),
                format!("$(WORKSPACE)/out/app:/app/{}", p.app.name),
                "--entrypoint".into(),
                format!("[\"/app/{}\"]", p.app.name),
            ];
        }
        ResolvedKind::Maven => {
            // `kiln step exec` appends -Dproject.build.outputTimestamp=<commit time>.
            let mut compile = StepSpec::new(
                "compile",
                ["kiln", "step", "exec", "--clone-info", CLONE_INFO, "--commit-time-arg", "-Dproject.build.outputTimestamp=", "--"],
            );
            compile.argv.extend([p.toolchains.mvn.clone(), "-B".into()]);
            compile.argv.extend(p.toolchains.maven_args.iter().cloned());
            let goals = s.maven_goals.clone().unwrap_or_else(|| vec!["package".into(), "-DskipTests".into()]);
            compile.argv.extend(goals.iter().map(|g| literal(g)));
            compile.workdir = Some("$(WORKSPACE)/src".into());
            steps.push(compile.env("MAVEN_OPTS", "-Xmx512m").env("HOME", format!("{CACHE}/home")));
            // Jib-style: dependencies, resources and classes as separate layers, the entrypoint
            // from the jar's Main-Class (steps/java_layers.rs).
            content = vec!["--maven-target".into(), "$(WORKSPACE)/src/target".into()];
        }
        ResolvedKind::Dockerfile => {
            // The Dockerfile's RUN steps are the user's code: the step that runs them (compile)
            // gets no credential and writes the image as an OCI layout to the workspace; the
            // image step, which runs no user code, pushes it with the registry password.
            let tool = match p.dockerfile_builder {
                DockerfileBuilder::Buildah => "buildah",
                DockerfileBuilder::Buildkit => "buildkit",
            };
            let mut compile = StepSpec::new("compile", ["kiln", "step", tool, "--context", "$(WORKSPACE)/src", "--file"]);
            compile.argv.push(literal(s.dockerfile.as_deref().unwrap_or("Dockerfile")));
            if let Some(target) = &s.dockerfile_target {
                compile.argv.extend(["--target".into(), literal(target)]);
            }
            for (k, v) in &s.build_args {
                compile.argv.extend(["--build-arg".into(), literal(&format!("{k}={v}"))]);
            }
            compile.argv.extend(["--layout".into(), IMAGE_LAYOUT.into()]);
            compile.argv.extend(["--created-from".into(), CLONE_INFO.into()]);
            compile.argv.extend(["--label".into(), literal(&format!("org.opencontainers.image.source={}", p.app.git_url))]);
            compile.argv.extend(["--label".into(), format!("org.opencontainers.image.revision={}", literal(&p.build.commit))]);
            if p.dockerfile_builder == DockerfileBuilder::Buildah {
                compile = compile
                    .env("KILN_BUILDAH", &p.toolchains.buildah)
                    .env("KILN_BUILDAH_ARGS", p.toolchains.buildah_args.join(" "))
                    .env("KILN_BUILDAH_ISOLATION", &p.toolchains.buildah_isolation);
            }
            // The registry a pull credential is for (the tenant's own; `kiln step buildah` and
            // `buildkit` offer it nowhere else).
            let registry = registry_sync::ImageRef::parse(&p.target_image()).map(|r| r.registry().to_string()).unwrap_or_default();
            steps.push(compile.env("KILN_INSECURE_REGISTRIES", p.registry.insecure.join(",")).env("KILN_PULL_REGISTRY", registry));
            let mut image = StepSpec::new("image", ["kiln", "step", "push", "--layout", IMAGE_LAYOUT, "--image"]);
            image.argv.extend([literal(&p.target_image()), "--result-file".into(), RESULT_FILE.into()]);
            // Added by mutating the pushed image, which must then be a Java image.
            if let Some(options) = jvm_options(p.kind, s) {
                image.argv.extend(["--jvm-options".into(), literal(&options)]);
            }
            steps.push(with_apm(with_registry(image, p), p));
            return steps;
        }
    }
    let mut image = StepSpec::new("image", ["kiln", "step", "assemble", "--base"]);
    image.argv.push(literal(p.app.base_image.as_deref().unwrap_or("scratch")));
    image.argv.extend(["--image".into(), literal(&p.target_image())]);
    image.argv.extend(content);
    if let Some(options) = jvm_options(p.kind, s) {
        image.argv.extend(["--jvm-options".into(), literal(&options)]);
    }
    image.argv.extend(["--created-from".into(), CLONE_INFO.into()]);
    image.argv.extend(["--label".into(), literal(&format!("org.opencontainers.image.source={}", p.app.git_url))]);
    image.argv.extend(["--label".into(), format!("org.opencontainers.image.revision={}", literal(&p.build.commit))]);
    image.argv.extend(["--result-file".into(), RESULT_FILE.into()]);
    steps.push(with_apm(with_registry(image, p), p));
    steps
}

/// The agent for the image step (`steps/apm.rs`), as env values: the source as JSON, the JVM
/// options already filled in with the app and tenant names.
fn with_apm(step: StepSpec, p: &PlanInput) -> StepSpec {
    let Some(agent) = p.apm else { return step };
    let source = serde_json::to_string(&agent.source).expect("a source serialises");
    step.env("KILN_APM_AGENT", literal(&agent.name))
        .env("KILN_APM_VERSION", literal(&agent.version))
        .env("KILN_APM_SOURCE", literal(&source))
        .env("KILN_APM_JAVA_OPTIONS", literal(&agent.java_options_for(&p.app.name, &p.app.tenant)))
}

/// A user's string placed into argv: `$` doubled so `$(VAR)` expansion leaves it as written
/// (a build arg of `$(KILN_REGISTRY_PASSWORD)` must not read the secret).
pub fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

fn with_registry(step: StepSpec, p: &PlanInput) -> StepSpec {
    step.env("KILN_INSECURE_REGISTRIES", p.registry.insecure.join(","))
        .env("KILN_REGISTRY_USERNAME", p.registry.username.clone().unwrap_or_default())
        .secret("KILN_REGISTRY_PASSWORD", p.registry.password.as_deref())
}

/// Kubernetes-style `$(VAR)` expansion from the step's own env; `$$(VAR)` stays literal
/// `$(VAR)`, unknown variables stay as written. Values never pass through a shell.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
            continue;
        }
        if let Some(inner) = tail.strip_prefix("$(") {
            if let Some(end) = inner.find(')') {
                let name = &inner[..end];
                if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                    out.push_str(v);
                    rest = &inner[end + 1..];
                    continue;
                }
            }
        }
        out.push('$');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_kubernetes() {
        let env = vec![("WORKSPACE".to_string(), "/w".to_string())];
        assert_eq!(expand("$(WORKSPACE)/src", &env), "/w/src");
        assert_eq!(expand("$$(WORKSPACE)", &env), "$(WORKSPACE)");
        assert_eq!(expand("$(NOPE)/x $ y", &env), "$(NOPE)/x $ y");
        // A value that itself looks like a variable is not expanded again.
        let env = vec![("A".to_string(), "$(B)".to_string()), ("B".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)", &env), "$(B)");
        assert_eq!(expand(&literal("X=$(A) $$"), &env), "X=$(A) $$");
    }

    #[test]
    fn maven_images_are_sized_by_default_and_dockerfile_images_only_when_asked() {
        let none = KindSettings::default();
        let defaults = Some("-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError".to_string());
        assert_eq!(jvm_options(ResolvedKind::Maven, &none), defaults);
        assert_eq!(jvm_options(ResolvedKind::Dockerfile, &none), None);
        assert_eq!(jvm_options(ResolvedKind::Go, &none), None);
        let opted_in = KindSettings { jvm: Some(JvmSetting::default()), ..Default::default() };
        assert_eq!(jvm_options(ResolvedKind::Dockerfile, &opted_in), defaults);
        let off = KindSettings { jvm: Some(JvmSetting { enabled: false, ..Default::default() }), ..Default::default() };
        assert_eq!(jvm_options(ResolvedKind::Maven, &off), None);
        assert_eq!(jvm_options(ResolvedKind::Dockerfile, &off), None);
        let sixty = KindSettings { jvm: Some(JvmSetting { max_ram_percentage: 60.0, ..Default::default() }), ..Default::default() };
        assert_eq!(jvm_options(ResolvedKind::Maven, &sixty).as_deref(), Some("-XX:MaxRAMPercentage=60.0 -XX:+ExitOnOutOfMemoryError"));
    }
}
