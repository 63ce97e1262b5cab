//! The JSON a client model reads: each tool's `structuredContent`, shaped from the
//! supervisor's snapshots (`supervisor::view`, `manager`).
//!
//! Claude Code shows the model this JSON (compact, keys in the order written here), not
//! the text content. So what matters comes first (status, then the result or error),
//! nulls, false flags and defaults are left out, times are seconds elapsed, limits appear
//! only when asked for or when they differ from the configured defaults, and every reply
//! has a size bound: lists and waits page (`offset` / `next_offset`), and any cut says how
//! to read on.
//!
//! Not here: what the supervisor keeps (unchanged by shaping), the readable text (`text`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bg_agent_worker::config::Config;
use bg_agent_worker::values::{Limits, LimitsOverride};
use schemars::JsonSchema;
use serde::Serialize;

use crate::supervisor::Status;
use crate::supervisor::manager::{ListView, OutputPage, WaitView};
use crate::supervisor::view::{ListRow, OutputCounts, SpawnView, StatusView, UsageView};

/// Chars of a task shown in agent_status and agent_list rows.
const TASK_CHARS: usize = 100;
const LIST_TASK_CHARS: usize = 80;
/// Chars of an ended agent's error in a list or wait row (one line).
const ROW_ERROR_CHARS: usize = 200;
/// Chars of stderr shown in agent_status (its last lines).
const STDERR_CHARS: usize = 1_000;
/// Chars of an error shown in agent_status (the transcript has all of it).
const ERROR_CHARS: usize = 1_000;
/// Chars the rows of one agent_wait or agent_list reply may take. With the rest of the
/// reply (ids, counts, notes) a reply stays under 20,000 chars, with room to spare for
/// notices added to every reply.
pub const ROWS_BUDGET: usize = 14_000;
/// Smallest share of the rows budget one agent_wait row gets for its result.
const MIN_ROW_CHARS: usize = 1_500;
/// Ids listed in agent_wait's `ended` and `still_running` (counts has all).
const IDS_LISTED: usize = 100;
/// Default and ceiling of agent_list's `limit`.
pub const LIST_DEFAULT_ROWS: usize = 50;
pub const LIST_MAX_ROWS: usize = 500;

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// Seconds to a tenth (what a model needs to judge time).
fn tenths(s: f64) -> f64 {
    (s * 10.0).round() / 10.0
}

/// Seconds to a tenth of a millisecond (for latency readings in `details`).
fn tenth_ms(s: f64) -> f64 {
    (s * 10_000.0).round() / 10_000.0
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How many chars `c` takes inside a JSON string (serde_json's escaping).
fn json_chars(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        _ => 1,
    }
}

/// `s` cut so that it takes at most `max` chars inside a JSON string, and whether it cut.
pub fn fit(s: &str, max: usize) -> (String, bool) {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += json_chars(c);
        if used > max {
            return (s[..i].to_string(), true);
        }
    }
    (s.to_string(), false)
}

/// The first line of `s`, cut to `max` chars with an ellipsis.
fn one_line(s: &str, max: usize) -> String {
    let line = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let more_lines = s.trim().lines().nth(1).is_some();
    if line.chars().count() <= max && !more_lines {
        return line.to_string();
    }
    let kept: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Chars of `v` as compact JSON (what the model receives).
pub fn compact_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_string(v).map_or(0, |s| s.chars().count())
}

/// Limits of an agent as replies show them: only the keys that differ from the configured
/// `[defaults]`, all of them with `all` (verbose); None when nothing is left to show.
fn limits_shown(l: &Limits, defaults: &Limits, all: bool) -> Option<LimitsOverride> {
    let shown = if all {
        l.to_override()
    } else {
        l.changes_from(defaults)
    };
    (!shown.is_empty()).then_some(shown)
}

/// What agent_spawn answers.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Spawned {
    pub agent_id: String,
    /// `running`, or `queued` when max_concurrent agents are running.
    pub status: Status,
    pub model: String,
    /// fast, balanced or quality.
    pub tier: String,
    pub role: String,
    /// Which rule chose the model: model, tier, task_type, role, keyword or default.
    pub routed_by: String,
    /// The provider, when not the default tier's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Effective limits that differ from the server's defaults (absent: all defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsOverride>,
    /// How a model named in the spawn found its provider (a bare name that is no tier's
    /// model goes to the provider of the tier the other rules pick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_reason: Option<String>,
    /// Why a queued agent waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_reason: Option<String>,
    /// What the caller should know: e.g. a budget_usd that cannot hold for an unpriced
    /// model, or a budget lowered to what the session has left.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Spawned {
    pub fn of(v: &SpawnView, config: &Config) -> Self {
        let default_provider = &config.tiers.get(config.routing.default_tier).provider;
        Spawned {
            agent_id: v.agent_id.clone(),
            status: v.status,
            model: v.model.clone(),
            tier: v.tier.clone(),
            role: v.role.clone(),
            routed_by: v.routed_by.clone(),
            provider: (v.provider != *default_provider).then(|| v.provider.clone()),
            label: v.label.clone(),
            limits: limits_shown(&v.limits, &config.defaults, false),
            routing_reason: (v.routed_by == "model").then(|| v.routing_reason.clone()),
            queued_reason: v.queued_reason.clone(),
            warnings: v.warnings.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input written to the prompt cache (billed at 1.25× input by default).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub cache_write_tokens: u64,
    /// Input read from the prompt cache (billed at 0.1× input by default).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub cache_read_tokens: u64,
    /// USD so far; absent when the model has no configured price (unknown, not free).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The provider sent no usage: tokens (and cost) are estimated from bytes.
    #[serde(skip_serializing_if = "is_false")]
    pub estimated: bool,
}

impl Usage {
    /// None before any token was counted.
    fn of(u: &UsageView) -> Option<Self> {
        let tokens = u.input_tokens + u.output_tokens + u.cache_write_tokens + u.cache_read_tokens;
        let counted = tokens > 0 || u.cost_usd.is_some_and(|c| c > 0.0);
        counted.then_some(Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_write_tokens: u.cache_write_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cost_usd: u.cost_usd,
            estimated: u.estimated,
        })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Exit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// completed, killed, cancelled, timed_out, cpu_limit, memory_limit, file_limit,
    /// output_limit, budget_exceeded, provider_error, config_error, interrupted, crashed,
    /// spawn_failed.
    pub reason: String,
}

/// What agent_status shows only with `verbose`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Details {
    pub tier: String,
    pub provider: String,
    pub routed_by: String,
    /// Seconds since the spawn.
    pub created_s_ago: f64,
    /// Seconds from the spawn until the worker's first event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_event_after_s: Option<f64>,
    pub output: OutputCounts,
}

/// What agent_status and agent_kill answer: one agent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AgentReply {
    pub agent_id: String,
    pub status: Status,
    /// The answer as a JSON value valid against the spawn's `output_schema` (structured
    /// agents, once completed); absent when larger than the reply's cap (`read_on` says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_json: Option<serde_json::Value>,
    /// The final answer, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Present when `result` was cut to fit; `read_on` says how to get the rest.
    #[serde(skip_serializing_if = "is_false")]
    pub result_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_on: Option<String>,
    /// Set when the model stopped at its token limit: the answer is incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_truncated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a queued agent waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_reason: Option<String>,
    /// Why the agent's transcript file stopped being written (e.g. a full disk); the
    /// agent ran on, but the file misses what came after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The task (its start).
    pub task: String,
    pub model: String,
    pub role: String,
    /// The worker's process id, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Seconds waiting for a slot (queued agents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_s: Option<f64>,
    /// Seconds running (so far, or in all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_s_ago: Option<f64>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub turns: u32,
    /// Rounds of the conversation, once a follow-up (agent_send) began a second one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    /// Follow-ups sent while it ran, not yet taken in: it reads them at its next turn
    /// boundary. Once it has ended, they were never read: agent_send them again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_pending: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The kernel sandbox the worker runs in, e.g. `landlock (ABI 7)` or why none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// How the process ended (absent for a normal completion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// Last lines of the worker's diagnostics, when it did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
    /// Limits that differ from the defaults (all of them with `verbose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

impl AgentReply {
    /// The reply for `v`, its result cut to `result_max` bytes.
    pub fn of(v: &StatusView, config: &Config, verbose: bool, result_max: usize) -> Self {
        let now = now_secs();
        let (result, cut) = match &v.result {
            Some(r) => {
                let (r, cut) = cut_bytes(r, result_max);
                (Some(r), cut)
            }
            None => (None, false),
        };
        let exit = v
            .exit
            .as_ref()
            .filter(|e| !(v.status == Status::Completed && e.code == Some(0)))
            .map(|e| Exit {
                code: e.code,
                signal: e.signal.clone(),
                reason: e.reason.clone(),
            });
        let result_json = v
            .result_json
            .clone()
            .filter(|j| compact_len(j) <= result_max);
        let json_cut = v.result_json.is_some() && result_json.is_none();
        let read_on = (cut || json_cut).then(|| {
            format!(
                "{} cut at {result_max} bytes; agent_output {{\"agent_id\": \"{}\"}} pages through all of it (the answer ends the output; verbose names the transcript)",
                if json_cut { "result_json left out, result" } else { "result" },
                v.agent_id
            )
        });
        AgentReply {
            agent_id: v.agent_id.clone(),
            status: v.status,
            result_json,
            result,
            result_truncated: cut,
            read_on,
            answer_truncated: v.answer_truncated.clone(),
            error: v.error.as_deref().map(|e| head_chars(e, ERROR_CHARS)),
            queued_reason: v.waiting_for.clone().or_else(|| v.queued_reason.clone()),
            transcript_error: v.output.transcript_error.as_deref().map(|e| {
                format!(
                    "{}; {} bytes not saved",
                    head_chars(e, ERROR_CHARS),
                    v.output.transcript_dropped_bytes
                )
            }),
            label: v.label.clone(),
            task: one_line(&v.task, TASK_CHARS),
            model: v.model.clone(),
            role: v.role.clone(),
            pid: v.pid.filter(|_| v.status == Status::Running),
            queued_s: (v.status == Status::Queued).then(|| tenths(now - v.created_at)),
            elapsed_s: v.elapsed_seconds.map(tenths),
            ended_s_ago: v.ended_at.map(|e| tenths((now - e).max(0.0))),
            turns: v.turns,
            rounds: (v.rounds > 1).then_some(v.rounds),
            messages_pending: (v.messages_pending > 0).then_some(v.messages_pending),
            usage: Usage::of(&v.usage),
            sandbox: v.sandbox.as_deref().map(|s| sandbox_shown(s, verbose)),
            exit,
            stderr_tail: v.stderr_tail.as_deref().map(tail_chars),
            limits: limits_shown(&v.limits, &config.defaults, verbose),
            details: verbose.then(|| Details {
                tier: v.tier.clone(),
                provider: v.provider.clone(),
                routed_by: v.routed_by.clone(),
                created_s_ago: tenths(now - v.created_at),
                first_event_after_s: v.first_event_at.map(|f| tenth_ms(f - v.created_at)),
                output: v.output.clone(),
            }),
        }
    }
}

/// The sandbox as a reply shows it: in full with `verbose` or when it is not in force,
/// else its name alone (`landlock (ABI 7)`).
fn sandbox_shown(s: &str, verbose: bool) -> String {
    match s.split_once(':') {
        Some((name, _)) if !verbose && s.starts_with("landlock") => name.to_string(),
        _ => s.to_string(),
    }
}

/// `s` cut to `max` bytes at a char boundary, and whether it cut.
fn cut_bytes(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    (s[..cut].to_string(), true)
}

/// The first `max` chars of `s`, marked when cut.
fn head_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let kept: String = s.chars().take(max).collect();
    format!("{kept}… [cut; the transcript has all of it]")
}

/// The last `STDERR_CHARS` chars of `s`, from a line start when one is near.
fn tail_chars(s: &str) -> String {
    let n = s.chars().count();
    if n <= STDERR_CHARS {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - STDERR_CHARS).collect();
    match tail.find('\n') {
        Some(i) if i < tail.len() / 2 => format!("…{}", &tail[i..]),
        _ => format!("…{tail}"),
    }
}

/// One ended agent in agent_wait's reply.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WaitRow {
    pub agent_id: String,
    pub status: Status,
    /// The answer as a JSON value (agents spawned with an `output_schema`): such a row
    /// carries this instead of `result`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_json: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Present when `result` was cut, or `result_json` left out for its size: agent_status
    /// has up to 20000 bytes, agent_output all.
    #[serde(skip_serializing_if = "is_false")]
    pub result_truncated: bool,
    /// Set when the model stopped at its token limit: the answer is incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_truncated: Option<String>,
    /// Why it did not complete (first line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl WaitRow {
    /// The row for `v` in at most `max` chars of compact JSON (its result cut to fit).
    fn of(v: &StatusView, max: usize) -> Self {
        let mut row = WaitRow {
            agent_id: v.agent_id.clone(),
            status: v.status,
            result_json: None,
            result: None,
            result_truncated: false,
            answer_truncated: v.answer_truncated.clone(),
            error: v.error.as_deref().map(|e| one_line(e, ROW_ERROR_CHARS)),
            label: v.label.clone(),
        };
        if let Some(value) = &v.result_json {
            // A JSON value is shown whole or not at all: a cut one would not parse.
            // `"result_json":,` around the value.
            let room = max.saturating_sub(compact_len(&row) + 16);
            if compact_len(value) <= room {
                row.result_json = Some(value.clone());
            } else {
                row.result_truncated = true;
            }
        } else if let Some(r) = &v.result {
            // `"result":"",` and `"result_truncated":true,` around the text.
            let room = max.saturating_sub(compact_len(&row) + 36);
            let (text, cut) = fit(r, room);
            row.result = Some(text);
            row.result_truncated = cut;
        }
        row
    }
}

/// What agent_wait answers.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Waited {
    /// True when the condition (any or all ended) was met; false when the wait ran out.
    pub done: bool,
    pub waited_s: f64,
    /// The waited agents by status.
    pub counts: BTreeMap<String, usize>,
    /// Ids that ended (the first 100; counts has them all).
    pub ended: Vec<String>,
    /// Ids still queued or running (the first 100).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub still_running: Vec<String>,
    /// Ended agents with their results or errors, in the order of agent_ids from `offset`.
    pub agents: Vec<WaitRow>,
    /// Pass as `offset` (with the same agent_ids) for the results that did not fit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// What was left out of this reply and how to read on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more: Option<String>,
}

impl Waited {
    /// `v` with the results of the ended agents from `offset` (an index into `ids`, the
    /// caller's agent_ids) that fit in `ROWS_BUDGET`.
    pub fn of(v: &WaitView, offset: usize) -> Self {
        let mut counts = BTreeMap::new();
        for a in &v.agents {
            *counts.entry(a.status.as_str().to_string()).or_insert(0) += 1;
        }
        let pending: Vec<(usize, &StatusView)> = v
            .agents
            .iter()
            .enumerate()
            .skip(offset)
            .filter(|(_, a)| a.status.is_terminal())
            .collect();
        let mut rows = Vec::new();
        let mut used = 0;
        let mut next_offset = None;
        for (k, (index, a)) in pending.iter().enumerate() {
            let left = pending.len() - k;
            let share = (ROWS_BUDGET.saturating_sub(used) / left).max(MIN_ROW_CHARS);
            let row = WaitRow::of(a, share);
            let len = compact_len(&row) + 1;
            if used + len > ROWS_BUDGET && !rows.is_empty() {
                next_offset = Some(*index);
                break;
            }
            used += len;
            rows.push(row);
        }
        let mut notes = Vec::new();
        if let Some(n) = next_offset {
            let left = pending.len() - rows.len();
            notes.push(format!(
                "{left} more ended agents' results did not fit: call agent_wait again with the same agent_ids and offset {n}"
            ));
        }
        if rows.iter().any(|r| r.result_truncated) {
            notes.push(
                "results marked result_truncated are cut: agent_status {agent_id} shows up to 20000 bytes"
                    .into(),
            );
        }
        let ended_n = v.ended.len();
        let running_n = v.still_running.len();
        if ended_n > IDS_LISTED || running_n > IDS_LISTED {
            notes.push(format!(
                "ended and still_running list at most {IDS_LISTED} ids each ({ended_n} ended, {running_n} not); counts has all"
            ));
        }
        if !v.done {
            notes.push("the wait ran out: call agent_wait again to keep waiting".into());
        }
        Waited {
            done: v.done,
            waited_s: tenths(v.waited_seconds),
            counts,
            ended: v.ended.iter().take(IDS_LISTED).cloned().collect(),
            still_running: v.still_running.iter().take(IDS_LISTED).cloned().collect(),
            agents: rows,
            next_offset,
            more: (!notes.is_empty()).then(|| notes.join("; ")),
        }
    }
}

/// One agent in agent_list's reply.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ListRowReply {
    pub agent_id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The task (its start).
    pub task: String,
    pub model: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// Why it did not complete (first line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Present when the model stopped at its token limit: the answer is incomplete
    /// (agent_status says how to continue).
    #[serde(skip_serializing_if = "is_false")]
    pub answer_truncated: bool,
}

impl ListRowReply {
    fn of(r: &ListRow) -> Self {
        ListRowReply {
            agent_id: r.agent_id.clone(),
            status: r.status,
            label: r.label.clone(),
            task: one_line(&r.task, LIST_TASK_CHARS),
            model: r.model.clone(),
            role: r.role.clone(),
            elapsed_s: r.elapsed_seconds.map(tenths),
            error: r
                .error
                .as_deref()
                .filter(|_| r.status != Status::Completed)
                .map(|e| one_line(e, ROW_ERROR_CHARS)),
            answer_truncated: r.answer_truncated,
        }
    }
}

/// What agent_list answers.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Listed {
    /// Every agent of the session by status (not filtered).
    pub counts: BTreeMap<String, usize>,
    /// Agents that match the filters, oldest first, from `offset`.
    pub agents: Vec<ListRowReply>,
    /// Pass as `offset` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// What was left out of this reply and how to read on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more: Option<String>,
    /// Over the agents that match the filters.
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Input written to and read from the prompt cache (not in total_input_tokens).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub total_cache_write_tokens: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub total_cache_read_tokens: u64,
    /// Sum over agents with a known cost.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub total_cost_usd: f64,
    /// This session's spending against `[server] session_budget_usd` /
    /// `session_max_tokens`, when either is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<crate::supervisor::manager::SessionView>,
    /// Agents whose cost is unknown (no price configured), left out of the total.
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub agents_with_unknown_cost: usize,
}

impl Listed {
    /// Rows of `v` from `offset`, at most `limit` and what fits in `ROWS_BUDGET`.
    pub fn of(v: &ListView, offset: usize, limit: usize) -> Self {
        let mut rows = Vec::new();
        let mut used = 0;
        for r in v.agents.iter().skip(offset).take(limit) {
            let row = ListRowReply::of(r);
            let len = compact_len(&row) + 1;
            if used + len > ROWS_BUDGET && !rows.is_empty() {
                break;
            }
            used += len;
            rows.push(row);
        }
        let total = v.agents.len();
        let end = offset + rows.len();
        let next_offset = (end < total).then_some(end);
        let more = if let Some(n) = next_offset {
            let running = v.counts.get("running").copied().unwrap_or(0);
            Some(format!(
                "agents {offset}–{} of {total} shown (oldest first): call agent_list with offset {n} for the next page, or filter by status (e.g. running: {running})",
                end.saturating_sub(1).max(offset),
            ))
        } else if offset > 0 && offset >= total {
            Some(format!(
                "offset {offset} is past the last of {total} matching agents; use offset 0 to start over"
            ))
        } else {
            None
        };
        Listed {
            counts: v.counts.iter().map(|(k, n)| (k.clone(), *n)).collect(),
            agents: rows,
            next_offset,
            more,
            total_input_tokens: v.total_input_tokens,
            total_output_tokens: v.total_output_tokens,
            total_cache_write_tokens: v.total_cache_write_tokens,
            total_cache_read_tokens: v.total_cache_read_tokens,
            total_cost_usd: v.total_cost_usd,
            session: v.session.clone(),
            agents_with_unknown_cost: v.agents_with_unknown_cost,
        }
    }
}

/// What agent_output answers.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OutputReply {
    pub agent_id: String,
    pub status: Status,
    pub text: String,
    /// Pass as `since` to continue after what was returned.
    pub next_cursor: u64,
    /// Present when more output in range was not returned because of max_bytes: call
    /// again with since = next_cursor.
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Bytes between `since` and where reading resumed: output that left the in-memory
    /// window. The transcript file has them.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub dropped_bytes: u64,
    /// Lines that matched the filter (with a filter only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_lines: Option<usize>,
    /// The full event stream, when output was dropped from memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript_path: Option<String>,
}

impl OutputReply {
    pub fn of(p: &OutputPage, filtered: bool) -> Self {
        OutputReply {
            agent_id: p.agent_id.clone(),
            status: p.status,
            text: p.text.clone(),
            next_cursor: p.next_cursor,
            truncated: p.truncated,
            dropped_bytes: p.dropped_bytes,
            matched_lines: filtered.then_some(p.matched_lines),
            transcript_path: p.transcript_path.clone().filter(|_| p.dropped_bytes > 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_counts_json_escapes() {
        assert_eq!(fit("abc", 3), ("abc".into(), false));
        assert_eq!(fit("a\"c", 3), ("a\"".into(), true));
        assert_eq!(fit("a\"c", 2), ("a".into(), true));
        assert_eq!(fit("é€x", 2), ("é€".into(), true));
        let (s, cut) = fit("line\nline\n", 100);
        assert!(!cut);
        assert_eq!(serde_json::to_string(&s).unwrap().len() - 2, 12);
    }

    #[test]
    fn one_line_marks_what_it_left_out() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("first\nsecond", 10), "first…");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn limits_show_only_what_differs() {
        let c = Config::builtin().unwrap();
        let mut l = c.defaults;
        assert_eq!(limits_shown(&l, &c.defaults, false), None);
        l.max_turns = 5;
        let shown = limits_shown(&l, &c.defaults, false).unwrap();
        assert_eq!(serde_json::to_string(&shown).unwrap(), r#"{"max_turns":5}"#);
        let all = limits_shown(&l, &c.defaults, true).unwrap();
        assert_eq!(all.cpu_seconds, Some(c.defaults.cpu_seconds));
    }
}
