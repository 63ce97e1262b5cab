//! Caller mistakes: each is a tool error (`isError: true`) whose text says what to do
//! instead, and none of them changes any state.

use serde_json::{Value, json};
use support::mcp::Session;
use support::provider::Step;

/// Spawn arguments that must each be refused.
fn bad_spawns() -> Vec<Value> {
    vec![
        json!({ "task": "" }),
        json!({ "task": "   \n" }),
        json!({ "task": "x", "limits": { "memory_mb": 100_000 } }),
        json!({ "task": "x", "role": "wizard" }),
        json!({ "task": "x", "tier": "turbo" }),
        json!({ "task": "x", "task_type": "guessing" }),
        json!({ "task": "x", "model": " " }),
        json!({ "task": "x", "limits": { "budget_usd": 0 } }),
        json!({ "task": "x", "cwd": "/no/such/dir" }),
        json!({ "task": "x", "bogus": 1 }),
        json!({ "task": "x", "limits": { "memory_mb": -1 } }),
        json!({}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_id_says_to_spawn_when_there_are_no_agents() {
    let s = Session::start("").await;
    for (tool, args) in [
        ("agent_status", json!({ "agent_id": "a-zzzzz" })),
        ("agent_output", json!({ "agent_id": "a-zzzzz" })),
        ("agent_kill", json!({ "agent_id": "a-zzzzz" })),
        (
            "agent_wait",
            json!({ "agent_ids": ["a-zzzzz"], "wait_seconds": 5 }),
        ),
    ] {
        let e = s.tool_error(tool, args).await;
        assert!(e.contains("unknown agent `a-zzzzz`"), "{tool}: {e}");
        assert!(e.contains("agent_spawn"), "{tool}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_id_names_the_nearest_ids_and_agent_list() {
    let s = Session::start("").await;
    let id = s.spawn("Be found").await;
    let typo = format!("{}x", id);
    for (tool, args) in [
        (
            "agent_status",
            json!({ "agent_id": typo, "wait_seconds": 5 }),
        ),
        (
            "agent_output",
            json!({ "agent_id": typo, "wait_seconds": 5 }),
        ),
        ("agent_kill", json!({ "agent_id": typo })),
        (
            "agent_wait",
            json!({ "agent_ids": [id, typo], "wait_seconds": 5 }),
        ),
    ] {
        let e = s.tool_error(tool, args).await;
        assert!(
            e.contains(&format!("unknown agent `{typo}`")),
            "{tool}: {e}"
        );
        assert!(e.contains(&id), "{tool} should name the near id {id}: {e}");
        assert!(e.contains("agent_list"), "{tool}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_is_not_a_regex_quotes_the_regex_error() {
    let s = Session::start("").await;
    let id = s.spawn("Say something").await;
    let e = s
        .tool_error(
            "agent_output",
            json!({ "agent_id": id, "filter": "(unclosed" }),
        )
        .await;
    assert!(e.contains("`(unclosed`"), "{e}");
    assert!(
        e.contains("unclosed group"),
        "the regex crate's own message: {e}"
    );
    let e = s
        .tool_error(
            "agent_output",
            json!({ "agent_id": id, "filter": "a{99999}", "wait_seconds": 5 }),
        )
        .await;
    assert!(e.contains("a{99999}"), "{e}");
    let e = s
        .tool_error("agent_output", json!({ "agent_id": id, "filter": "" }))
        .await;
    assert!(e.contains("omit the filter"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_the_ceiling_name_the_ceiling() {
    let s = Session::start("").await;
    for (limits, key, ceiling) in [
        (json!({ "memory_mb": 100_000 }), "memory_mb", "8192"),
        (json!({ "max_turns": 1000 }), "max_turns", "200"),
        (json!({ "budget_usd": 100.0 }), "budget_usd", "25"),
        (
            json!({ "timeout_seconds": 86_400 }),
            "timeout_seconds",
            "7200",
        ),
    ] {
        let e = s
            .tool_error("agent_spawn", json!({ "task": "x", "limits": limits }))
            .await;
        assert!(e.contains(key) && e.contains(ceiling), "{limits}: {e}");
        assert!(e.contains("at most"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_role_tier_task_type_or_empty_model_lists_the_valid_ones() {
    let s = Session::start("").await;
    let e = s
        .tool_error("agent_spawn", json!({ "task": "x", "role": "wizard" }))
        .await;
    for role in ["general", "explorer", "analyst", "reviewer", "architect"] {
        assert!(e.contains(role), "{e}");
    }
    let e = s
        .tool_error("agent_spawn", json!({ "task": "x", "tier": "turbo" }))
        .await;
    assert!(
        e.contains("`turbo`") && e.contains("fast, balanced, quality"),
        "{e}"
    );
    let e = s
        .tool_error(
            "agent_spawn",
            json!({ "task": "x", "task_type": "guessing" }),
        )
        .await;
    assert!(
        e.contains("exploration, analysis, reasoning, critical"),
        "{e}"
    );
    let e = s
        .tool_error("agent_spawn", json!({ "task": "x", "model": " " }))
        .await;
    assert!(
        e.contains("model is empty") && e.contains("haiku, opus, sonnet"),
        "{e}"
    );
    let e = s
        .tool_error("agent_list", json!({ "role": "wizard" }))
        .await;
    assert!(e.contains("explorer"), "{e}");
    let e = s
        .tool_error("agent_list", json!({ "status": "done" }))
        .await;
    assert!(
        e.contains("completed") && e.contains("budget_exceeded"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_task_is_refused() {
    let s = Session::start("").await;
    for task in ["", "  \n\t"] {
        let e = s.tool_error("agent_spawn", json!({ "task": task })).await;
        assert!(e.contains("task is empty"), "{e}");
    }
    let e = s
        .tool_error("agent_spawn", json!({ "role": "general" }))
        .await;
    assert!(e.contains("task"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mode_wait_seconds_max_bytes_and_grace_say_the_valid_range() {
    let s = Session::start("").await;
    let id = s.spawn("Be there").await;
    let e = s
        .tool_error("agent_wait", json!({ "agent_ids": [id], "mode": "some" }))
        .await;
    assert!(e.contains("`some`") && e.contains("any, all"), "{e}");
    let e = s.tool_error("agent_wait", json!({ "agent_ids": [] })).await;
    assert!(e.contains("agent_ids is empty"), "{e}");
    for (tool, args) in [
        (
            "agent_status",
            json!({ "agent_id": id, "wait_seconds": -1 }),
        ),
        (
            "agent_output",
            json!({ "agent_id": id, "wait_seconds": -1 }),
        ),
        (
            "agent_wait",
            json!({ "agent_ids": [id], "wait_seconds": -1 }),
        ),
    ] {
        let e = s.tool_error(tool, args).await;
        assert!(
            e.contains("wait_seconds = -1") && e.contains("from 0 to 50"),
            "{tool}: {e}"
        );
    }
    for max_bytes in [0, 100_001] {
        let e = s
            .tool_error(
                "agent_output",
                json!({ "agent_id": id, "max_bytes": max_bytes }),
            )
            .await;
        assert!(
            e.contains(&format!("max_bytes = {max_bytes}")) && e.contains("1 to 100000"),
            "{e}"
        );
    }
    let e = s
        .tool_error("agent_output", json!({ "agent_id": id, "tail_lines": 0 }))
        .await;
    assert!(e.contains("tail_lines"), "{e}");
    let e = s
        .tool_error("agent_kill", json!({ "agent_id": id, "grace_ms": 60_001 }))
        .await;
    assert!(e.contains("0 to 60000"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_arguments_are_tool_errors_that_name_the_field() {
    let s = Session::start("").await;
    let e = s
        .tool_error("agent_spawn", json!({ "task": "x", "bogus": 1 }))
        .await;
    assert!(e.contains("bogus") && e.contains("task_type"), "{e}");
    let e = s
        .tool_error(
            "agent_spawn",
            json!({ "task": "x", "limits": { "memory_mb": -1 } }),
        )
        .await;
    assert!(e.contains("-1"), "{e}");
    let e = s.tool_error("agent_status", json!({})).await;
    assert!(e.contains("agent_id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_spawns_change_nothing() {
    let s = Session::start("").await;
    for args in bad_spawns() {
        s.tool_error("agent_spawn", args).await;
    }
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]), "{list}");
    assert_eq!(list["counts"], json!({}), "{list}");
    assert!(
        s.fake.requests().is_empty(),
        "no worker reached the provider"
    );
    let transcripts = walk_files(&s.dir.path().join("transcripts"));
    assert!(
        transcripts.is_empty(),
        "no transcript was left behind: {transcripts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_leave_existing_agents_as_they_were() {
    let s = Session::start("").await;
    s.fake.script(
        "keeps running",
        vec![Step::Hang {
            after_chunks: vec!["one\n".into()],
        }],
    );
    let running = s.spawn("keeps running").await;
    let done = s.spawn("ends").await;
    s.ok(
        "agent_wait",
        json!({ "agent_ids": [done], "wait_seconds": 30 }),
    )
    .await;
    // `running` is running once its process started; wait until its request reached the
    // provider too, so the count below is about the refused calls alone.
    assert!(
        support::process::eventually(std::time::Duration::from_secs(30), || s
            .fake
            .requests()
            .len()
            == 2)
        .await,
        "both agents reach the provider"
    );
    let before = s.ok("agent_list", json!({})).await;

    for args in bad_spawns() {
        s.tool_error("agent_spawn", args).await;
    }
    s.tool_error(
        "agent_kill",
        json!({ "agent_id": running, "grace_ms": 60_001 }),
    )
    .await;
    s.tool_error("agent_kill", json!({ "agent_id": format!("{running}x") }))
        .await;
    s.tool_error(
        "agent_output",
        json!({ "agent_id": running, "filter": "(" }),
    )
    .await;
    s.tool_error(
        "agent_wait",
        json!({ "agent_ids": [running, "a-nope"], "mode": "all" }),
    )
    .await;

    let after = s.ok("agent_list", json!({})).await;
    let ids = |v: &Value| -> Vec<Value> {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent_id"].clone())
            .collect()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(
        after["counts"],
        json!({ "running": 1, "completed": 1 }),
        "{after}"
    );
    assert_eq!(s.status(&running).await["status"], "running");
    let asked = s.fake.requests().len();
    assert_eq!(asked, 2, "only the two real agents reached the provider");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_leaves_no_record_or_transcript() {
    let bin = tempfile::tempdir().unwrap();
    let not_a_program = bin.path().join("bg-agent-worker");
    // Its interpreter does not exist, so exec(2) fails with ENOENT.
    std::fs::write(&not_a_program, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(
        &not_a_program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let s = Session::start_server(&format!(
        "worker.path = {:?}",
        not_a_program.display().to_string()
    ))
    .await;
    let e = s
        .tool_error("agent_spawn", json!({ "task": "never runs" }))
        .await;
    assert!(e.contains("cannot start the worker"), "{e}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]), "{list}");
    let transcripts = walk_files(&s.dir.path().join("transcripts"));
    assert!(transcripts.is_empty(), "{transcripts:?}");
}
