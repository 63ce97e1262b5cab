//! bg-agents: the MCP server that supervises background agents, one worker process each.
//!
//! `supervisor` owns processes, records, output and their lifecycle; `mcp` translates
//! the MCP protocol to the supervisor and nothing else.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "bg-agents is Linux-only: it starts agents with clone(2), ties them to the server with \
     prctl(PR_SET_PDEATHSIG), limits them with rlimits and process groups, and keeps \
     notices in $XDG_RUNTIME_DIR as Linux has them. Build and run it on Linux (on Windows, \
     inside WSL 2)."
);

pub mod mcp;
pub mod notices;
pub mod supervisor;
