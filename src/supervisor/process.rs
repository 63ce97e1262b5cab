//! Builds and starts one worker process: its own process group, kernel limits, a
//! parent-death signal, a cleared environment; awaits its exit; signals its group;
//! reads its pipes through one buffer per thread (`read_pipe`).
//!
//! The clone-and-exec itself, the only unsafe code between a `Plan` and a running
//! child, is in `clone_exec`.
//!
//! Not here: what the worker prints means (`manager` parses it), records (`registry`).

mod clone_exec;
mod handoff;

use std::collections::HashMap;
use std::ffi::CString;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bg_agent_worker::protocol::ProviderSpec;
use bg_agent_worker::values::Limits;
use nix::libc;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use self::clone_exec::{Started, clone_exec};
use self::handoff::{Outbox, Waiting};

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
    #[error(
        "limits.{key} = {value} is above what this server may grant: its own hard {resource} allows at most {max}; ask for {max} or less (or start the server with a higher hard limit)"
    )]
    AboveHardLimit {
        key: &'static str,
        value: u64,
        max: u64,
        resource: &'static str,
    },
}

/// Finds the worker: at `configured` ([server] worker.path) when set, else next to our
/// own executable, else on PATH. A configured path that is not executable is an error,
/// never silently replaced by another binary.
pub fn locate_worker(configured: &str) -> Result<PathBuf, SpawnError> {
    const NAME: &str = "bg-agent-worker";
    let beside = || {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(NAME)))
    };
    let not_found = || SpawnError::WorkerNotFound {
        beside: beside().map_or("unknown".into(), |p| p.display().to_string()),
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
    if let Some(p) = beside().filter(|p| is_executable(p)) {
        return Ok(p);
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

/// Everything needed to start one worker, converted to C strings up front: the child
/// runs on borrowed memory between clone and exec and may not allocate.
pub struct Plan {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    limits: [(rlimit::Resource, u64, u64); 5],
}

fn c_string(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument, path or variable holds a NUL byte",
        )
    })
}

impl Plan {
    /// `exe args…` with exactly `env`, in `cwd`, under `limits` (RLIMIT_CPU soft =
    /// cpu_seconds and hard a few seconds later, so SIGXCPU comes first; RLIMIT_AS,
    /// RLIMIT_NOFILE, RLIMIT_FSIZE; no core dumps).
    pub fn new(
        exe: &Path,
        args: &[&str],
        env: Vec<(String, OsString)>,
        cwd: &Path,
        limits: &Limits,
    ) -> std::io::Result<Plan> {
        let exe_c = c_string(exe.as_os_str().as_bytes())?;
        let mut argv = vec![exe_c.clone()];
        for a in args {
            argv.push(c_string(a.as_bytes())?);
        }
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(&kv)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        use rlimit::Resource;
        let cpu = limits.cpu_seconds;
        let mem = limits.memory_mb.saturating_mul(1024 * 1024);
        let fsize = limits.max_file_mb.saturating_mul(1024 * 1024);
        let nofile = limits.open_files;
        Ok(Plan {
            exe: exe_c,
            argv,
            envp,
            cwd: c_string(cwd.as_os_str().as_bytes())?,
            limits: [
                (Resource::CPU, cpu, cpu + CPU_HARD_MARGIN_SECS),
                (Resource::AS, mem, mem),
                (Resource::NOFILE, nofile, nofile),
                (Resource::FSIZE, fsize, fsize),
                (Resource::CORE, 0, 0),
            ],
        })
    }
}

/// A running worker process: its pipes and a pidfd to await its exit without polling.
/// Dropped unreaped, it is killed (its whole group) and reaped.
pub struct Worker {
    pub pid: u32,
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
    reaped: bool,
}

impl Worker {
    fn from_started(s: Started) -> std::io::Result<Worker> {
        Ok(Worker {
            pid: s.pid as u32,
            stdin: Some(tokio::net::unix::pipe::Sender::from_owned_fd(s.stdin)?),
            stdout: Some(tokio::net::unix::pipe::Receiver::from_owned_fd(s.stdout)?),
            stderr: Some(tokio::net::unix::pipe::Receiver::from_owned_fd(s.stderr)?),
            // SAFETY: the OwnedFd is moved in, stays open and is only closed when the
            // AsyncFd is dropped.
            pidfd: unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    s.pidfd,
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|e| e.into_parts().1)?,
            reaped: false,
        })
    }

    /// Waits for the process to exit, ends whatever is left in its group, and reaps it.
    /// The group is signalled while the exited leader is still unreaped (a zombie), so
    /// its number cannot yet name another process's group.
    pub async fn wait(&mut self) -> std::io::Result<Exit> {
        loop {
            let mut ready = self.pidfd.readable().await?;
            if has_exited(self.pid)? {
                signal_group(self.pid, Signal::SIGKILL);
                let (status, cpu) = reap_with_rusage(self.pid)?;
                self.reaped = true;
                return Ok(Exit { status, cpu });
            }
            ready.clear_ready();
        }
    }
}

/// How a worker ended: its wait status and the CPU time it used (user + system).
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: ExitStatus,
    pub cpu: Duration,
}

/// Whether our child `pid` has exited, without reaping it (waitid with WNOWAIT).
fn has_exited(pid: u32) -> std::io::Result<bool> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Reaps our exited child `pid`, returning its wait status and the CPU time it used.
fn reap_with_rusage(pid: u32) -> std::io::Result<(ExitStatus, Duration)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4(2) to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4(2) on our own child, which has exited (so this does not block),
    // with pointers to two locals.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if r != pid as libc::pid_t {
        return Err(std::io::Error::last_os_error());
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok((
        ExitStatus::from_raw(status),
        time(usage.ru_utime) + time(usage.ru_stime),
    ))
}

/// The first per-agent kernel limit in `limits` above this server's own hard limit (a
/// child can never be given more): (key, value asked, the most it can be, resource).
pub fn first_above_hard_limits(limits: &Limits) -> Option<(&'static str, u64, u64, &'static str)> {
    use rlimit::Resource;
    let mb = 1024 * 1024;
    let asked = [
        (
            "cpu_seconds",
            limits.cpu_seconds,
            Resource::CPU,
            CPU_HARD_MARGIN_SECS,
            1,
            "RLIMIT_CPU",
        ),
        (
            "memory_mb",
            limits.memory_mb,
            Resource::AS,
            0,
            mb,
            "RLIMIT_AS",
        ),
        (
            "open_files",
            limits.open_files,
            Resource::NOFILE,
            0,
            1,
            "RLIMIT_NOFILE",
        ),
        (
            "max_file_mb",
            limits.max_file_mb,
            Resource::FSIZE,
            0,
            mb,
            "RLIMIT_FSIZE",
        ),
    ];
    asked
        .into_iter()
        .find_map(|(key, value, resource, margin, unit, name)| {
            let (_, hard) = rlimit::getrlimit(resource).ok()?;
            if hard == rlimit::INFINITY {
                return None;
            }
            let needed = value.saturating_mul(unit).saturating_add(margin);
            (needed > hard).then(|| (key, value, hard.saturating_sub(margin) / unit, name))
        })
}

impl Drop for Worker {
    /// Kills the group and reaps the worker without blocking the caller (a runtime
    /// thread): a process that does not die at once is reaped by a thread of its own.
    fn drop(&mut self) {
        if !self.reaped {
            handoff::kill_and_reap(self.pid as libc::pid_t);
        }
    }
}

/// A request to start a worker from the spawner thread.
struct Job {
    id: u64,
    plan: Plan,
}

/// Starts workers on a thread that lives as long as the server's workers, with a
/// descriptor table of its own (`handoff`): each clone copies, and each exec closes, a
/// handful of descriptors rather than every one the server holds (about five per running
/// agent), and the server's thread is not held in the vfork window. PR_SET_PDEATHSIG
/// fires when the *thread* that cloned the worker exits; this one ends only when the
/// `Spawner` is dropped, with the manager, after its workers.
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
    waiting: Waiting<Worker>,
    next_id: AtomicU64,
}

impl Spawner {
    /// Starts the spawner thread, and the task on the current tokio runtime that
    /// receives the workers it starts.
    pub fn new() -> std::io::Result<Spawner> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (outbox, socket) = handoff::channel()?;
        let waiting: Waiting<Worker> = Arc::new(Mutex::new(Some(HashMap::new())));
        handoff::receive(socket, waiting.clone(), Worker::from_started)?;
        std::thread::Builder::new()
            .name("bg-agents-spawner".into())
            .spawn(move || spawner_thread(rx, outbox))?;
        Ok(Spawner {
            jobs,
            waiting,
            next_id: AtomicU64::new(0),
        })
    }

    /// Starts `plan` on the spawner thread. Cancelled before it returns, the worker it
    /// started is killed (dropped where it arrives).
    pub async fn start(&self, plan: Plan, exe: &Path) -> Result<Worker, SpawnError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, started) = tokio::sync::oneshot::channel();
        handoff::lock(&self.waiting)
            .as_mut()
            .ok_or(SpawnError::SpawnerGone)?
            .insert(id, reply);
        if self.jobs.send(Job { id, plan }).is_err() {
            handoff::lock(&self.waiting).as_mut().map(|w| w.remove(&id));
            return Err(SpawnError::SpawnerGone);
        }
        started
            .await
            .map_err(|_| SpawnError::SpawnerGone)?
            .map_err(|source| SpawnError::Exec {
                path: exe.to_path_buf(),
                source,
            })
    }
}

/// The spawner thread: every signal blocked, its own descriptor table, then one clone
/// per job, whose outcome goes to the runtime over the socket. It must not log, handle
/// a signal or wake the runtime (see `handoff`).
fn spawner_thread(jobs: mpsc::Receiver<Job>, outbox: Outbox) {
    // No signal is ever handled on this thread: a handler (tokio's writes a byte to a
    // socket of the server's table) would use a descriptor number that means something
    // else here, and the runtime would never hear of the signal. The reaping threads it
    // may start inherit the mask; each child unblocks everything before exec.
    clone_exec::block_all_signals_in_this_thread();
    if let Err(e) = handoff::own_descriptor_table(&outbox) {
        // Still sharing the server's table, so logging is safe here.
        tracing::warn!(
            "the spawner thread shares the server's descriptor table ({e}): each spawn copies it"
        );
    }
    while let Ok(job) = jobs.recv() {
        outbox.send(job.id, clone_exec(&job.plan));
    }
}

/// Bytes a pipe read takes at most.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The buffer every pipe read on this thread goes through (`read_pipe`).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Waits until `pipe` has bytes and hands what one read gets (at most 64 KiB) to `take`;
/// None at end of file. The bytes are in a buffer shared by every read on this thread,
/// valid only during `take`, which must not read a pipe itself. A buffer of its own in
/// each pipe's reading task (64 KiB for stdout, 16 KiB for stderr) was most of the
/// server's memory per running agent, and stayed in its heap after the agents ended.
pub async fn read_pipe<R>(
    pipe: &tokio::net::unix::pipe::Receiver,
    mut take: impl FnMut(&[u8]) -> R,
) -> std::io::Result<Option<R>> {
    loop {
        pipe.readable().await?;
        let read = READ_BUF.with_borrow_mut(|buf| {
            buf.resize(READ_CHUNK, 0);
            match pipe.try_read(buf) {
                Ok(0) => Ok(Some(None)),
                Ok(n) => Ok(Some(Some(take(&buf[..n])))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        if let Some(read) = read {
            return Ok(read);
        }
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
