//! Checks that the provider test double speaks the real wire formats.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::provider::{FakeProvider, Step};

/// One SSE event: its `event:` name (if any) and its `data:` payload.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

fn parse_sse(body: &str) -> Vec<Event> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = Event {
                name: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_string());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data.push_str(data);
                }
            }
            event
        })
        .collect()
}

async fn post_anthropic(fake: &FakeProvider, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn post_openai(fake: &FakeProvider, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.openai_base_url()))
        .bearer_auth("sk-openai-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn anthropic_request(user: &str) -> Value {
    json!({
        "model": "claude-haiku-5-5",
        "max_tokens": 1024,
        "stream": true,
        "system": [{"type": "text", "text": "You are terse."}],
        "tools": [{"name": "read_file", "description": "Read a file",
                   "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": user}],
    })
}

fn openai_request(user: &str) -> Value {
    json!({
        "model": "local-model",
        "max_completion_tokens": 512,
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [{"type": "function",
                   "function": {"name": "grep", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": user},
        ],
    })
}

#[tokio::test]
async fn anthropic_text_stream_has_events_in_order() {
    let fake = FakeProvider::start().await;
    fake.script(
        "say hi",
        vec![Step::Text {
            chunks: vec!["Hel".into(), "lo".into()],
            delay_ms: 20,
        }],
    );

    let response = post_anthropic(&fake, anthropic_request("please say hi")).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = parse_sse(&response.text().await.unwrap());

    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for event in &events {
        assert_eq!(event.json()["type"], event.name.as_deref().unwrap());
    }
    let start = events[0].json();
    assert_eq!(start["message"]["id"], "msg_fake_1");
    assert_eq!(start["message"]["model"], "claude-haiku-5-5");
    assert!(start["message"]["usage"]["input_tokens"].as_u64().unwrap() >= 1);
    let text: String = events
        .iter()
        .filter(|e| e.name.as_deref() == Some("content_block_delta"))
        .map(|e| {
            let delta = e.json()["delta"].clone();
            assert_eq!(delta["type"], "text_delta");
            delta["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "Hello");
    let delta = events[6].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 1);
}

#[tokio::test]
async fn anthropic_tool_use_streams_input_in_pieces() {
    let fake = FakeProvider::start().await;
    let input = json!({"path": "src/main.rs", "max_bytes": 4096});
    fake.script(
        "read it",
        vec![Step::ToolUse {
            text: Some("Reading.".into()),
            id: "toolu_01".into(),
            name: "read_file".into(),
            input: input.clone(),
        }],
    );

    let response = post_anthropic(&fake, anthropic_request("read it")).await;
    let events = parse_sse(&response.text().await.unwrap());

    let tool_start = events
        .iter()
        .map(Event::json)
        .find(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(tool_start["index"], 1);
    assert_eq!(tool_start["content_block"]["id"], "toolu_01");
    assert_eq!(tool_start["content_block"]["name"], "read_file");
    let pieces: Vec<String> = events
        .iter()
        .map(Event::json)
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| e["delta"]["partial_json"].as_str().unwrap().to_string())
        .collect();
    assert!(pieces.iter().filter(|p| !p.is_empty()).count() >= 2);
    assert_eq!(
        serde_json::from_str::<Value>(&pieces.concat()).unwrap(),
        input
    );
    let message_delta = events
        .iter()
        .map(Event::json)
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");

    // The script is exhausted: the next request of this conversation gets the echo reply.
    let mut next = anthropic_request("read it");
    next["messages"] = json!([
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01",
                                            "name": "read_file", "input": input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                       "content": "fn main() {}"}]},
    ]);
    let events = parse_sse(&post_anthropic(&fake, next).await.text().await.unwrap());
    let text: String = events
        .iter()
        .map(Event::json)
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "echo: tool results received");
    assert_eq!(fake.request_count("read it"), 2);
}

#[tokio::test]
async fn status_429_has_retry_after_and_error_body() {
    let fake = FakeProvider::start().await;
    fake.script(
        "busy",
        vec![
            Step::Status {
                code: 429,
                error_type: "rate_limit_error".into(),
                message: "Slow down".into(),
                retry_after: Some(2),
            },
            Step::status(529),
        ],
    );

    let response = post_anthropic(&fake, anthropic_request("busy")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["message"], "Slow down");

    let response = post_anthropic(&fake, anthropic_request("busy")).await;
    assert_eq!(response.status(), 529);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn mid_stream_error_and_dropped_connection() {
    let fake = FakeProvider::start().await;
    fake.script(
        "flaky",
        vec![
            Step::MidStreamError {
                after_chunks: vec!["par".into()],
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
            },
            Step::CloseMidMessage {
                after_chunks: vec!["par".into()],
            },
        ],
    );

    let response = post_anthropic(&fake, anthropic_request("flaky")).await;
    let events = parse_sse(&response.text().await.unwrap());
    let last = events.last().unwrap();
    assert_eq!(last.name.as_deref(), Some("error"));
    assert_eq!(
        last.json(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );

    let response = post_anthropic(&fake, anthropic_request("flaky")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let ending = loop {
        match body.next().await {
            Some(Ok(bytes)) => received.extend_from_slice(&bytes),
            other => break other,
        }
    };
    assert!(matches!(ending, Some(Err(_))), "{ending:?}");
    let received = String::from_utf8(received).unwrap();
    assert!(received.contains(r#""text":"par""#), "{received}");
    assert!(!received.contains("message_stop"));
}

#[tokio::test]
async fn chunks_are_flushed_separately_and_hang_never_ends() {
    let fake = FakeProvider::start().await;
    fake.script(
        "slow",
        vec![
            Step::Text {
                chunks: vec!["one".into(), "two".into()],
                delay_ms: 150,
            },
            Step::Hang {
                after_chunks: vec!["stuck".into()],
            },
        ],
    );

    let started = Instant::now();
    let mut body = post_anthropic(&fake, anthropic_request("slow"))
        .await
        .bytes_stream();
    let mut received = String::new();
    while !received.contains(r#""text":"one""#) {
        received.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    assert!(!received.contains(r#""text":"two""#));
    while body.next().await.is_some() {}
    assert!(started.elapsed() >= Duration::from_millis(150));

    let mut body = post_anthropic(&fake, anthropic_request("slow"))
        .await
        .bytes_stream();
    let mut received = String::new();
    while !received.contains(r#""text":"stuck""#) {
        received.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    let next = tokio::time::timeout(Duration::from_millis(200), body.next()).await;
    assert!(next.is_err(), "a hanging stream sent more: {next:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_two_hundred_concurrent_streams() {
    let fake = FakeProvider::start().await;
    let client = reqwest::Client::new();
    let requests = (0..200).map(|i| {
        let request = client
            .post(format!("{}/v1/messages", fake.base_url()))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic_request(&format!("agent {i}")));
        async move { request.send().await.unwrap().text().await.unwrap() }
    });
    let bodies = futures_util::future::join_all(requests).await;
    for (i, body) in bodies.iter().enumerate() {
        assert!(body.contains("message_stop"));
        let text: String = parse_sse(body)
            .iter()
            .filter_map(|e| e.json()["delta"]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(text, format!("echo: agent {i}"));
    }
    assert_eq!(fake.requests().len(), 200);
}

#[tokio::test]
async fn openai_stream_has_tool_calls_usage_and_done() {
    let fake = FakeProvider::start().await;
    let input = json!({"pattern": "fn main", "path": "."});
    fake.script(
        "find main",
        vec![Step::ToolUse {
            text: None,
            id: "call_1".into(),
            name: "grep".into(),
            input: input.clone(),
        }],
    );

    let response = post_openai(&fake, openai_request("find main")).await;
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.unwrap());

    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], "chatcmpl-fake-1");
    }
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "grep");
    assert!(calls.len() >= 3);
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), input);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn llama_cpp_python_quirks_an_empty_200_for_auto_tool_choice_and_a_length_inside_a_call() {
    let fake = FakeProvider::start().await;
    fake.set_quirks(support::provider::Quirks {
        empty_on_streaming_auto_tool_choice: true,
        ..Default::default()
    });
    let input = json!({"pattern": "fn main", "path": "."});
    fake.script(
        "find main",
        vec![Step::ToolUseCut {
            text: None,
            id: "call_1".into(),
            name: "grep".into(),
            input: input.clone(),
        }],
    );

    let mut auto = openai_request("find main");
    auto["tool_choice"] = json!("auto");
    let refused = post_openai(&fake, auto).await;
    assert_eq!(refused.status(), 200);
    assert_eq!(refused.text().await.unwrap(), "", "an empty body");

    // Without tool_choice the script's step is still there: the call, cut by `length`.
    let response = post_openai(&fake, openai_request("find main")).await;
    let events = parse_sse(&response.text().await.unwrap());
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let whole = input.to_string();
    assert!(
        !arguments.is_empty() && whole.starts_with(&arguments),
        "{arguments}"
    );
    assert!(arguments.len() < whole.len(), "cut: {arguments}");
    assert!(serde_json::from_str::<Value>(&arguments).is_err());
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn openai_echo_reply_ends_with_stop() {
    let fake = FakeProvider::start().await;
    let events = parse_sse(
        &post_openai(&fake, openai_request("hello there"))
            .await
            .text()
            .await
            .unwrap(),
    );
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: hello there");
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn requests_are_recorded_and_bad_requests_rejected() {
    let fake = FakeProvider::start().await;
    post_anthropic(&fake, anthropic_request("record me")).await;
    post_openai(&fake, openai_request("record me too")).await;
    let mut not_streaming = anthropic_request("record me");
    not_streaming["stream"] = json!(false);
    let refused = post_anthropic(&fake, not_streaming).await;
    assert_eq!(refused.status(), 400);
    let bad_json = reqwest::Client::new()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let body: Value = bad_json.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    let anthropic = &requests[0];
    assert_eq!(anthropic.path, "/v1/messages");
    assert_eq!(anthropic.model, "claude-haiku-5-5");
    assert_eq!(anthropic.system.as_deref(), Some("You are terse."));
    assert_eq!(anthropic.tools, ["read_file"]);
    assert_eq!(anthropic.max_tokens, Some(1024));
    assert!(anthropic.stream);
    assert_eq!(anthropic.api_key.as_deref(), Some("sk-ant-test"));
    assert_eq!(anthropic.anthropic_version.as_deref(), Some("2023-06-01"));
    let openai = &requests[1];
    assert_eq!(openai.path, "/v1/chat/completions");
    assert_eq!(openai.model, "local-model");
    assert_eq!(openai.system.as_deref(), Some("Be brief."));
    assert_eq!(openai.tools, ["grep"]);
    assert_eq!(openai.max_tokens, Some(512));
    assert_eq!(openai.api_key.as_deref(), Some("sk-openai-test"));
    assert_eq!(openai.anthropic_version, None);
    assert_eq!(requests[3].body, Value::Null);
    // "record me" is a substring of "record me too": both conversations match.
    assert_eq!(fake.request_count("record me"), 3);
    assert_eq!(fake.request_count("record me too"), 1);
}

/// A Messages request whose user content is `n` text blocks of about 200 tokens each,
/// with a cache breakpoint on the blocks listed in `marks`.
fn cached_request(n: usize, marks: &[usize]) -> Value {
    let blocks: Vec<Value> = (0..n)
        .map(|i| {
            let mut b =
                json!({"type": "text", "text": format!("block {i} {}", "lorem ipsum ".repeat(66))});
            if marks.contains(&i) {
                b["cache_control"] = json!({"type": "ephemeral"});
            }
            b
        })
        .collect();
    json!({
        "model": "claude-sonnet-5-5",
        "max_tokens": 16,
        "stream": true,
        "messages": [{"role": "user", "content": blocks}],
    })
}

/// (input, cache write, cache read) of a Messages response's message_start.
async fn cache_usage(fake: &FakeProvider, body: Value) -> (u64, u64, u64) {
    let text = post_anthropic(fake, body).await.text().await.unwrap();
    let start = parse_sse(&text)
        .into_iter()
        .find(|e| e.name.as_deref() == Some("message_start"))
        .unwrap()
        .json();
    let u = &start["message"]["usage"];
    (
        u["input_tokens"].as_u64().unwrap(),
        u["cache_creation_input_tokens"].as_u64().unwrap(),
        u["cache_read_input_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_reads_and_writes_at_breakpoints_as_documented() {
    let fake = FakeProvider::start().await;
    // Under 1,024 tokens: nothing is cached.
    let (_, write, read) = cache_usage(&fake, cached_request(3, &[2])).await;
    assert_eq!((write, read), (0, 0));
    // 10 blocks (~2,000 tokens), breakpoint at the end: written.
    let (_, write, read) = cache_usage(&fake, cached_request(10, &[9])).await;
    assert!(write > 1024 && read == 0, "{write} {read}");
    // The same prefix plus 5 blocks, breakpoint at the new end: the entry at block 9 is
    // within 20 blocks, so it is read; the rest is written.
    let (_, write2, read) = cache_usage(&fake, cached_request(15, &[14])).await;
    assert_eq!(read, write, "the whole earlier prefix is read");
    assert!(write2 > 0);
    // 30 more blocks past block 14 with only the end marked: the lookback (20 blocks)
    // does not reach the entry at 14, so nothing is read...
    let (_, _, read) = cache_usage(&fake, cached_request(45, &[44])).await;
    assert_eq!(read, 0, "beyond the 20-block lookback");
    // ...unless a breakpoint sits on it (the new end, 69, is over 20 blocks past the
    // entry the last request wrote at 44 too).
    let (_, _, read) = cache_usage(&fake, cached_request(70, &[14, 69])).await;
    assert_eq!(read, write + write2);
    // A top-level cache_control marks the last block, which the last request wrote.
    let mut auto = cached_request(70, &[]);
    auto["cache_control"] = json!({"type": "ephemeral"});
    let (input, _, read) = cache_usage(&fake, auto).await;
    assert!(
        read > 14_000 && input < 200,
        "read {read}, uncached {input}"
    );
    // More than 4 breakpoints are refused.
    let resp = post_anthropic(&fake, cached_request(6, &[0, 1, 2, 3, 4])).await;
    assert_eq!(resp.status(), 400);
}

/// Structured outputs are refused as the APIs refuse them: Anthropic's schema subset
/// (objects closed, no numeric or length constraints), OpenAI's strict rules and names,
/// a forced tool that is not offered; a request within the rules is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_parameters_are_checked_like_the_apis() {
    let fake = FakeProvider::start().await;
    let closed = json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": false
    });
    let with_format = |schema: &Value| {
        let mut body = anthropic_request("shape it");
        body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
        body
    };
    let open = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
    let mut minimum = closed.clone();
    minimum["properties"]["n"] = json!({"type": "integer", "minimum": 1});
    for (schema, says) in [
        (
            &open,
            "'additionalProperties' must be explicitly set to false",
        ),
        (&minimum, "the keyword 'minimum' is not supported"),
    ] {
        let resp = post_anthropic(&fake, with_format(schema)).await;
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}");
    }
    assert_eq!(
        post_anthropic(&fake, with_format(&closed)).await.status(),
        200
    );
    // Claude Code sends `output_config` with `effort` and no format: served.
    let mut effort = anthropic_request("shape it");
    effort["output_config"] = json!({"effort": "high"});
    assert_eq!(post_anthropic(&fake, effort).await.status(), 200);

    let with_response_format = |name: &str, schema: &Value, strict: bool| {
        let mut body = openai_request("shape it");
        body["response_format"] = json!({"type": "json_schema", "json_schema": {
            "name": name, "schema": schema, "strict": strict}});
        body
    };
    for (body, says) in [
        (
            with_response_format("answer", &open, true),
            "'additionalProperties' is required",
        ),
        (
            with_response_format("my answer", &closed, true),
            "does not match pattern",
        ),
    ] {
        let resp = post_openai(&fake, body).await;
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{text}");
    }
    for body in [
        with_response_format("answer", &closed, true),
        with_response_format("answer", &open, false),
    ] {
        assert_eq!(post_openai(&fake, body).await.status(), 200);
    }
    let mut forced = anthropic_request("shape it");
    forced["tool_choice"] = json!({"type": "tool", "name": "final_answer"});
    let resp = post_anthropic(&fake, forced).await;
    assert_eq!(resp.status(), 400);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("not among the tools offered")
    );
}
