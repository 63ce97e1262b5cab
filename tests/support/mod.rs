//! Helpers shared by the integration tests.

pub mod provider;
pub mod mcp;
