//! Accepting a spawn: resolve the request, check the limits, the key and the transcript
//! directory, admit it now or queue it, make its record.
//!
//! Not here: starting the worker (`start`), resolving roles and routes (the worker library).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bg_agent_worker::config::{Config, effective_base_url};
use bg_agent_worker::protocol::TaskSpec;
use bg_agent_worker::resolve::{Resolution, SpawnRequest, missing_key, resolve};

use crate::supervisor::outcome::Status;
use crate::supervisor::output::OutputError;
use crate::supervisor::process::{self, SpawnError};
use crate::supervisor::record::AgentRecord;
use crate::supervisor::request::check_workspace;
use crate::supervisor::view::SpawnView;

use super::session::Grant;
use super::{Inner, Manager, ManagerError, out_of_descriptors};

impl Manager {
    /// Starts an agent now, or queues it when `max_concurrent` are running. Callers
    /// outside the supervisor use the checked door, `spawn_agent`.
    pub(crate) async fn spawn(
        &self,
        req: SpawnRequest,
        label: Option<String>,
    ) -> Result<SpawnView, ManagerError> {
        let inner = &self.inner;
        inner.accepting()?;
        let resolution = resolve(&inner.config, &req)?;
        check_runnable(&inner.config, &resolution.spec)?;
        let exe = process::locate_worker(&inner.config.server.worker.path)?;
        inner.check_transcript_dir_off_thread().await?;
        let (id, mut view) = inner.admit(resolution, label)?;
        if view.status == Status::Running {
            inner.start_admitted(&id, &exe, &mut view).await?;
        }
        inner.bump();
        Ok(view)
    }
}

/// Refuses a spawn whose worker could only fail: outside the workspace roots, without
/// its provider's key, with an endpoint override it cannot use, or with limits above the
/// hard ones.
fn check_runnable(config: &Config, spec: &TaskSpec) -> Result<(), ManagerError> {
    check_workspace(&spec.cwd, &config.server.workspace_roots)?;
    // The worker gets the key from the server's environment (`process::worker_env`):
    // without it the agent could only fail later, so the spawn fails now.
    if let Some(var) = missing_key(&spec.provider, |v| std::env::var_os(v)) {
        return Err(ManagerError::MissingKey {
            var: var.to_string(),
            provider: spec.provider.name.clone(),
        });
    }
    let p = &spec.provider;
    effective_base_url(&p.name, &p.base_url, p.base_url_env.as_deref(), |v| {
        std::env::var(v).ok()
    })?;
    if let Some((key, value, max, resource)) = process::first_above_hard_limits(&spec.limits) {
        return Err(SpawnError::AboveHardLimit {
            key,
            value,
            max,
            resource,
        }
        .into());
    }
    Ok(())
}

impl Inner {
    /// Refuses every spawn while the server shuts down or the session's budget is spent.
    fn accepting(&self) -> Result<(), ManagerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ManagerError::ShuttingDown);
        }
        if let Some(why) = self.session().exhausted.clone() {
            return Err(ManagerError::SessionBudget(why));
        }
        Ok(())
    }

    /// `check_transcript_dir` on a blocking thread: the file system may be slow.
    async fn check_transcript_dir_off_thread(self: &Arc<Self>) -> Result<(), ManagerError> {
        let checker = Arc::clone(self);
        super::file_job(move || checker.check_transcript_dir())
            .await
            .map_err(|e| {
                ManagerError::Transcript(OutputError::TranscriptDir {
                    path: self.transcript_dir.clone(),
                    source: std::io::Error::other(e),
                })
            })?
    }

    /// Makes the record of a resolved spawn and admits it: a run slot now (the view says
    /// `running`; the session's grant may lower its limits) or a place in the queue
    /// (`queued`, with why). Nothing changes on an error.
    fn admit(
        &self,
        mut resolution: Resolution,
        label: Option<String>,
    ) -> Result<(String, SpawnView), ManagerError> {
        let server = &self.config.server;
        let mut reg = self.lock();
        // FIFO per provider: nobody overtakes a queued agent of the same provider.
        let provider = &resolution.route.provider;
        let mut admission = self.admission();
        let mut start_now = reg.running() < server.max_concurrent
            && admission.blocked(provider, Instant::now()).is_none()
            && !reg.queues_provider(provider);
        // Locked after the registry and admission (the order everywhere).
        let mut spend = self.session();
        let mut queued_reason = None;
        match self.grant(&spend, &resolution.spec) {
            Grant::Spent(why) => return Err(ManagerError::SessionBudget(why)),
            Grant::Wait(why) => {
                if start_now {
                    queued_reason = Some(why);
                }
                start_now = false;
            }
            Grant::Start { limits, lowered } => {
                if start_now {
                    resolution.spec.limits = limits;
                    resolution.warnings.extend(lowered);
                }
            }
        }
        if !start_now && reg.queued() >= server.max_queued {
            return Err(ManagerError::QueueFull {
                queued: reg.queued(),
                max: server.max_queued,
            });
        }
        let id = reg.new_id();
        resolution.spec.agent_id = Some(id.clone());
        let status = if start_now {
            Status::Running
        } else {
            Status::Queued
        };
        let mut view = spawn_view(&id, status, &resolution, label.clone(), queued_reason);
        let Resolution {
            spec,
            route,
            role_choice,
            ..
        } = resolution;
        let record = AgentRecord::new(id.clone(), label, spec, route, role_choice);
        if start_now {
            admission.take(&id, &view.provider);
            self.reserve(&mut spend, &id, &record.rounds.spec);
        }
        drop(spend);
        drop(admission);
        reg.insert(record, start_now);
        if !start_now && view.queued_reason.is_none() {
            view.queued_reason = reg.get(&id).map(|r| self.queued_reason(&reg, r));
        }
        Ok((id, view))
    }

    /// Starts admitted `id`. Out of descriptors it waits queued instead (`view` says so);
    /// any other error forgets it, its slot and its transcript: a spawn that fails
    /// changes nothing.
    async fn start_admitted(
        self: &Arc<Self>,
        id: &str,
        exe: &Path,
        view: &mut SpawnView,
    ) -> Result<(), ManagerError> {
        match self.start(id, exe).await {
            Ok(()) => Ok(()),
            Err(e) if out_of_descriptors(&e) => {
                // Neither the caller's fault nor the agent's: it waits for descriptors.
                self.requeue(id, &e);
                view.status = Status::Queued;
                Ok(())
            }
            Err(e) => {
                let removed = {
                    let mut reg = self.lock();
                    self.admission().give_back(id);
                    self.unreserve(id);
                    reg.remove(id)
                };
                let path = removed.and_then(|r| r.io.transcript.map(|t| t.path().to_path_buf()));
                if let Some(path) = path {
                    let _ = std::fs::remove_file(path);
                }
                self.start_next();
                Err(e)
            }
        }
    }
}

/// What the caller of a spawn is told: `id`'s route, role, limits and status.
fn spawn_view(
    id: &str,
    status: Status,
    resolution: &Resolution,
    label: Option<String>,
    queued_reason: Option<String>,
) -> SpawnView {
    let Resolution {
        spec,
        route,
        role_choice,
        warnings,
    } = resolution;
    SpawnView {
        agent_id: id.to_string(),
        status,
        role: spec.role.clone(),
        role_selected_by: role_choice.clone(),
        tier: route.tier,
        model: route.model.clone(),
        provider: route.provider.clone(),
        routed_by: route.routed_by,
        routing_reason: route.reason.clone(),
        limits: spec.limits,
        label,
        warnings: warnings.clone(),
        queued_reason,
    }
}

impl Inner {
    /// Whether new transcripts can be created: the directory exists (made if missing)
    /// and is writable. Checked on every spawn, so a spawn that could not keep its
    /// transcript fails at once and changes nothing.
    pub(super) fn check_transcript_dir(&self) -> Result<(), ManagerError> {
        use nix::unistd::{AccessFlags, access};
        let dir = &self.transcript_dir;
        let base = dir.parent().unwrap_or(dir);
        crate::supervisor::output::ensure_private_dir(base)
            .and_then(|()| crate::supervisor::output::ensure_private_dir(dir))
            .and_then(|()| {
                access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(std::io::Error::from)
            })
            .map_err(|source| {
                ManagerError::Transcript(OutputError::TranscriptDir {
                    path: dir.clone(),
                    source,
                })
            })
    }
}
