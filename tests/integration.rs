//! The one integration test binary of the workspace. Each module is one area; `support` holds the
//! real parts the tests run against (docker-registry, git over HTTP, …).

mod git_clone;
mod support;
