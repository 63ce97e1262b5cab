//! What the integration tests of both packages share: the provider double (the only test
//! double), the MCP session harness around the real `bg-agents` binary, the Claude Code
//! and opencode CLI runners (installed with `npm`), and process helpers (a cleared
//! environment, liveness, the built binaries).
//!
//! Both packages take this crate as the dev-dependency `support`, so a test reads
//! `use support::provider::Step;`. It cannot depend on either package (that would
//! compile it twice): helpers that need the `bg-agents` or `bg-agent-worker` library stay
//! in that package's test binary.

// Test code, as in codex-rs's core/tests/common: a helper that cannot do what a test
// asked for stops that test where it failed, with the message.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "test support: failing loudly is the point"
)]

pub mod claude;
pub mod mcp;
pub mod npm;
pub mod opencode;
pub mod process;
pub mod provider;
pub mod schemas;
mod skip;
pub mod tui;

pub use skip::{NO_SKIPS, skip};
