//! What one streamed answer costs a worker: the release worker run by hand (`--spec`)
//! against the provider double, which streams it 50 text deltas 102 ms apart (the scale
//! bench's agent, alone). Prints the workers' CPU time per run, user and system
//! (getrusage of the children); asserts nothing.
//!
//!     cargo build --release --locked --workspace --bins   # as scripts/install.sh builds
//!     cargo bench -p bg-agent-worker --bench stream
//!     BG_STREAM_RUNS=20 BG_STREAM_API=openai cargo bench -p bg-agent-worker --bench stream
//!     BG_STREAM_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out" \
//!         BG_STREAM_RUNS=1 cargo bench -p bg-agent-worker --bench stream
//!
//! `BG_STREAM_WRAPPER` runs the worker under a tool (its words split at spaces) for a
//! repeatable figure: instructions per run, from callgrind. `BG_STREAM_WORKER` names
//! another build's worker binary.
//!
//! `cargo bench -p bg-agent-worker` links `target/release/bg-agent-worker` again, with
//! this package's dev-dependencies' features: a build whose names mostly miss
//! `worker/startup.order` (its start-up code not placed together). Build as above again
//! before measuring that binary's memory (`cargo bench --bench scale`).

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bg_agent_worker::config::Config;
use bg_agent_worker::resolve::{SpawnRequest, resolve};
use bg_agent_worker::values::ProviderKind;
use nix::sys::resource::{UsageWho, getrusage};
use support::provider::{FakeProvider, Step};

const NEEDLE: &str = "stream bench";
const DELTAS: usize = 50;
const DELTA_GAP_MS: u64 = 102;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release worker next to this bench (target/release/deps/..), or `BG_STREAM_WORKER`.
fn worker_exe() -> PathBuf {
    let w = match std::env::var_os("BG_STREAM_WORKER") {
        Some(w) => PathBuf::from(w),
        None => std::env::current_exe()
            .expect("bench path")
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("bg-agent-worker"),
    };
    assert!(
        w.exists(),
        "{} is missing; run `cargo build --release --locked --workspace --bins` first",
        w.display()
    );
    w
}

/// The built-in config's spec for `task`, pointed at the double, written to `dir`.
fn write_spec(task: &str, fake: &FakeProvider, openai: bool, dir: &Path) -> PathBuf {
    let cfg = Config::builtin().expect("config");
    let request = SpawnRequest {
        task: task.to_string(),
        cwd: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let mut spec = resolve(&cfg, &request).expect("resolve").spec;
    if openai {
        spec.provider.kind = ProviderKind::Openai;
        spec.provider.base_url = fake.openai_base_url();
    } else {
        spec.provider.base_url = fake.base_url();
    }
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_string(&spec).expect("spec")).expect("write spec");
    path
}

/// The user and system CPU time of this process's waited-for children.
fn cpu_of_children() -> (Duration, Duration) {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    (tv(u.user_time()), tv(u.system_time()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs: usize = env_or("BG_STREAM_RUNS", 5);
    let openai = std::env::var("BG_STREAM_API").is_ok_and(|a| a == "openai");
    let wrapper: Vec<String> = std::env::var("BG_STREAM_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let worker = worker_exe();
    let fake = FakeProvider::start().await;
    let chunks: Vec<String> = (0..DELTAS).map(|i| format!("delta {i:02} ")).collect();
    let steps = vec![
        Step::Text {
            chunks,
            delay_ms: DELTA_GAP_MS,
        };
        runs
    ];
    fake.script(NEEDLE, steps);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = write_spec(NEEDLE, &fake, openai, dir.path());

    let cpu0 = cpu_of_children();
    let t = Instant::now();
    for _ in 0..runs {
        let (program, args) = match wrapper.split_first() {
            Some((tool, args)) => (PathBuf::from(tool), args.to_vec()),
            None => (worker.clone(), Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        if !wrapper.is_empty() {
            cmd.arg(&worker);
        }
        let mut child = tokio::process::Command::from({
            cmd.arg("--spec")
                .arg(&spec)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("ANTHROPIC_API_KEY", "sk-bench")
                .env("OPENAI_API_KEY", "sk-bench")
                .env("MALLOC_ARENA_MAX", "2")
                .stdout(Stdio::null());
            cmd
        })
        .spawn()
        .expect("run worker");
        let status = child.wait().await.expect("wait for the worker");
        assert!(status.success(), "worker run failed: {status}");
    }
    let (user1, sys1) = cpu_of_children();
    let per_run = |d: Duration| d.as_secs_f64() * 1000.0 / runs as f64;
    let (user, sys) = (per_run(user1 - cpu0.0), per_run(sys1 - cpu0.1));
    println!(
        "{runs} worker run(s) ({}), {DELTAS} deltas each: {:.2} ms CPU per run ({user:.2} user + {sys:.2} system), {:.2} s wall per run",
        if openai { "openai" } else { "anthropic" },
        user + sys,
        t.elapsed().as_secs_f64() / runs as f64,
    );
}
