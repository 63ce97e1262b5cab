//! The MCP tasks extension: agent_spawn as a task for 2026-07-28 clients that declare
//! it (the task id is the agent id), a plain result for everyone else.

use std::time::Duration;

use rmcp::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ClientConfig, CreateTaskResult, DetailedTask, GetTaskParams, Implementation, TaskPayload,
};
use serde_json::{Value, json};
use support::mcp::Session;
use support::provider::Step;

#[derive(Clone, Default)]
struct TasksClient;

impl ClientHandler for TasksClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_tasks().build(),
            Implementation::from_build_env(),
        )
    }
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("arguments must be an object, not {other}"),
    }
}

async fn call_spawn(s: &Session<TasksClient>, spawn: Value) -> CallToolResponse {
    s.client
        .call_tool_once(CallToolRequestParams::new("agent_spawn").with_arguments(args(spawn)))
        .await
        .expect("agent_spawn at the protocol level")
}

async fn spawn_task(s: &Session<TasksClient>, task: &str) -> CreateTaskResult {
    match call_spawn(s, json!({ "task": task })).await {
        CallToolResponse::Task(t) => t,
        other => panic!("expected a task, got {other:?}"),
    }
}

async fn get_task(s: &Session<TasksClient>, task_id: &str) -> DetailedTask {
    s.client
        .peer()
        .get_task(GetTaskParams::new(task_id.to_string()))
        .await
        .unwrap_or_else(|e| panic!("tasks/get {task_id}: {e}"))
        .task
}

async fn until_terminal(s: &Session<TasksClient>, task_id: &str) -> DetailedTask {
    for _ in 0..1200 {
        let task = get_task(s, task_id).await;
        if task.task.status.is_terminal() {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {task_id} never ended")
}

fn completed_result(task: &DetailedTask) -> CallToolResult {
    let TaskPayload::Completed { result } = &task.payload else {
        panic!("expected a completed task, got {:?}", task.payload)
    };
    serde_json::from_value(Value::Object(result.clone())).expect("a CallToolResult")
}

fn failed_message(task: &DetailedTask) -> String {
    let TaskPayload::Failed { error } = &task.payload else {
        panic!("expected a failed task, got {:?}", task.payload)
    };
    error["message"].as_str().unwrap_or_default().to_string()
}

/// agent_spawn's outputSchema, as tools/list gives it.
async fn spawn_output_schema<H: ClientHandler>(s: &Session<H>) -> Value {
    let tools = s.client.list_all_tools().await.expect("tools/list");
    let spawn = tools
        .iter()
        .find(|t| t.name == "agent_spawn")
        .expect("agent_spawn is listed");
    Value::Object(
        spawn
            .output_schema
            .as_deref()
            .cloned()
            .expect("an outputSchema"),
    )
}

/// Checks `v` against the top level of `schema`: every required property present, each
/// property's declared type (string, or an enum of strings) held, no property the schema
/// forbids. Enough to catch a result shaped like another tool's.
fn assert_conforms(v: &Value, schema: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    for req in schema["required"].as_array().into_iter().flatten() {
        let key = req.as_str().unwrap();
        assert!(obj.contains_key(key), "required `{key}` missing: {v}");
    }
    let props = schema["properties"].as_object().expect("properties");
    for (key, value) in obj {
        let Some(prop) = props.get(key) else {
            assert_ne!(
                schema["additionalProperties"],
                json!(false),
                "`{key}` is not allowed: {v}"
            );
            continue;
        };
        if prop["type"] == "string" {
            assert!(value.is_string(), "`{key}` must be a string: {v}");
        }
        if let Some(allowed) = prop["enum"].as_array() {
            assert!(
                allowed.contains(value),
                "`{key}` = {value} not in {allowed:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_the_agent_its_id_reaches_the_model_and_its_result_fits_the_spawn_schema() {
    let s = Session::start_modern(TasksClient).await;
    let created = spawn_task(&s, "Report the answer as a task").await;
    let id = created.task.task_id.clone();
    assert!(id.starts_with("a-") && id.len() <= 128, "{id}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"][0]["agent_id"], id.as_str(), "{list}");

    // What Claude Code shows the model at once names the agent and how to address it.
    let meta = serde_json::to_value(created.meta.as_ref().expect("_meta")).unwrap();
    let told = meta["com.anthropic/agent-task"]["modelImmediateResponse"]
        .as_str()
        .unwrap_or_else(|| panic!("no modelImmediateResponse: {meta}"));
    assert!(told.contains(&format!("\"{id}\"")), "{told}");
    assert!(told.contains("stopped when this session ends"), "{told}");
    assert!(!told.contains("keeps running"), "{told}");

    // The task lives at least as long as the agent may run (900 s by default).
    let ttl = created.task.ttl_ms.expect("a ttlMs");
    assert!(ttl >= 900_000, "ttlMs {ttl}");

    let task = until_terminal(&s, &id).await;
    let status = task.task.status_message.clone().unwrap_or_default();
    assert!(status.starts_with("completed"), "statusMessage: {status}");
    let result = completed_result(&task);
    let v = result
        .structured_content
        .clone()
        .expect("structuredContent");
    assert_conforms(&v, &spawn_output_schema(&s).await);
    assert_eq!(v["agent_id"], id.as_str());
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], "echo: Report the answer as a task");
    assert!(
        support::mcp::text_of(&result).contains("completed"),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_client_gets_a_plain_result_even_when_it_declares_tasks() {
    let s = Session::start_with(TasksClient, "").await;
    let r = call_spawn(&s, json!({"task": "plain please"})).await;
    let CallToolResponse::Complete(r) = r else {
        panic!("a 2025-11-25 session got a task for a plain call: {r:?}")
    };
    let v = r.structured_content.expect("structuredContent");
    assert_conforms(&v, &spawn_output_schema(&s).await);
    assert!(
        v["agent_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("a-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_message_follows_the_agent_and_a_kill_fails_the_task_in_a_sentence() {
    let s = Session::start_modern(TasksClient).await;
    s.fake.script(
        "hang as a task",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    let id = spawn_task(&s, "hang as a task").await.task.task_id;
    let mut seen = String::new();
    for _ in 0..400 {
        let task = get_task(&s, &id).await;
        seen = task.task.status_message.clone().unwrap_or_default();
        if seen.starts_with("running, turn 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.starts_with("running, turn 1"), "statusMessage: {seen}");

    s.ok("agent_kill", json!({"agent_id": id})).await;
    let task = until_terminal(&s, &id).await;
    let status = task.task.status_message.clone().unwrap_or_default();
    assert!(status.starts_with("killed"), "statusMessage: {status}");
    let message = failed_message(&task);
    assert!(
        message.contains(&id) && message.contains("killed"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_task_kills_the_agent() {
    let s = Session::start_modern(TasksClient).await;
    s.fake.script(
        "hang as a task",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    let id = spawn_task(&s, "hang as a task").await.task.task_id;
    s.client
        .peer()
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .unwrap();
    let task = until_terminal(&s, &id).await;
    assert!(
        matches!(task.payload, TaskPayload::Cancelled),
        "{:?}",
        task.payload
    );
    let st = s.status(&id).await;
    assert_eq!(st["status"], "killed", "{st}");
    // An ended task cannot be cancelled again, and says so.
    let again = s
        .client
        .peer()
        .cancel_task(CancelTaskParams::new(id.clone()))
        .await
        .expect_err("cancelling an ended task is refused");
    assert!(
        again.to_string().contains("already ended (killed)"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spawn_is_still_a_tool_error_for_task_clients() {
    let s = Session::start_modern(TasksClient).await;
    let r = call_spawn(&s, json!({ "task": "x", "tier": "turbo" })).await;
    let CallToolResponse::Complete(r) = r else {
        panic!("expected a plain result, got {r:?}")
    };
    assert_eq!(r.is_error, Some(true));
    assert!(support::mcp::text_of(&r).contains("use one of: fast, balanced, quality"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_tells_the_first_end_once_and_later_rounds_come_as_notices() {
    let s = Session::start_modern(TasksClient).await;
    let id = spawn_task(&s, "first round").await.task.task_id;
    until_terminal(&s, &id).await;
    // A follow-up's end is not the task's: the next tool reply tells it, and only it
    // (notices come in order, so a notice of the first end would come before).
    s.ok(
        "agent_send",
        json!({"agent_id": id, "message": "second round"}),
    )
    .await;
    let mut notices = Value::Null;
    for _ in 0..400 {
        // Running agents only: a reply that shows the agent's end drops its notice.
        let list = s.ok("agent_list", json!({"status": "running"})).await;
        if let Some(n) = list.get("notices") {
            notices = n.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = notices.as_array().cloned().unwrap_or_default();
    assert_eq!(lines.len(), 1, "{notices}");
    let line = lines[0].as_str().unwrap_or_default();
    assert!(
        line.contains(&id) && line.contains("(round 2)"),
        "{notices}"
    );
    // The task still says how the first round ended.
    let task = get_task(&s, &id).await;
    let v = completed_result(&task).structured_content.unwrap();
    assert_eq!(v["result"], "echo: first round", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_read_with_agent_wait_is_not_repeated_in_full_by_the_task() {
    let s = Session::start_modern(TasksClient).await;
    let id = spawn_task(&s, "waited for").await.task.task_id;
    let waited = s.ok("agent_wait", json!({"agent_ids": [id]})).await;
    assert!(waited.to_string().contains("echo: waited for"), "{waited}");
    let task = until_terminal(&s, &id).await;
    let v = completed_result(&task).structured_content.unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v.get("result").is_none(), "told twice: {v}");
    assert!(
        v["note"].as_str().is_some_and(|n| n.contains("already")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_from_before_a_restart_get_a_terminal_status_at_once() {
    // The first server runs an agent to its end and exits.
    let first = Session::start_modern(TasksClient).await;
    let done = spawn_task(&first, "answered before the restart")
        .await
        .task
        .task_id;
    until_terminal(&first, &done).await;
    let sessions = first.dir.path().join("transcripts");
    let mut transcript = String::new();
    for _ in 0..400 {
        transcript = std::fs::read_dir(&sessions)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .find_map(|e| std::fs::read_to_string(e.path().join(format!("{done}.jsonl"))).ok())
            .unwrap_or_default();
        if transcript.contains(r#""type":"result""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(transcript.contains(r#""type":"result""#), "{transcript}");
    first.end().await;

    // A new server (of a `claude --continue`) finds the transcript in its directory.
    let s = Session::start_modern(TasksClient).await;
    let dir = s.dir.path().join("transcripts/session-1-1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{done}.jsonl")), transcript).unwrap();
    let task = get_task(&s, &done).await;
    let v = completed_result(&task).structured_content.unwrap();
    assert_eq!(v["result"], "echo: answered before the restart", "{v}");
    assert_conforms(&v, &spawn_output_schema(&s).await);

    // One it has no transcript of, or that is no agent id at all: failed, in a sentence.
    for unknown in ["a-zzzzz", "7d1f3c8e-0000-4000-8000-000000000000"] {
        let task = get_task(&s, unknown).await;
        let message = failed_message(&task);
        assert!(
            message.contains("was stopped when the bg-agents server that ran it exited"),
            "{message}"
        );
        assert!(!message.contains("keeps running"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_seen_only_in_agent_list_still_comes_with_its_answer() {
    let s = Session::start_modern(TasksClient).await;
    let id = spawn_task(&s, "listed only").await.task.task_id;
    let mut listed = Value::Null;
    for _ in 0..400 {
        listed = s.ok("agent_list", json!({})).await;
        if listed["agents"][0]["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed["agents"][0]["status"], "completed", "{listed}");
    // A list row has no answer: the task's result still carries it.
    let task = until_terminal(&s, &id).await;
    let v = completed_result(&task).structured_content.unwrap();
    assert_eq!(v["result"], "echo: listed only", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_polled_during_agent_wait_ends_without_a_second_copy_of_the_answer() {
    let s = Session::start_modern(TasksClient).await;
    s.fake.script(
        "polled during a wait",
        vec![Step::Text {
            chunks: vec!["slow ".into(), "answer".into()],
            delay_ms: 300,
        }],
    );
    let id = spawn_task(&s, "polled during a wait").await.task.task_id;
    // The client polls the task as often as it can while the model's agent_wait blocks.
    let wait = s.ok("agent_wait", json!({"agent_ids": [id], "wait_seconds": 30}));
    let poll = async {
        loop {
            let task = get_task(&s, &id).await;
            if task.task.status.is_terminal() {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (waited, task) = tokio::join!(wait, poll);
    assert!(waited.to_string().contains("slow answer"), "{waited}");
    let v = completed_result(&task).structured_content.unwrap();
    assert!(v.get("result").is_none(), "told twice: {v}");
}

/// A model with a built-in price, so the session's USD cap applies.
const PRICED_MODEL: &str = "claude-haiku-5-5";

fn task_of(r: CallToolResponse) -> String {
    match r {
        CallToolResponse::Task(t) => t.task.task_id,
        other => panic!("expected a task, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_queued_for_the_session_budget_says_why_in_its_status_and_runs_once_freed() {
    let s = Session::start_modern_with(TasksClient, "session_budget_usd = 0.01").await;
    s.fake.script(
        "Hold the budget",
        vec![Step::Hang {
            after_chunks: vec!["thinking about it ".repeat(20)],
        }],
    );
    s.fake
        .script("Answer after", vec![Step::text("Done after.")]);
    let holder = task_of(
        call_spawn(
            &s,
            json!({"task": "Hold the budget", "model": PRICED_MODEL, "limits": {"budget_usd": 0.01}}),
        )
        .await,
    );
    let waiter =
        task_of(call_spawn(&s, json!({"task": "Answer after", "model": PRICED_MODEL})).await);
    let task = get_task(&s, &waiter).await;
    assert!(!task.task.status.is_terminal(), "{task:?}");
    let message = task.task.status_message.clone().unwrap_or_default();
    assert!(
        message.starts_with("queued: ") && message.contains("session_budget_usd"),
        "the panel says why it waits: {message}"
    );

    s.ok("agent_kill", json!({"agent_id": holder, "grace_ms": 0}))
        .await;
    let held = until_terminal(&s, &holder).await;
    assert!(failed_message(&held).contains("killed"), "{held:?}");
    let task = until_terminal(&s, &waiter).await;
    let v = completed_result(&task)
        .structured_content
        .expect("structured result");
    assert_eq!(v["result"], "Done after.", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_by_a_spent_session_budget_fails_in_a_sentence_and_later_spawns_are_tool_errors()
 {
    let s = Session::start_modern_with(
        TasksClient,
        "session_budget_usd = 0.002\nmax_concurrent = 1",
    )
    .await;
    s.fake
        .script("Write it all", vec![Step::fills_max_tokens_over(1000)]);
    s.fake.script("Hang on", vec![Step::text("never asked")]);
    let writer =
        task_of(call_spawn(&s, json!({"task": "Write it all", "model": PRICED_MODEL})).await);
    let queued = task_of(call_spawn(&s, json!({"task": "Hang on", "model": PRICED_MODEL})).await);
    until_terminal(&s, &writer).await;
    let task = until_terminal(&s, &queued).await;
    let status = task.task.status_message.clone().unwrap_or_default();
    assert!(status.starts_with("killed"), "statusMessage: {status}");
    let message = failed_message(&task);
    assert!(
        message.contains(&queued) && message.contains("session budget"),
        "{message}"
    );
    assert_eq!(s.fake.request_count("Hang on"), 0);

    // Refused before an agent exists: a tool error, not a task.
    let r = call_spawn(&s, json!({"task": "One more", "model": PRICED_MODEL})).await;
    let CallToolResponse::Complete(r) = r else {
        panic!("expected a plain result, got {r:?}")
    };
    assert_eq!(r.is_error, Some(true));
    let text = support::mcp::text_of(&r);
    assert!(text.contains("the session budget is spent"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_follow_up_to_a_task_answers_in_its_reply_and_leaves_the_task_its_first_round()
{
    let s = Session::start_modern(TasksClient).await;
    let finding = json!({"findings": [{"file": "src/parse.rs", "line": 7, "severity": "high"}]});
    s.fake.script(
        "look at the parser as a task",
        vec![
            Step::text("The parser has one bug."),
            Step::text(&finding.to_string()),
        ],
    );
    let id = spawn_task(&s, "look at the parser as a task")
        .await
        .task
        .task_id;
    let first = until_terminal(&s, &id).await;
    let v = completed_result(&first)
        .structured_content
        .expect("structured result");
    assert_eq!(v["result"], "The parser has one bug.", "{v}");

    let answered = s
        .ok(
            "agent_send",
            json!({
                "agent_id": id,
                "message": "List it as findings.",
                "output_schema": support::schemas::findings_schema(),
                "wait_seconds": 30,
            }),
        )
        .await;
    assert_eq!(answered["status"], "completed", "{answered}");
    assert_eq!(answered["result_json"], finding, "{answered}");
    // The reply told the round's end: no notice repeats it, and the task keeps its round.
    let list = s.ok("agent_list", json!({})).await;
    assert!(list.get("notices").is_none(), "told twice: {list}");
    let task = get_task(&s, &id).await;
    let v = completed_result(&task)
        .structured_content
        .expect("structured result");
    assert_eq!(v["result"], "The parser has one bug.", "{v}");
    assert!(v.get("result_json").is_none(), "{v}");
}
