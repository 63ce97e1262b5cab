//! The configuration: its schema, loading (built-in `limits.toml` overridden key by key
//! by a user file) and validation, done once at load.
//!
//! Not here: turning a spawn request into a model and a role (`routing`, `roles`,
//! `resolve`), and the value types the configuration shares with the wire (`values`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::values::{
    LIMIT_KEYS, LimitKey, Limits, LimitsOverride, Price, ProviderKind, SandboxMode, TaskType, Tier,
    ToolName, fmt_limit,
};

/// The repo's `limits.toml`: complete defaults, documented key by key.
pub const BUILTIN: &str = include_str!("../../limits.toml");

/// Environment variable naming a user configuration file.
pub const CONFIG_ENV: &str = "BG_AGENTS_CONFIG";

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

/// A provider's endpoint in force: `base_url`, or the variable `base_url_env` names when
/// it is set and non-empty (as the official SDKs honour ANTHROPIC_BASE_URL).
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveUrl {
    pub url: String,
    pub source: UrlSource,
}

/// Where an endpoint came from, for messages that must name what to change.
#[derive(Debug, Clone, PartialEq)]
pub enum UrlSource {
    /// `[providers.NAME] base_url`.
    File { provider: String },
    /// An environment variable, overriding `[providers.NAME] base_url`.
    Env { var: String, provider: String },
}

impl fmt::Display for UrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlSource::File { provider } => write!(f, "[providers.{provider}] base_url"),
            UrlSource::Env { var, provider } => {
                write!(f, "${var}, which overrides [providers.{provider}] base_url")
            }
        }
    }
}

impl UrlSource {
    /// What to check or change when the endpoint misbehaves: the variable, else the key.
    pub fn what_to_check(&self) -> String {
        match self {
            UrlSource::File { provider } => format!("[providers.{provider}] base_url"),
            UrlSource::Env { var, provider } => {
                format!("{var} (it overrides [providers.{provider}] base_url)")
            }
        }
    }
}

/// An endpoint override from the environment that no request could use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{var} = {value:?} (it overrides [providers.{provider}] base_url): {why}; fix the variable in the environment that starts bg-agents, or unset it to use base_url"
)]
pub struct BaseUrlError {
    pub var: String,
    pub provider: String,
    pub value: String,
    pub why: String,
}

/// Why `url` cannot be a provider's base URL, if it cannot: it must be an absolute
/// http:// or https:// URL with a host. The same rule for the file and the environment.
pub fn check_base_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https:// (e.g. https://api.anthropic.com)".into());
    }
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(_) => Err("names no host (e.g. https://api.anthropic.com)".into()),
        Err(e) => Err(format!("is not a URL ({e})")),
    }
}

/// `url` as it may be shown: a password in its user part is replaced, so credentials
/// written into a base URL never reach a screen or a log.
pub fn without_password(url: &str) -> String {
    match url_userinfo(url).and_then(|u| Some((u, u.split_once(':')?.0))) {
        Some((userinfo, user)) => url.replacen(
            &format!("{userinfo}@"),
            &format!("{user}:[redacted password]@"),
            1,
        ),
        None => url.to_string(),
    }
}

/// The user part (`user` or `user:password`) of `url`'s authority, if it has one; the
/// one reading of it that shown URLs and the provider's redaction share.
pub fn url_userinfo(url: &str) -> Option<&str> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// The endpoint of provider `name` in force under `env`: `base_url_env`'s value when set
/// and non-empty (checked like `base_url` in the file), else `base_url`.
pub fn effective_base_url(
    name: &str,
    base_url: &str,
    base_url_env: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<EffectiveUrl, BaseUrlError> {
    let over = base_url_env
        .filter(|v| !v.is_empty())
        .and_then(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
    let Some((var, value)) = over else {
        return Ok(EffectiveUrl {
            url: base_url.to_string(),
            source: UrlSource::File {
                provider: name.to_string(),
            },
        });
    };
    let value = value.trim().to_string();
    check_base_url(&value).map_err(|why| BaseUrlError {
        var: var.to_string(),
        provider: name.to_string(),
        value: value.clone(),
        why,
    })?;
    Ok(EffectiveUrl {
        url: value,
        source: UrlSource::Env {
            var: var.to_string(),
            provider: name.to_string(),
        },
    })
}

impl ProviderConfig {
    /// This provider's endpoint in force under `env` (see [`effective_base_url`]).
    pub fn effective_base_url(
        &self,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EffectiveUrl, BaseUrlError> {
        effective_base_url(name, &self.base_url, self.base_url_env.as_deref(), env)
    }
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

    /// The built-in defaults alone.
    pub fn builtin() -> Result<Config, ConfigError> {
        Self::from_layers(None, ConfigSource::Builtin)
    }

    /// Loads with the documented precedence: `explicit` (--config), else $BG_AGENTS_CONFIG,
    /// else $XDG_CONFIG_HOME/bg-agents/limits.toml (or ~/.config/...) if it exists, else
    /// the built-in defaults alone.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let env_path = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        let (path, origin) = if let Some(p) = explicit {
            (Some(p.to_path_buf()), "--config")
        } else if let Some(p) = env_path {
            (Some(PathBuf::from(p)), CONFIG_ENV)
        } else {
            (user_config_path().filter(|p| p.is_file()), "user config")
        };
        match path {
            None => Ok(Loaded {
                config: Self::builtin()?,
                source: ConfigSource::Builtin,
            }),
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    origin,
                    source,
                })?;
                let source = ConfigSource::File(path);
                Ok(Loaded {
                    config: Self::from_layers(Some(&text), source.clone())?,
                    source,
                })
            }
        }
    }

    /// Parses the built-in defaults, merges `user` over them key by key, validates.
    pub fn from_layers(user: Option<&str>, source: ConfigSource) -> Result<Config, ConfigError> {
        let mut merged: toml::Table = toml::from_str(BUILTIN).map_err(|e| ConfigError::Syntax {
            source_name: ConfigSource::Builtin,
            message: e.to_string(),
        })?;
        if let Some(text) = user {
            let user: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
                source_name: source.clone(),
                message: e.to_string(),
            })?;
            merge(&mut merged, user);
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|e| ConfigError::Schema {
                source_name: source.clone(),
                key: toml_key(&e.path().to_string()),
                message: one_line_message(&e.inner().to_string()),
            })?;
        config.validate(&source)?;
        // Keyword matching is case-insensitive: lowercase the keywords once, here.
        let rules = config.routing.rules.iter_mut().map(|r| &mut r.keywords);
        let role_rules = config
            .routing
            .role_rules
            .iter_mut()
            .map(|r| &mut r.keywords);
        for k in rules.chain(role_rules).flatten() {
            *k = k.to_lowercase();
        }
        Ok(config)
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

    fn validate(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, fix: String| ConfigError::Invalid {
            source_name: source.clone(),
            key,
            value,
            fix,
        };
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if v < min || v > max {
                Err(invalid(
                    format!("[server] {key}"),
                    v.to_string(),
                    format!("must be between {min} and {max}"),
                ))
            } else {
                Ok(())
            }
        };
        let s = &self.server;
        range("max_concurrent", s.max_concurrent as u64, 1, 1024)?;
        range("max_queued", s.max_queued as u64, 0, 100_000)?;
        range("retained_agents", s.retained_agents as u64, 1, 100_000)?;
        range("kill_grace_ms", s.kill_grace_ms, 0, KILL_GRACE_MAX_MS)?;
        range("max_wait_seconds", s.max_wait_seconds, 1, 3600)?;
        range("transcript_max_mb", s.transcript_max_mb, 1, 10_240)?;
        range(
            "transcript_retention_days",
            s.transcript_retention_days,
            0,
            36_500,
        )?;
        if let Some(n) = s.session_max_tokens {
            range("session_max_tokens", n, 1, 10_000_000_000)?;
        }
        if let Some(usd) = s.session_budget_usd
            && !(0.0..=100_000.0).contains(&usd)
        {
            return Err(invalid(
                "[server] session_budget_usd".into(),
                usd.to_string(),
                "must be between 0 and 100000 (leave it out for no session cap)".into(),
            ));
        }

        if let Some(root) = s
            .workspace_roots
            .iter()
            .find(|r| !std::path::Path::new(r).is_absolute())
        {
            return Err(invalid(
                "[server] workspace_roots".into(),
                format!("{root:?}"),
                "each must be an absolute path, such as \"/home/me/src\"".into(),
            ));
        }

        for (section, limits) in [("defaults", &self.defaults), ("max", &self.max)] {
            check_limits(&format!("[{section}]"), &|k| Some((k.get)(limits)))
                .map_err(|(k, v, fix)| invalid(k, v, fix))?;
        }
        if let Some((key, v, m)) = self.defaults.first_above(&self.max) {
            return Err(invalid(
                format!("[defaults] {key}"),
                v,
                format!("must not exceed [max] {key} = {m}"),
            ));
        }

        for (name, p) in &self.providers {
            let key = |k: &str| format!("[providers.{name}] {k}");
            if let Err(why) = check_base_url(&p.base_url) {
                return Err(invalid(key("base_url"), format!("{:?}", p.base_url), why));
            }
            if p.max_retries > 20 {
                return Err(invalid(
                    key("max_retries"),
                    p.max_retries.to_string(),
                    "must be between 0 and 20".into(),
                ));
            }
            if let Some(n) = p.max_concurrent
                && !(1..=1024).contains(&n)
            {
                return Err(invalid(
                    key("max_concurrent"),
                    n.to_string(),
                    "must be between 1 and 1024 (leave it out for no per-provider cap)".into(),
                ));
            }
            if !(1..=3600).contains(&p.request_timeout_seconds) {
                return Err(invalid(
                    key("request_timeout_seconds"),
                    p.request_timeout_seconds.to_string(),
                    "must be between 1 and 3600".into(),
                ));
            }
        }

        let provider_names = || {
            self.providers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        for tier in Tier::ALL {
            let t = self.tiers.get(tier);
            if !self.providers.contains_key(&t.provider) {
                return Err(invalid(
                    format!("[tiers.{tier}] provider"),
                    format!("{:?}", t.provider),
                    format!(
                        "no such provider; use one of {} or add [providers.{}]",
                        provider_names(),
                        t.provider
                    ),
                ));
            }
            if t.model.trim().is_empty() {
                return Err(invalid(
                    format!("[tiers.{tier}] model"),
                    "\"\"".into(),
                    "must name a model".into(),
                ));
            }
        }

        let role_names = || self.roles.keys().cloned().collect::<Vec<_>>().join(", ");
        if !self.roles.contains_key(DEFAULT_ROLE) {
            return Err(invalid(
                format!("[roles.{}]", DEFAULT_ROLE),
                "missing".into(),
                "the default role must exist; do not remove it".into(),
            ));
        }
        for (i, rule) in self.routing.role_rules.iter().enumerate() {
            if !self.roles.contains_key(&rule.role) {
                return Err(invalid(
                    format!("[[routing.role_rules]] #{} role", i + 1),
                    format!("{:?}", rule.role),
                    format!("no such role; use one of {}", role_names()),
                ));
            }
        }
        for (name, role) in &self.roles {
            if role.system_prompt.trim().is_empty() {
                return Err(invalid(
                    format!("[roles.{name}] system_prompt"),
                    "\"\"".into(),
                    "must not be empty".into(),
                ));
            }
            if let Some(schema) = &role.output_schema
                && let Err(e) = crate::structured::OutputSchema::new(schema)
            {
                return Err(invalid(
                    format!("[roles.{name}.output_schema]"),
                    schema.to_string().chars().take(80).collect(),
                    e.to_string(),
                ));
            }
            let key = format!("[roles.{name}.limits]");
            check_limits(&key, &|k| (k.get_override)(&role.limits))
                .map_err(|(k, v, fix)| invalid(k, v, fix))?;
            let effective = self.defaults.overridden_by(&role.limits);
            if let Some((k, v, m)) = effective.first_above(&self.max) {
                return Err(invalid(
                    format!("{key} {k}"),
                    v,
                    format!("must not exceed [max] {k} = {m}"),
                ));
            }
        }
        for (model, price) in &self.pricing {
            for (k, v) in [
                ("input", Some(price.input)),
                ("output", Some(price.output)),
                ("cache_write", price.cache_write),
                ("cache_read", price.cache_read),
                ("cached_input", price.cached_input),
            ] {
                let Some(v) = v else { continue };
                if !(0.0..=10_000.0).contains(&v) {
                    return Err(invalid(
                        format!("[pricing.\"{model}\"] {k}"),
                        v.to_string(),
                        "must be between 0 and 10000 USD per million tokens".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks every limit key that `get` yields against its range; on failure
/// returns (key, value, fix).
fn check_limits(
    section: &str,
    get: &dyn Fn(&LimitKey) -> Option<f64>,
) -> Result<(), (String, String, String)> {
    for k in LIMIT_KEYS {
        if let Some(v) = get(k)
            && (v < k.min || v > k.max || v.is_nan())
        {
            let fix = if v < k.min {
                format!("must be at least {}", fmt_limit(k.min))
            } else {
                format!("must be at most {}", fmt_limit(k.max))
            };
            return Err((format!("{section} {}", k.name), fmt_limit(v), fix));
        }
    }
    Ok(())
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// toml's message without its trailing "in `table`" line (the key already names it),
/// on one line: it is read in logs and tool errors.
fn one_line_message(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("in `"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Turns serde_path_to_error's `max.memory_mb` into `[max] memory_mb`.
fn toml_key(path: &str) -> String {
    match path.rsplit_once('.') {
        Some((table, key)) => format!("[{table}] {key}"),
        None if path == "." || path.is_empty() => "(top level)".into(),
        None => path.to_string(),
    }
}

/// `$XDG_CONFIG_HOME/bg-agents/limits.toml`, else `~/.config/bg-agents/limits.toml`.
pub fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("bg-agents").join("limits.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::TokenCounts;

    fn user(text: &str) -> Result<Config, ConfigError> {
        Config::from_layers(Some(text), ConfigSource::File("user.toml".into()))
    }

    fn err(text: &str) -> String {
        user(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn builtin_defaults_load_and_validate() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.tiers.fast.model, "claude-haiku-5-5");
        assert_eq!(c.tiers.balanced.model, "claude-sonnet-5-5");
        assert_eq!(c.tiers.quality.model, "claude-opus-5-5");
        assert_eq!(c.server.max_wait_seconds, 50);
        assert_eq!(c.server.kill_grace_ms, 2000);
        assert_eq!(c.server.transcript_retention_days, 30);
        assert_eq!(c.defaults.max_output_bytes, 1 << 20);
        assert!(c.roles.contains_key("general"));
        for role in ["explorer", "analyst", "reviewer", "architect"] {
            assert!(c.roles.contains_key(role), "{role}");
        }
    }

    #[test]
    fn user_file_overrides_key_by_key() {
        let c = user("[server]\nmax_concurrent = 3\n[tiers.fast]\nmodel = \"qwen3:8b\"\nprovider = \"ollama\"\n").unwrap();
        assert_eq!(c.server.max_concurrent, 3);
        assert_eq!(c.server.max_queued, 1000, "untouched keys keep defaults");
        assert_eq!(c.tiers.fast.provider, "ollama");
        assert_eq!(c.tiers.balanced.model, "claude-sonnet-5-5");
    }

    #[test]
    fn user_file_adds_a_role_and_overrides_one_key_of_another() {
        let c = user(
            "[roles.security]\nsystem_prompt = \"Audit.\"\ntools = [\"grep\"]\ntier = \"quality\"\n\
             [roles.explorer]\ntier = \"balanced\"\n",
        )
        .unwrap();
        assert_eq!(c.roles["security"].tools, vec![ToolName::Grep]);
        assert_eq!(c.roles["explorer"].tier, Some(Tier::Balanced));
        assert!(c.roles["explorer"].system_prompt.contains("explorer"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[max]\nmemroy_mb = 10\n");
        assert!(e.contains("user.toml"), "{e}");
        assert!(e.contains("[max] memroy_mb"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_section_is_named() {
        let e = err("[limitz]\nx = 1\n");
        assert!(e.contains("limitz"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err("[server]\nmax_concurrent = \"many\"\n");
        assert!(e.contains("[server] max_concurrent"), "{e}");
    }

    #[test]
    fn bad_toml_syntax_names_the_file() {
        let e = err("[server\n");
        assert!(e.contains("user.toml: not valid TOML"), "{e}");
    }

    #[test]
    fn memory_below_minimum_names_key_and_fix() {
        let e = err("[max]\nmemory_mb = 0\n");
        assert!(
            e.contains("[max] memory_mb = 0: must be at least 32"),
            "{e}"
        );
    }

    #[test]
    fn each_limit_key_range_is_checked() {
        for (key, bad) in [
            ("cpu_seconds", "0"),
            ("open_files", "1"),
            ("timeout_seconds", "0"),
            ("max_output_bytes", "10"),
            ("max_turns", "0"),
            ("max_tokens", "0"),
            ("max_total_tokens", "0"),
            ("budget_usd", "-1.0"),
        ] {
            let e = err(&format!("[defaults]\n{key} = {bad}\n"));
            assert!(e.contains(&format!("[defaults] {key} = ")), "{key}: {e}");
            assert!(e.contains("must be at least"), "{key}: {e}");
        }
    }

    #[test]
    fn default_above_max_is_rejected() {
        let e = err("[defaults]\nmax_turns = 500\n");
        assert!(
            e.contains("[defaults] max_turns = 500: must not exceed [max] max_turns = 200"),
            "{e}"
        );
    }

    #[test]
    fn server_ranges_are_checked() {
        let e = err("[server]\nmax_concurrent = 0\n");
        assert!(
            e.contains("[server] max_concurrent = 0: must be between 1 and 1024"),
            "{e}"
        );
        let e = err("[server]\nmax_wait_seconds = 0\n");
        assert!(e.contains("[server] max_wait_seconds"), "{e}");
    }

    #[test]
    fn workspace_roots_are_empty_by_default_and_must_be_absolute() {
        assert!(Config::builtin().unwrap().server.workspace_roots.is_empty());
        let c = user("[server]\nworkspace_roots = [\"/home/me/src\"]\n").unwrap();
        assert_eq!(c.server.workspace_roots, ["/home/me/src"]);
        let e = err("[server]\nworkspace_roots = [\"src\"]\n");
        assert!(e.contains("[server] workspace_roots"), "{e}");
        assert!(e.contains("absolute path"), "{e}");
    }

    #[test]
    fn session_caps_are_off_by_default_and_range_checked() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.server.session_budget_usd, None);
        assert_eq!(c.server.session_max_tokens, None);
        let c = user("[server]\nsession_budget_usd = 5.0\nsession_max_tokens = 1000\n").unwrap();
        assert_eq!(c.server.session_budget_usd, Some(5.0));
        let e = err("[server]\nsession_budget_usd = -1.0\n");
        assert!(e.contains("[server] session_budget_usd = -1"), "{e}");
        let e = err("[server]\nsession_max_tokens = 0\n");
        assert!(e.contains("[server] session_max_tokens = 0"), "{e}");
    }

    #[test]
    fn tier_with_unknown_provider_is_rejected() {
        let e = err("[tiers.fast]\nprovider = \"nope\"\n");
        assert!(e.contains("[tiers.fast] provider = \"nope\""), "{e}");
        assert!(e.contains("anthropic"), "{e}");
    }

    #[test]
    fn provider_base_url_must_be_http() {
        let e = err("[providers.anthropic]\nbase_url = \"ftp://x\"\n");
        assert!(e.contains("[providers.anthropic] base_url"), "{e}");
    }

    #[test]
    fn provider_base_url_must_name_a_host() {
        let e = err("[providers.anthropic]\nbase_url = \"https://\"\n");
        assert!(e.contains("[providers.anthropic] base_url"), "{e}");
        let e = err("[providers.anthropic]\nbase_url = \"api.anthropic.com\"\n");
        assert!(e.contains("must start with http:// or https://"), "{e}");
    }

    #[test]
    fn the_effective_base_url_says_whether_the_variable_or_the_file_set_it() {
        let c = Config::builtin().unwrap();
        let p = &c.providers["anthropic"];
        let from_file = p.effective_base_url("anthropic", |_| None).unwrap();
        assert_eq!(from_file.url, "https://api.anthropic.com");
        assert_eq!(
            from_file.source.to_string(),
            "[providers.anthropic] base_url"
        );
        let env = |v: &str| (v == "ANTHROPIC_BASE_URL").then(|| "http://127.0.0.1:8080".into());
        let from_env = p.effective_base_url("anthropic", env).unwrap();
        assert_eq!(from_env.url, "http://127.0.0.1:8080");
        assert_eq!(
            from_env.source.to_string(),
            "$ANTHROPIC_BASE_URL, which overrides [providers.anthropic] base_url"
        );
        let empty = p
            .effective_base_url("anthropic", |_| Some(" ".into()))
            .unwrap();
        assert_eq!(empty.url, "https://api.anthropic.com", "empty is unset");
    }

    #[test]
    fn a_base_url_variable_is_checked_like_the_file() {
        let c = Config::builtin().unwrap();
        let p = &c.providers["anthropic"];
        for bad in ["127.0.0.1:8080", "localhost", "ftp://x", "http://"] {
            let e = p
                .effective_base_url("anthropic", |_| Some(bad.into()))
                .expect_err(bad)
                .to_string();
            assert!(
                e.starts_with(&format!("ANTHROPIC_BASE_URL = {bad:?}")),
                "{e}"
            );
            assert!(e.contains("unset it"), "{e}");
        }
    }

    #[test]
    fn provider_kind_must_be_known() {
        let e = err(
            "[providers.x]\nkind = \"gemini\"\nbase_url = \"http://a\"\nmax_retries = 1\nrequest_timeout_seconds = 5\n",
        );
        assert!(e.contains("[providers.x] kind"), "{e}");
    }

    #[test]
    fn role_rule_naming_unknown_role_is_rejected() {
        let e = err("[[routing.role_rules]]\nrole = \"ghost\"\nkeywords = [\"x\"]\n");
        assert!(e.contains("role_rules"), "{e}");
        assert!(e.contains("ghost"), "{e}");
    }

    #[test]
    fn the_reviewer_schema_example_in_limits_toml_loads_and_bad_role_schemas_are_named() {
        // The commented example, uncommented: it must stay a valid config and schema.
        let example: String = BUILTIN
            .lines()
            .skip_while(|l| *l != "# [roles.reviewer.output_schema]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        assert!(example.contains("severity"), "example not found: {example}");
        let c = user(&example).unwrap();
        let schema = c.roles["reviewer"].output_schema.clone().unwrap();
        let checked = crate::structured::OutputSchema::new(&schema).unwrap();
        let answer = serde_json::json!({"findings": [
            {"file": "a.rs", "line": 3, "severity": "high", "problem": "p", "fix": "f"}
        ]});
        assert_eq!(
            checked.check_value(answer.clone()),
            crate::structured::Checked::Valid(answer)
        );
        let e = err("[roles.reviewer.output_schema]\ntype = \"objekt\"\n");
        assert!(e.contains("[roles.reviewer.output_schema]"), "{e}");
        assert!(e.contains("not a valid JSON Schema"), "{e}");
    }

    #[test]
    fn role_with_unknown_tool_is_rejected() {
        let e = err("[roles.x]\nsystem_prompt = \"p\"\ntools = [\"shell\"]\n");
        assert!(e.contains("[roles.x] tools"), "{e}");
    }

    #[test]
    fn role_limits_above_max_are_rejected() {
        let e = err("[roles.explorer.limits]\nbudget_usd = 100.0\n");
        assert!(
            e.contains("[roles.explorer.limits] budget_usd = 100"),
            "{e}"
        );
    }

    #[test]
    fn negative_price_is_rejected() {
        let e = err("[pricing.\"m\"]\ninput = -1.0\noutput = 1.0\n");
        assert!(e.contains("[pricing.\"m\"] input"), "{e}");
    }

    #[test]
    fn unknown_tier_name_in_routing_is_rejected() {
        let e = err("[routing]\ndefault_tier = \"turbo\"\n");
        assert!(e.contains("[routing] default_tier"), "{e}");
    }

    #[test]
    fn price_computes_cost_per_million() {
        let p = Price::new(2.0, 10.0);
        assert!((p.cost(1_000_000, 100_000) - 3.0).abs() < 1e-9);
        // Cache writes 1.25 ×, reads 0.1 × input by default.
        let t = TokenCounts {
            input: 0,
            cache_write: 1_000_000,
            cache_read: 1_000_000,
            output: 0,
        };
        assert!((p.cost_of(&t) - (2.5 + 0.2)).abs() < 1e-9);
        let own = Price {
            cache_write: Some(3.0),
            cached_input: Some(1.0),
            ..p
        };
        assert!((own.cost_of(&t) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn effective_config_renders_and_reparses() {
        let c = Config::builtin().unwrap();
        let text = c.to_toml();
        let again = Config::from_layers(Some(&text), ConfigSource::Builtin).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn a_password_in_a_base_url_is_never_shown() {
        assert_eq!(
            without_password("http://me:s3cret@127.0.0.1:8080/v1?x=1"),
            "http://me:[redacted password]@127.0.0.1:8080/v1?x=1"
        );
        assert_eq!(without_password("http://me@host/v1"), "http://me@host/v1");
        assert_eq!(
            without_password("https://api.anthropic.com"),
            "https://api.anthropic.com"
        );
    }
}
