//! A running worker until it is reaped: feeding its stdin, its wall clock, carrying out
//! kills, its stderr, and the classification of its end.
//!
//! Not here: parsing its events (`ingest`), deciding to kill or cancel (`kill`), how an
//! end is classified (`outcome`).

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::supervisor::outcome::{EndFacts, ServerCause, classify, describe_end};
use crate::supervisor::output::Transcript;
use crate::supervisor::process::{self};
use crate::supervisor::record::AgentRecord;
use crate::supervisor::state::Control;

use super::Inner;
use super::ingest::count_cut_turn;

/// How long to wait for a worker's pipes to close after it was reaped.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// How long an ended agent waits for its transcript to be written before its end is told.
const TRANSCRIPT_CLOSE: Duration = Duration::from_secs(10);

/// The supervising task's ends of a running agent's channels (`AgentState::Running`
/// holds the senders).
pub(super) struct Supervised {
    /// A sender of its own control channel, for the stdout reader's output-limit stop.
    pub control_tx: mpsc::UnboundedSender<Control>,
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Follow-up lines for the worker's stdin.
    pub inbox: mpsc::UnboundedReceiver<String>,
}

impl Inner {
    /// Owns one running worker until it is reaped: feeds its stdin, reads its output,
    /// enforces the wall clock, carries out kills, then classifies its end. Its
    /// transcript already exists (`start` made it before the worker).
    pub(super) async fn supervise(
        self: Arc<Self>,
        id: String,
        mut child: process::Worker,
        spec_line: String,
        limits: bg_agent_worker::values::Limits,
        channels: Supervised,
    ) {
        let Supervised {
            control_tx,
            control,
            inbox,
        } = channels;
        let stdin_done = feed_stdin(&mut child, spec_line, inbox);
        let readers = self.read_pipes(&id, &mut child, control_tx);
        let timeout = Duration::from_secs(limits.timeout_seconds);
        let (status, cause) = self.until_reaped(&mut child, timeout, control).await;
        // `wait` already ended anything left in the group (workers do not fork, but a
        // test program might) before reaping; only a failed wait leaves that to do.
        if status.is_err() {
            process::signal_group(child.pid, Signal::SIGKILL);
        }
        let _ = stdin_done.send(());
        drain(&id, readers).await;
        self.close_transcript(&id).await;
        self.finish(&id, Reaped::of(&status), cause);
    }

    /// Starts the tasks that read the worker's stdout (events) and stderr.
    fn read_pipes(
        self: &Arc<Self>,
        id: &str,
        child: &mut process::Worker,
        control_tx: mpsc::UnboundedSender<Control>,
    ) -> [Option<JoinHandle<()>>; 2] {
        let out = child
            .stdout
            .take()
            .map(|s| tokio::spawn(Arc::clone(self).read_stdout(id.to_string(), s, control_tx)));
        let err = child
            .stderr
            .take()
            .map(|s| tokio::spawn(Arc::clone(self).read_stderr(id.to_string(), s)));
        [out, err]
    }

    /// Waits for the worker to be reaped while carrying out the wall clock (`timeout`)
    /// and the `control` requests; returns how it was reaped and why the server stopped
    /// it, if it did.
    async fn until_reaped(
        &self,
        child: &mut process::Worker,
        timeout: Duration,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> (std::io::Result<process::Exit>, Option<ServerCause>) {
        let pid = child.pid;
        let timeout = tokio::time::sleep(timeout);
        tokio::pin!(timeout);
        let mut stop = Stop::default();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                _ = &mut timeout, if stop.cause.is_none() => {
                    stop.request(pid, ServerCause::TimedOut, self.config.server.kill_grace_ms);
                }
                Some(c) = control.recv() => match c {
                    Control::Kill { grace_ms } => stop.request(pid, ServerCause::Killed, grace_ms),
                    Control::OutputLimit => stop.request(pid, ServerCause::OutputLimit, 0),
                },
                _ = tokio::time::sleep_until(stop.kill_at.unwrap_or(far)), if stop.kill_at.is_some() => {
                    process::signal_group(pid, Signal::SIGKILL);
                    stop.kill_at = None;
                }
            }
        };
        (status, stop.cause)
    }

    /// Waits until everything the agent wrote is on disk (or counted as lost), so its end
    /// is told after it; the writer thread does it, the runtime only waits for its word.
    async fn close_transcript(&self, id: &str) {
        let closing = self
            .lock()
            .get_mut(id)
            .and_then(|r| r.io.transcript.as_mut())
            .and_then(Transcript::close);
        if let Some(done) = closing
            && tokio::time::timeout(TRANSCRIPT_CLOSE, done).await.is_err()
        {
            tracing::warn!(agent = %id, "transcript still being written {TRANSCRIPT_CLOSE:?} after exit");
        }
    }

    /// Ends reaped agent `id` as `classify` says from how it was `reaped` and the
    /// server's `cause`, gives its slot back, and lets the queue move on.
    fn finish(self: &Arc<Self>, id: &str, reaped: Reaped, cause: Option<ServerCause>) {
        let evicted = {
            let mut reg = self.lock();
            reg.release_slot(id);
            self.admission().give_back(id);
            self.unreserve(id);
            let retain = self.config.server.retained_agents;
            match reg.get_mut(id) {
                Some(rec) if !rec.status().is_terminal() => {
                    let spent = self.end_reaped(rec, &reaped, cause);
                    self.tell_ended(rec);
                    let evicted = reg.note_ended(id, retain);
                    if spent {
                        self.cancel_queued_for_session(&mut reg);
                    }
                    evicted
                }
                _ => Vec::new(),
            }
        };
        drop(evicted);
        self.bump();
        self.start_next();
    }

    /// Ends running `rec` with its classified outcome, says why in its error, and lets
    /// go of what an ended agent no longer needs; true when the request it was cut off in
    /// spent the session's budget.
    fn end_reaped(
        &self,
        rec: &mut AgentRecord,
        reaped: &Reaped,
        cause: Option<ServerCause>,
    ) -> bool {
        // Cut off mid-request: the provider billed what it was sent.
        let spent = count_cut_turn(rec)
            .is_some_and(|before| self.add_to_session(&rec.id, &before, &rec.totals.usage));
        let facts = EndFacts {
            code: reaped.code,
            signal: reaped.signal,
            cause,
            limits: rec.limits,
            cpu_used: reaped.cpu_used,
            result_seen: rec.answer.result.is_some(),
            error_kind: rec.answer.error_kind,
            stderr_tail: rec.io.stderr.text(),
        };
        let (outcome, exit) = classify(&facts);
        let answer = &mut rec.answer;
        answer.error = describe_end(outcome, &exit, &rec.limits, answer.error.as_deref());
        if cause == Some(ServerCause::OutputLimit) && rec.io.overflow.is_some() {
            answer.error.clone_from(&rec.io.overflow);
        }
        let _ = rec.state.end(outcome, exit);
        let saved = rec.io.transcript.as_mut().is_some_and(|t| {
            drop(t.close());
            !t.over_cap() && t.dropped_bytes() == 0 && t.error().is_none()
        });
        rec.rounds.release(outcome, saved);
        rec.io.bump();
        spent
    }

    pub(super) async fn read_stderr(self: Arc<Self>, id: String, stderr: Receiver) {
        let push = |bytes: &[u8]| {
            if let Some(rec) = self.lock().get_mut(&id) {
                rec.io.stderr.push(bytes);
            }
        };
        while let Ok(Some(())) = process::read_pipe(&stderr, &push).await {}
    }
}

/// Writes the spec line to the worker's stdin, then the follow-ups from `inbox`, from a
/// task of its own (a large spec must not stall supervision). Stdin stays open until the
/// returned sender fires (the agent ended); its EOF tells the worker the server is gone.
fn feed_stdin(
    child: &mut process::Worker,
    spec_line: String,
    mut inbox: mpsc::UnboundedReceiver<String>,
) -> oneshot::Sender<()> {
    let (done_tx, mut done_rx) = oneshot::channel::<()>();
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let _ = stdin.write_all(spec_line.as_bytes()).await;
            loop {
                tokio::select! {
                    Some(line) = inbox.recv() => {
                        let _ = stdin.write_all(line.as_bytes()).await;
                    }
                    _ = &mut done_rx => break,
                }
            }
        });
    }
    done_tx
}

/// Waits (a while) for the pipe readers of a reaped worker to read what is left.
async fn drain(id: &str, readers: [Option<JoinHandle<()>>; 2]) {
    for task in readers.into_iter().flatten() {
        if tokio::time::timeout(PIPE_DRAIN, task).await.is_err() {
            tracing::warn!(agent = %id, "output pipe still open {PIPE_DRAIN:?} after exit");
        }
    }
}

/// How a worker was reaped, as far as is known (nothing when the wait failed).
struct Reaped {
    code: Option<i32>,
    signal: Option<i32>,
    cpu_used: Option<Duration>,
}

impl Reaped {
    fn of(status: &std::io::Result<process::Exit>) -> Reaped {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(exit) => Reaped {
                code: exit.status.code(),
                signal: exit.status.signal(),
                cpu_used: Some(exit.cpu),
            },
            Err(_) => Reaped {
                code: None,
                signal: None,
                cpu_used: None,
            },
        }
    }
}

/// Why the server is stopping a worker, and when its SIGKILL is due.
#[derive(Default)]
struct Stop {
    cause: Option<ServerCause>,
    kill_at: Option<tokio::time::Instant>,
}

impl Stop {
    /// The first request sends SIGTERM to `pid`'s group and sets SIGKILL `grace_ms`
    /// later; a second request may only shorten the grace.
    fn request(&mut self, pid: u32, why: ServerCause, grace_ms: u64) {
        if self.cause.is_none() {
            self.cause = Some(why);
            self.kill_at = Some(terminate(pid, grace_ms));
        } else {
            let at = tokio::time::Instant::now() + Duration::from_millis(grace_ms);
            self.kill_at = Some(self.kill_at.map_or(at, |k| k.min(at)));
        }
    }
}

/// SIGTERM to the group now; returns when SIGKILL is due.
fn terminate(pid: u32, grace_ms: u64) -> tokio::time::Instant {
    process::signal_group(pid, Signal::SIGTERM);
    tokio::time::Instant::now() + Duration::from_millis(grace_ms)
}
