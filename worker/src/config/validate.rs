//! Validating a loaded configuration, once, section by section: every range, every name
//! one section gives another (a tier's provider, a rule's role), every role's schema. The
//! first problem is the error, naming its key, its value and the fix.

use std::collections::BTreeMap;

use super::{
    Config, ConfigError, ConfigSource, DEFAULT_ROLE, KILL_GRACE_MAX_MS, ProviderConfig,
    ServerConfig, check_base_url,
};
use crate::values::{LIMIT_KEYS, LimitKey, Limits, Price, Tier, fmt_limit};

/// A key with a value it may not take: the key (with its section), the value as shown,
/// and the fix.
struct Invalid {
    key: String,
    value: String,
    fix: String,
}

impl Invalid {
    fn new(key: impl Into<String>, value: impl Into<String>, fix: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            value: value.into(),
            fix: fix.into(),
        }
    }
}

type Checked = Result<(), Invalid>;

impl Config {
    /// Checks every section; the first invalid key is the error, said as in `source`.
    pub(super) fn validate(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        let checked = check_server(&self.server)
            .and_then(|()| check_defaults_and_max(&self.defaults, &self.max))
            .and_then(|()| check_providers(&self.providers))
            .and_then(|()| self.check_tiers())
            .and_then(|()| self.check_roles())
            .and_then(|()| check_pricing(&self.pricing));
        checked.map_err(|Invalid { key, value, fix }| ConfigError::Invalid {
            source_name: source.clone(),
            key,
            value,
            fix,
        })
    }

    /// Each tier names a provider of `[providers]` and a model.
    fn check_tiers(&self) -> Checked {
        for tier in Tier::ALL {
            let t = self.tiers.get(tier);
            if !self.providers.contains_key(&t.provider) {
                let names = self.providers.keys().cloned().collect::<Vec<_>>();
                return Err(Invalid::new(
                    format!("[tiers.{tier}] provider"),
                    format!("{:?}", t.provider),
                    format!(
                        "no such provider; use one of {} or add [providers.{}]",
                        names.join(", "),
                        t.provider
                    ),
                ));
            }
            if t.model.trim().is_empty() {
                return Err(Invalid::new(
                    format!("[tiers.{tier}] model"),
                    "\"\"",
                    "must name a model",
                ));
            }
        }
        Ok(())
    }

    /// The default role exists, every role rule names a role, and every role has a
    /// prompt, a valid schema if any, and limits in range and within `[max]`.
    fn check_roles(&self) -> Checked {
        if !self.roles.contains_key(DEFAULT_ROLE) {
            return Err(Invalid::new(
                format!("[roles.{DEFAULT_ROLE}]"),
                "missing",
                "the default role must exist; do not remove it",
            ));
        }
        for (i, rule) in self.routing.role_rules.iter().enumerate() {
            if !self.roles.contains_key(&rule.role) {
                let names = self.roles.keys().cloned().collect::<Vec<_>>();
                return Err(Invalid::new(
                    format!("[[routing.role_rules]] #{} role", i + 1),
                    format!("{:?}", rule.role),
                    format!("no such role; use one of {}", names.join(", ")),
                ));
            }
        }
        for (name, role) in &self.roles {
            if role.system_prompt.trim().is_empty() {
                return Err(Invalid::new(
                    format!("[roles.{name}] system_prompt"),
                    "\"\"",
                    "must not be empty",
                ));
            }
            if let Some(schema) = &role.output_schema
                && let Err(e) = crate::structured::OutputSchema::new(schema)
            {
                return Err(Invalid::new(
                    format!("[roles.{name}.output_schema]"),
                    schema.to_string().chars().take(80).collect::<String>(),
                    e.to_string(),
                ));
            }
            let key = format!("[roles.{name}.limits]");
            check_limit_keys(&key, &|k| (k.get_override)(&role.limits))?;
            let effective = self.defaults.overridden_by(&role.limits);
            if let Some((k, v, m)) = effective.first_above(&self.max) {
                return Err(Invalid::new(
                    format!("{key} {k}"),
                    v,
                    format!("must not exceed [max] {k} = {m}"),
                ));
            }
        }
        Ok(())
    }
}

/// `[server]`: every count and duration in its range, the workspace roots absolute.
fn check_server(s: &ServerConfig) -> Checked {
    let range = |key: &str, v: u64, min: u64, max: u64| {
        if v < min || v > max {
            Err(Invalid::new(
                format!("[server] {key}"),
                v.to_string(),
                format!("must be between {min} and {max}"),
            ))
        } else {
            Ok(())
        }
    };
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
        return Err(Invalid::new(
            "[server] session_budget_usd",
            usd.to_string(),
            "must be between 0 and 100000 (leave it out for no session cap)",
        ));
    }
    if let Some(root) = s
        .workspace_roots
        .iter()
        .find(|r| !std::path::Path::new(r).is_absolute())
    {
        return Err(Invalid::new(
            "[server] workspace_roots",
            format!("{root:?}"),
            "each must be an absolute path, such as \"/home/me/src\"",
        ));
    }
    Ok(())
}

/// `[defaults]` and `[max]`: every key in its range, no default above its maximum.
fn check_defaults_and_max(defaults: &Limits, max: &Limits) -> Checked {
    for (section, limits) in [("defaults", defaults), ("max", max)] {
        check_limit_keys(&format!("[{section}]"), &|k| Some((k.get)(limits)))?;
    }
    if let Some((key, v, m)) = defaults.first_above(max) {
        return Err(Invalid::new(
            format!("[defaults] {key}"),
            v,
            format!("must not exceed [max] {key} = {m}"),
        ));
    }
    Ok(())
}

/// `[providers.NAME]`: a usable base URL, retries, caps and timeouts in range.
fn check_providers(providers: &BTreeMap<String, ProviderConfig>) -> Checked {
    for (name, p) in providers {
        let key = |k: &str| format!("[providers.{name}] {k}");
        if let Err(why) = check_base_url(&p.base_url) {
            return Err(Invalid::new(
                key("base_url"),
                format!("{:?}", p.base_url),
                why,
            ));
        }
        if p.max_retries > 20 {
            return Err(Invalid::new(
                key("max_retries"),
                p.max_retries.to_string(),
                "must be between 0 and 20",
            ));
        }
        if let Some(n) = p.max_concurrent
            && !(1..=1024).contains(&n)
        {
            return Err(Invalid::new(
                key("max_concurrent"),
                n.to_string(),
                "must be between 1 and 1024 (leave it out for no per-provider cap)",
            ));
        }
        if !(1..=3600).contains(&p.request_timeout_seconds) {
            return Err(Invalid::new(
                key("request_timeout_seconds"),
                p.request_timeout_seconds.to_string(),
                "must be between 1 and 3600",
            ));
        }
    }
    Ok(())
}

/// `[pricing."MODEL"]`: every price between 0 and 10,000 USD per million tokens.
fn check_pricing(pricing: &BTreeMap<String, Price>) -> Checked {
    for (model, price) in pricing {
        for (k, v) in [
            ("input", Some(price.input)),
            ("output", Some(price.output)),
            ("cache_write", price.cache_write),
            ("cache_read", price.cache_read),
            ("cached_input", price.cached_input),
        ] {
            let Some(v) = v else { continue };
            if !(0.0..=10_000.0).contains(&v) {
                return Err(Invalid::new(
                    format!("[pricing.\"{model}\"] {k}"),
                    v.to_string(),
                    "must be between 0 and 10000 USD per million tokens",
                ));
            }
        }
    }
    Ok(())
}

/// Checks every limit key that `get` yields against its range (a section's limits, or a
/// role's overrides).
fn check_limit_keys(section: &str, get: &dyn Fn(&LimitKey) -> Option<f64>) -> Checked {
    for k in LIMIT_KEYS {
        if let Some(v) = get(k)
            && (v < k.min || v > k.max || v.is_nan())
        {
            let fix = if v < k.min {
                format!("must be at least {}", fmt_limit(k.min))
            } else {
                format!("must be at most {}", fmt_limit(k.max))
            };
            return Err(Invalid::new(
                format!("{section} {}", k.name),
                fmt_limit(v),
                fix,
            ));
        }
    }
    Ok(())
}
