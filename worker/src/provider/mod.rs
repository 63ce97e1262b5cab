//! Provider clients: one streamed model turn over HTTP, for the Anthropic Messages API
//! and OpenAI-compatible chat completions. The conversation is kept in a provider-neutral
//! shape (Anthropic-like content blocks) and translated per request.
//!
//! Not here: retries and budgets (the agent loop decides), tools (`tools`).

mod anthropic;
mod openai;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ProviderKind;
use crate::protocol::ProviderSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
    /// A block we do not interpret (thinking, redacted_thinking, ...), passed back to the
    /// provider unchanged on the next turn.
    Opaque(serde_json::Value),
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub input_schema: serde_json::Value,
}

pub struct TurnRequest<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolDef],
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutput {
    pub content: Vec<Block>,
    /// Normalized to Anthropic's vocabulary: end_turn, tool_use, max_tokens, stop_sequence.
    pub stop_reason: String,
    pub usage: TokenUsage,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    /// Worth another attempt: overload, rate limit, 5xx, connection trouble, a stream
    /// that broke off.
    #[error("{reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The request itself is wrong or refused; retrying cannot help.
    #[error("{0}")]
    Fatal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{var} is not set; export {var}=<your API key> (provider `{provider}`)")]
    MissingKey { var: String, provider: String },
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// A provider endpoint with its key, ready to run turns.
pub struct Client {
    http: reqwest::Client,
    kind: ProviderKind,
    base_url: String,
    api_key: Option<String>,
}

impl Client {
    /// Reads the key and base-URL override from the environment through `env`.
    pub fn new(
        spec: &ProviderSpec,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Client, ClientError> {
        let api_key = match &spec.api_key_env {
            Some(var) => match env(var).filter(|v| !v.is_empty()) {
                Some(k) => Some(k),
                None => {
                    return Err(ClientError::MissingKey {
                        var: var.clone(),
                        provider: spec.name.clone(),
                    });
                }
            },
            None => None,
        };
        let base_url = spec
            .base_url_env
            .as_deref()
            .and_then(&env)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| spec.base_url.clone());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(spec.request_timeout_seconds))
            .user_agent(concat!("bg-agent-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Client {
            http,
            kind: spec.kind,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    /// The endpoint requests go to (after `base_url_env`); the sandbox allows its port.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Runs one streamed turn; `on_text` sees each text delta as it arrives.
    pub async fn turn(
        &self,
        req: &TurnRequest<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<TurnOutput, ProviderError> {
        let result = match self.kind {
            ProviderKind::Anthropic => anthropic::turn(self, req, on_text).await,
            ProviderKind::Openai => openai::turn(self, req, on_text).await,
        };
        result.map_err(|e| self.redact(e))
    }

    /// Error messages quote the provider, and a provider may quote the key it was sent
    /// (some OpenAI-compatible servers do); the key must never reach any output.
    fn redact(&self, e: ProviderError) -> ProviderError {
        let Some(key) = self.api_key.as_deref() else {
            return e;
        };
        let hide = |s: String| s.replace(key, "[redacted API key]");
        match e {
            ProviderError::Retryable {
                reason,
                retry_after,
            } => ProviderError::Retryable {
                reason: hide(reason),
                retry_after,
            },
            ProviderError::Fatal(m) => ProviderError::Fatal(hide(m)),
        }
    }
}

/// Classifies a non-2xx response. `message` is the provider's own error text.
fn status_error(
    status: u16,
    message: String,
    retry_after: Option<Duration>,
    spend_limit: bool,
) -> ProviderError {
    let retryable = matches!(status, 408 | 409 | 429 | 500..=504 | 529) && !spend_limit;
    if retryable {
        ProviderError::Retryable {
            reason: format!("HTTP {status}: {message}"),
            retry_after,
        }
    } else {
        ProviderError::Fatal(format!("HTTP {status}: {message}"))
    }
}

/// `retry-after` in seconds (integer or decimal); HTTP dates are ignored.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// A transport failure: connection refused, reset, timeout. All are retryable.
fn transport_error(e: reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    // reqwest's Display includes the URL, never headers, so the key cannot leak here.
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    ProviderError::Retryable {
        reason: msg,
        retry_after: None,
    }
}

/// Most bytes of an error body read; a provider (or a proxy) that sends an endless one
/// must not run the worker out of memory.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Reads an error body `{"error": {"type", "message", "details"?}}` (both APIs use this
/// shape); falls back to the raw text. Reads at most `MAX_ERROR_BODY_BYTES`.
async fn error_body(mut resp: reqwest::Response) -> (String, bool) {
    let mut raw = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        raw.extend_from_slice(&chunk);
        if raw.len() >= MAX_ERROR_BODY_BYTES {
            raw.truncate(MAX_ERROR_BODY_BYTES);
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = err
        .and_then(|e| e.get("message").and_then(|m| m.as_str()))
        .map(str::to_string)
        .or_else(|| err.and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                "(empty body)".into()
            } else {
                t.chars().take(500).collect()
            }
        });
    let kind = err
        .and_then(|e| e.get("type"))
        .and_then(|t| t.as_str())
        .map(|t| format!("{t}: "))
        .unwrap_or_default();
    let spend_limit = err
        .and_then(|e| e.pointer("/details/error_code"))
        .and_then(|c| c.as_str())
        == Some("enforced_spend_limit_reached");
    (format!("{kind}{message}"), spend_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key_env: Option<&str>) -> ProviderSpec {
        ProviderSpec {
            name: "anthropic".into(),
            kind: ProviderKind::Anthropic,
            base_url: "https://api.anthropic.com/".into(),
            base_url_env: Some("ANTHROPIC_BASE_URL".into()),
            api_key_env: key_env.map(str::to_string),
            max_retries: 1,
            request_timeout_seconds: 5,
        }
    }

    #[test]
    fn missing_key_names_the_variable() {
        let e = Client::new(&spec(Some("ANTHROPIC_API_KEY")), |_| None)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "ANTHROPIC_API_KEY is not set; export ANTHROPIC_API_KEY=<your API key> (provider `anthropic`)"
        );
    }

    #[test]
    fn base_url_env_overrides_like_the_sdks() {
        let c = Client::new(&spec(None), |v| {
            (v == "ANTHROPIC_BASE_URL").then(|| "http://127.0.0.1:9/".to_string())
        })
        .unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        let c = Client::new(&spec(None), |_| Some(String::new())).unwrap();
        assert_eq!(c.base_url, "https://api.anthropic.com");
    }

    #[test]
    fn statuses_split_into_retryable_and_fatal() {
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(
                matches!(
                    status_error(s, "m".into(), None, false),
                    ProviderError::Retryable { .. }
                ),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413] {
            assert!(
                matches!(
                    status_error(s, "m".into(), None, false),
                    ProviderError::Fatal(_)
                ),
                "{s}"
            );
        }
        assert!(matches!(
            status_error(429, "m".into(), None, true),
            ProviderError::Fatal(_)
        ));
    }
}
