//! bg-agent-worker: one background agent per process.
//!
//! The library half holds what the bg-agents server and a manual run must agree on —
//! the wire protocol, the configuration, tier and role resolution — plus the provider
//! clients, the agent loop and the read-only tools the worker runs.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "bg-agent-worker is Linux-only, like the bg-agents server that starts it (clone, \
     PR_SET_PDEATHSIG, rlimits and the kernel sandbox as Linux has them). Build and run it \
     on Linux (on Windows, inside WSL 2)."
);

pub mod agent;
pub mod config;
pub mod protocol;
pub mod provider;
pub mod resolve;
pub mod roles;
pub mod routing;
pub mod sandbox;
pub mod tools;
