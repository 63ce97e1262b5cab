//! The worker's integration tests, one binary: the real `bg-agent-worker` executable
//! against the provider double (from the workspace crate `support`, shared with the
//! server's tests), one area a module; `common` holds what needs the worker library.

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
