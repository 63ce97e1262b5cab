//! The MCP tools' input types. Their doc comments become the parameter descriptions a
//! client model reads, so they say units, defaults and allowed values.
//!
//! Enumerated inputs (task_type, tier, status, mode) are strings with an `enum` in the
//! schema and are parsed by hand, so a wrong value becomes a tool error that lists the
//! valid ones instead of an opaque protocol error.

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnParams {
    /// What the agent should do, self-contained: it sees nothing of your conversation.
    /// Name files, symbols and the expected form of the answer.
    pub task: String,
    /// Role (system prompt, tools, limits): `explorer` (find and summarize code),
    /// `analyst` (explain behaviour, trace data), `reviewer` (review a change for bugs),
    /// `architect` (weigh designs, critical decisions), `general`, or one defined in the
    /// server's config. Default: picked from the task's words, else `general`.
    pub role: Option<String>,
    /// Kind of work, which picks the model tier: exploration and analysis → fast (Haiku),
    /// reasoning → balanced (Sonnet), critical → quality (Opus).
    #[schemars(extend("enum" = ["exploration", "analysis", "reasoning", "critical", null]))]
    pub task_type: Option<String>,
    /// Model tier, overriding task_type and role: fast, balanced or quality.
    #[schemars(extend("enum" = ["fast", "balanced", "quality", null]))]
    pub tier: Option<String>,
    /// Exact model, overriding tier (e.g. `claude-haiku-5-5`, or an alias: haiku, sonnet, opus).
    /// Usually leave unset and use task_type or tier.
    pub model: Option<String>,
    /// Directory the agent may read (its tools cannot leave it). Absolute, or relative to
    /// the server's working directory. Default: the server's working directory.
    pub cwd: Option<String>,
    /// Per-agent limits; each unset key comes from the role, then the server defaults.
    /// Values above the server's ceiling are refused, never clamped.
    pub limits: Option<LimitsParams>,
    /// Short free-form label shown in agent_list (e.g. "auth-explore"), at most 64 chars.
    pub label: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsParams {
    /// CPU seconds (kernel RLIMIT_CPU). Default 600.
    pub cpu_seconds: Option<u64>,
    /// Address space in MiB (kernel RLIMIT_AS). Default 1024.
    pub memory_mb: Option<u64>,
    /// Wall-clock seconds before the agent is stopped as `timed_out`. Default 900.
    pub timeout_seconds: Option<u64>,
    /// Bytes of readable output kept in memory (older output stays in the transcript). Default 1048576.
    pub max_output_bytes: Option<u64>,
    /// Model turns (requests). Default 30.
    pub max_turns: Option<u32>,
    /// Output tokens per model response. Default 8192.
    pub max_tokens: Option<u32>,
    /// Input + output tokens over the whole run. Default 2000000.
    pub max_total_tokens: Option<u64>,
    /// USD the run may spend (needs a priced model). Default 1.0.
    pub budget_usd: Option<f64>,
    /// Open file descriptors (RLIMIT_NOFILE). Default 256.
    pub open_files: Option<u64>,
    /// Largest file the worker may write, in MiB (RLIMIT_FSIZE). Default 16.
    pub max_file_mb: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// Id returned by agent_spawn (e.g. `a-7f3k2`).
    pub agent_id: String,
    /// Block until the agent ends or this many seconds pass (0 = answer at once, the
    /// default; at most the server's max wait, 50 s by default; call again to keep waiting).
    pub wait_seconds: Option<f64>,
    /// Also show every effective limit, output byte counts, the transcript path and
    /// timings. Default false.
    pub verbose: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputParams {
    /// Id returned by agent_spawn.
    pub agent_id: String,
    /// Regular expression (Rust syntax) applied per line; only matching lines are
    /// returned. Filtering never consumes output.
    pub filter: Option<String>,
    /// Byte cursor to read from: pass the previous call's `next_cursor` to get only new
    /// output. Default: from the oldest output still held.
    pub since: Option<u64>,
    /// Only the last N lines (after filtering).
    pub tail_lines: Option<usize>,
    /// Most bytes of text to return. Default 20000, at most 100000.
    pub max_bytes: Option<usize>,
    /// Block until output past `since` arrives, the agent ends, or this many seconds pass.
    /// Default 0.
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    /// Id returned by agent_spawn.
    pub agent_id: String,
    /// Milliseconds between SIGTERM and SIGKILL. Default: the server's kill_grace_ms (2000).
    pub grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only agents in this status.
    #[schemars(extend("enum" = ["queued", "running", "completed", "failed", "killed", "timed_out", "cpu_limit", "memory_limit", "output_limit", "budget_exceeded", null]))]
    pub status: Option<String>,
    /// Only agents with this role.
    pub role: Option<String>,
    /// Skip this many matching agents (oldest first): pass the previous reply's
    /// `next_offset` for the next page. Default 0.
    pub offset: Option<usize>,
    /// Most agents in one reply. Default 50, at most 500 (a reply also stops at about
    /// 14,000 chars of rows).
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// Ids returned by agent_spawn.
    pub agent_ids: Vec<String>,
    /// `any`: return when the first of them ends; `all` (default): when all have ended.
    #[schemars(extend("enum" = ["any", "all", null]))]
    pub mode: Option<String>,
    /// Most seconds to block. Default and maximum: the server's max wait (50 s); call
    /// again to keep waiting.
    pub wait_seconds: Option<f64>,
    /// Show results from this index of agent_ids on: pass the previous reply's
    /// `next_offset` (same agent_ids) when not all results fit. Default 0.
    pub offset: Option<usize>,
}
