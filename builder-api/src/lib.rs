//! Kiln: an in-cluster build service.
//!
//! Where things are, by file name:
//! - a webhook lands in [`hooks`] (`hooks/gitlab.rs`, `hooks/harbor.rs`),
//! - every HTTP route is listed in [`router`], each API route with the role it needs and its
//!   audit action; the role check ([`auth`]) and the audit log ([`audit`]) apply that table;
//!   handlers are grouped by resource in [`handlers`],
//! - a build's steps are planned in [`plan`], taken from the queue by the [`scheduler`] and run by
//!   an [`executor`],
//! - a log line is captured and followed in [`logs`] and kept by the [`store`],
//! - the commands that run inside build pods (`kiln step …`) are in [`steps`],
//! - the web page (builds list, build page with the live log) is in [`web`],
//! - a built image is copied to every cluster's registry in [`replication`] (the copy engine is
//!   `registry-sync`), and rolls out to subscribed Deployments in [`rollout`],
//! - APM agents (which one, its layer, its injection into an image) are in [`apm`],
//! - what the replicas on one PostgreSQL database tell each other is acted on in [`peers`]
//!   (sent by `store/signals.rs`; claims on running builds are `store/claims.rs`), and which of
//!   them runs the cluster-wide loops is elected in [`leadership`].
//!
//! Layers, top to bottom, each importing only itself and below (checked by
//! `tests/architecture.rs`): entry points ([`cli`], [`server`]) → HTTP ([`router`], [`handlers`],
//! [`hooks`], [`web`], [`auth`], [`audit`], [`error`]) → services ([`context`], [`scheduler`],
//! [`executor`], [`replication`], [`rollout`], [`steps`], [`apm`], [`logs`], [`gitlab_status`], [`peers`], [`leadership`]) → model and storage
//! ([`store`], [`plan`], [`config`]) → leaf utilities ([`validate`], [`branch_filter`],
//! [`ratelimit`], [`json_file`], [`failure_line`]).

pub mod apm;
pub mod audit;
pub mod auth;
pub mod branch_filter;
pub mod cli;
pub mod config;
pub mod context;
pub mod devtools;
pub mod error;
pub mod executor;
pub mod failure_line;
pub mod gitlab_status;
pub mod handlers;
pub mod hooks;
pub mod json_file;
pub mod leadership;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod peers;
pub mod plan;
pub mod ratelimit;
pub mod replication;
pub mod rollout;
pub mod router;
pub mod scheduler;
pub mod server;
pub mod steps;
pub mod store;
pub mod validate;
pub mod web;
