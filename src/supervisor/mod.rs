//! Everything between an MCP call and a worker process. One concept a file:
//! - `manager` — the facade the MCP layer calls ([`Manager`]) and the state its tasks
//!   share; under `manager/`: `spawn` (accept a spawn), `start` (start a queued agent),
//!   `supervise` (a running worker until reaped), `kill` (kill and cancel), `send`
//!   (follow-ups and their rounds), `ingest` (worker events into records), `session`
//!   (session spending), `wait` (waits without polling), `query` (reading records),
//!   `shutdown`;
//! - `request` — the public door of each verb (`spawn_agent`, `kill_agent`,
//!   `wait_agents`, …): checks what callers ask for, then calls the manager's raw verb,
//!   which is crate-private;
//! - `admission` — per-provider caps and holds on starts;
//! - `process` — builds and starts a worker and awaits it; its unsafe clone-and-exec is
//!   in `process/clone_exec.rs`;
//! - `state` — an agent's lifecycle, with what exists only while it runs in `Running`;
//! - `record` — an agent's record: its parts (meta, route, totals, answer, io, rounds);
//! - `registry` — the records by id, the queue, the run slots, the ended order;
//! - `outcome` — statuses, terminal outcomes, exit reasons, classification of an end;
//! - `output` — ring buffer (`output/ring.rs`), filter, transcript, stderr tail;
//! - `view` — what callers see, every snapshot from spawn to shutdown report.

pub mod admission;
pub mod manager;
pub mod outcome;
pub mod output;
pub mod process;
pub mod record;
pub mod registry;
pub mod request;
pub mod state;
pub mod view;

pub use manager::{Manager, ManagerError, OutputQuery, WaitMode};
pub use outcome::{ExitReason, Status};
pub use view::{
    AgentMark, EndedAgent, ListRow, ListView, LiveAgent, OutputPage, Sent, SessionView,
    ShutdownReport, SpawnView, StatusView, WaitView,
};
