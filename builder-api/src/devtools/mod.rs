//! Tools for trying Kiln without a GitLab: `kiln dev git-server` serves bare repositories over
//! smart HTTP (through `git http-backend`) with an optional token, like GitLab does. The demo and
//! the integration tests use it as their real git server.

pub mod git_http;
