//! bg-agents under the real opencode CLI (`opencode run`, installed from npm by the test
//! harness), a second agentic client beside Claude Code: its model reads only a tool
//! result's text, cut at 51,200 bytes. The provider double plays its model (on the
//! OpenAI-compatible API, recognised by the bg-agents tools it offers) and bg-agents'
//! agents (on the Anthropic API, by their task); what the double receives from opencode is
//! what its model would read.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::opencode::{OpencodeHome, TOOL_PREFIX, tool_messages};
use support::provider::{FakeProvider, RecordedRequest, Step, StepFn};

const RUN_WITHIN: Duration = Duration::from_secs(180);

fn tool(id: &str, name: &str, input: Value) -> Step {
    Step::ToolUse {
        text: None,
        id: id.to_string(),
        name: format!("{TOOL_PREFIX}{name}"),
        input,
    }
}

/// The text of the last tool message of a request: the last tool result opencode's model
/// read.
fn last_tool_text(r: &RecordedRequest) -> String {
    tool_messages(&r.body)
        .pop()
        .map(|(_, text)| text)
        .unwrap_or_default()
}

/// The agent id a spawn's text names (`Spawned a-xxxxx (...)`).
fn spawned_id(text: &str) -> Option<String> {
    text.split("Spawned ")
        .nth(1)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// A step that calls `tool` on the agent the last spawn result named.
fn on_spawned(id: &'static str, name: &'static str, input: Value) -> Step {
    Step::FromRequest(StepFn(Arc::new(move |r: &RecordedRequest| {
        let results = tool_messages(&r.body);
        let agent = results
            .iter()
            .find_map(|(_, text)| spawned_id(text))
            .unwrap_or_else(|| "no-spawn-result".into());
        let mut input = input.clone();
        if let Some(o) = input.as_object_mut() {
            if o.contains_key("agent_ids") {
                o.insert("agent_ids".into(), json!([agent]));
            } else {
                o.insert("agent_id".into(), json!(agent));
            }
        }
        tool(id, name, input)
    })))
}

/// A readable account of opencode's requests, for failure messages.
fn transcript(requests: &[RecordedRequest], out: &std::process::Output) -> String {
    let mut s = String::new();
    for (i, r) in requests.iter().enumerate() {
        s.push_str(&format!(
            "request {i}: tools {:?}\n  last tool result: {:.600}\n",
            r.tools,
            last_tool_text(r)
        ));
    }
    format!(
        "{s}\nstdout:\n{:.4000}\nstderr:\n{:.4000}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_spawns_waits_and_reads_the_answer_and_the_paging_line() {
    let fake = FakeProvider::start().await;
    // The agent: a long answer, so its output is longer than opencode keeps of a text.
    let answer = format!("It is 8080.\n{}", "port table row\n".repeat(5_000));
    fake.script(
        "Find the port the service uses",
        vec![Step::Text {
            chunks: vec![answer.clone()],
            delay_ms: 0,
        }],
    );
    // opencode's model: spawn, wait, read the output with a large page, answer.
    fake.script_offering(
        &format!("{TOOL_PREFIX}agent_spawn"),
        vec![
            tool(
                "call_1",
                "agent_spawn",
                json!({"task": "Find the port the service uses", "label": "port"}),
            ),
            on_spawned(
                "call_2",
                "agent_wait",
                json!({"agent_ids": [], "wait_seconds": 30}),
            ),
            on_spawned(
                "call_3",
                "agent_output",
                json!({"agent_id": "", "max_bytes": 100_000}),
            ),
            Step::text("The service uses port 8080."),
        ],
    );
    let home = OpencodeHome::new(&fake);

    let out = home
        .run(
            "Use a bg-agents background agent to find the service's port.",
            RUN_WITHIN,
        )
        .await;

    let requests = fake.requests_offering(&format!("{TOOL_PREFIX}agent_spawn"));
    let story = transcript(&requests, &out);
    assert!(out.status.success(), "opencode failed:\n{story}");
    assert_eq!(requests.len(), 4, "{story}");
    // All seven tools, under opencode's names.
    for t in [
        "agent_spawn",
        "agent_status",
        "agent_output",
        "agent_kill",
        "agent_list",
        "agent_wait",
        "agent_send",
    ] {
        assert!(
            requests[0]
                .tools
                .iter()
                .any(|n| n == &format!("{TOOL_PREFIX}{t}")),
            "{t} offered: {story}"
        );
    }
    let spawned = last_tool_text(&requests[1]);
    assert!(spawned.starts_with("Spawned a-"), "{story}");
    assert!(spawned.contains("label \"port\""), "{spawned}");
    let waited = last_tool_text(&requests[2]);
    assert!(waited.starts_with("Done: 1 ended"), "{waited:.500}");
    assert!(waited.contains("It is 8080."), "{waited:.500}");
    // The page opencode's model read: the paging line first, the text under its cut.
    let page = last_tool_text(&requests[3]);
    let first_line = page.lines().next().unwrap_or_default();
    assert!(first_line.starts_with("[agent a-"), "{page:.300}");
    assert!(first_line.contains("next_cursor "), "{first_line}");
    assert!(
        first_line.contains("call again with since="),
        "{first_line}"
    );
    assert!(page.len() < 51_200, "{} bytes", page.len());
    assert!(page.contains("It is 8080."), "{page:.300}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("The service uses port 8080."),
        "{story}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_model_reads_spawn_warnings_and_what_to_do_after_an_error() {
    let fake = FakeProvider::start().await;
    fake.script("Summarise the changelog", vec![Step::text("Nothing new.")]);
    fake.script_offering(
        &format!("{TOOL_PREFIX}agent_spawn"),
        vec![
            tool(
                "call_1",
                "agent_spawn",
                json!({"task": "Summarise the changelog", "model": "claude-unpriced-test"}),
            ),
            tool("call_2", "agent_status", json!({"agent_id": "a-nope1"})),
            on_spawned("call_3", "agent_kill", json!({"agent_id": ""})),
            Step::text("Done."),
        ],
    );
    let home = OpencodeHome::new(&fake);

    let out = home
        .run("Delegate the changelog summary.", RUN_WITHIN)
        .await;

    let requests = fake.requests_offering(&format!("{TOOL_PREFIX}agent_spawn"));
    let story = transcript(&requests, &out);
    assert!(out.status.success(), "opencode failed:\n{story}");
    assert_eq!(requests.len(), 4, "{story}");
    // The warning that used to be only in structuredContent.
    let spawned = last_tool_text(&requests[1]);
    assert!(
        spawned.contains("\nWarning: model `claude-unpriced-test` has no price"),
        "{spawned}"
    );
    assert!(
        spawned.contains("budget_usd ($1) cannot be enforced"),
        "{spawned}"
    );
    // A caller's mistake reaches the model as text that says what to do instead.
    let error = last_tool_text(&requests[2]);
    assert!(error.contains("unknown agent `a-nope1`"), "{error}");
    assert!(error.contains("agent_list"), "{error}");
    // Killing an agent that already ended reports it, whatever it ended as.
    let killed = last_tool_text(&requests[3]);
    assert!(killed.starts_with("a-"), "{killed}");
    assert!(killed.contains("Task: Summarise the changelog"), "{killed}");
}
