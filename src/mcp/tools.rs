//! The six agent tools: parse and check the caller's input, call the manager, and return
//! structured content plus a short readable text. No process logic here.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bg_agent_worker::config::{LimitsOverride, TaskType, Tier};
use bg_agent_worker::resolve::SpawnRequest;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam, RequestMetaObject};
use rmcp::{Peer, RoleServer, tool, tool_router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BgAgents;
use super::params::{KillParams, ListParams, OutputParams, SpawnParams, StatusParams, WaitParams};
use super::reply::{self, AgentReply, Listed, OutputReply, Spawned, Waited};
use super::text;
use crate::supervisor::manager::OutputQuery;
use crate::supervisor::view::SpawnView;
use crate::supervisor::{ManagerError, Status, WaitMode};

/// Default and ceiling of `agent_output`'s max_bytes.
pub const OUTPUT_DEFAULT_BYTES: usize = 20_000;
pub const OUTPUT_MAX_BYTES: usize = 100_000;
/// Cap of an agent's `result` text in one reply; the full answer stays readable with
/// agent_output or the transcript.
pub const RESULT_MAX_BYTES: usize = 20_000;
/// Seconds between progress notifications during a blocking wait.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Longest label (chars); labels are echoed in every list row.
pub const LABEL_MAX_CHARS: usize = 64;
/// Longest model name (chars) a spawn may give.
const MODEL_MAX_CHARS: usize = 128;
/// Longest agent id accepted; real ids are `a-` and five characters.
const ID_MAX_CHARS: usize = 32;

/// A tool outcome: structured content with a readable text, or a caller's mistake.
type ToolResult = Result<CallToolResult, String>;

/// Every successful tool reply is built here: `value` is what the model reads (the
/// structuredContent), `readable` the text for clients that show only text.
fn reply<T: Serialize>(value: &T, readable: String) -> ToolResult {
    let structured = serde_json::to_value(value).map_err(|e| format!("internal error: {e}"))?;
    let mut r = CallToolResult::structured(structured);
    r.content = vec![ContentBlock::text(readable)];
    Ok(r)
}

fn caller_error(e: ManagerError) -> String {
    e.to_string()
}

/// A caller's string as echoed in an error: at most 40 chars.
pub(super) fn shown(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(39).collect::<String>())
    }
}

/// Refuses ids that cannot be agent ids before they are echoed anywhere.
fn check_id(id: &str) -> Result<(), String> {
    if id.chars().count() > ID_MAX_CHARS {
        return Err(format!(
            "agent_id `{}` is {} chars; ids look like a-7f3k2 (agent_spawn returns them, agent_list shows them)",
            shown(id),
            id.chars().count()
        ));
    }
    Ok(())
}

/// What a blocking call needs to report progress and notice cancellation.
struct Blocking {
    meta: RequestMetaObject,
    peer: Peer<RoleServer>,
    ct: CancellationToken,
}

impl Blocking {
    /// Runs `fut`, sending progress notifications while it blocks (when the request
    /// carries a progress token). A cancelled request ends the wait, never the agent.
    async fn run<F: Future>(&self, total: Duration, what: &str, fut: F) -> Option<F::Output> {
        let token = self.meta.get_progress_token();
        let start = Instant::now();
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                _ = self.ct.cancelled() => return None,
                _ = tick.tick() => {
                    if let Some(token) = &token {
                        let elapsed = start.elapsed().as_secs_f64();
                        let _ = self
                            .peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), elapsed)
                                    .with_total(total.as_secs_f64())
                                    .with_message(format!("{what}: waited {elapsed:.0} s")),
                            )
                            .await;
                    }
                }
            }
        }
    }
}

impl BgAgents {
    /// Checks a spawn request and starts (or queues) the agent.
    pub(super) async fn spawn_agent(&self, p: SpawnParams) -> Result<SpawnView, String> {
        let task_type = match p.task_type.as_deref() {
            None => None,
            Some(s) => Some(TaskType::parse(s).ok_or_else(|| {
                format!("unknown task_type `{}`; use one of: exploration, analysis, reasoning, critical (or omit it)", shown(s))
            })?),
        };
        let tier = match p.tier.as_deref() {
            None => None,
            Some(s) => Some(Tier::parse(s).ok_or_else(|| {
                format!(
                    "unknown tier `{}`; use one of: fast, balanced, quality (or omit it)",
                    shown(s)
                )
            })?),
        };
        if let Some(label) = &p.label
            && label.chars().count() > LABEL_MAX_CHARS
        {
            return Err(format!(
                "label is {} chars, above the {LABEL_MAX_CHARS}-char cap; give a short name such as `auth-explore` (put details in task)",
                label.chars().count()
            ));
        }
        if let Some(model) = &p.model
            && model.chars().count() > MODEL_MAX_CHARS
        {
            return Err(format!(
                "model `{}` is {} chars, above the {MODEL_MAX_CHARS}-char cap; give a model name such as claude-haiku-5-5, or omit it",
                shown(model),
                model.chars().count()
            ));
        }
        let l = p.limits.unwrap_or_default();
        let req = SpawnRequest {
            task: p.task,
            role: p.role.filter(|r| !r.is_empty()),
            task_type,
            tier,
            model: p.model.filter(|m| !m.is_empty()),
            cwd: p.cwd.map(PathBuf::from),
            limits: LimitsOverride {
                cpu_seconds: l.cpu_seconds,
                memory_mb: l.memory_mb,
                open_files: l.open_files,
                max_file_mb: l.max_file_mb,
                timeout_seconds: l.timeout_seconds,
                max_output_bytes: l.max_output_bytes,
                max_turns: l.max_turns,
                max_tokens: l.max_tokens,
                max_total_tokens: l.max_total_tokens,
                budget_usd: l.budget_usd,
            },
            agent_id: None,
        };
        self.manager.spawn(req, p.label).await.map_err(caller_error)
    }

    /// `wait_seconds` as a duration within the configured maximum; Err for a bad value.
    fn wait_duration(&self, secs: Option<f64>, default: f64) -> Result<(Duration, bool), String> {
        let max = self.manager.config().server.max_wait_seconds as f64;
        let s = secs.unwrap_or(default);
        if !s.is_finite() || s < 0.0 {
            return Err(format!(
                "wait_seconds = {s} is not valid; give a number of seconds from 0 to {max}"
            ));
        }
        Ok((Duration::from_secs_f64(s.min(max)), s > max))
    }
}

#[tool_router(router = tool_router, vis = "pub(super)")]
impl BgAgents {
    /// Start a background agent on a task and return at once with its id. The agent is
    /// a separate process with kernel CPU/memory limits, token and USD budgets, and
    /// read-only tools (read_file, glob, grep) inside `cwd`. Keep working; collect the
    /// answer later with agent_wait or agent_status (its `result`). Pick `task_type`
    /// (exploration/analysis → fast model, reasoning → balanced, critical → quality) or
    /// let the task's words decide.
    #[tool(
        name = "agent_spawn",
        output_schema = schema_for_output::<Spawned>(),
        annotations(title = "Spawn background agent", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = true)
    )]
    async fn agent_spawn(&self, Parameters(p): Parameters<SpawnParams>) -> ToolResult {
        let view = self.spawn_agent(p).await?;
        let spawned = Spawned::of(&view, self.manager.config());
        let readable = text::spawned(&spawned);
        reply(&spawned, readable)
    }

    /// Status of one agent: queued/running/completed/failed/killed/timed_out/cpu_limit/
    /// memory_limit/output_limit/budget_exceeded, with its final answer (`result`) once
    /// completed, usage (tokens, USD), exit details and errors. Set wait_seconds to block
    /// until it ends (up to 50 s; call again to keep waiting).
    #[tool(
        name = "agent_status",
        output_schema = schema_for_output::<AgentReply>(),
        annotations(title = "Agent status", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn agent_status(
        &self,
        Parameters(p): Parameters<StatusParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> ToolResult {
        check_id(&p.agent_id)?;
        let (wait, capped) = self.wait_duration(p.wait_seconds, 0.0)?;
        let view = if wait.is_zero() {
            self.manager.status(&p.agent_id).map_err(caller_error)?
        } else {
            self.manager.status(&p.agent_id).map_err(caller_error)?;
            let b = Blocking { meta, peer, ct };
            let what = format!("waiting for {}", p.agent_id);
            match b
                .run(wait, &what, self.manager.wait_status(&p.agent_id, wait))
                .await
            {
                Some(r) => r.map_err(caller_error)?,
                None => return Err("the request was cancelled; the agent keeps running".into()),
            }
        };
        let verbose = p.verbose.unwrap_or(false);
        let agent = AgentReply::of(&view, self.manager.config(), verbose, RESULT_MAX_BYTES);
        let readable = text::status(&agent, capped.then_some(wait));
        reply(&agent, readable)
    }

    /// Read an agent's readable output (its streamed text, one line per tool call),
    /// optionally filtered by a per-line regex, paged with `since`/`next_cursor`, capped
    /// at max_bytes. Older output beyond the in-memory window is counted in
    /// `dropped_bytes` and kept in the transcript file. Prefer agent_status's `result`
    /// for the final answer.
    #[tool(
        name = "agent_output",
        output_schema = schema_for_output::<OutputReply>(),
        annotations(title = "Agent output", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn agent_output(
        &self,
        Parameters(p): Parameters<OutputParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> ToolResult {
        check_id(&p.agent_id)?;
        let max_bytes = p.max_bytes.unwrap_or(OUTPUT_DEFAULT_BYTES);
        if !(1..=OUTPUT_MAX_BYTES).contains(&max_bytes) {
            return Err(format!(
                "max_bytes = {max_bytes} is out of range; give 1 to {OUTPUT_MAX_BYTES} and page with since/next_cursor"
            ));
        }
        if p.tail_lines == Some(0) {
            return Err("tail_lines = 0 returns nothing; give at least 1 or omit it".into());
        }
        let (wait, _) = self.wait_duration(p.wait_seconds, 0.0)?;
        let q = OutputQuery {
            filter: p.filter.clone(),
            since: p.since,
            tail_lines: p.tail_lines,
            max_bytes,
        };
        let page = if wait.is_zero() {
            self.manager.output(&p.agent_id, &q).map_err(caller_error)?
        } else {
            self.manager.output(&p.agent_id, &q).map_err(caller_error)?;
            let b = Blocking { meta, peer, ct };
            let what = format!("waiting for output of {}", p.agent_id);
            match b
                .run(wait, &what, self.manager.wait_output(&p.agent_id, &q, wait))
                .await
            {
                Some(r) => r.map_err(caller_error)?,
                None => return Err("the request was cancelled; the agent keeps running".into()),
            }
        };
        let page = OutputReply::of(&page, p.filter.is_some());
        let readable = text::output(&page);
        reply(&page, readable)
    }

    /// Stop an agent: SIGTERM to its process group, SIGKILL after grace_ms; a queued
    /// agent is cancelled; an agent that already ended is reported as it is (not an
    /// error). Returns its final status.
    #[tool(
        name = "agent_kill",
        output_schema = schema_for_output::<AgentReply>(),
        annotations(title = "Kill agent", read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn agent_kill(&self, Parameters(p): Parameters<KillParams>) -> ToolResult {
        check_id(&p.agent_id)?;
        if let Some(g) = p.grace_ms
            && g > 60_000
        {
            return Err(format!(
                "grace_ms = {g} is above 60000; give 0 to 60000 milliseconds"
            ));
        }
        let view = self
            .manager
            .kill(&p.agent_id, p.grace_ms)
            .await
            .map_err(caller_error)?;
        let agent = AgentReply::of(&view, self.manager.config(), false, RESULT_MAX_BYTES);
        let readable = text::status(&agent, None);
        reply(&agent, readable)
    }

    /// List agents of this session, newest last, with counts by status and total
    /// tokens and USD; an ended agent's reason in one line. Filter by status or role;
    /// long lists come in pages (`offset` = the reply's `next_offset`).
    #[tool(
        name = "agent_list",
        output_schema = schema_for_output::<Listed>(),
        annotations(title = "List agents", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn agent_list(&self, Parameters(p): Parameters<ListParams>) -> ToolResult {
        let status = match p.status.as_deref() {
            None => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                let valid: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown status `{}`; use one of: {}",
                    shown(s),
                    valid.join(", ")
                )
            })?),
        };
        if let Some(role) = p.role.as_deref()
            && !self.manager.config().roles.contains_key(role)
        {
            let valid: Vec<&str> = self
                .manager
                .config()
                .roles
                .keys()
                .map(String::as_str)
                .collect();
            return Err(format!(
                "unknown role `{}`; use one of: {}",
                shown(role),
                valid.join(", ")
            ));
        }
        let limit = p.limit.unwrap_or(reply::LIST_DEFAULT_ROWS);
        if !(1..=reply::LIST_MAX_ROWS).contains(&limit) {
            return Err(format!(
                "limit = {limit} is out of range; give 1 to {} and page with offset/next_offset",
                reply::LIST_MAX_ROWS
            ));
        }
        let view = self.manager.list(status, p.role.as_deref());
        let listed = Listed::of(&view, p.offset.unwrap_or(0), limit);
        let readable = text::list(&listed);
        reply(&listed, readable)
    }

    /// Wait for several agents: mode `all` (default) returns when every one has ended,
    /// `any` when the first one ends; at most wait_seconds (50 s by default and at most;
    /// call again to keep waiting). Returns which ended, their statuses and results;
    /// when not all results fit, call again with `offset` = the reply's `next_offset`.
    #[tool(
        name = "agent_wait",
        output_schema = schema_for_output::<Waited>(),
        annotations(title = "Wait for agents", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn agent_wait(
        &self,
        Parameters(p): Parameters<WaitParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> ToolResult {
        let mode = match p.mode.as_deref() {
            None | Some("all") => WaitMode::All,
            Some("any") => WaitMode::Any,
            Some(m) => return Err(format!("unknown mode `{}`; use `any` or `all`", shown(m))),
        };
        let max = self.manager.config().server.max_wait_seconds as f64;
        let (wait, capped) = self.wait_duration(p.wait_seconds, max)?;
        // Each agent once, in the caller's order (`dedup` alone only drops adjacent repeats).
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<String> = p
            .agent_ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect();
        for id in &ids {
            check_id(id)?;
        }
        let offset = p.offset.unwrap_or(0);
        if offset > 0 && offset >= ids.len() {
            return Err(format!(
                "offset = {offset} is past the {} distinct agent_ids; give 0 to {} (the previous reply's next_offset)",
                ids.len(),
                ids.len().saturating_sub(1)
            ));
        }
        // Unknown ids fail before any waiting.
        self.manager
            .wait(&ids, mode, Duration::ZERO)
            .await
            .map_err(caller_error)?;
        let b = Blocking { meta, peer, ct };
        let what = format!("waiting for {} agent(s)", ids.len());
        let view = match b
            .run(wait, &what, self.manager.wait(&ids, mode, wait))
            .await
        {
            Some(r) => r.map_err(caller_error)?,
            None => return Err("the request was cancelled; the agents keep running".into()),
        };
        let waited = Waited::of(&view, offset);
        let readable = text::waited(&waited, capped.then_some(wait));
        reply(&waited, readable)
    }
}
