//! The one integration test binary of the workspace. Each module is one area; `support` holds the
//! real parts the tests run against (docker-registry, git over HTTP, the Kiln service itself).

mod fake_kube;
mod git_clone;
mod support;
mod api;
mod builds;
mod lifecycle;
mod registry_assemble;
mod webhooks;
