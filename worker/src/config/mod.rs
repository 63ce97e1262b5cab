//! The configuration: its schema (here), loading (`load`: the built-in `limits.toml`
//! overridden key by key by a user file), validation (`validate`, done once at load) and
//! the providers' endpoints (`endpoint`: a base URL, or the variable that overrides it).
//!
//! Not here: turning a spawn request into a model and a role (`routing`, `roles`,
//! `resolve`), and the value types the configuration shares with the wire (`values`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::values::{
    Limits, LimitsOverride, Price, ProviderKind, SandboxMode, TaskType, Tier, ToolName,
};

mod endpoint;
mod load;
#[cfg(test)]
mod tests;
mod validate;

pub use endpoint::{
    BaseUrlError, EffectiveUrl, UrlSource, check_base_url, effective_base_url, url_userinfo,
    without_password,
};
pub use load::{BUILTIN, CONFIG_ENV, user_config_path};

/// The role used when nothing else decides; the configuration must define it.
pub const DEFAULT_ROLE: &str = "general";

/// The longest grace between SIGTERM and SIGKILL, for `[server] kill_grace_ms` and for a
/// kill that asks for its own.
pub const KILL_GRACE_MAX_MS: u64 = 60_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub defaults: Limits,
    pub max: Limits,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub tiers: Tiers,
    pub routing: Routing,
    pub roles: BTreeMap<String, RoleConfig>,
    pub pricing: BTreeMap<String, Price>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub retained_agents: usize,
    pub kill_grace_ms: u64,
    pub max_wait_seconds: u64,
    pub transcript_dir: String,
    pub transcript_max_mb: u64,
    pub keep_transcripts: bool,
    /// Days a transcript is kept after it was last written; older ones are removed when
    /// a server starts. 0 keeps them forever.
    pub transcript_retention_days: u64,
    /// What the Claude Code `Stop` hook does while this session's agents are running or
    /// ended unread.
    pub stop_hook: StopHook,
    pub worker: WorkerLocation,
    pub sandbox: SandboxMode,
    /// USD all agents of one server session may spend together; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_budget_usd: Option<f64>,
    /// Tokens (input, cache and output) all agents of one session may use together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_max_tokens: Option<u64>,
    /// Directories an agent's cwd must lie under (absolute paths); empty: any ordinary
    /// directory (never `/`, `/proc`, `/sys` or `/dev`).
    pub workspace_roots: Vec<String>,
}

/// The `Stop` hook's behaviour (`[server] stop_hook`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopHook {
    /// Ask the model once to collect (agent_wait) or stop the agents before it ends its turn.
    Remind,
    /// Never hold the turn.
    Off,
}

impl StopHook {
    pub fn as_str(self) -> &'static str {
        match self {
            StopHook::Remind => "remind",
            StopHook::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerLocation {
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub base_url_env: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub max_retries: u32,
    pub request_timeout_seconds: u64,
    /// Agents running against this provider at once (the server queues the rest); absent
    /// means only `[server] max_concurrent` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// Anthropic: mark the conversation for prompt caching (cache_control breakpoints).
    #[serde(default = "crate::values::default_true")]
    pub prompt_caching: bool,
    /// OpenAI-compatible: send a stable `prompt_cache_key` per agent (only where the
    /// provider accepts the field).
    #[serde(default)]
    pub prompt_cache_key: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    pub fast: TierTarget,
    pub balanced: TierTarget,
    pub quality: TierTarget,
}

impl Tiers {
    pub fn get(&self, tier: Tier) -> &TierTarget {
        match tier {
            Tier::Fast => &self.fast,
            Tier::Balanced => &self.balanced,
            Tier::Quality => &self.quality,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierTarget {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    pub default_tier: Tier,
    pub aliases: BTreeMap<String, Tier>,
    pub allowed_models: Vec<String>,
    pub denied_tiers: Vec<Tier>,
    pub task_types: BTreeMap<TaskType, Tier>,
    pub rules: Vec<TierRule>,
    pub role_rules: Vec<RoleRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    pub tier: Tier,
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    pub role: String,
    pub keywords: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    #[serde(default)]
    pub description: String,
    pub system_prompt: String,
    #[serde(default)]
    pub tier: Option<Tier>,
    pub tools: Vec<ToolName>,
    #[serde(default)]
    pub limits: LimitsOverride,
    /// A JSON Schema every answer of this role must match unless a spawn gives its own
    /// (`[roles.NAME.output_schema]`, a TOML table written like the JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

/// Where the effective configuration came from, for messages.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigSource {
    Builtin,
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Builtin => f.write_str("built-in limits.toml"),
            ConfigSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} ({origin}): {source}; fix the path or unset it")]
    Read {
        path: PathBuf,
        origin: &'static str,
        source: std::io::Error,
    },
    #[error("{source_name}: not valid TOML: {message}")]
    Syntax {
        source_name: ConfigSource,
        message: String,
    },
    #[error("{source_name}: {key}: {message}")]
    Schema {
        source_name: ConfigSource,
        key: String,
        message: String,
    },
    #[error("{source_name}: {key} = {value}: {fix}")]
    Invalid {
        source_name: ConfigSource,
        key: String,
        value: String,
        fix: String,
    },
}

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
}

impl Config {
    /// The price of MODEL on PROVIDER: `[pricing."PROVIDER/MODEL"]`, else
    /// `[pricing."MODEL"]`.
    pub fn price_for(&self, provider: &str, model: &str) -> Option<Price> {
        self.pricing
            .get(&format!("{provider}/{model}"))
            .or_else(|| self.pricing.get(model))
            .copied()
    }

    /// The default tier's provider and its key variable when `env` lacks that key.
    pub fn default_tier_missing_key(
        &self,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<(String, String)> {
        let provider = &self.tiers.get(self.routing.default_tier).provider;
        let var = self.providers.get(provider)?.api_key_env.as_deref()?;
        (!var.is_empty() && env(var).is_none_or(|v| v.is_empty()))
            .then(|| (provider.clone(), var.to_string()))
    }

    /// `--check-config`'s account of the providers' endpoints, as TOML comments: each
    /// provider's URL in force under `env` and where it came from; and the overrides
    /// from the environment that no request could use.
    pub fn endpoints_in_force(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> (String, Vec<BaseUrlError>) {
        let mut text = String::from(
            "# providers' endpoints in force (an environment variable overrides base_url)\n",
        );
        let mut bad = Vec::new();
        for (name, provider) in &self.providers {
            match provider.effective_base_url(name, &env) {
                Ok(url) => text.push_str(&format!(
                    "#   {name}: {} (from {})\n",
                    without_password(&url.url),
                    url.source
                )),
                Err(e) => {
                    text.push_str(&format!("#   {name}: invalid: {e}\n"));
                    bad.push(e);
                }
            }
        }
        (text, bad)
    }

    /// Renders the effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
