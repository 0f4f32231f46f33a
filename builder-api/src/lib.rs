//! Kiln: an in-cluster build service.
//!
//! Where things are, by file name:
//! - a webhook lands in [`hooks`] (`hooks/gitlab.rs`),
//! - every HTTP route is listed in [`router`],
//! - a build's steps are planned in [`plan`] and run by an [`executor`],
//! - a log line is captured in [`logs`] and kept by the [`store`],
//! - the commands that run inside build pods (`kiln step …`) are in [`steps`].

pub mod steps;
