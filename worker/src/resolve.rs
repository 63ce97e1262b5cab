//! Turns what a caller asks for (a spawn, or a manual run's options) into a complete
//! `TaskSpec`: role, tier, model, provider, effective limits, price. The server and a
//! manual run both resolve here, so they agree.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::protocol::{ProviderSpec, TaskSpec};
use crate::provider::estimate_tokens;
use crate::roles::{RoleChoice, UnknownRole, select_role};
use crate::routing::{Route, RouteError, RouteRequest, route};
use crate::structured::{OutputSchema, SchemaError};
use crate::values::{Limits, LimitsOverride, TaskType, Tier, fmt_limit};

/// Longest task text accepted (bytes).
pub const MAX_TASK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct SpawnRequest {
    pub task: String,
    pub role: Option<String>,
    pub task_type: Option<TaskType>,
    pub tier: Option<Tier>,
    pub model: Option<String>,
    pub cwd: Option<PathBuf>,
    pub limits: LimitsOverride,
    pub agent_id: Option<String>,
    /// A JSON Schema the answer must match; overrides the role's `output_schema`.
    pub output_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub spec: TaskSpec,
    pub route: Route,
    pub role_choice: RoleChoice,
    /// One line each, for the caller: what will not work as asked (e.g. a budget that
    /// cannot be enforced for an unpriced model).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("task is empty; describe the work for the agent in `task`")]
    EmptyTask,
    #[error(
        "task is {0} bytes, above the {MAX_TASK_BYTES}-byte limit; put long material in a file under cwd and point the agent at it"
    )]
    TaskTooLong(usize),
    #[error(transparent)]
    Role(#[from] UnknownRole),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(
        "limits.{key} = {value} is above the ceiling {max} ([max] {key}); ask for at most {max}, or raise [max] {key} in the config"
    )]
    AboveCeiling {
        key: &'static str,
        value: String,
        max: String,
    },
    #[error("limits.{key} = {value} is below the minimum {min}; ask for at least {min}")]
    BelowMinimum {
        key: &'static str,
        value: String,
        min: String,
    },
    #[error(
        "cwd {path}: {reason}; give an existing directory (absolute, or relative to the server's directory)"
    )]
    BadCwd { path: PathBuf, reason: String },
    #[error(
        "limits.budget_usd = {budget} cannot pay for a single request to `{model}`: its first request alone costs about ${need} (about {input_tokens} input tokens and one output token); ask for at least ${need}"
    )]
    BudgetTooSmall {
        budget: String,
        model: String,
        need: String,
        input_tokens: u64,
    },
    #[error(
        "limits.max_total_tokens = {max} cannot hold a single request: the first request alone is about {input_tokens} input tokens; ask for at least {need}"
    )]
    TokensTooFew {
        max: u64,
        input_tokens: u64,
        need: u64,
    },
}

/// Resolves a request completely, or says what to change.
pub fn resolve(config: &Config, req: &SpawnRequest) -> Result<Resolution, ResolveError> {
    if req.task.trim().is_empty() {
        return Err(ResolveError::EmptyTask);
    }
    if req.task.len() > MAX_TASK_BYTES {
        return Err(ResolveError::TaskTooLong(req.task.len()));
    }
    let (role_name, role_choice) = select_role(config, req.role.as_deref(), &req.task)?;
    // select_role only returns names present in the map.
    let role = &config.roles[&role_name];
    let route = route(
        config,
        &RouteRequest {
            model: req.model.as_deref(),
            tier: req.tier,
            task_type: req.task_type,
            role_tier: role.tier,
            task: &req.task,
        },
    )?;
    let limits = effective_limits(config, &role.limits, &req.limits)?;
    let cwd = resolve_cwd(req.cwd.as_deref())?;
    let output_schema = req.output_schema.as_ref().or(role.output_schema.as_ref());
    if let Some(schema) = output_schema {
        OutputSchema::new(schema)?;
    }
    // Validation guarantees every tier's provider exists.
    let p = &config.providers[&route.provider];
    let spec = TaskSpec {
        task: req.task.clone(),
        agent_id: req.agent_id.clone(),
        role: role_name,
        system_prompt: role.system_prompt.clone(),
        tools: role.tools.clone(),
        provider: ProviderSpec {
            name: route.provider.clone(),
            kind: p.kind,
            base_url: p.base_url.clone(),
            base_url_env: p.base_url_env.clone().filter(|s| !s.is_empty()),
            api_key_env: p.api_key_env.clone().filter(|s| !s.is_empty()),
            max_retries: p.max_retries,
            request_timeout_seconds: p.request_timeout_seconds,
            prompt_caching: p.prompt_caching,
            prompt_cache_key: p.prompt_cache_key,
        },
        model: route.model.clone(),
        cwd,
        limits,
        price: config.price_for(&route.provider, &route.model),
        history: Vec::new(),
        sandbox: config.server.sandbox,
        output_schema: output_schema.cloned(),
    };
    let mut warnings: Vec<String> = crate::suggest::model_warning(config, &route)
        .into_iter()
        .collect();
    warnings.extend(check_budgets(&spec)?);
    Ok(Resolution {
        spec,
        route,
        role_choice,
        warnings,
    })
}

/// Spawn's limits > the role's > `[defaults]`; a spawn above `[max]` is an error,
/// never a silent clamp.
pub fn effective_limits(
    config: &Config,
    role: &LimitsOverride,
    spawn: &LimitsOverride,
) -> Result<Limits, ResolveError> {
    within_bounds(
        config,
        config.defaults.overridden_by(role).overridden_by(spawn),
    )
}

/// `current` limits with `raise` applied (a follow-up's `limits`), within `[max]` like a
/// spawn's.
pub fn raised_limits(
    config: &Config,
    current: &Limits,
    raise: &LimitsOverride,
) -> Result<Limits, ResolveError> {
    within_bounds(config, current.overridden_by(raise))
}

fn within_bounds(config: &Config, requested: Limits) -> Result<Limits, ResolveError> {
    if let Some((key, value, max)) = requested.first_above(&config.max) {
        return Err(ResolveError::AboveCeiling { key, value, max });
    }
    if let Some((key, min, value)) = Limits::MIN.first_above(&requested) {
        return Err(ResolveError::BelowMinimum { key, value, min });
    }
    Ok(requested)
}

/// The variable holding `provider`'s API key when `env` lacks it (unset or empty), as
/// the provider client would find it missing; None when the key is there or the provider
/// needs none (no `api_key_env`, e.g. a local Ollama).
pub fn missing_key(
    provider: &ProviderSpec,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<&str> {
    let var = provider.api_key_env.as_deref()?;
    env(var).is_none_or(|v| v.is_empty()).then_some(var)
}

/// Refuses budgets that cannot pay for the first request; warns about the USD budget of
/// an unpriced model, which cannot be enforced.
fn check_budgets(spec: &TaskSpec) -> Result<Vec<String>, ResolveError> {
    let tools = crate::tools::definitions(&spec.tools);
    let tool_bytes: usize = tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + t.input_schema.to_string().len())
        .sum();
    let input_tokens = estimate_tokens(spec.system_prompt.len() + spec.task.len() + tool_bytes);
    let limits = &spec.limits;
    if limits.max_total_tokens <= input_tokens {
        return Err(ResolveError::TokensTooFew {
            max: limits.max_total_tokens,
            input_tokens,
            need: input_tokens + 1,
        });
    }
    let Some(price) = spec.price else {
        return Ok(vec![format!(
            "model `{model}` has no price, so its cost is reported as unknown and budget_usd (${budget}) cannot be enforced for it (token budgets still hold); to enforce it, add [pricing.\"{model}\"] with input = and output = (USD per million tokens) to your config",
            model = spec.model,
            budget = fmt_limit(limits.budget_usd),
        )]);
    };
    let need = price.cost(input_tokens, 1);
    if limits.budget_usd < need {
        return Err(ResolveError::BudgetTooSmall {
            budget: fmt_limit(limits.budget_usd),
            model: spec.model.clone(),
            // Rounded up, so the amount suggested is enough.
            need: format!("{:.6}", (need * 1e6).ceil() / 1e6),
            input_tokens,
        });
    }
    Ok(Vec::new())
}

fn resolve_cwd(cwd: Option<&Path>) -> Result<PathBuf, ResolveError> {
    let raw = match cwd {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    let bad = |reason: String| ResolveError::BadCwd {
        path: raw.clone(),
        reason,
    };
    let canon = std::fs::canonicalize(&raw).map_err(|e| bad(e.to_string()))?;
    if !canon.is_dir() {
        return Err(bad("not a directory".into()));
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(task: &str) -> SpawnRequest {
        SpawnRequest {
            task: task.into(),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_a_complete_spec() {
        let c = Config::builtin().unwrap();
        let r = resolve(&c, &req("Review this diff for races")).unwrap();
        assert_eq!(r.spec.role, "reviewer");
        assert_eq!(r.spec.model, "claude-sonnet-5-5");
        assert_eq!(r.route.tier, Tier::Balanced);
        assert_eq!(
            r.spec.provider.api_key_env.as_deref(),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(r.spec.price.unwrap().input, 2.0);
        assert!(r.spec.cwd.is_absolute());
    }

    #[test]
    fn a_missing_or_empty_key_is_found_and_a_keyless_provider_passes() {
        let c = Config::builtin().unwrap();
        let spec = resolve(&c, &req("x")).unwrap().spec;
        let none = |_: &str| None;
        let empty = |_: &str| Some(std::ffi::OsString::new());
        let set = |_: &str| Some(std::ffi::OsString::from("sk-1"));
        assert_eq!(missing_key(&spec.provider, none), Some("ANTHROPIC_API_KEY"));
        assert_eq!(
            missing_key(&spec.provider, empty),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(missing_key(&spec.provider, set), None);
        let mut keyless = spec.provider.clone();
        keyless.api_key_env = None;
        assert_eq!(missing_key(&keyless, none), None);
        assert_eq!(
            c.default_tier_missing_key(none),
            Some(("anthropic".into(), "ANTHROPIC_API_KEY".into()))
        );
        assert_eq!(c.default_tier_missing_key(set), None);
    }

    #[test]
    fn limits_fall_through_spawn_role_defaults() {
        let c = Config::builtin().unwrap();
        let mut r = req("x");
        r.role = Some("architect".into());
        r.limits.max_turns = Some(5);
        let l = resolve(&c, &r).unwrap().spec.limits;
        assert_eq!(l.max_turns, 5, "spawn");
        assert_eq!(l.budget_usd, 2.0, "role");
        assert_eq!(l.memory_mb, c.defaults.memory_mb, "defaults");
    }

    #[test]
    fn limit_above_ceiling_names_it() {
        let c = Config::builtin().unwrap();
        let mut r = req("x");
        r.limits.memory_mb = Some(100_000);
        let e = resolve(&c, &r).unwrap_err().to_string();
        assert_eq!(
            e,
            "limits.memory_mb = 100000 is above the ceiling 8192 ([max] memory_mb); ask for at most 8192, or raise [max] memory_mb in the config"
        );
        let mut r = req("x");
        r.limits.budget_usd = Some(25.5);
        assert!(
            resolve(&c, &r)
                .unwrap_err()
                .to_string()
                .contains("budget_usd = 25.5")
        );
        let mut r = req("x");
        r.limits.cpu_seconds = Some(u64::MAX);
        let e = resolve(&c, &r).unwrap_err().to_string();
        assert!(
            e.starts_with("limits.cpu_seconds = 18446744073709551615 is above"),
            "echoed exactly, not through a float: {e}"
        );
    }

    #[test]
    fn limit_below_minimum_is_refused() {
        let c = Config::builtin().unwrap();
        let mut r = req("x");
        r.limits.max_turns = Some(0);
        let e = resolve(&c, &r).unwrap_err().to_string();
        assert!(
            e.contains("limits.max_turns = 0 is below the minimum 1"),
            "{e}"
        );
    }

    #[test]
    fn empty_task_and_bad_cwd_are_refused() {
        let c = Config::builtin().unwrap();
        assert!(matches!(
            resolve(&c, &req("  ")),
            Err(ResolveError::EmptyTask)
        ));
        let mut r = req("x");
        r.cwd = Some("/definitely/not/here".into());
        let e = resolve(&c, &r).unwrap_err().to_string();
        assert!(e.starts_with("cwd /definitely/not/here:"), "{e}");
    }

    #[test]
    fn unpriced_model_has_no_price() {
        let c = Config::from_layers(
            Some("[tiers.fast]\nprovider = \"ollama\"\nmodel = \"qwen3:8b\"\n"),
            crate::config::ConfigSource::Builtin,
        )
        .unwrap();
        let mut r = req("x");
        r.tier = Some(Tier::Fast);
        let resolution = resolve(&c, &r).unwrap();
        assert_eq!(resolution.spec.price, None);
        assert_eq!(resolution.spec.provider.api_key_env, None);
        assert_eq!(resolution.warnings.len(), 1);
        let w = &resolution.warnings[0];
        assert!(w.contains("budget_usd ($1) cannot be enforced"), "{w}");
        assert!(w.contains("[pricing.\"qwen3:8b\"]"), "{w}");
    }

    #[test]
    fn priced_model_has_no_warning_and_prices_by_provider_first() {
        let c = Config::from_layers(
            Some("[pricing.\"ollama/qwen3:8b\"]\ninput = 0.0\noutput = 0.0\n"),
            crate::config::ConfigSource::Builtin,
        )
        .unwrap();
        let mut r = req("x");
        r.model = Some("ollama/qwen3:8b".into());
        let resolution = resolve(&c, &r).unwrap();
        assert_eq!(resolution.spec.price.map(|p| p.input), Some(0.0));
        assert!(resolution.warnings.is_empty());
        assert!(resolve(&c, &req("x")).unwrap().warnings.is_empty());
    }

    #[test]
    fn budgets_that_cannot_pay_for_one_request_are_refused() {
        let c = Config::builtin().unwrap();
        for budget in [0.0, 0.000001] {
            let mut r = req("Summarize the README");
            r.limits.budget_usd = Some(budget);
            let e = resolve(&c, &r).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("limits.budget_usd = {budget} cannot pay for a single request to `claude-haiku-5-5`")),
                "{e}"
            );
            assert!(e.contains("ask for at least $0.0"), "{e}");
        }
        let mut r = req("Summarize the README");
        r.limits.max_total_tokens = Some(10);
        let e = resolve(&c, &r).unwrap_err().to_string();
        assert!(
            e.starts_with("limits.max_total_tokens = 10 cannot hold a single request"),
            "{e}"
        );
        let mut r = req("Summarize the README");
        r.limits.budget_usd = Some(0.01);
        assert!(resolve(&c, &r).is_ok());
    }
}
