//! Kiln's replication of built images to the cluster registries, apart from the rollouts that
//! follow it (rollouts.rs has the whole way from a push): what it remembers between copies.

use builder_api::config::ClusterConfig;
use builder_api::replication::replicate;

use crate::support::fixtures::app_spec;
use crate::support::kiln::{test_config, TestKiln};
use crate::support::oci_images::{random_bytes, ImagePusher, TestImage};
use crate::support::registry::TestRegistry;

/// A build of `app` that succeeded with `image` (already in the source registry).
async fn succeeded_build(kiln: &TestKiln, app: &str, source: &TestRegistry, repo: &str, image: &TestImage) -> i64 {
    kiln.succeeded_build("team", app, &format!("{}/{repo}@{}", source.host(), image.digest)).await
}

#[tokio::test]
async fn after_a_restart_a_new_apps_copy_mounts_the_base_layer_an_earlier_copy_sent() {
    let (source, east) = (TestRegistry::start().await, TestRegistry::start().await);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), &[&source.host(), &east.host()]);
    config.clusters = vec![ClusterConfig { name: "east".into(), registry: east.host(), ..Default::default() }];
    let data_dir = config.store.data_dir.clone();
    let kiln = TestKiln::start_with(dir, config.clone()).await;
    let token = kiln.tenant("team").await;
    for app in ["app-a", "app-b"] {
        kiln.app(&token, app_spec(app, "http://git.invalid/team/x.git", &format!("team/{app}"), &format!("{}/team/{app}", source.host()), "hook-secret-replication")).await;
    }
    let base = random_bytes(2 << 20);
    let pusher = ImagePusher::new(&source.host());
    let image_a = pusher.push_image("team/app-a", None, &[&base, &random_bytes(100_000)], "linux", "amd64").await;
    let image_b = pusher.push_image("team/app-b", None, &[&base, &random_bytes(200_000)], "linux", "amd64").await;

    let a = succeeded_build(&kiln, "app-a", &source, "team/app-a", &image_a).await;
    let synced = replicate(&kiln.ctx, a).await.unwrap();
    assert_eq!((synced[0].state.as_str(), synced[0].blobs_sent, synced[0].bytes_sent as u64), ("Verified", 3, image_a.blob_bytes()), "{synced:?}");

    // A new process on the same data directory: nothing in memory from the first copy.
    let restarted = builder_api::server::build_context_with(config, None).await.unwrap();
    assert_eq!(restarted.config.store.data_dir, data_dir);
    let b = succeeded_build(&kiln, "app-b", &source, "team/app-b", &image_b).await;
    let synced = replicate(&restarted, b).await.unwrap();
    let s = &synced[0];
    assert_eq!(s.state, "Verified", "{s:?}");
    // The base layer was mounted from team/app-a; only app-b's config and own layer crossed.
    assert_eq!((s.blobs_mounted, s.blobs_sent), (1, 2), "{s:?}");
    assert_eq!(s.bytes_sent as u64, image_b.blob_bytes() - base.len() as u64, "{s:?}");
}
