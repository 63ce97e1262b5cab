//! A provider's endpoint: `[providers.NAME] base_url`, or the environment variable
//! `base_url_env` names, which overrides it; the one rule both are checked by, and the
//! one way a URL with a password in it is shown.

use std::fmt;

use super::ProviderConfig;

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
