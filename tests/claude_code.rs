//! bg-agents under the real Claude Code CLI (`claude -p`, installed from npm by the test
//! harness), whose model is the provider double scripted to play it: the main loop is
//! recognised by the tools it offers (`ToolSearch`), the agents' own requests by their
//! task. What the double receives is what the model would read.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::claude::{
    ClaudeHome, PLUGIN_TOOL_PREFIX, finish, occurrences, plugin_dir, readme_claude_lines, repo_dir,
    requests_story, tool_results,
};
use support::process::API_KEY;
use support::provider::{FakeProvider, RecordedRequest, Step, StepFn};

const RUN_WITHIN: Duration = Duration::from_secs(120);
/// A shell command that waits until some notice file exists under $XDG_RUNTIME_DIR.
const NOTICE_POSTED: &str = "for i in $(seq 300); do ls \"$XDG_RUNTIME_DIR\"/bg-agents/*/*/n-* >/dev/null 2>&1 && break; sleep 0.1; done";

fn tool_use(id: &str, name: &str, input: Value) -> Step {
    Step::ToolUse {
        text: None,
        id: id.to_string(),
        name: name.to_string(),
        input,
    }
}

fn load_tools(id: &str, tools: &[&str]) -> Step {
    let names: Vec<String> = tools
        .iter()
        .map(|t| format!("{PLUGIN_TOOL_PREFIX}{t}"))
        .collect();
    tool_use(
        id,
        "ToolSearch",
        json!({"query": format!("select:{}", names.join(",")), "max_results": 5}),
    )
}

fn plugin_tool(id: &str, tool: &str, input: Value) -> Step {
    tool_use(id, &format!("{PLUGIN_TOOL_PREFIX}{tool}"), input)
}

fn bash(id: &str, command: &str) -> Step {
    tool_use(
        id,
        "Bash",
        json!({"command": command, "description": "Run a shell command"}),
    )
}

fn result_of(request: &RecordedRequest, tool_use_id: &str) -> Option<String> {
    tool_results(&request.body)
        .into_iter()
        .find(|(id, _)| id == tool_use_id)
        .map(|(_, text)| text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_tools_work_and_an_agent_end_reaches_the_model_once_after_an_unrelated_tool() {
    let fake = FakeProvider::start().await;
    fake.script(
        "SLOW-TASK-7",
        vec![Step::Text {
            chunks: vec!["The answer ".into(), "is 42.".into()],
            delay_ms: 800,
        }],
    );
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools("toolu_search", &["agent_spawn"]),
            plugin_tool(
                "toolu_spawn",
                "agent_spawn",
                json!({"task": "SLOW-TASK-7: what is the answer?", "label": "slow one"}),
            ),
            // An unrelated command that returns once the agent's end was posted (at most
            // 30 s), so the hook after it has something to tell.
            bash("toolu_sleep", NOTICE_POSTED),
            bash("toolu_echo", "echo unrelated"),
            Step::text("All done."),
        ],
    );
    let home = ClaudeHome::new("");
    let plugin = plugin_dir();
    let out = home
        .run(
            &fake,
            &[
                "-p",
                "Spawn an agent, then go on with other work.",
                "--plugin-dir",
                plugin.to_str().unwrap(),
                "--allowedTools",
                "Bash mcp__plugin_bg-agents_bg-agents",
            ],
            RUN_WITHIN,
        )
        .await;
    let main = fake.requests_offering("ToolSearch");
    let story = requests_story(&main);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("All done."),
        "{story}"
    );
    assert_eq!(
        main.len(),
        5,
        "five model turns, no Stop reminder:\n{story}"
    );

    // The plugin's tool was found, loaded and called; the model read its reply.
    let spawned = result_of(&main[2], "toolu_spawn").expect("the spawn's result");
    let spawn: Value = serde_json::from_str(&spawned)
        .unwrap_or_else(|e| panic!("the model reads structured JSON ({e}): {spawned}"));
    let id = spawn["agent_id"].as_str().expect("agent_id").to_string();
    eprintln!(
        "agent_spawn as the model receives it: {} chars",
        spawned.len()
    );
    // Issue 10's target for a spawn reply, as the model receives it through Claude Code.
    assert!(spawned.chars().count() <= 400, "{spawned}");
    assert!(spawned.starts_with(r#"{"agent_id":"#), "{spawned}");

    // The agent ended during that Bash call: the hook after it told the model.
    let notice = format!("{id} (slow one) completed: The answer is 42.");
    assert_eq!(
        occurrences(&main[2].body, &id),
        1,
        "only the spawn reply:\n{story}"
    );
    assert_eq!(
        occurrences(&main[3].body, &notice),
        1,
        "told once:\n{story}"
    );
    assert!(
        occurrences(&main[3].body, "agent_status") >= 1,
        "how to read the whole:\n{story}"
    );
    // ... and never again (the earlier copy stays in the history, no new one).
    assert_eq!(occurrences(&main[4].body, &notice), 1, "{story}");
    assert_eq!(fake.request_count("SLOW-TASK-7"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_hook_holds_the_turn_once_while_an_agent_runs() {
    let fake = FakeProvider::start().await;
    fake.script(
        "SLOW-TASK-8",
        vec![Step::Text {
            chunks: vec!["Eight ".into(), "is the answer.".into()],
            delay_ms: 2000,
        }],
    );
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools("toolu_search", &["agent_spawn", "agent_wait"]),
            plugin_tool(
                "toolu_spawn",
                "agent_spawn",
                json!({"task": "SLOW-TASK-8: what is the answer?", "label": "slow two"}),
            ),
            Step::text("I started an agent; it will report later."),
            // Held by the Stop hook: the model collects the result.
            tool_use_wait(),
            Step::text("The agent says eight."),
        ],
    );
    let home = ClaudeHome::new("");
    let plugin = plugin_dir();
    home.run(
        &fake,
        &[
            "-p",
            "Start an agent and report.",
            "--plugin-dir",
            plugin.to_str().unwrap(),
            "--allowedTools",
            "mcp__plugin_bg-agents_bg-agents",
        ],
        RUN_WITHIN,
    )
    .await;
    let main = fake.requests_offering("ToolSearch");
    let story = requests_story(&main);
    assert_eq!(main.len(), 5, "held once, then allowed to end:\n{story}");
    let spawned = result_of(&main[2], "toolu_spawn").expect("the spawn's result");
    let id = serde_json::from_str::<Value>(&spawned).expect("JSON")["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_string();
    let held = main[3].body["messages"].to_string();
    assert!(
        held.contains(&format!("{id} (slow two, running)")) && held.contains("agent_wait"),
        "the reminder names the agent and the call to make:\n{story}"
    );
    let waited = result_of(&main[4], "toolu_wait").expect("agent_wait's result");
    eprintln!(
        "agent_wait as the model receives it: {} chars",
        waited.len()
    );
    assert!(waited.contains("Eight is the answer."), "{waited}");
    // The wait showed the end itself: no separate notice of it.
    assert_eq!(
        occurrences(&main[4].body, &format!("{id} (slow two) completed")),
        0,
        "{story}"
    );
}

/// agent_wait for the agent whose id the model received from `toolu_spawn`.
fn tool_use_wait() -> Step {
    Step::FromRequest(StepFn(Arc::new(|request: &RecordedRequest| {
        let spawned = tool_results(&request.body)
            .into_iter()
            .find(|(id, _)| id == "toolu_spawn")
            .map(|(_, text)| text)
            .unwrap_or_default();
        let agent = serde_json::from_str::<Value>(&spawned).unwrap_or_default()["agent_id"].clone();
        plugin_tool(
            "toolu_wait",
            "agent_wait",
            json!({"agent_ids": [agent], "wait_seconds": 30}),
        )
    })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_set_up_lines_work_and_claude_mcp_list_connects_the_server() {
    let fake = FakeProvider::start().await;
    let home = ClaudeHome::new("");
    let lines = readme_claude_lines();
    assert!(
        lines.iter().any(|l| l.contains("claude plugin install"))
            && lines
                .iter()
                .filter(|l| l.starts_with("claude mcp add"))
                .count()
                == 2,
        "README.md must give the plugin install and the two registrations: {lines:?}"
    );
    let (plugin_lines, mcp_lines): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.starts_with("claude plugin"));
    // The plugin is installed from the checkout.
    for line in plugin_lines {
        finish(home.shell(&fake, line, &repo_dir()), line, RUN_WITHIN).await;
    }
    let listed = mcp_list(&home, &fake).await;
    assert!(
        connected(&listed, "plugin:bg-agents:bg-agents"),
        "the installed plugin's server connects:\n{listed}"
    );
    // The plain registrations, in a project.
    for line in mcp_lines {
        finish(home.shell(&fake, line, &home.project()), line, RUN_WITHIN).await;
    }
    let project_mcp =
        std::fs::read_to_string(home.project().join(".mcp.json")).expect("project .mcp.json");
    assert!(
        project_mcp.contains("${ANTHROPIC_API_KEY}") && !project_mcp.contains(API_KEY),
        "the committed file holds a reference, not the key: {project_mcp}"
    );
    let listed = mcp_list(&home, &fake).await;
    // Claude Code runs one server per name: the user-scope registration, which
    // suppresses the plugin's duplicate (the hooks serve either).
    assert!(
        connected(&listed, "bg-agents"),
        "the registered server connects:\n{listed}"
    );

    // The README's permission rule lets `claude -p` call the registered server's tools.
    fake.script_offering(
        "ToolSearch",
        vec![
            tool_use(
                "toolu_search",
                "ToolSearch",
                json!({"query": "select:mcp__bg-agents__agent_list", "max_results": 5}),
            ),
            tool_use("toolu_list", "mcp__bg-agents__agent_list", json!({})),
            Step::text("Listed."),
        ],
    );
    home.run(
        &fake,
        &["-p", "List the agents.", "--allowedTools", "mcp__bg-agents"],
        RUN_WITHIN,
    )
    .await;
    let main = fake.requests_offering("ToolSearch");
    let listed = main
        .last()
        .and_then(|r| result_of(r, "toolu_list"))
        .unwrap_or_else(|| panic!("agent_list's result:\n{}", requests_story(&main)));
    eprintln!("agent_list (no agents) as the model receives it: {listed}");
    let v: Value = serde_json::from_str(&listed).expect("the model reads the JSON");
    assert_eq!(v["agents"], json!([]), "{v}");
}

async fn mcp_list(home: &ClaudeHome, fake: &FakeProvider) -> String {
    let out = home.run(fake, &["mcp", "list"], RUN_WITHIN).await;
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("claude mcp list:\n{listed}");
    listed
}

/// Whether `claude mcp list` shows server `name` connected.
fn connected(listed: &str, name: &str) -> bool {
    listed
        .lines()
        .any(|l| l.starts_with(&format!("{name}: ")) && l.contains("Connected"))
}
