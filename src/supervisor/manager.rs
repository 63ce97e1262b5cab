//! Ties processes, records and output together: spawning under `max_concurrent` with a
//! FIFO queue, supervising each worker (output, wall clock, kill), waiting without
//! polling, and shutting everything down.
//!
//! Not here: the MCP protocol (`mcp`), fork/exec details (`process`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bg_agent_worker::config::Config;
use bg_agent_worker::protocol::Event;
use bg_agent_worker::resolve::{Resolution, ResolveError, SpawnRequest, missing_key, resolve};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::Receiver;
use tokio::sync::{mpsc, watch};

use super::admission::Admission;
use super::outcome::{
    EndFacts, ExitInfo, ExitReason, Outcome, ServerCause, Status, classify, describe_end,
};
use super::output::{
    OutputBuffer, OutputError, ReadRequest, StderrTail, Transcript, compile_filter,
};
use super::process::{self, SpawnError, Spawner};
use super::registry::{AgentRecord, AgentState, Control, Registry, Usage};
use super::view::{ListRow, SpawnView, StatusView};

/// Longest event line read from a worker, whatever the transcript cap: the server holds
/// one such line in memory per agent. A line is also never longer than the transcript
/// cap (it could not be kept). A longer line is dropped whole, counted, and ends the
/// agent as `output_limit`.
const MAX_EVENT_LINE: usize = 64 * 1024 * 1024;
/// How long to wait for a worker's pipes to close after it was reaped.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// Characters of the task kept in records and lists.
const TASK_PREVIEW_CHARS: usize = 200;
/// How soon a start that ran out of file descriptors is tried again.
const FD_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("unknown agent `{id}`; {hint}")]
    UnknownAgent { id: String, hint: String },
    #[error(
        "the queue is full: {queued} agents are waiting ([server] max_queued = {max}); wait for some to finish (agent_wait) or kill some (agent_kill), then spawn again"
    )]
    QueueFull { queued: usize, max: usize },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{0}; make [server] transcript_dir writable or point it at another directory")]
    Transcript(OutputError),
    #[error(transparent)]
    Filter(OutputError),
    #[error(
        "{var} is not set in the bg-agents server's environment, so agents on provider `{provider}` cannot call its API; nothing was started. \
         Give the MCP server the key and restart it (Claude Code: /mcp): \
         `claude mcp add bg-agents --scope user --env {var}=YOUR_KEY -- bg-agents`, \
         or in .mcp.json `\"env\": {{\"{var}\": \"${{{var}}}\"}}` (then export {var} where Claude Code starts), \
         or for the plugin export {var} in the shell that starts Claude Code. \
         Or pick a tier or model on a provider that needs no key."
    )]
    MissingKey { var: String, provider: String },
    #[error("the server is shutting down; no new agents start")]
    ShuttingDown,
    #[error(
        "its working directory {} no longer exists (removed while the agent waited to start); spawn it again with an existing cwd",
        path.display()
    )]
    CwdGone { path: PathBuf },
    #[error(
        "{0}; no new agents start in this session (raise the cap in the config and restart the server)"
    )]
    SessionBudget(String),
    #[error(
        "agent_ids is empty; pass one or more ids returned by agent_spawn (agent_list shows them)"
    )]
    NoIds,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WaitMode {
    Any,
    All,
}

/// What a read of an agent's output asks for.
#[derive(Debug, Clone, Default)]
pub struct OutputQuery {
    pub filter: Option<String>,
    pub since: Option<u64>,
    pub tail_lines: Option<usize>,
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OutputPage {
    pub agent_id: String,
    pub text: String,
    /// Pass as `since` to continue after what was returned.
    pub next_cursor: u64,
    /// Bytes between `since` and where reading resumed: output that left the in-memory
    /// window (reading resumes at the next whole line). The transcript file has them.
    pub dropped_bytes: u64,
    /// True when more output in range was not returned because of max_bytes.
    pub truncated: bool,
    pub matched_lines: usize,
    pub status: Status,
    pub transcript_path: Option<String>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ListView {
    /// The agents that match the filters, oldest first.
    pub agents: Vec<ListRow>,
    /// Every agent of the session by status (not filtered).
    pub counts: HashMap<String, usize>,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Input written to and read from the prompt cache (not in total_input_tokens).
    #[serde(skip_serializing_if = "is_zero")]
    pub total_cache_write_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub total_cache_read_tokens: u64,
    /// Sum over agents with a known cost.
    pub total_cost_usd: f64,
    /// This session's spending against `[server] session_budget_usd` /
    /// `session_max_tokens` (every agent, evicted ones too), when either is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionView>,
    /// Agents whose cost is unknown (no price configured), left out of the total.
    pub agents_with_unknown_cost: usize,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WaitView {
    /// True when the condition (any or all ended) was met; false when the wait ran out.
    pub done: bool,
    pub ended: Vec<String>,
    pub still_running: Vec<String>,
    pub agents: Vec<StatusView>,
    pub waited_seconds: f64,
}

/// An agent that just reached a terminal status, as told to `Manager::ended_agents`
/// (for completion notices: the record itself may be evicted soon after).
#[derive(Debug, Clone)]
pub struct EndedAgent {
    pub agent_id: String,
    pub label: Option<String>,
    pub status: Status,
    /// The final answer (completed agents).
    pub result: Option<String>,
    pub error: Option<String>,
}

impl EndedAgent {
    fn of(rec: &AgentRecord) -> EndedAgent {
        EndedAgent {
            agent_id: rec.id.clone(),
            label: rec.label.clone(),
            status: rec.status(),
            result: rec.result.clone(),
            error: rec.error.clone(),
        }
    }
}

/// An agent not yet ended, for the state the `Stop` hook reads.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    pub agent_id: String,
    pub label: Option<String>,
    pub status: Status,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ShutdownReport {
    pub killed: usize,
    pub cancelled: usize,
    pub already_ended: usize,
    /// Process groups still present after SIGKILL and the drain (should be 0).
    pub survivors: usize,
}

/// The supervisor of every agent of one server.
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    transcript_dir: PathBuf,
    registry: Mutex<Registry>,
    /// Bumped on every status change; waiters subscribe.
    changed: watch::Sender<u64>,
    spawner: Spawner,
    shutting_down: AtomicBool,
    /// Where every agent's end is sent, once, in order, after `ended_agents` was called
    /// (before that, ends are told to no one).
    ended: Mutex<Option<mpsc::UnboundedSender<EndedAgent>>>,
    /// Per-provider caps and holds. Locked only after `registry`, or alone.
    admission: Mutex<Admission>,
    /// A wake-up to start queued agents when a provider's hold ends is pending.
    release_scheduled: AtomicBool,
    /// What all agents of this session spent. Locked only after `registry`, or alone.
    session: Mutex<SessionSpend>,
}

/// What the agents of one server session spent together, against its caps.
#[derive(Debug, Default)]
struct SessionSpend {
    cost_usd: f64,
    tokens: u64,
    /// Why the session's budget is spent, once it is.
    exhausted: Option<String>,
}

/// The session's spending in agent_list, when `[server]` caps it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionView {
    pub spent_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Set once the cap is reached: new spawns are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
}

impl Manager {
    /// A manager for `config`; transcripts go to a fresh session directory under the
    /// configured (or default) transcript dir. Must be called inside a tokio runtime.
    pub fn new(config: Arc<Config>) -> std::io::Result<Manager> {
        let base = transcript_base(&config.server.transcript_dir);
        let session = format!(
            "session-{}-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            std::process::id()
        );
        let admission = Mutex::new(Admission::new(&config));
        Ok(Manager {
            inner: Arc::new(Inner {
                admission,
                transcript_dir: base.join(session),
                config,
                registry: Mutex::new(Registry::default()),
                changed: watch::channel(0).0,
                spawner: Spawner::new(tokio::runtime::Handle::current())?,
                shutting_down: AtomicBool::new(false),
                ended: Mutex::new(None),
                release_scheduled: AtomicBool::new(false),
                session: Mutex::new(SessionSpend::default()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A receiver that changes whenever any agent's status changes.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Every agent's end from now on, once each, in the order they ended (any terminal
    /// status: completed, failed, killed, cancelled, limits). One receiver per manager:
    /// `None` when one was already handed out.
    pub fn ended_agents(&self) -> Option<mpsc::UnboundedReceiver<EndedAgent>> {
        let mut ended = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *ended = Some(tx);
        Some(rx)
    }

    /// The agents not yet ended (queued or running), oldest first.
    pub fn live_agents(&self) -> Vec<LiveAgent> {
        let reg = self.inner.lock();
        let mut live: Vec<&AgentRecord> = reg
            .records()
            .filter(|r| !r.status().is_terminal())
            .collect();
        live.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        live.into_iter()
            .map(|r| LiveAgent {
                agent_id: r.id.clone(),
                label: r.label.clone(),
                status: r.status(),
            })
            .collect()
    }

    pub fn transcript_dir(&self) -> &Path {
        &self.inner.transcript_dir
    }

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
        inner.fit_to_session(&mut resolution);
        // The worker gets the key from the server's environment (`process::worker_env`):
        // without it the agent could only fail later, so the spawn fails now.
        if let Some(var) = missing_key(&resolution.spec.provider, |v| std::env::var_os(v)) {
            return Err(ManagerError::MissingKey {
                var: var.to_string(),
                provider: resolution.spec.provider.name.clone(),
            });
        }
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
        inner.check_transcript_dir()?;
        let server = &inner.config.server;
        let (id, view, start_now) = {
            let mut reg = inner.lock();
            // FIFO per provider: nobody overtakes a queued agent of the same provider.
            let provider = &resolution.route.provider;
            let mut admission = inner.admission();
            let start_now = reg.running() < server.max_concurrent
                && admission.blocked(provider, Instant::now()).is_none()
                && !reg.queues_provider(provider);
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
                queued_reason: None,
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
                state: AgentState::Queued {
                    spec: Box::new(spec),
                },
                usage: Usage::default(),
                stop_reason: None,
                turns: 0,
                result: None,
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
            };
            reg.insert(record, start_now);
            if start_now {
                admission.take(&id, &view.provider);
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

    pub fn status(&self, id: &str) -> Result<StatusView, ManagerError> {
        let reg = self.inner.lock();
        Ok(self.inner.status_view(&reg, self.inner.get(&reg, id)?))
    }

    /// The status once the agent has ended, or after `wait` (whichever first).
    pub async fn wait_status(&self, id: &str, wait: Duration) -> Result<StatusView, ManagerError> {
        let ids = [id.to_string()];
        self.wait(&ids, WaitMode::All, wait).await?;
        self.status(id)
    }

    pub fn output(&self, id: &str, q: &OutputQuery) -> Result<OutputPage, ManagerError> {
        self.read_output(id, q, compiled_filter(q)?.as_ref())
    }

    /// `output` with `q.filter` already compiled (as `filter`).
    fn read_output(
        &self,
        id: &str,
        q: &OutputQuery,
        filter: Option<&regex::Regex>,
    ) -> Result<OutputPage, ManagerError> {
        let reg = self.inner.lock();
        let rec = self.inner.get(&reg, id)?;
        let status = rec.status();
        let r = rec.output.read(&ReadRequest {
            since: q.since,
            filter,
            tail_lines: q.tail_lines,
            max_bytes: q.max_bytes,
            include_partial: filter.is_none() || status.is_terminal(),
        });
        Ok(OutputPage {
            agent_id: id.to_string(),
            text: r.text,
            next_cursor: r.next_cursor,
            dropped_bytes: r.dropped_bytes,
            truncated: r.truncated,
            matched_lines: r.matched_lines,
            status,
            transcript_path: rec
                .transcript
                .as_ref()
                .map(|t| t.path().display().to_string()),
        })
    }

    /// Like `output`, but first waits up to `wait` for output past `since` (or the end).
    pub async fn wait_output(
        &self,
        id: &str,
        q: &OutputQuery,
        wait: Duration,
    ) -> Result<OutputPage, ManagerError> {
        // Compiled once for the whole wait, not on every wake-up.
        let filter = compiled_filter(q)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = {
            let reg = self.inner.lock();
            self.inner.get(&reg, id)?.output_seq.subscribe()
        };
        loop {
            let page = self.read_output(id, q, filter.as_ref())?;
            let since = q.since.unwrap_or(0);
            if page.status.is_terminal() || page.next_cursor > since || !page.text.is_empty() {
                return Ok(page);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return self.read_output(id, q, filter.as_ref()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(page),
            }
        }
    }

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
                    inner.cancel_queued(&mut reg, id);
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

    pub fn list(&self, status: Option<Status>, role: Option<&str>) -> ListView {
        let reg = self.inner.lock();
        let mut recs: Vec<&AgentRecord> = reg
            .records()
            .filter(|r| status.is_none_or(|s| r.status() == s))
            .filter(|r| role.is_none_or(|x| r.role == x))
            .collect();
        recs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let mut counts = HashMap::new();
        for r in reg.records() {
            *counts.entry(r.status().as_str().to_string()).or_insert(0) += 1;
        }
        ListView {
            total_input_tokens: recs.iter().map(|r| r.usage.input_tokens).sum(),
            total_output_tokens: recs.iter().map(|r| r.usage.output_tokens).sum(),
            total_cache_write_tokens: recs.iter().map(|r| r.usage.cache_write_tokens).sum(),
            total_cache_read_tokens: recs.iter().map(|r| r.usage.cache_read_tokens).sum(),
            total_cost_usd: recs.iter().filter_map(|r| r.usage.cost_usd).sum(),
            session: self.inner.session_view(),
            agents_with_unknown_cost: recs
                .iter()
                .filter(|r| {
                    r.usage.cost_usd.is_none() && r.usage.input_tokens + r.usage.output_tokens > 0
                })
                .count(),
            agents: recs.into_iter().map(ListRow::of).collect(),
            counts,
        }
    }

    /// Waits until any or all of `ids` have ended, or `wait` passes. Unknown ids are an
    /// error before any waiting.
    pub async fn wait(
        &self,
        ids: &[String],
        mode: WaitMode,
        wait: Duration,
    ) -> Result<WaitView, ManagerError> {
        if ids.is_empty() {
            return Err(ManagerError::NoIds);
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.inner.changed.subscribe();
        // While this wait is pending its agents are not evicted (retained_agents), so
        // an end it is about to report cannot turn into "unknown agent".
        self.inner.lock().watch(ids);
        let _unwatch = Unwatch {
            inner: &self.inner,
            ids,
        };
        loop {
            rx.borrow_and_update();
            let (ended, running, agents) = {
                let reg = self.inner.lock();
                let mut ended = Vec::new();
                let mut running = Vec::new();
                let mut agents = Vec::new();
                for id in ids {
                    let rec = self.inner.get(&reg, id)?;
                    if rec.status().is_terminal() {
                        ended.push(id.clone());
                    } else {
                        running.push(id.clone());
                    }
                    agents.push(self.inner.status_view(&reg, rec));
                }
                (ended, running, agents)
            };
            let done = match mode {
                WaitMode::Any => !ended.is_empty(),
                WaitMode::All => running.is_empty(),
            };
            let timed_out = tokio::time::Instant::now() >= deadline;
            if done || timed_out {
                return Ok(WaitView {
                    done,
                    ended,
                    still_running: running,
                    agents,
                    waited_seconds: started.elapsed().as_secs_f64(),
                });
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(ManagerError::ShuttingDown) },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

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
            let queued: Vec<String> = reg.queued_ids();
            for id in &queued {
                inner.cancel_queued(&mut reg, id);
            }
            report.cancelled = queued.len();
            let mut pids = Vec::new();
            for rec in reg.records() {
                match &rec.state {
                    AgentState::Running { pid, .. } => {
                        report.killed += 1;
                        pids.push(*pid);
                        if let Some(c) = &rec.control {
                            let _ = c.send(Control::Kill { grace_ms: grace });
                        }
                    }
                    AgentState::Ended { .. } => report.already_ended += 1,
                    AgentState::Queued { .. } => {}
                }
            }
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

/// Where an agent stands, as resource-update notifications compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentMark {
    pub status: Status,
    /// Bumped whenever output arrives or the agent ends.
    pub output_seq: u64,
}

impl Manager {
    /// Every agent's id with its status and output sequence.
    pub fn marks(&self) -> Vec<(String, AgentMark)> {
        self.inner
            .lock()
            .records()
            .map(|r| {
                let mark = AgentMark {
                    status: r.status(),
                    output_seq: *r.output_seq.borrow(),
                };
                (r.id.clone(), mark)
            })
            .collect()
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends `rec`'s end to whoever asked for ends (`Manager::ended_agents`).
    fn tell_ended(&self, rec: &AgentRecord) {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = ended.as_ref() {
            let _ = tx.send(EndedAgent::of(rec));
        }
    }

    fn get<'r>(&self, reg: &'r Registry, id: &str) -> Result<&'r AgentRecord, ManagerError> {
        reg.get(id).ok_or_else(|| {
            let near = reg.nearest_ids(id, 3);
            ManagerError::UnknownAgent {
                id: id.to_string(),
                hint: if near.is_empty() {
                    "no agents exist yet; spawn one with agent_spawn".to_string()
                } else {
                    format!(
                        "did you mean {}? agent_list shows every agent",
                        near.join(", ")
                    )
                },
            }
        })
    }

    fn cancel_queued(&self, reg: &mut Registry, id: &str) {
        let cancelled = ExitInfo::without_process(ExitReason::Cancelled);
        if let Some(rec) = reg.end_queued(id, Outcome::Killed, cancelled) {
            rec.error = Some("cancelled before it started".into());
            if let Some(t) = rec.transcript.as_mut() {
                t.close();
            }
            rec.output_seq.send_modify(|v| *v += 1);
            self.tell_ended(rec);
            let retain = self.config.server.retained_agents;
            reg.note_ended(id, retain);
        }
    }

    /// Creates and attaches `id`'s transcript unless it has one (a queued agent's was
    /// made at spawn). The file system call runs on a blocking thread.
    async fn attach_transcript(self: &Arc<Self>, id: &str) -> Result<(), ManagerError> {
        if self.lock().get(id).is_none_or(|r| r.transcript.is_some()) {
            return Ok(());
        }
        let inner = Arc::clone(self);
        let owned = id.to_string();
        let made = tokio::task::spawn_blocking(move || inner.create_transcript(&owned))
            .await
            .map_err(|e| {
                ManagerError::Transcript(OutputError::TranscriptFile {
                    path: self.transcript_dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })??;
        if let Some(rec) = self.lock().get_mut(id) {
            rec.transcript = Some(made);
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

    /// Whether new transcripts can be created: the directory exists (made if missing)
    /// and is writable. Checked on every spawn, so a spawn that could not keep its
    /// transcript fails at once and changes nothing.
    fn check_transcript_dir(&self) -> Result<(), ManagerError> {
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

    /// Starts the worker for queued record `id` and hands it to a supervising task.
    async fn start(self: &Arc<Self>, id: &str, exe: &Path) -> Result<(), ManagerError> {
        let spec = {
            let reg = self.lock();
            match reg.get(id).map(|r| &r.state) {
                Some(AgentState::Queued { spec }) => spec.clone(),
                _ => {
                    // Cancelled between dequeue and start: give the slot back.
                    drop(reg);
                    self.lock().release_slot(id);
                    self.admission().give_back(id);
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
        let still_wanted = {
            let mut reg = self.lock();
            match reg.get_mut(id) {
                Some(rec) => {
                    let ok = rec.state.start(pid).is_ok();
                    if ok {
                        rec.control = Some(ctl_tx.clone());
                        rec.waiting_for = None;
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
            ctl_tx,
            ctl_rx,
        ));
        self.bump();
        Ok(())
    }

    /// Starts queued agents while slots are free: the first in the queue whose provider
    /// admits it (FIFO per provider).
    fn start_next(self: &Arc<Self>) {
        let now = Instant::now();
        let (ids, release) = {
            let mut reg = self.lock();
            let mut admission = self.admission();
            let mut ids = Vec::new();
            while reg.running() < self.config.server.max_concurrent
                && !self.shutting_down.load(Ordering::SeqCst)
            {
                let admits = |r: &AgentRecord| admission.blocked(&r.provider, now).is_none();
                let Some(id) = reg.admit_next(admits) else {
                    break;
                };
                if let Some(rec) = reg.get(&id) {
                    admission.take(&id, &rec.provider);
                }
                ids.push(id);
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
    fn requeue(self: &Arc<Self>, id: &str, e: &ManagerError) {
        let transcript = {
            let mut reg = self.lock();
            reg.release_slot(id);
            let Some(rec) = reg.get_mut(id) else {
                return;
            };
            if !matches!(rec.state, AgentState::Queued { .. }) {
                return;
            }
            rec.waiting_for = Some(format!(
                "file descriptors: the server is at its open-file limit ({e}); the agent starts when others end and free some"
            ));
            let transcript = rec.transcript.take();
            reg.requeue_front(id);
            transcript
        };
        // Made again (new) at the next start.
        if let Some(t) = transcript {
            let _ = std::fs::remove_file(t.path());
        }
        tracing::warn!(agent = %id, "out of file descriptors; the agent waits queued");
        self.bump();
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(FD_RETRY).await;
            inner.start_next();
        });
    }

    /// Tries the queue again when a provider's hold ends (one wake-up pending at a time).
    fn schedule_release(self: &Arc<Self>, at: Instant) {
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

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `rec` as callers see it, with why it waits when it is queued.
    fn status_view(&self, reg: &Registry, rec: &AgentRecord) -> StatusView {
        let mut view = StatusView::of(rec);
        if rec.status() == Status::Queued {
            view.queued_reason = Some(self.queued_reason(reg, rec));
        }
        view
    }

    /// Why queued agent `rec` still waits.
    fn queued_reason(&self, reg: &Registry, rec: &AgentRecord) -> String {
        if let Some(why) = self.admission().blocked(&rec.provider, Instant::now()) {
            return why;
        }
        format!(
            "{} agents are running ([server] max_concurrent = {}); {} queued",
            reg.running(),
            self.config.server.max_concurrent,
            reg.queued()
        )
    }

    fn fail_start(self: &Arc<Self>, id: &str, message: String) {
        {
            let mut reg = self.lock();
            reg.release_slot(id);
            self.admission().give_back(id);
            let spawn_failed = ExitInfo::without_process(ExitReason::SpawnFailed);
            if let Some(rec) = reg.end_queued(id, Outcome::Failed, spawn_failed) {
                rec.error = Some(format!("could not start: {message}"));
                if let Some(t) = rec.transcript.as_mut() {
                    t.close();
                }
                rec.output_seq.send_modify(|v| *v += 1);
                self.tell_ended(rec);
                let retain = self.config.server.retained_agents;
                reg.note_ended(id, retain);
            }
        }
        self.bump();
        self.start_next();
    }

    /// Owns one running worker until it is reaped: feeds its stdin, reads its output,
    /// enforces the wall clock, carries out kills, then classifies its end.
    async fn supervise(
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
        let (stdin_done_tx, stdin_done_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(mut stdin) = child.stdin.take() {
            // Written from its own task: a large spec must not stall supervision. Stdin then
            // stays open until the agent ends; its EOF tells the worker the server is gone.
            tokio::spawn(async move {
                let _ = stdin.write_all(spec_line.as_bytes()).await;
                let _ = stdin_done_rx.await;
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
                        Control::SessionBudget => {
                            (ServerCause::SessionBudget, self.config.server.kill_grace_ms)
                        }
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
        let (code, signal, cpu_used) = match &status {
            Ok(exit) => {
                use std::os::unix::process::ExitStatusExt;
                (exit.status.code(), exit.status.signal(), Some(exit.cpu))
            }
            Err(_) => (None, None, None),
        };
        self.finish(&id, code, signal, cause, cpu_used);
    }

    fn finish(
        self: &Arc<Self>,
        id: &str,
        code: Option<i32>,
        signal: Option<i32>,
        cause: Option<ServerCause>,
        cpu_used: Option<Duration>,
    ) {
        let evicted = {
            let mut reg = self.lock();
            reg.release_slot(id);
            self.admission().give_back(id);
            let retain = self.config.server.retained_agents;
            match reg.get_mut(id) {
                Some(rec) if !rec.status().is_terminal() => {
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
                    if cause == Some(ServerCause::SessionBudget) {
                        rec.error = self.session().exhausted.clone();
                    }
                    if cause == Some(ServerCause::OutputLimit) && rec.overflow.is_some() {
                        rec.error.clone_from(&rec.overflow);
                    }
                    let _ = rec.state.end(outcome, exit);
                    rec.control = None;
                    if let Some(t) = rec.transcript.as_mut() {
                        t.close();
                    }
                    rec.output_seq.send_modify(|v| *v += 1);
                    self.tell_ended(rec);
                    reg.note_ended(id, retain)
                }
                _ => Vec::new(),
            }
        };
        drop(evicted);
        self.bump();
        self.start_next();
    }

    /// Reads JSONL events in chunks; never blocks on anything but the pipe, and keeps at
    /// most one event line (capped by `max_event_line`) beyond what the buffers hold.
    async fn read_stdout(
        self: Arc<Self>,
        id: String,
        mut stdout: Receiver,
        ctl: mpsc::UnboundedSender<Control>,
    ) {
        let max_line = self.max_event_line();
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        // The current line passed `max_line`: its bytes are dropped up to its '\n'.
        let mut in_long_line = false;
        let mut limit_sent = false;
        loop {
            let n = match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut lines = Vec::new();
            // Bytes of lines too long to keep, and whether one began here.
            let mut dropped = 0u64;
            let mut too_long = false;
            for piece in buf[..n].split_inclusive(|&b| b == b'\n') {
                let (body, complete) = match piece.strip_suffix(b"\n") {
                    Some(b) => (b, true),
                    None => (piece, false),
                };
                if in_long_line {
                    dropped += piece.len() as u64;
                } else if pending.len() + body.len() > max_line {
                    // Dropped whole at once, so the agent is stopped while it writes.
                    in_long_line = true;
                    too_long = true;
                    dropped += (pending.len() + piece.len()) as u64;
                    pending = Vec::new();
                } else {
                    pending.extend_from_slice(body);
                }
                if complete {
                    if in_long_line {
                        in_long_line = false;
                    } else {
                        lines.push(std::mem::take(&mut pending));
                    }
                }
            }
            let over_cap = self.apply_lines(&id, &lines, n as u64, dropped, too_long, max_line);
            if over_cap && !limit_sent {
                limit_sent = true;
                let _ = ctl.send(Control::OutputLimit);
            }
        }
        if !pending.is_empty() {
            self.apply_lines(&id, &[pending], 0, 0, false, max_line);
        }
    }

    /// The longest event line read from a worker: the transcript cap, at most
    /// `MAX_EVENT_LINE`.
    fn max_event_line(&self) -> usize {
        let cap = self
            .config
            .server
            .transcript_max_mb
            .saturating_mul(1024 * 1024);
        usize::try_from(cap).map_or(MAX_EVENT_LINE, |c| c.min(MAX_EVENT_LINE))
    }

    /// Applies complete stdout lines to the record, and counts the `dropped` bytes of
    /// lines longer than `max_line` (`too_long`: one began); true once output went over a
    /// cap.
    fn apply_lines(
        &self,
        id: &str,
        lines: &[Vec<u8>],
        bytes: u64,
        dropped: u64,
        too_long: bool,
        max_line: usize,
    ) -> bool {
        let mut reg = self.lock();
        let mut session_spent = false;
        let Some(rec) = reg.get_mut(id) else {
            return false;
        };
        if rec.first_event_at.is_none() && bytes > 0 {
            rec.first_event_at = Some(SystemTime::now());
        }
        rec.stdout_bytes += bytes;
        rec.oversize_dropped += dropped;
        if too_long {
            // Said in the readable output; never the raw JSON of the line.
            let nl = if rec.mid_line { "\n" } else { "" };
            push_text(
                rec,
                &format!(
                    "{nl}[bg-agents: an event line longer than {max_line} bytes was dropped: the longest line the server keeps]\n"
                ),
            );
            rec.overflow.get_or_insert_with(|| {
                format!(
                    "wrote an event line longer than {max_line} bytes, the longest the server keeps ([server] transcript_max_mb, at most {MAX_EVENT_LINE} bytes); stopped so nothing is lost silently"
                )
            });
        }
        for raw in lines {
            let line = String::from_utf8_lossy(raw);
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if let Some(t) = rec.transcript.as_mut() {
                        t.append_line(&line);
                        // What status reports is on disk too: flush at each milestone
                        // (a turn's usage, the end), not only when the buffer fills.
                        if matches!(
                            event,
                            Event::Started { .. }
                                | Event::Usage { .. }
                                | Event::Result { .. }
                                | Event::Error { .. }
                        ) {
                            t.flush();
                        }
                    }
                    if let Event::Usage { .. } = &event {
                        let before = rec.usage;
                        apply_event(rec, event);
                        session_spent |= self.add_to_session(&before, &rec.usage);
                        continue;
                    }
                    if let Event::Retry {
                        wait_ms,
                        throttled: true,
                        ..
                    } = &event
                    {
                        self.admission().hold(
                            &rec.provider,
                            Duration::from_millis(*wait_ms),
                            Instant::now(),
                        );
                    }
                    apply_event(rec, event);
                }
                Err(_) => {
                    // Not our protocol (a crash message, a foreign program): keep it readable.
                    if let Some(t) = rec.transcript.as_mut() {
                        t.append_line(
                            &serde_json::json!({"type": "raw", "line": line}).to_string(),
                        );
                    }
                    push_text(rec, &format!("{line}\n"));
                }
            }
        }
        rec.output_seq.send_modify(|v| *v += 1);
        // Over the cap, not a write error: a full disk loses the transcript's tail
        // (counted, and told in status), never the agent.
        if rec.transcript.as_ref().is_some_and(Transcript::over_cap) {
            let cap = self.config.server.transcript_max_mb;
            rec.overflow.get_or_insert_with(|| {
                format!(
                    "wrote more output than the transcript cap ([server] transcript_max_mb = {cap}); stopped so nothing is lost silently"
                )
            });
        }
        let over_cap = rec.overflow.is_some();
        if session_spent {
            self.stop_session(&mut reg);
        }
        over_cap
    }

    /// Lowers a priced agent's budget_usd to what is left of the session's, and says so.
    fn fit_to_session(&self, resolution: &mut Resolution) {
        let Some(cap) = self.config.server.session_budget_usd else {
            return;
        };
        let left = (cap - self.session().cost_usd).max(0.0);
        let limits = &mut resolution.spec.limits;
        if resolution.spec.price.is_some() && limits.budget_usd > left {
            resolution.warnings.push(format!(
                "budget_usd lowered from ${} to ${left:.4}, what is left of [server] session_budget_usd = ${cap}",
                limits.budget_usd
            ));
            limits.budget_usd = left;
        }
    }

    fn session(&self) -> MutexGuard<'_, SessionSpend> {
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn session_view(&self) -> Option<SessionView> {
        let server = &self.config.server;
        if server.session_budget_usd.is_none() && server.session_max_tokens.is_none() {
            return None;
        }
        let spend = self.session();
        Some(SessionView {
            spent_usd: spend.cost_usd,
            budget_usd: server.session_budget_usd,
            tokens: spend.tokens,
            max_tokens: server.session_max_tokens,
            exhausted: spend.exhausted.clone(),
        })
    }

    /// Adds an agent's usage since `before` to the session; true when this reached a
    /// session cap for the first time.
    fn add_to_session(&self, before: &Usage, now: &Usage) -> bool {
        let tokens = |u: &Usage| {
            u.input_tokens + u.output_tokens + u.cache_write_tokens + u.cache_read_tokens
        };
        let server = &self.config.server;
        let mut spend = self.session();
        spend.tokens += tokens(now).saturating_sub(tokens(before));
        spend.cost_usd += (now.cost_usd.unwrap_or(0.0) - before.cost_usd.unwrap_or(0.0)).max(0.0);
        if spend.exhausted.is_some() {
            return false;
        }
        let why = match (server.session_budget_usd, server.session_max_tokens) {
            (Some(cap), _) if spend.cost_usd >= cap => format!(
                "the session budget is spent: ${:.4} of [server] session_budget_usd = ${cap}",
                spend.cost_usd
            ),
            (_, Some(cap)) if spend.tokens >= cap => format!(
                "the session's tokens are spent: {} of [server] session_max_tokens = {cap}",
                spend.tokens
            ),
            _ => return false,
        };
        spend.exhausted = Some(why);
        true
    }

    /// The session's budget is spent: stops every running agent (as budget_exceeded) and
    /// cancels the queued ones.
    fn stop_session(&self, reg: &mut Registry) {
        for rec in reg.records() {
            if let Some(c) = &rec.control {
                let _ = c.send(Control::SessionBudget);
            }
        }
        let why = self.session().exhausted.clone();
        let queued: Vec<String> = reg.queued_ids();
        for id in queued {
            self.cancel_queued(reg, &id);
            if let Some(rec) = reg.get_mut(&id) {
                rec.error.clone_from(&why);
            }
        }
    }

    async fn read_stderr(self: Arc<Self>, id: String, mut stderr: Receiver) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut reg = self.lock();
            if let Some(rec) = reg.get_mut(&id) {
                rec.stderr.push(&buf[..n]);
            }
        }
    }
}

/// The query's per-line filter, compiled; Err for a pattern that is not a valid regex.
fn compiled_filter(q: &OutputQuery) -> Result<Option<regex::Regex>, ManagerError> {
    q.filter
        .as_deref()
        .map(|p| compile_filter(p).map_err(ManagerError::Filter))
        .transpose()
}

/// Ends a wait's watch on its ids when the wait returns (or is dropped).
struct Unwatch<'a> {
    inner: &'a Inner,
    ids: &'a [String],
}

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.inner.lock().unwatch(self.ids);
    }
}

/// Whether `e` is the process (or the system) running out of file descriptors.
fn out_of_descriptors(e: &ManagerError) -> bool {
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

/// SIGTERM to the group now; returns when SIGKILL is due.
fn terminate(pid: u32, grace_ms: u64) -> tokio::time::Instant {
    process::signal_group(pid, Signal::SIGTERM);
    tokio::time::Instant::now() + Duration::from_millis(grace_ms)
}

fn apply_event(rec: &mut AgentRecord, event: Event) {
    match &event {
        Event::Started { sandbox, .. } => rec.sandbox = sandbox.clone(),
        Event::Usage {
            input_tokens,
            output_tokens,
            cache_write_tokens,
            cache_read_tokens,
            cost_usd,
            estimated,
        } => {
            rec.usage = Usage {
                input_tokens: *input_tokens,
                output_tokens: *output_tokens,
                cache_write_tokens: *cache_write_tokens,
                cache_read_tokens: *cache_read_tokens,
                cost_usd: *cost_usd,
                estimated: *estimated,
            };
        }
        Event::Result {
            text,
            turns,
            stop_reason,
        } => {
            rec.result = Some(text.clone());
            rec.turns = *turns;
            rec.stop_reason = Some(stop_reason.clone());
        }
        Event::Error { kind, message } => {
            rec.error = Some(message.clone());
            rec.error_kind = Some(*kind);
        }
        _ => {}
    }
    if let Some(text) = event.render_human(!rec.mid_line) {
        push_text(rec, &text);
    }
}

fn push_text(rec: &mut AgentRecord, text: &str) {
    if text.is_empty() {
        return;
    }
    rec.output.push(text);
    rec.mid_line = !text.ends_with('\n');
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

/// `configured`, else $XDG_STATE_HOME/bg-agents/transcripts, else
/// ~/.local/state/bg-agents/transcripts, else the temp dir.
fn transcript_base(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    // No home: a directory of this user's own under the temp dir (checked to be ours at
    // the first spawn), never one shared by every user.
    match state {
        Some(s) => s.join("bg-agents").join("transcripts"),
        None => {
            let uid = nix::unistd::geteuid().as_raw();
            std::env::temp_dir().join(format!("bg-agents-{uid}"))
        }
    }
}
