//! Java sized to its container, end to end: real Maven and buildah builds through Kiln, the image
//! read back from a real registry, and the host's real `java` (OpenJDK 17) started with exactly
//! the image's `JAVA_TOOL_OPTIONS` plus `-XX:MaxRAM=256m`, which stands in for a 256 MiB container
//! limit (the JVM then takes 256 MiB as the machine's memory, as it takes a cgroup's limit).

use std::process::Command;

use axum::http::{Method, StatusCode};
use builder_api::store::BuildState;
use serde_json::{json, Value};

use crate::apm::{dockerfile_java_app, image_env, start_like_a_container, unpack, World, MARKER};
use crate::support::fixtures::{app_spec, fixture_files, push_busybox_base, push_java_base, push_java_base_with_options};

const DEFAULTS: &str = "-XX:MaxRAMPercentage=75.0 -XX:+ExitOnOutOfMemoryError";
const MIB: i64 = 1024 * 1024;
/// 75 % of 256 MiB.
const THREE_QUARTERS_OF_256_MIB: i64 = 201_326_592;
/// 50 % of 256 MiB.
const HALF_OF_256_MIB: i64 = 134_217_728;

/// `MaxHeapSize` of the host's JVM started with `java_tool_options` (none: the variable unset)
/// in a "container" of `max_ram` (`-XX:MaxRAM`), as `-XX:+PrintFlagsFinal` prints it.
fn max_heap_bytes(java_tool_options: Option<&str>, max_ram: &str) -> i64 {
    let mut cmd = Command::new("java");
    cmd.env_remove("JAVA_TOOL_OPTIONS").env_remove("JDK_JAVA_OPTIONS").env_remove("_JAVA_OPTIONS");
    if let Some(options) = java_tool_options {
        cmd.env("JAVA_TOOL_OPTIONS", options);
    }
    let out = cmd.arg(format!("-XX:MaxRAM={max_ram}")).args(["-XX:+PrintFlagsFinal", "-version"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "java failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // `   size_t MaxHeapSize                              = 201326592     {product} {ergonomic}`
    let line = stdout.lines().find(|l| l.split_whitespace().nth(1) == Some("MaxHeapSize")).expect("MaxHeapSize in -XX:+PrintFlagsFinal");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn assert_about(heap: i64, expected: i64, what: &str) {
    assert!((heap - expected).abs() <= 4 * MIB, "{what}: MaxHeapSize {heap} ({} MiB), expected about {} MiB", heap / MIB, expected / MIB);
}

fn maven_hello() -> Vec<(String, Vec<u8>)> {
    fixture_files("maven-hello").into_iter().map(|(p, c, _)| (p, c)).collect()
}

#[tokio::test]
async fn a_maven_image_gives_the_jvm_three_quarters_of_the_container_limit_not_a_quarter_of_the_machine() {
    let w = World::new().await;
    let base = push_java_base(&w.registry.host());
    let (sha, _repo) = w.app("sized", &maven_hello(), json!({"base_image": base})).await;
    let (build, log) = w.finished(w.push("sized", &sha).await, BuildState::Succeeded).await;
    assert!(log.contains(&format!("JVM options {DEFAULTS} go before the base image's own JAVA_TOOL_OPTIONS")), "{log}");

    // The build record, as the API answers it, says what went in.
    let (status, body) = w.kiln.request(Method::GET, &format!("/api/v1/builds/{}", build.id), Some(&w.token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["build"]["jvm_options"], json!(DEFAULTS), "{body}");

    // The pushed image's config, read from the registry (the base sets JAVA_HOME only).
    let pulled = w.pull(build.image.as_deref().unwrap()).await;
    let options = image_env(&pulled.config, "JAVA_TOOL_OPTIONS").expect("JAVA_TOOL_OPTIONS in the image");
    assert_eq!(options, DEFAULTS);

    // A 256 MiB container: the heap is 192 MiB with the image's options. Without them the same
    // JVM picks another size (its own defaults), and with no limit at all a quarter of the machine.
    let heap = max_heap_bytes(Some(&options), "256m");
    println!("MaxHeapSize with the image's JAVA_TOOL_OPTIONS ({options}) and -XX:MaxRAM=256m: {heap} bytes ({} MiB)", heap / MIB);
    assert_about(heap, THREE_QUARTERS_OF_256_MIB, "the image's options in 256 MiB");
    let unsized_heap = max_heap_bytes(None, "256m");
    assert!((unsized_heap - THREE_QUARTERS_OF_256_MIB).abs() > 32 * MIB, "without the options the heap would be {unsized_heap} too");

    // The app still starts with them, as a container runtime would start it.
    let out = start_like_a_container(&pulled, unpack(&pulled).path());
    assert_eq!(out, "hello from kiln maven sample\n");
}

#[tokio::test]
async fn a_base_images_own_java_tool_options_come_after_kilns_and_win_and_an_agent_still_loads() {
    let w = World::new().await;
    let base = push_java_base_with_options(&w.registry.host(), "-XX:MaxRAMPercentage=50.0");
    let (sha, _repo) = w.app("tuned", &maven_hello(), json!({"base_image": base, "settings": {"apm": {"agent": "tracer", "version": "1.0"}}})).await;
    let (build, _) = w.finished(w.push("tuned", &sha).await, BuildState::Succeeded).await;
    assert_eq!((build.jvm_options.as_deref(), build.apm_agent.as_deref()), (Some(DEFAULTS), Some("tracer")));

    let pulled = w.pull(build.image.as_deref().unwrap()).await;
    let options = image_env(&pulled.config, "JAVA_TOOL_OPTIONS").unwrap();
    assert_eq!(
        options,
        format!("{DEFAULTS} -XX:MaxRAMPercentage=50.0 -javaagent:/opt/apm/tracer.jar -Dapm.service.name=tuned -Dapm.tenant=team"),
        "Kiln's options first, the base's after them, the agent last"
    );
    // The image before the agent (what a re-injection starts from) has the options already.
    let original = w.pull(build.original_image.as_deref().unwrap()).await;
    assert_eq!(image_env(&original.config, "JAVA_TOOL_OPTIONS").unwrap(), format!("{DEFAULTS} -XX:MaxRAMPercentage=50.0"));

    // The JVM takes the last MaxRAMPercentage: the base's 50, not Kiln's 75 — with the agent
    // loaded from the unpacked image.
    let root = unpack(&pulled);
    let inside = options.replace("/opt/apm/", &format!("{}/opt/apm/", root.path().display()));
    let heap = max_heap_bytes(Some(&inside), "256m");
    assert_about(heap, HALF_OF_256_MIB, "the base's 50 % in 256 MiB");
    let out = start_like_a_container(&pulled, root.path());
    assert_eq!(out, format!("{MARKER} 1.0 service=tuned\nhello from kiln maven sample\n"));
}

#[tokio::test]
async fn a_changed_or_disabled_jvm_setting_takes_effect_on_the_next_build_and_nonsense_is_refused() {
    let w = World::new().await;
    let base = push_java_base(&w.registry.host());
    let (sha, _repo) = w.app("tunable", &maven_hello(), json!({"base_image": base})).await;
    let patch = |settings: Value| {
        let w = &w;
        async move { w.kiln.request(Method::PATCH, "/api/v1/apps/tunable", Some(&w.token), Some(json!({"settings": settings}))).await }
    };

    // Nonsense is a 422 that says why, and changes nothing.
    for bad in [0, 120] {
        let (status, body) = patch(json!({"jvm": {"max_ram_percentage": bad}})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("settings.jvm.max_ram_percentage must be from 1 to 100") && error.contains(&format!("not {bad}")), "{error}");
    }
    let (_, app) = w.kiln.request(Method::GET, "/api/v1/apps/tunable", Some(&w.token), None).await;
    assert_eq!(app["app"]["settings"].get("jvm"), None, "{app}");
    // On create too; and a Go app has no JVM to size.
    let mut spec = app_spec("other", &w.git.url("team/other"), "team/other", &format!("{}/team/other", w.registry.host()), "hook-secret-jvm");
    spec["settings"] = json!({"jvm": {"max_ram_percentage": 0}});
    let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps", Some(&w.token), Some(spec.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    spec["settings"] = json!({"jvm": {}});
    spec["kind"] = json!("go");
    let (status, body) = w.kiln.request(Method::POST, "/api/v1/apps", Some(&w.token), Some(spec)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("a go app's image has no JVM"), "{body}");

    // 50 % without exiting on OOM: shown on GET, and the next build has it.
    let (status, body) = patch(json!({"jvm": {"max_ram_percentage": 50, "exit_on_oom": false}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["app"]["settings"]["jvm"], json!({"enabled": true, "max_ram_percentage": 50.0, "exit_on_oom": false}));
    let (_, app) = w.kiln.request(Method::GET, "/api/v1/apps/tunable", Some(&w.token), None).await;
    assert_eq!(app["app"]["settings"]["jvm"]["max_ram_percentage"], json!(50.0), "{app}");
    let rebuild = || w.kiln.trigger(&w.token, "tunable", json!({"commit": sha, "ref": "main"}));
    let (half, _) = w.finished(rebuild().await, BuildState::Succeeded).await;
    assert_eq!(half.jvm_options.as_deref(), Some("-XX:MaxRAMPercentage=50.0"));
    let pulled = w.pull(half.image.as_deref().unwrap()).await;
    let options = image_env(&pulled.config, "JAVA_TOOL_OPTIONS").unwrap();
    assert_eq!(options, "-XX:MaxRAMPercentage=50.0");
    assert_about(max_heap_bytes(Some(&options), "256m"), HALF_OF_256_MIB, "the app's 50 % in 256 MiB");

    // Off: the next build's image has no options of Kiln's, and its record none.
    let (status, body) = patch(json!({"jvm": {"enabled": false}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (off, log) = w.finished(rebuild().await, BuildState::Succeeded).await;
    assert_eq!(off.jvm_options, None);
    assert!(!log.contains("JVM options"), "{log}");
    let pulled = w.pull(off.image.as_deref().unwrap()).await;
    assert_eq!(image_env(&pulled.config, "JAVA_TOOL_OPTIONS"), None, "{}", pulled.config);
    assert_ne!(off.image_digest, half.image_digest);
}

#[tokio::test]
async fn a_dockerfile_java_image_that_opts_in_gets_the_options_by_mutation_and_a_non_java_one_is_refused() {
    let w = World::new().await;
    let scratch = tempfile::tempdir().unwrap();
    let (base, files) = dockerfile_java_app(&w, scratch.path());
    let settings = json!({"build_args": {"BASE": base}, "jvm": {}, "apm": {"agent": "tracer", "version": "1.0"}});
    let (sha, _repo) = w.app("dfsized", &files, json!({"settings": settings})).await;
    let (build, log) = w.finished(w.push("dfsized", &sha).await, BuildState::Succeeded).await;
    assert_eq!(build.kind.as_deref(), Some("dockerfile"));
    assert_eq!(build.jvm_options.as_deref(), Some(DEFAULTS));
    assert!(log.contains(&format!("adding JVM options {DEFAULTS}")), "{log}");

    // The image as built, under <tag>-nojvm, keeps the Dockerfile's own options only.
    let tag = &sha[..12];
    let built = w.pull(&format!("{}/team/dfsized:{tag}-nojvm", w.registry.host())).await;
    assert_eq!(image_env(&built.config, "JAVA_TOOL_OPTIONS").unwrap(), "-Dkiln.sample=kept");
    // Then Kiln's options before them, then the agent: every layer is the built image's plus the agent's.
    let pulled = w.pull(build.image.as_deref().unwrap()).await;
    let options = image_env(&pulled.config, "JAVA_TOOL_OPTIONS").unwrap();
    assert_eq!(options, format!("{DEFAULTS} -Dkiln.sample=kept -javaagent:/opt/apm/tracer.jar -Dapm.service.name=dfsized -Dapm.tenant=team"));
    let digests = |p: &registry_sync::PulledImage| p.manifest.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>();
    assert_eq!(digests(&pulled)[..digests(&built).len()], digests(&built)[..], "no layer of the built image changed");
    let original = w.pull(build.original_image.as_deref().unwrap()).await;
    assert_eq!(image_env(&original.config, "JAVA_TOOL_OPTIONS").unwrap(), format!("{DEFAULTS} -Dkiln.sample=kept"));
    let out = start_like_a_container(&pulled, unpack(&pulled).path());
    assert_eq!(out, format!("{MARKER} 1.0 service=dfsized\nhello from a Dockerfile image, sample=kept\n"));
    let heap = max_heap_bytes(Some(&format!("{DEFAULTS} -Dkiln.sample=kept")), "256m");
    assert_about(heap, THREE_QUARTERS_OF_256_MIB, "the Dockerfile image's options in 256 MiB");

    // A Dockerfile image without Java that asks for the options: the build fails saying why,
    // and the build's tag is not pushed.
    let busybox = push_busybox_base(&w.registry.host());
    let files: Vec<(String, Vec<u8>)> = fixture_files("dockerfile-hello").into_iter().map(|(p, c, _)| (p, c)).collect();
    let (sha, _repo) = w.app("notjava", &files, json!({"settings": {"build_args": {"BASE": busybox}, "jvm": {}}})).await;
    let (build, _) = w.finished(w.push("notjava", &sha).await, BuildState::Failed).await;
    let reason = build.reason.unwrap();
    assert!(reason.contains("settings.jvm") && reason.contains("does not look like a Java image") && reason.contains("remove settings.jvm"), "{reason}");
    assert!(build.image.is_none() && build.jvm_options.is_none());
    let tag: registry_sync::ImageRef = format!("{}/team/notjava:{}", w.registry.host(), &sha[..12]).parse().unwrap();
    let e = registry_sync::pull_image(&tag, &w.opts()).await.unwrap_err();
    assert!(matches!(e, registry_sync::PullError::NotFound(_)), "the build's tag must not exist: {e}");
}

