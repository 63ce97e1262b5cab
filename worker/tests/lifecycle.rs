//! How a run ends other than with an answer: budgets running out, SIGTERM, and the
//! server going away (stdin EOF).

use crate::common;

use std::time::Instant;

use bg_agent_worker::protocol::{ErrorKind, Event, UsageReport, exit};
use common::{Harness, Live, Step, run, tool_use};
use nix::sys::signal::{Signal, kill};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_turns_reached_in_a_tool_loop_exits_3_with_budget_exceeded() {
    let h = Harness::start().await;
    h.write("workspace/a.txt", "a\n");
    let endless = (0..10)
        .map(|i| tool_use(&format!("toolu_{i}"), "glob", json!({"pattern": "*"})))
        .collect();
    h.fake.script("loop forever", endless);

    let r = run(h.worker(&["--json", "--max-turns", "3", "loop forever"])).await;

    assert_eq!(r.code, Some(exit::BUDGET), "{}", r.dump());
    assert_eq!(h.fake.request_count("loop forever"), 3);
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::BudgetExceeded);
            assert!(message.contains("max_turns (3)"), "{message}");
        }
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usd_budget_spent_stops_the_run_with_exit_3() {
    let h = Harness::start().await;
    let steps = (0..5)
        .map(|i| tool_use(&format!("toolu_{i}"), "glob", json!({"pattern": "*"})))
        .collect();
    h.fake.script("spend money", steps);

    // The read-only tools only: the first request's estimate (tool definitions included)
    // must stay within $0.001.
    let r = run(h.worker(&[
        "--json",
        "--budget-usd",
        "0.001",
        "--tools",
        "read_file,glob,grep",
        "spend money",
    ]))
    .await;

    assert_eq!(r.code, Some(exit::BUDGET), "{}", r.dump());
    let requests = h.fake.requests_for("spend money");
    assert_eq!(
        requests[0].max_tokens,
        Some(100),
        "max_tokens lowered to what $0.001 buys at $10 per million output tokens"
    );
    let usage: Vec<(u64, f64)> = r
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Usage(UsageReport {
                input_tokens,
                cost_usd,
                ..
            }) => Some((input_tokens, cost_usd.expect("sonnet has a price"))),
            _ => None,
        })
        .collect();
    assert_eq!(usage.len(), requests.len(), "one usage event a turn");
    assert!(requests.len() < 5, "stopped before the script ran out");
    for (_, cost) in &usage[..usage.len() - 1] {
        assert!(*cost <= 0.001, "no turn after the budget is spent");
    }
    let (last_in, spent) = usage[usage.len() - 1];
    let before_in = usage.len().checked_sub(2).map_or(0, |i| usage[i].0);
    let last_input_cost = (last_in - before_in) as f64 * 2.0 / 1e6;
    assert!(spent > 0.001, "{}", r.dump());
    assert!(
        spent - 0.001 <= last_input_cost + 1e-12,
        "a turn overshoots by at most its input: spent ${spent}, last input ${last_input_cost}"
    );
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::BudgetExceeded);
            assert!(message.contains("budget_usd"), "{message}");
        }
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_ends_with_interrupted_and_exit_143() {
    let h = Harness::start().await;
    h.fake.script(
        "hang after a while",
        vec![Step::Hang {
            after_chunks: vec!["Working on it".into()],
        }],
    );
    let mut live = Live::spawn(h.worker(&["--json", "hang after a while"]));
    live.wait_for(|e| matches!(e, Event::Text { .. })).await;

    let sent = Instant::now();
    kill(live.pid(), Signal::SIGTERM).expect("send SIGTERM");
    let r = live.finish().await;
    eprintln!("SIGTERM to exit: {:?}", sent.elapsed());

    assert_eq!(r.code, Some(exit::INTERRUPTED_TERM), "{}", r.dump());
    match r.last() {
        Event::Error { kind, .. } => assert_eq!(kind, ErrorKind::Interrupted),
        other => panic!("not an error: {other:?}"),
    }
}

/// Where build.rs links the unwinder in (`static_unwinder`), a worker never loads
/// libgcc_s, whose constructor runs CPUID instructions at every start.
#[cfg_attr(
    not(static_unwinder),
    ignore = "build.rs could not link the unwinder from libgcc_eh.a here"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_has_not_loaded_libgcc_s() {
    let h = Harness::start().await;
    h.fake.script(
        "stay a while",
        vec![Step::Hang {
            after_chunks: vec!["Working".into()],
        }],
    );
    let mut live = Live::spawn(h.worker(&["--json", "stay a while"]));
    live.wait_for(|e| matches!(e, Event::Text { .. })).await;

    let maps = std::fs::read_to_string(format!("/proc/{}/maps", live.pid()));
    kill(live.pid(), Signal::SIGTERM).expect("send SIGTERM");
    let r = live.finish().await;

    let maps = maps.expect("read the running worker's /proc/PID/maps");
    assert!(maps.contains("/libc.so"), "not the worker's maps:\n{maps}");
    assert!(
        !maps.contains("libgcc_s"),
        "the worker loaded libgcc_s:\n{maps}"
    );
    assert_eq!(r.code, Some(exit::INTERRUPTED_TERM), "{}", r.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_stream_ends_with_interrupted_and_exit_130() {
    let h = Harness::start().await;
    h.fake.script(
        "interrupt me",
        vec![Step::Hang {
            after_chunks: vec!["Working".into()],
        }],
    );
    let mut live = Live::spawn(h.worker(&["--json", "interrupt me"]));
    live.wait_for(|e| matches!(e, Event::Text { .. })).await;

    kill(live.pid(), Signal::SIGINT).expect("send SIGINT");
    let r = live.finish().await;

    assert_eq!(r.code, Some(exit::INTERRUPTED_INT), "{}", r.dump());
    assert!(matches!(
        r.last(),
        Event::Error {
            kind: ErrorKind::Interrupted,
            ..
        }
    ));
}

/// A worker whose stdout nobody reads any more (the server is gone) gets EPIPE, not
/// SIGPIPE, and ends as it says: with 143, its commands' group killed and its scratch
/// directory removed, which death by SIGPIPE would skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_worker_with_143_not_sigpipe() {
    let h = Harness::start().await;
    h.fake.script(
        "nobody reads",
        vec![Step::Text {
            chunks: (0..20).map(|i| format!("part {i} ")).collect(),
            delay_ms: 20,
        }],
    );
    let mut child = h
        .worker(&["--json", "nobody reads"])
        .spawn()
        .expect("spawn bg-agent-worker");
    drop(child.stdout.take());

    let status = tokio::time::timeout(common::RUN_TIMEOUT, child.wait())
        .await
        .expect("the worker did not end")
        .expect("wait for the worker");

    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), None, "killed by a signal: {status:?}");
    assert_eq!(status.code(), Some(exit::INTERRUPTED_TERM), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_eof_in_spec_mode_exits_at_once() {
    let h = Harness::start().await;
    h.fake.script(
        "server goes away",
        vec![Step::Hang {
            after_chunks: vec!["Started".into()],
        }],
    );
    let mut live = h.start_spec(&h.spec("server goes away")).await;
    live.wait_for(|e| matches!(e, Event::Text { .. })).await;

    let closed = Instant::now();
    live.close_stdin();
    let r = live.finish().await;
    eprintln!("stdin EOF to exit: {:?}", closed.elapsed());

    assert_eq!(r.code, Some(exit::INTERRUPTED_TERM), "{}", r.dump());
    assert!(r.stderr.contains("stdin closed"), "{}", r.dump());
}
