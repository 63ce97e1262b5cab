//! The MCP surface beyond plain tool calls: progress and cancellation of blocking calls,
//! resources and their update notifications, and what tools/list tells a client.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ClientHandler;
use rmcp::RoleClient;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientRequest, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ReadResourceRequestParams, Request, ResourceContents, ServerNotification,
    ServerResult, SubscribeRequestParams, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestHandle};
use serde_json::{Value, json};
use support::mcp::{LegacyClient, Session, text_of};
use support::process::eventually;
use support::provider::Step;

/// A client that records every progress notification it receives.
#[derive(Clone, Default)]
struct ProgressLog {
    seen: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ProgressLog {
    fn of(&self, token: &ProgressToken) -> Vec<ProgressNotificationParam> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|p| &p.progress_token == token)
            .cloned()
            .collect()
    }
}

impl ClientHandler for ProgressLog {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().push(params);
    }
}

/// Sends a tool call as a cancellable request (it carries a progress token).
async fn send_call<H: ClientHandler>(
    s: &Session<H>,
    tool: &str,
    args: Value,
) -> RequestHandle<RoleClient> {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let request = ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new(tool.to_string()).with_arguments(args),
    ));
    s.client
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .expect("send the request")
}

/// A session with one agent that hangs mid-answer.
async fn with_hanging_agent<H: ClientHandler>(handler: H) -> (Session<H>, String) {
    let s = Session::start_with(handler, "").await;
    s.fake.script(
        "hangs",
        vec![Step::Hang {
            after_chunks: vec!["partial\n".into()],
        }],
    );
    let id = s.spawn("hangs until killed").await;
    (s, id)
}

fn resource_text(contents: &[ResourceContents]) -> String {
    match contents {
        [ResourceContents::TextResourceContents { text, .. }] => text.clone(),
        other => panic!("expected one text content, got {other:?}"),
    }
}

/// agent_wait on a hanging agent for 2.5 s sends progress for the request's token.
async fn progress_arrives_during_a_wait(s: Session<ProgressLog>, log: ProgressLog) {
    s.fake.script(
        "hangs",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let id = s.spawn("hangs until killed").await;
    let handle = send_call(
        &s,
        "agent_wait",
        json!({ "agent_ids": [id], "wait_seconds": 2.5 }),
    )
    .await;
    let token = handle.progress_token.clone();
    let ServerResult::CallToolResult(result) = handle.await_response().await.expect("agent_wait")
    else {
        panic!("agent_wait did not return a tool result")
    };
    let v = result.structured_content.expect("structuredContent");
    assert_eq!(v["done"], false, "{v}");
    let progress = log.of(&token);
    assert!(
        !progress.is_empty(),
        "no progress notification during a 2.5 s wait"
    );
    assert!(
        progress.windows(2).all(|w| w[0].progress < w[1].progress),
        "{progress:?}"
    );
    assert_eq!(progress[0].total, Some(2.5));
    assert!(
        progress[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("waiting")),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_arrive_while_a_wait_blocks() {
    let log = ProgressLog::default();
    progress_arrives_during_a_wait(Session::start_with(log.clone(), "").await, log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_arrive_on_a_2026_07_28_session() {
    let log = ProgressLog::default();
    progress_arrives_during_a_wait(Session::start_modern(log.clone()).await, log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_blocking_wait_ends_the_wait_not_the_agent() {
    let log = ProgressLog::default();
    let (s, id) = with_hanging_agent(log.clone()).await;
    let handle = send_call(
        &s,
        "agent_status",
        json!({ "agent_id": id, "wait_seconds": 40 }),
    )
    .await;
    let token = handle.progress_token.clone();
    // The first progress notification shows the server is inside the wait.
    assert!(
        eventually(Duration::from_secs(10), || !log.of(&token).is_empty()).await,
        "no progress"
    );
    handle
        .cancel(Some("the caller moved on".into()))
        .await
        .expect("cancel");
    let at_cancel = log.of(&token).len();

    // Let time pass through another wait: the agent keeps running...
    let v = s
        .ok(
            "agent_wait",
            json!({ "agent_ids": [id], "wait_seconds": 3 }),
        )
        .await;
    assert_eq!(v["done"], false, "{v}");
    assert_eq!(s.status(&id).await["status"], "running");
    // ...and the cancelled wait sent no more progress (one may have been in flight).
    let after = log.of(&token).len();
    assert!(
        after <= at_cancel + 1,
        "the cancelled wait kept going: {at_cancel} then {after} notifications"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_templates_list_status_and_output() {
    let s = Session::start("").await;
    let templates = s
        .client
        .list_all_resource_templates()
        .await
        .expect("templates");
    let uris: BTreeSet<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(
        uris,
        BTreeSet::from(["agent://{id}/output", "agent://{id}/status"])
    );
    assert!(
        templates
            .iter()
            .all(|t| t.description.is_some() && t.mime_type.is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_output_resources_read_as_the_tools_do() {
    let s = Session::start("").await;
    let id = s.spawn("Be a resource").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let uri = format!("agent://{id}/status");
    let r = s
        .client
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .expect("read status");
    let v: Value = serde_json::from_str(&resource_text(&r.contents)).expect("status is JSON");
    assert_eq!(v["agent_id"], id.as_str());
    assert_eq!(v["status"], "completed");
    assert_eq!(v["result"], "echo: Be a resource");
    let r = s
        .client
        .read_resource(ReadResourceRequestParams::new(format!(
            "agent://{id}/output"
        )))
        .await
        .expect("read output");
    assert_eq!(resource_text(&r.contents), "echo: Be a resource");
    let listed = s.client.list_all_resources().await.expect("resources/list");
    let listed: BTreeSet<&str> = listed.iter().map(|r| r.uri.as_str()).collect();
    assert!(listed.contains(uri.as_str()), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_unknown_resource_is_an_error_that_says_why() {
    let s = Session::start("").await;
    let e = s
        .client
        .read_resource(ReadResourceRequestParams::new("agent://a-nope/status"))
        .await
        .expect_err("an unknown agent's resource");
    assert!(e.to_string().contains("unknown agent `a-nope`"), "{e}");
    let e = s
        .client
        .read_resource(ReadResourceRequestParams::new("agent://a-nope/everything"))
        .await
        .expect_err("an unknown kind of resource");
    assert!(e.to_string().contains("agent://{id}/status"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_subscribe_notifies_when_the_agent_ends() {
    let client = LegacyClient::default();
    let (s, id) = with_hanging_agent(client.clone()).await;
    let version = &s.client.peer_info().unwrap().protocol_version;
    assert_eq!(*version, ProtocolVersion::LATEST_WITH_INITIALIZE);
    let uri = format!("agent://{id}/status");
    #[allow(deprecated)]
    s.client
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .expect("resources/subscribe");
    assert!(
        client.updated().is_empty(),
        "nothing ended yet: {:?}",
        client.updated()
    );
    s.ok("agent_kill", json!({ "agent_id": id })).await;
    assert!(
        eventually(Duration::from_secs(10), || client.updated().contains(&uri)).await,
        "no update for {uri}: {:?}",
        client.updated()
    );
    assert!(
        !client.updated().contains(&format!("agent://{id}/output")),
        "not subscribed to output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notifies_when_the_agent_ends() {
    let s = Session::start_modern(()).await;
    assert_eq!(
        s.client.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2026_07_28
    );
    s.fake.script(
        "hangs",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let id = s.spawn("hangs until killed").await;
    let uri = format!("agent://{id}/status");
    let filter = SubscriptionFilter::builder()
        .resource_subscription(uri.clone())
        .build();
    let mut sub = s.client.listen(filter).await.expect("subscriptions/listen");
    s.ok("agent_kill", json!({ "agent_id": id })).await;
    let n = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("no notification within 10 s")
        .expect("subscription stream")
        .expect("a notification");
    let ServerNotification::ResourceUpdatedNotification(n) = n else {
        panic!("expected resources/updated, got {n:?}")
    };
    assert_eq!(n.params.uri, uri);
}

/// Spawns an agent that streams a line every 1.5 s for about 9 s.
async fn with_slow_writer<H: ClientHandler>(s: &Session<H>) -> String {
    s.fake.script(
        "writes slowly",
        vec![Step::Text {
            chunks: (1..=6).map(|i| format!("line {i}\n")).collect(),
            delay_ms: 1500,
        }],
    );
    s.spawn("writes slowly").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_subscribe_notifies_new_output_while_the_agent_runs() {
    let client = LegacyClient::default();
    let s = Session::start_with(client.clone(), "").await;
    let id = with_slow_writer(&s).await;
    let uri = format!("agent://{id}/output");
    #[allow(deprecated)]
    s.client
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .expect("resources/subscribe");
    assert!(
        eventually(Duration::from_secs(6), || client.updated().contains(&uri)).await,
        "no update for {uri}: {:?}",
        client.updated()
    );
    assert_eq!(
        s.status(&id).await["status"],
        "running",
        "notified only at the end"
    );
    let after_first = client.updated().len();
    let wait = s
        .ok(
            "agent_wait",
            json!({ "agent_ids": [id], "wait_seconds": 30 }),
        )
        .await;
    assert_eq!(wait["agents"][0]["status"], "completed", "{wait}");
    assert!(
        eventually(Duration::from_secs(5), || client.updated().len()
            > after_first)
        .await,
        "no update for the output of the rest of the run: {:?}",
        client.updated()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notifies_new_output_while_the_agent_runs() {
    let s = Session::start_modern(()).await;
    let id = with_slow_writer(&s).await;
    let uri = format!("agent://{id}/output");
    let filter = SubscriptionFilter::builder()
        .resource_subscription(uri.clone())
        .build();
    let mut sub = s.client.listen(filter).await.expect("subscriptions/listen");
    let n = tokio::time::timeout(Duration::from_secs(6), sub.next())
        .await
        .expect("no notification within 6 s")
        .expect("subscription stream")
        .expect("a notification");
    let ServerNotification::ResourceUpdatedNotification(n) = n else {
        panic!("expected resources/updated, got {n:?}")
    };
    assert_eq!(n.params.uri, uri);
    assert_eq!(
        s.status(&id).await["status"],
        "running",
        "notified only at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_describes_every_tool_for_a_model() {
    let s = Session::start("").await;
    let tools = s.client.list_all_tools().await.expect("tools/list");
    let names: BTreeSet<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "agent_kill",
            "agent_list",
            "agent_output",
            "agent_send",
            "agent_spawn",
            "agent_status",
            "agent_wait"
        ])
    );
    for t in &tools {
        let name = t.name.as_ref();
        assert!(
            t.description.as_deref().is_some_and(|d| d.len() > 80),
            "{name}: short description"
        );
        let props = t.input_schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no properties"));
        for (p, schema) in props {
            let d = schema["description"].as_str().unwrap_or("");
            assert!(d.len() > 10, "{name}.{p} has no description: {schema}");
        }
        assert!(t.output_schema.is_some(), "{name}: no output schema");
        let a = t
            .annotations
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no annotations"));
        let read_only = matches!(
            name,
            "agent_status" | "agent_output" | "agent_list" | "agent_wait"
        );
        assert_eq!(a.read_only_hint, Some(read_only), "{name}: readOnlyHint");
        assert_eq!(
            a.destructive_hint,
            Some(name == "agent_kill"),
            "{name}: destructiveHint"
        );
    }
    let prop = |tool: &str, p: &str| -> Value {
        let t = tools.iter().find(|t| t.name == tool).unwrap();
        t.input_schema["properties"][p].clone()
    };
    assert_eq!(
        prop("agent_spawn", "task_type")["enum"],
        json!(["exploration", "analysis", "reasoning", "critical"])
    );
    assert_eq!(
        prop("agent_spawn", "tier")["enum"],
        json!(["fast", "balanced", "quality"])
    );
    assert_eq!(prop("agent_wait", "mode")["enum"], json!(["any", "all"]));
    let statuses = prop("agent_list", "status")["enum"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The ten statuses; "no filter" is leaving it out (no null: portable schemas).
    assert_eq!(statuses.len(), 10, "{statuses:?}");
    assert!(!statuses.contains(&Value::Null), "{statuses:?}");
    let spawn = tools.iter().find(|t| t.name == "agent_spawn").unwrap();
    assert_eq!(spawn.input_schema["required"], json!(["task"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_tell_the_client_when_and_how_to_use_agents() {
    let s = Session::start("").await;
    let info = s.client.peer_info().expect("server info");
    let instructions = info.instructions.as_deref().unwrap_or("");
    for word in ["agent_spawn", "agent_wait", "agent_status", "result"] {
        assert!(
            instructions.contains(word),
            "instructions lack {word}: {instructions}"
        );
    }
    let r: CallToolResult = s.call("agent_list", json!({})).await;
    assert!(
        text_of(&r).contains("agent_spawn"),
        "an empty list says how to start"
    );
}
