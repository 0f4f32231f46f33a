//! `registry-sync` image assembly against real `docker-registry` instances.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use registry_sync::{
    assemble_and_push, pull_image, unpack_layers, AssembleError, AssembleSpec, ImageRef,
    LayerEntry, LayerSpec, PushedImage, RegistryAuth, RegistryError, RegistryOptions,
};

use crate::support::registry::{free_port, TestRegistry};

fn init_tls() {
    // Idempotent: another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn opts_for(registries: &[&TestRegistry]) -> RegistryOptions {
    RegistryOptions {
        insecure_registries: registries.iter().map(|r| r.host()).collect(),
        ..Default::default()
    }
}

fn image(host: &str, rest: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/{rest}")).unwrap()
}

fn write(path: &Path, content: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Two layers: a directory with an executable and a library, and a config file plus a symlink.
fn app_inputs(dir: &Path) -> Vec<LayerSpec> {
    write(
        &dir.join("build/bin/server"),
        "#!/bin/sh\necho serving\n",
        0o775,
    );
    write(&dir.join("build/lib/data.txt"), "some data\n", 0o600);
    write(&dir.join("conf/app.toml"), "port = 8080\n", 0o664);
    let _ = fs::remove_file(dir.join("conf/current"));
    std::os::unix::fs::symlink("app.toml", dir.join("conf/current")).unwrap();
    vec![
        LayerSpec::new(vec![LayerEntry::new(dir.join("build"), "/app")]),
        LayerSpec::new(vec![
            LayerEntry::new(dir.join("conf/app.toml"), "/etc/app/app.toml"),
            LayerEntry::new(dir.join("conf/current"), "/etc/app/current.toml"),
        ]),
    ]
}

fn app_spec(target: ImageRef, layers: Vec<LayerSpec>) -> AssembleSpec {
    let mut spec = AssembleSpec::new(target);
    spec.layers = layers;
    spec.entrypoint = Some(vec!["/app/bin/server".into()]);
    spec.cmd = Some(vec!["--port".into(), "8080".into()]);
    spec.env = vec![("APP_ENV".into(), "test".into())];
    spec.labels = BTreeMap::from([(
        "org.opencontainers.image.source".into(),
        "https://git.example/app".into(),
    )]);
    spec.workdir = Some("/app".into());
    spec.created = 1_700_000_000;
    spec
}

async fn push(spec: &AssembleSpec, opts: &RegistryOptions) -> (PushedImage, Vec<String>) {
    let mut lines = Vec::new();
    let pushed = assemble_and_push(spec, opts, &mut |l| lines.push(l))
        .await
        .unwrap_or_else(|e| panic!("assemble {}: {e}", spec.target));
    (pushed, lines)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn scratch_image_with_two_layers_round_trips() {
    init_tls();
    let registry = TestRegistry::start().await;
    let opts = opts_for(&[&registry]);
    let work = tempfile::tempdir().unwrap();
    let spec = app_spec(
        image(&registry.host(), "team/app:v1"),
        app_inputs(work.path()),
    );

    let (pushed, lines) = push(&spec, &opts).await;
    eprintln!("{}", lines.join("\n"));
    assert_eq!(pushed.layers_pushed, 2, "{pushed:?}");
    assert_eq!(pushed.layers_skipped, 0);
    assert!(pushed.bytes_pushed > 0);
    assert!(pushed.digest.starts_with("sha256:") && pushed.digest.len() == 71);
    assert_eq!(
        pushed.reference.to_string(),
        format!("{}/team/app@{}", registry.host(), pushed.digest)
    );
    assert!(
        lines.iter().any(|l| l.starts_with("pushing layer sha256:")
            && (l.ends_with(" B)") || l.ends_with("iB)"))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("pushed manifest {}", pushed.digest))),
        "{lines:?}"
    );

    // Pull by tag and by digest: same manifest.
    let by_tag = pull_image(&spec.target, &opts).await.unwrap();
    assert_eq!(by_tag.manifest_digest, pushed.digest);
    let pulled = pull_image(&pushed.reference, &opts).await.unwrap();
    assert_eq!(pulled.manifest_digest, pushed.digest);
    assert_eq!(
        pulled.manifest.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(
        pulled.manifest.config.media_type,
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(pulled.layers.len(), 2);

    let c = &pulled.config;
    assert_eq!(c["os"], "linux");
    assert_eq!(c["architecture"], "amd64");
    assert_eq!(c["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        c["config"]["Entrypoint"],
        serde_json::json!(["/app/bin/server"])
    );
    assert_eq!(c["config"]["Cmd"], serde_json::json!(["--port", "8080"]));
    assert_eq!(c["config"]["Env"], serde_json::json!(["APP_ENV=test"]));
    assert_eq!(c["config"]["WorkingDir"], "/app");
    assert_eq!(
        c["config"]["Labels"]["org.opencontainers.image.source"],
        "https://git.example/app"
    );
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(c["history"].as_array().unwrap().len(), 2);

    let root = work.path().join("rootfs");
    unpack_layers(&pulled, &root).unwrap();
    assert_eq!(
        fs::read_to_string(root.join("app/bin/server")).unwrap(),
        "#!/bin/sh\necho serving\n"
    );
    assert_eq!(mode(&root.join("app/bin/server")), 0o755);
    assert_eq!(
        fs::read_to_string(root.join("app/lib/data.txt")).unwrap(),
        "some data\n"
    );
    assert_eq!(mode(&root.join("app/lib/data.txt")), 0o644);
    assert_eq!(
        fs::read_to_string(root.join("etc/app/app.toml")).unwrap(),
        "port = 8080\n"
    );
    assert_eq!(
        fs::read_link(root.join("etc/app/current.toml")).unwrap(),
        Path::new("app.toml")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/app/current.toml")).unwrap(),
        "port = 8080\n"
    );
}

#[tokio::test]
async fn same_inputs_give_the_same_digest() {
    init_tls();
    let registry = TestRegistry::start().await;
    let opts = opts_for(&[&registry]);
    let work = tempfile::tempdir().unwrap();
    let layers = app_inputs(work.path());
    let (first, _) = push(
        &app_spec(image(&registry.host(), "team/app:a"), layers.clone()),
        &opts,
    )
    .await;

    // Touch every input: mtimes must not matter.
    for f in ["build/bin/server", "build/lib/data.txt", "conf/app.toml"] {
        let file = fs::File::options()
            .write(true)
            .open(work.path().join(f))
            .unwrap();
        file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
    }
    let (second, lines) = push(
        &app_spec(image(&registry.host(), "team/app:b"), layers.clone()),
        &opts,
    )
    .await;
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.layers_pushed, 0, "{second:?}");
    assert_eq!(second.layers_skipped, 2);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("already present"))
            .count(),
        2,
        "{lines:?}"
    );

    // Another repository (blobs not linked there yet) still gives the same manifest digest.
    let (third, _) = push(
        &app_spec(image(&registry.host(), "other/app:c"), layers.clone()),
        &opts,
    )
    .await;
    assert_eq!(third.digest, first.digest);
    assert_eq!(third.layers_pushed, 2);

    // A different `created` is a different image.
    let mut spec = app_spec(image(&registry.host(), "team/app:d"), layers);
    spec.created += 1;
    let (fourth, _) = push(&spec, &opts).await;
    assert_ne!(fourth.digest, first.digest);
}

/// Pushes a small "OS" base image: two layers, PATH, a Cmd.
async fn push_base(
    registry: &TestRegistry,
    opts: &RegistryOptions,
    dir: &Path,
    name: &str,
) -> PushedImage {
    write(&dir.join("base/bin/sh"), "#!fake shell\n", 0o755);
    write(&dir.join("base/etc/os-release"), "ID=kiln-test\n", 0o644);
    write(
        &dir.join("base2/usr/share/doc/README"),
        "base docs\n",
        0o644,
    );
    let mut spec = AssembleSpec::new(image(&registry.host(), name));
    spec.layers = vec![
        LayerSpec::new(vec![LayerEntry::new(dir.join("base"), "/")]),
        LayerSpec::new(vec![LayerEntry::new(dir.join("base2"), "/")]),
    ];
    spec.env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    spec.cmd = Some(vec!["/bin/sh".into()]);
    spec.labels = BTreeMap::from([("base".into(), "yes".into())]);
    push(&spec, opts).await.0
}

#[tokio::test]
async fn image_on_a_base_reuses_base_layers() {
    init_tls();
    let registry = TestRegistry::start().await;
    let opts = opts_for(&[&registry]);
    let work = tempfile::tempdir().unwrap();
    let base = push_base(&registry, &opts, work.path(), "library/base:1").await;

    write(&work.path().join("app/server"), "app binary\n", 0o755);
    let mut spec = AssembleSpec::new(image(&registry.host(), "team/svc:1"));
    spec.base = Some(image(&registry.host(), "library/base:1"));
    spec.layers = vec![LayerSpec::new(vec![LayerEntry::new(
        work.path().join("app/server"),
        "/app/server",
    )])];
    spec.env = vec![("PATH".into(), "/app:/usr/bin:/bin".into())];
    spec.entrypoint = Some(vec!["/app/server".into()]);
    spec.created = 1_700_000_000;

    // Same registry, other repository: base layers are mounted, not uploaded.
    let (pushed, lines) = push(&spec, &opts).await;
    assert_eq!(pushed.layers_pushed, 1, "{pushed:?} {lines:?}");
    assert_eq!(pushed.layers_skipped, 2);
    assert_eq!(pushed.layers_mounted, 2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("mounted from library/base")),
        "{lines:?}"
    );

    let pulled = pull_image(&pushed.reference, &opts).await.unwrap();
    assert_eq!(pulled.layers.len(), 3);
    let c = &pulled.config;
    assert_eq!(
        c["config"]["Env"],
        serde_json::json!(["PATH=/app:/usr/bin:/bin", "LANG=C.UTF-8"])
    );
    assert_eq!(
        c["config"]["Entrypoint"],
        serde_json::json!(["/app/server"])
    );
    assert!(
        c["config"].get("Cmd").is_none(),
        "entrypoint without cmd clears the base Cmd"
    );
    assert_eq!(c["config"]["Labels"]["base"], "yes");
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    assert_eq!(c["history"].as_array().unwrap().len(), 3);
    let annotations = pulled.manifest.annotations.clone().unwrap();
    assert_eq!(
        annotations["org.opencontainers.image.base.digest"],
        base.digest
    );

    let root = work.path().join("rootfs");
    unpack_layers(&pulled, &root).unwrap();
    assert_eq!(
        fs::read_to_string(root.join("etc/os-release")).unwrap(),
        "ID=kiln-test\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("usr/share/doc/README")).unwrap(),
        "base docs\n"
    );
    assert_eq!(mode(&root.join("bin/sh")), 0o755);
    assert_eq!(
        fs::read_to_string(root.join("app/server")).unwrap(),
        "app binary\n"
    );

    // Again into the same repository: nothing to upload, same digest.
    let (again, _) = push(&spec, &opts).await;
    assert_eq!(again.digest, pushed.digest);
    assert_eq!(
        (
            again.layers_pushed,
            again.layers_skipped,
            again.layers_mounted
        ),
        (0, 3, 0)
    );

    // Base on another registry: its layers are copied (streamed) across.
    let other = TestRegistry::start().await;
    let opts2 = opts_for(&[&registry, &other]);
    spec.target = image(&other.host(), "team/svc:1");
    let (copied, lines) = push(&spec, &opts2).await;
    assert_eq!(
        copied.digest, pushed.digest,
        "same image wherever it is pushed"
    );
    assert_eq!(
        (copied.layers_pushed, copied.layers_skipped),
        (3, 0),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("copying layer"))
            .count()
            == 2,
        "{lines:?}"
    );
    let from_other = pull_image(&copied.reference, &opts2).await.unwrap();
    assert_eq!(from_other.layers, pulled.layers);
}

#[tokio::test]
async fn missing_base_image_is_named() {
    init_tls();
    let registry = TestRegistry::start().await;
    let opts = opts_for(&[&registry]);
    let mut spec = AssembleSpec::new(image(&registry.host(), "team/app:1"));
    spec.base = Some(image(&registry.host(), "library/nope:1"));
    let err = assemble_and_push(&spec, &opts, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, AssembleError::BaseNotFound { .. }), "{err:?}");
    let text = err.to_string();
    eprintln!("missing base: {text}");
    assert!(
        text.contains("library/nope:1") && text.contains("not found"),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_registry_is_named() {
    init_tls();
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let opts = RegistryOptions {
        auth: RegistryAuth::basic("robot", "pw-that-must-not-leak-1234"),
        insecure_registries: vec![host.clone()],
        ..Default::default()
    };
    let spec = AssembleSpec::new(image(&host, "team/app:1"));
    let err = assemble_and_push(&spec, &opts, &mut |_| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(
        text,
        format!("cannot reach registry {host}: connection refused"),
        "{err:?}"
    );
    assert!(matches!(
        err,
        AssembleError::Registry(RegistryError::Unreachable { .. })
    ));
    assert!(!format!("{err:?}").contains("pw-that-must-not-leak"));
}

/// A registry that speaks only plain HTTP, not listed as insecure: the error names the setting
/// the caller gave for listing it, instead of a TLS message.
#[tokio::test]
async fn a_plain_http_registry_not_listed_as_insecure_is_named_with_the_setting_to_change() {
    init_tls();
    let registry = TestRegistry::start().await;
    let host = registry.host();
    let opts = RegistryOptions { insecure_setting: Some("THE_SETTING".into()), ..Default::default() };
    let spec = AssembleSpec::new(image(&host, "team/app:1"));
    let err = assemble_and_push(&spec, &opts, &mut |_| {}).await.unwrap_err();
    assert_eq!(err.to_string(), format!("{host} answered plain HTTP; add {host} to THE_SETTING"), "{err:?}");
    assert!(matches!(err, AssembleError::Registry(RegistryError::PlainHttp { .. })), "{err:?}");
}

#[tokio::test]
async fn credentials_are_checked_and_never_leak() {
    init_tls();
    let registry = TestRegistry::start_with_htpasswd("kiln", "correct-horse-battery").await;
    let work = tempfile::tempdir().unwrap();
    let target = image(&registry.host(), "team/app:1");
    let spec = app_spec(target.clone(), app_inputs(work.path()));

    let secret = "wrong-PASSWORD-s3cr3t";
    let bad = opts_for(&[&registry]).with_auth(RegistryAuth::basic("kiln", secret));
    let mut lines = Vec::new();
    let err = assemble_and_push(&spec, &bad, &mut |l| lines.push(l))
        .await
        .unwrap_err();
    let (display, debug) = (err.to_string(), format!("{err:?}"));
    eprintln!("bad password: {display}");
    assert!(
        matches!(
            err,
            AssembleError::Registry(RegistryError::Unauthorized { .. })
        ),
        "{debug}"
    );
    assert!(
        display.contains("unauthorized") && display.contains(&registry.host()),
        "{display}"
    );
    assert!(display.contains("\"kiln\""), "names the user: {display}");
    assert!(
        !display.contains(secret) && !debug.contains(secret),
        "{display} / {debug}"
    );
    assert!(lines.is_empty(), "fails before any work: {lines:?}");
    assert!(!format!("{bad:?}").contains(secret));

    // Anonymous against a registry that wants credentials.
    let err = assemble_and_push(&spec, &opts_for(&[&registry]), &mut |_| {})
        .await
        .unwrap_err();
    eprintln!("anonymous: {err}");
    assert!(err.to_string().contains("no credentials"), "{err}");

    // The right password works, push and pull.
    let good =
        opts_for(&[&registry]).with_auth(RegistryAuth::basic("kiln", "correct-horse-battery"));
    let (pushed, _) = push(&spec, &good).await;
    let pulled = pull_image(&pushed.reference, &good).await.unwrap();
    assert_eq!(pulled.manifest_digest, pushed.digest);

    // Pulling with the wrong password fails the same way, without the password.
    let err = pull_image(&pushed.reference, &bad).await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(!err.to_string().contains(secret) && !format!("{err:?}").contains(secret));
}
