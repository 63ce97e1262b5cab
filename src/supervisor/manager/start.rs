//! Starting a queued agent: its transcript, its worker process, and the queue moving on
//! (FIFO per provider, under `max_concurrent`); a start out of descriptors waits queued.
//!
//! Not here: accepting a spawn (`spawn`), watching the running worker (`supervise`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bg_agent_worker::values::Limits;
use tokio::sync::mpsc;

use crate::supervisor::outcome::{ExitReason, Outcome};
use crate::supervisor::output::{OutputError, Transcript};
use crate::supervisor::process::{self, SpawnError};
use crate::supervisor::record::AgentRecord;
use crate::supervisor::state::{AgentState, Channels, Control};

use super::session::Grant;
use super::supervise::Supervised;
use super::{Inner, ManagerError};

/// How soon a start that ran out of file descriptors is tried again.
const FD_RETRY: Duration = Duration::from_millis(100);

impl Inner {
    /// Creates and attaches `id`'s transcript unless it has one (a follow-up round keeps
    /// its agent's, reopened). The only place a transcript is made: a queued agent holds
    /// no file descriptor. The file system call runs on a blocking thread.
    async fn attach_transcript(self: &Arc<Self>, id: &str) -> Result<(), ManagerError> {
        if self
            .lock()
            .get(id)
            .is_none_or(|r| r.io.transcript.is_some())
        {
            return Ok(());
        }
        let inner = Arc::clone(self);
        let owned = id.to_string();
        let made = super::file_job(move || inner.create_transcript(&owned))
            .await
            .map_err(|e| {
                ManagerError::Transcript(OutputError::TranscriptFile {
                    path: self.transcript_dir.clone(),
                    source: std::io::Error::other(e),
                })
            })??;
        if let Some(rec) = self.lock().get_mut(id) {
            rec.io.transcript = Some(made);
        }
        Ok(())
    }

    fn create_transcript(&self, id: &str) -> Result<Transcript, ManagerError> {
        Transcript::create(
            &self.transcript_dir,
            id,
            self.config.server.transcript_max_mb * 1024 * 1024,
        )
        .map_err(ManagerError::Transcript)
    }

    /// Starts the worker for queued record `id` and hands it to a supervising task.
    pub(super) async fn start(self: &Arc<Self>, id: &str, exe: &Path) -> Result<(), ManagerError> {
        let spec = {
            let reg = self.lock();
            match reg.get(id).map(|r| &r.state) {
                Some(AgentState::Queued { spec, .. }) => spec.clone(),
                _ => {
                    // Cancelled between dequeue and start: give the slot back.
                    drop(reg);
                    self.lock().release_slot(id);
                    self.admission().give_back(id);
                    self.unreserve(id);
                    self.start_next();
                    return Ok(());
                }
            }
        };
        if !spec.cwd.is_dir() {
            return Err(ManagerError::CwdGone {
                path: spec.cwd.clone(),
            });
        }
        // The transcript first: when descriptors run short, the agent goes back to the
        // queue before a worker exists.
        self.attach_transcript(id).await?;
        let line = serde_json::to_string(&spec).unwrap_or_default() + "\n";
        let plan = process::Plan::new(
            exe,
            &["--spec", "-"],
            process::worker_env(&spec.provider),
            &spec.cwd,
            &spec.limits,
        )
        .map_err(|source| SpawnError::Exec {
            path: exe.to_path_buf(),
            source,
        })?;
        let child = self.spawner.start(plan, exe).await?;
        let pid = child.pid;
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let channels = Channels {
            control: ctl_tx.clone(),
            inbox: inbox_tx,
        };
        let still_wanted = {
            let mut reg = self.lock();
            match reg.get_mut(id) {
                Some(rec) => {
                    let ok = rec.state.start(pid, channels).is_ok();
                    if ok {
                        rec.rounds.started();
                    }
                    ok
                }
                None => false,
            }
        };
        // Killed while it was being forked, or shutdown began meanwhile (shutdown stops
        // only the agents already running): end it at once.
        if !still_wanted || self.shutting_down.load(Ordering::SeqCst) {
            let _ = ctl_tx.send(Control::Kill { grace_ms: 0 });
        }
        tokio::spawn(Arc::clone(self).supervise(
            id.to_string(),
            child,
            line,
            spec.limits,
            Supervised {
                control_tx: ctl_tx,
                control: ctl_rx,
                inbox: inbox_rx,
            },
        ));
        self.bump();
        Ok(())
    }

    /// Starts queued agents while slots are free: the first in the queue whose provider
    /// admits it (FIFO per provider).
    pub(super) fn start_next(self: &Arc<Self>) {
        let now = Instant::now();
        let (ids, release) = {
            let mut reg = self.lock();
            let mut admission = self.admission();
            let mut spend = self.session();
            let mut ids = Vec::new();
            // Queued agents the session can never pay for, with why.
            let mut unpayable = Vec::new();
            while reg.running() < self.config.server.max_concurrent
                && !self.shutting_down.load(Ordering::SeqCst)
            {
                let mut granted = None;
                let admits = |r: &AgentRecord| {
                    let AgentState::Queued { spec, .. } = &r.state else {
                        return false;
                    };
                    if admission.blocked(&r.route.provider, now).is_some() {
                        return false;
                    }
                    match self.grant(&spend, spec) {
                        Grant::Start { limits, .. } => {
                            granted = Some(limits);
                            true
                        }
                        Grant::Spent(why) => {
                            if !unpayable.iter().any(|(id, _)| *id == r.id) {
                                unpayable.push((r.id.clone(), why));
                            }
                            false
                        }
                        Grant::Wait(_) => false,
                    }
                };
                let Some(id) = reg.admit_next(admits) else {
                    break;
                };
                if let (Some(rec), Some(limits)) = (reg.get_mut(&id), granted) {
                    admission.take(&id, &rec.route.provider);
                    if let AgentState::Queued { spec, .. } = &mut rec.state {
                        apply_grant(&mut rec.limits, &mut spec.limits, limits);
                        self.reserve(&mut spend, &id, spec);
                    }
                }
                ids.push(id);
            }
            drop(spend);
            for (id, why) in unpayable {
                let why = format!("cancelled before it started: {why}");
                self.cancel_queued(&mut reg, &id, ExitReason::SessionBudget, &why);
            }
            let waiting = reg.queued() > 0;
            (ids, admission.next_release(now).filter(|_| waiting))
        };
        if let Some(at) = release {
            self.schedule_release(at);
        }
        for id in ids {
            let inner = Arc::clone(self);
            tokio::spawn(async move {
                let started = match process::locate_worker(&inner.config.server.worker.path) {
                    Ok(exe) => inner.start(&id, &exe).await,
                    Err(e) => Err(e.into()),
                };
                match started {
                    Err(e) if out_of_descriptors(&e) => inner.requeue(&id, &e),
                    Err(e) => inner.fail_start(&id, e.to_string()),
                    Ok(()) => {}
                }
            });
        }
    }

    /// Puts `id` back at the head of the queue after its start ran out of descriptors
    /// (`e`), with the reason for status, and tries again shortly: ending agents free
    /// descriptors, and so may the rest of the system.
    pub(super) fn requeue(self: &Arc<Self>, id: &str, e: &ManagerError) {
        let transcript = {
            let mut reg = self.lock();
            reg.release_slot(id);
            self.unreserve(id);
            let Some(rec) = reg.get_mut(id) else {
                return;
            };
            let AgentState::Queued { waiting_for, .. } = &mut rec.state else {
                return;
            };
            *waiting_for = Some(format!(
                "file descriptors: the server is at its open-file limit ({e}); the agent starts when others end and free some"
            ));
            let transcript = rec.io.transcript.take();
            reg.requeue_front(id);
            transcript
        };
        // Made again (new) at the next start.
        if let Some(t) = transcript {
            let _ = std::fs::remove_file(t.path());
        }
        if self.fd_shortage.begins(Instant::now()) {
            tracing::warn!(
                agent = %id,
                "out of file descriptors ({e}): agents wait queued and start as others end and free some (said once until it has not happened for {} s; agent_status says why an agent waits)",
                crate::episode::QUIET.as_secs()
            );
        }
        self.bump();
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(FD_RETRY).await;
            inner.start_next();
        });
    }

    /// Tries the queue again when a provider's hold ends (one wake-up pending at a time).
    pub(super) fn schedule_release(self: &Arc<Self>, at: Instant) {
        if self.release_scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            inner.release_scheduled.store(false, Ordering::SeqCst);
            inner.start_next();
        });
    }

    pub(super) fn fail_start(self: &Arc<Self>, id: &str, message: String) {
        {
            let mut reg = self.lock();
            reg.release_slot(id);
            self.admission().give_back(id);
            self.unreserve(id);
            let error = format!("could not start: {message}");
            self.end_unstarted(
                &mut reg,
                id,
                Outcome::Failed,
                ExitReason::SpawnFailed,
                error,
            );
        }
        self.bump();
        self.start_next();
    }
}

/// Lowers a starting round's `spec` limits to what the session `granted`, and the
/// agent's own `limits` (over all its rounds) by as much.
fn apply_grant(limits: &mut Limits, spec: &mut Limits, granted: Limits) {
    limits.budget_usd -= spec.budget_usd - granted.budget_usd;
    limits.max_total_tokens = limits.max_total_tokens.saturating_sub(
        spec.max_total_tokens
            .saturating_sub(granted.max_total_tokens),
    );
    *spec = granted;
}

/// Whether `e` is the process (or the system) running out of file descriptors.
pub(super) fn out_of_descriptors(e: &ManagerError) -> bool {
    let io = match e {
        ManagerError::Spawn(SpawnError::Exec { source, .. }) => source,
        ManagerError::Transcript(
            OutputError::TranscriptFile { source, .. } | OutputError::TranscriptDir { source, .. },
        ) => source,
        _ => return false,
    };
    matches!(
        io.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    )
}
