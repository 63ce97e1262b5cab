//! The Anthropic Messages streaming format: named SSE events with typed JSON data.
use std::time::Duration;

use serde_json::{Value, json};

use super::Step;
use super::sse::{Ending, Sse, Turn, chars, half, output_tokens, split_even};

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
