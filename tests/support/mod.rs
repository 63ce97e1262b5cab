//! Helpers shared by the integration tests.

pub mod claude;
pub mod mcp;
pub mod provider;
pub mod supervisor;
