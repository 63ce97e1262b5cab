//! Anthropic Messages API, streamed over SSE (`POST {base}/v1/messages`).

use serde_json::{Value, json};

use crate::structured::{FINAL_TOOL, FINAL_TOOL_DESCRIPTION, final_tool_schema};

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
    let mut http = client
        .http
        .post(&url)
        .header("anthropic-version", API_VERSION)
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(body.clone());
    if let Some(key) = &client.api_key {
        http = http.header("x-api-key", key);
    }
    let resp = client.send(http, &url, req.model).await?;
    let mut events = client.events(resp, &url, req.model);
    let mut acc = Accumulator::default();
    let cut = stream_cut_tokens(req.max_tokens);
    while let Some(ev) = events.next().await? {
        let data: Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(_) if ev.event == "ping" => continue,
            Err(e) => {
                return Err(ProviderError::Retryable {
                    reason: format!("unparsable `{}` event: {e}", ev.event),
                    retry_after: None,
                });
            }
        };
        if acc.apply(&data, on_text)? {
            return acc.finish(body.len());
        }
        if estimate_tokens(acc.metered.out_bytes) > cut {
            return acc.cut(body.len());
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
        data: &Value,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<bool, ProviderError> {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match data.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                if let Some(u) = data.pointer("/message/usage") {
                    self.metered.usage_seen = true;
                    self.usage = TokenUsage {
                        input: tokens(u, "input_tokens"),
                        cache_write: tokens(u, "cache_creation_input_tokens"),
                        cache_read: tokens(u, "cache_read_input_tokens"),
                        output: tokens(u, "output_tokens"),
                    };
                }
            }
            "content_block_start" => {
                let block = data.get("content_block").cloned().unwrap_or(Value::Null);
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
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match (
                    self.blocks.get_mut(index).and_then(Option::as_mut),
                    delta.get("type").and_then(Value::as_str),
                ) {
                    (Some(Partial::Text(t)), Some("text_delta")) => {
                        let d = str_field(delta, "text");
                        self.metered.out_bytes += d.len();
                        on_text(&d);
                        t.push_str(&d);
                    }
                    (Some(Partial::ToolUse { json, .. }), Some("input_json_delta")) => {
                        let d = str_field(delta, "partial_json");
                        self.metered.out_bytes += d.len();
                        json.push_str(&d);
                    }
                    (Some(Partial::Opaque(v)), Some("thinking_delta")) => {
                        let d = str_field(delta, "thinking");
                        self.metered.out_bytes += d.len();
                        append_field(v, "thinking", &d);
                    }
                    (Some(Partial::Opaque(v)), Some("signature_delta")) => {
                        append_field(v, "signature", &str_field(delta, "signature"));
                    }
                    _ => {} // Unknown delta types are ignored, as the API asks.
                }
            }
            "content_block_stop" => {
                if let Some(p) = self.blocks.get_mut(index).and_then(Option::take) {
                    self.done.push(finish_block(p));
                }
            }
            "message_delta" => {
                if let Some(r) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(u) = data.get("usage") {
                    self.metered.usage_seen = true;
                    // Cumulative for the message.
                    if u.get("output_tokens").is_some() {
                        self.usage.output = tokens(u, "output_tokens");
                    }
                    if u.get("input_tokens").is_some_and(|v| !v.is_null()) {
                        self.usage.input = tokens(u, "input_tokens");
                        self.usage.cache_write = tokens(u, "cache_creation_input_tokens");
                        self.usage.cache_read = tokens(u, "cache_read_input_tokens");
                    }
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                let kind = data
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let msg = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let text = format!("{kind}: {msg}");
                return Err(match kind {
                    "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error" => {
                        ProviderError::Retryable {
                            reason: format!("mid-stream {text}"),
                            retry_after: None,
                        }
                    }
                    _ => ProviderError::Fatal(text),
                });
            }
            _ => {} // ping and future event types.
        }
        Ok(false)
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

fn tokens(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

fn append_field(v: &mut Value, key: &str, add: &str) {
    if let Some(obj) = v.as_object_mut() {
        let cur = obj
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        obj.insert(key.to_string(), Value::String(cur + add));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(!acc.apply(&ev, &mut sink).unwrap());
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
        let e = acc
            .apply(
                &json!({"type":"error","error":{"type":"invalid_request_error","message":"bad"}}),
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(e, ProviderError::Fatal("invalid_request_error: bad".into()));
    }
}
