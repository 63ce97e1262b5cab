//! "Did you mean": typos in a spawn's model and provider names, caught before an agent
//! runs a model that does not exist. A first segment of `PROVIDER/MODEL` close to a
//! configured provider is an error (`routing`); a model no tier uses, with no price, that
//! is close to one this configuration knows, or that the provider's API would not
//! recognise (an Anthropic model not named `claude-…`), gets a warning naming the likely
//! intent (`resolve`).
//!
//! Not here: routing itself, or asking a provider which models it serves (that would be a
//! network call at every spawn).

use crate::config::Config;
use crate::routing::Route;
use crate::values::ProviderKind;

/// Whether `typed` is a likely misspelling of `known`: the same ignoring case, or within
/// a few edits (one per four characters, at least one).
fn close(typed: &str, known: &str) -> bool {
    let (t, k) = (typed.to_lowercase(), known.to_lowercase());
    if t == k {
        return typed != known;
    }
    strsim::damerau_levenshtein(&t, &k) <= (k.chars().count() / 4).max(1)
}

/// The configured provider `segment` most likely means, when it names none.
pub fn provider_like<'c>(config: &'c Config, segment: &str) -> Option<&'c str> {
    if config.providers.contains_key(segment) {
        return None;
    }
    config
        .providers
        .keys()
        .filter(|p| close(segment, p))
        .min_by_key(|p| strsim::damerau_levenshtein(&segment.to_lowercase(), p))
        .map(String::as_str)
}

/// Models this configuration knows on `provider`: the tiers' and the priced ones (bare,
/// or `[pricing."PROVIDER/MODEL"]` for this provider).
fn known_models<'c>(config: &'c Config, provider: &str) -> Vec<&'c str> {
    let tiers = [
        &config.tiers.fast,
        &config.tiers.balanced,
        &config.tiers.quality,
    ]
    .into_iter()
    .filter(|t| t.provider == provider)
    .map(|t| t.model.as_str());
    let priced = config
        .pricing
        .keys()
        .filter_map(|k| match k.split_once('/') {
            Some((p, m)) if p == provider => Some(m),
            Some((p, _)) if config.providers.contains_key(p) => None,
            _ => Some(k.as_str()),
        });
    let mut all: Vec<&str> = tiers.chain(priced).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// A warning when `route`'s model is likely a typo: no tier uses it, it has no price, and
/// it is close to a model known on its provider, or its provider's API would not know
/// it. None when the model is known or nothing suggests a mistake.
pub fn model_warning(config: &Config, route: &Route) -> Option<String> {
    let model = route.model.as_str();
    let provider = route.provider.as_str();
    let known = known_models(config, provider);
    if known.contains(&model) || config.price_for(provider, model).is_some() {
        return None;
    }
    let near = known
        .iter()
        .filter(|k| close(model, k))
        .min_by_key(|k| strsim::damerau_levenshtein(&model.to_lowercase(), k));
    if let Some(near) = near {
        return Some(format!(
            "model `{model}` is no tier's model and has no price: did you mean `{near}`? As given, it runs on provider `{provider}` under that name, and fails there after the agent starts if the provider has no such model"
        ));
    }
    let kind = config.providers.get(provider).map(|p| p.kind)?;
    if kind == ProviderKind::Anthropic && !model.to_lowercase().starts_with("claude") {
        let others: Vec<String> = config
            .providers
            .iter()
            .filter(|(_, p)| p.kind != ProviderKind::Anthropic)
            .map(|(name, _)| format!("`{name}/{model}`"))
            .collect();
        let hint = if others.is_empty() {
            String::new()
        } else {
            format!(
                "; to run it on another provider, name it: {}",
                others.join(" or ")
            )
        };
        return Some(format!(
            "model `{model}` runs on provider `{provider}` (Anthropic), whose models are named `claude-…`: it will likely fail there after the agent starts{hint}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RoutedBy;
    use crate::values::Tier;

    fn route(provider: &str, model: &str) -> Route {
        Route {
            tier: Tier::Fast,
            provider: provider.into(),
            model: model.into(),
            routed_by: RoutedBy::Model,
            reason: String::new(),
        }
    }

    #[test]
    fn provider_typos_are_recognised_and_other_names_are_not() {
        let c = Config::builtin().unwrap();
        assert_eq!(provider_like(&c, "olama"), Some("ollama"));
        assert_eq!(provider_like(&c, "antropic"), Some("anthropic"));
        assert_eq!(provider_like(&c, "Ollama"), Some("ollama"));
        assert_eq!(provider_like(&c, "opnai"), Some("openai"));
        assert_eq!(provider_like(&c, "ollama"), None, "a configured one");
        for other in ["meta-llama", "google", "qwen", "mistralai", "x"] {
            assert_eq!(provider_like(&c, other), None, "{other}");
        }
    }

    #[test]
    fn a_misspelt_model_names_the_model_it_is_close_to() {
        let c = Config::builtin().unwrap();
        let w = model_warning(&c, &route("anthropic", "claude-sonet-5-5")).expect("warned");
        assert!(w.contains("did you mean `claude-sonnet-5-5`"), "{w}");
        assert_eq!(
            model_warning(&c, &route("anthropic", "claude-sonnet-5-5")),
            None
        );
    }

    #[test]
    fn a_non_claude_model_on_anthropic_names_the_providers_that_could_run_it() {
        let c = Config::builtin().unwrap();
        let w = model_warning(&c, &route("anthropic", "gpt-9-turbo")).expect("warned");
        assert!(w.contains("`openai/gpt-9-turbo`"), "{w}");
        assert!(w.contains("will likely fail"), "{w}");
    }

    #[test]
    fn an_unknown_model_on_an_openai_compatible_provider_is_not_second_guessed() {
        let c = Config::builtin().unwrap();
        assert_eq!(model_warning(&c, &route("ollama", "qwen3:8b")), None);
        assert_eq!(model_warning(&c, &route("openai", "gpt-9-turbo")), None);
    }
}
