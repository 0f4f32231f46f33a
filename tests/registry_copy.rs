//! `registry-sync` copies between real `docker-registry` instances: one source, two targets, each
//! target behind a counting/faulting proxy so the tests see exactly what was sent.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use registry_sync::{
    copy_image, BlobLocations, CopyEvent, CopyOptions, CopyReport, ImageRef, RegistryAuth,
    RegistryOptions, RetryPolicy, TargetState, TransferSlots,
};

use crate::support::oci_images::{random_bytes, ImagePusher, TestImage, OCI_MANIFEST};
use crate::support::registry::{free_port, TestRegistry};
use crate::support::hostile_registry::HostileRegistry;
use crate::support::registry_proxy::RegistryProxy;
use crate::support::token_service::TokenService;

/// A source registry (behind a proxy too, for faults) and two targets behind proxies.
struct Rig {
    source: TestRegistry,
    source_proxy: RegistryProxy,
    targets: Vec<TestRegistry>,
    proxies: Vec<RegistryProxy>,
}

impl Rig {
    async fn start() -> Rig {
        crate::support::init();
        let source = TestRegistry::start().await;
        let source_proxy = RegistryProxy::start(&source.host()).await;
        let mut targets = Vec::new();
        let mut proxies = Vec::new();
        for _ in 0..2 {
            let t = TestRegistry::start().await;
            proxies.push(RegistryProxy::start(&t.host()).await);
            targets.push(t);
        }
        Rig {
            source,
            source_proxy,
            targets,
            proxies,
        }
    }

    fn pusher(&self) -> ImagePusher {
        ImagePusher::new(&self.source.host())
    }

    /// Checks on the target registries themselves, not through the proxies.
    fn target_reader(&self, i: usize) -> ImagePusher {
        ImagePusher::new(&self.targets[i].host())
    }

    /// `source-proxy/repo…`.
    fn source_ref(&self, rest: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{rest}", self.source_proxy.host())).unwrap()
    }

    /// `target-proxy/repo` for both targets.
    fn target_refs(&self, repo: &str) -> Vec<ImageRef> {
        self.proxies
            .iter()
            .map(|p| ImageRef::parse(&format!("{}/{repo}", p.host())).unwrap())
            .collect()
    }

    fn options(&self) -> CopyOptions {
        let mut registry = RegistryOptions::default();
        registry.insecure_registries.push(self.source_proxy.host());
        for p in &self.proxies {
            registry.insecure_registries.push(p.host());
        }
        CopyOptions {
            registry,
            retry: RetryPolicy::fast(3),
            ..CopyOptions::default()
        }
    }

    fn reset_counters(&self) {
        self.source_proxy.reset();
        for p in &self.proxies {
            p.reset();
        }
    }
}

async fn copy(source: &ImageRef, targets: &[ImageRef], tags: &[&str], options: &CopyOptions) -> CopyReport {
    let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    copy_image(source, targets, &tags, options, &|_| {}).await.expect("copy")
}

fn assert_all_verified(report: &CopyReport) {
    for t in &report.targets {
        assert_eq!(t.state, TargetState::Verified, "{}: {:?}", t.target, t);
    }
}

/// The `PUT …/manifests/<reference>` requests a proxy saw, by reference, in order.
fn manifest_puts(proxy: &RegistryProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter_map(|r| r.strip_prefix("PUT "))
        .filter_map(|p| p.split_once("/manifests/").map(|(_, reference)| reference.to_string()))
        .collect()
}

#[tokio::test]
async fn multi_layer_image_reaches_both_targets_and_a_second_run_sends_no_blob_bytes() {
    let rig = Rig::start().await;
    let layers = [random_bytes(1 << 20), random_bytes(2 << 20), random_bytes(300_000)];
    let layer_refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let image = rig.pusher().push_image("team/app", Some("v1"), &layer_refs, "linux", "amd64").await;

    let report = copy(&rig.source_ref("team/app:v1"), &rig.target_refs("team/app"), &["v1"], &rig.options()).await;
    assert_all_verified(&report);
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.blobs, 4);
    for (i, t) in report.targets.iter().enumerate() {
        let reader = rig.target_reader(i);
        assert_eq!(reader.manifest_digest("team/app", &image.digest).await.as_deref(), Some(image.digest.as_str()));
        assert_eq!(reader.manifest_digest("team/app", "v1").await.as_deref(), Some(image.digest.as_str()));
        // Raw bytes, never re-serialised.
        assert_eq!(reader.manifest_bytes("team/app", &image.digest).await.unwrap(), image.manifest);
        for (digest, _) in &image.blobs {
            assert!(reader.blob_exists("team/app", digest).await, "{digest} missing on target {i}");
        }
        assert_eq!((t.blobs_sent, t.blobs_skipped, t.blobs_mounted), (4, 0, 0));
        assert_eq!(t.bytes_sent, image.blob_bytes());
        // The target lacked everything: it got each blob byte exactly once.
        assert_eq!(rig.proxies[i].blob_upload_bytes(), image.blob_bytes(), "target {i}");
        // And the manifest once, under its tag (not by digest and then by tag).
        assert_eq!(manifest_puts(&rig.proxies[i]), ["v1"], "target {i}");
        assert_eq!(t.target.to_string(), format!("{}/team/app@{}", rig.proxies[i].host(), image.digest));
    }

    rig.reset_counters();
    let again = copy(&rig.source_ref("team/app:v1"), &rig.target_refs("team/app"), &["v1"], &rig.options()).await;
    assert_all_verified(&again);
    for (i, t) in again.targets.iter().enumerate() {
        assert_eq!(rig.proxies[i].blob_upload_bytes(), 0, "second run sent blob bytes to target {i}");
        assert_eq!((t.bytes_sent, t.blobs_sent, t.manifests_pushed), (0, 0, 0));
        assert_eq!(t.blobs_skipped, 4);
        assert!(manifest_puts(&rig.proxies[i]).is_empty(), "{:?}", rig.proxies[i].requests());
    }
}

#[tokio::test]
async fn multi_arch_index_copies_children_before_the_index_and_the_tag_last() {
    let rig = Rig::start().await;
    let pusher = rig.pusher();
    let base = random_bytes(1 << 20);
    let (amd, arm) = (random_bytes(500_000), random_bytes(600_000));
    let amd64 = pusher.push_image("team/multi", None, &[&base, &amd], "linux", "amd64").await;
    let arm64 = pusher.push_image("team/multi", None, &[&base, &arm], "linux", "arm64").await;
    let (index_digest, index_bytes) = pusher
        .push_index("team/multi", "2.0", &[(&amd64, "linux", "amd64"), (&arm64, "linux", "arm64")])
        .await;
    let unique: u64 = {
        let mut blobs = amd64.blobs.clone();
        blobs.extend(arm64.blobs.clone());
        blobs.sort();
        blobs.dedup();
        blobs.iter().map(|(_, s)| s).sum()
    };

    let source = rig.source_ref(&format!("team/multi@{index_digest}"));
    let report = copy(&source, &rig.target_refs("team/multi"), &["2.0"], &rig.options()).await;
    assert_all_verified(&report);
    assert_eq!(report.digest, index_digest);
    assert_eq!(report.media_type, "application/vnd.oci.image.index.v1+json");
    for i in 0..2 {
        let reader = rig.target_reader(i);
        assert_eq!(reader.manifest_bytes("team/multi", "2.0").await.unwrap(), index_bytes);
        for child in [&amd64, &arm64] {
            assert_eq!(reader.manifest_digest("team/multi", &child.digest).await.as_deref(), Some(child.digest.as_str()));
        }
        // The shared base layer crossed once.
        assert_eq!(rig.proxies[i].blob_upload_bytes(), unique, "target {i}");
        // The children by digest, then the index once, under its tag.
        let mut puts = manifest_puts(&rig.proxies[i]);
        assert_eq!(puts.pop().as_deref(), Some("2.0"), "tag not last: {puts:?}");
        puts.sort();
        let mut children = vec![amd64.digest.clone(), arm64.digest.clone()];
        children.sort();
        assert_eq!(puts, children, "target {i}");
    }
}

#[tokio::test]
async fn referrer_is_copied_with_its_image() {
    let rig = Rig::start().await;
    let pusher = rig.pusher();
    let layer = random_bytes(700_000);
    let image = pusher.push_image("team/signed", Some("1.0"), &[&layer], "linux", "amd64").await;
    let signature = pusher.push_referrer("team/signed", &image, b"signature of the image").await;
    let fallback_tag = image.digest.replacen(':', "-", 1);
    let source_index = pusher.manifest_bytes("team/signed", &fallback_tag).await.unwrap();

    let report = copy(&rig.source_ref("team/signed:1.0"), &rig.target_refs("team/signed"), &["1.0"], &rig.options()).await;
    assert_all_verified(&report);
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.manifests, 2, "image and its referrer");
    for i in 0..2 {
        let reader = rig.target_reader(i);
        assert_eq!(reader.manifest_bytes("team/signed", &signature.digest).await.unwrap(), signature.manifest);
        for (digest, _) in &signature.blobs {
            assert!(reader.blob_exists("team/signed", digest).await, "{digest} missing on target {i}");
        }
        // distribution 2.8 has no referrers API: the tag schema index is copied byte for byte.
        assert_eq!(reader.manifest_bytes("team/signed", &fallback_tag).await.unwrap(), source_index);
        let puts = manifest_puts(&rig.proxies[i]);
        let pos = |r: &str| puts.iter().position(|p| p == r).unwrap();
        assert!(pos(&image.digest) < pos(&signature.digest), "referrer before its subject: {puts:?}");
        assert_eq!(puts.last().map(String::as_str), Some("1.0"), "{puts:?}");
    }
}

#[tokio::test]
async fn target_killed_mid_copy_fails_alone_and_the_next_run_sends_only_what_it_lacked() {
    let mut rig = Rig::start().await;
    let (small1, small2, large) = (random_bytes(200_000), random_bytes(300_000), random_bytes(24 << 20));
    let image = rig
        .pusher()
        .push_image("team/big", Some("v1"), &[&small1, &small2, &large], "linux", "amd64")
        .await;
    // One blob at a time, in the order their looks end (a blob streams once every target has
    // answered for it, not in manifest order): the stall point, 4 MiB of uploads, lands in the
    // large layer whichever goes first, since the other blobs are under 1 MiB together.
    let options = CopyOptions {
        transfers: TransferSlots::new(1),
        ..rig.options()
    };
    rig.proxies[1].stall_uploads_after(4 << 20);
    let source = rig.source_ref("team/big:v1");
    let targets = rig.target_refs("team/big");
    let (report, ()) = tokio::join!(copy(&source, &targets, &["v1"], &options), async {
        rig.proxies[1].wait_stalled(Duration::from_secs(60)).await;
        rig.targets[1].kill();
    });
    assert_eq!(report.targets[0].state, TargetState::Verified, "{:?}", report.targets[0]);
    let TargetState::Failed { reason } = &report.targets[1].state else {
        panic!("target 1 should have failed: {:?}", report.targets[1]);
    };
    assert!(reason.contains(&rig.proxies[1].host()), "reason names the registry: {reason}");

    assert_eq!(rig.target_reader(0).manifest_digest("team/big", "v1").await.as_deref(), Some(image.digest.as_str()));

    rig.targets[1].restart().await;
    let reader = rig.target_reader(1);
    assert_eq!(reader.manifest_digest("team/big", &image.digest).await, None, "no manifest before its blobs");
    let (mut lacking, mut lacking_count) = (0, 0);
    for (digest, size) in &image.blobs {
        if !reader.blob_exists("team/big", digest).await {
            lacking += size;
            lacking_count += 1;
        }
    }
    // What the report says was sent is what survived the kill; the large layer did not.
    let present = image.blobs.len() - lacking_count;
    assert_eq!(report.targets[1].blobs_sent, present, "{:?}", report.targets[1]);
    assert!(lacking >= large.len() as u64, "the large layer was cut: {lacking} bytes lacking");

    rig.reset_counters();
    let again = copy(&source, &targets, &["v1"], &options).await;
    assert_all_verified(&again);
    assert_eq!(rig.proxies[1].blob_upload_bytes(), lacking, "resent only what target 1 lacked");
    assert_eq!(rig.proxies[0].blob_upload_bytes(), 0);
    assert_eq!((again.targets[1].blobs_sent, again.targets[1].blobs_skipped), (lacking_count, present));
    assert_eq!(reader.manifest_digest("team/big", "v1").await.as_deref(), Some(image.digest.as_str()));
}

#[tokio::test]
async fn registries_answering_500_twice_then_succeeding_are_retried() {
    let rig = Rig::start().await;
    let layers = [random_bytes(400_000), random_bytes(500_000)];
    let image = rig
        .pusher()
        .push_image("team/flaky", Some("v1"), &[&layers[0], &layers[1]], "linux", "amd64")
        .await;
    // The source fails two blob reads, target 0 two manifest pushes, target 1 two blob uploads.
    rig.source_proxy.fail_next(Method::GET, "/blobs/sha256:", 2);
    rig.proxies[0].fail_next(Method::PUT, "/manifests/", 2);
    rig.proxies[1].fail_next(Method::PUT, "/blobs/uploads/", 2);

    let report = copy(&rig.source_ref("team/flaky:v1"), &rig.target_refs("team/flaky"), &["v1"], &rig.options()).await;
    assert_all_verified(&report);
    assert_eq!(rig.source_proxy.faults_served(), 2);
    for i in 0..2 {
        assert_eq!(rig.proxies[i].faults_served(), 2, "target {i}");
        assert_eq!(rig.target_reader(i).manifest_digest("team/flaky", "v1").await.as_deref(), Some(image.digest.as_str()));
        // Refused uploads carried no bytes to the registry; each blob arrived once.
        assert_eq!(rig.proxies[i].blob_upload_bytes(), image.blob_bytes(), "target {i}");
    }

    // Still failing after the last attempt: that target fails, alone, naming the cause.
    rig.proxies[1].fail_next(Method::PUT, "/manifests/", 10);
    let other = rig.pusher().push_image("team/flaky", Some("v2"), &[&layers[0]], "linux", "arm64").await;
    let report = copy(&rig.source_ref("team/flaky:v2"), &rig.target_refs("team/flaky"), &["v2"], &rig.options()).await;
    assert_eq!(report.targets[0].state, TargetState::Verified);
    let TargetState::Failed { reason } = &report.targets[1].state else { panic!("{:?}", report.targets[1]) };
    assert!(reason.contains("500"), "{reason}");
    assert_eq!(rig.proxies[1].faults_served(), 2 + 3, "three attempts");
    assert_eq!(rig.target_reader(1).manifest_digest("team/flaky", "v2").await, None);
    assert_eq!(rig.target_reader(0).manifest_digest("team/flaky", "v2").await, Some(other.digest));
}

/// How long after the first request starting with `request` the last one came, as the proxy saw
/// them.
fn first_to_last(proxy: &RegistryProxy, request: &str) -> Duration {
    let times: Vec<_> = proxy.requests_at().into_iter().filter(|(_, r)| r.starts_with(request)).map(|(t, _)| t).collect();
    assert!(times.len() >= 2, "{request}: {:?}", proxy.requests());
    times[times.len() - 1] - times[0]
}

#[tokio::test]
async fn a_registry_answering_429_with_retry_after_is_waited_for_and_one_asking_too_long_fails_at_once() {
    let rig = Rig::start().await;
    let layer = random_bytes(300_000);
    let image = rig.pusher().push_image("team/busy", Some("v1"), &[&layer], "linux", "amd64").await;
    // Target 0 throttles its manifest push, target 1 its streamed blob upload, each once, asking
    // for 1 s: far longer than the test policy's backoff (5–50 ms).
    rig.proxies[0].throttle_next(Method::PUT, "/manifests/", 1, "1");
    rig.proxies[1].throttle_next(Method::PUT, "/blobs/uploads/", 1, "1");

    let report = copy(&rig.source_ref("team/busy:v1"), &rig.target_refs("team/busy"), &["v1"], &rig.options()).await;
    assert_all_verified(&report);
    assert_eq!((rig.proxies[0].faults_served(), rig.proxies[1].faults_served()), (1, 1));
    // The one manifest PUT, refused, then its retry.
    let manifest_gap = first_to_last(&rig.proxies[0], "PUT /v2/team/busy/manifests/");
    assert!(manifest_gap >= Duration::from_millis(950), "manifest retried after {manifest_gap:?}");
    // The first blob PUT was refused; the other blob's went on at once, and the refused one's
    // retry (in a new upload session) came last.
    let upload_gap = first_to_last(&rig.proxies[1], "PUT /v2/team/busy/blobs/uploads/");
    assert!(upload_gap >= Duration::from_millis(950), "upload retried after {upload_gap:?}");
    for i in 0..2 {
        assert_eq!(rig.target_reader(i).manifest_digest("team/busy", "v1").await.as_deref(), Some(image.digest.as_str()));
    }

    // A rate limit that resets in an hour is more than the policy waits (5 s here): that target
    // fails at once, saying what the registry asked; the other is not held up.
    rig.reset_counters();
    rig.proxies[1].throttle_next(Method::PUT, "/manifests/", 10, "3600");
    let other = rig.pusher().push_image("team/busy", Some("v2"), &[&layer], "linux", "arm64").await;
    let started = std::time::Instant::now();
    let report = copy(&rig.source_ref("team/busy:v2"), &rig.target_refs("team/busy"), &["v2"], &rig.options()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(report.targets[0].state, TargetState::Verified);
    let TargetState::Failed { reason } = &report.targets[1].state else { panic!("{:?}", report.targets[1]) };
    assert!(reason.contains("429") && reason.contains("Retry-After: 3600 s"), "{reason}");
    assert_eq!(rig.proxies[1].faults_served(), 1, "no second attempt");
    assert_eq!(rig.target_reader(0).manifest_digest("team/busy", "v2").await, Some(other.digest));
}

/// Harbor's way: the registry takes only bearer tokens, which its token service issues to a robot
/// account for the repositories of its project. The registry checks each token's grants itself.
#[tokio::test]
async fn a_robot_account_copies_through_a_token_service_and_mounts_with_a_token_for_both_repositories() {
    crate::support::init();
    let robot = "robot$team+kiln";
    let tokens = TokenService::start(robot, "robot-secret-token-0123", "team/").await;
    let target = TestRegistry::start_with_token(&tokens).await;
    let source = TestRegistry::start().await;
    let base = random_bytes(1 << 20);
    let pusher = ImagePusher::new(&source.host());
    let app_a = pusher.push_image("team/app-a", Some("v1"), &[&base, &random_bytes(50_000)], "linux", "amd64").await;
    let app_b = pusher.push_image("team/app-b", Some("v1"), &[&base, &random_bytes(60_000)], "linux", "amd64").await;
    let options = |password: &str| {
        let mut registry = RegistryOptions::default();
        registry.insecure_registries = vec![source.host(), target.host()];
        registry.registry_auth.insert(target.host(), RegistryAuth::basic(robot, password));
        CopyOptions { registry, retry: RetryPolicy::fast(3), ..CopyOptions::default() }
    };
    let options_right = options("robot-secret-token-0123");
    let src = |repo: &str| ImageRef::parse(&format!("{}/{repo}:v1", source.host())).unwrap();
    let dst = |repo: &str| vec![ImageRef::parse(&format!("{}/{repo}", target.host())).unwrap()];

    let report = copy(&src("team/app-a"), &dst("team/app-a"), &["v1"], &options_right).await;
    assert_all_verified(&report);
    assert_eq!((report.targets[0].blobs_sent, report.targets[0].blobs_mounted), (3, 0));
    // The second app's copy (same options, so it knows where the base layer is) mounts it: the
    // registry allows that only with pull on team/app-a and push on team/app-b in one token.
    let report = copy(&src("team/app-b"), &dst("team/app-b"), &["v1"], &options_right).await;
    assert_all_verified(&report);
    assert_eq!((report.targets[0].blobs_sent, report.targets[0].blobs_mounted), (2, 1), "{:?}", report.targets[0]);
    assert!(
        tokens.requests().iter().any(|r| r.account.as_deref() == Some(robot)
            && r.scopes == ["repository:team/app-a:pull", "repository:team/app-b:pull,push"]),
        "{:?}",
        tokens.requests()
    );
    for (repo, image) in [("team/app-a", &app_a), ("team/app-b", &app_b)] {
        // Read back through the same token service (the registry serves nothing anonymously).
        let reference = ImageRef::parse(&format!("{}/{repo}:v1", target.host())).unwrap();
        let pulled = registry_sync::pull_image(&reference, &options_right.registry).await.unwrap();
        assert_eq!(pulled.manifest_digest, image.digest);
    }

    // Outside the robot's project the service grants nothing, and the registry refuses the push.
    let report = copy(&src("team/app-a"), &dst("other/app-a"), &["v1"], &options_right).await;
    let TargetState::Failed { reason } = &report.targets[0].state else { panic!("{:?}", report.targets[0]) };
    assert!(reason.contains("refused access") && reason.contains(robot), "{reason}");

    // A wrong password: the token service answers 401, and the copy says whose credentials failed.
    let report = copy(&src("team/app-a"), &dst("team/app-c"), &["v1"], &options("wrong-password-0123")).await;
    let TargetState::Failed { reason } = &report.targets[0].state else { panic!("{:?}", report.targets[0]) };
    assert!(reason.contains("refused access") && reason.contains(robot), "{reason}");
    assert!(!reason.contains("wrong-password-0123"), "{reason}");
}

/// A token service whose tokens live 2 s (the token spec's default is 60 s), and a source that
/// holds back its blobs for 3 s: the target's token, fetched to see what it lacks, has expired
/// by the time the bytes flow. A streamed upload cannot be replayed after a 401, so the token
/// must be renewed before it starts.
#[tokio::test]
async fn a_token_that_would_expire_before_a_streamed_upload_is_renewed_first() {
    crate::support::init();
    let robot = "robot$team+kiln";
    let tokens = TokenService::start(robot, "robot-secret-token-0123", "team/").await;
    tokens.set_lifetime(2);
    let target = TestRegistry::start_with_token(&tokens).await;
    let source = TestRegistry::start().await;
    let source_proxy = RegistryProxy::start(&source.host()).await;
    let image = ImagePusher::new(&source.host()).push_image("team/app", Some("v1"), &[&random_bytes(200_000)], "linux", "amd64").await;
    source_proxy.throttle_next(Method::GET, "/blobs/sha256:", 2, "3");
    let mut registry = RegistryOptions::default();
    registry.insecure_registries = vec![source_proxy.host(), target.host()];
    registry.registry_auth.insert(target.host(), RegistryAuth::basic(robot, "robot-secret-token-0123"));
    let options = CopyOptions { registry, retry: RetryPolicy::fast(3), ..CopyOptions::default() };

    let source_ref = ImageRef::parse(&format!("{}/team/app:v1", source_proxy.host())).unwrap();
    let target_ref = ImageRef::parse(&format!("{}/team/app", target.host())).unwrap();
    let report = copy(&source_ref, &[target_ref], &["v1"], &options).await;
    assert_all_verified(&report);
    assert_eq!(report.digest, image.digest);
    assert_eq!(source_proxy.faults_served(), 2, "both blobs were held back");
    let push_tokens = tokens.requests().iter().filter(|r| r.scopes == ["repository:team/app:pull,push"]).count();
    assert!(push_tokens >= 2, "the push token was renewed: {:?}", tokens.requests());
}

/// What a broken or hostile source answers is read only up to what it could sensibly be: a
/// manifest over 4 MiB, an endless chain of referrers, an error page that never ends — each a
/// clear error, in bounded time and memory, and nothing pushed.
#[tokio::test]
async fn a_hostile_source_gets_clear_errors_not_unbounded_reads() {
    crate::support::init();
    let source = HostileRegistry::start().await;
    let target = TestRegistry::start().await;
    let mut registry = RegistryOptions::default();
    registry.insecure_registries = vec![source.host(), target.host()];
    let options = CopyOptions { registry, retry: RetryPolicy::fast(2), ..CopyOptions::default() };
    let dst = |repo: &str| vec![ImageRef::parse(&format!("{}/{repo}", target.host())).unwrap()];
    let attempt = |repo: &'static str| {
        let (src, dst, options) = (ImageRef::parse(&format!("{}/{repo}:v1", source.host())).unwrap(), dst(repo), &options);
        async move {
            let tags = ["v1".to_string()];
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(30), copy_image(&src, &dst, &tags, options, &|_| {})).await;
            let error = result.expect("bounded time").expect_err("refused").to_string();
            (error, started.elapsed())
        }
    };

    let (error, _) = attempt("huge").await;
    assert!(error.contains("larger than 4194304 bytes"), "{error}");

    let (error, _) = attempt("chain").await;
    assert!(error.contains("nest more than 16 deep"), "{error}");
    assert!(source.chain_made() <= 18, "read {} manifests of the chain", source.chain_made());

    let (error, took) = attempt("noisy").await;
    assert!(error.contains("HTTP 500") && error.len() < 2_000, "{} bytes: {}", error.len(), &error[..error.len().min(300)]);
    assert_eq!(source.errors_started(), 2, "two attempts");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Nothing reached the target.
    let catalog: serde_json::Value = reqwest::get(format!("http://{}/v2/_catalog", target.host())).await.unwrap().json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]), "{catalog}");
}

#[tokio::test]
async fn wrong_password_fails_clearly_without_showing_it_and_the_right_one_copies() {
    crate::support::init();
    let source = TestRegistry::start().await;
    let open = TestRegistry::start().await;
    let user = "robot$team+ci";
    let locked = TestRegistry::start_with_htpasswd(user, "right-password-1").await;
    ImagePusher::new(&source.host())
        .push_image("team/app", Some("v1"), &[&random_bytes(100_000)], "linux", "amd64")
        .await;
    let src = ImageRef::parse(&format!("{}/team/app:v1", source.host())).unwrap();
    let targets = [
        ImageRef::parse(&format!("{}/team/app", open.host())).unwrap(),
        ImageRef::parse(&format!("{}/team/app", locked.host())).unwrap(),
    ];
    let mut options = CopyOptions {
        retry: RetryPolicy::fast(3),
        ..CopyOptions::default()
    };
    options.registry.insecure_registries = vec![source.host(), open.host(), locked.host()];
    let secret = "wrong-password-S3CRET";
    options
        .registry
        .registry_auth
        .insert(locked.host(), RegistryAuth::basic(user, secret));

    let report = copy(&src, &targets, &["v1"], &options).await;
    assert_eq!(report.targets[0].state, TargetState::Verified);
    let TargetState::Failed { reason } = &report.targets[1].state else { panic!("{:?}", report.targets[1]) };
    assert!(reason.contains(&locked.host()) && reason.contains("refused access") && reason.contains(user), "{reason}");
    assert!(!reason.contains(secret), "password leaked: {reason}");
    assert!(!format!("{report:?}").contains(secret));
    assert_eq!(report.targets[1].bytes_sent, 0, "nothing sent before authentication");

    options
        .registry
        .registry_auth
        .insert(locked.host(), RegistryAuth::basic(user, "right-password-1"));
    let report = copy(&src, &targets, &["v1"], &options).await;
    assert_all_verified(&report);
    assert_eq!(report.targets[1].blobs_sent, 2);
    assert_eq!(report.targets[0].blobs_skipped, 2);
}

#[tokio::test]
async fn blobs_in_another_repository_of_the_target_are_mounted_not_sent() {
    let rig = Rig::start().await;
    let pusher = rig.pusher();
    let base = random_bytes(1 << 20);
    let (a_top, b_top) = (random_bytes(100_000), random_bytes(150_000));
    let a = pusher.push_image("team/a", Some("v1"), &[&base, &a_top], "linux", "amd64").await;
    let b = pusher.push_image("team/b", Some("v1"), &[&base, &b_top], "linux", "amd64").await;
    let options = CopyOptions {
        blob_locations: BlobLocations::default(),
        ..rig.options()
    };
    assert_all_verified(&copy(&rig.source_ref("team/a:v1"), &rig.target_refs("team/a"), &["v1"], &options).await);
    rig.reset_counters();

    let mounted = Mutex::new(Vec::new());
    let report = copy_image(
        &rig.source_ref("team/b:v1"),
        &rig.target_refs("team/b"),
        &["v1".to_string()],
        &options,
        &|e| {
            if let CopyEvent::BlobMounted { target, digest, from } = e {
                mounted.lock().unwrap().push((target, digest, from));
            }
        },
    )
    .await
    .unwrap();
    assert_all_verified(&report);
    let base_digest = &a.blobs[1].0;
    for i in 0..2 {
        assert!(
            mounted.lock().unwrap().contains(&(i, base_digest.clone(), "team/a".to_string())),
            "{:?}",
            mounted.lock().unwrap()
        );
        assert_eq!(report.targets[i].blobs_mounted, 1);
        // Only b's own layer and config crossed.
        let own: u64 = b.blobs.iter().filter(|(d, _)| d != base_digest).map(|(_, s)| s).sum();
        assert_eq!(rig.proxies[i].blob_upload_bytes(), own, "target {i}");
        assert!(rig.target_reader(i).blob_exists("team/b", base_digest).await);
    }
}

#[tokio::test]
async fn images_copied_at_the_same_time_send_each_shared_blob_once_per_target_and_mount_the_rest() {
    let rig = Rig::start().await;
    let pusher = rig.pusher();
    // A base every image has, a middle layer two of them have, and one layer of each's own.
    let (base, middle) = (random_bytes(3 << 20), random_bytes(1 << 20));
    let mut images = Vec::new();
    for i in 0..4 {
        let own = random_bytes(200_000 + i * 1000);
        let mut layers: Vec<&[u8]> = vec![&base];
        if i < 2 {
            layers.push(&middle);
        }
        layers.push(&own);
        let repo = format!("team/svc-{i}");
        images.push((repo.clone(), pusher.push_image(&repo, Some("v1"), &layers, "linux", "amd64").await));
    }
    let unique: std::collections::BTreeMap<String, u64> =
        images.iter().flat_map(|(_, img)| img.blobs.iter().cloned()).collect();
    let unique_bytes: u64 = unique.values().sum();

    // One `CopyOptions` for all four copies, run at once (as the builds of one push finishing).
    let options = rig.options();
    let reports = futures_util::future::join_all(images.iter().map(|(repo, _)| {
        let (source, targets, options) = (rig.source_ref(&format!("{repo}:v1")), rig.target_refs(repo), &options);
        async move { copy(&source, &targets, &["v1"], options).await }
    }))
    .await;
    for (report, (repo, image)) in reports.iter().zip(&images) {
        assert_all_verified(report);
        assert_eq!(report.digest, image.digest, "{repo}");
    }
    for i in 0..2 {
        assert_eq!(
            rig.proxies[i].blob_upload_bytes(),
            unique_bytes,
            "target {i} got each unique blob exactly once"
        );
        let sent: usize = reports.iter().map(|r| r.targets[i].blobs_sent).sum();
        let mounted: usize = reports.iter().map(|r| r.targets[i].blobs_mounted).sum();
        assert_eq!(sent, unique.len(), "target {i}");
        // base: sent to one repository, mounted into 3; middle: sent to one, mounted into 1.
        assert_eq!(mounted, 4, "target {i}");
        for (repo, image) in &images {
            for (digest, _) in &image.blobs {
                assert!(rig.target_reader(i).blob_exists(repo, digest).await, "{repo} {digest} on target {i}");
            }
        }
    }
    assert!(options.transfers.peak() > 1, "the copies' transfers overlapped");
}

#[tokio::test]
async fn kiln_sync_copies_with_an_authfile_and_exits_1_when_a_target_is_down() {
    crate::support::init();
    let source = TestRegistry::start().await;
    let open = TestRegistry::start().await;
    let locked = TestRegistry::start_with_htpasswd("robot$team+ci", "pw-from-authfile").await;
    let image = ImagePusher::new(&source.host())
        .push_image("team/cli", Some("3.1"), &[&random_bytes(2 << 20), &random_bytes(1 << 20)], "linux", "amd64")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("config.json");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("robot$team+ci:pw-from-authfile");
    std::fs::write(&authfile, format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, locked.host())).unwrap();

    let kiln = |args: &[String]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("sync")
            .args(["--insecure", &source.host(), "--insecure", &open.host(), "--insecure", &locked.host()])
            .arg("--authfile")
            .arg(&authfile)
            .args(args)
            .env("HOME", dir.path());
        cmd.output().unwrap()
    };
    let out = kiln(&[
        format!("{}/team/cli:3.1", source.host()),
        format!("{}/team/cli", open.host()),
        format!("{}/team/cli", locked.host()),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.matches("verified").count(), 2, "{stdout}");
    assert!(stdout.contains(&image.digest), "{stdout}");
    assert!(stderr.contains("100%") || stderr.contains("3.0 MiB / 3.0 MiB"), "progress shown: {stderr}");
    assert!(!stdout.contains("pw-from-authfile") && !stderr.contains("pw-from-authfile"));
    for host in [open.host(), locked.host()] {
        let res = reqwest::Client::new()
            .head(format!("http://{host}/v2/team/cli/manifests/3.1"))
            .header("accept", OCI_MANIFEST)
            .basic_auth("robot$team+ci", Some("pw-from-authfile"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["docker-content-digest"].to_str().unwrap(), image.digest);
    }

    let dead = format!("127.0.0.1:{}", free_port());
    let out = kiln(&[
        "--attempts".into(),
        "2".into(),
        "--insecure".into(),
        dead.clone(),
        format!("{}/team/cli@{}", source.host(), image.digest),
        format!("{}/team/cli2", open.host()),
        format!("{dead}/team/cli"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("FAILED") && stdout.contains(&dead) && stdout.contains("connection refused"), "{stdout}");
    assert_eq!(stdout.matches("verified").count(), 1, "{stdout}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_kiln")).args(["sync", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--authfile") && help.contains("--insecure") && help.contains("verified by digest"), "{help}");
    // Where the blob cache is, and how to move or turn it off.
    assert!(help.contains("--blob-cache") && help.contains("KILN_BLOB_CACHE") && help.contains("~/.cache/kiln/blob-locations.json"), "{help}");
}

/// `kiln sync` run as a user runs it, in a home of its own: its default blob cache is this test's
/// alone, and no KILN_* or XDG_* setting of the test's environment leaks in.
struct KilnSync {
    home: tempfile::TempDir,
}

/// What a `kiln sync` run printed, and its exit code.
struct SyncRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for SyncRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

impl KilnSync {
    fn new() -> KilnSync {
        crate::support::init();
        KilnSync { home: tempfile::tempdir().unwrap() }
    }

    /// Where the cache is by default with this home and no XDG_CACHE_HOME.
    fn default_cache(&self) -> std::path::PathBuf {
        self.home.path().join(".cache/kiln/blob-locations.json")
    }

    /// `kiln sync ARGS…` with `env` set. A tokio process, not a std one: waiting for it must not
    /// block the runtime, which serves the test's proxy that the process talks to.
    async fn run(&self, env: &[(&str, &std::ffi::OsStr)], args: &[String]) -> SyncRun {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("sync")
            .env("HOME", self.home.path())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("KILN_BLOB_CACHE")
            .env_remove("KILN_INSECURE_REGISTRIES")
            .env_remove("DOCKER_CONFIG")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .await
            .expect("run kiln sync");
        SyncRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `--insecure HOST` for each of `hosts`, then `rest`.
fn sync_args(hosts: &[String], rest: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for host in hosts {
        args.extend(["--insecure".to_string(), host.clone()]);
    }
    args.extend(rest.iter().map(|a| a.to_string()));
    args
}

/// The locations a blob cache file holds: (registry, digest, repository).
fn cached_locations(path: &std::path::Path) -> Vec<(String, String, String)> {
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::from_value(file["locations"].clone()).unwrap()
}

/// The image at `host/repo:tag`, pulled straight from the registry, has exactly `layers`.
async fn assert_pulls(host: &str, repo: &str, tag: &str, digest: &str, layers: &[&[u8]]) {
    let reference = ImageRef::parse(&format!("{host}/{repo}:{tag}")).unwrap();
    let pulled = registry_sync::pull_image(&reference, &RegistryOptions::default().insecure(host)).await.expect("pull");
    assert_eq!(pulled.manifest_digest, digest, "{repo}:{tag}");
    let got: Vec<&[u8]> = pulled.layers.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    assert!(got == layers, "{repo}:{tag}: the layers pulled are not the ones pushed");
}

/// `kiln sync`'s case for the blob cache: team/a:v1 and team/b:v1 on a source registry, sharing
/// a base layer under a small layer of their own, and a target registry behind a counting proxy.
struct SharedBase {
    kiln: KilnSync,
    source: TestRegistry,
    target: TestRegistry,
    proxy: RegistryProxy,
    base: Vec<u8>,
    base_digest: String,
    /// (image, its own top layer) of team/a and team/b.
    a: (TestImage, Vec<u8>),
    b: (TestImage, Vec<u8>),
}

impl SharedBase {
    async fn start(base_len: usize) -> SharedBase {
        let kiln = KilnSync::new();
        let source = TestRegistry::start().await;
        let target = TestRegistry::start().await;
        let proxy = RegistryProxy::start(&target.host()).await;
        let base = random_bytes(base_len);
        let pusher = ImagePusher::new(&source.host());
        let mut images = Vec::new();
        for (repo, top_len) in [("team/a", 100_000), ("team/b", 150_000)] {
            let top = random_bytes(top_len);
            images.push((pusher.push_image(repo, Some("v1"), &[&base, &top], "linux", "amd64").await, top));
        }
        let b = images.pop().unwrap();
        let a = images.pop().unwrap();
        let base_digest = a.0.blobs[1].0.clone();
        SharedBase { kiln, source, target, proxy, base, base_digest, a, b }
    }

    /// `kiln sync --insecure SOURCE --insecure PROXY [extra…] SOURCE/from:v1 PROXY/to` with `env`.
    async fn sync(&self, env: &[(&str, &std::ffi::OsStr)], extra: &[&str], from: &str, to: &str) -> SyncRun {
        let (src, dst) = (format!("{}/{from}:v1", self.source.host()), format!("{}/{to}", self.proxy.host()));
        let mut rest = extra.to_vec();
        rest.extend([src.as_str(), dst.as_str()]);
        self.kiln.run(env, &sync_args(&[self.source.host(), self.proxy.host()], &rest)).await
    }

    /// Where `kiln sync` records the base as put in `repository` of the target (through the proxy).
    fn base_in(&self, repository: &str) -> (String, String, String) {
        (self.proxy.host(), self.base_digest.clone(), repository.to_string())
    }
}

#[tokio::test]
async fn kiln_sync_remembers_where_it_put_a_base_layer_and_the_next_image_mounts_it_instead_of_sending_it() {
    let rig = SharedBase::start(6 << 20).await;
    let ((a, _), (b, b_top)) = (&rig.a, &rig.b);
    let xdg = rig.kiln.home.path().join("xdg-cache");
    let xdg_env = [("XDG_CACHE_HOME", xdg.as_os_str())];

    // The first image: everything is sent, and where it went is written to the cache, which
    // lives under XDG_CACHE_HOME when that is set.
    let run = rig.sync(&xdg_env, &[], "team/a", "team/a").await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(rig.proxy.blob_upload_bytes(), a.blob_bytes(), "{run}");
    let cache = xdg.join("kiln/blob-locations.json");
    assert!(cached_locations(&cache).contains(&rig.base_in("team/a")), "{:?}", cached_locations(&cache));
    assert!(!rig.kiln.default_cache().exists(), "XDG_CACHE_HOME is where the cache goes");

    // The second image, into another repository: the base is mounted from team/a, 0 of its bytes
    // sent; only b's own layer and config cross.
    rig.proxy.reset();
    let run = rig.sync(&xdg_env, &[], "team/b", "team/b").await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(rig.proxy.blob_upload_bytes(), b.blob_bytes() - rig.base.len() as u64, "the base was sent again:\n{run}");
    assert!(run.stdout.contains("sent 2 blob(s)") && run.stdout.contains("mounted 1,"), "{run}");
    assert!(run.stderr.contains(&format!("mounted {} from team/a", rig.base_digest)), "{run}");
    assert_eq!(rig.proxy.mount_requests(), [("team/b".to_string(), rig.base_digest.clone(), "team/a".to_string())]);
    // Complete at the target, read from the registry itself (not through the proxy).
    assert!(ImagePusher::new(&rig.target.host()).blob_exists("team/b", &rig.base_digest).await);
    assert_pulls(&rig.target.host(), "team/b", "v1", &b.digest, &[&rig.base, b_top]).await;

    // Entries are per registry: another registry, where the base is in no repository, is asked
    // for no mount (from team/a or team/b of the first one) and is sent the whole image.
    let other = TestRegistry::start().await;
    let other_proxy = RegistryProxy::start(&other.host()).await;
    let (src, dst) = (format!("{}/team/b:v1", rig.source.host()), format!("{}/team/x", other_proxy.host()));
    let args = sync_args(&[rig.source.host(), other_proxy.host()], &[&src, &dst]);
    let run = rig.kiln.run(&xdg_env, &args).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(other_proxy.mount_requests(), [], "{run}");
    assert_eq!(other_proxy.blob_upload_bytes(), b.blob_bytes(), "{run}");
    let locations = cached_locations(&cache);
    let other_base = (other_proxy.host(), rig.base_digest.clone(), "team/x".to_string());
    assert!(locations.contains(&rig.base_in("team/b")) && locations.contains(&other_base), "{locations:?}");

    // The control: with the cache off, the same copy into a third repository sends the base.
    rig.proxy.reset();
    let run = rig.sync(&[], &["--blob-cache", "off"], "team/b", "team/c").await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(rig.proxy.blob_upload_bytes(), b.blob_bytes(), "{run}");
    assert_eq!(rig.proxy.mount_requests(), [], "{run}");
    assert!(!rig.kiln.default_cache().exists(), "off writes no cache");
}

#[tokio::test]
async fn kiln_sync_with_a_stale_or_corrupt_blob_cache_still_copies_the_whole_image() {
    let rig = SharedBase::start(3 << 20).await;
    let ((a, a_top), (b, b_top)) = (&rig.a, &rig.b);
    // Named by KILN_BLOB_CACHE this time.
    let cache = rig.kiln.home.path().join("elsewhere/blobs.json");
    let cache_env = [("KILN_BLOB_CACHE", cache.as_os_str())];

    let run = rig.sync(&cache_env, &[], "team/a", "team/a").await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(cached_locations(&cache).contains(&rig.base_in("team/a")));
    // The cache's entry goes stale: the base is deleted from team/a on the target.
    let deleted = reqwest::Client::new()
        .delete(format!("http://{}/v2/team/a/blobs/{}", rig.target.host(), rig.base_digest))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202, "{:?}", deleted.text().await);
    assert!(!ImagePusher::new(&rig.target.host()).blob_exists("team/a", &rig.base_digest).await);

    // The mount is asked for and refused: the registry answers 202 with an upload session
    // instead of 201 (OCI distribution spec), and the base is sent into that session: once, with
    // no session of its own (one POST per blob: the refused mount, b's layer, b's config).
    rig.proxy.reset();
    let run = rig.sync(&cache_env, &[], "team/b", "team/b").await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("mounted 0,") && !run.stderr.contains("mounted sha256:"), "{run}");
    assert_eq!(rig.proxy.mount_requests(), [("team/b".to_string(), rig.base_digest.clone(), "team/a".to_string())]);
    let posts = rig.proxy.requests().iter().filter(|r| *r == "POST /v2/team/b/blobs/uploads/").count();
    assert_eq!(posts, 3, "{:?}", rig.proxy.requests_with_queries());
    assert_eq!(rig.proxy.blob_upload_bytes(), b.blob_bytes(), "{run}");
    assert_pulls(&rig.target.host(), "team/b", "v1", &b.digest, &[&rig.base, b_top]).await;
    // The stale entry was replaced by where the base is now.
    let locations = cached_locations(&cache);
    assert!(locations.contains(&rig.base_in("team/b")) && !locations.contains(&rig.base_in("team/a")), "{locations:?}");

    // A corrupt cache is ignored with a warning and rewritten; the copy is whole.
    std::fs::write(&cache, b"{\"version\": 1, \"locations\": [[\"trunc").unwrap();
    let run = rig.sync(&cache_env, &[], "team/a", "team/a2").await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stderr.contains("warning: ignoring the blob cache") && run.stderr.contains("blobs.json"), "{run}");
    assert_pulls(&rig.target.host(), "team/a2", "v1", &a.digest, &[&rig.base, a_top]).await;
    assert!(cached_locations(&cache).contains(&rig.base_in("team/a2")), "rewritten whole");
    assert!(!rig.kiln.default_cache().exists(), "KILN_BLOB_CACHE is where the cache goes");
}

#[tokio::test]
async fn kiln_sync_says_which_setting_a_plain_http_registry_needs() {
    let kiln = KilnSync::new();
    let source = TestRegistry::start().await;
    let target = TestRegistry::start().await;
    let image = ImagePusher::new(&source.host())
        .push_image("team/plain", Some("v1"), &[&random_bytes(200_000)], "linux", "amd64")
        .await;
    let args = [format!("{}/team/plain:v1", source.host()), format!("{}/team/plain", target.host())];
    let advice = |host: String| format!("{host} answered plain HTTP; add {host} to KILN_INSECURE_REGISTRIES / --insecure");

    // The source is spoken to over HTTPS: the copy cannot start, and says what to do. Retrying
    // cannot help, so there is none: the default 5 attempts would wait at least 1.9 s.
    let started = std::time::Instant::now();
    let run = kiln.run(&[], &args).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains(&format!("error: source: {}", advice(source.host()))), "{run}");
    assert!(started.elapsed() < Duration::from_millis(1500), "retried: {:?}", started.elapsed());

    // The source allowed through KILN_INSECURE_REGISTRIES, the target not: that target fails
    // with the same advice.
    let source_only = source.host();
    let run = kiln.run(&[("KILN_INSECURE_REGISTRIES", source_only.as_ref())], &args).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("FAILED") && run.stdout.contains(&advice(target.host())), "{run}");

    // Both, comma-separated: the copy goes through.
    let both = format!("{},{}", source.host(), target.host());
    let run = kiln.run(&[("KILN_INSECURE_REGISTRIES", both.as_ref())], &args).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains(&image.digest), "{run}");
}
