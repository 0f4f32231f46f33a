//! The one integration test binary of the workspace. Each module is one area; `support` holds the
//! real parts the tests run against (docker-registry, git over HTTP, the Kiln service itself).

mod fake_kube;
mod fuzz;
mod hostile_input;
mod git_clone;
mod gitlab_status;
mod notifications;
mod job_templates;
mod kube_builds;
mod kube_contract;
mod kube_cluster;
mod support;
mod api;
mod app_changes;
mod architecture;
mod apm;
mod builds;
mod cli;
mod deploy_manifests;
mod isolation;
mod jvm_sizing;
mod lifecycle;
mod log_streaming;
mod metrics;
mod namespace_provisioning;
mod queueing;
mod rbac_rules;
mod registry_assemble;
mod registry_copy;
mod replication;
mod rollouts;
mod secrets_at_rest;
mod store_backends;
mod tenant_settings;
mod web_page;
mod webhooks;
