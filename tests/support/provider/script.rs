//! What the fake answers: the steps a test scripts, the rules that pick a step for a
//! request, and the echo for an unscripted one.

use std::sync::Arc;

use serde_json::Value;

use super::sse::split_even;
use super::{FakeState, RecordedRequest, UserInput, last_user_input};

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

    /// As much text as `fills_max_tokens`, in two halves `delay_ms` apart, ending the turn:
    /// an agent that stays running for `delay_ms` before its usage arrives and spends the
    /// budget, so a spawn made right after it finds it running (and queues behind
    /// `max_concurrent = 1`).
    pub fn fills_max_tokens_over(delay_ms: u64) -> Step {
        Step::FromRequest(StepFn(Arc::new(move |r: &RecordedRequest| {
            let tokens = r.max_tokens.unwrap_or(1) as usize;
            Step::Text {
                chunks: vec![
                    "word".repeat(tokens / 2),
                    "word".repeat(tokens - tokens / 2),
                ],
                delay_ms,
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

pub(super) struct Rule {
    pub(super) matcher: Matcher,
    pub(super) steps: Vec<Step>,
    pub(super) served: usize,
}

/// Which requests a rule answers.
pub(super) enum Matcher {
    /// The first user message contains this text.
    FirstUser(String),
    /// The request offers a tool of this name.
    Offers(String),
}

impl Matcher {
    pub(super) fn matches(&self, request: &RecordedRequest, first_user: &str) -> bool {
        match self {
            Matcher::FirstUser(needle) => first_user.contains(needle.as_str()),
            Matcher::Offers(tool) => request.tools.iter().any(|t| t == tool),
        }
    }
}

pub(super) fn next_step(state: &mut FakeState, request: &RecordedRequest) -> Step {
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
