//! A response on the wire: the streamed body (frames and how it ends), the JSON error
//! and redirect bodies, and what a step streams and bills.

use std::collections::VecDeque;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::script::Step;
use super::{Api, InFlight, anthropic, openai};

/// What every response of one turn needs to know about the request.
pub(super) struct Turn {
    pub(super) id: u64,
    pub(super) model: String,
    pub(super) input_tokens: u64,
    /// OpenAI `stream_options.include_usage`: only then does the real API send usage.
    pub(super) include_usage: bool,
    /// `Quirks::repeat_tool_name`.
    pub(super) repeat_tool_name: bool,
    /// Anthropic prompt caching (`input_tokens` is the uncached rest).
    pub(super) cache_write_tokens: u64,
    pub(super) cache_read_tokens: u64,
}

/// How a streamed body ends after its last frame.
pub(super) enum Ending {
    Finish,
    Hang,
    Abort,
}

/// A streamed response: frames written in order, each after its delay.
pub(super) struct Sse {
    pub(super) frames: VecDeque<(Duration, String)>,
    pub(super) ending: Ending,
    /// Held while the body streams (`Quirks::max_in_flight`).
    pub(super) permit: Option<InFlight>,
}

impl Sse {
    pub(super) fn new() -> Sse {
        Sse {
            frames: VecDeque::new(),
            ending: Ending::Finish,
            permit: None,
        }
    }

    pub(super) fn push(&mut self, delay: Duration, frame: String) {
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

pub(super) fn respond(api: Api, step: Step, turn: &Turn, permit: Option<InFlight>) -> Response {
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

pub(super) fn error_response(
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
pub(super) fn streamed_chars(step: &Step) -> Option<usize> {
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

pub(super) fn output_tokens(streamed_chars: usize) -> u64 {
    (streamed_chars as u64 / 4).max(1)
}

pub(super) fn chars(pieces: &[String]) -> usize {
    pieces.iter().map(|p| p.chars().count()).sum()
}

/// The first half of `input` as JSON text: arguments cut off mid-way.
pub(super) fn half(input: &Value) -> String {
    let json = input.to_string();
    json.chars().take(json.chars().count() / 2).collect()
}

/// Splits `s` into at most `parts` non-empty pieces of roughly equal length (in chars).
pub(super) fn split_even(s: &str, parts: usize) -> Vec<String> {
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
