//! The configuration's loading and validation, key by key.

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
    let c = user(
        "[server]\nmax_concurrent = 3\n[tiers.fast]\nmodel = \"qwen3:8b\"\nprovider = \"ollama\"\n",
    )
    .unwrap();
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
