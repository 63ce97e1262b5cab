//! bg-agents: the MCP server that supervises background agents, one worker process each.
//!
//! `supervisor` owns processes, records, output and their lifecycle; `mcp` translates
//! the MCP protocol to the supervisor and nothing else.

pub mod mcp;
pub mod supervisor;
