//! Provider clients: one streamed model turn over HTTP, for the Anthropic Messages API
//! and OpenAI-compatible chat completions. The conversation is kept in a provider-neutral
//! shape (Anthropic-like content blocks) and translated per request.
//!
//! Not here: retries and budgets (the agent loop decides), tools (`tools`).

mod anthropic;
mod openai;

use std::borrow::Cow;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Deserializer};
use tokio::time::Instant;

use crate::config::{BaseUrlError, UrlSource, effective_base_url};
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

/// An optional string of a stream event that borrows from the event's data where it has
/// no escapes, for a field `#[serde(default, borrow, deserialize_with = "optional_str")]`.
/// serde's own `Option<Cow<str>>` always copies; only a `Cow` that is a field (here of
/// `Borrowed`) borrows.
fn optional_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed>::deserialize(d)?.map(|b| b.0))
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
    #[error(transparent)]
    BadBaseUrl(#[from] BaseUrlError),
}

/// A provider endpoint with its key, ready to run turns.
pub struct Client {
    http: reqwest::Client,
    kind: ProviderKind,
    /// The provider's name in the configuration, for error messages that name its keys.
    name: String,
    base_url: String,
    /// Where `base_url` came from: error hints name that (the variable or the key).
    url_source: UrlSource,
    api_key: Option<String>,
    /// What no message may show: the key, and credentials written into the base URL.
    secrets: Secrets,
    /// The longest wait for the response headers, and for each next chunk of a stream.
    idle_timeout: Duration,
    /// Anthropic: set cache_control breakpoints.
    prompt_caching: bool,
    /// OpenAI-compatible: send `prompt_cache_key`.
    prompt_cache_key: bool,
}

/// The HTTP client for requests to `base_url`. No overall timeout: a healthy stream may
/// run for minutes (a slow local model, a long answer); silence is what is timed, per
/// chunk (`Sse::next`). Redirects are not followed: the key must never travel to
/// another address, so every request goes to `base_url`'s scheme and host. An `https://`
/// endpoint verifies its certificate against the system's roots; a plain `http://` one
/// (a local server) never does TLS, so it trusts no root and skips loading them, which
/// was the largest part of a worker's start (about 3 ms, see BENCHMARKS.md).
fn http_client(base_url: &str) -> Result<reqwest::Client, ClientError> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bg-agent-worker/", env!("CARGO_PKG_VERSION")));
    let builder = if uses_tls(base_url) {
        builder
    } else {
        builder.tls_certs_only(std::iter::empty())
    };
    builder
        .build()
        .map_err(|e| ClientError::Http(error_chain(&e)))
}

/// `e` and each of its sources, joined with ": " (reqwest's own text is only "builder
/// error" or "error sending request"; the cause is in the sources). reqwest's Display
/// includes the URL, never headers, so the key cannot leak here.
fn error_chain(e: &reqwest::Error) -> String {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push_str(&format!(": {s}"));
        src = s.source();
    }
    chain
}

/// Whether requests to `base_url` use TLS: every URL but a plain `http://` one (the
/// only other scheme `check_base_url` lets through is `https://`).
fn uses_tls(base_url: &str) -> bool {
    !base_url.starts_with("http://")
}

/// Most bytes of an error body read: enough for any real error message, bounded so a
/// misbehaving server cannot fill the worker's memory.
const MAX_ERROR_BODY: usize = 64 * 1024;

type EventResult =
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>;

/// When a stream silent since `from` has waited too long; a timeout too large for the
/// clock (a hand-written spec's) is a year.
fn idle_deadline(from: Instant, idle: Duration) -> Instant {
    from.checked_add(idle)
        .unwrap_or_else(|| from + Duration::from_secs(365 * 24 * 3600))
}

/// A response's SSE events, each awaited at most the idle timeout.
struct Sse<'a> {
    client: &'a Client,
    url: &'a str,
    model: &'a str,
    events: Pin<Box<dyn Stream<Item = EventResult> + Send>>,
    /// Whether any event arrived: an empty 200 stream is told apart from one cut short.
    seen: bool,
    /// When the current wait for an event began.
    waiting_since: Instant,
    /// Fires no sooner than the idle timeout after `waiting_since`. A wait only notes
    /// when it began, and a timer that fires early is moved on, so a stream of hundreds
    /// of events does not put a timer into the wheel and take it out again for each one.
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Sse<'_> {
    async fn next(&mut self) -> Result<Option<eventsource_stream::Event>, ProviderError> {
        // From here, not from the last event: time the caller spent on that one (a
        // stdout the server is slow to read) is not silence.
        self.waiting_since = Instant::now();
        let got = loop {
            tokio::select! {
                biased;
                got = self.events.next() => break got,
                () = &mut self.idle => {
                    let due = idle_deadline(self.waiting_since, self.client.idle_timeout);
                    if due <= Instant::now() {
                        return Err(self.client.timeout_error(
                            self.url,
                            self.model,
                            "the stream went silent: no chunk",
                        ));
                    }
                    self.idle.as_mut().reset(due);
                }
            }
        };
        match got {
            None => Ok(None),
            Some(Err(e)) => Err(ProviderError::Retryable {
                reason: format!("stream from {} broke off: {e}", self.url),
                retry_after: None,
            }),
            Some(Ok(ev)) => {
                self.seen = true;
                Ok(Some(ev))
            }
        }
    }

    /// The error for a stream that ended before the message was complete. One cut short is
    /// worth another attempt; an empty 200 is not: local servers (llama-cpp-python, llama.cpp)
    /// answer so to a request they refuse, every time, and say why only in their own log.
    fn ended_early(&self, what: &str) -> ProviderError {
        if self.seen {
            return ProviderError::Retryable {
                reason: format!(
                    "the stream from {} (model `{}`) closed before {what}",
                    self.url, self.model
                ),
                retry_after: None,
            };
        }
        ProviderError::Fatal(format!(
            "{} answered HTTP 200 with an empty stream for model `{}`: the server refused the request without saying why (not retried: it would answer the same). Its log says why; common causes are a prompt longer than its context size, an option it does not support, or a model it does not serve ({} and the model name)",
            self.url,
            self.model,
            self.client.url_source.what_to_check()
        ))
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
        // An override no request could use is refused here, as the same value in the file
        // is at load: retrying cannot make it a URL.
        let endpoint = effective_base_url(
            &spec.name,
            &spec.base_url,
            spec.base_url_env.as_deref(),
            &env,
        )?;
        let http = http_client(&endpoint.url)?;
        let secrets = Secrets::of(&endpoint.url, api_key.as_deref());
        Ok(Client {
            http,
            kind: spec.kind,
            name: spec.name.clone(),
            base_url: endpoint.url.trim_end_matches('/').to_string(),
            url_source: endpoint.source,
            api_key,
            secrets,
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
                "HTTP {status} from {url}: the server redirects to {location}; redirects are not followed, so the API key never goes to another address; set {} to the address the API really lives at",
                self.url_source.what_to_check()
            )));
        }
        let after = retry_after(resp.headers());
        let (message, spend_limit) = error_message(&read_error_body(resp).await, &self.secrets);
        if status == 404 {
            return Err(ProviderError::Fatal(format!(
                "HTTP 404 from {url} (model `{model}`): {message}; check {} (the API path is appended to it) and that the server has this model",
                self.url_source.what_to_check()
            )));
        }
        Err(status_error(status, message, after, spend_limit))
    }

    /// The SSE events of a successful response.
    fn events<'a>(&'a self, resp: reqwest::Response, url: &'a str, model: &'a str) -> Sse<'a> {
        let now = Instant::now();
        Sse {
            client: self,
            url,
            model,
            events: Box::pin(resp.bytes_stream().eventsource()),
            seen: false,
            waiting_since: now,
            idle: Box::pin(tokio::time::sleep_until(idle_deadline(
                now,
                self.idle_timeout,
            ))),
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

    /// A transport failure. Connection refused, reset or timed out may pass and is
    /// retried; a URL that cannot be requested or a host name that does not exist cannot,
    /// and is fatal at once.
    fn transport_error(&self, e: reqwest::Error, url: &str, model: &str) -> ProviderError {
        let check = self.url_source.what_to_check();
        let what = if e.is_connect() {
            format!(
                "cannot connect to {url} (model `{model}`); is the server running? check {check}"
            )
        } else if e.is_timeout() {
            format!("timed out connecting to {url} (model `{model}`)")
        } else {
            format!("connection to {url} (model `{model}`) failed")
        };
        let chain = error_chain(&e);
        match cannot_succeed(e.is_builder(), &chain) {
            Some(why) => ProviderError::Fatal(format!(
                "{why}: {url} (model `{model}`): {chain}; not retried: fix {check}"
            )),
            None => ProviderError::Retryable {
                reason: format!("{what}: {chain}"),
                retry_after: None,
            },
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

    /// Error messages quote the provider and the URL, and a provider may quote the key it
    /// was sent (some OpenAI-compatible servers do); neither the key nor credentials in
    /// the URL may reach any output.
    fn redact(&self, e: ProviderError) -> ProviderError {
        let hide = |s: String| self.secrets.hide(&s);
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

/// Why a transport failure cannot pass on a retry, if it cannot: a request that could
/// not even be built (a bad URL), or a host name the resolver says does not exist (as
/// opposed to a resolver that cannot be reached now, which is retried). `chain` is the
/// error and its sources, joined.
fn cannot_succeed(builder_error: bool, chain: &str) -> Option<&'static str> {
    if builder_error || chain.contains("relative URL without a base") {
        return Some("the URL cannot be requested");
    }
    const NO_SUCH_HOST: [&str; 3] = [
        "Name or service not known",
        "No address associated with hostname",
        "nodename nor servname provided",
    ];
    (chain.contains("dns error") && NO_SUCH_HOST.iter().any(|m| chain.contains(m)))
        .then_some("unknown host (the name does not resolve)")
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

const PASSWORD: &str = "[redacted password]";

/// The secrets of one client and how to hide them in text.
#[derive(Debug, Default)]
struct Secrets {
    /// `user:password@` (or `user@`) as written in the base URL and as a parsed URL
    /// prints it: removed, so the URL reads without them.
    userinfo: Vec<String>,
    /// The API key and the URL's password (as written and decoded), each with what
    /// replaces it.
    values: Vec<(String, &'static str)>,
}

impl Secrets {
    fn of(base_url: &str, api_key: Option<&str>) -> Secrets {
        let mut secrets = Secrets::default();
        secrets
            .values
            .extend(api_key.map(|k| (k.to_string(), "[redacted API key]")));
        if let Some(userinfo) = crate::config::url_userinfo(base_url) {
            secrets.userinfo.push(format!("{userinfo}@"));
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.values.push((password.to_string(), PASSWORD));
            }
        }
        if let Ok(url) = reqwest::Url::parse(base_url)
            && !url.username().is_empty()
        {
            let password = url.password().unwrap_or_default();
            secrets.userinfo.push(match password {
                "" => format!("{}@", url.username()),
                p => format!("{}:{p}@", url.username()),
            });
            secrets.values.push((password.to_string(), PASSWORD));
            if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                secrets.values.push((decoded.into_owned(), PASSWORD));
            }
        }
        secrets.userinfo.retain(|s| s.len() > 1);
        secrets.values.retain(|(s, _)| !s.is_empty());
        // Longest first, so a secret that contains another is hidden whole.
        secrets
            .values
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        secrets
    }

    fn hide(&self, text: &str) -> String {
        let mut text = text.to_string();
        for userinfo in &self.userinfo {
            text = text.replace(userinfo.as_str(), "");
        }
        for (value, shown) in &self.values {
            text = text.replace(value.as_str(), shown);
        }
        text
    }
}

/// An error body, at most `MAX_ERROR_BODY` bytes of it.
async fn read_error_body(resp: reqwest::Response) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        let room = MAX_ERROR_BODY - raw.len();
        raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if raw.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    raw
}

/// Reads an error body `{"error": {"type", "message", "details"?}}` (both APIs use this
/// shape); falls back to the raw text, cut to 500 characters. Secrets are hidden before
/// anything is cut, so no part of one survives a cut through it.
fn error_message(raw: &[u8], secrets: &Secrets) -> (String, bool) {
    let text = secrets.hide(&String::from_utf8_lossy(raw));
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
    fn a_key_cut_by_the_500_character_limit_is_hidden_whole() {
        let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
        let secrets = Secrets::of("https://api.anthropic.com", Some(key));
        // Not JSON, so the raw text is quoted, cut to 500 characters through the key.
        let body = format!("{}{key} was refused", "e".repeat(480));
        let (message, _) = error_message(body.as_bytes(), &secrets);
        assert!(!message.contains(&key[..8]), "{message}");
        assert!(message.contains("[redacted API key]"), "{message}");
    }

    #[tokio::test]
    async fn credentials_in_the_base_url_never_show_in_errors() {
        let url = "http://alice:s3cr%40t@127.0.0.1:9/";
        let c = Client::new(&spec(None), |v| {
            (v == "ANTHROPIC_BASE_URL").then(|| url.to_string())
        })
        .unwrap();
        assert_eq!(
            c.base_url, "http://alice:s3cr%40t@127.0.0.1:9",
            "kept for requests"
        );
        let req = TurnRequest {
            cache_key: None,
            model: "m",
            system: "",
            messages: &[],
            tools: &[],
            max_tokens: 1,
            output_schema: None,
        };
        let e = c.turn(&req, &mut |_| {}).await.err().unwrap().to_string();
        assert!(e.contains("http://127.0.0.1:9/v1/messages"), "{e}");
        for secret in ["alice", "s3cr", "s3cr@t"] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
        let secrets = Secrets::of(url, None);
        assert_eq!(
            secrets.hide("password s3cr@t"),
            "password [redacted password]"
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
    fn a_base_url_variable_without_a_scheme_is_refused_naming_the_variable() {
        let e = Client::new(&spec(None), |v| {
            (v == "ANTHROPIC_BASE_URL").then(|| "127.0.0.1:9".to_string())
        })
        .err()
        .expect("refused")
        .to_string();
        assert!(e.starts_with("ANTHROPIC_BASE_URL = \"127.0.0.1:9\""), "{e}");
        assert!(
            e.contains("overrides [providers.anthropic] base_url"),
            "{e}"
        );
        assert!(e.contains("http:// or https://"), "{e}");
    }

    #[test]
    fn hints_name_the_variable_when_it_set_the_endpoint() {
        let c = Client::new(&spec(None), |v| {
            (v == "ANTHROPIC_BASE_URL").then(|| "http://127.0.0.1:9".to_string())
        })
        .unwrap();
        assert_eq!(
            c.url_source.what_to_check(),
            "ANTHROPIC_BASE_URL (it overrides [providers.anthropic] base_url)"
        );
        let c = Client::new(&spec(None), |_| None).unwrap();
        assert_eq!(
            c.url_source.what_to_check(),
            "[providers.anthropic] base_url"
        );
    }

    #[test]
    fn bad_urls_and_unknown_hosts_are_not_retried_but_refused_connections_are() {
        assert!(cannot_succeed(true, "builder error").is_some());
        assert!(cannot_succeed(false, "builder error: relative URL without a base").is_some());
        let unknown = "error sending request for url (https://api.antropic.com/v1/messages): \
                       client error (Connect): dns error: failed to lookup address \
                       information: Name or service not known";
        assert_eq!(
            cannot_succeed(false, unknown),
            Some("unknown host (the name does not resolve)")
        );
        let resolver_down = "client error (Connect): dns error: failed to lookup address \
                             information: Temporary failure in name resolution";
        assert_eq!(cannot_succeed(false, resolver_down), None);
        let refused =
            "client error (Connect): tcp connect error: Connection refused (os error 111)";
        assert_eq!(cannot_succeed(false, refused), None);
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
