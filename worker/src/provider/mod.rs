//! Provider clients: one streamed model turn over HTTP, for the Anthropic Messages API
//! and OpenAI-compatible chat completions. The conversation is kept in a provider-neutral
//! shape (Anthropic-like content blocks) and translated per request.
//!
//! Not here: retries and budgets (the agent loop decides), tools (`tools`).

mod anthropic;
mod openai;

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};

use crate::protocol::ProviderSpec;
pub use crate::structured::Delivery;
use crate::values::ProviderKind;

/// The conversation's shape is part of the wire (`message` events, `TaskSpec::history`).
pub use crate::protocol::{Block, Message, Role};

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub input_schema: serde_json::Value,
}

pub struct TurnRequest<'a> {
    /// A stable key for the provider's prompt cache (OpenAI `prompt_cache_key`), sent only
    /// when the provider is configured to accept it.
    pub cache_key: Option<&'a str>,
    pub model: &'a str,
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolDef],
    pub max_tokens: u32,
    /// The JSON Schema the answer must match (`TaskSpec::output_schema`), and how it is
    /// sent: the provider's own structured-output parameter, or a final tool.
    pub output_schema: Option<Delivery<'a>>,
}

/// Tokens of one response as billed (uncached input, cache writes and reads, output).
pub use crate::values::TokenCounts as TokenUsage;

#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutput {
    pub content: Vec<Block>,
    /// Normalized to Anthropic's vocabulary: end_turn, tool_use, max_tokens, stop_sequence.
    pub stop_reason: String,
    pub usage: TokenUsage,
    /// The provider sent no usage (many local servers do not): `usage` is estimated from
    /// the bytes sent and received, 4 bytes a token.
    pub usage_estimated: bool,
}

/// Tokens in `bytes` of text or JSON, estimated the way budgets need when a provider sends
/// no usage: 4 bytes a token, rounded up.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// How far past `max_tokens` (by the 4-bytes-a-token estimate) a stream may run before the
/// client stops reading it: real tokens are often longer than 4 bytes, so only a server
/// that ignores `max_tokens` gets this far.
fn stream_cut_tokens(max_tokens: u32) -> u64 {
    2 * max_tokens as u64 + 64
}

/// What a provider module's accumulator tracks in common: output bytes seen (for the
/// usage estimate and the cut of a runaway stream) and whether the provider sent usage.
#[derive(Debug, Default)]
struct Metered {
    out_bytes: usize,
    usage_seen: bool,
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

/// Whether a retryable failure's reason is the provider throttling: HTTP 429 (rate limit)
/// or 529 (overloaded). `status_error` writes every status failure as `HTTP {status}: ...`.
pub fn throttled(reason: &str) -> bool {
    reason.starts_with("HTTP 429:") || reason.starts_with("HTTP 529:")
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
    /// The provider's name in the configuration, for error messages that name its keys.
    name: String,
    base_url: String,
    api_key: Option<String>,
    /// The longest wait for the response headers, and for each next chunk of a stream.
    idle_timeout: Duration,
    /// Anthropic: set cache_control breakpoints.
    prompt_caching: bool,
    /// OpenAI-compatible: send `prompt_cache_key`.
    prompt_cache_key: bool,
}

/// Most bytes of an error body read: enough for any real error message, bounded so a
/// misbehaving server cannot fill the worker's memory.
const MAX_ERROR_BODY: usize = 64 * 1024;

type EventResult =
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>;

/// A response's SSE events, each awaited at most the idle timeout.
struct Sse<'a> {
    client: &'a Client,
    url: &'a str,
    model: &'a str,
    events: Pin<Box<dyn Stream<Item = EventResult> + Send>>,
    /// Whether any event arrived: an empty 200 stream is told apart from one cut short.
    seen: bool,
}

impl Sse<'_> {
    async fn next(&mut self) -> Result<Option<eventsource_stream::Event>, ProviderError> {
        match tokio::time::timeout(self.client.idle_timeout, self.events.next()).await {
            Err(_) => Err(self.client.timeout_error(
                self.url,
                self.model,
                "the stream went silent: no chunk",
            )),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(ProviderError::Retryable {
                reason: format!("stream from {} broke off: {e}", self.url),
                retry_after: None,
            }),
            Ok(Some(Ok(ev))) => {
                self.seen = true;
                Ok(Some(ev))
            }
        }
    }

    /// The error for a stream that ended before the message was complete.
    fn ended_early(&self, what: &str) -> ProviderError {
        let reason = if self.seen {
            format!(
                "the stream from {} (model `{}`) closed before {what}",
                self.url, self.model
            )
        } else {
            format!(
                "{} answered HTTP 200 with an empty stream for model `{}`; check that the server serves this model and that [providers.{}] base_url points at its API",
                self.url, self.model, self.client.name
            )
        };
        ProviderError::Retryable {
            reason,
            retry_after: None,
        }
    }
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
        // No overall timeout: a healthy stream may run for minutes (a slow local model, a
        // long answer); silence is what is timed, per chunk (`Sse::next`). Redirects are
        // not followed: the key must never travel to another address.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bg-agent-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Client {
            http,
            kind: spec.kind,
            name: spec.name.clone(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            idle_timeout: Duration::from_secs(spec.request_timeout_seconds),
            prompt_caching: spec.prompt_caching,
            prompt_cache_key: spec.prompt_cache_key,
        })
    }

    /// The endpoint requests go to (after `base_url_env`); the sandbox allows its port.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends a request built for `url` and waits for its response headers; a non-2xx
    /// answer becomes the error that says what to do.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        model: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let resp = match tokio::time::timeout(self.idle_timeout, request.send()).await {
            Err(_) => return Err(self.timeout_error(url, model, "no response headers")),
            Ok(Err(e)) => return Err(self.transport_error(e, url, model)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        if resp.status().is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("(no location)")
                .to_string();
            return Err(ProviderError::Fatal(format!(
                "HTTP {status} from {url}: the server redirects to {location}; redirects are not followed, so the API key never goes to another address; set [providers.{}] base_url to the address the API really lives at",
                self.name
            )));
        }
        let after = retry_after(resp.headers());
        let (message, spend_limit) = error_body(resp).await;
        if status == 404 {
            return Err(ProviderError::Fatal(format!(
                "HTTP 404 from {url} (model `{model}`): {message}; check [providers.{}] base_url (the API path is appended to it) and that the server has this model",
                self.name
            )));
        }
        Err(status_error(status, message, after, spend_limit))
    }

    /// The SSE events of a successful response.
    fn events<'a>(&'a self, resp: reqwest::Response, url: &'a str, model: &'a str) -> Sse<'a> {
        Sse {
            client: self,
            url,
            model,
            events: Box::pin(resp.bytes_stream().eventsource()),
            seen: false,
        }
    }

    fn timeout_error(&self, url: &str, model: &str, what: &str) -> ProviderError {
        ProviderError::Retryable {
            reason: format!(
                "timed out: {what} from {url} (model `{model}`) within {} s; a slow server or model needs a larger [providers.{}] request_timeout_seconds (it bounds each wait, not the whole answer)",
                self.idle_timeout.as_secs(),
                self.name
            ),
            retry_after: None,
        }
    }

    /// A transport failure: connection refused, reset. All are retryable.
    fn transport_error(&self, e: reqwest::Error, url: &str, model: &str) -> ProviderError {
        let what = if e.is_connect() {
            format!(
                "cannot connect to {url} (model `{model}`); is the server running? check [providers.{}] base_url",
                self.name
            )
        } else if e.is_timeout() {
            format!("timed out connecting to {url} (model `{model}`)")
        } else {
            format!("connection to {url} (model `{model}`) failed")
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

/// Reads an error body `{"error": {"type", "message", "details"?}}` (both APIs use this
/// shape); falls back to the raw text.
async fn error_body(resp: reqwest::Response) -> (String, bool) {
    let mut raw = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        let room = MAX_ERROR_BODY - raw.len();
        raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if raw.len() >= MAX_ERROR_BODY {
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
            prompt_caching: true,
            prompt_cache_key: false,
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
