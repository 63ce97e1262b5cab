//! The OpenAI chat-completions streaming format: unnamed `data:` chunks, then `[DONE]`.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Step;
use super::sse::{Ending, Sse, Turn, chars, half, output_tokens, split_even};

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
