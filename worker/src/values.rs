//! The value types that the wire protocol and the configuration share: per-agent limits
//! (with their ranges), prices and token counts, provider kinds, tiers, task types, tool
//! names and the sandbox mode. Both `protocol` (what a `TaskSpec` carries) and `config`
//! (what `limits.toml` says) are built from these, so neither needs the other.
//!
//! A leaf: this module uses nothing else of the crate. Not here: anything with behaviour
//! beyond the values themselves — loading and validating a configuration (`config`),
//! routing (`routing`), the messages of the wire (`protocol`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One limit key: its name and its allowed range, and how to read it from the structs.
pub struct LimitKey {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    pub get: fn(&Limits) -> f64,
    pub get_override: fn(&LimitsOverride) -> Option<f64>,
    /// The value as written (exact, where an f64 would round a large integer).
    pub show: fn(&Limits) -> String,
}

/// Writes the limit fields once: `Limits`, `LimitsOverride`, `LIMIT_KEYS` and the helpers
/// that go field by field. Each key has its doc (the MCP parameter description), its type
/// and its allowed range.
macro_rules! limits {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty, $min:expr, $max:expr;)*) => {
        /// Effective per-agent limits. Enforced by the kernel (cpu, memory, files), the
        /// server (timeout, output) and the worker (turns, tokens, USD).
        #[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
        #[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
        #[serde(deny_unknown_fields)]
        pub struct Limits {
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        /// A partial set of limits (a role's, a spawn's request, or what differs from the
        /// defaults); absent keys fall through.
        #[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
        #[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
        #[serde(deny_unknown_fields)]
        pub struct LimitsOverride {
            $(
                $(#[doc = $doc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        /// Every limit key, in the order of the fields.
        pub const LIMIT_KEYS: &[LimitKey] = &[$(LimitKey {
            name: stringify!($field),
            min: $min as f64,
            max: $max as f64,
            get: |l| l.$field as f64,
            get_override: |o| o.$field.map(|v| v as f64),
            show: |l| l.$field.to_string(),
        }),*];

        impl Limits {
            /// The smallest value each key may take.
            pub const MIN: Limits = Limits { $($field: $min),* };

            /// These limits with every key `o` sets replaced.
            pub fn overridden_by(&self, o: &LimitsOverride) -> Limits {
                Limits { $($field: o.$field.unwrap_or(self.$field)),* }
            }

            /// The keys of `self` that differ from `base`.
            pub fn changes_from(&self, base: &Limits) -> LimitsOverride {
                LimitsOverride { $($field: (self.$field != base.$field).then_some(self.$field)),* }
            }

            /// Every key, set.
            pub fn to_override(&self) -> LimitsOverride {
                LimitsOverride { $($field: Some(self.$field)),* }
            }
        }

        impl LimitsOverride {
            /// Whether no key is set.
            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.is_none())*
            }
        }
    };
}

limits! {
    /// CPU seconds (kernel RLIMIT_CPU).
    cpu_seconds: u64, 1, 86_400;
    /// Address space in MiB (kernel RLIMIT_AS).
    memory_mb: u64, 32, 65_536;
    /// Open file descriptors (RLIMIT_NOFILE).
    open_files: u64, 16, 65_536;
    /// Largest file the worker may write, in MiB (RLIMIT_FSIZE).
    max_file_mb: u64, 0, 65_536;
    /// Wall-clock seconds before the agent is stopped as `timed_out`.
    timeout_seconds: u64, 1, 86_400;
    /// Bytes of output kept in memory (the rest stays in the transcript).
    max_output_bytes: u64, 4096, 268_435_456;
    /// Model turns (requests).
    max_turns: u32, 1, 1000;
    /// Output tokens per model response.
    max_tokens: u32, 1, 200_000;
    /// Input + output tokens over the whole run.
    max_total_tokens: u64, 1, 100_000_000;
    /// USD the run may spend (needs a priced model).
    budget_usd: f64, 0.0, 10_000.0;
}

impl Limits {
    /// The first key of `self` above the matching key of `ceiling`, as (key, value, max),
    /// the values written exactly.
    pub fn first_above(&self, ceiling: &Limits) -> Option<(&'static str, String, String)> {
        LIMIT_KEYS.iter().find_map(|k| {
            let (v, m) = ((k.get)(self), (k.get)(ceiling));
            // NaN is above every ceiling: a budget of NaN must not switch the budget off.
            (v > m || v.is_nan()).then(|| (k.name, (k.show)(self), (k.show)(ceiling)))
        })
    }
}

/// `true`, for serde fields that default to on (the wire and the config alike).
pub fn default_true() -> bool {
    true
}

/// Formats a limit value the way it is written in TOML (integers without ".0").
pub fn fmt_limit(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The API a provider speaks: Anthropic Messages, or OpenAI-compatible chat completions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Anthropic,
    Openai,
}

/// A model tier; `[tiers]` maps each to a provider and a model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Fast,
    Balanced,
    Quality,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Fast, Tier::Balanced, Tier::Quality];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Balanced => "balanced",
            Tier::Quality => "quality",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of work; `[routing] task_types` maps each to a tier.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Exploration,
    Analysis,
    Reasoning,
    Critical,
}

impl TaskType {
    pub const ALL: [TaskType; 4] = [
        TaskType::Exploration,
        TaskType::Analysis,
        TaskType::Reasoning,
        TaskType::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Exploration => "exploration",
            TaskType::Analysis => "analysis",
            TaskType::Reasoning => "reasoning",
            TaskType::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<TaskType> {
        TaskType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input written to the prompt cache; default 1.25 × `input` (Anthropic, 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Input read from the prompt cache; default 0.1 × `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// OpenAI-compatible name for the price of cached input (`cached_tokens`); used when
    /// `cache_read` is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

/// Tokens of one response or of a whole run, as billed: uncached input, input written to
/// and read from the prompt cache, output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub input: u64,
    pub cache_write: u64,
    pub cache_read: u64,
    pub output: u64,
}

impl TokenCounts {
    /// Every token, cached or not: what `max_total_tokens` counts.
    pub fn total(&self) -> u64 {
        self.input + self.cache_write + self.cache_read + self.output
    }

    pub fn add(&mut self, other: &TokenCounts) {
        self.input += other.input;
        self.cache_write += other.cache_write;
        self.cache_read += other.cache_read;
        self.output += other.output;
    }
}

impl Price {
    /// A price for plain input and output only (caching at its default rates).
    pub fn new(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cache_write: None,
            cache_read: None,
            cached_input: None,
        }
    }

    pub fn cache_write_rate(&self) -> f64 {
        self.cache_write.unwrap_or(self.input * 1.25)
    }

    pub fn cache_read_rate(&self) -> f64 {
        self.cache_read
            .or(self.cached_input)
            .unwrap_or(self.input * 0.1)
    }

    /// USD for uncached input and output tokens.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.cost_of(&TokenCounts {
            input: input_tokens,
            output: output_tokens,
            ..Default::default()
        })
    }

    /// USD for `t` as billed: cache writes and reads at their own rates.
    pub fn cost_of(&self, t: &TokenCounts) -> f64 {
        (t.input as f64 * self.input
            + t.cache_write as f64 * self.cache_write_rate()
            + t.cache_read as f64 * self.cache_read_rate()
            + t.output as f64 * self.output)
            / 1_000_000.0
    }
}

/// Whether the worker confines itself with Landlock: `auto` when the kernel can (and
/// says when it cannot), `require` refuses to run unconfined, `off` never confines.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    #[default]
    Auto,
    Require,
    Off,
}

/// The tools a worker can offer its model: the read-only file tools, and `bash` (a
/// command in a sandbox of its own, `command_sandbox`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ToolName {
    ReadFile,
    Glob,
    Grep,
    Bash,
}

impl ToolName {
    pub const ALL: [ToolName; 4] = [
        ToolName::ReadFile,
        ToolName::Glob,
        ToolName::Grep,
        ToolName::Bash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ToolName::ReadFile => "read_file",
            ToolName::Glob => "glob",
            ToolName::Grep => "grep",
            ToolName::Bash => "bash",
        }
    }

    pub fn parse(name: &str) -> Option<ToolName> {
        ToolName::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_keys_follow_the_fields_and_their_minimum() {
        let names: Vec<&str> = LIMIT_KEYS.iter().map(|k| k.name).collect();
        let json = serde_json::to_value(Limits::MIN).unwrap();
        let fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(names, fields);
        for k in LIMIT_KEYS {
            assert_eq!((k.get)(&Limits::MIN), k.min, "{}", k.name);
        }
    }

    #[test]
    fn changes_from_keeps_only_what_differs() {
        let base = Limits::MIN;
        assert!(base.changes_from(&base).is_empty());
        let more = base.overridden_by(&LimitsOverride {
            max_turns: Some(5),
            ..Default::default()
        });
        let changed = more.changes_from(&base);
        assert_eq!(
            serde_json::to_string(&changed).unwrap(),
            r#"{"max_turns":5}"#
        );
        assert_eq!(base.overridden_by(&changed), more);
        assert_eq!(base.overridden_by(&more.to_override()), more);
    }
}
