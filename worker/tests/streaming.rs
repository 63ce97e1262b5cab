//! A run end to end against the fake provider: events in order, what the request
//! carries, the manual run's two output formats, the OpenAI-compatible wire format.

use crate::common;

use bg_agent_worker::protocol::{Event, UsageReport, exit};
use common::{Harness, OPENAI_KEY, Step, run, tool_use};
use serde_json::json;
use support::process::API_KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_arrives_as_ordered_events_and_concatenates_to_the_result() {
    let h = Harness::start().await;
    let chunks = ["The answer ", "is forty", "-two."];
    h.fake.script(
        "stream me",
        vec![Step::Text {
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            delay_ms: 20,
        }],
    );

    let live = h.start_spec(&h.spec("stream me the answer")).await;
    let r = live.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert_eq!(
        r.types(),
        [
            "started", "message", "text", "text", "text", "usage", "message", "result"
        ],
        "{}",
        r.dump()
    );
    let texts: Vec<String> = r
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Text { text } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(texts, chunks, "each delta is passed on as it arrives");
    match &r.events()[0] {
        Event::Started {
            model, provider, ..
        } => {
            assert_eq!(model, "claude-sonnet-5-5");
            assert_eq!(provider, "anthropic");
        }
        other => panic!("first event is not `started`: {other:?}"),
    }
    match r.last() {
        Event::Result {
            text,
            stop_reason,
            turns,
            ..
        } => {
            assert_eq!(text, r.text());
            assert_eq!(text, "The answer is forty-two.");
            assert_eq!(stop_reason, "end_turn");
            assert_eq!(turns, 1);
        }
        other => panic!("not a result: {other:?}"),
    }
    match &r.events()[5] {
        Event::Usage(UsageReport {
            input_tokens,
            output_tokens,
            cost_usd,
            estimated,
            ..
        }) => {
            assert!(*input_tokens > 0 && *output_tokens > 0);
            assert!(!estimated, "the provider sent usage");
            assert!(cost_usd.is_some_and(|c| c > 0.0), "sonnet has a price");
        }
        other => panic!("not usage: {other:?}"),
    }
    assert_eq!(h.fake.request_count("stream me"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_carries_the_api_key_version_header_model_prompt_and_tools() {
    let h = Harness::start().await;
    h.fake.script("headers please", vec![Step::text("ok")]);

    let spec = h.spec("headers please");
    let r = h.start_spec(&spec).await.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.api_key.as_deref(), Some(API_KEY), "x-api-key");
    assert_eq!(req.anthropic_version.as_deref(), Some("2023-06-01"));
    assert!(req.stream);
    assert_eq!(req.model, spec.model);
    assert_eq!(req.system.as_deref(), Some(spec.system_prompt.as_str()));
    assert_eq!(req.tools, ["read_file", "glob", "grep", "bash"]);
    assert_eq!(req.max_tokens, Some(u64::from(spec.limits.max_tokens)));
    assert_eq!(req.first_user_text(), "headers please");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_run_prints_text_a_line_per_tool_call_and_a_summary_line() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "the build uses cargo\n");
    h.fake.script(
        "summarize the notes",
        vec![
            Step::ToolUse {
                text: Some("Let me look.".into()),
                id: "toolu_1".into(),
                name: "read_file".into(),
                input: json!({"path": "notes.txt"}),
            },
            Step::text("The build uses cargo."),
        ],
    );

    let r = run(h.worker(&["summarize the notes"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "Let me look.", "{}", r.dump());
    assert_eq!(lines[1], "→ read_file path=\"notes.txt\"", "{}", r.dump());
    assert!(lines.contains(&"The build uses cargo."), "{}", r.dump());
    let summary =
        regex::Regex::new(r"^— 2 turns · \d+ in / \d+ out tokens · \$\d+\.\d{4}$").expect("regex");
    let last = lines.last().expect("some output");
    assert!(summary.is_match(last), "last line: {last:?}\n{}", r.dump());
    assert!(
        !r.stdout.contains("{\""),
        "no JSON in human output\n{}",
        r.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_run_with_json_prints_only_events() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "alpha\n");
    h.fake.script(
        "json please",
        vec![
            tool_use("toolu_1", "read_file", json!({"path": "notes.txt"})),
            Step::text("alpha it is"),
        ],
    );

    let r = run(h.worker(&["--json", "json please"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    // events() panics on any line that is not an Event.
    assert_eq!(
        r.types(),
        [
            "started",
            "message",
            "usage",
            "message",
            "tool_call",
            "tool_result",
            "message",
            "text",
            "text",
            "text",
            "usage",
            "message",
            "result"
        ],
        "{}",
        r.dump()
    );
    assert!(matches!(r.last(), Event::Result { turns: 2, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_stream_runs_a_glob_tool_call_round_trip() {
    let h = Harness::start().await;
    h.write("workspace/src/lib.rs", "pub fn a() {}\n");
    h.write("workspace/src/main.rs", "fn main() {}\n");
    h.write("workspace/README.md", "readme\n");
    h.fake.script(
        "list rust files",
        vec![
            Step::ToolUse {
                text: Some("Looking.".into()),
                id: "call_1".into(),
                name: "glob".into(),
                input: json!({"pattern": "**/*.rs"}),
            },
            Step::text("Two Rust files."),
        ],
    );
    let config = h.openai_config();

    let mut cmd = h.worker(&[
        "--json",
        "--tier",
        "fast",
        "--config",
        config.to_str().expect("utf-8 path"),
        "list rust files",
    ]);
    cmd.env("OPENAI_API_KEY", OPENAI_KEY);
    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("list rust files");
    assert_eq!(requests.len(), 2, "{}", r.dump());
    assert!(requests.iter().all(|q| q.path == "/v1/chat/completions"));
    assert_eq!(requests[0].api_key.as_deref(), Some(OPENAI_KEY), "bearer");
    assert_eq!(requests[0].model, "local-model");
    assert_eq!(requests[0].tools, ["read_file", "glob", "grep", "bash"]);

    let messages = requests[1].body["messages"].as_array().expect("messages");
    let assistant = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the assistant turn is sent back");
    assert_eq!(assistant["tool_calls"][0]["id"], "call_1");
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "glob");
    let tool = messages
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert_eq!(tool["tool_call_id"], "call_1");
    assert_eq!(tool["content"], "src/lib.rs\nsrc/main.rs\n");

    assert!(r.events().contains(&Event::ToolCall {
        id: "call_1".into(),
        name: "glob".into(),
        input: json!({"pattern": "**/*.rs"}),
    }));
    assert_eq!(r.text(), "Looking.Two Rust files.");
    match r.last() {
        Event::Result {
            text,
            stop_reason,
            turns,
            ..
        } => {
            assert_eq!(text, "Two Rust files.");
            assert_eq!(stop_reason, "end_turn");
            assert_eq!(turns, 2);
        }
        other => panic!("not a result: {other:?}"),
    }
    // No price for local-model: the cost is unknown, not zero.
    assert!(r.events().iter().any(|e| matches!(
        e,
        Event::Usage(UsageReport {
            input_tokens: 1..,
            cost_usd: None,
            ..
        })
    )));
}
