//! Anthropic Messages API, streamed over SSE (`POST {base}/v1/messages`).

mod events;

use serde_json::{Value, json};

use crate::structured::{FINAL_TOOL, FINAL_TOOL_DESCRIPTION, final_tool_schema};
use events::{BlockDelta, StreamError, StreamEvent};

use super::{
    Block, Client, Delivery, Message, Metered, ProviderError, TokenUsage, TurnOutput, TurnRequest,
    estimate_tokens, stream_cut_tokens,
};

pub const API_VERSION: &str = "2023-06-01";

pub(super) async fn turn(
    client: &Client,
    req: &TurnRequest<'_>,
    on_text: &mut dyn FnMut(&str),
) -> Result<TurnOutput, ProviderError> {
    let url = format!("{}/v1/messages", client.base_url);
    let body = body(req, client.prompt_caching).to_string();
    let sent_bytes = body.len();
    let mut http = client
        .http
        .post(&url)
        .header("anthropic-version", API_VERSION)
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = &client.api_key {
        http = http.header("x-api-key", key);
    }
    let resp = client.send(http, &url, req.model).await?;
    let mut events = client.events(resp, &url, req.model);
    let mut acc = Accumulator::default();
    let cut = stream_cut_tokens(req.max_tokens);
    while let Some(ev) = events.next().await? {
        let Some(event) = StreamEvent::parse(&ev)? else {
            continue;
        };
        if acc.apply(event, on_text)? {
            return acc.finish(sent_bytes);
        }
        if estimate_tokens(acc.metered.out_bytes) > cut {
            return acc.cut(sent_bytes);
        }
    }
    Err(events.ended_early("message_stop"))
}

/// The request body. With `caching`, up to three cache_control breakpoints (the API
/// allows four): the system prompt (tools and system, shared by every agent of a role),
/// the end of the previous request's prefix (the second-to-last user message, where the
/// last turn wrote the cache: read exactly, however many blocks this turn added, so the
/// API's 20-block lookback never matters) and the end of this request (written for the
/// next turn).
fn body(req: &TurnRequest<'_>, caching: bool) -> Value {
    let mut messages: Vec<Value> = req.messages.iter().map(message_json).collect();
    if caching {
        let users: Vec<usize> = (0..messages.len())
            .filter(|&i| messages[i]["role"] == "user")
            .collect();
        for &i in users.iter().rev().take(2) {
            mark_last_block(&mut messages[i]);
        }
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "stream": true,
        "messages": messages,
    });
    if !req.system.is_empty() {
        body["system"] = if caching {
            json!([{"type": "text", "text": req.system, "cache_control": {"type": "ephemeral"}}])
        } else {
            json!(req.system)
        };
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
    }
    match req.output_schema {
        Some(Delivery::Native(schema)) => body["output_config"] = output_config(schema),
        Some(Delivery::FinalTool { schema, forced }) => add_final_tool(&mut body, schema, forced),
        None => {}
    }
    body
}

/// The answer through a tool (models without structured outputs): `final_answer` offered
/// beside the others, and with `forced` the only choice (`tool_choice` type `tool`).
fn add_final_tool(body: &mut Value, schema: &Value, forced: bool) {
    let tool = json!({
        "name": FINAL_TOOL,
        "description": FINAL_TOOL_DESCRIPTION,
        "input_schema": final_tool_schema(schema),
    });
    match body["tools"].as_array_mut() {
        Some(tools) => tools.push(tool),
        None => body["tools"] = json!([tool]),
    }
    if forced {
        body["tool_choice"] = json!({"type": "tool", "name": FINAL_TOOL});
    }
}

/// Structured outputs (`output_config.format`, generally available: no beta header):
/// the model's text answer is constrained to JSON of the schema, while tool calls go on
/// as usual. The API takes a subset of JSON Schema, so the schema is adapted
/// (`structured::for_anthropic`); the answer is validated against the original.
fn output_config(schema: &Value) -> Value {
    json!({"format": {"type": "json_schema", "schema": crate::structured::for_anthropic(schema)}})
}

/// Puts a cache breakpoint on the last block of a message.
fn mark_last_block(message: &mut Value) {
    if let Some(last) = message["content"]
        .as_array_mut()
        .and_then(|blocks| blocks.last_mut())
        .and_then(Value::as_object_mut)
    {
        last.insert("cache_control".into(), json!({"type": "ephemeral"}));
    }
}

fn message_json(m: &Message) -> Value {
    let content: Vec<Value> = m.content.iter().map(block_json).collect();
    json!({"role": m.role, "content": content})
}

/// The API takes a tool_use input only as an object: input the model wrote that was not
/// JSON (kept as its text, and answered with a tool error) goes back as `{}`.
fn block_json(b: &Block) -> Value {
    match b {
        Block::ToolUse { id, name, input } if !input.is_object() => {
            json!({"type": "tool_use", "id": id, "name": name, "input": {}})
        }
        b => b.to_json(),
    }
}

/// A content block being streamed.
enum Partial {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
    /// Kept as the provider sent it, with thinking/signature deltas applied.
    Opaque(Value),
}

#[derive(Default)]
struct Accumulator {
    blocks: Vec<Option<Partial>>,
    done: Vec<Block>,
    stop_reason: Option<String>,
    usage: TokenUsage,
    metered: Metered,
}

impl Accumulator {
    /// Applies one event; true when the message is complete.
    fn apply(
        &mut self,
        event: StreamEvent<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<bool, ProviderError> {
        match event {
            StreamEvent::MessageStart { usage } => {
                if let Some(u) = usage {
                    self.metered.usage_seen = true;
                    self.usage = TokenUsage {
                        input: u.input_tokens.unwrap_or(0),
                        cache_write: u.cache_creation_input_tokens.unwrap_or(0),
                        cache_read: u.cache_read_input_tokens.unwrap_or(0),
                        output: u.output_tokens.unwrap_or(0),
                    };
                }
            }
            StreamEvent::ContentBlockStart { index, block } => {
                self.start_block(index, block, on_text)
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                self.apply_delta(index, delta, on_text)
            }
            StreamEvent::ContentBlockStop { index } => {
                if let Some(p) = self.blocks.get_mut(index).and_then(Option::take) {
                    self.done.push(finish_block(p));
                }
            }
            StreamEvent::MessageDelta { stop_reason, usage } => {
                if let Some(r) = stop_reason {
                    self.stop_reason = Some(r.into_owned());
                }
                if let Some(u) = usage {
                    self.metered.usage_seen = true;
                    // Cumulative for the message.
                    if let Some(output) = u.output_tokens {
                        self.usage.output = output;
                    }
                    if let Some(input) = u.input_tokens {
                        self.usage.input = input;
                        self.usage.cache_write = u.cache_creation_input_tokens.unwrap_or(0);
                        self.usage.cache_read = u.cache_read_input_tokens.unwrap_or(0);
                    }
                }
            }
            StreamEvent::MessageStop => return Ok(true),
            StreamEvent::Error(error) => return Err(stream_error(error)),
            StreamEvent::Other => {}
        }
        Ok(false)
    }

    fn start_block(&mut self, index: usize, block: Value, on_text: &mut dyn FnMut(&str)) {
        let partial = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = str_field(&block, "text");
                self.metered.out_bytes += t.len();
                if !t.is_empty() {
                    on_text(&t);
                }
                Partial::Text(t)
            }
            Some("tool_use") => Partial::ToolUse {
                id: str_field(&block, "id"),
                name: str_field(&block, "name"),
                json: String::new(),
            },
            _ => Partial::Opaque(block),
        };
        if self.blocks.len() <= index {
            self.blocks.resize_with(index + 1, || None);
        }
        self.blocks[index] = Some(partial);
    }

    /// A delta for the block at `index`; one of a type the block cannot take (or for no
    /// open block) is ignored.
    fn apply_delta(&mut self, index: usize, delta: BlockDelta<'_>, on_text: &mut dyn FnMut(&str)) {
        let Some(block) = self.blocks.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        match (block, delta) {
            (Partial::Text(t), BlockDelta::Text(text)) => {
                self.metered.out_bytes += text.len();
                on_text(&text);
                t.push_str(&text);
            }
            (Partial::ToolUse { json, .. }, BlockDelta::InputJson(partial_json)) => {
                self.metered.out_bytes += partial_json.len();
                json.push_str(&partial_json);
            }
            (Partial::Opaque(v), BlockDelta::Thinking(thinking)) => {
                self.metered.out_bytes += thinking.len();
                append_field(v, "thinking", &thinking);
            }
            (Partial::Opaque(v), BlockDelta::Signature(signature)) => {
                append_field(v, "signature", &signature);
            }
            _ => {}
        }
    }

    /// The finished message; `sent_bytes` (the request body) estimates the input when the
    /// provider sent no usage.
    fn finish(mut self, sent_bytes: usize) -> Result<TurnOutput, ProviderError> {
        // Blocks never closed (should not happen after message_stop) are still kept.
        for p in std::mem::take(&mut self.blocks).into_iter().flatten() {
            self.done.push(finish_block(p));
        }
        let stop_reason = self.stop_reason.take().unwrap_or_else(|| "end_turn".into());
        Ok(self.output(stop_reason, sent_bytes))
    }

    /// The message as far as it came, for a stream stopped because it ran far past
    /// `max_tokens`: the text is kept, unfinished tool calls are not.
    fn cut(mut self, sent_bytes: usize) -> Result<TurnOutput, ProviderError> {
        for p in std::mem::take(&mut self.blocks).into_iter().flatten() {
            if let Partial::Text(text) = p {
                self.done.push(Block::Text { text });
            }
        }
        self.done.retain(|b| !matches!(b, Block::ToolUse { .. }));
        // The count that came with message_start is not the cumulative one.
        let streamed = estimate_tokens(self.metered.out_bytes);
        self.usage.output = self.usage.output.max(streamed);
        Ok(self.output("max_tokens".into(), sent_bytes))
    }

    fn output(self, stop_reason: String, sent_bytes: usize) -> TurnOutput {
        let estimated = !self.metered.usage_seen;
        let mut usage = self.usage;
        if estimated {
            usage = TokenUsage {
                input: estimate_tokens(sent_bytes),
                output: estimate_tokens(self.metered.out_bytes),
                ..Default::default()
            };
        }
        TurnOutput {
            content: self.done,
            stop_reason,
            usage,
            usage_estimated: estimated,
        }
    }
}

/// An `error` event: retryable for the kinds that pass (overload, rate limit, the API's
/// own trouble), fatal for any other.
fn stream_error(error: StreamError<'_>) -> ProviderError {
    let kind = error.kind.as_deref().unwrap_or("error");
    let text = format!("{kind}: {}", error.message.as_deref().unwrap_or(""));
    match kind {
        "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error" => {
            ProviderError::Retryable {
                reason: format!("mid-stream {text}"),
                retry_after: None,
            }
        }
        _ => ProviderError::Fatal(text),
    }
}

fn finish_block(p: Partial) -> Block {
    match p {
        Partial::Text(text) => Block::Text { text },
        Partial::ToolUse { id, name, json } => {
            // Input that is not JSON (cut at max_tokens) stays the model's text: the agent
            // loop drops a cut call, and answers any other with a tool error.
            let input = if json.trim().is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(&json).unwrap_or(Value::String(json))
            };
            Block::ToolUse { id, name, input }
        }
        Partial::Opaque(v) => Block::Opaque(v),
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Appends `add` to the string field `key` of an opaque block, in place (a field that
/// is missing or not a string becomes `add`).
fn append_field(v: &mut Value, key: &str, add: &str) {
    if let Some(obj) = v.as_object_mut() {
        match obj.get_mut(key) {
            Some(Value::String(cur)) => cur.push_str(add),
            _ => {
                obj.insert(key.to_string(), Value::String(add.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` to `acc` as the stream would: in an SSE event named `name`.
    fn feed_raw(
        acc: &mut Accumulator,
        name: &str,
        data: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<bool, ProviderError> {
        let ev = eventsource_stream::Event {
            event: name.into(),
            data: data.into(),
            id: String::new(),
            retry: None,
        };
        match StreamEvent::parse(&ev)? {
            Some(event) => acc.apply(event, on_text),
            None => Ok(false),
        }
    }

    /// Feeds `data` in an SSE event named after its type, as the API sends it.
    fn feed(
        acc: &mut Accumulator,
        data: &Value,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<bool, ProviderError> {
        let name = data["type"].as_str().unwrap_or("message");
        feed_raw(acc, name, &data.to_string(), on_text)
    }

    #[test]
    fn input_that_was_not_json_goes_back_as_an_empty_object() {
        let m = Message {
            role: crate::provider::Role::Assistant,
            content: vec![Block::ToolUse {
                id: "t1".into(),
                name: "read_file".into(),
                input: Value::String("{\"path\": ".into()),
            }],
        };
        assert_eq!(
            message_json(&m)["content"][0],
            json!({"type": "tool_use", "id": "t1", "name": "read_file", "input": {}})
        );
    }

    #[test]
    fn thinking_blocks_are_passed_back_unchanged() {
        let mut acc = Accumulator::default();
        let mut sink = |_: &str| {};
        for ev in [
            json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}),
            json!({"type":"content_block_stop","index":0}),
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":7}}),
        ] {
            assert!(!feed(&mut acc, &ev, &mut sink).unwrap());
        }
        let out = acc.finish(0).unwrap();
        assert_eq!(
            out.content,
            vec![Block::Opaque(
                json!({"type":"thinking","thinking":"hmm","signature":"sig"})
            )]
        );
        assert_eq!(out.usage.output, 7);
    }

    #[test]
    fn breakpoints_mark_system_and_the_last_two_user_messages() {
        let calls: Vec<Block> = (0..25)
            .map(|i| Block::ToolUse {
                id: format!("t{i}"),
                name: "glob".into(),
                input: json!({}),
            })
            .collect();
        let results: Vec<Block> = (0..25)
            .map(|i| Block::ToolResult {
                tool_use_id: format!("t{i}"),
                content: "x".into(),
                is_error: false,
            })
            .collect();
        let messages = vec![
            Message {
                role: crate::provider::Role::User,
                content: vec![Block::Text {
                    text: "task".into(),
                }],
            },
            Message {
                role: crate::provider::Role::Assistant,
                content: calls,
            },
            Message {
                role: crate::provider::Role::User,
                content: results,
            },
        ];
        let req = TurnRequest {
            cache_key: None,
            model: "m",
            system: "sys",
            messages: &messages,
            tools: &[],
            max_tokens: 10,
            output_schema: None,
        };
        let b = body(&req, true);
        assert_eq!(b.to_string().matches("cache_control").count(), 3);
        assert_eq!(b["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            b["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        // The 25th tool result: the previous breakpoint (the task) is 50 blocks back,
        // out of the lookback, so it carries a breakpoint of its own.
        assert_eq!(
            b["messages"][2]["content"][24]["cache_control"]["type"],
            "ephemeral"
        );
        assert!(
            b["messages"][2]["content"][23]
                .get("cache_control")
                .is_none()
        );
        let plain = body(&req, false);
        assert!(!plain.to_string().contains("cache_control"));
        assert_eq!(plain["system"], "sys");
    }

    #[test]
    fn non_retryable_stream_error_is_fatal() {
        let mut acc = Accumulator::default();
        let e = feed(
            &mut acc,
            &json!({"type":"error","error":{"type":"invalid_request_error","message":"bad"}}),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(e, ProviderError::Fatal("invalid_request_error: bad".into()));
        let e = feed(&mut acc, &json!({"type":"error"}), &mut |_| {}).unwrap_err();
        assert_eq!(e, ProviderError::Fatal("error: ".into()));
    }

    /// An accumulator with a text block open at index 0 that started with `first`.
    fn text_started(first: &str, seen: &mut String) -> Accumulator {
        let mut acc = Accumulator::default();
        let start = json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":first}});
        assert!(!feed(&mut acc, &start, &mut |t| seen.push_str(t)).unwrap());
        acc
    }

    #[test]
    fn an_overload_mid_stream_is_retryable_after_text() {
        let mut seen = String::new();
        let mut acc = text_started("", &mut seen);
        let delta = json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"par"}});
        feed(&mut acc, &delta, &mut |t| seen.push_str(t)).unwrap();
        let error =
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#;
        let e = feed_raw(&mut acc, "error", error, &mut |_| {}).unwrap_err();
        assert_eq!(
            e,
            ProviderError::Retryable {
                reason: "mid-stream overloaded_error: Overloaded".into(),
                retry_after: None
            }
        );
        assert_eq!(seen, "par");
    }

    #[test]
    fn text_deltas_with_escapes_and_unicode_arrive_decoded() {
        let mut seen = String::new();
        let mut acc = text_started("a\\u00e9 ", &mut seen);
        let raw = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"line\n\"q\"\t\u00e9 \ud83d\ude00 ü"}}"#;
        feed_raw(&mut acc, "content_block_delta", raw, &mut |t| {
            seen.push_str(t)
        })
        .unwrap();
        let plain = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" end"}}"#;
        feed_raw(&mut acc, "content_block_delta", plain, &mut |t| {
            seen.push_str(t)
        })
        .unwrap();
        assert!(feed(&mut acc, &json!({"type":"message_stop"}), &mut |_| {}).unwrap());
        let want = "a\\u00e9 line\n\"q\"\té 😀 ü end";
        assert_eq!(seen, want);
        let out = acc.finish(0).unwrap();
        assert_eq!(out.content, vec![Block::Text { text: want.into() }]);
        assert_eq!(out.stop_reason, "end_turn");
    }

    #[test]
    fn unknown_events_and_delta_types_are_ignored() {
        let mut seen = String::new();
        let mut acc = text_started("hi", &mut seen);
        for ev in [
            json!({"type":"ping"}),
            json!({"type":"content_block_future","index":0,"stuff":[1, {"a": null}]}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{"x":1}}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}),
            json!({"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"nowhere"}}),
            json!({"type":"content_block_stop","index":0}),
        ] {
            assert!(
                !feed(&mut acc, &ev, &mut |t| seen.push_str(t)).unwrap(),
                "{ev}"
            );
        }
        // A ping whose data is not JSON is skipped; any other such event is an error.
        assert!(!feed_raw(&mut acc, "ping", "", &mut |_| {}).unwrap());
        let e = feed_raw(&mut acc, "message_delta", "{oops", &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, ProviderError::Retryable { reason, .. }
                if reason.starts_with("unparsable `message_delta` event: ")),
            "{e:?}"
        );
        assert_eq!(seen, "hi");
        let out = acc.finish(0).unwrap();
        assert_eq!(out.content, vec![Block::Text { text: "hi".into() }]);
    }

    #[test]
    fn usage_comes_from_message_start_and_the_cumulative_message_delta() {
        let mut acc = Accumulator::default();
        let start = json!({"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"output_tokens":1}}});
        feed(&mut acc, &start, &mut |_| {}).unwrap();
        let delta = json!({"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":42}});
        feed(&mut acc, &delta, &mut |_| {}).unwrap();
        let out = acc.finish(100).unwrap();
        let want = TokenUsage {
            input: 10,
            cache_write: 5,
            cache_read: 7,
            output: 42,
        };
        assert_eq!((out.usage, out.usage_estimated), (want, false));
        assert_eq!(out.stop_reason, "max_tokens");

        let mut acc = Accumulator::default();
        let delta =
            json!({"type":"message_delta","delta":{},"usage":{"input_tokens":3,"output_tokens":4}});
        feed(&mut acc, &delta, &mut |_| {}).unwrap();
        let out = acc.finish(100).unwrap();
        let want = TokenUsage {
            input: 3,
            output: 4,
            ..Default::default()
        };
        assert_eq!((out.usage, out.usage_estimated), (want, false));
    }
}
