//! bg-agent-worker: one background agent per process.
//!
//! The library half holds what the bg-agents server and a manual run must agree on —
//! the wire protocol, the configuration, tier and role resolution — plus the provider
//! clients, the agent loop and the read-only tools the worker runs.
//!
//! Modules depend on each other in one direction only (an arrow: "uses"); `values` is the
//! leaf that the wire and the configuration share, so neither needs the other:
//!
//! ```text
//! agent ───► sandbox, tools, provider, protocol, structured
//! tools ───► command_sandbox ─► values
//! resolve ─► roles, routing, config, tools, provider, protocol, values
//! roles ───► routing ─► config ─────────────────────┐
//! tools ───► provider ─► protocol ──────────────────┼─► values (the leaf)
//! sandbox ─► protocol ──────────────────────────────┘
//! resume ──► protocol
//! ```
//!
//! - `values`: limits (their fields written once), prices and token counts, provider
//!   kinds, tiers, task types, tool names, the sandbox mode. Uses nothing of the crate.
//! - `protocol`: the wire (`TaskSpec`, `Event`, exit codes) and the transcript's lines
//!   (`TranscriptLine`), which `resume` reads back for `--resume`; `config`: `limits.toml`'s
//!   schema, loading and validation. Each uses `values` only (`config` also `structured`,
//!   to check a role's `output_schema`).
//! - `structured`: a spawn's `output_schema` checked, adapted to each API's subset, and
//!   the answers validated against it. Uses nothing of the crate; `config`, `resolve`,
//!   `provider` and `agent` use it.
//! - `routing` (task type → tier → model) and `roles` (the agent selector) read a `Config`;
//!   `resolve` ties them into a `TaskSpec` (`resolve::resolve`), for the server and for a
//!   manual run alike; `suggest` says "did you mean" for a misspelt provider or model.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "bg-agent-worker is Linux-only, like the bg-agents server that starts it (clone, \
     PR_SET_PDEATHSIG, rlimits and the kernel sandbox as Linux has them). Build and run it \
     on Linux (on Windows, inside WSL 2)."
);

pub mod agent;
pub mod command_sandbox;
pub mod config;
pub mod protocol;
pub mod provider;
pub mod resolve;
pub mod resume;
pub mod roles;
pub mod routing;
pub mod sandbox;
pub mod structured;
pub mod suggest;
pub mod tools;
pub mod values;
