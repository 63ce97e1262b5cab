//! The Claude Code hook's run time: `bg-agents hook EVENT` started as Claude Code starts
//! it (a new process, the hook's JSON on stdin), timed from spawn to exit. It runs after
//! every tool call, so it must stay well under 50 ms. Prints a table; asserts nothing.
//!
//!     cargo bench --bench hook

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bg_agent_worker::config::StopHook;
use bg_agents::notices::{Notice, NoticeBoard, ServerState};
use bg_agents::supervisor::{LiveAgent, Status};

const RUNS: usize = 300;
const SESSION: &str = "6f1c2a9e-0000-4b7d-9a51-bench0000001";

fn main() {
    let exe = env!("CARGO_BIN_EXE_bg-agents");
    let tmp = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tmp.path().join("run");
    std::fs::create_dir(&runtime_dir).expect("runtime dir");
    let base = runtime_dir.join("bg-agents");
    let post = format!(
        r#"{{"session_id":"{SESSION}","hook_event_name":"PostToolUse","tool_name":"Bash"}}"#
    );
    let stop = format!(
        r#"{{"session_id":"{SESSION}","hook_event_name":"Stop","stop_hook_active":false}}"#
    );

    let mut rows = vec![baseline()];
    rows.push(series(
        "post-tool-use, no bg-agents server in the session",
        || run(exe, &runtime_dir, "post-tool-use", &post, false),
    ));
    let board = NoticeBoard::open(&base, SESSION).expect("board");
    board
        .publish_state(&ServerState {
            stop_hook: StopHook::Remind,
            max_wait_seconds: Some(50),
            agents: vec![],
        })
        .expect("state");
    rows.push(series(
        "post-tool-use, nothing to tell (the common case)",
        || run(exe, &runtime_dir, "post-tool-use", &post, false),
    ));
    let mut n = 0;
    rows.push(series("post-tool-use, one notice to deliver", || {
        n += 1;
        let notice = Notice::new(
            &format!("a-{n:05}"),
            Some("bench"),
            Status::Completed,
            Some("The answer is 42."),
        );
        board.post(&notice).expect("post");
        run(exe, &runtime_dir, "post-tool-use", &post, true)
    }));
    rows.push(series("stop, one agent running (first reminder)", || {
        n += 1;
        board
            .publish_state(&ServerState {
                stop_hook: StopHook::Remind,
                max_wait_seconds: Some(50),
                agents: vec![LiveAgent {
                    agent_id: format!("a-{n:05}"),
                    label: None,
                    status: Status::Running,
                }],
            })
            .expect("state");
        run(exe, &runtime_dir, "stop", &stop, true)
    }));
    board.remove();

    println!("\n| measurement | result | target |\n| --- | --- | --- |");
    for (what, value, target) in rows {
        println!("| {what} | {value} | {target} |");
    }
}

type Row = (String, String, &'static str);

/// Spawn to exit of one hook run; checks that it printed (or did not) as expected.
fn run(exe: &str, runtime_dir: &Path, event: &str, input: &str, prints: bool) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .args(["hook", event])
        .env_clear()
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the hook");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the hook input");
    let out = child.wait_with_output().expect("wait for the hook");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        !out.stdout.is_empty(),
        prints,
        "hook {event}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

/// The cost of starting any process the same way: `/bin/true`.
fn baseline() -> Row {
    series("baseline: /bin/true, spawned the same way", || {
        let start = Instant::now();
        let status = Command::new("/bin/true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .status()
            .expect("run /bin/true");
        assert!(status.success());
        start.elapsed()
    })
}

fn series(what: &str, mut once: impl FnMut() -> Duration) -> Row {
    for _ in 0..10 {
        once();
    }
    let mut times: Vec<Duration> = (0..RUNS).map(|_| once()).collect();
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    (
        what.to_string(),
        format!(
            "p50 {} · p99 {} · max {} (n={RUNS})",
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(times[times.len() - 1])
        ),
        "p99 ≤ 50 ms",
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
