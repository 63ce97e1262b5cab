//! No worker outlives what should end it: agent_kill, the end of the session, and every
//! way the server itself can die.

use nix::sys::signal::Signal;
use serde_json::json;
use support::mcp::{Session, server_exit};
use support::process::{alive, all_gone};
use support::provider::Step;

/// A session with `n` agents that hang mid-answer; returns their ids and worker pids.
async fn hanging_agents(n: usize) -> (Session, Vec<String>, Vec<u32>) {
    let s = Session::start("").await;
    let mut ids = Vec::new();
    for i in 0..n {
        // A script answers the n-th request of a conversation, so each agent gets its own.
        let task = format!("hang on, agent #{i}#");
        s.fake.script(
            &task,
            vec![Step::Hang {
                after_chunks: vec!["started\n".into()],
            }],
        );
        let id = s.spawn(&task).await;
        // Block until the worker is mid-answer (its first chunk arrived).
        let out = s
            .ok(
                "agent_output",
                json!({ "agent_id": id, "wait_seconds": 20 }),
            )
            .await;
        assert_eq!(out["text"], "started\n", "{out}");
        ids.push(id);
    }
    let pids = s.worker_pids(&ids).await;
    assert!(pids.iter().all(|&p| alive(p)), "workers run: {pids:?}");
    (s, ids, pids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_running_agent_ends_its_process() {
    let (s, ids, pids) = hanging_agents(1).await;
    let v = s.ok("agent_kill", json!({ "agent_id": ids[0] })).await;
    assert_eq!(v["status"], "killed", "{v}");
    assert_eq!(v["exit"]["reason"], "killed", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(all_gone(&pids).await, "worker {pids:?} still runs");
    let again = s.status(&ids[0]).await;
    assert_eq!(
        again["status"], "killed",
        "terminal states never change: {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_zero_grace_ends_the_worker() {
    let (s, ids, pids) = hanging_agents(1).await;
    let v = s
        .ok("agent_kill", json!({ "agent_id": ids[0], "grace_ms": 0 }))
        .await;
    assert_eq!(v["status"], "killed", "{v}");
    assert!(all_gone(&pids).await, "worker {pids:?} still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_with_running_agents_leaves_no_process() {
    let (s, _ids, pids) = hanging_agents(3).await;
    let server_pid = s.server_pid;
    let exit = s.end().await;
    assert_eq!(
        exit.code(),
        Some(0),
        "server exit after stdin EOF: {exit:?}"
    );
    assert!(!alive(server_pid));
    assert!(
        all_gone(&pids).await,
        "workers {pids:?} outlived the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_server_leaves_no_process() {
    let (mut s, _ids, pids) = hanging_agents(3).await;
    s.signal_server(Signal::SIGKILL);
    let exit = server_exit(&mut s.server).await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(Signal::SIGKILL as i32), "{exit:?}");
    assert!(
        all_gone(&pids).await,
        "workers {pids:?} outlived the server (PDEATHSIG)"
    );
}

/// The server shuts down on `sig`: exit 0, every worker gone.
async fn signal_shuts_down_cleanly(sig: Signal) {
    let (mut s, _ids, pids) = hanging_agents(2).await;
    s.signal_server(sig);
    let exit = server_exit(&mut s.server).await;
    assert_eq!(exit.code(), Some(0), "server exit after {sig}: {exit:?}");
    assert!(
        all_gone(&pids).await,
        "workers {pids:?} outlived the server after {sig}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_server_stops_every_agent_and_exits_0() {
    signal_shuts_down_cleanly(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_of_the_server_stops_every_agent_and_exits_0() {
    signal_shuts_down_cleanly(Signal::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_of_the_server_stops_every_agent_and_exits_0() {
    signal_shuts_down_cleanly(Signal::SIGHUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_past_its_wall_clock_is_stopped_as_timed_out() {
    let s = Session::start("").await;
    s.fake.script(
        "too slow",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let id = s
        .spawn_with(json!({ "task": "too slow to finish", "limits": { "timeout_seconds": 1 } }))
        .await;
    let pids = s.worker_pids(std::slice::from_ref(&id)).await;
    let v = s.wait_all(std::slice::from_ref(&id)).await;
    let st = &v["agents"][0];
    assert_eq!(st["status"], "timed_out", "{st}");
    assert!(
        st["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout_seconds")),
        "{st}"
    );
    assert!(all_gone(&pids).await, "worker {pids:?} still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_during_a_blocking_wait_still_stops_every_agent() {
    let (s, ids, pids) = hanging_agents(2).await;
    let Some(serde_json::Value::Object(args)) =
        Some(json!({ "agent_ids": ids, "wait_seconds": 40 }))
    else {
        unreachable!()
    };
    let request = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::Request::new(
        rmcp::model::CallToolRequestParams::new("agent_wait").with_arguments(args),
    ));
    let _in_flight = s
        .client
        .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
        .await
        .unwrap();
    // The server reads requests in order: once this answers, the wait is in flight.
    s.status(&ids[0]).await;
    let exit = s.end().await;
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(
        all_gone(&pids).await,
        "workers {pids:?} outlived the session"
    );
}

/// A worker that never reads stdin (so EOF cannot end it) still dies with a SIGKILLed
/// server: only PR_SET_PDEATHSIG can do that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_server_kills_a_worker_that_ignores_stdin_through_pdeathsig() {
    let exe = std::env::current_exe().expect("test exe");
    let test_worker = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/debug")
        .join("examples")
        .join("test_worker");
    let mut s = Session::start(&format!(
        "worker.path = {:?}\n",
        test_worker.display().to_string()
    ))
    .await;
    let id = s.spawn("sleep").await;
    let out = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "wait_seconds": 20 }),
        )
        .await;
    assert_eq!(out["text"], "ready: sleep\n", "{out}");
    let pids = s.worker_pids(std::slice::from_ref(&id)).await;
    s.signal_server(Signal::SIGKILL);
    server_exit(&mut s.server).await;
    assert!(
        all_gone(&pids).await,
        "worker {pids:?} outlived the server: PDEATHSIG did not fire"
    );
}
