//! The provider test double: a local, scriptable fake of the Anthropic Messages streaming
//! API (`POST /v1/messages`) and the OpenAI chat-completions streaming API
//! (`POST /v1/chat/completions`), listening on 127.0.0.1 only.
//!
//! It speaks the real wire formats (SSE event names, JSON shapes, error bodies, headers) so
//! that the provider clients are tested against what the real services send. It is the only
//! test double in the project; it is not a model: unscripted conversations get an echo.
//!
//! A conversation is identified by its *first user message*: `script(needle, steps)` applies
//! to every request whose first user message contains `needle`, and the n-th such request
//! (retries included) is answered with `steps[n]`. A client whose every request starts the
//! same way (Claude Code's main loop) is scripted by a tool it offers instead
//! (`script_offering`).
//!
//! Here: the fake's handle, what it records, and the request path from receipt to
//! response. Beside it, one concern a file: `script` (steps and the rules that pick
//! them), `check` (what a real service refuses), `cache` (the simulated prompt caches),
//! `sse` (a response on the wire), `anthropic` and `openai` (their streaming formats).

mod anthropic;
mod cache;
mod check;
mod openai;
mod script;
mod sse;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::Value;

use cache::cached;
use check::{admit, check, quirky, refuses_auto_tool_choice, without_structured_output};
use script::{Matcher, Rule, next_step};
pub use script::{Step, StepFn};
use sse::{Turn, error_response, output_tokens, respond, streamed_chars};

const ANTHROPIC_PATH: &str = "/v1/messages";
const OPENAI_PATH: &str = "/v1/chat/completions";
/// The Messages API accepts request bodies up to 32 MB; axum's default of 2 MB would
/// reject long conversations before they are recorded.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// A running fake provider. Dropping it stops accepting connections.
pub struct FakeProvider {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    server: tokio::task::JoinHandle<()>,
}

/// Counts a streamed response in flight until its body is done or dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// "/v1/messages" or "/v1/chat/completions" (or whatever unknown path was hit).
    pub path: String,
    pub model: String,
    /// Anthropic top-level `system` (string, or text blocks joined with "\n"), or OpenAI's
    /// first system (or developer) message.
    pub system: Option<String>,
    /// Names of the tools offered.
    pub tools: Vec<String>,
    /// Anthropic `max_tokens`; OpenAI `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// The whole request body (`Value::Null` when it was not valid JSON).
    pub body: Value,
    /// `x-api-key` header, or the token of `Authorization: Bearer`.
    pub api_key: Option<String>,
    pub anthropic_version: Option<String>,
    /// When the request (headers and body) had arrived.
    pub received_at: std::time::Instant,
}

impl RecordedRequest {
    /// Text of the first user message (text blocks or parts joined with "\n").
    pub fn first_user_text(&self) -> String {
        first_user_text(&self.body)
    }

    /// Text of the last user message, or "tool results received" when the conversation
    /// ends with tool results (Anthropic `tool_result` blocks, OpenAI `tool` messages).
    pub fn last_user_text(&self) -> String {
        match last_user_input(&self.body) {
            UserInput::Text(text) => text,
            UserInput::ToolResults => "tool results received".to_string(),
        }
    }
}

/// What one streamed answer billed, as its usage says: input (uncached), cache writes
/// and reads, and the output tokens it streamed (for a cut stream, what it sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Billed {
    pub input_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
    pub output_tokens: u64,
}

impl Billed {
    /// Every token billed, as `max_total_tokens` counts them.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.cache_write_tokens + self.cache_read_tokens + self.output_tokens
    }
}

/// Behaviours of real servers other than the official APIs, switched on per fake.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// llama-cpp-python: the whole function name (and id) in every streamed tool-call chunk.
    pub repeat_tool_name: bool,
    /// llama-cpp-python: HTTP 500 for an assistant message whose `content` is null.
    pub reject_null_content: bool,
    /// llama-cpp-python: no usage at all, even when `stream_options.include_usage` asks.
    pub no_usage: bool,
    /// llama-cpp-python 0.3.x (`chatml-function-calling`): a streaming request with
    /// `tool_choice: "auto"` gets HTTP 200 with an empty body ("Automatic streaming tool
    /// choice is not supported"); the script's next step is left for the next request.
    pub empty_on_streaming_auto_tool_choice: bool,
    /// A rate limit on requests in flight: past this many, HTTP 429 with `retry-after`.
    pub max_in_flight: Option<usize>,
    /// The `retry-after` (seconds) of those 429s.
    pub retry_after_secs: u64,
    /// No structured outputs: HTTP 400 for a request with `output_config` (a model without
    /// them, on the Messages API) or `response_format` of type `json_schema` (llama.cpp's
    /// server before it took schemas).
    pub no_structured_output: bool,
}

impl FakeProvider {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake provider: local address");
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake provider: server stopped: {err}");
            }
        });
        FakeProvider {
            addr,
            state,
            server,
        }
    }

    /// "http://127.0.0.1:PORT": Anthropic base URL; requests go to POST {base}/v1/messages.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// "http://127.0.0.1:PORT/v1": OpenAI-compatible base URL; requests go to
    /// POST {base}/chat/completions.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Script the conversation whose first user message contains `needle` (substring match,
    /// first rule added wins). The n-th request of that conversation (0-based, retries
    /// included) gets `steps[n]`; past the end, the default echo reply.
    pub fn script(&self, needle: &str, steps: Vec<Step>) {
        lock(&self.state).rules.push(Rule {
            matcher: Matcher::FirstUser(needle.to_string()),
            steps,
            served: 0,
        });
    }

    /// Script the requests that offer a tool named `tool` (e.g. Claude Code's main loop,
    /// which offers `ToolSearch`), as `script` does: the n-th such request gets `steps[n]`.
    pub fn script_offering(&self, tool: &str, steps: Vec<Step>) {
        lock(&self.state).rules.push(Rule {
            matcher: Matcher::Offers(tool.to_string()),
            steps,
            served: 0,
        });
    }

    /// The requests that offer a tool named `tool`, in arrival order.
    pub fn requests_offering(&self, tool: &str) -> Vec<RecordedRequest> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.tools.iter().any(|t| t == tool))
            .cloned()
            .collect()
    }

    /// Switches on behaviours of non-official servers for every later request.
    pub fn set_quirks(&self, quirks: Quirks) {
        lock(&self.state).quirks = quirks;
    }

    /// Requests answered 429 because of `Quirks::max_in_flight`.
    pub fn throttled(&self) -> usize {
        lock(&self.state).throttled
    }

    /// The most streamed responses that were ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        lock(&self.state).peak_in_flight
    }

    /// What every streamed answer so far billed, in arrival order of the requests.
    pub fn billed(&self) -> Vec<Billed> {
        lock(&self.state).billed.clone()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// The requests whose first user message contains `needle`, in arrival order.
    pub fn requests_for(&self, needle: &str) -> Vec<RecordedRequest> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.first_user_text().contains(needle))
            .cloned()
            .collect()
    }

    /// Number of requests whose first user message contains `needle`.
    pub fn request_count(&self, needle: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.first_user_text().contains(needle))
            .count()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Default)]
struct FakeState {
    rules: Vec<Rule>,
    requests: Vec<RecordedRequest>,
    billed: Vec<Billed>,
    /// Source of `msg_fake_N` / `chatcmpl-fake-N` / `req_fake_N` numbers.
    next_id: u64,
    quirks: Quirks,
    /// Anthropic prompt cache: prefix hash → when the entry expires.
    cache: std::collections::HashMap<u64, std::time::Instant>,
    in_flight: Arc<AtomicUsize>,
    peak_in_flight: usize,
    throttled: usize,
}

type Shared = Arc<Mutex<FakeState>>;

/// A panicking test thread must not turn every later request into a second panic.
fn lock(state: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Anthropic,
    OpenAi,
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&raw_body);
    let recorded = record(uri.path(), &headers, parsed.as_ref().ok());
    let checked = check(&method, uri.path(), &headers, parsed);
    // One lock for recording and step selection, so steps are served in recorded order.
    let (id, quirks, outcome) = {
        let mut state = lock(&state);
        state.requests.push(recorded.clone());
        state.next_id += 1;
        let quirks = state.quirks.clone();
        let outcome = checked
            .and_then(|accepted| quirky(&quirks, accepted))
            .and_then(|accepted| without_structured_output(&quirks, accepted))
            .and_then(|accepted| cached(&mut state, accepted))
            .and_then(|(accepted, cache)| {
                admit(&mut state, accepted).map(|(accepted, permit)| (accepted, cache, permit))
            })
            .map(|(accepted, cache, permit)| {
                let step = if refuses_auto_tool_choice(&quirks, &accepted) {
                    Step::Empty
                } else {
                    next_step(&mut state, &recorded)
                };
                (accepted, cache, permit, step)
            });
        (state.next_id, quirks, outcome)
    };
    match outcome {
        Ok(((api, body), cache, permit, step)) => {
            let all_input = cache.prompt.unwrap_or(raw_body.len() as u64 / 4).max(1);
            let input_tokens = all_input.saturating_sub(cache.read + cache.write).max(1);
            if let Some(streamed) = streamed_chars(&step) {
                lock(&state).billed.push(Billed {
                    input_tokens,
                    cache_write_tokens: cache.write,
                    cache_read_tokens: cache.read,
                    output_tokens: output_tokens(streamed),
                });
            }
            let turn = Turn {
                id,
                model: recorded.model,
                input_tokens,
                cache_write_tokens: cache.write,
                cache_read_tokens: cache.read,
                include_usage: !quirks.no_usage
                    && body
                        .pointer("/stream_options/include_usage")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                repeat_tool_name: quirks.repeat_tool_name,
            };
            respond(api, step, &turn, permit)
        }
        Err(rejected) => error_response(
            rejected.api,
            rejected.code,
            rejected.error_type,
            &rejected.message,
            rejected.retry_after,
            id,
        ),
    }
}

fn record(path: &str, headers: &HeaderMap, body: Option<&Value>) -> RecordedRequest {
    let body = body.cloned().unwrap_or(Value::Null);
    let openai = path == OPENAI_PATH;
    let system = if openai {
        body["messages"].as_array().and_then(|messages| {
            messages
                .iter()
                .find(|m| m["role"] == "system" || m["role"] == "developer")
                .map(|m| content_text(&m["content"]))
        })
    } else {
        match &body["system"] {
            Value::Null => None,
            system => Some(content_text(system)),
        }
    };
    let tools = body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|tool| {
                    tool["name"]
                        .as_str()
                        .or_else(|| tool["function"]["name"].as_str())
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    RecordedRequest {
        path: path.to_string(),
        model: body["model"].as_str().unwrap_or_default().to_string(),
        system,
        tools,
        max_tokens: body["max_tokens"]
            .as_u64()
            .or_else(|| body["max_completion_tokens"].as_u64()),
        stream: body["stream"] == Value::Bool(true),
        api_key: api_key(headers),
        anthropic_version: header_str(headers, "anthropic-version"),
        received_at: std::time::Instant::now(),
        body,
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

fn api_key(headers: &HeaderMap) -> Option<String> {
    header_str(headers, "x-api-key")
        .filter(|key| !key.is_empty())
        .or_else(|| {
            header_str(headers, "authorization")
                .and_then(|value| value.strip_prefix("Bearer ").map(str::to_string))
                .filter(|key| !key.is_empty())
        })
}

/// Text of a message `content` (or Anthropic `system`): a string, or the text of its
/// text blocks / parts joined with "\n".
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| block["type"] == "text")
            .filter_map(|block| block["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn first_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().find(|m| m["role"] == "user"))
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default()
}

enum UserInput {
    Text(String),
    ToolResults,
}

fn last_user_input(body: &Value) -> UserInput {
    let last = body["messages"].as_array().and_then(|messages| {
        messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user" || m["role"] == "tool")
    });
    let Some(message) = last else {
        return UserInput::Text(String::new());
    };
    let has_tool_results = message["content"]
        .as_array()
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"));
    if message["role"] == "tool" || has_tool_results {
        UserInput::ToolResults
    } else {
        UserInput::Text(content_text(&message["content"]))
    }
}
