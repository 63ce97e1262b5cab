//! The supervisor with real processes, real signals and real rlimits: every status and
//! exit classification caused for real by `examples/test_worker`, output read through the
//! manager, the FIFO queue, kill, shutdown, and what is left behind (no zombie, no open
//! descriptor, no live process group). No test asserts a duration.

// Test code: clippy.toml lets #[test] functions unwrap, expect and panic, and this lets
// the helpers beside them do the same (as codex-rs's tests/common does), so a helper that
// cannot do what its test asked stops that test with the message.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "integration tests: failing loudly is the point"
)]

#[path = "supervisor/harness.rs"]
mod harness;

use std::time::Duration;

use bg_agent_worker::values::LimitsOverride;
use bg_agents::supervisor::StatusView;
use bg_agents::supervisor::output::hold_transcript_writes;
use bg_agents::supervisor::process::SpawnError;
use bg_agents::supervisor::{ManagerError, OutputQuery};
use bg_agents::supervisor::{Status, WaitMode};
use harness::{
    Harness, PATIENCE, exclusive, group_gone, is_our_child, open_fds, shared, test_worker,
    zombie_children,
};

fn limits() -> LimitsOverride {
    LimitsOverride::default()
}

/// Runs `mode` to its end and checks that nothing of it is left: not its process
/// group, not an unreaped child.
async fn run_to_end(h: &Harness, mode: &str, limits: LimitsOverride) -> StatusView {
    let id = h.spawn_with(mode, limits).await;
    let st = h.wait_end(&id).await;
    let pid = st.pid.expect("a started agent has a pid");
    assert!(group_gone(pid), "{mode}: group {pid} still has members");
    assert!(!is_our_child(pid), "{mode}: {pid} not reaped");
    st
}

/// (code, signal, reason) of an ended agent.
fn exit_of(st: &StatusView) -> (Option<i32>, Option<&str>, &str) {
    let e = st.exit.as_ref().expect("an ended agent has exit info");
    (e.code, e.signal.as_deref(), e.reason.as_str())
}

fn query(filter: Option<&str>, since: Option<u64>, max_bytes: usize) -> OutputQuery {
    OutputQuery {
        filter: filter.map(str::to_string),
        since,
        tail_lines: None,
        max_bytes,
    }
}

// ---- running → completed, and reading the output ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_worker_completes_with_its_result_usage_and_output() {
    let _procs = shared().await;
    let h = Harness::new("");
    let st = run_to_end(&h, "ok", limits()).await;
    assert_eq!(st.status, Status::Completed, "{st:?}");
    assert_eq!(exit_of(&st), (Some(0), None, "completed"));
    assert_eq!(st.result.as_deref(), Some("all done"));
    assert_eq!(st.turns, 1);
    assert_eq!(
        (
            st.usage.input_tokens,
            st.usage.output_tokens,
            st.usage.cost_usd
        ),
        (120, 34, Some(0.0005))
    );
    assert_eq!(st.error, None);
    assert!(st.started_at.is_some() && st.ended_at.is_some(), "{st:?}");

    let page = h.read_all(&st.agent_id);
    let lines: Vec<&str> = page.text.lines().collect();
    assert_eq!(lines.len(), 300);
    assert_eq!(lines[0], "ok line 0001 odd");
    assert_eq!(lines[299], "ok line 0300 even");
    assert_eq!(page.next_cursor, st.output.output_bytes);
    assert_eq!((page.dropped_bytes, page.truncated), (0, false));

    // Every event is in the transcript: started, 300 texts, usage, result.
    let path = st.output.transcript_path.expect("a transcript");
    let transcript = std::fs::read_to_string(path).unwrap();
    assert_eq!(transcript.lines().count(), 303);
    assert!(
        transcript
            .lines()
            .last()
            .unwrap()
            .contains(r#""type":"result""#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_pages_by_cursor_lose_nothing_and_repeat_exactly() {
    let _procs = shared().await;
    let h = Harness::new("");
    let id = run_to_end(&h, "ok", limits()).await.agent_id;
    let all = h.read_all(&id).text;

    let mut since = 0;
    let mut joined = String::new();
    let mut pages = 0;
    loop {
        let q = query(None, Some(since), 100);
        let page = h.manager.output(&id, &q).unwrap();
        let again = h.manager.output(&id, &q).unwrap();
        assert_eq!(
            (&again.text, again.next_cursor),
            (&page.text, page.next_cursor),
            "reading never consumes"
        );
        assert!(page.text.len() <= 100, "{page:?}");
        assert_eq!(page.dropped_bytes, 0);
        if page.next_cursor == since {
            assert_eq!((page.text.as_str(), page.truncated), ("", false));
            break;
        }
        assert!(page.truncated || page.next_cursor == all.len() as u64);
        assert!(page.text.ends_with('\n'), "whole lines: {page:?}");
        joined.push_str(&page.text);
        since = page.next_cursor;
        pages += 1;
    }
    assert_eq!(joined, all);
    assert!(pages >= all.len() / 100, "{pages} pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_filter_keeps_matching_lines_and_cursor_passes_the_rest() {
    let _procs = shared().await;
    let h = Harness::new("");
    let st = run_to_end(&h, "ok", limits()).await;
    let id = st.agent_id;

    let even = h
        .manager
        .output(&id, &query(Some("even$"), None, usize::MAX))
        .unwrap();
    assert_eq!(even.matched_lines, 150);
    assert!(even.text.lines().all(|l| l.ends_with(" even")), "{even:?}");
    assert_eq!(even.next_cursor, st.output.output_bytes);

    // Paging with a filter gives the same lines.
    let (mut since, mut joined) = (0, String::new());
    loop {
        let page = h
            .manager
            .output(&id, &query(Some("even$"), Some(since), 64))
            .unwrap();
        if page.next_cursor == since {
            break;
        }
        joined.push_str(&page.text);
        since = page.next_cursor;
    }
    assert_eq!(joined, even.text);

    // A filter with a cursor in the middle and a tail.
    let mid = h
        .manager
        .output(
            &id,
            &OutputQuery {
                tail_lines: Some(2),
                ..query(Some("odd"), Some(st.output.output_bytes / 2), usize::MAX)
            },
        )
        .unwrap();
    assert_eq!(mid.text, "ok line 0297 odd\nok line 0299 odd\n");

    // A bad pattern is the caller's error and quotes the pattern.
    for bad in ["ok (line", ""] {
        let err = h
            .manager
            .output(&id, &query(Some(bad), None, usize::MAX))
            .unwrap_err();
        assert!(matches!(err, ManagerError::Filter(_)), "{err}");
        assert!(
            err.to_string().contains(&format!("`{bad}`")) || bad.is_empty(),
            "{err}"
        );
        let err = h
            .manager
            .wait_output(&id, &query(Some(bad), None, 10), PATIENCE)
            .await
            .unwrap_err();
        assert!(matches!(err, ManagerError::Filter(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_buffer_wraps_at_max_output_bytes_and_reports_what_fell_out() {
    let _procs = shared().await;
    let h = Harness::new("");
    let st = run_to_end(
        &h,
        "ok",
        LimitsOverride {
            max_output_bytes: Some(4096),
            ..limits()
        },
    )
    .await;
    assert_eq!(st.status, Status::Completed);
    let total = st.output.output_bytes;
    assert_eq!(total, 150 * 17 + 150 * 18, "every line counted");
    assert!(
        total - st.output.output_evicted_bytes <= 4096,
        "{:?}",
        st.output
    );

    let page = h
        .manager
        .output(&st.agent_id, &query(None, Some(0), usize::MAX))
        .unwrap();
    assert!(
        page.dropped_bytes >= st.output.output_evicted_bytes,
        "{page:?}"
    );
    assert_eq!(page.dropped_bytes + page.text.len() as u64, total);
    assert!(
        page.text.starts_with("ok line "),
        "starts at a line: {page:?}"
    );
    assert!(page.text.ends_with("ok line 0300 even\n"));
    // What fell out of memory is still in the transcript.
    let transcript = std::fs::read_to_string(st.output.transcript_path.unwrap()).unwrap();
    assert!(transcript.contains("ok line 0001 odd"));
    assert_eq!(transcript.lines().count(), 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_output_returns_on_new_output_and_on_the_end() {
    let _procs = shared().await;
    let h = Harness::new("");
    let id = h.spawn("sleep").await;
    let ready = h.wait_ready(&id).await;
    assert_eq!(ready.text, "ready: sleep\n");

    // Nothing new: the wait runs out and says so without moving the cursor.
    let q = query(None, Some(ready.next_cursor), usize::MAX);
    let idle = h
        .manager
        .wait_output(&id, &q, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        (idle.text.as_str(), idle.next_cursor),
        ("", ready.next_cursor)
    );
    assert_eq!(idle.status, Status::Running);

    let (ended, killed) = tokio::join!(h.manager.wait_output(&id, &q, PATIENCE), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.manager.kill_agent(&id, None).await
    });
    assert_eq!(killed.unwrap().status, Status::Killed);
    assert_eq!(
        ended.unwrap().status,
        Status::Killed,
        "the end wakes a reader"
    );
}

// ---- running → every other terminal status, each caused for real ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_past_rlimit_cpu_ends_cpu_limit_by_sigxcpu() {
    let _procs = shared().await;
    let h = Harness::new("");
    let cpu = LimitsOverride {
        cpu_seconds: Some(1),
        ..limits()
    };
    let st = run_to_end(&h, "spin", cpu).await;
    assert_eq!(st.status, Status::CpuLimit, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGXCPU"), "cpu_limit"));
    assert!(
        st.error.as_deref().unwrap().contains("cpu_seconds = 1"),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigxcpu_from_outside_to_an_idle_worker_is_not_the_cpu_limit() {
    let _procs = shared().await;
    let h = Harness::new("");
    let id = h.spawn("sleep").await;
    h.wait_ready(&id).await;
    let pid = h.status(&id).pid.expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGXCPU,
    )
    .expect("signal our own worker");
    let st = h.wait_end(&id).await;
    assert_eq!(st.status, Status::Failed, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGXCPU"), "killed_outside"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_past_rlimit_as_ends_memory_limit() {
    let _procs = shared().await;
    let h = Harness::new("");
    let mem = LimitsOverride {
        memory_mb: Some(64),
        ..limits()
    };
    let st = run_to_end(&h, "alloc", mem).await;
    assert_eq!(st.status, Status::MemoryLimit, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGABRT"), "memory_limit"));
    assert!(
        st.error.as_deref().unwrap().contains("memory_mb = 64"),
        "{st:?}"
    );
    let tail = st.stderr_tail.as_deref().unwrap_or_default();
    assert!(tail.contains("memory allocation of"), "{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_cooperative_worker_ends_killed_by_sigterm() {
    let _procs = shared().await;
    let h = Harness::new("");
    let id = h.spawn("sleep").await;
    h.wait_ready(&id).await;
    let st = h.manager.kill_agent(&id, None).await.unwrap();
    assert_eq!(st.status, Status::Killed, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGTERM"), "killed"));
    let pid = st.pid.unwrap();
    assert!(
        group_gone(pid) && !is_our_child(pid),
        "reaped when kill returns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_sends_sigterm_then_sigkill_after_grace() {
    let _procs = shared().await;
    let h = Harness::new("");
    let id = h.spawn("ignore-term").await;
    h.wait_ready(&id).await;
    let st = h.manager.kill_agent(&id, None).await.unwrap();
    assert_eq!(st.status, Status::Killed, "{st:?}");
    assert_eq!(
        exit_of(&st),
        (None, Some("SIGKILL"), "killed"),
        "SIGTERM was ignored, so SIGKILL was needed"
    );
    let pid = st.pid.unwrap();
    assert!(group_gone(pid) && !is_our_child(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_by_signal_ends_failed_crashed() {
    let _procs = shared().await;
    let h = Harness::new("");
    let st = run_to_end(&h, "crash", limits()).await;
    assert_eq!(st.status, Status::Failed, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGSEGV"), "crashed"));
    assert!(st.error.as_deref().unwrap().contains("SIGSEGV"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_past_rlimit_fsize_ends_failed_file_limit() {
    let _procs = shared().await;
    let h = Harness::new("");
    let fsize = LimitsOverride {
        max_file_mb: Some(1),
        ..limits()
    };
    let st = run_to_end(&h, "fsize", fsize).await;
    assert_eq!(st.status, Status::Failed, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGXFSZ"), "file_limit"));
    assert!(
        st.error.as_deref().unwrap().contains("max_file_mb = 1"),
        "{st:?}"
    );
    let written = std::fs::metadata(h.dir.path().join("fsize.bin"))
        .unwrap()
        .len();
    assert_eq!(
        written,
        1024 * 1024,
        "the kernel stopped the file at the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_3_ends_budget_exceeded_with_the_workers_message() {
    let _procs = shared().await;
    let h = Harness::new("");
    let st = run_to_end(&h, "exit3", limits()).await;
    assert_eq!(st.status, Status::BudgetExceeded, "{st:?}");
    assert_eq!(exit_of(&st), (Some(3), None, "budget_exceeded"));
    assert!(
        st.error
            .as_deref()
            .unwrap()
            .contains("max_turns = 1 reached"),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_timeout_ends_timed_out() {
    let _procs = shared().await;
    let h = Harness::new("");
    let timeout = LimitsOverride {
        timeout_seconds: Some(1),
        ..limits()
    };
    let st = run_to_end(&h, "sleep", timeout).await;
    assert_eq!(st.status, Status::TimedOut, "{st:?}");
    assert_eq!(exit_of(&st), (None, Some("SIGTERM"), "timed_out"));
    assert!(
        st.error.as_deref().unwrap().contains("timeout_seconds = 1"),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_flood_ends_output_limit_within_every_cap() {
    let _procs = shared().await;
    let h = Harness::new("transcript_max_mb = 1");
    let ring = LimitsOverride {
        max_output_bytes: Some(65536),
        ..limits()
    };
    let st = run_to_end(&h, "flood", ring).await;
    assert_eq!(st.status, Status::OutputLimit, "{st:?}");
    assert_eq!(exit_of(&st).2, "output_limit");
    let out = &st.output;
    assert!(
        out.transcript_dropped_bytes > 0,
        "counted, not lost: {out:?}"
    );
    assert!(out.transcript_bytes <= 1024 * 1024 + 100, "{out:?}");
    let on_disk = std::fs::metadata(out.transcript_path.as_deref().unwrap())
        .unwrap()
        .len();
    assert_eq!(on_disk, out.transcript_bytes);
    assert!(
        out.output_bytes - out.output_evicted_bytes <= 65536,
        "{out:?}"
    );
    assert!(out.stdout_bytes > 1024 * 1024, "{out:?}");
}

/// The readable output of `id`: all of it, and its last three lines.
fn readable(h: &Harness, id: &str) -> (String, String) {
    let all = h
        .manager
        .output(id, &query(None, None, usize::MAX))
        .unwrap();
    let tail = OutputQuery {
        tail_lines: Some(3),
        ..query(None, None, usize::MAX)
    };
    (all.text, h.manager.output(id, &tail).unwrap().text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_a_mib_is_kept_whole() {
    let _procs = shared().await;
    let h = Harness::new("");
    let st = run_to_end(&h, "answer 1100000", limits()).await;
    assert_eq!(st.status, Status::Completed, "{:?}", st.error);
    assert_eq!(st.error, None);
    let result = st.result.as_deref().unwrap();
    assert_eq!(result.len(), 1_100_000);
    assert!(result.lines().all(|l| l == "a".repeat(99)));
    assert_eq!(st.output.transcript_dropped_bytes, 0, "{:?}", st.output);
    let (all, tail) = readable(&h, &st.agent_id);
    assert!(!all.contains("\"type\""), "raw JSON in the readable output");
    assert!(tail.len() < 1024, "{} bytes in the last lines", tail.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_line_over_the_transcript_cap_ends_output_limit_and_says_so() {
    let _procs = shared().await;
    let h = Harness::new("transcript_max_mb = 1");
    let st = run_to_end(&h, "answer 1500000", limits()).await;
    assert_eq!(st.status, Status::OutputLimit, "{st:?}");
    assert_eq!(exit_of(&st).2, "output_limit");
    let error = st.error.as_deref().unwrap();
    assert!(
        error.contains("event line longer than 1048576 bytes"),
        "{error}"
    );
    assert_eq!(st.result, None);
    assert!(
        st.output.transcript_dropped_bytes > 1024 * 1024,
        "{:?}",
        st.output
    );
    let (all, tail) = readable(&h, &st.agent_id);
    assert!(!all.contains("\"type\""), "raw JSON in the readable output");
    assert!(
        all.contains("event line longer than 1048576 bytes was dropped"),
        "{all}"
    );
    assert!(tail.len() < 1024, "{} bytes in the last lines", tail.len());
}

/// A 64 KiB tmpfs mounted on a fresh temp dir, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// None (said loudly) where mounting is refused (not root, no CAP_SYS_ADMIN).
    fn mount() -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                support::skip(
                    &format!(
                        "cannot mount a small tmpfs to fill ({why}); a failed transcript \
                         write is still tested on /dev/full in transcript.rs's unit tests"
                    ),
                    "run as root (or with CAP_SYS_ADMIN)",
                );
                None
            }
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_the_transcript_tail_not_the_agent() {
    let _procs = shared().await;
    let Some(fs) = SmallFs::mount() else {
        return;
    };
    let h = Harness::with_transcript_dir(&fs.dir.path().join("transcripts"), "");
    let st = run_to_end(&h, "answer 200000", limits()).await;
    assert_eq!(st.status, Status::Completed, "{st:?}");
    assert_eq!(st.error, None);
    assert_eq!(st.result.as_deref().map(str::len), Some(200_000));
    let out = &st.output;
    assert!(
        out.transcript_dropped_bytes >= 200_000 - 64 * 1024,
        "{out:?}"
    );
    let error = out.transcript_error.as_deref().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{out:?}");
    drop(h);
}

/// What `f` returns, from a thread of its own; fails the test when `f` does not return
/// within PATIENCE (it is blocked: the thread is left behind).
fn answers<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{what} did not answer in {PATIENCE:?}: blocked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The held guard is the stalled disk; only the transcript writer threads wait on it.
#[allow(clippy::await_holding_lock)]
async fn calls_answer_while_the_transcript_disk_stalls() {
    // Exclusive: the stall holds every transcript of this test binary.
    let _procs = exclusive().await;
    let h = std::sync::Arc::new(Harness::new(""));
    let stall = hold_transcript_writes();
    let rt = tokio::runtime::Handle::current();
    let h2 = h.clone();
    let id = answers("agent spawn", move || rt.block_on(h2.spawn("ok")));
    // All of the agent's output arrives and is readable while no transcript write can
    // finish: neither the registry nor the runtime waits for the disk.
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !seen.contains("ok line 0300") && std::time::Instant::now() < deadline {
        let (h2, id2) = (h.clone(), id.clone());
        seen = answers("agent output", move || h2.read_all(&id2).text);
        let (h2, id2) = (h.clone(), id.clone());
        answers("agent status", move || h2.status(&id2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains("ok line 0300"), "{seen}");
    drop(stall);
    // Nothing lost: once the disk answers, every event is in the file.
    let st = h.wait_end(&id).await;
    assert_eq!(st.status, Status::Completed, "{st:?}");
    let out = &st.output;
    assert_eq!(out.transcript_dropped_bytes, 0, "{out:?}");
    let file = std::fs::read_to_string(out.transcript_path.as_deref().unwrap()).unwrap();
    assert_eq!(
        file.lines().count(),
        1 + 300 + 2,
        "started, text, usage, result"
    );
    assert_eq!(file.len() as u64, out.transcript_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_stays_open_while_the_agent_runs() {
    let _procs = shared().await;
    let h = Harness::new("");
    let id = h.spawn("exit-stdin").await;
    h.wait_ready(&id).await;
    // The worker exits at stdin EOF; it is still running, so stdin is still open.
    let st = h
        .manager
        .wait_status(&id, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(st.status, Status::Running, "{st:?}");
    let st = h.manager.kill_agent(&id, None).await.unwrap();
    assert_eq!(exit_of(&st), (None, Some("SIGTERM"), "killed"));
}

// ---- queued → running | killed (cancelled) | failed (could not start) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_starts_agents_fifo_as_slots_free() {
    let _procs = shared().await;
    let h = Harness::new("max_concurrent = 1");
    let a = h.spawn("sleep").await;
    h.wait_ready(&a).await;
    let mut queued = Vec::new();
    for mode in ["sleep", "ok", "ok", "ok"] {
        let v = h.try_spawn(mode, limits()).await.unwrap();
        assert_eq!(v.status, Status::Queued, "{v:?}");
        let st = h.status(&v.agent_id);
        assert_eq!(
            (st.status, st.pid, st.started_at),
            (Status::Queued, None, None)
        );
        queued.push(v.agent_id);
    }
    let listed: Vec<String> = h
        .manager
        .list(Some(Status::Queued), None)
        .agents
        .into_iter()
        .map(|r| r.agent_id)
        .collect();
    assert_eq!(listed, queued);

    // A's slot goes to the first in line, and only to it.
    h.manager.kill_agent(&a, None).await.unwrap();
    h.wait_ready(&queued[0]).await;
    for id in &queued[1..] {
        assert_eq!(h.status(id).status, Status::Queued);
    }
    h.manager.kill_agent(&queued[0], None).await.unwrap();

    let done = h
        .manager
        .wait_agents(&queued[1..], WaitMode::All, h.patience())
        .await
        .unwrap();
    assert!(done.done, "{done:?}");
    let runs: Vec<StatusView> = queued[1..].iter().map(|id| h.status(id)).collect();
    for st in &runs {
        assert_eq!(st.status, Status::Completed, "{st:?}");
    }
    // One slot: each started after the one before it had ended, in spawn order.
    for pair in runs.windows(2) {
        assert!(
            pair[0].ended_at.unwrap() <= pair[1].started_at.unwrap(),
            "{pair:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_queued_agent_cancels_it() {
    let _procs = shared().await;
    let h = Harness::new("max_concurrent = 1");
    let a = h.spawn("sleep").await;
    h.wait_ready(&a).await;
    let b = h.spawn("sleep").await;
    let st = h.manager.kill_agent(&b, None).await.unwrap();
    assert_eq!(st.status, Status::Killed, "{st:?}");
    assert_eq!(exit_of(&st), (None, None, "cancelled"));
    assert_eq!((st.pid, st.started_at), (None, None), "it never ran");
    assert!(st.error.as_deref().unwrap().contains("cancelled"), "{st:?}");
    assert_eq!(
        h.status(&a).status,
        Status::Running,
        "the running one is untouched"
    );
    h.manager.kill_agent(&a, None).await.unwrap();
    // The cancelled one never starts, even with the slot free.
    let st = h
        .manager
        .wait_status(&b, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!((st.status, st.pid), (Status::Killed, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_past_max_queued_is_refused_and_changes_nothing() {
    let _procs = shared().await;
    let h = Harness::new("max_concurrent = 1\nmax_queued = 2");
    let a = h.spawn("sleep").await;
    h.spawn("sleep").await;
    h.spawn("sleep").await;
    let err = h.try_spawn("sleep", limits()).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::QueueFull { queued: 2, max: 2 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_queued = 2"), "{err}");
    assert_eq!(h.manager.list(None, None).agents.len(), 3);
    h.wait_ready(&a).await;
    let report = h.manager.shutdown().await;
    assert_eq!(
        (
            report.killed,
            report.cancelled,
            report.already_ended,
            report.survivors
        ),
        (1, 2, 0, 0),
        "each agent counted once: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_agent_whose_worker_vanished_ends_failed_spawn_failed() {
    let _procs = shared().await;
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("worker");
    std::os::unix::fs::symlink(test_worker(), &link).unwrap();
    let h = Harness::with_worker(&link, "max_concurrent = 1");
    let a = h.spawn("sleep").await;
    h.wait_ready(&a).await;
    let b = h.spawn("ok").await;
    std::fs::remove_file(&link).unwrap();
    h.manager.kill_agent(&a, None).await.unwrap();
    let st = h.wait_end(&b).await;
    assert_eq!(st.status, Status::Failed, "{st:?}");
    assert_eq!(exit_of(&st), (None, None, "spawn_failed"));
    assert_eq!(st.pid, None);
    let error = st.error.unwrap();
    assert!(error.contains(&link.display().to_string()), "{error}");
}

// ---- callers' mistakes and ended agents ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_id_is_an_error_that_lists_near_ids() {
    let _procs = shared().await;
    let h = Harness::new("");
    let err = h.manager.status("a-zzzzz").unwrap_err();
    assert!(err.to_string().contains("no agents exist yet"), "{err}");

    let id = run_to_end(&h, "ok", limits()).await.agent_id;
    // One character off (never the same character, or the "typo" would be the id).
    let last = if id.ends_with('x') { 'y' } else { 'x' };
    let typo = format!("{}{last}", &id[..id.len() - 1]);
    let err = h.manager.status(&typo).unwrap_err();
    assert!(matches!(err, ManagerError::UnknownAgent { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("did you mean {id}")),
        "{err}"
    );
    let err = h.manager.kill_agent(&typo, None).await.unwrap_err();
    assert!(err.to_string().contains(&id), "{err}");
    let err = h.manager.output(&typo, &query(None, None, 10)).unwrap_err();
    assert!(err.to_string().contains(&id), "{err}");
    let err = h
        .manager
        .wait_agents(&[id.clone(), typo], WaitMode::Any, h.patience())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&id), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_an_ended_agent_returns_its_status_unchanged() {
    let _procs = shared().await;
    let h = Harness::new("");
    let ended = run_to_end(&h, "ok", limits()).await;
    let again = h
        .manager
        .kill_agent(&ended.agent_id, Some(0))
        .await
        .unwrap();
    assert_eq!(again.status, Status::Completed);
    assert_eq!(exit_of(&again), exit_of(&ended));
    assert_eq!(again.ended_at, ended.ended_at);
    assert_eq!(again.result.as_deref(), Some("all done"));

    let crashed = run_to_end(&h, "crash", limits()).await;
    let again = h.manager.kill_agent(&crashed.agent_id, None).await.unwrap();
    assert_eq!(
        (again.status, exit_of(&again)),
        (Status::Failed, exit_of(&crashed))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_worker_binary_is_a_spawn_error_naming_the_path() {
    let _procs = shared().await;
    let missing = std::path::Path::new("/nonexistent/bg-agents-tests/test_worker");
    let h = Harness::with_worker(missing, "");
    let err = h.try_spawn("ok", limits()).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Spawn(SpawnError::WorkerNotFound { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(
        h.manager.list(None, None).agents.is_empty(),
        "no record left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_that_cannot_exec_leaves_no_record_and_no_transcript() {
    let _procs = shared().await;
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("worker");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = Harness::with_worker(&script, "");
    let err = h.try_spawn("ok", limits()).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Spawn(SpawnError::Exec { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&script.display().to_string()),
        "{err}"
    );
    assert!(
        h.manager.list(None, None).agents.is_empty(),
        "no record left"
    );
    let leftovers: Vec<_> = std::fs::read_dir(h.manager.transcript_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---- cleanup: zombies, descriptors, shutdown ----

/// Spawns a worker and kills it at once; returns its pid.
async fn spawn_kill_cycle(h: &Harness) -> u32 {
    let id = h.spawn("exit-stdin").await;
    let st = h.manager.kill_agent(&id, None).await.unwrap();
    assert_eq!(st.status, Status::Killed, "{st:?}");
    st.pid.unwrap()
}

/// The descriptor kinds an agent holds: its pipes and its transcript file.
fn agent_fds() -> (usize, usize) {
    let fds = open_fds();
    (
        fds.get("pipe").copied().unwrap_or(0),
        fds.get("file").copied().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_spawn_kill_cycles_leave_no_zombie_and_no_open_fd() {
    let _procs = exclusive().await;
    let h = Harness::new("");
    // Warm-up: the runtime's child reaping and the spawner thread start on first use.
    spawn_kill_cycle(&h).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = agent_fds();
    let total_before = open_fds().values().sum::<usize>();

    let mut pids = Vec::new();
    for _ in 0..200 {
        pids.push(spawn_kill_cycle(&h).await);
    }
    // The stdin writer and pipe readers end just after the agent does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while agent_fds() != before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = agent_fds();
    let total_after = open_fds().values().sum::<usize>();
    eprintln!(
        "fds (pipes, files) {before:?} → {after:?}; all kinds {total_before} → {total_after}"
    );

    assert_eq!(zombie_children(), Vec::<u32>::new(), "zombies");
    for pid in &pids {
        assert!(!is_our_child(*pid) && group_gone(*pid), "{pid} left behind");
    }
    // Pipes and files are what an agent holds; other kinds (epoll, eventfd, sockets)
    // belong to test runtimes that neighbouring tests may start meanwhile.
    assert_eq!(after, before, "(pipes, files) after 200 cycles");
    assert_eq!(h.manager.list(Some(Status::Killed), None).agents.len(), 201);
}

/// Descriptors in the table of each of this process's spawner threads
/// (`/proc/self/task/TID/fd` lists the table of that thread).
fn spawner_tables() -> Vec<usize> {
    let mut sizes = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // The kernel keeps 15 bytes of a thread's name.
        if comm.trim() == "bg-agents-spawn" {
            let fds = std::fs::read_dir(task.path().join("fd")).unwrap().count();
            sizes.push(fds);
        }
    }
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_cloned_from_a_descriptor_table_that_does_not_grow_with_the_server() {
    // Docker's default seccomp profile refuses unshare(2) without CAP_SYS_ADMIN: the
    // spawner then shares the server's table (and says so in the log).
    let refused = std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_FILES) only gives this short-lived thread its own table.
        let r = unsafe { nix::libc::unshare(nix::libc::CLONE_FILES) };
        (r != 0).then(std::io::Error::last_os_error)
    })
    .join()
    .unwrap();
    if let Some(e) = refused {
        support::skip(
            &format!("unshare(CLONE_FILES) is refused here ({e})"),
            "run outside a seccomp profile that blocks unshare (e.g. docker run --security-opt seccomp=unconfined)",
        );
        return;
    }
    let _procs = exclusive().await;
    let h = Harness::new("");
    // 500 descriptors opened by the server after its spawner thread started, as 100
    // running agents would hold: a clone from the server's table would copy them all.
    let held: Vec<std::fs::File> = (0..500)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let id = h.spawn("sleep").await;
    let server = open_fds().values().sum::<usize>();
    let spawners = spawner_tables();
    eprintln!("server's table: {server} descriptors; spawner threads' tables: {spawners:?}");
    assert!(
        server >= 500,
        "the test holds 500 descriptors, saw {server}"
    );
    assert!(!spawners.is_empty(), "no thread named bg-agents-spawner");
    for size in &spawners {
        assert!(
            *size <= 16,
            "a spawner thread's table holds {size} descriptors (the server's: {server})"
        );
    }
    let st = h.manager.kill_agent(&id, None).await.unwrap();
    assert_eq!(st.status, Status::Killed, "{st:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_twenty_running_agents_and_leaves_none_alive() {
    let _procs = exclusive().await;
    let h = Harness::new("max_concurrent = 32");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            h.spawn(if i % 2 == 0 { "sleep" } else { "ignore-term" })
                .await,
        );
    }
    for id in &ids {
        h.wait_ready(id).await;
    }
    let pids: Vec<u32> = ids.iter().map(|id| h.status(id).pid.unwrap()).collect();

    let report = h.manager.shutdown().await;
    assert_eq!(
        (
            report.killed,
            report.cancelled,
            report.already_ended,
            report.survivors
        ),
        (20, 0, 0, 0),
        "{report:?}"
    );
    for (i, (id, pid)) in ids.iter().zip(&pids).enumerate() {
        assert!(group_gone(*pid), "group {pid} survived shutdown");
        assert!(!is_our_child(*pid), "{pid} not reaped");
        let st = h.status(id);
        let signal = if i % 2 == 0 { "SIGTERM" } else { "SIGKILL" };
        assert_eq!(
            (st.status, exit_of(&st)),
            (Status::Killed, (None, Some(signal), "killed"))
        );
    }
    assert_eq!(zombie_children(), Vec::<u32>::new());
    let err = h.try_spawn("ok", limits()).await.unwrap_err();
    assert!(matches!(err, ManagerError::ShuttingDown), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_spawn_stops_the_new_worker_too() {
    let _procs = shared().await;
    let h = Harness::new("");
    // The spawn is forking when shutdown begins: its agent is not running yet.
    let (spawned, report) = tokio::join!(h.try_spawn("sleep", limits()), async {
        tokio::task::yield_now().await;
        h.manager.shutdown().await
    });
    assert_eq!(report.survivors, 0, "{report:?}");
    let id = spawned.expect("the spawn began before shutdown").agent_id;
    let st = h.wait_end(&id).await;
    assert_eq!(st.status, Status::Killed, "{st:?}");
    let pid = st.pid.unwrap();
    assert!(
        group_gone(pid) && !is_our_child(pid),
        "{pid} outlived shutdown"
    );
}
