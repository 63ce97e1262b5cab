//! The supervisor's own costs, in process, with real worker processes: spawn → running,
//! kill → reaped, and the regex filter over a full 1 MiB output buffer. Prints a table;
//! asserts nothing.
//!
//!     cargo bench --bench supervisor
//!
//! The workers are this very binary: started with `--spec -` (as the manager starts a
//! worker) it runs `examples/test_worker.rs`, included below, so the bench needs no
//! other build step.

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

#[path = "../examples/test_worker.rs"]
mod test_worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_agent_worker::config::{Config, ConfigSource};
use bg_agent_worker::resolve::SpawnRequest;
use bg_agent_worker::values::LimitsOverride;
use bg_agents::supervisor::OutputQuery;
use bg_agents::supervisor::output::{OutputBuffer, ReadRequest, compile_filter};
use bg_agents::supervisor::request::SpawnAgent;
use bg_agents::supervisor::{Manager, Status};

/// Spawns per measured series.
const SPAWNS: usize = 200;
/// Repetitions of each filter read.
const FILTER_READS: usize = 50;
/// `agent_output`'s default max_bytes (src/mcp/tools.rs).
const MCP_MAX_BYTES: usize = 20_000;
const MIB: usize = 1024 * 1024;

fn main() {
    if std::env::args().any(|a| a == "--spec") {
        test_worker::main();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = runtime.block_on(processes());
    rows.extend(filters());
    println!("\n| measurement | result | target |\n| --- | --- | --- |");
    for (what, value, target) in rows {
        println!("| {what} | {value} | {target} |");
    }
}

type Row = (String, String, &'static str);

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn p50_p99(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {} · p99 {} · max {} (n={})",
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(*v.last().unwrap()),
        v.len()
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    pct(&v, 0.5)
}

fn spawn(dir: &std::path::Path, mode: &str) -> SpawnAgent {
    let request = SpawnRequest {
        task: mode.into(),
        cwd: Some(dir.to_path_buf()),
        limits: LimitsOverride {
            timeout_seconds: Some(60),
            ..Default::default()
        },
        ..Default::default()
    };
    SpawnAgent {
        request,
        label: None,
    }
}

async fn processes() -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let me = std::env::current_exe().expect("own path");
    let toml = format!(
        "[server]\nworker.path = {:?}\ntranscript_dir = {:?}\nkill_grace_ms = 2000\nkeep_transcripts = false\n\
         [providers.anthropic]\napi_key_env = \"\"\n",
        me.display().to_string(),
        dir.path().join("transcripts").display().to_string(),
    );
    let config = Config::from_layers(Some(&toml), ConfigSource::Builtin).expect("config");
    let manager = Manager::new(Arc::new(config)).expect("manager");
    let ready_query = OutputQuery {
        max_bytes: usize::MAX,
        ..Default::default()
    };
    let patience = Duration::from_secs(30);

    // Warm-up: the spawner thread, the runtime's child reaping, the page cache.
    for _ in 0..5 {
        let id = manager
            .spawn_agent(spawn(dir.path(), "ok"))
            .await
            .expect("spawn")
            .agent_id;
        manager.wait_status(&id, patience).await.expect("status");
    }

    // `sleep`: spawn → exec'd (spawn returns Running), → first output seen by the server,
    // then kill → reaped (it dies of SIGTERM).
    let (mut spawned, mut ready, mut killed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let v = manager
            .spawn_agent(spawn(dir.path(), "sleep"))
            .await
            .expect("spawn sleep");
        spawned.push(t.elapsed());
        assert_eq!(v.status, Status::Running, "nothing else runs");
        let page = manager
            .wait_output(&v.agent_id, &ready_query, patience)
            .await
            .expect("output");
        ready.push(t.elapsed());
        assert!(page.text.starts_with("ready: sleep"), "{page:?}");
        let t = Instant::now();
        let st = manager.kill_agent(&v.agent_id, None).await.expect("kill");
        killed.push(t.elapsed());
        assert_eq!(st.exit.map(|e| e.signal), Some(Some("SIGTERM".into())));
    }

    // `ok`: spawn → exec'd, and the whole run: spawn → completed (300 lines, result).
    let (mut ok_spawned, mut ok_done) = (Vec::new(), Vec::new());
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let v = manager
            .spawn_agent(spawn(dir.path(), "ok"))
            .await
            .expect("spawn ok");
        ok_spawned.push(t.elapsed());
        let st = manager
            .wait_status(&v.agent_id, patience)
            .await
            .expect("status");
        ok_done.push(t.elapsed());
        assert_eq!(st.status, Status::Completed, "{st:?}");
    }

    // The filter as agent_output runs it: compile, then read under the registry lock,
    // over an agent whose 1 MiB ring buffer is full.
    let flood = manager
        .spawn_agent(spawn(dir.path(), "flood"))
        .await
        .expect("spawn flood")
        .agent_id;
    let full = OutputQuery {
        max_bytes: usize::MAX,
        ..Default::default()
    };
    loop {
        let st = manager.status(&flood).expect("status");
        if st.output.output_evicted_bytes > 0 || st.status.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    manager
        .kill_agent(&flood, Some(0))
        .await
        .expect("kill flood");
    let held = manager.output(&flood, &full).expect("output").text.len();
    let manager_filter = median(
        (0..FILTER_READS)
            .map(|_| {
                let q = OutputQuery {
                    filter: Some("(?i)error|warn".into()),
                    max_bytes: MCP_MAX_BYTES,
                    ..Default::default()
                };
                let t = Instant::now();
                std::hint::black_box(manager.output(&flood, &q).expect("output"));
                t.elapsed()
            })
            .collect(),
    );
    let report = manager.shutdown().await;
    assert_eq!(report.survivors, 0, "{report:?}");

    vec![
        (
            "spawn() → worker exec'd (`sleep`)".into(),
            p50_p99(spawned),
            "p50 ≤ 5 ms",
        ),
        (
            "spawn() → worker's first output read (`sleep`)".into(),
            p50_p99(ready),
            "",
        ),
        (
            "spawn() → worker exec'd (`ok`)".into(),
            p50_p99(ok_spawned),
            "p50 ≤ 5 ms",
        ),
        (
            "spawn() → completed (`ok`, 300 lines + result)".into(),
            p50_p99(ok_done),
            "",
        ),
        (
            "kill() → reaped, cooperative worker (SIGTERM)".into(),
            p50_p99(killed),
            "p50 ≤ 50 ms",
        ),
        (
            format!(
                "Manager::output, filter `(?i)error|warn`, {:.2} MiB held, max_bytes {MCP_MAX_BYTES}",
                held as f64 / MIB as f64
            ),
            format!("median {}", ms(manager_filter)),
            "≤ 5 ms",
        ),
    ]
}

/// A full 1 MiB ring buffer of agent-like output (one error line in 64, one warning in
/// 16), read with the filters a caller would use.
fn filters() -> Vec<Row> {
    let mut buf = OutputBuffer::new(MIB);
    let mut i = 0u64;
    while buf.start_cursor() == 0 {
        let line = match i % 64 {
            0 => format!("[error Provider: request {i} failed: connection reset]\n"),
            n if n % 16 == 0 => format!("warning: retrying request {i} after 250 ms\n"),
            n if n % 8 == 0 => format!("→ read_file path=\"src/module_{i}.rs\"\n"),
            _ => {
                format!("Step {i}: the function reads its input, checks the bounds, and returns.\n")
            }
        };
        buf.push(&line);
        i += 1;
    }
    assert_eq!(buf.len(), MIB, "the buffer is full");
    let cases: [(&str, Option<&str>, usize); 5] = [
        ("no filter", None, MCP_MAX_BYTES),
        ("`error`", Some("error"), MCP_MAX_BYTES),
        ("`(?i)error|warn`", Some("(?i)error|warn"), MCP_MAX_BYTES),
        ("`^→ read_file`", Some("^→ read_file"), usize::MAX),
        (
            "`no such line` (matches nothing)",
            Some("no such line"),
            MCP_MAX_BYTES,
        ),
    ];
    cases
        .into_iter()
        .map(|(name, pattern, max_bytes)| {
            let re = pattern.map(|p| compile_filter(p).expect("pattern"));
            let req = ReadRequest {
                filter: re.as_ref(),
                max_bytes,
                ..ReadRequest::default()
            };
            let mut matched = 0;
            let times = (0..FILTER_READS)
                .map(|_| {
                    let t = Instant::now();
                    let r = std::hint::black_box(buf.read(&req));
                    let d = t.elapsed();
                    matched = r.matched_lines;
                    d
                })
                .collect();
            let cap = if max_bytes == usize::MAX {
                "no cap".to_string()
            } else {
                format!("max_bytes {max_bytes}")
            };
            (
                format!("OutputBuffer::read over full 1 MiB, {name}, {cap}"),
                format!("median {} ({matched} lines returned)", ms(median(times))),
                if pattern.is_some() { "≤ 5 ms" } else { "" },
            )
        })
        .collect()
}
