//! The costs that matter, measured the same way every time, printed as one table.
//!
//!     cargo build --release --workspace && cargo bench --bench bg_agents
//!
//! Everything runs the release binaries against the provider double on 127.0.0.1.
//! Numbers go to BENCHMARKS.md; nothing here asserts a time.

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

use support::provider;

mod common;
use common::{KEY, call, mcp_session, spawn_all, wait_all, worker_run};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_agent_worker::config::{Config, ConfigSource};
use bg_agent_worker::resolve::SpawnRequest;
use bg_agents::supervisor::Manager;
use bg_agents::supervisor::output::{OutputBuffer, ReadRequest, compile_filter};
use bg_agents::supervisor::request::SpawnAgent;
use provider::{FakeProvider, Step};
use serde_json::json;

struct Row {
    what: &'static str,
    value: String,
    target: &'static str,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn p50_p99(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {} · p99 {} (n={})",
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        v.len()
    )
}

fn release_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bg-agents"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

fn worker_exe() -> PathBuf {
    let w = release_dir().join("bg-agent-worker");
    assert!(
        w.exists(),
        "{} is missing; run `cargo build --release --workspace` first",
        w.display()
    );
    w
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "[server]\ntranscript_dir = {:?}\nkeep_transcripts = false\nmax_concurrent = 64\n{extra}",
        dir.join("transcripts").display().to_string()
    )
}

/// Peak RSS of one simple worker run, from the kernel's accounting of waited children.
/// Runs before any other child exists, so the maximum is the worker's.
fn worker_peak_rss(fake_url: &str, dir: &Path) -> u64 {
    let status = worker_run(&worker_exe(), "peak rss", fake_url, dir)
        .status()
        .expect("run worker");
    assert!(status.success(), "worker run failed: {status}");
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    usage.max_rss() as u64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = runtime.block_on(run());
    println!("\n| measurement | result | target |\n| --- | --- | --- |");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.target);
    }
}

/// Median and spread over 20 manual runs of the release worker, from the spawn call
/// until the provider double has the whole request.
async fn start_to_request(fake: &FakeProvider, cwd: &Path) -> String {
    let mut times = Vec::new();
    for i in 0..20 {
        let task = format!("first request bench {i}");
        let t = Instant::now();
        let out = tokio::process::Command::new(worker_exe())
            .args(["--json", "--cwd"])
            .arg(cwd)
            .arg(&task)
            .env("ANTHROPIC_API_KEY", KEY)
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .output()
            .await
            .expect("worker");
        assert!(out.status.success(), "worker failed: {out:?}");
        let req = fake.requests_for(&task);
        let first = req.first().expect("the worker's request");
        times.push(first.received_at.duration_since(t));
    }
    times.sort();
    format!(
        "median {} (min {}, max {}; n=20)",
        ms(pct(&times, 0.5)),
        ms(times[0]),
        ms(times[times.len() - 1])
    )
}

/// One agent through the supervisor: the spawn call until the worker runs, then (once
/// it has streamed) the kill until it is reaped.
async fn spawn_and_kill(
    manager: &Manager,
    cwd: &std::path::Path,
    i: usize,
) -> (Duration, Duration) {
    let t = Instant::now();
    let v = manager
        .spawn_agent(SpawnAgent {
            request: SpawnRequest {
                task: format!("kill bench {i}"),
                cwd: Some(cwd.to_path_buf()),
                ..Default::default()
            },
            label: None,
        })
        .await
        .expect("spawn");
    let spawned = t.elapsed();
    let page = manager
        .wait_output(
            &v.agent_id,
            &bg_agents::supervisor::OutputQuery {
                max_bytes: 1000,
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await
        .expect("output");
    assert_eq!(page.text, "working\n");
    let t = Instant::now();
    let st = manager
        .kill_agent(&v.agent_id, Some(2000))
        .await
        .expect("kill");
    let killed = t.elapsed();
    assert_eq!(st.status.as_str(), "killed");
    (spawned, killed)
}

/// One spawn of the worker binary with tokio::process alone; `fork` adds a trivial
/// pre_exec hook (one setrlimit), which makes std fork() instead of posix_spawn.
async fn bare_spawn(fork: bool) -> Duration {
    let mut cmd = tokio::process::Command::new(worker_exe());
    cmd.args(["--spec", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if fork {
        // SAFETY: setrlimit(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                rlimit::setrlimit(rlimit::Resource::CORE, 0, 0)?;
                Ok(())
            });
        }
    }
    let t = Instant::now();
    let mut child = cmd.spawn().expect("bare spawn");
    let took = t.elapsed();
    drop(child.stdin.take());
    let _ = child.wait().await;
    took
}

async fn run() -> Vec<Row> {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();

    // Worker peak RSS first: no other child may have been waited for yet.
    let peak = worker_peak_rss(&fake.base_url(), dir.path());
    rows.push(Row {
        what: "worker peak RSS, one simple run",
        value: format!("{:.1} MiB", peak as f64 / 1024.0),
        target: "≤ 15 MiB",
    });

    rows.push(Row {
        what: "worker start → first HTTP request (manual run)",
        value: start_to_request(&fake, dir.path()).await,
        target: "median ≤ 10 ms",
    });

    // Over MCP: the release server as Claude Code runs it.
    let server = PathBuf::from(env!("CARGO_BIN_EXE_bg-agents"));
    let (client, server_pid) =
        mcp_session(&server, &config_text(dir.path(), ""), dir.path(), &fake).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = vm_rss_kib(server_pid);
    rows.push(Row {
        what: "server RSS idle",
        value: format!("{:.1} MiB", idle as f64 / 1024.0),
        target: "≤ 15 MiB",
    });

    let mut round_trips = Vec::new();
    let mut first_events = Vec::new();
    let mut ids = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        let v = call(
            &client,
            "agent_spawn",
            json!({ "task": format!("bench spawn {i}") }),
        )
        .await;
        round_trips.push(t.elapsed());
        let id = v["agent_id"].as_str().expect("id").to_string();
        // Spread the agents out so each spawn starts a process instead of queueing.
        wait_all(&client, std::slice::from_ref(&id)).await;
        let st = call(
            &client,
            "agent_status",
            json!({ "agent_id": id, "verbose": true }),
        )
        .await;
        let first = st["details"]["first_event_after_s"]
            .as_f64()
            .expect("first_event_after_s");
        first_events.push(Duration::from_secs_f64(first.max(0.0)));
        ids.push(id);
    }
    rows.push(Row {
        what: "agent_spawn round trip over MCP",
        value: p50_p99(round_trips),
        target: "p50 ≤ 5 ms",
    });
    rows.push(Row {
        what: "spawn → worker's first event",
        value: p50_p99(first_events),
        target: "p50 ≤ 20 ms",
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = vm_rss_kib(server_pid);
    rows.push(Row {
        what: "server RSS after 100 finished agents",
        value: format!("{:.1} MiB", after as f64 / 1024.0),
        target: "(idle + records)",
    });

    // 200-agent burst: concurrent spawns (64 run, the rest queue), then wait for all.
    let t = Instant::now();
    let tasks: Vec<String> = (0..200).map(|i| format!("burst {i}")).collect();
    let burst_ids = spawn_all(&client, &tasks).await;
    wait_all(&client, &burst_ids).await;
    rows.push(Row {
        what: "200-agent burst, spawn → all completed",
        value: format!("{:.2} s", t.elapsed().as_secs_f64()),
        target: "(2 cores)",
    });
    let _ = client.cancel().await;

    // In-process: the supervisor against a bare tokio::process spawn of the same binary.
    let cfg_text = config_text(
        dir.path(),
        &format!("worker.path = {:?}\n", worker_exe().display().to_string()),
    );
    let config =
        Arc::new(Config::from_layers(Some(&cfg_text), ConfigSource::Builtin).expect("config"));
    let manager = Manager::new(config).expect("manager");
    fake.script(
        "kill bench",
        (0..150)
            .map(|_| Step::Hang {
                after_chunks: vec!["working\n".into()],
            })
            .collect(),
    );
    // SAFETY of the environment: the manager passes only allow-listed variables on.
    // SAFETY: single-threaded setup phase of the bench; no other thread reads the env now.
    unsafe {
        std::env::set_var("ANTHROPIC_API_KEY", KEY);
        std::env::set_var("ANTHROPIC_BASE_URL", fake.base_url());
    }
    let mut ours = Vec::new();
    let mut kills = Vec::new();
    let mut bare = Vec::new();
    let mut bare_fork = Vec::new();
    // The three kinds of spawn take turns, each in every position equally often: on a
    // VM a spawn's cost depends on what ran just before it (a spawn right after another
    // process's exit measured up to 1 ms slower, whatever its kind).
    for i in 0..150 {
        for slot in 0..3 {
            match (i + slot) % 3 {
                0 => bare.push(bare_spawn(false).await),
                1 => bare_fork.push(bare_spawn(true).await),
                _ => {
                    let (spawned, killed) = spawn_and_kill(&manager, dir.path(), i).await;
                    ours.push(spawned);
                    kills.push(killed);
                }
            }
        }
    }
    // Two baselines: the plain spawn (std uses posix_spawn, a vfork), and the same spawn
    // with a pre_exec hook, which forces fork(): the price of setting rlimits and
    // PR_SET_PDEATHSIG in the child before exec, race-free.
    ours.sort();
    bare.sort();
    bare_fork.sort();
    let (o, b, f) = (pct(&ours, 0.5), pct(&bare, 0.5), pct(&bare_fork, 0.5));
    rows.push(Row {
        what: "spawn → running: supervisor vs bare tokio::process (p50)",
        value: format!(
            "{} vs {} = {:.2}×",
            ms(o),
            ms(b),
            o.as_secs_f64() / b.as_secs_f64()
        ),
        target: "≤ 1.5×",
    });
    rows.push(Row {
        what: "  … vs bare tokio::process with a pre_exec hook (fork) (p50)",
        value: format!(
            "{} vs {} = {:.2}×",
            ms(o),
            ms(f),
            o.as_secs_f64() / f.as_secs_f64()
        ),
        target: "(context)",
    });
    kills.sort();
    rows.push(Row {
        what: "kill → reaped, cooperative worker (p50)",
        value: format!("{} (p99 {})", ms(pct(&kills, 0.5)), ms(pct(&kills, 0.99))),
        target: "≤ 50 ms",
    });
    manager.shutdown().await;

    // The regex filter over a full 1 MiB ring buffer.
    let mut buf = OutputBuffer::new(1 << 20);
    let mut n = 0;
    while buf.end_cursor() < 2 << 20 {
        buf.push(&format!(
            "line {n}: → read_file path=\"src/module_{n}.rs\" ok, {} bytes\n",
            n * 7
        ));
        n += 1;
    }
    let re = compile_filter(r"module_\d*7\.rs").expect("filter");
    let mut filters = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = buf.read(&ReadRequest {
            since: None,
            filter: Some(&re),
            tail_lines: None,
            max_bytes: usize::MAX,
            include_partial: true,
        });
        filters.push(t.elapsed());
        assert!(r.matched_lines > 0);
    }
    filters.sort();
    rows.push(Row {
        what: "regex filter over a full 1 MiB ring buffer",
        value: format!("p50 {}", ms(pct(&filters, 0.5))),
        target: "≤ 5 ms",
    });
    rows
}
