//! The seven agent tools: parse and check the caller's input, call the manager, and return
//! structured content plus a short readable text. No process logic here.

use std::future::Future;
use std::time::{Duration, Instant};

use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ProgressNotificationParam, RequestMetaObject};
use rmcp::{Peer, RoleServer, tool, tool_router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BgAgents;
use super::params::{
    KillParams, ListParams, OutputParams, SendParams, SpawnParams, StatusParams, WaitParams,
    parse_opt,
};
use super::reply::{self, AgentReply, Listed, OutputReply, Spawned, Waited};
use super::text;
use crate::supervisor::WaitMode;
use crate::supervisor::manager::OutputQuery;
use crate::supervisor::request::{WhenUnset, check_id, distinct_ids};
use crate::supervisor::view::SpawnView;

/// Default and ceiling of `agent_output`'s max_bytes.
pub const OUTPUT_DEFAULT_BYTES: usize = 20_000;
pub const OUTPUT_MAX_BYTES: usize = 100_000;
/// Cap of an agent's `result` text in one reply; the full answer stays readable with
/// agent_output or the transcript.
pub const RESULT_MAX_BYTES: usize = 20_000;
/// Seconds between progress notifications during a blocking wait.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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

fn caller_error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// What a blocking call needs to report progress and notice cancellation.
struct Blocking {
    meta: RequestMetaObject,
    peer: Peer<RoleServer>,
    ct: CancellationToken,
}

impl Blocking {
    /// Runs the manager call `fut`, sending progress notifications while it blocks (when
    /// the request carries a progress token). Its error, or a cancelled request, is the
    /// caller's tool error; a cancelled request ends the wait, never the agents (`still`
    /// says so: "the agent keeps running").
    async fn run<T, E: std::fmt::Display>(
        &self,
        total: Duration,
        what: &str,
        still: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match self.progress(total, what, fut).await {
            Some(r) => r.map_err(caller_error),
            None => Err(format!("the request was cancelled; {still}")),
        }
    }

    /// Runs `fut` with progress notifications; None when the request was cancelled.
    async fn progress<F: Future>(&self, total: Duration, what: &str, fut: F) -> Option<F::Output> {
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
    /// Converts a spawn's parameters and starts (or queues) the agent.
    pub(super) async fn spawn_agent(&self, p: SpawnParams) -> Result<SpawnView, String> {
        let request = p.into_request()?;
        self.manager
            .spawn_agent(request)
            .await
            .map_err(caller_error)
    }
}

#[tool_router(router = tool_router, vis = "pub(super)")]
impl BgAgents {
    /// Start a background agent on a task and return at once with its id. The agent is
    /// a separate process with kernel CPU/memory limits, token and USD budgets, and
    /// read-only tools (read_file, glob, grep; bash for sandboxed commands such as git
    /// log/diff/blame, with no writes and no network) inside `cwd`. Keep working: its end
    /// is told to you; agent_wait or agent_status give its `result` sooner. Pick `task_type`
    /// (exploration/analysis → fast model, reasoning → balanced, critical → quality) or
    /// let the task's words decide. `output_schema` makes the answer one validated JSON
    /// value (`result_json`).
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

    /// Status of one agent, with its final answer (`result`) once completed, usage
    /// (tokens, USD), exit details and errors. Set wait_seconds to block until it ends
    /// (at most the server's max wait; call again to keep waiting).
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
        let StatusParams {
            agent_id,
            wait_seconds,
            verbose,
        } = p;
        check_id(&agent_id).map_err(caller_error)?;
        let wait = self
            .manager
            .wait_within(wait_seconds, WhenUnset::NoWait)
            .map_err(caller_error)?;
        let view = if wait.duration.is_zero() {
            self.manager.status(&agent_id).map_err(caller_error)?
        } else {
            self.manager.status(&agent_id).map_err(caller_error)?;
            let b = Blocking { meta, peer, ct };
            let what = format!("waiting for {agent_id}");
            let waiting = self.manager.wait_status(&agent_id, wait.duration);
            b.run(wait.duration, &what, "the agent keeps running", waiting)
                .await?
        };
        let verbose = verbose.unwrap_or(false);
        let agent = AgentReply::of(&view, self.manager.config(), verbose, RESULT_MAX_BYTES);
        let readable = text::status(&agent, wait.capped.then_some(wait.duration));
        reply(&agent, readable)
    }

    /// Send a follow-up to an agent. A completed agent continues its conversation in a new
    /// round (running, then completed with the new `result`); turns, tokens and USD add
    /// up over rounds (raise them with `limits`). A running agent takes it at its next
    /// turn; a queued one gets it appended to its task. Other ended agents cannot
    /// continue: spawn a new one. wait_seconds blocks until this round's answer.
    #[tool(
        name = "agent_send",
        output_schema = schema_for_output::<AgentReply>(),
        annotations(title = "Send a follow-up to an agent", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = true)
    )]
    async fn agent_send(
        &self,
        Parameters(p): Parameters<SendParams>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> ToolResult {
        let SendParams {
            agent_id,
            message,
            wait_seconds,
            limits,
            output_schema,
        } = p;
        check_id(&agent_id).map_err(caller_error)?;
        let wait = self
            .manager
            .wait_within(wait_seconds, WhenUnset::NoWait)
            .map_err(caller_error)?;
        let (_, mut view) = self
            .manager
            .send(
                &agent_id,
                &message,
                &limits.unwrap_or_default(),
                output_schema.as_ref(),
            )
            .map_err(caller_error)?;
        if !wait.duration.is_zero() {
            let b = Blocking { meta, peer, ct };
            let what = format!("waiting for {agent_id}'s answer");
            let waiting = self.manager.wait_status(&agent_id, wait.duration);
            view = b
                .run(wait.duration, &what, "the agent keeps running", waiting)
                .await?;
        }
        let agent = AgentReply::of(&view, self.manager.config(), false, RESULT_MAX_BYTES);
        let readable = text::status(&agent, wait.capped.then_some(wait.duration));
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
        let OutputParams {
            agent_id,
            filter,
            since,
            tail_lines,
            max_bytes,
            wait_seconds,
        } = p;
        check_id(&agent_id).map_err(caller_error)?;
        let max_bytes = max_bytes.unwrap_or(OUTPUT_DEFAULT_BYTES);
        if !(1..=OUTPUT_MAX_BYTES).contains(&max_bytes) {
            return Err(format!(
                "max_bytes = {max_bytes} is out of range; give 1 to {OUTPUT_MAX_BYTES} and page with since/next_cursor"
            ));
        }
        if tail_lines == Some(0) {
            return Err("tail_lines = 0 returns nothing; give at least 1 or omit it".into());
        }
        let wait = self
            .manager
            .wait_within(wait_seconds, WhenUnset::NoWait)
            .map_err(caller_error)?;
        let filtered = filter.is_some();
        let q = OutputQuery {
            filter,
            since,
            tail_lines,
            max_bytes,
        };
        let page = if wait.duration.is_zero() {
            self.manager.output(&agent_id, &q).map_err(caller_error)?
        } else {
            self.manager.output(&agent_id, &q).map_err(caller_error)?;
            let b = Blocking { meta, peer, ct };
            let what = format!("waiting for output of {agent_id}");
            let waiting = self.manager.wait_output(&agent_id, &q, wait.duration);
            b.run(wait.duration, &what, "the agent keeps running", waiting)
                .await?
        };
        // Clients that read only the text may cut it (opencode at 51,200 bytes): a longer
        // page is read again, shorter, for the text, so the cursor it gives continues
        // exactly where its text ends.
        let text_page = if page.text.len() > text::OUTPUT_TEXT_MAX_BYTES {
            let shorter = OutputQuery {
                max_bytes: text::OUTPUT_TEXT_MAX_BYTES,
                ..q
            };
            let short = self
                .manager
                .output(&agent_id, &shorter)
                .map_err(caller_error)?;
            Some(OutputReply::of(&short, filtered))
        } else {
            None
        };
        let page = OutputReply::of(&page, filtered);
        let readable = text::output(text_page.as_ref().unwrap_or(&page), text_page.is_some());
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
        let KillParams { agent_id, grace_ms } = p;
        let view = self
            .manager
            .kill_agent(&agent_id, grace_ms)
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
        let ListParams {
            status,
            role,
            offset,
            limit,
        } = p;
        let status = parse_opt(status, "status")?;
        if let Some(role) = role.as_deref() {
            self.manager.check_role(role).map_err(caller_error)?;
        }
        let limit = limit.unwrap_or(reply::LIST_DEFAULT_ROWS);
        if !(1..=reply::LIST_MAX_ROWS).contains(&limit) {
            return Err(format!(
                "limit = {limit} is out of range; give 1 to {} and page with offset/next_offset",
                reply::LIST_MAX_ROWS
            ));
        }
        let view = self.manager.list(status, role.as_deref());
        let listed = Listed::of(&view, offset.unwrap_or(0), limit);
        let readable = text::list(&listed);
        reply(&listed, readable)
    }

    /// Wait for several agents: mode `all` (default) returns when every one has ended,
    /// `any` when the first one ends; at most wait_seconds (by default and at most the
    /// server's max wait; call again to keep waiting). Returns which ended, their statuses and results
    /// (`result_json` alone for agents spawned with an output_schema);
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
        let WaitParams {
            agent_ids,
            mode,
            wait_seconds,
            offset,
        } = p;
        let mode = parse_opt(mode, "mode")?.unwrap_or(WaitMode::All);
        let wait = self
            .manager
            .wait_within(wait_seconds, WhenUnset::Longest)
            .map_err(caller_error)?;
        let ids = distinct_ids(agent_ids).map_err(caller_error)?;
        let offset = offset.unwrap_or(0);
        if offset > 0 && offset >= ids.len() {
            return Err(format!(
                "offset = {offset} is past the {} distinct agent_ids; give 0 to {} (the previous reply's next_offset)",
                ids.len(),
                ids.len().saturating_sub(1)
            ));
        }
        let b = Blocking { meta, peer, ct };
        let what = format!("waiting for {} agent(s)", ids.len());
        let waiting = self.manager.wait_agents(&ids, mode, wait);
        let view = b
            .run(wait.duration, &what, "the agents keep running", waiting)
            .await?;
        let waited = Waited::of(&view, offset);
        let readable = text::waited(&waited, wait.capped.then_some(wait.duration));
        reply(&waited, readable)
    }
}
