//! What callers see of agents, every snapshot of it from spawn to shutdown: typed,
//! serializable, taken under the registry lock. The manager builds them; the MCP tools
//! shape their replies from them (`mcp::reply`, `mcp::text`), the notices and the `Stop`
//! hook read the live and ended agents, and in-process callers and tests read them whole.
//!
//! Not here: what a caller asks for (`request`, `manager::OutputQuery`, `WaitMode`), how a
//! reply is shaped and cut to size (`mcp::reply`).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use bg_agent_worker::protocol::{STOP_MAX_TOKENS, UsageReport};
use bg_agent_worker::roles::RoleChoice;
use bg_agent_worker::routing::RoutedBy;
use bg_agent_worker::values::{Limits, Tier, TokenCounts};

use super::outcome::{ExitInfo, Status};
use super::output::Transcript;
use super::record::AgentRecord;
use super::state::AgentState;

/// What a spawn did: the agent's id, where it was routed, and whether it runs or waits.
#[derive(Debug, Clone, Serialize)]
pub struct SpawnView {
    pub agent_id: String,
    pub status: Status,
    pub role: String,
    /// Why this role: explicit, keyword (with the keyword) or default.
    pub role_selected_by: RoleChoice,
    pub tier: Tier,
    pub model: String,
    pub provider: String,
    /// Which rule chose the model.
    pub routed_by: RoutedBy,
    pub routing_reason: String,
    pub limits: Limits,
    pub label: Option<String>,
    /// What will not work as asked, one line each (e.g. budget_usd for an unpriced model).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why it waits, when queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_reason: Option<String>,
}

/// An agent's output and transcript counters (agent_status `details`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutputCounts {
    /// Readable output bytes produced so far (the cursor of the newest byte).
    pub output_bytes: u64,
    /// Bytes of readable output no longer in the in-memory window (still in the transcript).
    pub output_evicted_bytes: u64,
    /// Raw event bytes the worker wrote to stdout.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub transcript_path: Option<String>,
    pub transcript_bytes: u64,
    /// Bytes not written to the transcript because of its cap (or a write error).
    pub transcript_dropped_bytes: u64,
    /// Why the transcript stopped being written (e.g. the disk is full); the agent ran on
    /// and its answer is in `result`, but the transcript misses what came after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_error: Option<String>,
}

/// One agent, whole (agent_status, agent_kill, agent_send, agent_wait's rows).
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub agent_id: String,
    pub status: Status,
    pub label: Option<String>,
    pub task: String,
    pub role: String,
    pub tier: Tier,
    pub model: String,
    pub provider: String,
    pub routed_by: RoutedBy,
    /// Which kernel sandbox confines the worker (once it started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Why a queued agent waits although a slot is free (e.g. file descriptors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub pid: Option<u32>,
    /// Unix seconds.
    pub created_at: f64,
    pub started_at: Option<f64>,
    /// When the worker's first event arrived (Unix seconds).
    pub first_event_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// Seconds running (so far, or in all).
    pub elapsed_seconds: Option<f64>,
    /// How its process ended, once it did.
    pub exit: Option<ExitInfo>,
    pub usage: UsageReport,
    pub turns: u32,
    /// Rounds of the conversation: 1, plus one per follow-up (`agent_send`).
    pub rounds: u32,
    /// Follow-ups sent while it ran that it has not yet taken in.
    pub messages_pending: usize,
    /// The final answer, once completed.
    pub result: Option<String>,
    /// True when `result` was cut to fit this reply; read the rest with agent_output.
    pub result_truncated: bool,
    /// The answer parsed, once completed, when the spawn gave an `output_schema`.
    pub result_json: Option<serde_json::Value>,
    /// Set when the model stopped at its token limit: the answer is incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_truncated: Option<String>,
    /// Why it waits, when queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_reason: Option<String>,
    pub error: Option<String>,
    pub output: OutputCounts,
    /// Last lines of the worker's stderr (diagnostics), when not completed.
    pub stderr_tail: Option<String>,
    pub limits: Limits,
}

/// One agent in a list.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub agent_id: String,
    pub status: Status,
    pub label: Option<String>,
    pub role: String,
    pub model: String,
    pub task: String,
    pub elapsed_seconds: Option<f64>,
    pub usage: UsageReport,
    /// Why it ended, when it did not complete.
    pub error: Option<String>,
    /// The model stopped at its token limit: the answer is incomplete.
    pub answer_truncated: bool,
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn elapsed(started: Option<SystemTime>, ended: Option<SystemTime>) -> Option<f64> {
    let start = started?;
    let end = ended.unwrap_or_else(SystemTime::now);
    Some(end.duration_since(start).map_or(0.0, |d| d.as_secs_f64()))
}

/// USD rounded to 6 significant digits (sums of floats read as amounts, not
/// `0.00013110000000000002`), and never `-0` (an empty float sum is -0.0).
pub fn round_usd(usd: f64) -> f64 {
    if usd == 0.0 || !usd.is_finite() {
        return 0.0;
    }
    let digits = 5 - usd.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    (usd * scale).round() / scale
}

/// `r`'s usage as callers see it: the cost rounded to an amount.
fn usage_of(r: &AgentRecord) -> UsageReport {
    UsageReport {
        cost_usd: r.totals.usage.cost_usd.map(round_usd),
        ..r.totals.usage
    }
}

impl StatusView {
    pub fn of(r: &AgentRecord) -> Self {
        let (pid, started, ended) = r.state.times();
        let exit = match &r.state {
            AgentState::Ended { exit, .. } => Some(exit.clone()),
            _ => None,
        };
        let status = r.status();
        let stderr = r.io.stderr.text();
        StatusView {
            agent_id: r.id.clone(),
            status,
            label: r.meta.label.clone(),
            task: r.meta.task_preview.clone(),
            role: r.meta.role.clone(),
            tier: r.route.tier,
            model: r.route.model.clone(),
            provider: r.route.provider.clone(),
            routed_by: r.route.routed_by,
            sandbox: r.io.sandbox.clone(),
            waiting_for: r.state.waiting_for().cloned(),
            pid,
            created_at: secs(r.meta.created_at),
            started_at: started.map(secs),
            first_event_at: r.io.first_event_at.map(secs),
            ended_at: ended.map(secs),
            elapsed_seconds: elapsed(started, ended),
            exit,
            usage: usage_of(r),
            turns: r.totals.turns,
            rounds: r.rounds.count,
            messages_pending: r.rounds.pending.len(),
            result: r.answer.result.clone().filter(|_| status == Status::Completed),
            result_truncated: false,
            result_json: r.answer.result_json.clone().filter(|_| status == Status::Completed),
            answer_truncated: (r.answer.stop_reason.as_deref() == Some(STOP_MAX_TOKENS)).then(|| {
                format!(
                    "the model stopped at the token limit (stop_reason max_tokens, limits.max_tokens = {}, or less when a budget was nearly spent): the answer is incomplete; continue it with agent_send, or spawn again with a larger limits.max_tokens",
                    r.limits.max_tokens
                )
            }),
            queued_reason: None,
            error: r.answer.error.clone(),
            output: OutputCounts {
                output_bytes: r.io.output.end_cursor(),
                output_evicted_bytes: r.io.output.start_cursor(),
                stdout_bytes: r.io.stdout_bytes,
                stderr_bytes: r.io.stderr.total_bytes(),
                transcript_path: r
                    .io
                    .transcript
                    .as_ref()
                    .map(|t| t.path().display().to_string()),
                transcript_bytes: r.io.transcript.as_ref().map_or(0, |t| t.written_bytes()),
                transcript_dropped_bytes: r.io.transcript.as_ref().map_or(0, |t| t.dropped_bytes())
                    + r.io.oversize_dropped,
                transcript_error: r
                    .io
                    .transcript
                    .as_ref()
                    .and_then(Transcript::error),
            },
            stderr_tail: (status != Status::Completed && !stderr.trim().is_empty())
                .then_some(stderr),
            limits: r.limits,
        }
    }
}

impl ListRow {
    pub fn of(r: &AgentRecord) -> Self {
        let (_, started, ended) = r.state.times();
        ListRow {
            agent_id: r.id.clone(),
            status: r.status(),
            label: r.meta.label.clone(),
            role: r.meta.role.clone(),
            model: r.route.model.clone(),
            task: r.meta.task_preview.clone(),
            elapsed_seconds: elapsed(started, ended),
            usage: usage_of(r),
            error: r.answer.error.clone(),
            answer_truncated: r.status() == Status::Completed
                && r.answer.stop_reason.as_deref() == Some(STOP_MAX_TOKENS),
        }
    }
}

/// A page of an agent's readable output (agent_output).
#[derive(Debug, Clone, Serialize)]
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

/// The agents that match a list's filters, with their totals (agent_list).
#[derive(Debug, Clone, Serialize)]
pub struct ListView {
    /// The agents that match the filters, oldest first.
    pub agents: Vec<ListRow>,
    /// Every agent of the session by status (not filtered).
    pub counts: HashMap<Status, usize>,
    /// Tokens of the agents that match the filters, summed.
    pub total_tokens: TokenCounts,
    /// Sum over the agents that match with a known cost.
    pub total_cost_usd: f64,
    /// This session's spending against `[server] session_budget_usd` /
    /// `session_max_tokens` (every agent, evicted ones too), when either is set.
    pub session: Option<SessionView>,
    /// Agents that match whose cost is unknown (no price configured), left out of the total.
    pub agents_with_unknown_cost: usize,
}

impl ListView {
    /// The view of `recs` (filtered and sorted), with `counts` over every agent.
    pub fn of(
        recs: &[&AgentRecord],
        counts: HashMap<Status, usize>,
        session: Option<SessionView>,
    ) -> Self {
        let mut total_tokens = TokenCounts::default();
        for r in recs {
            total_tokens.add(&r.totals.usage.tokens());
        }
        ListView {
            agents: recs.iter().map(|r| ListRow::of(r)).collect(),
            counts,
            total_tokens,
            total_cost_usd: round_usd(recs.iter().filter_map(|r| r.totals.usage.cost_usd).sum()),
            session,
            agents_with_unknown_cost: recs
                .iter()
                .filter(|r| r.totals.usage.cost_usd.is_none() && r.totals.usage.total() > 0)
                .count(),
        }
    }
}

/// What a wait saw when it returned (agent_wait).
#[derive(Debug, Clone, Serialize)]
pub struct WaitView {
    /// True when the condition (any or all ended) was met; false when the wait ran out.
    pub done: bool,
    pub ended: Vec<String>,
    pub still_running: Vec<String>,
    /// Every waited agent, in the order asked.
    pub agents: Vec<StatusView>,
    pub waited_seconds: f64,
}

/// What a follow-up (agent_send) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sent {
    /// A completed agent began round `n` (queued or running).
    Round(u32),
    /// A queued agent's task got the message appended.
    Appended,
    /// A running agent takes the message at its next turn boundary.
    Pending,
}

/// The session's spending in agent_list, when `[server]` caps it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionView {
    pub spent_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// What running agents hold of the caps (they may still spend it).
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub reserved_usd: f64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub reserved_tokens: u64,
    /// Set once the cap is reached: new spawns and follow-ups are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// What the server's shutdown did with the agents it had.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShutdownReport {
    pub killed: usize,
    pub cancelled: usize,
    pub already_ended: usize,
    /// Process groups still present after SIGKILL and the drain (should be 0).
    pub survivors: usize,
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
    /// Which round ended: 1, or more after follow-ups (`agent_send`).
    pub round: u32,
}

impl EndedAgent {
    pub fn of(rec: &AgentRecord) -> EndedAgent {
        EndedAgent {
            agent_id: rec.id.clone(),
            label: rec.meta.label.clone(),
            status: rec.status(),
            result: rec.answer.result.clone(),
            error: rec.answer.error.clone(),
            round: rec.rounds.count,
        }
    }
}

/// An agent not yet ended: what the server publishes for the `Stop` hook
/// (`notices::ServerState`), which names it to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveAgent {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub status: Status,
}

impl LiveAgent {
    pub fn of(rec: &AgentRecord) -> LiveAgent {
        LiveAgent {
            agent_id: rec.id.clone(),
            label: rec.meta.label.clone(),
            status: rec.status(),
        }
    }
}

/// Where an agent stands, as resource-update notifications compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentMark {
    pub status: Status,
    /// Bumped whenever output arrives or the agent ends.
    pub output_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::round_usd;

    #[test]
    fn usd_rounds_to_six_significant_digits_and_never_reads_negative_zero() {
        assert_eq!(round_usd(0.000_131_100_000_000_000_02), 0.000_131_1);
        assert_eq!(round_usd(1.234_567_89), 1.234_57);
        assert_eq!(round_usd(12_345.678_9), 12_345.7);
        let empty: f64 = std::iter::empty::<f64>().sum();
        assert!(round_usd(empty).is_sign_positive());
        assert_eq!(format!("{:.4}", round_usd(empty)), "0.0000");
    }
}
