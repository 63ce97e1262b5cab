//! The worker's integration tests, one binary: the real `bg-agent-worker` executable
//! against the provider double (from the workspace crate `support`, shared with the
//! server's tests), one area a module; `common` holds what needs the worker library.

// Test code: clippy.toml lets #[test] functions unwrap, expect and panic, and this lets
// the helpers beside them do the same (as codex-rs's tests/common does), so a helper that
// cannot do what its test asked stops that test with the message.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "integration tests: failing loudly is the point"
)]

mod common;

mod bash;
mod caching;
mod cli;
mod follow_up;
mod lifecycle;
mod local_servers;
mod provider_errors;
mod sandbox;
mod streaming;
mod structured;
mod tools;
