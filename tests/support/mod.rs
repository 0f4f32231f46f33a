//! Real parts for the tests: registries, git servers, the Kiln service itself, headless Chromium.
#![allow(dead_code)]

pub mod browser;
pub mod chat_robots;
pub mod fake_kube;
pub mod fixtures;
pub mod git_server;
pub mod gitlab_api;
pub mod hostile;
pub mod hostile_registry;
pub mod kiln;
pub mod metrics;
pub mod oci_images;
pub mod postgres;
pub mod recording;
pub mod registry;
pub mod registry_proxy;
pub mod secrets;
pub mod serve_process;
pub mod token_service;

/// Once per test process: the TLS crypto provider (one for the whole workspace: ring), and the
/// capture of every tracing event for the secrets scan.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    secrets::install_tracing_capture();
    secrets::register(kiln::ADMIN);
}
