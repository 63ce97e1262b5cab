//! Model tiering: which tier, provider and model an agent runs on, and which rule decided.
//! Precedence: explicit model > explicit tier > task_type > the role's tier > keyword
//! classifier over the task text > the default tier; then the policy is checked.

use serde::Serialize;

use crate::config::Config;
use crate::values::{TaskType, Tier};

/// Which rule decided the tier or model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutedBy {
    Model,
    Tier,
    TaskType,
    Role,
    Keyword,
    Default,
}

impl RoutedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutedBy::Model => "model",
            RoutedBy::Tier => "tier",
            RoutedBy::TaskType => "task_type",
            RoutedBy::Role => "role",
            RoutedBy::Keyword => "keyword",
            RoutedBy::Default => "default",
        }
    }
}

/// What a spawn asks for, as far as routing is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    pub model: Option<&'a str>,
    pub tier: Option<Tier>,
    pub task_type: Option<TaskType>,
    pub role_tier: Option<Tier>,
    pub task: &'a str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub tier: Tier,
    pub provider: String,
    pub model: String,
    pub routed_by: RoutedBy,
    /// One sentence for humans: "keyword `review` → balanced".
    pub reason: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error(
        "model is empty; name a model (e.g. `claude-sonnet-5-5`, `ollama/qwen3:8b`), an alias ({aliases}), or leave it out to route by tier"
    )]
    EmptyModel { aliases: String },
    #[error(
        "model `{model}` is not allowed by policy ([routing] allowed_models); use one of: {allowed}; or, to allow it, put this line under [routing] in your config: {paste}"
    )]
    ModelNotAllowed {
        model: String,
        allowed: String,
        paste: String,
    },
    #[error(
        "model `{model}`: no provider `{segment}` is configured; did you mean `{suggestion}`? (providers: {providers}; a first segment that names no provider is taken as part of the model name)"
    )]
    ProviderTypo {
        model: String,
        segment: String,
        suggestion: String,
        providers: String,
    },
    #[error("tier `{tier}` is denied by policy ([routing] denied_tiers); use one of: {allowed}")]
    TierDenied { tier: Tier, allowed: String },
}

/// Routes a request to a tier, provider and model.
pub fn route(config: &Config, req: &RouteRequest<'_>) -> Result<Route, RouteError> {
    let route = match req.model {
        Some(model) => route_model(config, model, req)?,
        None => {
            let (tier, routed_by, reason) = route_tier(config, req);
            let target = config.tiers.get(tier);
            Route {
                tier,
                provider: target.provider.clone(),
                model: target.model.clone(),
                routed_by,
                reason,
            }
        }
    };
    check_policy(config, &route)?;
    Ok(route)
}

/// An explicit model. Any name is accepted: an alias names a tier; a tier's own model
/// selects that tier; `PROVIDER/MODEL` (the first segment a configured provider) runs
/// MODEL on PROVIDER; any other name runs on the provider of the tier the rest of the
/// request routes to, and the reason says so.
fn route_model(config: &Config, model: &str, req: &RouteRequest<'_>) -> Result<Route, RouteError> {
    let model = model.trim();
    if model.is_empty() {
        return Err(RouteError::EmptyModel {
            aliases: aliases(config),
        });
    }
    let on_tier = |tier: Tier, reason: String| {
        let target = config.tiers.get(tier);
        Route {
            tier,
            provider: target.provider.clone(),
            model: target.model.clone(),
            routed_by: RoutedBy::Model,
            reason,
        }
    };
    if let Some(&tier) = config.routing.aliases.get(model) {
        return Ok(on_tier(tier, format!("model alias `{model}` → {tier}")));
    }
    if let Some(tier) = Tier::ALL
        .into_iter()
        .find(|&t| config.tiers.get(t).model == model)
    {
        return Ok(on_tier(tier, format!("model `{model}` ({tier} tier)")));
    }
    // The tier the rest of the request picks: it decides the provider of a bare name,
    // and is what the agent is accounted under.
    let (tier, _, why) = route_tier(config, req);
    if let Some((provider, name)) = model.split_once('/')
        && !name.is_empty()
        && config.providers.contains_key(provider)
    {
        return Ok(Route {
            tier,
            provider: provider.to_string(),
            model: name.to_string(),
            routed_by: RoutedBy::Model,
            reason: format!("model `{model}`: provider `{provider}` named in the model"),
        });
    }
    if let Some((segment, name)) = model.split_once('/')
        && let Some(meant) = crate::suggest::provider_like(config, segment)
    {
        return Err(RouteError::ProviderTypo {
            model: model.to_string(),
            segment: segment.to_string(),
            suggestion: format!("{meant}/{name}"),
            providers: config
                .providers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let provider = config.tiers.get(tier).provider.clone();
    let others: Vec<&str> = config
        .providers
        .keys()
        .map(String::as_str)
        .filter(|p| *p != provider)
        .collect();
    Ok(Route {
        tier,
        reason: format!(
            "model `{model}` is no tier's model, so it runs on provider `{provider}` of the {tier} tier ({why}); to pick the provider, name it PROVIDER/{model} ({})",
            others.join(", ")
        ),
        provider,
        model: model.to_string(),
        routed_by: RoutedBy::Model,
    })
}

fn aliases(config: &Config) -> String {
    config
        .routing
        .aliases
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

fn route_tier(config: &Config, req: &RouteRequest<'_>) -> (Tier, RoutedBy, String) {
    if let Some(t) = req.tier {
        return (t, RoutedBy::Tier, format!("tier `{t}` requested"));
    }
    if let Some(tt) = req.task_type
        && let Some(&t) = config.routing.task_types.get(&tt)
    {
        return (
            t,
            RoutedBy::TaskType,
            format!("task_type `{}` → {t}", tt.as_str()),
        );
    }
    if let Some(t) = req.role_tier {
        return (t, RoutedBy::Role, format!("the role's tier → {t}"));
    }
    let lower = req.task.to_lowercase();
    for rule in &config.routing.rules {
        if let Some(k) = find_keyword(&lower, &rule.keywords) {
            return (
                rule.tier,
                RoutedBy::Keyword,
                format!("keyword `{k}` → {}", rule.tier),
            );
        }
    }
    let t = config.routing.default_tier;
    (t, RoutedBy::Default, format!("default tier → {t}"))
}

fn check_policy(config: &Config, route: &Route) -> Result<(), RouteError> {
    let denied = &config.routing.denied_tiers;
    if denied.contains(&route.tier) {
        let allowed: Vec<&str> = Tier::ALL
            .into_iter()
            .filter(|t| !denied.contains(t))
            .map(Tier::as_str)
            .collect();
        return Err(RouteError::TierDenied {
            tier: route.tier,
            allowed: if allowed.is_empty() {
                "none (every tier is denied)".into()
            } else {
                allowed.join(", ")
            },
        });
    }
    // Empty means any model. A list names models bare or as PROVIDER/MODEL.
    let allowed = &config.routing.allowed_models;
    let qualified = format!("{}/{}", route.provider, route.model);
    if !allowed.is_empty() && !allowed.iter().any(|m| *m == route.model || *m == qualified) {
        let mut with = allowed.clone();
        with.push(route.model.clone());
        return Err(RouteError::ModelNotAllowed {
            model: route.model.clone(),
            allowed: allowed.join(", "),
            paste: format!(
                "allowed_models = [{}]",
                with.iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(())
}

/// The first keyword found in `text_lower` as a whole word (or phrase), in list order.
pub fn find_keyword<'k>(text_lower: &str, keywords: &'k [String]) -> Option<&'k str> {
    keywords
        .iter()
        .find(|k| {
            // Config keywords are lowercased at load; others pay for it here.
            if k.chars().any(char::is_uppercase) {
                contains_word(text_lower, &k.to_lowercase())
            } else {
                contains_word(text_lower, k)
            }
        })
        .map(String::as_str)
}

fn contains_word(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    haystack.match_indices(needle).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + needle.len()..].chars().next();
        !is_word(before) && !is_word(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn cfg() -> Config {
        Config::builtin().unwrap()
    }

    fn by_task(task: &str) -> (Tier, RoutedBy) {
        let r = route(
            &cfg(),
            &RouteRequest {
                task,
                ..Default::default()
            },
        )
        .unwrap();
        (r.tier, r.routed_by)
    }

    #[test]
    fn keyword_table_routes_tasks_to_tiers() {
        use RoutedBy::{Default, Keyword};
        use Tier::{Balanced, Fast, Quality};
        let table: &[(&str, Tier, RoutedBy)] = &[
            ("Find all callers of load_config", Fast, Keyword),
            ("Search the repo for TODO comments", Fast, Keyword),
            ("List the public functions in src/lib.rs", Fast, Keyword),
            ("Where is the HTTP client configured?", Fast, Keyword),
            ("Explore how auth works", Fast, Keyword),
            ("Summarize the README", Fast, Keyword),
            ("Explain the retry policy", Fast, Keyword),
            ("How does the cache invalidate entries?", Fast, Keyword),
            ("Trace a request through the middleware", Fast, Keyword),
            ("What does parse_args return on error?", Fast, Keyword),
            ("Locate the migration files", Fast, Keyword),
            ("Look up the default timeout", Fast, Keyword),
            ("Review this diff for bugs", Balanced, Keyword),
            ("Refactor the config loader into modules", Balanced, Keyword),
            ("Debug the flaky integration test", Balanced, Keyword),
            ("Find the root cause of the deadlock", Balanced, Keyword),
            (
                "Why does the worker leak file descriptors?",
                Balanced,
                Keyword,
            ),
            ("Design a retry API for the client", Balanced, Keyword),
            ("Implement pagination for list endpoints", Balanced, Keyword),
            ("Is there a race condition in the queue?", Balanced, Keyword),
            ("REVIEW the error handling", Balanced, Keyword),
            ("Decide between gRPC and REST for the API", Quality, Keyword),
            (
                "This is a critical decision about storage",
                Quality,
                Keyword,
            ),
            ("Weigh the trade-off of sharding now", Quality, Keyword),
            ("Write a migration plan for the database", Quality, Keyword),
            ("Make an architecture decision on queues", Quality, Keyword),
            ("Security audit of the login flow", Quality, Keyword),
            ("Critical: review the payment code", Quality, Keyword),
            ("Write a poem", Balanced, Default),
            ("Tidy the changelog", Balanced, Default),
            ("refinder module notes", Balanced, Default),
            ("", Balanced, Default),
        ];
        for (task, tier, by) in table {
            assert_eq!(by_task(task), (*tier, *by), "task: {task:?}");
        }
    }

    #[test]
    fn precedence_model_over_tier_over_task_type_over_role_over_keyword() {
        let c = cfg();
        let mut req = RouteRequest {
            model: Some("claude-opus-5-5"),
            tier: Some(Tier::Fast),
            task_type: Some(TaskType::Reasoning),
            role_tier: Some(Tier::Fast),
            task: "find things",
        };
        let r = route(&c, &req).unwrap();
        assert_eq!(
            (r.tier, r.routed_by, r.model.as_str()),
            (Tier::Quality, RoutedBy::Model, "claude-opus-5-5")
        );
        req.model = None;
        let r = route(&c, &req).unwrap();
        assert_eq!((r.tier, r.routed_by), (Tier::Fast, RoutedBy::Tier));
        req.tier = None;
        let r = route(&c, &req).unwrap();
        assert_eq!((r.tier, r.routed_by), (Tier::Balanced, RoutedBy::TaskType));
        req.task_type = None;
        let r = route(&c, &req).unwrap();
        assert_eq!((r.tier, r.routed_by), (Tier::Fast, RoutedBy::Role));
        req.role_tier = None;
        let r = route(&c, &req).unwrap();
        assert_eq!((r.tier, r.routed_by), (Tier::Fast, RoutedBy::Keyword));
    }

    #[test]
    fn task_types_map_to_tiers() {
        let c = cfg();
        for (tt, tier) in [
            (TaskType::Exploration, Tier::Fast),
            (TaskType::Analysis, Tier::Fast),
            (TaskType::Reasoning, Tier::Balanced),
            (TaskType::Critical, Tier::Quality),
        ] {
            let r = route(
                &c,
                &RouteRequest {
                    task_type: Some(tt),
                    task: "x",
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(r.tier, tier);
            assert_eq!(r.model, c.tiers.get(tier).model);
        }
    }

    #[test]
    fn aliases_resolve_to_tier_models() {
        let c = cfg();
        for (alias, model) in [
            ("haiku", "claude-haiku-5-5"),
            ("sonnet", "claude-sonnet-5-5"),
            ("opus", "claude-opus-5-5"),
        ] {
            let r = route(
                &c,
                &RouteRequest {
                    model: Some(alias),
                    task: "x",
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(r.model, model);
            assert_eq!(r.routed_by, RoutedBy::Model);
        }
    }

    #[test]
    fn priced_model_runs_on_the_routed_tiers_provider() {
        let r = route(
            &cfg(),
            &RouteRequest {
                model: Some("claude-sonnet-4-6"),
                task: "find x",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.tier, r.provider.as_str()),
            ("claude-sonnet-4-6", Tier::Fast, "anthropic")
        );
    }

    #[test]
    fn any_bare_model_runs_on_the_routed_tiers_provider_and_says_so() {
        let r = route(
            &cfg(),
            &RouteRequest {
                model: Some("llama3.2"),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.provider.as_str(), r.tier),
            ("llama3.2", "anthropic", Tier::Balanced)
        );
        assert!(r.reason.contains("provider `anthropic`"), "{}", r.reason);
        assert!(r.reason.contains("PROVIDER/llama3.2"), "{}", r.reason);
        assert!(r.reason.contains("ollama"), "{}", r.reason);
    }

    #[test]
    fn provider_prefix_picks_the_provider() {
        let c = cfg();
        for (named, provider, model) in [
            ("ollama/qwen3:8b", "ollama", "qwen3:8b"),
            (
                "openrouter/anthropic/claude-sonnet-4.5",
                "openrouter",
                "anthropic/claude-sonnet-4.5",
            ),
            ("openai/gpt-5", "openai", "gpt-5"),
        ] {
            let r = route(
                &c,
                &RouteRequest {
                    model: Some(named),
                    task: "find x",
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!((r.provider.as_str(), r.model.as_str()), (provider, model));
            assert_eq!(r.routed_by, RoutedBy::Model);
        }
        // A first segment that is no configured provider is part of the model's name.
        let r = route(
            &c,
            &RouteRequest {
                model: Some("meta-llama/llama-3"),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (r.provider.as_str(), r.model.as_str()),
            ("anthropic", "meta-llama/llama-3")
        );
    }

    #[test]
    fn a_first_segment_close_to_a_provider_is_refused_with_did_you_mean() {
        let e = route(
            &cfg(),
            &RouteRequest {
                model: Some("olama/qwen3:8b"),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no provider `olama`"), "{e}");
        assert!(e.contains("did you mean `ollama/qwen3:8b`?"), "{e}");
        // A slash in a model name that is not a provider's typo still runs as before.
        let r = route(
            &cfg(),
            &RouteRequest {
                model: Some("meta-llama/llama-3"),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.model, "meta-llama/llama-3");
    }

    #[test]
    fn empty_model_is_refused() {
        let e = route(
            &cfg(),
            &RouteRequest {
                model: Some("  "),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("model is empty"), "{e}");
    }

    #[test]
    fn denied_tier_says_what_is_allowed() {
        let c = Config::from_layers(
            Some("[routing]\ndenied_tiers = [\"quality\"]\n"),
            ConfigSource::Builtin,
        )
        .unwrap();
        let e = route(
            &c,
            &RouteRequest {
                tier: Some(Tier::Quality),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tier `quality` is denied by policy ([routing] denied_tiers); use one of: fast, balanced"
        );
        // The keyword classifier landing on a denied tier is refused too, not silently moved.
        assert!(
            route(
                &c,
                &RouteRequest {
                    task: "decide between a and b",
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn allowed_models_policy_is_enforced() {
        let c = Config::from_layers(
            Some("[routing]\nallowed_models = [\"claude-haiku-5-5\"]\n"),
            ConfigSource::Builtin,
        )
        .unwrap();
        assert!(
            route(
                &c,
                &RouteRequest {
                    task: "find x",
                    ..Default::default()
                }
            )
            .is_ok()
        );
        let e = route(
            &c,
            &RouteRequest {
                tier: Some(Tier::Balanced),
                task: "x",
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("use one of: claude-haiku-5-5"),
            "{e}"
        );
        assert!(
            e.to_string().ends_with(
                "put this line under [routing] in your config: allowed_models = [\"claude-haiku-5-5\", \"claude-sonnet-5-5\"]"
            ),
            "{e}"
        );
        // Allowed as PROVIDER/MODEL too.
        let c = Config::from_layers(
            Some("[routing]\nallowed_models = [\"ollama/qwen3:8b\"]\n"),
            ConfigSource::Builtin,
        )
        .unwrap();
        let ok = route(
            &c,
            &RouteRequest {
                model: Some("ollama/qwen3:8b"),
                task: "x",
                ..Default::default()
            },
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn a_tier_can_point_at_another_provider() {
        let c = Config::from_layers(
            Some("[tiers.fast]\nprovider = \"ollama\"\nmodel = \"qwen3:8b\"\n"),
            ConfigSource::Builtin,
        )
        .unwrap();
        let r = route(
            &c,
            &RouteRequest {
                task: "find the parser",
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (r.provider.as_str(), r.model.as_str()),
            ("ollama", "qwen3:8b")
        );
    }
}
