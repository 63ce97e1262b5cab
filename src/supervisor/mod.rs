//! Everything between an MCP call and a worker process.

pub mod output;
