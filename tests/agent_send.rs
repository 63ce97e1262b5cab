//! Follow-ups (`agent_send`): a completed agent continues its conversation in a new
//! round, its usage adds up against its limits, and every other case is refused with
//! what to do instead.

use serde_json::{Value, json};
use support::mcp::Session;
use support::provider::Step;

fn tool_use(id: &str, name: &str, input: Value) -> Step {
    Step::ToolUse {
        text: None,
        id: id.into(),
        name: name.into(),
        input,
    }
}

/// Every string in `v` (depth first).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The (role, block types) of each message the provider received in `request`.
fn shape(request: &Value) -> Vec<(String, Vec<String>)> {
    request["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let types = m["content"]
                .as_array()
                .expect("content blocks")
                .iter()
                .map(|b| b["type"].as_str().unwrap_or_default().to_string())
                .collect();
            (m["role"].as_str().unwrap_or_default().to_string(), types)
        })
        .collect()
}

fn msg(role: &str, types: &[&str]) -> (String, Vec<String>) {
    (
        role.to_string(),
        types.iter().map(|t| t.to_string()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_continues_the_whole_conversation_in_a_new_round() {
    let s = Session::start("").await;
    s.fake.script(
        "which port does the service use",
        vec![
            tool_use("toolu_1", "glob", json!({"pattern": "*"})),
            Step::text("It is 8080."),
            Step::text("Only in one place."),
        ],
    );
    let id = s.spawn("which port does the service use").await;
    let first = s
        .ok("agent_status", json!({"agent_id": id, "wait_seconds": 30}))
        .await;
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["result"], "It is 8080.");
    assert_eq!(first["turns"], 2);
    assert_eq!(first.get("rounds"), None, "one round says nothing: {first}");
    let tokens_1 = first["usage"]["input_tokens"].as_u64().expect("tokens");
    let cost_1 = first["usage"]["cost_usd"].as_f64().expect("cost");

    let answered = s
        .ok(
            "agent_send",
            json!({"agent_id": id, "message": "Is it set anywhere else?", "wait_seconds": 30}),
        )
        .await;
    assert_eq!(answered["status"], "completed", "{answered}");
    assert_eq!(answered["result"], "Only in one place.");
    assert_eq!(answered["rounds"], 2);
    assert_eq!(answered["turns"], 3, "turns add up over rounds");
    assert!(answered["usage"]["input_tokens"].as_u64().unwrap() > tokens_1);
    assert!(answered["usage"]["cost_usd"].as_f64().unwrap() > cost_1);

    let requests = s.fake.requests_for("which port does the service use");
    assert_eq!(requests.len(), 3);
    assert_eq!(
        shape(&requests[2].body),
        vec![
            msg("user", &["text"]),
            msg("assistant", &["tool_use"]),
            msg("user", &["tool_result"]),
            msg("assistant", &["text"]),
            msg("user", &["text"]),
        ],
        "the follow-up sees the whole earlier conversation"
    );
    assert_eq!(
        requests[2].body["messages"][3]["content"][0]["text"],
        "It is 8080."
    );
    assert_eq!(requests[2].last_user_text(), "Is it set anywhere else?");
    assert_eq!(requests[2].model, requests[0].model);
    assert_eq!(requests[2].system, requests[0].system);
    assert_eq!(requests[2].tools, requests[0].tools);

    // Both answers stay readable, in the output and in the transcript.
    let out = s.ok("agent_output", json!({"agent_id": id})).await;
    let text = out["text"].as_str().unwrap();
    let (a, b) = (
        text.find("It is 8080.").expect("first answer"),
        text.find("Only in one place.").expect("second answer"),
    );
    assert!(
        a < text
            .find("[round 2: follow-up] Is it set anywhere else?")
            .unwrap()
    );
    assert!(a < b, "{text}");
    let verbose = s
        .ok("agent_status", json!({"agent_id": id, "verbose": true}))
        .await;
    let mut all = Vec::new();
    strings(&verbose, &mut all);
    let path = all
        .into_iter()
        .find(|p| p.ends_with(&format!("{id}.jsonl")))
        .expect("the transcript path in verbose status");
    let transcript = std::fs::read_to_string(&path).expect("transcript");
    let results: Vec<Value> = transcript
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "result")
        .collect();
    assert_eq!(results.len(), 2, "{transcript}");
    assert_eq!(results[1]["text"], "Only in one place.");
    let messages = transcript
        .lines()
        .filter(|l| l.contains(r#""type":"message""#))
        .count();
    assert_eq!(messages, 6, "every message of both rounds: {transcript}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_rounds_and_can_be_raised_within_max() {
    let s = Session::start("").await;
    s.fake.script(
        "count the files",
        vec![
            tool_use("toolu_1", "glob", json!({"pattern": "*"})),
            Step::text("Two files."),
            tool_use("toolu_2", "glob", json!({"pattern": "*"})),
            Step::text("Still two."),
        ],
    );
    let id = s
        .spawn_with(json!({"task": "count the files", "limits": {"max_turns": 2}}))
        .await;
    let first = s
        .ok("agent_status", json!({"agent_id": id, "wait_seconds": 30}))
        .await;
    assert_eq!(first["status"], "completed", "{first}");

    let spent = s
        .tool_error(
            "agent_send",
            json!({"agent_id": id, "message": "And hidden ones?"}),
        )
        .await;
    assert!(
        spent.contains("max_turns") && spent.contains("limits.max_turns"),
        "{spent}"
    );
    assert_eq!(
        s.status(&id).await["status"],
        "completed",
        "nothing changed"
    );

    let above = s
        .tool_error(
            "agent_send",
            json!({"agent_id": id, "message": "x", "limits": {"max_turns": 100000}}),
        )
        .await;
    assert!(above.contains("max_turns"), "{above}");

    let next = s
        .ok(
            "agent_send",
            json!({"agent_id": id, "message": "And hidden ones?", "limits": {"max_turns": 4}, "wait_seconds": 30}),
        )
        .await;
    assert_eq!(next["status"], "completed", "{next}");
    assert_eq!(next["result"], "Still two.");
    assert_eq!(next["turns"], 4);
    assert_eq!(s.fake.request_count("count the files"), 4);

    // All four turns are spent: a third round needs more.
    let again = s
        .tool_error("agent_send", json!({"agent_id": id, "message": "More?"}))
        .await;
    assert!(again.contains("used 4 of its max_turns (4)"), "{again}");
    let wait = s
        .tool_error(
            "agent_send",
            json!({"agent_id": id, "message": "More?", "limits": {"max_turns": 5}, "wait_seconds": -1}),
        )
        .await;
    assert!(wait.contains("wait"), "{wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_follow_up_says_why_and_what_to_do() {
    let s = Session::start_server("max_concurrent = 1").await;
    let unknown = s
        .tool_error(
            "agent_send",
            json!({"agent_id": "a-zzzzz", "message": "hi"}),
        )
        .await;
    assert!(unknown.contains("unknown agent"), "{unknown}");

    // A budget_exceeded agent stopped mid-task.
    let endless = (0..5)
        .map(|i| tool_use(&format!("toolu_{i}"), "glob", json!({"pattern": "*"})))
        .collect();
    s.fake.script("loop on globs", endless);
    let spent = s
        .spawn_with(json!({"task": "loop on globs", "limits": {"max_turns": 1}}))
        .await;
    let st = s
        .ok(
            "agent_status",
            json!({"agent_id": spent, "wait_seconds": 30}),
        )
        .await;
    assert_eq!(st["status"], "budget_exceeded", "{st}");
    let e = s
        .tool_error("agent_send", json!({"agent_id": spent, "message": "go on"}))
        .await;
    assert!(
        e.contains("budget_exceeded") && e.contains("spawn a new agent with larger limits"),
        "{e}"
    );

    let empty = s
        .tool_error("agent_send", json!({"agent_id": spent, "message": "  "}))
        .await;
    assert!(empty.contains("message is empty"), "{empty}");

    // A running agent (slow), and a queued one behind it (max_concurrent = 1).
    s.fake.script(
        "slow answer",
        vec![Step::Text {
            chunks: (0..40).map(|i| format!("part {i}\n")).collect(),
            delay_ms: 100,
        }],
    );
    let running = s.spawn("slow answer").await;
    let queued = s.spawn("queued question").await;
    assert_eq!(s.status(&queued).await["status"], "queued");
    let appended = s
        .ok(
            "agent_send",
            json!({"agent_id": queued, "message": "and also this"}),
        )
        .await;
    assert_eq!(appended["status"], "queued", "{appended}");

    let killed = s
        .ok("agent_kill", json!({"agent_id": running, "grace_ms": 0}))
        .await;
    assert_eq!(killed["status"], "killed");
    let e = s
        .tool_error(
            "agent_send",
            json!({"agent_id": running, "message": "again"}),
        )
        .await;
    assert!(
        e.contains("is killed") && e.contains("spawn a new agent"),
        "{e}"
    );

    let st = s
        .ok(
            "agent_status",
            json!({"agent_id": queued, "wait_seconds": 30}),
        )
        .await;
    assert_eq!(st["status"], "completed", "{st}");
    let req = s
        .fake
        .requests_for("queued question")
        .pop()
        .expect("the queued agent ran");
    assert_eq!(
        req.first_user_text(),
        "queued question\n\nand also this",
        "the message was appended to its task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_running_agent_arrives_at_its_next_turn() {
    let s = Session::start("").await;
    s.fake.script(
        "survey the modules",
        vec![
            Step::Text {
                chunks: (0..30).map(|i| format!("module {i}\n")).collect(),
                delay_ms: 100,
            },
            Step::text("Checked X too."),
        ],
    );
    let id = s.spawn("survey the modules").await;
    let out = s
        .ok(
            "agent_output",
            json!({"agent_id": id, "wait_seconds": 20, "filter": "module"}),
        )
        .await;
    assert!(out["text"].as_str().is_some_and(|t| t.contains("module")));
    let sent = s
        .ok(
            "agent_send",
            json!({"agent_id": id, "message": "also check X"}),
        )
        .await;
    assert_eq!(sent["status"], "running", "{sent}");
    assert_eq!(sent["messages_pending"], 1, "{sent}");

    let done = s
        .ok("agent_status", json!({"agent_id": id, "wait_seconds": 30}))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "Checked X too.");
    assert_eq!(done.get("messages_pending"), None, "delivered: {done}");
    assert_eq!(done.get("rounds"), None, "the same round: {done}");
    // Marked in the output as a follow-up to a completed agent is, between the answers.
    let out = s.ok("agent_output", json!({"agent_id": id})).await;
    let text = out["text"].as_str().unwrap_or_default();
    let marker = text
        .find("\n[round 1: follow-up] also check X\n")
        .unwrap_or_else(|| panic!("no follow-up marker: {text}"));
    assert!(text.find("module 29").is_some_and(|m| m < marker), "{text}");
    assert!(
        text.find("Checked X too.").is_some_and(|a| a > marker),
        "{text}"
    );
    let requests = s.fake.requests_for("survey the modules");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].last_user_text(), "also check X");
    assert_eq!(
        shape(&requests[1].body),
        vec![
            msg("user", &["text"]),
            msg("assistant", &["text"]),
            msg("user", &["text"]),
        ]
    );
}

/// An agent that keeps the only run slot until it is killed.
async fn hold_the_slot(s: &Session) -> String {
    s.fake.script(
        "Hold the slot",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    let id = s.spawn("Hold the slot").await;
    assert_eq!(s.status(&id).await["status"], "running");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_round_cancelled_before_it_starts_leaves_the_agent_completed() {
    let s = Session::start_server("max_concurrent = 1").await;
    s.fake.script(
        "Name the owner",
        vec![Step::text("It is Ada."), Step::text("Still Ada.")],
    );
    let id = s.spawn("Name the owner").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let holder = hold_the_slot(&s).await;

    let sent = s
        .ok("agent_send", json!({"agent_id": id, "message": "Sure?"}))
        .await;
    assert_eq!(sent["status"], "queued", "{sent}");
    let cancelled = s
        .ok("agent_kill", json!({"agent_id": id, "grace_ms": 0}))
        .await;
    assert_eq!(cancelled["status"], "completed", "{cancelled}");
    assert_eq!(cancelled["result"], "It is Ada.", "{cancelled}");
    assert_eq!(cancelled.get("rounds"), None, "{cancelled}");

    s.ok("agent_kill", json!({"agent_id": holder, "grace_ms": 0}))
        .await;
    let again = s
        .ok(
            "agent_send",
            json!({"agent_id": id, "message": "Sure?", "wait_seconds": 30}),
        )
        .await;
    assert_eq!(again["status"], "completed", "{again}");
    assert_eq!(again["result"], "Still Ada.", "{again}");
    assert_eq!(s.fake.request_count("Name the owner"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_round_obeys_max_queued_and_a_running_agent_refuses_new_limits() {
    let s = Session::start_server("max_concurrent = 1\nmax_queued = 1").await;
    s.fake.script("Count the files", vec![Step::text("Three.")]);
    let id = s.spawn("Count the files").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let holder = hold_the_slot(&s).await;
    let queued = s.spawn("Wait in line").await;
    assert_eq!(s.status(&queued).await["status"], "queued");

    let e = s
        .tool_error(
            "agent_send",
            json!({"agent_id": id, "message": "And dirs?"}),
        )
        .await;
    assert!(
        e.contains("the queue is full") && e.contains("max_queued = 1"),
        "{e}"
    );
    let st = s.status(&id).await;
    assert_eq!(st["status"], "completed", "nothing changed: {st}");
    assert_eq!(st["result"], "Three.");

    let e = s
        .tool_error(
            "agent_send",
            json!({"agent_id": holder, "message": "Hurry", "limits": {"max_turns": 3}}),
        )
        .await;
    assert!(e.contains("limits cannot change now"), "{e}");
    let st = s.status(&holder).await;
    assert_eq!(st.get("messages_pending"), None, "nothing was sent: {st}");
    s.ok("agent_kill", json!({"agent_id": holder, "grace_ms": 0}))
        .await;
}
