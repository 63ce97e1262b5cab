//! Every fault we can cause, caused for real through the whole stack (MCP client → server
//! → worker process), each ending in its expected status with no process left behind.
//! Process-level faults use the misbehaving `examples/test_worker`; provider faults use
//! the real worker against the provider double.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::mcp::Session;
use support::process::{alive, eventually};
use support::provider::Step;

fn test_worker() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let debug = exe.parent().and_then(|d| d.parent()).expect("target/debug");
    debug.join("examples").join("test_worker")
}

/// A session whose agents run `examples/test_worker` instead of the real worker.
async fn misbehaving() -> Session {
    Session::start(&format!(
        "worker.path = {:?}\n",
        test_worker().display().to_string()
    ))
    .await
}

/// Spawns `mode` with `limits` in the session's temp dir and waits for its end.
async fn run_to_end(s: &Session, mode: &str, limits: Value) -> Value {
    let id = s
        .spawn_with(
            json!({ "task": mode, "limits": limits, "cwd": s.dir.path().display().to_string() }),
        )
        .await;
    let st = s
        .ok(
            "agent_status",
            json!({ "agent_id": id, "wait_seconds": 30 }),
        )
        .await;
    assert!(
        st["status"] != "running" && st["status"] != "queued",
        "{mode} did not end in 30 s: {st}"
    );
    if let Some(pid) = st["pid"].as_u64() {
        assert!(
            eventually(Duration::from_secs(5), || !alive(pid as u32)).await,
            "{mode}: worker {pid} still alive"
        );
    }
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_crash_by_signal_is_failed_with_the_signal() {
    let s = misbehaving().await;
    let st = run_to_end(&s, "crash", json!({})).await;
    assert_eq!(st["status"], "failed");
    assert_eq!(st["exit"]["signal"], "SIGSEGV");
    assert_eq!(st["exit"]["reason"], "crashed");
    assert!(st["error"].as_str().unwrap().contains("SIGSEGV"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spin_past_rlimit_cpu_is_cpu_limit() {
    let s = misbehaving().await;
    let st = run_to_end(&s, "spin", json!({ "cpu_seconds": 1 })).await;
    assert_eq!(st["status"], "cpu_limit", "{st}");
    assert_eq!(st["exit"]["signal"], "SIGXCPU");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_past_rlimit_as_is_memory_limit() {
    let s = misbehaving().await;
    let st = run_to_end(&s, "alloc", json!({ "memory_mb": 64 })).await;
    assert_eq!(st["status"], "memory_limit", "{st}");
    assert!(
        st["error"].as_str().unwrap().contains("memory_mb = 64"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_past_rlimit_fsize_is_failed_with_file_limit() {
    let s = misbehaving().await;
    let st = run_to_end(&s, "fsize", json!({ "max_file_mb": 1 })).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["exit"]["reason"], "file_limit");
    assert_eq!(st["exit"]["signal"], "SIGXFSZ");
    let written = std::fs::metadata(s.dir.path().join("fsize.bin"))
        .unwrap()
        .len();
    assert_eq!(
        written,
        1024 * 1024,
        "the kernel stopped the file at the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_past_every_cap_is_output_limit_and_counted() {
    let s = Session::start(&format!(
        "worker.path = {:?}\ntranscript_max_mb = 1\n",
        test_worker().display().to_string()
    ))
    .await;
    let st = run_to_end(&s, "flood", json!({ "max_output_bytes": 65536 })).await;
    assert_eq!(st["status"], "output_limit", "{st}");
    let st = s
        .ok(
            "agent_status",
            json!({ "agent_id": st["agent_id"], "verbose": true }),
        )
        .await;
    let out = &st["details"]["output"];
    assert!(
        out["transcript_dropped_bytes"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert!(out["output_evicted_bytes"].as_u64().unwrap() > 0, "{out}");
    assert!(
        out["transcript_bytes"].as_u64().unwrap() <= 1024 * 1024 + 100,
        "{out}"
    );
    // Reading from the start reports what fell out of memory instead of pretending.
    let page = s
        .ok(
            "agent_output",
            json!({ "agent_id": st["agent_id"], "since": 0 }),
        )
        .await;
    assert!(page["dropped_bytes"].as_u64().unwrap() > 0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_hang_ends_timed_out() {
    let s = Session::start("").await;
    s.fake.script(
        "hang forever",
        vec![Step::Hang {
            after_chunks: vec!["partial".into()],
        }],
    );
    let st = run_to_end(&s, "hang forever", json!({ "timeout_seconds": 1 })).await;
    assert_eq!(st["status"], "timed_out", "{st}");
    assert!(
        st["error"]
            .as_str()
            .unwrap()
            .contains("timeout_seconds = 1"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_5xx_storm_retries_then_fails() {
    let s = Session::start("").await;
    let storm: Vec<Step> = (0..10)
        .map(|_| Step::Status {
            code: 503,
            error_type: "api_error".into(),
            message: "storm".into(),
            retry_after: Some(0),
        })
        .collect();
    s.fake.script("storm task", storm);
    let st = run_to_end(&s, "storm task", json!({})).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["exit"]["reason"], "provider_error");
    assert!(st["error"].as_str().unwrap().contains("503"), "{st}");
    // The anthropic provider retries 4 times: 5 requests in all.
    assert_eq!(s.fake.request_count("storm task"), 5);
    let out = s
        .ok(
            "agent_output",
            json!({ "agent_id": st["agent_id"], "filter": "^\\[retry" }),
        )
        .await;
    assert_eq!(out["matched_lines"], 4, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_closing_mid_message_is_retried_and_the_retry_is_marked() {
    let s = Session::start("").await;
    s.fake.script(
        "close mid",
        vec![
            Step::CloseMidMessage {
                after_chunks: vec!["half an ans".into()],
            },
            Step::text("the whole answer"),
        ],
    );
    let st = run_to_end(&s, "close mid", json!({})).await;
    assert_eq!(st["status"], "completed", "{st}");
    assert_eq!(st["result"], "the whole answer");
    let out = s
        .ok("agent_output", json!({ "agent_id": st["agent_id"] }))
        .await;
    let text = out["text"].as_str().unwrap();
    assert!(
        text.contains("void"),
        "the transcript says the partial text is void: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_worker_binary_is_a_clear_error_and_changes_nothing() {
    let s = Session::start("worker.path = \"/nonexistent/bg-agent-worker\"\n").await;
    let err = s
        .tool_error("agent_spawn", json!({ "task": "anything" }))
        .await;
    assert!(err.contains("/nonexistent/bg-agent-worker"), "{err}");
    assert!(err.contains("worker.path"), "{err}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_transcript_dir_is_a_clear_error_and_changes_nothing() {
    let s = Session::start("").await;
    // The session's transcript_dir is <tmp>/transcripts, made on first use; a regular
    // file in its place cannot be written into, even by root.
    let blocker = s.dir.path().join("transcripts");
    std::fs::write(&blocker, "not a directory").unwrap();
    let err = s
        .tool_error("agent_spawn", json!({ "task": "anything" }))
        .await;
    assert!(err.contains("transcript_dir"), "{err}");
    assert!(err.contains(&blocker.display().to_string()), "{err}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_wait_leaves_no_worker() {
    let s = Session::start("").await;
    s.fake.script(
        "vanish",
        vec![Step::Hang {
            after_chunks: vec!["x".into()],
        }],
    );
    let id = s.spawn("vanish").await;
    let out = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "wait_seconds": 20 }),
        )
        .await;
    assert_eq!(out["text"], "x");
    let pid = s.status(&id).await["pid"].as_u64().unwrap() as u32;
    let peer = s.client.peer().clone();
    let waiting = tokio::spawn(async move {
        let Value::Object(args) = json!({ "agent_ids": [id], "wait_seconds": 40 }) else {
            unreachable!()
        };
        peer.call_tool(rmcp::model::CallToolRequestParams::new("agent_wait").with_arguments(args))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = s.server_pid;
    s.client.cancel().await.expect("close the client");
    assert!(
        waiting.await.unwrap().is_err(),
        "the wait cannot complete without a client"
    );
    assert!(
        eventually(Duration::from_secs(10), || !alive(server)).await,
        "server still alive"
    );
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)).await,
        "worker {pid} orphaned"
    );
}
