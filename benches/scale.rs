//! The cost per agent at scale: N agents (1,000 unless `BG_SCALE_AGENTS=N`) spawned at
//! once over MCP, each streaming 50 text deltas over 5 s, printed as one table.
//!
//!     cargo build --release --locked --workspace --bins   # as scripts/install.sh builds
//!     cargo bench --bench scale                     # 1,000 agents
//!     BG_SCALE_AGENTS=100 cargo bench --bench scale
//!     BG_SCALE_BIN_DIR=/tmp/before cargo bench --bench scale   # another build's binaries
//!
//! The release server runs as Claude Code runs it (MCP over stdio), its workers against
//! the provider double on 127.0.0.1, which answers every agent with 50 deltas 102 ms
//! apart (4.9 s, "5 s"). What is measured, from the kernel's accounting:
//! - wall: the first `agent_spawn` call until `agent_wait` says all have ended, ÷ 5 s;
//! - server CPU: the server's utime + stime (/proc/PID/stat) over that span, ÷ N;
//! - server memory: the highest VmRSS sampled every 50 ms while the agents live, minus
//!   VmRSS idle (after the handshake), ÷ N; also VmRSS once all have ended;
//! - worker CPU: the server's cutime + cstime (its waited-for children, the workers)
//!   over that span, ÷ N: each worker from exec to exit, with the processes it waits
//!   for (none here: the command sandbox's janitor starts at an agent's first command);
//! - worker peak RSS: the VmHWM of one more worker run by this bench beside the N, the
//!   same binary, spec and 5 s stream, read every 20 ms until it exits; for context the
//!   highest VmHWM among the N workers at 4 s (their peak so far) and the highest
//!   Private_Dirty (/proc/PID/smaps_rollup): RSS counts the binary's and libc's pages,
//!   shared by all workers; the private part is what each one adds.
//!
//! Nothing here asserts a time; numbers go to BENCHMARKS.md. The server needs N × ~5
//! descriptors (three pipes, a pidfd, a transcript per running agent) and raises its own
//! soft RLIMIT_NOFILE to the hard limit; this bench does the same for the double's
//! sockets.

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
use common::{mcp_session, spawn_all, wait_all, worker_run};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use provider::{FakeProvider, Step};

/// Every task contains this, so the double's one rule answers every agent.
const NEEDLE: &str = "scale agent";
const DELTAS: usize = 50;
/// 49 gaps of 102 ms: the last delta comes 5.0 s after the first.
const DELTA_GAP_MS: u64 = 102;
const IDEAL: Duration = Duration::from_secs(5);

/// Where the two binaries are: `BG_SCALE_BIN_DIR` when set (to compare another build's
/// pair, e.g. a copy made before a change), else this build's release directory.
fn bin_dir() -> PathBuf {
    match std::env::var_os("BG_SCALE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_BIN_EXE_bg-agents"))
            .parent()
            .expect("target dir")
            .to_path_buf(),
    }
}

fn server_exe() -> PathBuf {
    bin_dir().join("bg-agents")
}

fn worker_exe() -> PathBuf {
    let w = bin_dir().join("bg-agent-worker");
    assert!(
        w.exists(),
        "{} is missing; run `cargo build --release --locked --workspace --bins` first",
        w.display()
    );
    w
}

/// One field of /proc/PID/status, in KiB (0 when the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    proc_kib(pid, "status", field)
}

/// One field (in KiB) of /proc/PID/`file` (0 when the process is gone).
fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of a process from /proc/PID/stat: (own utime + stime, its waited-for
/// children's cutime + cstime).
fn cpu_times(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    // Fields after the parenthesised command name, which may hold spaces: state is
    // field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().expect("stat field"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as f64;
    let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz);
    (secs(f[0] + f[1]), secs(f[2] + f[3]))
}

/// The pids of `pid`'s children (every thread's), from /proc/PID/task/*/children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn config_text(dir: &Path, agents: usize) -> String {
    format!(
        "[server]\ntranscript_dir = {:?}\nkeep_transcripts = false\nmax_concurrent = {}\nmax_queued = {agents}\nretained_agents = {}\n",
        dir.join("transcripts").display().to_string(),
        agents.min(1024),
        agents.max(1)
    )
}

/// The double's answer to one agent: 50 short deltas, 102 ms apart.
fn stream() -> Step {
    Step::Text {
        chunks: (0..DELTAS).map(|i| format!("delta {i:02} ")).collect(),
        delay_ms: DELTA_GAP_MS,
    }
}

/// One worker like the server's, run from here, and its VmHWM (/proc/PID/status) read
/// every 20 ms until it exits: the last reading is its peak (but for its last 20 ms).
/// Not `ru_maxrss`: a child started by vfork (as std and tokio start one) is charged
/// with this whole process's RSS at its exec.
async fn standalone_worker_peak_rss_kib(fake_url: &str, dir: &Path) -> u64 {
    let mut child = tokio::process::Command::from(worker_run(
        &worker_exe(),
        &format!("{NEEDLE} standalone"),
        fake_url,
        dir,
    ))
    .spawn()
    .expect("run worker");
    let pid = child.id().expect("worker pid");
    let mut peak = 0;
    loop {
        peak = peak.max(status_kib(pid, "VmHWM:"));
        tokio::select! {
            status = child.wait() => {
                let status = status.expect("wait for the worker");
                assert!(status.success(), "worker run failed: {status}");
                return peak;
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// The highest VmRSS of `pid` until `stop` is set, sampled every 50 ms.
fn sample_peak_rss(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(status_kib(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    })
}

struct Measured {
    agents: usize,
    wall: Duration,
    server_cpu: Duration,
    workers_cpu: Duration,
    idle_kib: u64,
    peak_kib: u64,
    ended_kib: u64,
    worker_peak_kib: u64,
    swarm_hwm_kib: u64,
    swarm_private_kib: u64,
}

async fn run(agents: usize) -> Measured {
    let fake = FakeProvider::start().await;
    fake.script(NEEDLE, (0..=agents).map(|_| stream()).collect());
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, pid) = mcp_session(
        &server_exe(),
        &config_text(dir.path(), agents),
        dir.path(),
        &fake,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = status_kib(pid, "VmRSS:");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_peak_rss(pid, stop.clone());
    let (cpu0, children0) = cpu_times(pid);
    let t = Instant::now();

    let fake_url = fake.base_url();
    let standalone = standalone_worker_peak_rss_kib(&fake_url, dir.path());
    let swarm = async {
        let tasks: Vec<String> = (0..agents).map(|i| format!("{NEEDLE} {i}")).collect();
        let ids = spawn_all(&client, &tasks).await;
        let hwm = async {
            tokio::time::sleep(Duration::from_secs(4).saturating_sub(t.elapsed())).await;
            let workers = children(pid);
            let max_of = |file: &str, field: &str| {
                workers
                    .iter()
                    .map(|&c| proc_kib(c, file, field))
                    .max()
                    .unwrap_or(0)
            };
            (
                max_of("status", "VmHWM:"),
                max_of("smaps_rollup", "Private_Dirty:"),
            )
        };
        let ((), hwm) = tokio::join!(wait_all(&client, &ids), hwm);
        (t.elapsed(), hwm)
    };
    let (worker_peak_kib, (wall, (swarm_hwm_kib, swarm_private_kib))) =
        tokio::join!(standalone, swarm);

    let (cpu1, children1) = cpu_times(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = sampler.await.expect("sampler");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended_kib = status_kib(pid, "VmRSS:");
    let _ = client.cancel().await;
    Measured {
        agents,
        wall,
        server_cpu: cpu1.saturating_sub(cpu0),
        workers_cpu: children1.saturating_sub(children0),
        idle_kib,
        peak_kib,
        ended_kib,
        worker_peak_kib,
        swarm_hwm_kib,
        swarm_private_kib,
    }
}

fn print(m: &Measured) {
    let n = m.agents.max(1) as f64;
    let per_ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0 / n);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let per_kib = |kib: u64| format!("{:.0} KiB", kib.saturating_sub(m.idle_kib) as f64 / n);
    let rows = [
        (
            format!("all {} done, ÷ the ideal 5 s", m.agents),
            format!(
                "{:.2}× ({:.2} s)",
                m.wall.as_secs_f64() / IDEAL.as_secs_f64(),
                m.wall.as_secs_f64()
            ),
            "≤ 1.5×",
        ),
        (
            "server CPU per agent".into(),
            format!(
                "{} ({:.2} s in all)",
                per_ms(m.server_cpu),
                m.server_cpu.as_secs_f64()
            ),
            "≤ 1.5 ms",
        ),
        (
            "server memory per agent (peak VmRSS − idle)".into(),
            format!(
                "{} (idle {}, peak {})",
                per_kib(m.peak_kib),
                mib(m.idle_kib),
                mib(m.peak_kib)
            ),
            "≤ 50 KiB",
        ),
        (
            "  … once all have ended (VmRSS − idle)".into(),
            format!("{} ({})", per_kib(m.ended_kib), mib(m.ended_kib)),
            "(records kept)",
        ),
        (
            "worker CPU per agent (exec to exit)".into(),
            format!(
                "{} ({:.2} s in all)",
                per_ms(m.workers_cpu),
                m.workers_cpu.as_secs_f64()
            ),
            "≤ 4 ms",
        ),
        (
            "worker peak RSS (one beside the swarm)".into(),
            mib(m.worker_peak_kib),
            "≤ 5 MiB",
        ),
        (
            "  … highest VmHWM among the swarm at 4 s".into(),
            mib(m.swarm_hwm_kib),
            "(context)",
        ),
        (
            "  … of it private (highest Private_Dirty at 4 s)".into(),
            mib(m.swarm_private_kib),
            "(context)",
        ),
        (
            "  … start-up code placed together (worker/startup.order)".into(),
            startup_order_found(&worker_exe()),
            "(context)",
        ),
    ];
    println!("\n| measurement | result | target |\n| --- | --- | --- |");
    for (what, value, target) in rows {
        println!("| {what} | {value} | {target} |");
    }
}

/// How many of the functions `worker/startup.order` lists the measured worker has, and
/// where they lie in its code (`nm`): the list names them with hashes that change with the
/// compiler and the dependencies, and only lld takes it, so a stale list or a linker that
/// ignored it shows here (found names spread over the code) before it shows as a worker's
/// resident code. scripts/worker-order.sh makes the list again.
fn startup_order_found(worker: &Path) -> String {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/startup.order");
    let Ok(list) = std::fs::read_to_string(&list) else {
        return format!("no list at {}", list.display());
    };
    let nm = std::process::Command::new("nm")
        .args(["--defined-only", "--print-size"])
        .arg(worker)
        .output();
    let symbols = match nm {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => return format!("unknown: nm {}", out.status),
        Err(e) => return format!("unknown: cannot run nm ({e})"),
    };
    // "address size type name" for the functions (types t, T, w, W with a size).
    let code: std::collections::HashMap<&str, (u64, u64)> = symbols
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, size, kind, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let addr = u64::from_str_radix(addr, 16).ok()?;
            let size = u64::from_str_radix(size, 16).ok()?;
            matches!(kind, "t" | "T" | "w" | "W").then_some((name, (addr, addr + size)))
        })
        .collect();
    let (Some(code_start), Some(code_end)) = (
        code.values().map(|r| r.0).min(),
        code.values().map(|r| r.1).max(),
    ) else {
        return "unknown: the worker has no symbols".into();
    };
    let listed: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let found: Vec<(u64, u64)> = listed.iter().filter_map(|n| code.get(n).copied()).collect();
    let mb = |bytes: u64| bytes as f64 / 1e6;
    match (
        found.iter().map(|r| r.0).min(),
        found.iter().map(|r| r.1).max(),
    ) {
        (Some(lo), Some(hi)) => format!(
            "{} of {} listed functions found, in {:.1} MB from {:.1} MB into {:.1} MB of code",
            found.len(),
            listed.len(),
            mb(hi - lo),
            mb(lo - code_start),
            mb(code_end - code_start)
        ),
        _ => format!("none of {} listed functions found", listed.len()),
    }
}

fn main() {
    let agents = std::env::var("BG_SCALE_AGENTS")
        .ok()
        .map(|v| v.parse::<usize>().expect("BG_SCALE_AGENTS is a number"))
        .unwrap_or(1000);
    // The double holds a socket per agent.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the soft RLIMIT_NOFILE: {e}");
    }
    worker_exe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let m = runtime.block_on(run(agents));
    print(&m);
}
