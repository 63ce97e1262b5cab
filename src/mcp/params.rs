//! The MCP tools' input types and their conversion into the supervisor's requests. Their
//! doc comments become the parameter descriptions a client model reads, so they say
//! units and allowed values; defaults and ceilings that a user's limits.toml sets are
//! not written here but filled in from the loaded configuration (`describe_from_config`).
//!
//! Each conversion starts `let Self { .. } = self;` naming every field, so a new field
//! breaks the build until it is handled. Enumerated inputs are `Choice`s of a
//! schema-facing enum: the schema lists the enum's values, and a value outside them
//! becomes a tool error that lists the valid ones (not an opaque protocol error).
//! `limits` is the worker's `LimitsOverride` itself (its doc comments are the schema's
//! descriptions), so a new limit key reaches the request with nothing to copy.

use std::path::PathBuf;

use bg_agent_worker::resolve::SpawnRequest;
use bg_agent_worker::values::{LimitsOverride, TaskType, Tier};
use schemars::JsonSchema;
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

use crate::supervisor::request::{SpawnAgent, shown};
use crate::supervisor::{Status, WaitMode};

/// A string-valued enum parameter: `E` once it parses, else the caller's string.
#[derive(Debug, Clone)]
pub struct Choice<E> {
    parsed: Result<E, String>,
}

impl<'de, E: DeserializeOwned> Deserialize<'de> for Choice<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let de: serde::de::value::StringDeserializer<serde::de::value::Error> =
            raw.clone().into_deserializer();
        Ok(Choice {
            parsed: E::deserialize(de).map_err(|_| raw),
        })
    }
}

impl<E: JsonSchema> JsonSchema for Choice<E> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        E::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        E::json_schema(generator)
    }
}

impl<E: JsonSchema> Choice<E> {
    /// The value, or an error naming `param` and listing the values the schema allows.
    pub fn parse(self, param: &str) -> Result<E, String> {
        self.parsed.map_err(|bad| {
            format!(
                "unknown {param} `{}`; use one of: {} (or omit it)",
                shown(&bad),
                allowed::<E>().join(", ")
            )
        })
    }
}

/// The values `E`'s schema allows, in order.
pub fn allowed<E: JsonSchema>() -> Vec<String> {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<E>();
    schema
        .get("enum")
        .and_then(|v| v.as_array())
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// An optional `Choice`, parsed.
pub fn parse_opt<E: JsonSchema>(c: Option<Choice<E>>, param: &str) -> Result<Option<E>, String> {
    c.map(|c| c.parse(param)).transpose()
}

/// Kind of work, which picks the model tier.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskTypeParam {
    Exploration,
    Analysis,
    Reasoning,
    Critical,
}

impl From<TaskTypeParam> for TaskType {
    fn from(t: TaskTypeParam) -> TaskType {
        match t {
            TaskTypeParam::Exploration => TaskType::Exploration,
            TaskTypeParam::Analysis => TaskType::Analysis,
            TaskTypeParam::Reasoning => TaskType::Reasoning,
            TaskTypeParam::Critical => TaskType::Critical,
        }
    }
}

/// Model tier.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TierParam {
    Fast,
    Balanced,
    Quality,
}

impl From<TierParam> for Tier {
    fn from(t: TierParam) -> Tier {
        match t {
            TierParam::Fast => Tier::Fast,
            TierParam::Balanced => Tier::Balanced,
            TierParam::Quality => Tier::Quality,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpawnParams {
    /// What the agent should do, self-contained: it sees nothing of your conversation.
    /// Name files, symbols and the expected form of the answer.
    pub task: String,
    /// Role (system prompt, tools, limits), one of the server's `[roles]`. Default:
    /// picked from the task's words, else `general`.
    pub role: Option<String>,
    /// Kind of work, which picks the model tier: exploration and analysis → fast (Haiku),
    /// reasoning → balanced (Sonnet), critical → quality (Opus).
    pub task_type: Option<Choice<TaskTypeParam>>,
    /// Model tier, overriding task_type and role.
    pub tier: Option<Choice<TierParam>>,
    /// Exact model, overriding tier (e.g. `claude-haiku-5-5`, or an alias: haiku, sonnet, opus).
    /// Usually leave unset and use task_type or tier.
    pub model: Option<String>,
    /// Directory the agent may read (its tools cannot leave it). Absolute, or relative to
    /// the server's working directory. Default: the server's working directory.
    pub cwd: Option<String>,
    /// Per-agent limits; each unset key comes from the role, then limits.toml
    /// `[defaults]`. Values above limits.toml `[max]` are refused, never clamped.
    pub limits: Option<LimitsOverride>,
    /// Short free-form label shown in agent_list (e.g. "auth-explore"), at most 64 chars.
    pub label: Option<String>,
    /// JSON Schema (an object, at most 16 KiB) the final answer must match; returned
    /// parsed as `result_json`. One that never matches ends `failed` (`schema_mismatch`).
    /// Default: the role's schema, if any.
    pub output_schema: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// Id returned by agent_spawn (e.g. `a-7f3k2`).
    pub agent_id: String,
    /// Block until the agent ends or this many seconds pass (0 = answer at once, the
    /// default; at most limits.toml `[server] max_wait_seconds`; call again to keep waiting).
    pub wait_seconds: Option<f64>,
    /// Also show every effective limit, output byte counts, the transcript path and
    /// timings. Default false.
    pub verbose: Option<bool>,
}

/// A follow-up to an agent (`agent_send`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// The id returned by agent_spawn.
    pub agent_id: String,
    /// The follow-up: the next user message of the agent's conversation.
    pub message: String,
    /// Seconds to block until this round's answer (default 0: return at once; at most
    /// limits.toml `[server] max_wait_seconds`; call agent_status or agent_wait to keep
    /// waiting).
    pub wait_seconds: Option<f64>,
    /// Raise this agent's limits (each at most limits.toml `[max]`); turns, tokens and
    /// USD count over all rounds.
    pub limits: Option<LimitsOverride>,
    /// JSON Schema this round's answer must match (completed or queued agent). Default:
    /// the agent's own schema, if any.
    pub output_schema: Option<serde_json::Value>,
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
    /// Default 0; at most limits.toml `[server] max_wait_seconds`.
    pub wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    /// Id returned by agent_spawn.
    pub agent_id: String,
    /// Milliseconds between SIGTERM and SIGKILL. Default: limits.toml `[server]
    /// kill_grace_ms`.
    pub grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only agents in this status.
    pub status: Option<Choice<Status>>,
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
    pub mode: Option<Choice<WaitMode>>,
    /// Most seconds to block. Default and maximum: limits.toml `[server]
    /// max_wait_seconds`; call again to keep waiting.
    pub wait_seconds: Option<f64>,
    /// Show results from this index of agent_ids on: pass the previous reply's
    /// `next_offset` (same agent_ids) when not all results fit. Default 0.
    pub offset: Option<usize>,
}

impl SpawnParams {
    pub fn into_request(self) -> Result<SpawnAgent, String> {
        let Self {
            task,
            role,
            task_type,
            tier,
            model,
            cwd,
            limits,
            label,
            output_schema,
        } = self;
        Ok(SpawnAgent {
            request: SpawnRequest {
                task,
                role,
                task_type: parse_opt(task_type, "task_type")?.map(TaskType::from),
                tier: parse_opt(tier, "tier")?.map(Tier::from),
                model,
                cwd: cwd.map(PathBuf::from),
                limits: limits.unwrap_or_default(),
                agent_id: None,
                output_schema,
            },
            label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_facing_enums_offer_every_domain_value() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            allowed::<TaskTypeParam>(),
            names(&TaskType::ALL.map(TaskType::as_str))
        );
        assert_eq!(allowed::<TierParam>(), names(&Tier::ALL.map(Tier::as_str)));
        let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(allowed::<Status>(), names(&statuses));
        assert_eq!(allowed::<WaitMode>(), ["any", "all"]);
    }

    #[test]
    fn a_value_outside_the_enum_is_an_error_that_lists_the_valid_ones() {
        let c: Choice<TierParam> = serde_json::from_value(serde_json::json!("turbo")).unwrap();
        assert_eq!(
            c.parse("tier").unwrap_err(),
            "unknown tier `turbo`; use one of: fast, balanced, quality (or omit it)"
        );
        let c: Choice<TierParam> = serde_json::from_value(serde_json::json!("quality")).unwrap();
        assert_eq!(Tier::from(c.parse("tier").unwrap()), Tier::Quality);
    }

    #[test]
    fn every_limit_reaches_the_request() {
        let p: SpawnParams = serde_json::from_value(serde_json::json!({
            "task": "t",
            "limits": {
                "cpu_seconds": 1, "memory_mb": 2, "timeout_seconds": 3, "max_output_bytes": 4,
                "max_turns": 5, "max_tokens": 6, "max_total_tokens": 7, "budget_usd": 8.0,
                "open_files": 9, "max_file_mb": 10
            }
        }))
        .unwrap();
        let l = p.into_request().unwrap().request.limits;
        assert_eq!(
            l,
            LimitsOverride {
                cpu_seconds: Some(1),
                memory_mb: Some(2),
                timeout_seconds: Some(3),
                max_output_bytes: Some(4),
                max_turns: Some(5),
                max_tokens: Some(6),
                max_total_tokens: Some(7),
                budget_usd: Some(8.0),
                open_files: Some(9),
                max_file_mb: Some(10),
            }
        );
    }
}
