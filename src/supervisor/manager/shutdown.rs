//! Ending every agent when the server stops, and the last guard when a manager is
//! dropped without it: no worker outlives its manager.
//!
//! Not here: the kill of one agent (`supervise`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::supervisor::outcome::ExitReason;
use crate::supervisor::process::{self};
use crate::supervisor::state::{AgentState, Control};
use crate::supervisor::view::ShutdownReport;

use super::Manager;

impl Manager {
    /// Stops every agent (TERM, grace, KILL), cancels the queue, reaps everything, and
    /// removes the transcripts unless they are kept.
    pub async fn shutdown(&self) -> ShutdownReport {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        let grace = inner.config.server.kill_grace_ms;
        let mut report = ShutdownReport::default();
        let mut rx = inner.changed.subscribe();
        let pids: Vec<u32> = {
            let mut reg = inner.lock();
            let mut pids = Vec::new();
            // Counted before the queue is cancelled, so a cancelled agent is not also
            // counted as one that had already ended.

            for rec in reg.records() {
                match &rec.state {
                    AgentState::Running { pid, control, .. } => {
                        report.killed += 1;
                        pids.push(*pid);
                        let _ = control.send(Control::Kill { grace_ms: grace });
                    }
                    AgentState::Ended { .. } => report.already_ended += 1,
                    AgentState::Queued { .. } => {}
                }
            }
            let queued: Vec<String> = reg.queued_ids();
            for id in &queued {
                inner.cancel_queued(
                    &mut reg,
                    id,
                    ExitReason::Cancelled,
                    "cancelled before it started",
                );
            }
            report.cancelled = queued.len();
            pids
        };
        inner.bump();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(grace) + Duration::from_secs(5);
        while inner.lock().running() > 0 {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Whatever is left (a supervising task that could not finish) gets SIGKILL.
        for &pid in &pids {
            process::signal_group(pid, Signal::SIGKILL);
        }
        report.survivors = pids.iter().filter(|&&p| process::group_alive(p)).count();
        if !inner.config.server.keep_transcripts {
            let _ = std::fs::remove_dir_all(&inner.transcript_dir);
        }
        report
    }
}

impl Drop for Manager {
    /// A last guard: no worker outlives its manager, even without `shutdown`.
    fn drop(&mut self) {
        if let Ok(reg) = self.inner.registry.lock() {
            for rec in reg.records() {
                if let AgentState::Running { pid, .. } = rec.state {
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
        }
    }
}
