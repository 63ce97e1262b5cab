//! Everything between an MCP call and a worker process: `process` builds and starts a
//! worker (its unsafe clone-and-exec in `process/clone_exec.rs`), `registry` holds
//! records, their state machine and the run slots, `outcome` says how an agent ended
//! (statuses, exit reasons, classification), `output` owns ring buffers, transcripts and
//! stderr tails (one file each under `output/`), `admission` paces starts per provider,
//! `manager` ties them together, `request` checks what callers ask for before the
//! manager acts, `view` is what callers see.

pub mod admission;
pub mod manager;
pub mod outcome;
pub mod output;
pub mod process;
pub mod registry;
pub mod request;
pub mod view;

pub use manager::{Manager, ManagerError, ShutdownReport, WaitMode};
pub use outcome::Status;
