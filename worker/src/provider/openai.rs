//! OpenAI-compatible chat completions, streamed (`POST {base}/chat/completions`): OpenAI,
//! Ollama, vLLM, LM Studio, OpenRouter.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::structured::{FINAL_TOOL, FINAL_TOOL_DESCRIPTION, final_tool_schema};

use super::{
    Block, Client, Delivery, Message, Metered, ProviderError, Role, TokenUsage, TurnOutput,
    TurnRequest, estimate_tokens, optional_str, stream_cut_tokens,
};

pub(super) async fn turn(
    client: &Client,
    req: &TurnRequest<'_>,
    on_text: &mut dyn FnMut(&str),
) -> Result<TurnOutput, ProviderError> {
    let url = format!("{}/chat/completions", client.base_url);
    let body = body(req, client.prompt_cache_key).to_string();
    let sent_bytes = body.len();
    let mut http = client
        .http
        .post(&url)
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = &client.api_key {
        http = http.bearer_auth(key);
    }
    let resp = client.send(http, &url, req.model).await?;
    let mut events = client.events(resp, &url, req.model);
    let mut acc = Accumulator::default();
    let cut = stream_cut_tokens(req.max_tokens);
    while let Some(ev) = events.next().await? {
        if ev.data.trim() == "[DONE]" {
            return Ok(acc.finish(sent_bytes));
        }
        acc.apply(Chunk::parse(&ev.data)?, on_text)?;
        if estimate_tokens(acc.metered.out_bytes) > cut {
            return Ok(acc.cut(sent_bytes));
        }
    }
    // Some servers end the stream without [DONE]; a finish_reason means it was complete.
    if acc.finish_reason.is_some() {
        return Ok(acc.finish(sent_bytes));
    }
    Err(events.ended_early("the completion finished"))
}

fn body(req: &TurnRequest<'_>, send_cache_key: bool) -> Value {
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for m in req.messages {
        messages.extend(message_json(m));
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": messages,
    });
    if send_cache_key && let Some(key) = req.cache_key {
        body["prompt_cache_key"] = json!(key);
    }
    if !req.tools.is_empty() {
        // No `tool_choice`: `auto` is already the default when tools are offered, and
        // llama-cpp-python answers a streaming request that sends it with an empty body.
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
            .collect();
    }
    match req.output_schema {
        Some(Delivery::Native(schema)) => body["response_format"] = response_format(schema),
        Some(Delivery::FinalTool { schema, forced }) => add_final_tool(&mut body, schema, forced),
        None => {}
    }
    body
}

/// The answer through a function (servers that refuse `response_format`): `final_answer`
/// offered beside the others, and with `forced` named in `tool_choice`.
fn add_final_tool(body: &mut Value, schema: &Value, forced: bool) {
    let tool = json!({"type": "function", "function": {
        "name": FINAL_TOOL,
        "description": FINAL_TOOL_DESCRIPTION,
        "parameters": final_tool_schema(schema),
    }});
    match body["tools"].as_array_mut() {
        Some(tools) => tools.push(tool),
        None => body["tools"] = json!([tool]),
    }
    if forced {
        body["tool_choice"] = json!({"type": "function", "function": {"name": FINAL_TOOL}});
    }
}

/// `response_format` with a JSON Schema (OpenAI, vLLM, Ollama, LM Studio, llama.cpp):
/// `strict` only where OpenAI's strict mode accepts the schema; validation in the agent
/// loop holds the answer to the schema either way.
fn response_format(schema: &Value) -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": schema,
            "strict": crate::structured::openai_strict(schema),
        }
    })
}

/// One neutral message can become several OpenAI messages (each tool result is its own).
fn message_json(m: &Message) -> Vec<Value> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for b in &m.content {
        match b {
            Block::Text { text: t } => text.push_str(t),
            Block::ToolUse { id, name, input } => calls.push(json!({
                "id": id, "type": "function",
                "function": {"name": name, "arguments": arguments_text(input)},
            })),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let content = if *is_error {
                    format!("Error: {content}")
                } else {
                    content.clone()
                };
                results
                    .push(json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}));
            }
            Block::Opaque(_) => {}
        }
    }
    let mut out = results;
    match m.role {
        Role::Assistant => {
            // "" rather than null: llama-cpp-python answers HTTP 500 to a null content.
            let mut msg = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            out.push(msg);
        }
        Role::User if !text.is_empty() => out.push(json!({"role": "user", "content": text})),
        Role::User => {}
    }
    out
}

/// A call's arguments as sent back: what the model wrote, also when that was not JSON
/// (kept as a string, see `Accumulator::finish`).
fn arguments_text(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// One `chat.completion.chunk`, typed: text and argument pieces borrow from the chunk's
/// data (unless they have escapes). Only the first choice is read (`n` is never sent).
#[derive(Debug, Deserialize)]
struct Chunk<'a> {
    /// Any `error` member, even `null`, ends the stream as an error.
    #[serde(default, deserialize_with = "present")]
    error: Option<Value>,
    usage: Option<ChunkUsage>,
    #[serde(rename = "choices", default, borrow, deserialize_with = "first")]
    choice: Option<Choice<'a>>,
}

impl Chunk<'_> {
    fn parse(data: &str) -> Result<Chunk<'_>, ProviderError> {
        serde_json::from_str(data).map_err(|e| ProviderError::Retryable {
            reason: format!("unparsable chunk: {e}"),
            retry_after: None,
        })
    }
}

#[derive(Debug, Deserialize)]
struct ChunkUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    delta: Delta<'a>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow, deserialize_with = "optional_str")]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<CallDelta<'a>>>,
}

/// A piece of one tool call; `index` says which.
#[derive(Debug, Deserialize)]
struct CallDelta<'a> {
    #[serde(default, deserialize_with = "null_as_default")]
    index: u64,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow, deserialize_with = "optional_str")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    arguments: Option<Cow<'a, str>>,
}

/// A member that is there, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `null` read as the type's default, as a missing member is: servers differ in which
/// of the two they send (`"delta": null` in a last chunk).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The first element of `choices`; the others are skipped unread.
fn first<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Choice<'de>>, D::Error> {
    struct First;
    impl<'de> serde::de::Visitor<'de> for First {
        type Value = Option<Choice<'de>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of choices")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            // A `null` choice reads as no choice, as it did before the typed chunk.
            let first = seq.next_element::<Option<Choice<'de>>>()?.flatten();
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }
    d.deserialize_any(First)
}

#[derive(Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct Accumulator {
    text: String,
    calls: BTreeMap<u64, Call>,
    finish_reason: Option<String>,
    usage: TokenUsage,
    metered: Metered,
}

impl Accumulator {
    fn apply(
        &mut self,
        chunk: Chunk<'_>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(), ProviderError> {
        if let Some(err) = chunk.error {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("stream error");
            return Err(ProviderError::Retryable {
                reason: format!("mid-stream error: {msg}"),
                retry_after: None,
            });
        }
        if let Some(u) = chunk.usage {
            self.metered.usage_seen = true;
            let prompt = u.prompt_tokens.unwrap_or(0);
            // Cached prompt tokens are part of prompt_tokens, billed at their own rate.
            let cached = u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .min(prompt);
            self.usage = TokenUsage {
                input: prompt - cached,
                cache_read: cached,
                cache_write: 0,
                output: u.completion_tokens.unwrap_or(0),
            };
        }
        let Some(choice) = chunk.choice else {
            return Ok(());
        };
        if let Some(t) = choice.delta.content
            && !t.is_empty()
        {
            on_text(&t);
            self.metered.out_bytes += t.len();
            self.text.push_str(&t);
        }
        for c in choice.delta.tool_calls.into_iter().flatten() {
            self.add_call_piece(c);
        }
        if let Some(r) = choice.finish_reason {
            self.finish_reason = Some(r.into_owned());
        }
        Ok(())
    }

    fn add_call_piece(&mut self, c: CallDelta<'_>) {
        let call = self.calls.entry(c.index).or_default();
        // The id and the name are taken once per call index: llama-cpp-python repeats the
        // whole name in every chunk of a call.
        if let Some(id) = c.id
            && call.id.is_empty()
        {
            call.id = id.into_owned();
        }
        let Some(f) = c.function else {
            return;
        };
        if let Some(n) = f.name
            && call.name.is_empty()
        {
            self.metered.out_bytes += n.len();
            call.name = n.into_owned();
        }
        if let Some(a) = f.arguments {
            self.metered.out_bytes += a.len();
            call.arguments.push_str(&a);
        }
    }

    /// The completion as far as it came, for a stream stopped because it ran far past
    /// `max_tokens`: the text is kept, unfinished tool calls are not.
    fn cut(mut self, sent_bytes: usize) -> TurnOutput {
        self.calls.clear();
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(Block::Text {
                text: std::mem::take(&mut self.text),
            });
        }
        let (usage, usage_estimated) = self.usage(sent_bytes);
        TurnOutput {
            content,
            stop_reason: "max_tokens".into(),
            usage,
            usage_estimated,
        }
    }

    /// The provider's usage, else the estimate from the bytes sent and received.
    fn usage(&self, sent_bytes: usize) -> (TokenUsage, bool) {
        if self.metered.usage_seen {
            return (self.usage, false);
        }
        let estimate = TokenUsage {
            input: estimate_tokens(sent_bytes),
            output: estimate_tokens(self.metered.out_bytes),
            ..Default::default()
        };
        (estimate, true)
    }

    fn finish(self, sent_bytes: usize) -> TurnOutput {
        let (usage, usage_estimated) = self.usage(sent_bytes);
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(Block::Text { text: self.text });
        }
        for (i, c) in self.calls {
            // Arguments that are not JSON stay the model's own text (a JSON string): the
            // tool answers with an error the model can correct, instead of a retry of the
            // whole turn. A call cut at the token limit is dropped by the agent loop.
            let input = if c.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments))
            };
            let id = if c.id.is_empty() {
                format!("call_{i}")
            } else {
                c.id
            };
            content.push(Block::ToolUse {
                id,
                name: c.name,
                input,
            });
        }
        let has_calls = content.iter().any(|b| matches!(b, Block::ToolUse { .. }));
        // `length` first: a call cut at the limit must not look like a finished one.
        let stop_reason = match self.finish_reason.as_deref() {
            Some("length") => "max_tokens",
            Some("tool_calls") | Some("function_call") => "tool_use",
            _ if has_calls => "tool_use",
            _ => "end_turn",
        };
        TurnOutput {
            content,
            stop_reason: stop_reason.into(),
            usage,
            usage_estimated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ToolDef;
    use super::*;

    /// Feeds `data` to `acc` as the stream would: as the text of one SSE event.
    fn feed(
        acc: &mut Accumulator,
        data: &Value,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(), ProviderError> {
        acc.apply(Chunk::parse(&data.to_string())?, on_text)
    }

    #[test]
    fn tool_results_become_tool_messages() {
        let m = Message {
            role: Role::User,
            content: vec![Block::ToolResult {
                tool_use_id: "c1".into(),
                content: "nope".into(),
                is_error: true,
            }],
        };
        assert_eq!(
            message_json(&m),
            vec![json!({"role":"tool","tool_call_id":"c1","content":"Error: nope"})]
        );
    }

    #[test]
    fn null_where_a_member_may_be_missing_reads_as_missing() {
        let mut acc = Accumulator::default();
        let mut seen = String::new();
        let mut on_text = |t: &str| seen.push_str(t);
        feed(
            &mut acc,
            &json!({"choices":[{"index":0,"delta":{"content":"hi"}}]}),
            &mut on_text,
        )
        .unwrap();
        feed(
            &mut acc,
            &json!({"choices":[{"index":0,"delta":null,"finish_reason":null}]}),
            &mut on_text,
        )
        .unwrap();
        feed(&mut acc, &json!({"choices":[null]}), &mut on_text).unwrap();
        feed(
            &mut acc,
            &json!({"choices":[{"delta":{"tool_calls":[{"index":null,"id":"c1","function":{"name":"glob","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}),
            &mut on_text,
        )
        .unwrap();
        assert_eq!(seen, "hi");
        assert_eq!(acc.calls.get(&0).map(|c| c.name.as_str()), Some("glob"));
        assert_eq!(acc.finish_reason.as_deref(), Some("tool_calls"));
    }

    fn call_chunk(arguments: &str, finish_reason: Option<&str>) -> Value {
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"read_file","arguments":arguments}}]},"finish_reason":finish_reason}]})
    }

    #[test]
    fn tools_are_offered_without_tool_choice() {
        let tools = [ToolDef {
            name: "glob",
            description: "d",
            input_schema: json!({"type": "object"}),
        }];
        let req = TurnRequest {
            cache_key: None,
            model: "m",
            system: "",
            messages: &[],
            tools: &tools,
            max_tokens: 10,
            output_schema: None,
        };
        let b = body(&req, false);
        assert_eq!(b["tools"][0]["function"]["name"], "glob");
        assert_eq!(b.get("tool_choice"), None);
    }

    #[test]
    fn a_call_cut_by_length_is_a_max_tokens_stop_not_an_error() {
        let mut acc = Accumulator::default();
        feed(
            &mut acc,
            &call_chunk("{\"path\": \"src/ma", Some("length")),
            &mut |_| {},
        )
        .unwrap();
        let out = acc.finish(0);
        assert_eq!(out.stop_reason, "max_tokens");
        assert!(matches!(
            &out.content[..],
            [Block::ToolUse { input: Value::String(raw), .. }] if raw == "{\"path\": \"src/ma"
        ));
    }

    #[test]
    fn arguments_that_are_not_json_are_kept_as_written_and_sent_back_so() {
        let mut acc = Accumulator::default();
        feed(
            &mut acc,
            &call_chunk("{path: x}", Some("tool_calls")),
            &mut |_| {},
        )
        .unwrap();
        let out = acc.finish(0);
        assert_eq!(out.stop_reason, "tool_use");
        let m = Message {
            role: Role::Assistant,
            content: out.content,
        };
        assert_eq!(
            message_json(&m)[0]["tool_calls"][0]["function"]["arguments"],
            "{path: x}"
        );
    }

    #[test]
    fn streamed_tool_call_pieces_are_joined() {
        let mut acc = Accumulator::default();
        let mut sink = |_: &str| {};
        feed(&mut acc, &json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"glob","arguments":"{\"pat"}}]}}]}), &mut sink).unwrap();
        feed(&mut acc, &json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"tern\":\"*\"}"}}]},"finish_reason":"tool_calls"}]}), &mut sink).unwrap();
        let out = acc.finish(0);
        assert_eq!(out.stop_reason, "tool_use");
        assert_eq!(
            out.content,
            vec![Block::ToolUse {
                id: "c1".into(),
                name: "glob".into(),
                input: json!({"pattern":"*"})
            }]
        );
    }

    #[test]
    fn text_with_escapes_and_unicode_arrives_decoded_and_usage_counts_cached_tokens() {
        let mut acc = Accumulator::default();
        let mut seen = String::new();
        for raw in [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a\n\"b\"\t\u00e9 \ud83d\ude00 ü"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":null}},{"index":1,"delta":{"content":"second choice"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        ] {
            acc.apply(Chunk::parse(raw).unwrap(), &mut |t| seen.push_str(t))
                .unwrap();
        }
        let want = "a\n\"b\"\té 😀 ü";
        assert_eq!(seen, want);
        let out = acc.finish(0);
        assert_eq!(out.content, vec![Block::Text { text: want.into() }]);
        assert_eq!(out.stop_reason, "end_turn");
        let usage = TokenUsage {
            input: 6,
            cache_read: 4,
            cache_write: 0,
            output: 3,
        };
        assert_eq!((out.usage, out.usage_estimated), (usage, false));
    }

    #[test]
    fn a_text_piece_without_escapes_borrows_from_the_chunk() {
        let chunk = Chunk::parse(r#"{"choices":[{"delta":{"content":"plain"}}]}"#).unwrap();
        let content = chunk.choice.and_then(|c| c.delta.content);
        assert!(
            matches!(content, Some(Cow::Borrowed("plain"))),
            "{content:?}"
        );
    }

    #[test]
    fn an_error_mid_stream_is_retryable_and_an_unparsable_chunk_too() {
        let mut acc = Accumulator::default();
        let mut seen = String::new();
        feed(
            &mut acc,
            &json!({"choices":[{"delta":{"content":"par"}}]}),
            &mut |t| seen.push_str(t),
        )
        .unwrap();
        let e = feed(
            &mut acc,
            &json!({"error":{"message":"model overloaded","type":"server_error"}}),
            &mut |_| {},
        )
        .unwrap_err();
        let retryable = |reason: &str| ProviderError::Retryable {
            reason: reason.into(),
            retry_after: None,
        };
        assert_eq!(e, retryable("mid-stream error: model overloaded"));
        // Any `error` member ends the stream, whatever it holds.
        for error in [json!({"error": null}), json!({"error": "boom"})] {
            let e = feed(&mut acc, &error, &mut |_| {}).unwrap_err();
            assert_eq!(e, retryable("mid-stream error: stream error"), "{error}");
        }
        assert_eq!(seen, "par");
        let e = Chunk::parse("{\"choices\": [").unwrap_err();
        assert!(
            matches!(&e, ProviderError::Retryable { reason, .. } if reason.starts_with("unparsable chunk: ")),
            "{e:?}"
        );
    }
}
