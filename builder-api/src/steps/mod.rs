//! The commands that run inside a build pod (or as host processes under the local executor):
//! `kiln step clone`, `kiln step assemble`, … Each reads its inputs from env vars and argv, never
//! from templated text, and writes progress to stdout, which becomes the build log.

pub mod clone;
