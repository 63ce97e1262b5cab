//! Loading the configuration: the built-in `limits.toml`, with the user's file (from
//! `--config`, `$BG_AGENTS_CONFIG` or the user's config directory) merged over it key by
//! key, deserialized and validated.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, ConfigSource, Loaded};

/// The repo's `limits.toml`: complete defaults, documented key by key.
pub const BUILTIN: &str = include_str!("../../../limits.toml");

/// Environment variable naming a user configuration file.
pub const CONFIG_ENV: &str = "BG_AGENTS_CONFIG";

impl Config {
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
