//! Real parts for the tests: registries, git servers, the Kiln service itself.
#![allow(dead_code)]

pub mod git_server;
