//! The MCP tasks extension: agent_spawn as a task for clients that declare it.

use std::time::Duration;

use rmcp::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ClientConfig, DetailedTask, GetTaskParams, Implementation, TaskPayload,
};
use serde_json::json;
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

async fn spawn_task(s: &Session<TasksClient>, task: &str) -> String {
    let Some(serde_json::Value::Object(args)) = Some(json!({ "task": task })) else {
        unreachable!()
    };
    match s
        .client
        .call_tool_once(CallToolRequestParams::new("agent_spawn").with_arguments(args))
        .await
        .unwrap()
    {
        CallToolResponse::Task(t) => t.task.task_id.clone(),
        other => panic!("expected a task, got {other:?}"),
    }
}

async fn until_terminal(s: &Session<TasksClient>, task_id: &str) -> DetailedTask {
    for _ in 0..600 {
        let info = s
            .client
            .peer()
            .get_task(GetTaskParams::new(task_id.to_string()))
            .await
            .unwrap();
        if info.task.status().is_terminal() {
            return info.task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {task_id} never ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_as_task_completes_with_the_agents_result() {
    let s = Session::start_with(TasksClient, "").await;
    let task_id = spawn_task(&s, "Report the answer as a task").await;
    let task = until_terminal(&s, &task_id).await;
    let TaskPayload::Completed { result } = task.payload else {
        panic!("expected a completed task, got {:?}", task.payload)
    };
    let result: CallToolResult = serde_json::from_value(serde_json::Value::Object(result)).unwrap();
    let v = result.structured_content.unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], "echo: Report the answer as a task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_task_kills_the_agent() {
    let s = Session::start_with(TasksClient, "").await;
    s.fake.script(
        "hang as a task",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    let task_id = spawn_task(&s, "hang as a task").await;
    let list = s.ok("agent_list", json!({})).await;
    let id = list["agents"][0]["agent_id"].as_str().unwrap().to_string();
    s.client
        .peer()
        .cancel_task(CancelTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let task = until_terminal(&s, &task_id).await;
    assert!(
        matches!(task.payload, TaskPayload::Cancelled),
        "{:?}",
        task.payload
    );
    let st = s.status(&id).await;
    assert_eq!(st["status"], "killed", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spawn_is_still_a_tool_error_for_task_clients() {
    let s = Session::start_with(TasksClient, "").await;
    let Some(serde_json::Value::Object(args)) = Some(json!({ "task": "x", "tier": "turbo" }))
    else {
        unreachable!()
    };
    let r = s
        .client
        .call_tool_once(CallToolRequestParams::new("agent_spawn").with_arguments(args))
        .await
        .unwrap();
    let CallToolResponse::Complete(r) = r else {
        panic!("expected a plain result, got {r:?}")
    };
    assert_eq!(r.is_error, Some(true));
    assert!(support::mcp::text_of(&r).contains("use one of: fast, balanced, quality"));
}
