//! Stopping one agent: a queued one is cancelled (a follow-up round that never started is
//! dropped, and the agent is again the completed agent it was); a running one is told to
//! stop through its supervising task, which signals its process group; an ended one stays
//! as it is.
//!
//! Not here: the checks on a caller's kill (`request`), carrying out the signals and
//! classifying the end (`supervise`), stopping everything at shutdown (`shutdown`).

use std::time::Duration;

use crate::supervisor::outcome::{ExitReason, Outcome, Status};
use crate::supervisor::registry::Registry;
use crate::supervisor::state::Control;
use crate::supervisor::view::StatusView;

use super::{Inner, Manager, ManagerError, WaitMode};

/// How long a kill waits for its agent's end beyond the grace.
const KILL_SETTLE: Duration = Duration::from_secs(10);

impl Manager {
    /// Stops an agent: a queued one is cancelled; a running one gets SIGTERM to its group,
    /// SIGKILL after the grace; an ended one is reported as it is. Callers outside the
    /// supervisor use the checked door, `kill_agent`.
    pub(crate) async fn kill(
        &self,
        id: &str,
        grace_ms: Option<u64>,
    ) -> Result<StatusView, ManagerError> {
        let inner = &self.inner;
        let grace_ms = grace_ms
            .unwrap_or(inner.config.server.kill_grace_ms)
            .min(bg_agent_worker::config::KILL_GRACE_MAX_MS);
        {
            let mut reg = inner.lock();
            let rec = inner.get(&reg, id)?;
            match rec.status() {
                Status::Queued => {
                    inner.cancel_queued(
                        &mut reg,
                        id,
                        ExitReason::Cancelled,
                        "cancelled before it started",
                    );
                    drop(reg);
                    inner.bump();
                    return self.status(id);
                }
                Status::Running => {
                    if let Some(control) = rec.state.control() {
                        let _ = control.send(Control::Kill { grace_ms });
                    }
                }
                _ => return Ok(StatusView::of(rec)),
            }
        }
        let bound = Duration::from_millis(grace_ms) + KILL_SETTLE;
        let ids = [id.to_string()];
        self.wait(&ids, WaitMode::All, bound).await?;
        self.status(id)
    }
}

impl Inner {
    /// Cancels queued `id` for `reason` (`why` says it): a first run ends killed; a
    /// follow-up round that never started is dropped, and the agent is again the
    /// completed agent it was, with its answer.
    pub(super) fn cancel_queued(
        &self,
        reg: &mut Registry,
        id: &str,
        reason: ExitReason,
        why: &str,
    ) {
        let retain = self.config.server.retained_agents;
        if let Some(rec) = reg.get_mut(id)
            && rec.cancel_round()
        {
            rec.io.push_line(&format!(
                "[round {}: not started ({why}); the agent keeps its last answer]\n",
                rec.rounds.count + 1
            ));
            if let Some(t) = rec.io.transcript.as_mut() {
                drop(t.close());
            }
            rec.io.bump();
            self.tell_ended(rec);
            reg.unqueue(id);
            reg.note_ended(id, retain);
            return;
        }
        self.end_unstarted(reg, id, Outcome::Killed, reason, why.to_string());
    }
}
