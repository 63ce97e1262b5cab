//! What a `bash` tool call costs over a bare `bash -c true`: the same command through the
//! tool (its sandbox prepared once, as a worker does; then per call: fork with Landlock,
//! seccomp and capabilities applied in the child, the output pipe, the group kill)
//! against std's plain spawn of `/bin/bash -c true` with its output piped. Prints a
//! table; asserts nothing.
//!
//!     cargo bench -p bg-agent-worker --bench bash

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bg_agent_worker::command_sandbox;
use bg_agent_worker::tools;
use bg_agent_worker::values::{SandboxMode, ToolName};
use serde_json::json;

const RUNS: usize = 300;

fn main() {
    let workspace = tempfile::tempdir().expect("workspace");
    let root = std::fs::canonicalize(workspace.path()).expect("canonical workspace");
    let commands = match command_sandbox::prepare(&root, SandboxMode::Require) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("bash bench SKIPPED: commands cannot be confined on this machine: {why}");
            return;
        }
    };
    println!("sandbox: {}", commands.describe());
    let bare = series(|| {
        let status = Command::new("/bin/bash")
            .args(["-c", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("bash -c true");
        assert!(status.status.success());
    });
    let deadline = Instant::now() + Duration::from_secs(3600);
    let input = json!({"command": "true"});
    let tool = series(|| {
        let out = tools::execute(&[ToolName::Bash], "bash", &input, &root, deadline);
        assert!(
            !out.is_error && out.content.starts_with("exit status 0"),
            "{}",
            out.content
        );
    });
    command_sandbox::end();
    println!("| measurement | result |");
    println!("| --- | --- |");
    println!(
        "| bare `bash -c true` (std spawn, output piped) | {} |",
        summary(&bare)
    );
    println!(
        "| `bash` tool call running `true` (sandboxed) | {} |",
        summary(&tool)
    );
    println!(
        "| added by the tool (p50 − p50) | {:.2} ms (target ≤ 5 ms) |",
        ms(percentile(&tool, 50)) - ms(percentile(&bare, 50))
    );
}

fn series(mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..10 {
        f();
    }
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.2} ms · p99 {:.2} ms (n={})",
        ms(percentile(sorted, 50)),
        ms(percentile(sorted, 99)),
        sorted.len()
    )
}
