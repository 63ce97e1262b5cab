//! Accepting a spawn: resolve the request, check the limits, the key and the transcript
//! directory, admit it now or queue it, make its record.
//!
//! Not here: starting the worker (`start`), resolving roles and routes (the worker library).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bg_agent_worker::config::effective_base_url;
use bg_agent_worker::resolve::{SpawnRequest, missing_key, resolve};
use tokio::sync::watch;

use crate::supervisor::outcome::Status;
use crate::supervisor::output::{OutputBuffer, OutputError, StderrTail};
use crate::supervisor::process::{self, SpawnError};
use crate::supervisor::registry::{AgentRecord, AgentState};
use crate::supervisor::request::check_workspace;
use crate::supervisor::view::SpawnView;
use bg_agent_worker::protocol::UsageReport;

use super::session::Grant;
use super::{Inner, Manager, ManagerError, out_of_descriptors};

/// Characters of the task kept in records and lists.
const TASK_PREVIEW_CHARS: usize = 200;

impl Manager {
    /// Starts an agent now, or queues it when `max_concurrent` are running.
    pub async fn spawn(
        &self,
        req: SpawnRequest,
        label: Option<String>,
    ) -> Result<SpawnView, ManagerError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ManagerError::ShuttingDown);
        }
        if let Some(why) = inner.session().exhausted.clone() {
            return Err(ManagerError::SessionBudget(why));
        }
        let mut resolution = resolve(&inner.config, &req)?;
        check_workspace(&resolution.spec.cwd, &inner.config.server.workspace_roots)?;
        // The worker gets the key from the server's environment (`process::worker_env`):
        // without it the agent could only fail later, so the spawn fails now.
        if let Some(var) = missing_key(&resolution.spec.provider, |v| std::env::var_os(v)) {
            return Err(ManagerError::MissingKey {
                var: var.to_string(),
                provider: resolution.spec.provider.name.clone(),
            });
        }
        // The worker would refuse an endpoint override it cannot use: refuse it now.
        let p = &resolution.spec.provider;
        effective_base_url(&p.name, &p.base_url, p.base_url_env.as_deref(), |v| {
            std::env::var(v).ok()
        })?;
        if let Some((key, value, max, resource)) =
            process::first_above_hard_limits(&resolution.spec.limits)
        {
            return Err(SpawnError::AboveHardLimit {
                key,
                value,
                max,
                resource,
            }
            .into());
        }
        let exe = process::locate_worker(&inner.config.server.worker.path)?;
        let checker = Arc::clone(inner);
        tokio::task::spawn_blocking(move || checker.check_transcript_dir())
            .await
            .map_err(|e| {
                ManagerError::Transcript(OutputError::TranscriptDir {
                    path: inner.transcript_dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })??;
        let server = &inner.config.server;
        let (id, view, start_now) = {
            let mut reg = inner.lock();
            // FIFO per provider: nobody overtakes a queued agent of the same provider.
            let provider = &resolution.route.provider;
            let mut admission = inner.admission();
            let mut start_now = reg.running() < server.max_concurrent
                && admission.blocked(provider, Instant::now()).is_none()
                && !reg.queues_provider(provider);
            // Locked after the registry and admission (the order everywhere).
            let mut spend = inner.session();
            let mut queued_reason = None;
            match inner.grant(&spend, &resolution.spec) {
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
            // Every agent gets its transcript from its supervising task when it starts
            // (see `supervise`): a queued agent holds no file descriptor.
            let transcript = None;
            let mut spec = resolution.spec;
            spec.agent_id = Some(id.clone());
            let route = resolution.route;
            let view = SpawnView {
                agent_id: id.clone(),
                status: if start_now {
                    Status::Running
                } else {
                    Status::Queued
                },
                role: spec.role.clone(),
                role_selected_by: resolution.role_choice.clone(),
                tier: route.tier,
                model: route.model.clone(),
                provider: route.provider.clone(),
                routed_by: route.routed_by,
                routing_reason: route.reason.clone(),
                limits: spec.limits,
                label: label.clone(),
                warnings: resolution.warnings,
                queued_reason,
            };
            let record = AgentRecord {
                id: id.clone(),
                label,
                task_preview: preview(&spec.task),
                role: spec.role.clone(),
                role_choice: resolution.role_choice,
                tier: route.tier,
                model: route.model,
                provider: route.provider,
                routed_by: route.routed_by,
                routing_reason: route.reason,
                limits: spec.limits,
                cwd: spec.cwd.display().to_string(),
                created_at: SystemTime::now(),
                output: OutputBuffer::new(spec.limits.max_output_bytes as usize),
                round_spec: Box::new(spec.clone()),
                rounds: 1,
                prior_usage: UsageReport::default(),
                prior_turns: 0,
                inbox: None,
                pending_messages: Vec::new(),
                open_turn: None,
                reopened: None,
                state: AgentState::Queued {
                    spec: Box::new(spec),
                },
                usage: UsageReport::default(),
                stop_reason: None,
                turns: 0,
                result: None,
                result_json: None,
                error: None,
                error_kind: None,
                transcript,
                stderr: StderrTail::new(64 * 1024),
                stdout_bytes: 0,
                first_event_at: None,
                sandbox: None,
                waiting_for: None,
                oversize_dropped: 0,
                overflow: None,
                mid_line: false,
                output_seq: watch::channel(0).0,
                control: None,
                conversation: Vec::new(),
                conversation_saved: false,
            };
            if start_now {
                admission.take(&id, &view.provider);
                inner.reserve(&mut spend, &id, &record.round_spec);
            }
            drop(spend);
            drop(admission);
            reg.insert(record, start_now);
            let mut view = view;
            if !start_now && view.queued_reason.is_none() {
                view.queued_reason = reg.get(&id).map(|r| inner.queued_reason(&reg, r));
            }
            (id, view, start_now)
        };
        let mut view = view;
        let started = if start_now {
            inner.start(&id, &exe).await
        } else {
            Ok(())
        };
        if let Err(e) = started.as_ref()
            && out_of_descriptors(e)
        {
            // Neither the caller's fault nor the agent's: it waits for descriptors.
            inner.requeue(&id, e);
            view.status = Status::Queued;
        } else if let Err(e) = started {
            // Nothing may change on an error: forget the record and its transcript.
            let removed = {
                let mut reg = inner.lock();
                inner.admission().give_back(&id);
                inner.unreserve(&id);
                reg.remove(&id)
            };
            if let Some(path) = removed.and_then(|r| r.transcript.map(|t| t.path().to_path_buf())) {
                let _ = std::fs::remove_file(path);
            }
            inner.start_next();
            return Err(e);
        }
        inner.bump();
        Ok(view)
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

fn preview(task: &str) -> String {
    let one_line = task.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= TASK_PREVIEW_CHARS {
        one_line
    } else {
        one_line
            .chars()
            .take(TASK_PREVIEW_CHARS - 1)
            .collect::<String>()
            + "…"
    }
}
