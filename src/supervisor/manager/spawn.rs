//! Accepting a spawn: resolve the request, check the limits, the key and the transcript
//! directory, admit it now or queue it, make its record.
//!
//! Not here: starting the worker (`start`), resolving roles and routes (the worker library).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bg_agent_worker::config::effective_base_url;
use bg_agent_worker::resolve::{SpawnRequest, missing_key, resolve};

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
                role_selected_by: serde_json::to_value(&resolution.role_choice)
                    .ok()
                    .map(|v| match v.get("keyword").and_then(|k| k.as_str()) {
                        Some(k) => format!("keyword `{k}`"),
                        None => v
                            .get("by")
                            .and_then(|b| b.as_str())
                            .unwrap_or("default")
                            .to_string(),
                    })
                    .unwrap_or_default(),
                tier: route.tier.to_string(),
                model: route.model.clone(),
                provider: route.provider.clone(),
                routed_by: route.routed_by.as_str().to_string(),
                routing_reason: route.reason.clone(),
                limits: spec.limits,
                label: label.clone(),
                warnings: resolution.warnings,
                queued_reason,
            };
            let record = AgentRecord::new(id.clone(), label, spec, route, resolution.role_choice);
            if start_now {
                admission.take(&id, &view.provider);
                inner.reserve(&mut spend, &id, &record.rounds.spec);
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
            if let Some(path) =
                removed.and_then(|r| r.io.transcript.map(|t| t.path().to_path_buf()))
            {
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
