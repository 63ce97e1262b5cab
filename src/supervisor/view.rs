//! What callers see of agents: serializable snapshots taken under the registry lock.
//! The MCP tools shape their replies from these (`mcp::reply`); in-process callers and
//! tests read them whole.

use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::Serialize;

use bg_agent_worker::protocol::STOP_MAX_TOKENS;
use bg_agent_worker::values::Limits;

use super::outcome::Status;
use super::output::Transcript;
use super::record::AgentRecord;
use super::state::AgentState;

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SpawnView {
    pub agent_id: String,
    pub status: Status,
    pub role: String,
    /// Why this role: explicit, keyword (with the keyword) or default.
    pub role_selected_by: String,
    pub tier: String,
    pub model: String,
    pub provider: String,
    /// Which rule chose the model: model, tier, task_type, role, keyword or default.
    pub routed_by: String,
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

#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input written to the prompt cache (billed above the input rate).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Input read from the prompt cache (billed far below the input rate).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// USD so far; null when the model has no configured price (unknown, not free).
    pub cost_usd: Option<f64>,
    /// True when the provider sent no usage and tokens (and cost) are estimated.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ExitView {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub reason: String,
}

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

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusView {
    pub agent_id: String,
    pub status: Status,
    pub label: Option<String>,
    pub task: String,
    pub role: String,
    pub tier: String,
    pub model: String,
    pub provider: String,
    pub routed_by: String,
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
    pub exit: Option<ExitView>,
    pub usage: UsageView,
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

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListRow {
    pub agent_id: String,
    pub status: Status,
    pub label: Option<String>,
    pub role: String,
    pub model: String,
    pub task: String,
    pub elapsed_seconds: Option<f64>,
    pub usage: UsageView,
    /// Why it ended, when it did not complete.
    pub error: Option<String>,
    /// The model stopped at its token limit: the answer is incomplete.
    pub answer_truncated: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

impl UsageView {
    fn of(r: &AgentRecord) -> Self {
        UsageView {
            input_tokens: r.totals.usage.input_tokens,
            output_tokens: r.totals.usage.output_tokens,
            cache_write_tokens: r.totals.usage.cache_write_tokens,
            cache_read_tokens: r.totals.usage.cache_read_tokens,
            cost_usd: r.totals.usage.cost_usd.map(round_usd),
            estimated: r.totals.usage.estimated,
        }
    }
}

impl StatusView {
    pub fn of(r: &AgentRecord) -> Self {
        let (pid, started, ended) = r.state.times();
        let exit = match &r.state {
            AgentState::Ended { exit, .. } => Some(ExitView {
                code: exit.code,
                signal: exit.signal.clone(),
                reason: exit.reason.as_str().to_string(),
            }),
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
            tier: r.route.tier.to_string(),
            model: r.route.model.clone(),
            provider: r.route.provider.clone(),
            routed_by: r.route.routed_by.as_str().to_string(),
            sandbox: r.io.sandbox.clone(),
            waiting_for: r.state.waiting_for().cloned(),
            pid,
            created_at: secs(r.meta.created_at),
            started_at: started.map(secs),
            first_event_at: r.io.first_event_at.map(secs),
            ended_at: ended.map(secs),
            elapsed_seconds: elapsed(started, ended),
            exit,
            usage: UsageView::of(r),
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
            usage: UsageView::of(r),
            error: r.answer.error.clone(),
            answer_truncated: r.status() == Status::Completed
                && r.answer.stop_reason.as_deref() == Some(STOP_MAX_TOKENS),
        }
    }
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
