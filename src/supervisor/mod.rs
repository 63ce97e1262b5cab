//! Everything between an MCP call and a worker process: `process` builds and starts a
//! worker, `registry` holds records and the status state machine, `output` owns ring
//! buffers and transcripts, `manager` ties them together, `request` checks what callers
//! ask for before the manager acts, `view` is what callers see.

pub mod admission;
pub mod manager;
pub mod output;
pub mod process;
pub mod registry;
pub mod request;
pub mod view;

pub use manager::{Manager, ManagerError, ShutdownReport, WaitMode};
pub use registry::Status;
