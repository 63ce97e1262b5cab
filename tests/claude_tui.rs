//! bg-agents in interactive Claude Code (the TUI most people run), in a private tmux
//! server, typed into as a person would, with the provider double playing the model.
//!
//! Each way a user runs it: the plugin or a plain `claude mcp add`; MCP tasks on (the
//! TUI's default: agent_spawn is answered with a task) or off
//! (`CLAUDE_CODE_DISABLE_MCP_TASKS=1`); an agent that ends within the turn or after it;
//! a model that waits and one that works on. What the double receives is what the model
//! reads: the agent id at once, each end exactly once, no Stop-hook hold for a task.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::claude::{ClaudeHome, PLUGIN_TOOL_PREFIX, plugin_dir, requests_story, tool_results};
use support::process::{alive, eventually};
use support::provider::{FakeProvider, RecordedRequest, Step, StepFn};
use support::tui::{Tui, skip_onboarding};

/// How the tools of a plain `claude mcp add bg-agents` are named for the model.
const PLAIN_PREFIX: &str = "mcp__bg-agents__";
/// What the agent answers (streamed in two chunks, 1.5 s apart).
const ANSWER: &str = "The answer is 42.";
const SCREEN_WITHIN: Duration = Duration::from_secs(90);

fn tool_use(id: &str, name: &str, input: Value) -> Step {
    Step::ToolUse {
        text: None,
        id: id.to_string(),
        name: name.to_string(),
        input,
    }
}

fn load_tools(prefix: &str, tools: &[&str]) -> Step {
    let names: Vec<String> = tools.iter().map(|t| format!("{prefix}{t}")).collect();
    tool_use(
        "toolu_search",
        "ToolSearch",
        json!({"query": format!("select:{}", names.join(",")), "max_results": 5}),
    )
}

fn spawn(prefix: &str, task: &str) -> Step {
    tool_use(
        "toolu_spawn",
        &format!("{prefix}agent_spawn"),
        json!({"task": task, "label": "tui"}),
    )
}

fn bash(id: &str, command: &str) -> Step {
    tool_use(
        id,
        "Bash",
        json!({"command": command, "description": "Run a shell command"}),
    )
}

/// A fake provider whose agent answers `ANSWER` slowly for tasks containing `tag`.
async fn provider_with_agent(tag: &str) -> FakeProvider {
    let fake = FakeProvider::start().await;
    fake.script(
        tag,
        vec![Step::Text {
            chunks: vec!["The answer ".into(), "is 42.".into()],
            delay_ms: 1500,
        }],
    );
    fake
}

fn result_of(request: &RecordedRequest, tool_use_id: &str) -> String {
    tool_results(&request.body)
        .into_iter()
        .find(|(id, _)| id == tool_use_id)
        .map(|(_, text)| text)
        .unwrap_or_else(|| panic!("no result of {tool_use_id} in the request"))
}

/// The agent id the model read in the spawn's result: the JSON's `agent_id`, or the
/// `agent_id "a-…"` of the server's note when Claude Code ran the spawn as a task.
fn agent_id_seen(spawn_result: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(spawn_result) {
        return v["agent_id"].as_str().map(str::to_string);
    }
    let (_, rest) = spawn_result.split_once("agent_id \"")?;
    rest.split_once('"').map(|(id, _)| id.to_string())
}

/// agent_wait on the agent whose id the model read from `toolu_spawn`.
fn wait_for_spawned(prefix: &'static str) -> Step {
    Step::FromRequest(StepFn(Arc::new(move |request: &RecordedRequest| {
        let spawned = tool_results(&request.body)
            .into_iter()
            .find(|(id, _)| id == "toolu_spawn")
            .map(|(_, text)| text)
            .unwrap_or_default();
        let id = agent_id_seen(&spawned).unwrap_or_default();
        tool_use(
            "toolu_wait",
            &format!("{prefix}agent_wait"),
            json!({"agent_ids": [id], "wait_seconds": 30}),
        )
    })))
}

/// What every run must show: no error on the screen, and no turn held by the Stop hook.
fn assert_clean(screen: &str, main: &[RecordedRequest]) {
    let lower = screen.to_lowercase();
    for bad in ["error", "failed", "reported a problem", "expired"] {
        assert!(!lower.contains(bad), "the screen shows {bad:?}:\n{screen}");
    }
    for r in main {
        let text = r.body["messages"].to_string();
        assert!(
            !text.contains("before you finish"),
            "a turn was held by the Stop hook:\n{}",
            requests_story(main)
        );
    }
}

/// Ends the TUI and checks that its `claude` is gone.
fn close(tui: Tui) {
    let probe = tui.probe();
    drop(tui);
    assert!(!probe.running(), "claude outlived its tmux server");
}

/// `claude mcp add bg-agents -- bg-agents`, as the README's plain registration does.
async fn plain_registration(home: &ClaudeHome, fake: &FakeProvider) {
    home.run(
        fake,
        &[
            "mcp",
            "add",
            "bg-agents",
            "--scope",
            "user",
            "--",
            "bg-agents",
        ],
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_with_tasks_an_agent_ending_after_the_turn_is_told_once_by_its_task() {
    let fake = provider_with_agent("TUI-ONE").await;
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools(PLUGIN_TOOL_PREFIX, &["agent_spawn"]),
            spawn(PLUGIN_TOOL_PREFIX, "TUI-ONE: what is the answer?"),
            Step::text("Started it; I will report when it ends."),
            // The task's notification wakes the idle session.
            Step::text("The agent says 42."),
        ],
    );
    let home = ClaudeHome::new("");
    skip_onboarding(&home, &["mcp__plugin_bg-agents_bg-agents"]);
    let plugin = plugin_dir();
    let tui = Tui::start(
        &home,
        &fake,
        &["--plugin-dir", plugin.to_str().unwrap()],
        &[],
    )
    .await;
    tui.type_line("Spawn an agent and tell me what it says.")
        .await;
    let screen = tui.wait_for("The agent says 42.", SCREEN_WITHIN).await;
    let main = fake.requests_offering("ToolSearch");
    let told = requests_story(&main);
    assert_eq!(main.len(), 4, "no Stop-hook hold, one wake-up:\n{told}");

    // The id reached the model with the spawn, as the task's id and the server's note.
    let spawned = result_of(&main[2], "toolu_spawn");
    let id = agent_id_seen(&spawned).unwrap_or_else(|| panic!("no agent id: {spawned}"));
    assert!(
        spawned.contains(&format!("server-side task {id}")),
        "{spawned}"
    );
    assert!(!spawned.contains("keeps running"), "{spawned}");

    // The end came once, in the task notification, and no hook told it again.
    let last = &main[3];
    assert!(
        last.last_user_text().contains("<task-notification>"),
        "{told}"
    );
    let messages = last.body["messages"].to_string();
    assert_eq!(messages.matches(ANSWER).count(), 1, "{told}");
    assert!(
        !messages.contains(&format!("{id} (tui) completed")),
        "a notice too:\n{told}"
    );
    assert!(screen.contains(&format!("MCP task {id}")), "{screen}");
    assert_clean(&screen, &main);
    close(tui);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_registration_without_tasks_a_model_that_waits_reads_the_end_once() {
    let fake = provider_with_agent("TUI-TWO").await;
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools(PLAIN_PREFIX, &["agent_spawn", "agent_wait"]),
            spawn(PLAIN_PREFIX, "TUI-TWO: what is the answer?"),
            wait_for_spawned(PLAIN_PREFIX),
            Step::text("The agent says 42."),
        ],
    );
    let home = ClaudeHome::new("");
    skip_onboarding(&home, &["mcp__bg-agents"]);
    plain_registration(&home, &fake).await;
    let tui = Tui::start(&home, &fake, &[], &[("CLAUDE_CODE_DISABLE_MCP_TASKS", "1")]).await;
    tui.type_line("Spawn an agent and wait for what it says.")
        .await;
    let screen = tui.wait_for("The agent says 42.", SCREEN_WITHIN).await;
    let main = fake.requests_offering("ToolSearch");
    let told = requests_story(&main);
    assert_eq!(main.len(), 4, "{told}");

    // Without tasks the spawn's own JSON reaches the model, with the id.
    let spawned = result_of(&main[2], "toolu_spawn");
    let id = agent_id_seen(&spawned).unwrap_or_else(|| panic!("no agent id: {spawned}"));
    let waited = result_of(&main[3], "toolu_wait");
    assert!(waited.contains(ANSWER) && waited.contains(&id), "{waited}");
    // The wait showed the end: no notice repeats it.
    let messages = main[3].body["messages"].to_string();
    assert_eq!(messages.matches(ANSWER).count(), 1, "{told}");
    assert!(!screen.contains("MCP task"), "{screen}");
    assert_clean(&screen, &main);
    close(tui);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_registration_with_tasks_a_model_that_works_on_is_told_once_and_its_replies_stay_quiet()
 {
    let fake = provider_with_agent("TUI-THREE").await;
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools(PLAIN_PREFIX, &["agent_spawn", "agent_list"]),
            spawn(PLAIN_PREFIX, "TUI-THREE: what is the answer?"),
            // Other work while the agent runs, long enough for it to end.
            bash("toolu_sleep", "sleep 4; echo slept"),
            tool_use(
                "toolu_list",
                &format!("{PLAIN_PREFIX}agent_list"),
                json!({"status": "running"}),
            ),
            Step::text("The agent says 42."),
        ],
    );
    let home = ClaudeHome::new("");
    skip_onboarding(&home, &["mcp__bg-agents", "Bash"]);
    plain_registration(&home, &fake).await;
    let tui = Tui::start(&home, &fake, &[], &[]).await;
    tui.type_line("Spawn an agent, keep working, and tell me what it says.")
        .await;
    let screen = tui.wait_for("The agent says 42.", SCREEN_WITHIN).await;
    let main = fake.requests_offering("ToolSearch");
    let told = requests_story(&main);

    let spawned = result_of(&main[2], "toolu_spawn");
    let id = agent_id_seen(&spawned).unwrap_or_else(|| panic!("no agent id: {spawned}"));
    assert!(
        spawned.contains(&format!("server-side task {id}")),
        "{spawned}"
    );
    // A bg-agents reply after the end does not tell it: the task does.
    let listed = result_of(&main[4], "toolu_list");
    assert!(
        !listed.contains("notices") && !listed.contains(ANSWER),
        "{listed}"
    );

    let last = main.last().expect("requests");
    let messages = last.body["messages"].to_string();
    assert_eq!(messages.matches(ANSWER).count(), 1, "{told}");
    assert!(messages.contains("<task-notification>"), "{told}");
    assert_clean(&screen, &main);
    close(tui);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_without_tasks_an_agent_ending_within_the_turn_is_told_once_by_the_hook() {
    let fake = provider_with_agent("TUI-FOUR").await;
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools(PLUGIN_TOOL_PREFIX, &["agent_spawn"]),
            spawn(PLUGIN_TOOL_PREFIX, "TUI-FOUR: what is the answer?"),
            // Returns once the agent's end was posted, so the hook after it tells it.
            bash(
                "toolu_sleep",
                "for i in $(seq 300); do ls \"$XDG_RUNTIME_DIR\"/bg-agents/*/*/n-* >/dev/null 2>&1 && break; sleep 0.1; done; echo done",
            ),
            Step::text("The agent says 42."),
        ],
    );
    let home = ClaudeHome::new("");
    skip_onboarding(&home, &["mcp__plugin_bg-agents_bg-agents", "Bash"]);
    let plugin = plugin_dir();
    let tui = Tui::start(
        &home,
        &fake,
        &["--plugin-dir", plugin.to_str().unwrap()],
        &[("CLAUDE_CODE_DISABLE_MCP_TASKS", "1")],
    )
    .await;
    tui.type_line("Spawn an agent, keep working, and tell me what it says.")
        .await;
    let screen = tui.wait_for("The agent says 42.", SCREEN_WITHIN).await;
    let main = fake.requests_offering("ToolSearch");
    let told = requests_story(&main);
    assert_eq!(main.len(), 4, "no Stop-hook hold:\n{told}");
    let spawned = result_of(&main[2], "toolu_spawn");
    let id = agent_id_seen(&spawned).unwrap_or_else(|| panic!("no agent id: {spawned}"));
    let messages = main[3].body["messages"].to_string();
    assert_eq!(
        messages.matches(&format!("{id} (tui) completed")).count(),
        1,
        "the hook tells the end once:\n{told}"
    );
    assert!(!screen.contains("MCP task"), "{screen}");
    assert_clean(&screen, &main);
    close(tui);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_exit_and_continue_the_stopped_agents_task_ends_at_once_as_failed() {
    let fake = FakeProvider::start().await;
    fake.script(
        "TUI-HANG",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools(PLAIN_PREFIX, &["agent_spawn"]),
            spawn(PLAIN_PREFIX, "TUI-HANG: take your time"),
            Step::text("Started it."),
            // After `claude --continue`: the re-adopted task's notification.
            Step::text("Noted the stopped agent."),
        ],
    );
    let home = ClaudeHome::new("");
    skip_onboarding(&home, &["mcp__bg-agents"]);
    plain_registration(&home, &fake).await;
    let tui = Tui::start(&home, &fake, &[], &[]).await;
    tui.type_line("Spawn an agent.").await;
    tui.wait_for("Started it.", SCREEN_WITHIN).await;
    tui.wait_for("1 MCP task", SCREEN_WITHIN).await;
    assert!(
        eventually(Duration::from_secs(30), || !tui.workers().is_empty()).await,
        "no worker process under claude"
    );
    let workers = tui.workers();
    tui.exit().await;
    // Whatever the task panel says, the agent stopped with the session.
    assert!(
        eventually(Duration::from_secs(30), || !workers
            .iter()
            .any(|&p| alive(p)))
        .await,
        "a worker outlived its session: {workers:?}"
    );

    // The new session's server did not run the agent: the task ends at once, failed,
    // instead of being polled as "running" for minutes.
    let tui = Tui::start(&home, &fake, &["--continue"], &[]).await;
    let screen = tui
        .wait_for("Noted the stopped agent.", SCREEN_WITHIN)
        .await;
    let main = fake.requests_offering("ToolSearch");
    let told = requests_story(&main);
    assert_eq!(main.len(), 4, "{told}");
    let spawned = result_of(&main[2], "toolu_spawn");
    let id = agent_id_seen(&spawned).unwrap_or_else(|| panic!("no agent id: {spawned}"));
    let last = main[3].last_user_text();
    assert!(last.contains("<status>failed</status>"), "{told}");
    assert!(
        last.contains(&format!(
            "agent {id} was stopped when the bg-agents server that ran it exited"
        )),
        "{told}"
    );
    assert!(screen.contains(&format!("MCP task {id}")), "{screen}");
    assert!(!screen.contains("still running"), "{screen}");
    assert!(!screen.to_lowercase().contains("error"), "{screen}");
    close(tui);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_panel_shows_the_agents_progress_and_x_kills_it() {
    let fake = FakeProvider::start().await;
    fake.script(
        "TUI-PANEL",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    fake.script_offering(
        "ToolSearch",
        vec![
            load_tools(PLAIN_PREFIX, &["agent_spawn"]),
            spawn(PLAIN_PREFIX, "TUI-PANEL: take your time"),
            Step::text("Started it."),
        ],
    );
    let home = ClaudeHome::new("");
    skip_onboarding(&home, &["mcp__bg-agents"]);
    plain_registration(&home, &fake).await;
    let tui = Tui::start(&home, &fake, &[], &[]).await;
    tui.type_line("Spawn an agent.").await;
    tui.wait_for("Started it.", SCREEN_WITHIN).await;
    let main = fake.requests_offering("ToolSearch");
    let spawned = result_of(&main[2], "toolu_spawn");
    let id = agent_id_seen(&spawned).unwrap_or_else(|| panic!("no agent id: {spawned}"));
    assert!(
        eventually(Duration::from_secs(30), || !tui.workers().is_empty()).await,
        "no worker process under claude"
    );

    // The panel: the agent's own status line, and its id as the server's task.
    tui.wait_for("1 MCP task", SCREEN_WITHIN).await;
    tui.key("Down").await;
    tui.wait_for("enter to view tasks", SCREEN_WITHIN).await;
    tui.key("Enter").await;
    let panel = tui.wait_for("running, turn 1", SCREEN_WITHIN).await;
    assert!(panel.contains(&format!("Server task:  {id}")), "{panel}");

    // x stops it: tasks/cancel, and the worker process is gone.
    tui.key("x").await;
    tui.wait_for("No tasks currently running", SCREEN_WITHIN)
        .await;
    assert!(
        eventually(Duration::from_secs(30), || tui.workers().is_empty()).await,
        "the worker still runs after x: {:?}",
        tui.workers()
    );
    tui.key("Escape").await;
    close(tui);
}
