//! The MCP server end to end: the real `bg-agents` binary behind rmcp's client, real
//! worker processes, the provider double.

mod support;

use serde_json::json;
use support::mcp::Session;
use support::provider::Step;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_then_wait_returns_the_agents_answer() {
    let s = Session::start("").await;
    let spawned = s
        .ok("agent_spawn", json!({ "task": "Say hello to the tests", "task_type": "exploration", "label": "hello" }))
        .await;
    assert_eq!(spawned["status"], "running");
    assert_eq!(spawned["tier"], "fast");
    assert_eq!(spawned["model"], "claude-haiku-5-5");
    assert_eq!(spawned["routed_by"], "task_type");
    assert_eq!(spawned["limits"]["max_turns"], 30);
    let id = spawned["agent_id"].as_str().unwrap().to_string();
    let waited = s.wait_all(&[id.clone()]).await;
    assert_eq!(waited["ended"], json!([id]));
    let st = s.status(&id).await;
    assert_eq!(st["status"], "completed", "{st}");
    assert_eq!(st["result"], "echo: Say hello to the tests");
    assert_eq!(st["exit"]["code"], 0);
    assert!(st["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(st["usage"]["cost_usd"].as_f64().unwrap() > 0.0);
    let req = &s.fake.requests()[0];
    assert_eq!(req.model, "claude-haiku-5-5");
    assert_eq!(req.api_key.as_deref(), Some(support::mcp::API_KEY));
    assert!(req.system.as_deref().unwrap_or("").contains("agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_waits_and_output_streams_text() {
    let s = Session::start("").await;
    s.fake.script(
        "slow poem",
        vec![Step::Text { chunks: vec!["line one\n".into(), "line two\n".into(), "line three\n".into()], delay_ms: 200 }],
    );
    let id = s.spawn("Write a slow poem").await;
    let st = s.ok("agent_status", json!({ "agent_id": id, "wait_seconds": 20 })).await;
    assert_eq!(st["status"], "completed");
    assert_eq!(st["result"], "line one\nline two\nline three\n");
    let out = s.ok("agent_output", json!({ "agent_id": id, "filter": "^line t" })).await;
    assert_eq!(out["text"], "line two\nline three\n");
    assert_eq!(out["matched_lines"], 2);
}
