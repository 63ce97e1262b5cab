//! Agents that run commands, through the MCP server: `agent_kill` during a command ends
//! the command and everything it started, not only the worker.

use serde_json::json;
use support::mcp::Session;
use support::process::{all_gone, command_group, eventually, group_members};
use support::provider::Step;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_during_a_command_kills_the_command_too() {
    let s = Session::start("").await;
    let task = "run a long command, then answer";
    s.fake.script(
        task,
        vec![
            Step::ToolUse {
                text: None,
                id: "toolu_0".into(),
                name: "bash".into(),
                input: json!({"command": "sleep 1000 & sleep 1000 & sleep 1000"}),
            },
            Step::text("done"),
        ],
    );
    let id = s.spawn_with(json!({"task": task, "role": "general"})).await;
    let pids = s.worker_pids(std::slice::from_ref(&id)).await;
    let group = command_group(pids[0], 3).await;

    let v = s.ok("agent_kill", json!({ "agent_id": id })).await;

    assert_eq!(v["status"], "killed", "{v}");
    assert!(all_gone(&pids).await, "worker {pids:?} still runs");
    let gone = eventually(std::time::Duration::from_secs(5), || {
        group_members(group).is_empty()
    })
    .await;
    assert!(
        gone,
        "the command's group {group} outlived agent_kill: {:?}",
        group_members(group)
    );
}
