//! A running worker until it is reaped: feeding its stdin, its wall clock, kills and
//! cancels, its stderr, and the classification of its end.
//!
//! Not here: parsing its events (`ingest`), how an end is classified (`outcome`).

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::mpsc;

use crate::supervisor::outcome::{
    EndFacts, ExitReason, Outcome, ServerCause, Status, classify, describe_end,
};
use crate::supervisor::output::Transcript;
use crate::supervisor::process::{self};
use crate::supervisor::registry::{AgentRecord, Control, Registry, Reopened};
use crate::supervisor::view::StatusView;

use super::ingest::count_cut_turn;
use super::{Inner, Manager, ManagerError, WaitMode};

/// How long to wait for a worker's pipes to close after it was reaped.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// How long an ended agent waits for its transcript to be written before its end is told.
const TRANSCRIPT_CLOSE: Duration = Duration::from_secs(10);

impl Manager {
    /// Stops an agent: a queued one is cancelled; a running one gets SIGTERM to its group,
    /// SIGKILL after the grace; an ended one is reported as it is.
    pub async fn kill(&self, id: &str, grace_ms: Option<u64>) -> Result<StatusView, ManagerError> {
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
                    if let Some(c) = &rec.control {
                        let _ = c.send(Control::Kill { grace_ms });
                    }
                }
                _ => return Ok(StatusView::of(rec)),
            }
        }
        let bound = Duration::from_millis(grace_ms) + Duration::from_secs(10);
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
            && let Some(before) = rec.reopened.take()
        {
            let Reopened {
                end,
                limits,
                result,
                stop_reason,
                prior_usage,
                prior_turns,
            } = *before;
            if rec.state.restore(end).is_ok() {
                rec.limits = limits;
                rec.result = result;
                rec.stop_reason = stop_reason;
                rec.prior_usage = prior_usage;
                rec.prior_turns = prior_turns;
                rec.waiting_for = None;
                let nl = if rec.mid_line { "\n" } else { "" };
                rec.output.push(&format!(
                    "{nl}[round {}: not started ({why}); the agent keeps its last answer]\n",
                    rec.rounds
                ));
                rec.mid_line = false;
                rec.rounds -= 1;
                if let Some(t) = rec.transcript.as_mut() {
                    drop(t.close());
                }
                rec.output_seq.send_modify(|v| *v += 1);
                self.tell_ended(rec);
                reg.unqueue(id);
                reg.note_ended(id, retain);
                return;
            }
        }
        self.end_unstarted(reg, id, Outcome::Killed, reason, why.to_string());
    }

    /// Owns one running worker until it is reaped: feeds its stdin, reads its output,
    /// enforces the wall clock, carries out kills, then classifies its end.
    pub(super) async fn supervise(
        self: Arc<Self>,
        id: String,
        mut child: process::Worker,
        spec_line: String,
        limits: bg_agent_worker::values::Limits,
        ctl_tx: mpsc::UnboundedSender<Control>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let pid = child.pid;
        // A fresh spawn's transcript is created here, before any output is read (the
        // worker's first lines wait in the pipe), so the spawn call does not wait on
        // the file system. The directory was checked at spawn; should it fail anyway,
        // the agent is stopped: its output could not be kept.
        let transcript_failed = self.attach_transcript(&id).await.err();
        let (stdin_done_tx, mut stdin_done_rx) = tokio::sync::oneshot::channel::<()>();
        let (inbox_tx, mut inbox_rx) = mpsc::unbounded_channel::<String>();
        if let Some(rec) = self.lock().get_mut(&id) {
            rec.inbox = Some(inbox_tx);
        }
        if let Some(mut stdin) = child.stdin.take() {
            // Written from its own task: a large spec must not stall supervision. Stdin then
            // stays open until the agent ends (follow-ups are written to it); its EOF tells
            // the worker the server is gone.
            tokio::spawn(async move {
                let _ = stdin.write_all(spec_line.as_bytes()).await;
                loop {
                    tokio::select! {
                        Some(line) = inbox_rx.recv() => {
                            let _ = stdin.write_all(line.as_bytes()).await;
                        }
                        _ = &mut stdin_done_rx => break,
                    }
                }
            });
        }
        let out_task = child
            .stdout
            .take()
            .map(|s| tokio::spawn(Arc::clone(&self).read_stdout(id.clone(), s, ctl_tx)));
        let err_task = child
            .stderr
            .take()
            .map(|s| tokio::spawn(Arc::clone(&self).read_stderr(id.clone(), s)));

        let timeout = tokio::time::sleep(Duration::from_secs(limits.timeout_seconds));
        tokio::pin!(timeout);
        let mut cause: Option<ServerCause> = None;
        let mut kill_at: Option<tokio::time::Instant> = None;
        if let Some(e) = transcript_failed {
            if let Some(rec) = self.lock().get_mut(&id) {
                rec.error = Some(e.to_string());
            }
            cause = Some(ServerCause::NoTranscript);
            kill_at = Some(terminate(pid, 0));
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                _ = &mut timeout, if cause.is_none() => {
                    cause = Some(ServerCause::TimedOut);
                    kill_at = Some(terminate(pid, self.config.server.kill_grace_ms));
                }
                Some(c) = control.recv() => {
                    let (why, grace) = match c {
                        Control::Kill { grace_ms } => (ServerCause::Killed, grace_ms),
                        Control::OutputLimit => (ServerCause::OutputLimit, 0),
                    };
                    if cause.is_none() {
                        cause = Some(why);
                        kill_at = Some(terminate(pid, grace));
                    } else {
                        // A second request may only shorten the grace.
                        let at = tokio::time::Instant::now() + Duration::from_millis(grace);
                        kill_at = Some(kill_at.map_or(at, |k| k.min(at)));
                    }
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    process::signal_group(pid, Signal::SIGKILL);
                    kill_at = None;
                }
            }
        };
        // `wait` already ended anything left in the group (workers do not fork, but a
        // test program might) before reaping; only a failed wait leaves that to do.
        if status.is_err() {
            process::signal_group(pid, Signal::SIGKILL);
        }
        let _ = stdin_done_tx.send(());
        for task in [out_task, err_task].into_iter().flatten() {
            if tokio::time::timeout(PIPE_DRAIN, task).await.is_err() {
                tracing::warn!(agent = %id, "output pipe still open {PIPE_DRAIN:?} after exit");
            }
        }
        // Everything the agent wrote is on disk (or counted as lost) before its end is
        // told; the writer thread does it, the runtime only waits for its word.
        let closing = self
            .lock()
            .get_mut(&id)
            .and_then(|r| r.transcript.as_mut())
            .and_then(Transcript::close);
        if let Some(done) = closing
            && tokio::time::timeout(TRANSCRIPT_CLOSE, done).await.is_err()
        {
            tracing::warn!(agent = %id, "transcript still being written {TRANSCRIPT_CLOSE:?} after exit");
        }
        let (code, signal, cpu_used) = match &status {
            Ok(exit) => {
                use std::os::unix::process::ExitStatusExt;
                (exit.status.code(), exit.status.signal(), Some(exit.cpu))
            }
            Err(_) => (None, None, None),
        };
        self.finish(&id, code, signal, cause, cpu_used);
    }

    pub(super) fn finish(
        self: &Arc<Self>,
        id: &str,
        code: Option<i32>,
        signal: Option<i32>,
        cause: Option<ServerCause>,
        cpu_used: Option<Duration>,
    ) {
        let mut spent = false;
        let evicted = {
            let mut reg = self.lock();
            reg.release_slot(id);
            self.admission().give_back(id);
            self.unreserve(id);
            let retain = self.config.server.retained_agents;
            let evicted = match reg.get_mut(id) {
                Some(rec) if !rec.status().is_terminal() => {
                    // Cut off mid-request: the provider billed what it was sent.
                    if let Some(before) = count_cut_turn(rec) {
                        spent |= self.add_to_session(id, &before, &rec.usage);
                    }
                    let facts = EndFacts {
                        code,
                        signal,
                        cause,
                        limits: rec.limits,
                        cpu_used,
                        result_seen: rec.result.is_some(),
                        error_kind: rec.error_kind,
                        stderr_tail: rec.stderr.text(),
                    };
                    let (outcome, exit) = classify(&facts);
                    rec.error = describe_end(outcome, &exit, &rec.limits, rec.error.as_deref());
                    if cause == Some(ServerCause::OutputLimit) && rec.overflow.is_some() {
                        rec.error.clone_from(&rec.overflow);
                    }
                    let _ = rec.state.end(outcome, exit);
                    rec.control = None;
                    rec.inbox = None;
                    if let Some(t) = rec.transcript.as_mut() {
                        drop(t.close());
                    }
                    release_conversation(rec, outcome);
                    rec.output_seq.send_modify(|v| *v += 1);
                    self.tell_ended(rec);
                    reg.note_ended(id, retain)
                }
                _ => Vec::new(),
            };
            if spent {
                self.cancel_queued_for_session(&mut reg);
            }
            evicted
        };
        drop(evicted);
        self.bump();
        self.start_next();
    }

    pub(super) async fn read_stderr(self: Arc<Self>, id: String, stderr: Receiver) {
        let push = |bytes: &[u8]| {
            if let Some(rec) = self.lock().get_mut(&id) {
                rec.stderr.push(bytes);
            }
        };
        while let Ok(Some(())) = process::read_pipe(&stderr, &push).await {}
    }
}

/// What an ended agent no longer needs in memory: its round's task and history (a next
/// round gets new ones), and its conversation, which only a completed agent continues,
/// from its transcript when that holds all of it (kept in memory when it does not).
fn release_conversation(rec: &mut AgentRecord, outcome: Outcome) {
    rec.round_spec.task = String::new();
    rec.round_spec.history = Vec::new();
    let saved = rec
        .transcript
        .as_ref()
        .is_some_and(|t| !t.over_cap() && t.dropped_bytes() == 0 && t.error().is_none());
    if outcome != Outcome::Completed || saved {
        rec.conversation_saved = outcome == Outcome::Completed && !rec.conversation.is_empty();
        rec.conversation = Vec::new();
    }
}

/// SIGTERM to the group now; returns when SIGKILL is due.
fn terminate(pid: u32, grace_ms: u64) -> tokio::time::Instant {
    process::signal_group(pid, Signal::SIGTERM);
    tokio::time::Instant::now() + Duration::from_millis(grace_ms)
}
