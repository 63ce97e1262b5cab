//! The agent selector: which role (system prompt, tools, limits) an agent gets.
//! Precedence: explicit role > keyword rule over the task text > `general`.

use serde::Serialize;

use crate::config::{Config, DEFAULT_ROLE};
use crate::routing::find_keyword;

/// Why a role was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum RoleChoice {
    Explicit,
    Keyword { keyword: String },
    Default,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown role `{name}`; use one of: {valid} (or omit role to let the task pick one)")]
pub struct UnknownRole {
    pub name: String,
    pub valid: String,
}

/// Picks the role for a task: (role name, why).
pub fn select_role(
    config: &Config,
    explicit: Option<&str>,
    task: &str,
) -> Result<(String, RoleChoice), UnknownRole> {
    if let Some(name) = explicit {
        return if config.roles.contains_key(name) {
            Ok((name.to_string(), RoleChoice::Explicit))
        } else {
            Err(UnknownRole {
                name: name.to_string(),
                valid: config.roles.keys().cloned().collect::<Vec<_>>().join(", "),
            })
        };
    }
    let lower = task.to_lowercase();
    for rule in &config.routing.role_rules {
        if let Some(k) = find_keyword(&lower, &rule.keywords) {
            return Ok((
                rule.role.clone(),
                RoleChoice::Keyword {
                    keyword: k.to_string(),
                },
            ));
        }
    }
    Ok((DEFAULT_ROLE.to_string(), RoleChoice::Default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(task: &str) -> (String, RoleChoice) {
        select_role(&Config::builtin().unwrap(), None, task).unwrap()
    }

    #[test]
    fn explicit_role_wins_over_keywords() {
        let c = Config::builtin().unwrap();
        let (r, why) = select_role(&c, Some("architect"), "find the config loader").unwrap();
        assert_eq!((r.as_str(), why), ("architect", RoleChoice::Explicit));
    }

    #[test]
    fn unknown_role_lists_the_valid_ones() {
        let c = Config::builtin().unwrap();
        let e = select_role(&c, Some("hacker"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown role `hacker`"), "{e}");
        assert!(
            e.contains("analyst, architect, explorer, general, reviewer"),
            "{e}"
        );
    }

    #[test]
    fn keywords_pick_roles_in_rule_order() {
        let table = [
            (
                "Decide between Postgres and SQLite for the cache",
                "architect",
                "decide between",
            ),
            ("Review this diff for bugs", "reviewer", "review"),
            ("Explain how the retry loop works", "analyst", "explain"),
            ("Find every caller of parse_config", "explorer", "find"),
            ("Where is the auth middleware?", "explorer", "where is"),
            (
                "Trace the request id through the logger",
                "analyst",
                "trace",
            ),
        ];
        for (task, role, kw) in table {
            let (r, why) = pick(task);
            assert_eq!(r, role, "{task}");
            assert_eq!(why, RoleChoice::Keyword { keyword: kw.into() }, "{task}");
        }
    }

    #[test]
    fn no_keyword_falls_back_to_general() {
        assert_eq!(
            pick("Write a haiku about rust"),
            ("general".into(), RoleChoice::Default)
        );
        // Whole words only: "refinder" does not contain the keyword "find".
        assert_eq!(pick("refinder module notes").0, "general");
    }
}
