//! The server's integration tests, one binary: each module is one area, driven through
//! the real `bg-agents` binary (and Claude Code) against the provider double. Helpers
//! come from the workspace crate `support` (tests/support), shared with the worker's
//! tests.
//!
//! tests/supervisor.rs is a binary of its own: it drives the library's `Manager` in
//! this process and counts this process's children and descriptors, which the servers
//! and clients of these tests would disturb.

// Test code: clippy.toml lets #[test] functions unwrap, expect and panic, and this lets
// the helpers beside them do the same (as codex-rs's tests/common does), so a helper that
// cannot do what its test asked stops that test with the message.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "integration tests: failing loudly is the point"
)]

mod agent_send;
mod claude_code;
mod claude_tui;
mod cli;
mod fake_provider;
mod faults;
mod first_hour;
mod hardening;
mod inspector;
mod mcp;
mod mcp_bash;
mod mcp_errors;
mod mcp_processes;
mod mcp_protocol;
mod mcp_replies;
mod mcp_tasks;
mod notices;
mod opencode;
mod providers;
mod session_budget;
mod stress;
mod structured;
mod tools_list;
