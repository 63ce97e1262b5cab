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

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

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

/// What the fake answers to one request.
#[derive(Clone, Debug)]
pub enum Step {
    /// Stream `chunks` as text deltas, `delay_ms` between chunks, then end the turn
    /// (stop_reason end_turn / finish_reason stop).
    Text { chunks: Vec<String>, delay_ms: u64 },
    /// Optionally some text, then one tool call (stop_reason tool_use / finish_reason
    /// tool_calls) whose input is streamed as several partial JSON pieces.
    ToolUse {
        text: Option<String>,
        id: String,
        name: String,
        input: Value,
    },
    /// Optionally some text, then one tool call whose arguments stop halfway (not valid
    /// JSON) because the token limit was reached: finish_reason `length` (OpenAI) or
    /// stop_reason `max_tokens` (Anthropic) inside the call. Small local models hit this
    /// when `max_tokens` is lowered as a budget runs out.
    ToolUseCut {
        text: Option<String>,
        id: String,
        name: String,
        input: Value,
    },
    /// One complete tool call whose arguments are exactly `arguments` (e.g. not valid JSON,
    /// as small models write them), ended normally (tool_calls / tool_use).
    ToolUseRaw {
        id: String,
        name: String,
        arguments: String,
    },
    /// Non-2xx HTTP response with the provider's JSON error body. `retry_after` sets the
    /// `retry-after` header (seconds).
    Status {
        code: u16,
        error_type: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// Non-2xx HTTP response with exactly this JSON body, for error bodies the other
    /// variants cannot express (e.g. `error.details.error_code`).
    StatusBody {
        code: u16,
        body: Value,
        retry_after: Option<u64>,
    },
    /// Non-2xx HTTP response whose body never ends (`x` bytes until the client goes away).
    EndlessErrorBody { code: u16 },
    /// Stream `after_chunks` text chunks, then an SSE `error` event (Anthropic) or an error
    /// data object (OpenAI), and end the response.
    MidStreamError {
        after_chunks: Vec<String>,
        error_type: String,
        message: String,
    },
    /// Stream `after_chunks` text chunks, then send nothing more, keeping the connection
    /// open until the client goes away.
    Hang { after_chunks: Vec<String> },
    /// Stream `after_chunks` text chunks, then drop the connection abruptly: no
    /// message_stop / [DONE] and no end of the chunked body, so the client sees a body error.
    CloseMidMessage { after_chunks: Vec<String> },
    /// The step `f` makes from the request, for answers that depend on what came before
    /// (e.g. an id the client received in a tool result).
    FromRequest(StepFn),
    /// Stream `chunks` as text, then stop at the token limit (stop_reason max_tokens /
    /// finish_reason length).
    Length { chunks: Vec<String> },
    /// HTTP 200 with an SSE content type and an empty body.
    Empty,
    /// An HTTP redirect (307) to `location`.
    Redirect { location: String },
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

/// A step made from the request it answers.
#[derive(Clone)]
pub struct StepFn(pub Arc<dyn Fn(&RecordedRequest) -> Step + Send + Sync>);

impl std::fmt::Debug for StepFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepFn(..)")
    }
}

impl Step {
    /// One text turn, `s` split into 3 roughly equal chunks, no delay.
    pub fn text(s: &str) -> Step {
        Step::Text {
            chunks: split_even(s, 3),
            delay_ms: 0,
        }
    }

    /// A model that writes until the request's `max_tokens` stops it (the double counts 4
    /// characters a token), as the real API does with a long answer.
    pub fn fills_max_tokens() -> Step {
        Step::FromRequest(StepFn(Arc::new(|r: &RecordedRequest| {
            let tokens = r.max_tokens.unwrap_or(1) as usize;
            Step::Length {
                chunks: vec!["word".repeat(tokens)],
            }
        })))
    }

    /// An error response with the error type the Anthropic API uses for `code`,
    /// and no `retry-after` header.
    pub fn status(code: u16) -> Step {
        let (error_type, message) = match code {
            400 => ("invalid_request_error", "Invalid request"),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            404 => ("not_found_error", "The requested resource was not found."),
            413 => (
                "request_too_large",
                "Request exceeds the maximum allowed size.",
            ),
            429 => (
                "rate_limit_error",
                "This request would exceed the rate limit for your organization.",
            ),
            529 => ("overloaded_error", "Overloaded"),
            c if c >= 500 => ("api_error", "Internal server error"),
            _ => ("invalid_request_error", "Invalid request"),
        };
        Step::Status {
            code,
            error_type: error_type.to_string(),
            message: message.to_string(),
            retry_after: None,
        }
    }
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

struct Rule {
    matcher: Matcher,
    steps: Vec<Step>,
    served: usize,
}

/// Which requests a rule answers.
enum Matcher {
    /// The first user message contains this text.
    FirstUser(String),
    /// The request offers a tool of this name.
    Offers(String),
}

impl Matcher {
    fn matches(&self, request: &RecordedRequest, first_user: &str) -> bool {
        match self {
            Matcher::FirstUser(needle) => first_user.contains(needle.as_str()),
            Matcher::Offers(tool) => request.tools.iter().any(|t| t == tool),
        }
    }
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

/// What a quirky server refuses that the official API accepts.
fn quirky(quirks: &Quirks, (api, body): (Api, Value)) -> Result<(Api, Value), Rejected> {
    let null_content = body["messages"].as_array().is_some_and(|messages| {
        messages
            .iter()
            .any(|m| m["role"] == "assistant" && m.get("content") == Some(&Value::Null))
    });
    if quirks.reject_null_content && api == Api::OpenAi && null_content {
        return Err(Rejected {
            api,
            code: 500,
            error_type: "internal_server_error",
            message: "'NoneType' object is not iterable".into(),
            retry_after: None,
        });
    }
    Ok((api, body))
}

/// `Quirks::empty_on_streaming_auto_tool_choice`: what llama-cpp-python answers with an
/// empty body.
fn refuses_auto_tool_choice(quirks: &Quirks, (api, body): &(Api, Value)) -> bool {
    quirks.empty_on_streaming_auto_tool_choice
        && *api == Api::OpenAi
        && body["stream"] == true
        && body["tool_choice"] == "auto"
}

/// `Quirks::no_structured_output`: the refusals of servers and models without structured
/// outputs, in their words.
fn without_structured_output(
    quirks: &Quirks,
    (api, body): (Api, Value),
) -> Result<(Api, Value), Rejected> {
    if !quirks.no_structured_output {
        return Ok((api, body));
    }
    let message = match api {
        Api::Anthropic if body.pointer("/output_config/format").is_some() => format!(
            "output_config.format: structured outputs are not supported for the model '{}'",
            body["model"].as_str().unwrap_or_default()
        ),
        Api::OpenAi if body["response_format"]["type"] == "json_schema" => {
            "response_format type must be one of \"text\" or \"json_object\", but got: json_schema"
                .to_string()
        }
        _ => return Ok((api, body)),
    };
    Err(Rejected {
        api,
        code: 400,
        error_type: "invalid_request_error",
        message,
        retry_after: None,
    })
}

/// Input tokens read from and written to the prompt cache by one request.
#[derive(Clone, Copy, Debug, Default)]
struct CacheUse {
    /// Input tokens of the whole prompt, when counted block by block (Anthropic); else
    /// a quarter of the request body is used.
    prompt: Option<u64>,
    read: u64,
    write: u64,
}

/// How long a prompt cache entry lives (refreshed by every hit), and the fewest tokens a
/// prefix needs to be cached, as the Messages API documents.
const CACHE_LIFETIME: Duration = Duration::from_secs(300);
const CACHE_MIN_TOKENS: u64 = 1024;
/// A breakpoint finds an earlier entry at most this many blocks back.
const CACHE_LOOKBACK_BLOCKS: usize = 20;
const MAX_BREAKPOINTS: usize = 4;

/// The Messages API's prompt caching, simulated as documented: the prompt is the sequence
/// of blocks tools → system → messages; a `cache_control` block is a breakpoint (at most
/// 4; a top-level `cache_control` puts one on the last block); each breakpoint reads the
/// longest cached prefix ending at it or up to 20 blocks before it, and writes its own
/// prefix when that has at least 1,024 tokens. Entries live 5 minutes from their last
/// use. Tokens are a quarter of each block's JSON (tools, system, message content); the
/// request's other fields (model, max_tokens, ...) are not input.
fn cached(
    state: &mut FakeState,
    (api, body): (Api, Value),
) -> Result<((Api, Value), CacheUse), Rejected> {
    if api == Api::OpenAi {
        let read = openai_cached(state, &body);
        return Ok((
            (api, body),
            CacheUse {
                prompt: None,
                read,
                write: 0,
            },
        ));
    }
    let mut blocks: Vec<&Value> = Vec::new();
    blocks.extend(body["tools"].as_array().into_iter().flatten());
    blocks.extend(body["system"].as_array().into_iter().flatten());
    for message in body["messages"].as_array().into_iter().flatten() {
        blocks.extend(message["content"].as_array().into_iter().flatten());
    }
    let mut breakpoints: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].get("cache_control").is_some())
        .collect();
    if body.get("cache_control").is_some() && !blocks.is_empty() {
        breakpoints.push(blocks.len() - 1);
        breakpoints.dedup();
    }
    if breakpoints.len() > MAX_BREAKPOINTS {
        return Err(Rejected {
            api,
            code: 400,
            error_type: "invalid_request_error",
            message: format!(
                "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {}.",
                breakpoints.len()
            ),
            retry_after: None,
        });
    }
    // The identity of each prefix (the model's too), and its tokens.
    let mut hashes = Vec::with_capacity(blocks.len());
    let mut tokens = Vec::with_capacity(blocks.len());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&body["model"].to_string(), &mut hasher);
    let mut sum = 0u64;
    for block in &blocks {
        let mut plain = (*block).clone();
        if let Some(obj) = plain.as_object_mut() {
            obj.remove("cache_control");
        }
        let text = plain.to_string();
        std::hash::Hash::hash(&text, &mut hasher);
        hashes.push(std::hash::Hasher::finish(&hasher));
        sum += text.len() as u64 / 4;
        tokens.push(sum);
    }
    let now = std::time::Instant::now();
    state.cache.retain(|_, expires| *expires > now);
    let hit = breakpoints
        .iter()
        .filter_map(|&b| {
            (b.saturating_sub(CACHE_LOOKBACK_BLOCKS - 1)..=b)
                .rev()
                .find(|&j| state.cache.contains_key(&hashes[j]))
        })
        .max();
    let read = hit.map_or(0, |j| tokens[j]);
    if let Some(j) = hit {
        state.cache.insert(hashes[j], now + CACHE_LIFETIME);
    }
    let mut written_to = read;
    for &b in &breakpoints {
        if tokens[b] >= CACHE_MIN_TOKENS {
            state.cache.insert(hashes[b], now + CACHE_LIFETIME);
            written_to = written_to.max(tokens[b]);
        }
    }
    Ok((
        (api, body),
        CacheUse {
            prompt: Some(sum),
            read,
            write: written_to - read,
        },
    ))
}

/// OpenAI's automatic prompt caching, simulated: every prompt prefix of at least 1,024
/// tokens (by whole messages) is cached for 5 minutes, per model and `prompt_cache_key`;
/// a request reads the longest cached prefix, in 128-token steps, as `cached_tokens`.
fn openai_cached(state: &mut FakeState, body: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&("openai", body["model"].to_string()), &mut hasher);
    std::hash::Hash::hash(&body["prompt_cache_key"].to_string(), &mut hasher);
    std::hash::Hash::hash(&body["tools"].to_string(), &mut hasher);
    let now = std::time::Instant::now();
    state.cache.retain(|_, expires| *expires > now);
    let mut tokens = body["tools"].to_string().len() as u64 / 4;
    let mut read = 0;
    for message in body["messages"].as_array().into_iter().flatten() {
        let text = message.to_string();
        std::hash::Hash::hash(&text, &mut hasher);
        tokens += text.len() as u64 / 4;
        let hash = std::hash::Hasher::finish(&hasher);
        if state.cache.contains_key(&hash) {
            read = tokens;
        }
        if tokens >= CACHE_MIN_TOKENS {
            state.cache.insert(hash, now + CACHE_LIFETIME);
        }
    }
    read / 128 * 128
}

/// The rate limit of `Quirks::max_in_flight`: a permit for the response, or a 429.
fn admit(
    state: &mut FakeState,
    accepted: (Api, Value),
) -> Result<((Api, Value), Option<InFlight>), Rejected> {
    let Some(max) = state.quirks.max_in_flight else {
        return Ok((accepted, None));
    };
    let now = state.in_flight.load(Ordering::SeqCst);
    if now >= max {
        state.throttled += 1;
        return Err(Rejected {
            api: accepted.0,
            code: 429,
            error_type: "rate_limit_error",
            message: format!(
                "Number of concurrent connections has exceeded your rate limit ({max}); please retry later."
            ),
            retry_after: Some(state.quirks.retry_after_secs),
        });
    }
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    state.peak_in_flight = state.peak_in_flight.max(now + 1);
    Ok((accepted, Some(InFlight(state.in_flight.clone()))))
}

/// A request the real service would refuse before doing any work.
struct Rejected {
    api: Api,
    code: u16,
    error_type: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// Accepts a request the real service would serve, as `(api, body)`.
fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    parsed: Result<Value, serde_json::Error>,
) -> Result<(Api, Value), Rejected> {
    let api = match path {
        ANTHROPIC_PATH => Api::Anthropic,
        OPENAI_PATH => Api::OpenAi,
        _ => {
            return Err(Rejected {
                api: Api::Anthropic,
                code: 404,
                error_type: "not_found_error",
                message: format!("Not found: {method} {path}"),
                retry_after: None,
            });
        }
    };
    let reject = |code, error_type, message: &str| Rejected {
        api,
        code,
        error_type,
        message: message.to_string(),
        retry_after: None,
    };
    let invalid = |message: &str| Err(reject(400, "invalid_request_error", message));
    if method != Method::POST {
        return Err(reject(
            405,
            "invalid_request_error",
            "Method not allowed; use POST",
        ));
    }
    let body = match parsed {
        Ok(body) if body.is_object() => body,
        Ok(_) => return invalid("The request body must be a JSON object"),
        Err(err) => {
            return invalid(&format!(
                "There was an error parsing the body of your request: {err}"
            ));
        }
    };
    match api {
        Api::Anthropic => {
            if api_key(headers).is_none() {
                let message = "x-api-key header is required";
                return Err(reject(401, "authentication_error", message));
            }
            if header_str(headers, "anthropic-version").is_none() {
                return invalid("anthropic-version: header is required");
            }
            if !body["model"].is_string() {
                return invalid("model: Field required");
            }
            if !body["messages"].is_array() {
                return invalid("messages: Field required");
            }
            if body["max_tokens"].as_u64().is_none() {
                return invalid("max_tokens: Field required");
            }
            if let Some(at) = tool_use_input_not_an_object(&body) {
                return invalid(&format!("{at}.input: Input should be a valid dictionary"));
            }
        }
        Api::OpenAi => {
            if !body["model"].is_string() {
                return invalid("you must provide a model parameter");
            }
            if !body["messages"].is_array() {
                return invalid("Missing required parameter: 'messages'.");
            }
        }
    }
    if body["stream"] != Value::Bool(true) {
        return invalid("this fake only streams: set \"stream\": true");
    }
    let structured = match api {
        Api::Anthropic => check_output_config(&body),
        Api::OpenAi => check_response_format(&body),
    }
    .and_then(|()| check_forced_tool(api, &body));
    if let Err(message) = structured {
        return invalid(&message);
    }
    Ok((api, body))
}

/// Where an Anthropic request has a `tool_use` block whose input is not an object
/// (`messages.N.content.M`), as the API names it in its 400.
fn tool_use_input_not_an_object(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    messages.iter().enumerate().find_map(|(n, m)| {
        m["content"]
            .as_array()?
            .iter()
            .enumerate()
            .find_map(|(k, b)| {
                (b["type"] == "tool_use" && !b["input"].is_object())
                    .then(|| format!("messages.{n}.content.{k}.tool_use"))
            })
    })
}

/// A `tool_choice` that names one tool (Anthropic `{type: "tool", name}`, OpenAI
/// `{type: "function", function: {name}}`) must name a tool the request offers.
fn check_forced_tool(api: Api, body: &Value) -> Result<(), String> {
    let choice = &body["tool_choice"];
    let named = match api {
        Api::Anthropic if choice["type"] == "tool" => choice["name"].as_str(),
        Api::OpenAi if choice["type"] == "function" => choice["function"]["name"].as_str(),
        _ => return Ok(()),
    };
    let offered = body["tools"].as_array().is_some_and(|tools| {
        tools.iter().any(|t| {
            let name = t["name"]
                .as_str()
                .or_else(|| t["function"]["name"].as_str());
            name.is_some() && name == named
        })
    });
    if offered {
        Ok(())
    } else {
        Err(format!(
            "tool_choice: the tool {} is not among the tools offered",
            named.unwrap_or("(no name)")
        ))
    }
}

/// Keywords the Messages API's structured outputs refuse in a schema (its documented
/// limitations: no numeric, string-length or most array constraints).
const ANTHROPIC_REFUSED_KEYWORDS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
];

/// Anthropic structured outputs, `output_config: {format: {type: "json_schema", schema}}`,
/// checked as the API does before any work: the format type, and a schema within the
/// supported subset (every object closed with `additionalProperties: false`, none of the
/// refused keywords, `minItems` 0 or 1). The model then answers in text that is the JSON.
fn check_output_config(body: &Value) -> Result<(), String> {
    // `output_config` carries other settings too (Claude Code sends `effort`).
    let Some(format) = body.pointer("/output_config/format") else {
        return Ok(());
    };
    if format["type"] != "json_schema" {
        return Err(format!(
            "output_config.format.type: Input should be 'json_schema' (got {})",
            format["type"]
        ));
    }
    let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
        return Err("output_config.format.schema: Field required".into());
    };
    anthropic_schema_problem(schema, "")
        .map_or(Ok(()), |p| Err(format!("output_config.format.schema: {p}")))
}

fn anthropic_schema_problem(schema: &Value, at: &str) -> Option<String> {
    match schema {
        Value::Object(map) => {
            for key in ANTHROPIC_REFUSED_KEYWORDS {
                if map.contains_key(*key) {
                    return Some(format!(
                        "at '{at}': the keyword '{key}' is not supported for structured outputs"
                    ));
                }
            }
            if map
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 1)
            {
                return Some(format!(
                    "at '{at}': minItems values other than 0 or 1 are not supported"
                ));
            }
            let object =
                map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if object && map.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Some(format!(
                    "at '{at}': For 'object' type, 'additionalProperties' must be explicitly set to false"
                ));
            }
            subschemas(map, at)
                .into_iter()
                .find_map(|(path, v)| anthropic_schema_problem(v, &path))
        }
        _ => None,
    }
}

/// The schemas one level inside a schema object, with their paths: values of
/// `properties`/`$defs` (by name), `items`, `anyOf` members and the like. Names and data
/// (`required`, `enum`, `const`) are not schemas.
fn subschemas<'v>(map: &'v serde_json::Map<String, Value>, at: &str) -> Vec<(String, &'v Value)> {
    let mut out = Vec::new();
    for (key, value) in map {
        match (key.as_str(), value) {
            (
                "properties" | "$defs" | "definitions" | "patternProperties",
                Value::Object(named),
            ) => {
                out.extend(named.iter().map(|(n, v)| (format!("{at}/{key}/{n}"), v)));
            }
            (
                "items"
                | "prefixItems"
                | "additionalProperties"
                | "anyOf"
                | "allOf"
                | "oneOf"
                | "not"
                | "if"
                | "then"
                | "else",
                v,
            ) => match v {
                Value::Array(items) => out.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("{at}/{key}/{i}"), v)),
                ),
                v => out.push((format!("{at}/{key}"), v)),
            },
            _ => {}
        }
    }
    out
}

/// OpenAI `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`,
/// checked as the API does: a name of letters, digits, `_` and `-` (at most 64), a schema
/// object, and with `strict: true` every object closed and every property required.
fn check_response_format(body: &Value) -> Result<(), String> {
    let Some(format) = body.get("response_format") else {
        return Ok(());
    };
    match format["type"].as_str() {
        Some("text" | "json_object") => return Ok(()),
        Some("json_schema") => {}
        _ => {
            return Err(format!(
                "Invalid value for 'response_format.type': {}. Supported values are: 'json_object', 'json_schema', and 'text'.",
                format["type"]
            ));
        }
    }
    let spec = &format["json_schema"];
    let name = spec["name"].as_str().unwrap_or("");
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(
            "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
                .into(),
        );
    }
    let Some(schema) = spec.get("schema").filter(|s| s.is_object()) else {
        return Err("Missing required parameter: 'response_format.json_schema.schema'.".into());
    };
    if spec["strict"] == Value::Bool(true)
        && let Some(problem) = openai_strict_problem(schema, "")
    {
        return Err(format!(
            "Invalid schema for response_format '{name}': In context=({problem})"
        ));
    }
    Ok(())
}

fn openai_strict_problem(schema: &Value, at: &str) -> Option<String> {
    match schema {
        Value::Object(map) => {
            let object =
                map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if object {
                if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return Some(format!(
                        "'{at}'), 'additionalProperties' is required to be supplied and to be false"
                    ));
                }
                let required: Vec<&str> = map["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(missing) = map["properties"]
                    .as_object()
                    .and_then(|p| p.keys().find(|k| !required.contains(&k.as_str())))
                {
                    return Some(format!(
                        "'{at}'), 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'"
                    ));
                }
            }
            subschemas(map, at)
                .into_iter()
                .find_map(|(path, v)| openai_strict_problem(v, &path))
        }
        _ => None,
    }
}

fn next_step(state: &mut FakeState, request: &RecordedRequest) -> Step {
    let first_user = request.first_user_text();
    let rule = state
        .rules
        .iter_mut()
        .find(|rule| rule.matcher.matches(request, &first_user));
    let step = match rule {
        Some(rule) => {
            let step = rule.steps.get(rule.served).cloned();
            rule.served += 1;
            step.unwrap_or_else(|| echo_step(&request.body))
        }
        None => echo_step(&request.body),
    };
    match step {
        Step::FromRequest(f) => (f.0)(request),
        step => step,
    }
}

fn echo_step(body: &Value) -> Step {
    let said = match last_user_input(body) {
        UserInput::Text(text) => text,
        UserInput::ToolResults => "tool results received".to_string(),
    };
    Step::text(&format!("echo: {said}"))
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

/// Splits `s` into at most `parts` non-empty pieces of roughly equal length (in chars).
/// The first half of `input` as JSON text: arguments cut off mid-way.
fn half(input: &Value) -> String {
    let json = input.to_string();
    json.chars().take(json.chars().count() / 2).collect()
}

fn split_even(s: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let parts = parts.min(chars.len()).max(1);
    if chars.is_empty() {
        return Vec::new();
    }
    let (base, extra) = (chars.len() / parts, chars.len() % parts);
    let mut pieces = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        pieces.push(chars[start..start + len].iter().collect());
        start += len;
    }
    pieces
}

/// What every response of one turn needs to know about the request.
struct Turn {
    id: u64,
    model: String,
    input_tokens: u64,
    /// OpenAI `stream_options.include_usage`: only then does the real API send usage.
    include_usage: bool,
    /// `Quirks::repeat_tool_name`.
    repeat_tool_name: bool,
    /// Anthropic prompt caching (`input_tokens` is the uncached rest).
    cache_write_tokens: u64,
    cache_read_tokens: u64,
}

/// How a streamed body ends after its last frame.
enum Ending {
    Finish,
    Hang,
    Abort,
}

/// A streamed response: frames written in order, each after its delay.
struct Sse {
    frames: VecDeque<(Duration, String)>,
    ending: Ending,
    /// Held while the body streams (`Quirks::max_in_flight`).
    permit: Option<InFlight>,
}

impl Sse {
    fn new() -> Sse {
        Sse {
            frames: VecDeque::new(),
            ending: Ending::Finish,
            permit: None,
        }
    }

    fn push(&mut self, delay: Duration, frame: String) {
        self.frames.push_back((delay, frame));
    }

    fn into_response(self, request_id_header: &'static str, id: u64) -> Response {
        let stream = futures_util::stream::unfold(Some(self), |sse| async move {
            let mut sse = sse?;
            if let Some((delay, frame)) = sse.frames.pop_front() {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                return Some((Ok(Bytes::from(frame)), Some(sse)));
            }
            match sse.ending {
                Ending::Finish => None,
                Ending::Hang => std::future::pending().await,
                // An error from the body makes hyper drop the connection mid-body. Pausing
                // first lets hyper flush the frames already written, as a real drop would.
                Ending::Abort => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "fake provider: scripted connection drop",
                        )),
                        None,
                    ))
                }
            }
        });
        let mut response = Response::new(Body::from_stream(stream));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        insert_request_id(headers, request_id_header, id);
        response
    }
}

fn insert_request_id(headers: &mut HeaderMap, name: &'static str, id: u64) {
    if let Ok(value) = HeaderValue::from_str(&format!("req_fake_{id}")) {
        headers.insert(name, value);
    }
}

fn respond(api: Api, step: Step, turn: &Turn, permit: Option<InFlight>) -> Response {
    match step {
        Step::Redirect { location } => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Step::Status {
            code,
            error_type,
            message,
            retry_after,
        } => error_response(api, code, &error_type, &message, retry_after, turn.id),
        Step::StatusBody {
            code,
            body,
            retry_after,
        } => json_response(api, code, &body, retry_after, turn.id),
        Step::EndlessErrorBody { code } => {
            let chunk = Bytes::from_static(&[b'x'; 64 * 1024]);
            let endless = futures_util::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            let mut response = Response::new(Body::from_stream(endless));
            *response.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response
        }
        Step::Empty => {
            let mut sse = Sse::new();
            sse.permit = permit;
            sse.into_response("request-id", turn.id)
        }
        streamed => {
            let mut sse = match api {
                Api::Anthropic => anthropic::stream(streamed, turn),
                Api::OpenAi => openai::stream(streamed, turn),
            };
            sse.permit = permit;
            let request_id_header = match api {
                Api::Anthropic => "request-id",
                Api::OpenAi => "x-request-id",
            };
            sse.into_response(request_id_header, turn.id)
        }
    }
}

fn error_response(
    api: Api,
    code: u16,
    error_type: &str,
    message: &str,
    retry_after: Option<u64>,
    id: u64,
) -> Response {
    let body = match api {
        Api::Anthropic => json!({
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": format!("req_fake_{id}"),
        }),
        Api::OpenAi => json!({
            "error": {"message": message, "type": error_type, "param": null, "code": null}
        }),
    };
    json_response(api, code, &body, retry_after, id)
}

fn json_response(api: Api, code: u16, body: &Value, retry_after: Option<u64>, id: u64) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    let request_id_header = match api {
        Api::Anthropic => "request-id",
        Api::OpenAi => "x-request-id",
    };
    insert_request_id(headers, request_id_header, id);
    response
}

/// Characters of output a step streams (what its usage counts), `None` for a step that
/// streams no answer and for any step not named here.
fn streamed_chars(step: &Step) -> Option<usize> {
    match step {
        Step::Text { chunks, .. } | Step::Length { chunks } => Some(chars(chunks)),
        Step::ToolUse { text, input, .. } => Some(
            text.as_deref().map_or(0, |t| t.chars().count()) + input.to_string().chars().count(),
        ),
        Step::MidStreamError { after_chunks, .. }
        | Step::Hang { after_chunks }
        | Step::CloseMidMessage { after_chunks } => Some(chars(after_chunks)),
        // Errors, redirects and empty bodies bill nothing (and a step made from the
        // request was made before this).
        _ => None,
    }
}

fn output_tokens(streamed_chars: usize) -> u64 {
    (streamed_chars as u64 / 4).max(1)
}

fn chars(pieces: &[String]) -> usize {
    pieces.iter().map(|p| p.chars().count()).sum()
}

/// The Anthropic Messages streaming format: named SSE events with typed JSON data.
mod anthropic {
    use super::*;

    fn event(sse: &mut Sse, delay: Duration, data: Value) {
        let name = data["type"].as_str().unwrap_or("unknown").to_string();
        sse.push(delay, format!("event: {name}\ndata: {data}\n\n"));
    }

    fn message_start(sse: &mut Sse, turn: &Turn) {
        let message = json!({
            "id": format!("msg_fake_{}", turn.id),
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": turn.model,
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": turn.input_tokens,
                "cache_creation_input_tokens": turn.cache_write_tokens,
                "cache_read_input_tokens": turn.cache_read_tokens,
                "output_tokens": 1,
            },
        });
        event(
            sse,
            Duration::ZERO,
            json!({"type": "message_start", "message": message}),
        );
    }

    /// A text block at `index`: start, a ping (as the real API sends early), deltas, stop.
    fn text_block(sse: &mut Sse, index: usize, chunks: &[String], delay: Duration, stop: bool) {
        event(
            sse,
            Duration::ZERO,
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}}),
        );
        if index == 0 {
            event(sse, Duration::ZERO, json!({"type": "ping"}));
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let delay = if i == 0 { Duration::ZERO } else { delay };
            event(
                sse,
                delay,
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": chunk}}),
            );
        }
        if stop {
            event(
                sse,
                Duration::ZERO,
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn message_end(sse: &mut Sse, stop_reason: &str, streamed_chars: usize) {
        event(
            sse,
            Duration::ZERO,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                   "usage": {"output_tokens": output_tokens(streamed_chars)}}),
        );
        event(sse, Duration::ZERO, json!({"type": "message_stop"}));
    }

    /// Optional text, then one tool_use block whose input streams as `json_text`, then the
    /// message ends with `stop_reason`.
    fn tool_use(
        sse: &mut Sse,
        text: Option<String>,
        id: &str,
        name: &str,
        json_text: &str,
        stop_reason: &str,
    ) {
        let text_chunks = text
            .as_deref()
            .map(|t| split_even(t, 3))
            .unwrap_or_default();
        let index = usize::from(text.is_some());
        if text.is_some() {
            text_block(sse, 0, &text_chunks, Duration::ZERO, true);
        }
        event(
            sse,
            Duration::ZERO,
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": id, "name": name,
                                     "input": {}}}),
        );
        // The real API opens every tool input with an empty partial_json.
        let mut pieces = vec![String::new()];
        pieces.extend(split_even(json_text, 3));
        for piece in &pieces {
            event(
                sse,
                Duration::ZERO,
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": piece}}),
            );
        }
        event(
            sse,
            Duration::ZERO,
            json!({"type": "content_block_stop", "index": index}),
        );
        let streamed = chars(&text_chunks) + json_text.chars().count();
        message_end(sse, stop_reason, streamed);
    }

    pub(super) fn stream(step: Step, turn: &Turn) -> Sse {
        let mut sse = Sse::new();
        message_start(&mut sse, turn);
        match step {
            Step::Text { chunks, delay_ms } => {
                text_block(&mut sse, 0, &chunks, Duration::from_millis(delay_ms), true);
                message_end(&mut sse, "end_turn", chars(&chunks));
            }
            Step::ToolUse {
                text,
                id,
                name,
                input,
            } => tool_use(&mut sse, text, &id, &name, &input.to_string(), "tool_use"),
            Step::ToolUseCut {
                text,
                id,
                name,
                input,
            } => tool_use(&mut sse, text, &id, &name, &half(&input), "max_tokens"),
            Step::ToolUseRaw {
                id,
                name,
                arguments,
            } => tool_use(&mut sse, None, &id, &name, &arguments, "tool_use"),
            Step::MidStreamError {
                after_chunks,
                error_type,
                message,
            } => {
                text_block(&mut sse, 0, &after_chunks, Duration::ZERO, false);
                event(
                    &mut sse,
                    Duration::ZERO,
                    json!({"type": "error",
                           "error": {"type": error_type, "message": message}}),
                );
            }
            Step::Length { chunks } => {
                text_block(&mut sse, 0, &chunks, Duration::ZERO, true);
                message_end(&mut sse, "max_tokens", chars(&chunks));
            }
            Step::Hang { after_chunks } => {
                text_block(&mut sse, 0, &after_chunks, Duration::ZERO, false);
                sse.ending = Ending::Hang;
            }
            Step::CloseMidMessage { after_chunks } => {
                text_block(&mut sse, 0, &after_chunks, Duration::ZERO, false);
                sse.ending = Ending::Abort;
            }
            Step::Status { .. }
            | Step::StatusBody { .. }
            | Step::EndlessErrorBody { .. }
            | Step::FromRequest(_)
            | Step::Empty
            | Step::Redirect { .. } => {
                unreachable!("answered without a stream, or made before")
            }
        }
        sse
    }
}

/// The OpenAI chat-completions streaming format: unnamed `data:` chunks, then `[DONE]`.
mod openai {
    use super::*;

    struct Chunks<'a> {
        sse: Sse,
        turn: &'a Turn,
        created: u64,
    }

    impl Chunks<'_> {
        fn data(&mut self, delay: Duration, data: Value) {
            self.sse.push(delay, format!("data: {data}\n\n"));
        }

        fn chunk(&mut self, delay: Duration, delta: Value, finish_reason: Option<&str>) {
            let mut chunk = json!({
                "id": format!("chatcmpl-fake-{}", self.turn.id),
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.turn.model,
                "system_fingerprint": null,
                "choices": [{"index": 0, "delta": delta, "logprobs": null,
                             "finish_reason": finish_reason}],
            });
            if self.turn.include_usage {
                chunk["usage"] = Value::Null;
            }
            self.data(delay, chunk);
        }

        fn text(&mut self, chunks: &[String], delay: Duration) {
            for (i, chunk) in chunks.iter().enumerate() {
                let delay = if i == 0 { Duration::ZERO } else { delay };
                self.chunk(delay, json!({"content": chunk}), None);
            }
        }

        /// Optional text, then one tool call whose arguments stream as `arguments`, then
        /// `finish_reason`.
        fn tool_call(
            &mut self,
            text: Option<String>,
            id: &str,
            name: &str,
            arguments: &str,
            finish_reason: &str,
        ) {
            let text_chunks = text
                .as_deref()
                .map(|t| split_even(t, 3))
                .unwrap_or_default();
            self.text(&text_chunks, Duration::ZERO);
            self.chunk(
                Duration::ZERO,
                json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                None,
            );
            for piece in split_even(arguments, 3) {
                let call = if self.turn.repeat_tool_name {
                    json!({"index": 0, "id": id, "type": "function",
                           "function": {"name": name, "arguments": piece}})
                } else {
                    json!({"index": 0, "function": {"arguments": piece}})
                };
                self.chunk(Duration::ZERO, json!({"tool_calls": [call]}), None);
            }
            let streamed = chars(&text_chunks) + arguments.chars().count();
            self.finish(finish_reason, streamed);
        }

        fn finish(&mut self, finish_reason: &str, streamed_chars: usize) {
            self.chunk(Duration::ZERO, json!({}), Some(finish_reason));
            if self.turn.include_usage {
                let completion_tokens = output_tokens(streamed_chars);
                // OpenAI counts cached tokens inside prompt_tokens.
                let prompt_tokens = self.turn.input_tokens + self.turn.cache_read_tokens;
                self.data(
                    Duration::ZERO,
                    json!({
                        "id": format!("chatcmpl-fake-{}", self.turn.id),
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.turn.model,
                        "system_fingerprint": null,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                            "prompt_tokens_details": {
                                "cached_tokens": self.turn.cache_read_tokens,
                            },
                        },
                    }),
                );
            }
            self.sse
                .push(Duration::ZERO, "data: [DONE]\n\n".to_string());
        }
    }

    pub(super) fn stream(step: Step, turn: &Turn) -> Sse {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut out = Chunks {
            sse: Sse::new(),
            turn,
            created,
        };
        out.chunk(
            Duration::ZERO,
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        );
        match step {
            Step::Text { chunks, delay_ms } => {
                out.text(&chunks, Duration::from_millis(delay_ms));
                out.finish("stop", chars(&chunks));
            }
            Step::ToolUse {
                text,
                id,
                name,
                input,
            } => out.tool_call(text, &id, &name, &input.to_string(), "tool_calls"),
            Step::ToolUseCut {
                text,
                id,
                name,
                input,
            } => out.tool_call(text, &id, &name, &half(&input), "length"),
            Step::ToolUseRaw {
                id,
                name,
                arguments,
            } => out.tool_call(None, &id, &name, &arguments, "tool_calls"),
            Step::MidStreamError {
                after_chunks,
                error_type,
                message,
            } => {
                out.text(&after_chunks, Duration::ZERO);
                out.data(
                    Duration::ZERO,
                    json!({"error": {"message": message, "type": error_type,
                                     "param": null, "code": null}}),
                );
            }
            Step::Length { chunks } => {
                out.text(&chunks, Duration::ZERO);
                out.finish("length", chars(&chunks));
            }
            Step::Hang { after_chunks } => {
                out.text(&after_chunks, Duration::ZERO);
                out.sse.ending = Ending::Hang;
            }
            Step::CloseMidMessage { after_chunks } => {
                out.text(&after_chunks, Duration::ZERO);
                out.sse.ending = Ending::Abort;
            }
            Step::Status { .. }
            | Step::StatusBody { .. }
            | Step::EndlessErrorBody { .. }
            | Step::FromRequest(_)
            | Step::Empty
            | Step::Redirect { .. } => {
                unreachable!("answered without a stream, or made before")
            }
        }
        out.sse
    }
}
