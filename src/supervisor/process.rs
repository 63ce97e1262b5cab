//! Builds and starts one worker process: its own process group, kernel limits, a
//! parent-death signal, a cleared environment; and signals its group.
//!
//! Not here: what the worker prints (`manager` reads it), records (`registry`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;

use bg_agent_worker::config::Limits;
use bg_agent_worker::protocol::ProviderSpec;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Seconds between the soft CPU limit (SIGXCPU) and the hard one (SIGKILL).
pub const CPU_HARD_MARGIN_SECS: u64 = 5;

/// Environment variables every worker may see; everything else is cleared.
const ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    // TLS roots and proxies, so a worker reaches its provider where the server could.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "cannot find the worker executable bg-agent-worker: [server] worker.path is {configured}, not next to the server ({beside}), not on PATH; install both binaries (see README) or set [server] worker.path to an executable"
    )]
    WorkerNotFound { beside: String, configured: String },
    #[error("cannot start the worker {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the process spawner thread is gone; restart the server")]
    SpawnerGone,
}

/// Finds the worker: at `configured` ([server] worker.path) when set, else next to our
/// own executable, else on PATH. A configured path that is not executable is an error,
/// never silently replaced by another binary.
pub fn locate_worker(configured: &str) -> Result<PathBuf, SpawnError> {
    const NAME: &str = "bg-agent-worker";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(NAME)));
    let not_found = || SpawnError::WorkerNotFound {
        beside: beside
            .as_ref()
            .map_or("unknown".into(), |p| p.display().to_string()),
        configured: if configured.is_empty() {
            "unset".into()
        } else {
            configured.to_string()
        },
    };
    if !configured.is_empty() {
        let p = PathBuf::from(configured);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(not_found())
        };
    }
    if let Some(p) = beside.as_ref().filter(|p| is_executable(p)) {
        return Ok(p.clone());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(NAME))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The worker's environment: the allowlist, the provider's own variables, and
/// MALLOC_ARENA_MAX=2 so glibc arenas do not eat the RLIMIT_AS budget.
pub fn worker_env(provider: &ProviderSpec) -> Vec<(String, OsString)> {
    let mut names: Vec<&str> = ENV_ALLOWLIST.to_vec();
    names.extend(provider.api_key_env.as_deref());
    names.extend(provider.base_url_env.as_deref());
    let mut env: Vec<(String, OsString)> = names
        .into_iter()
        .filter_map(|n| std::env::var_os(n).map(|v| (n.to_string(), v)))
        .collect();
    env.push(("MALLOC_ARENA_MAX".into(), "2".into()));
    env
}

/// A command for `exe` with piped stdio, its own process group, a cleared environment,
/// and the kernel limits applied between fork and exec.
pub fn command(
    exe: &Path,
    args: &[&str],
    env: Vec<(String, OsString)>,
    cwd: &Path,
    limits: &Limits,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let cpu = limits.cpu_seconds;
    let mem = limits.memory_mb.saturating_mul(1024 * 1024);
    let nofile = limits.open_files;
    let fsize = limits.max_file_mb.saturating_mul(1024 * 1024);
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called. Each call below is a single raw system
    // call with no allocation and no locks: setrlimit(2) (through rlimit, which passes
    // the plain struct), prctl(2) and getppid(2).
    unsafe {
        cmd.pre_exec(move || {
            use rlimit::{Resource, setrlimit};
            // setrlimit(2): async-signal-safe.
            setrlimit(Resource::CPU, cpu, cpu + CPU_HARD_MARGIN_SECS)?;
            setrlimit(Resource::AS, mem, mem)?;
            setrlimit(Resource::NOFILE, nofile, nofile)?;
            setrlimit(Resource::FSIZE, fsize, fsize)?;
            setrlimit(Resource::CORE, 0, 0)?;
            // prctl(2): SIGKILL the worker when the thread that forked it dies.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // getppid(2): if the server died before prctl took effect, the signal will
            // never come; exit now instead of running orphaned.
            if nix::unistd::getppid().as_raw() != parent {
                return Err(std::io::Error::other("the server exited during spawn"));
            }
            Ok(())
        });
    }
    cmd
}

/// A request to fork from the spawner thread.
struct Job {
    cmd: Command,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

/// Forks workers from one dedicated thread that lives as long as the server.
/// PR_SET_PDEATHSIG fires when the *forking thread* exits; tokio's blocking threads
/// retire after idling, so forking from one of them would kill healthy workers.
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    pub fn new(runtime: tokio::runtime::Handle) -> std::io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("bg-agents-spawner".into())
            .spawn(move || {
                // tokio's process driver needs a runtime context to register the child.
                let _guard = runtime.enter();
                while let Ok(mut job) = rx.recv() {
                    let _ = job.reply.send(job.cmd.spawn());
                }
            })?;
        Ok(Spawner { jobs: tx })
    }

    pub async fn spawn(&self, cmd: Command, exe: &Path) -> Result<Child, SpawnError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job { cmd, reply })
            .map_err(|_| SpawnError::SpawnerGone)?;
        rx.await
            .map_err(|_| SpawnError::SpawnerGone)?
            .map_err(|source| SpawnError::Exec {
                path: exe.to_path_buf(),
                source,
            })
    }
}

/// Sends `sig` to the whole process group led by `pid`. A group already gone is fine.
pub fn signal_group(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

/// Whether any process of the group led by `pid` is still alive.
pub fn group_alive(pid: u32) -> bool {
    killpg(Pid::from_raw(pid as i32), None).is_ok()
}
