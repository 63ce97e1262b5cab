//! Helpers for driving the supervisor directly: a `Manager` whose agents run the
//! misbehaving `examples/test_worker`, and what /proc says about our children.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bg_agent_worker::config::{Config, ConfigSource};
use bg_agent_worker::resolve::SpawnRequest;
use bg_agent_worker::values::LimitsOverride;
use bg_agents::supervisor::request::{RequestError, SpawnAgent, Wait, WhenUnset};
use bg_agents::supervisor::{Manager, Status};
use bg_agents::supervisor::{ManagerError, OutputPage, OutputQuery, SpawnView, StatusView};
use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Longest a test waits for anything; far above what any step needs.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Tests that count this process's children or file descriptors take it exclusively;
/// every other test that starts processes holds it shared, so the counts are not
/// disturbed by a neighbour running in another thread of the same test binary.
static PROCESS_TABLE: RwLock<()> = RwLock::const_new(());

pub async fn shared() -> RwLockReadGuard<'static, ()> {
    PROCESS_TABLE.read().await
}

pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    PROCESS_TABLE.write().await
}

/// `target/<profile>/examples/test_worker`, which `cargo test` builds; found from this
/// test binary at `target/<profile>/deps/<test>`.
pub fn test_worker() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let worker = profile_dir.join("examples").join("test_worker");
    assert!(
        worker.is_file(),
        "{} is missing; `cargo test` builds it from examples/test_worker.rs",
        worker.display()
    );
    worker
}

/// A manager with its own temp dir (transcripts, agents' cwd) and kill grace of 200 ms.
pub struct Harness {
    pub manager: Manager,
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// A manager running `test_worker`; `server` holds extra `[server]` lines (not
    /// `worker.path`, `transcript_dir` or `kill_grace_ms`).
    pub fn new(server: &str) -> Harness {
        Harness::with_worker(&test_worker(), server)
    }

    pub fn with_worker(worker: &Path, server: &str) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let transcripts = dir.path().join("transcripts");
        Harness::with_dirs(dir, worker, &transcripts, server)
    }

    /// A manager running `test_worker` whose transcripts go under `transcripts`.
    pub fn with_transcript_dir(transcripts: &Path, server: &str) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        Harness::with_dirs(dir, &test_worker(), transcripts, server)
    }

    fn with_dirs(
        dir: tempfile::TempDir,
        worker: &Path,
        transcripts: &Path,
        server: &str,
    ) -> Harness {
        // The test worker calls no API: its provider needs no key.
        let toml = format!(
            "[server]\nworker.path = {:?}\ntranscript_dir = {:?}\nkill_grace_ms = 200\n{server}\n\
             [providers.anthropic]\napi_key_env = \"\"\n",
            worker.display().to_string(),
            transcripts.display().to_string(),
        );
        let config = Config::from_layers(Some(&toml), ConfigSource::Builtin)
            .unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
        let manager = Manager::new(Arc::new(config)).expect("manager");
        Harness { manager, dir }
    }

    /// A request for `mode` in the harness's dir; the wall clock stays short enough that a
    /// broken test cannot leave a worker behind for long.
    pub fn request(&self, mode: &str, limits: LimitsOverride) -> SpawnRequest {
        SpawnRequest {
            task: mode.to_string(),
            cwd: Some(self.dir.path().to_path_buf()),
            limits: LimitsOverride {
                timeout_seconds: limits.timeout_seconds.or(Some(120)),
                ..limits
            },
            ..Default::default()
        }
    }

    pub async fn try_spawn(
        &self,
        mode: &str,
        limits: LimitsOverride,
    ) -> Result<SpawnView, ManagerError> {
        let spawn = SpawnAgent {
            request: self.request(mode, limits),
            label: None,
        };
        match self.manager.spawn_agent(spawn).await {
            Ok(view) => Ok(view),
            Err(RequestError::Manager(e)) => Err(e),
            Err(e) => panic!("the harness asks for a valid spawn: {e}"),
        }
    }

    /// A wait of `PATIENCE` (within `max_wait_seconds`), as `wait_agents` takes it.
    pub fn patience(&self) -> Wait {
        self.manager
            .wait_within(Some(PATIENCE.as_secs_f64()), WhenUnset::NoWait)
            .expect("PATIENCE is a valid wait")
    }

    /// Spawns `mode` with default limits; returns the agent id.
    pub async fn spawn(&self, mode: &str) -> String {
        self.spawn_with(mode, LimitsOverride::default()).await
    }

    pub async fn spawn_with(&self, mode: &str, limits: LimitsOverride) -> String {
        self.try_spawn(mode, limits)
            .await
            .unwrap_or_else(|e| panic!("spawn {mode}: {e}"))
            .agent_id
    }

    pub fn status(&self, id: &str) -> StatusView {
        self.manager.status(id).expect("status of a known agent")
    }

    /// Waits for the worker's `ready: MODE` line, so it is set up (handlers installed).
    pub async fn wait_ready(&self, id: &str) -> OutputPage {
        let q = OutputQuery {
            max_bytes: usize::MAX,
            ..Default::default()
        };
        let page = self
            .manager
            .wait_output(id, &q, PATIENCE)
            .await
            .expect("output of a known agent");
        assert!(
            page.text.starts_with("ready: "),
            "{id} not ready: {page:?}\n{:?}",
            self.status(id)
        );
        assert_eq!(page.status, Status::Running, "{page:?}");
        page
    }

    /// Waits for the agent's end; fails the test if it does not come.
    pub async fn wait_end(&self, id: &str) -> StatusView {
        let st = self
            .manager
            .wait_status(id, PATIENCE)
            .await
            .expect("status of a known agent");
        assert!(st.status.is_terminal(), "{id} did not end: {st:?}");
        st
    }

    /// Every output line, unfiltered.
    pub fn read_all(&self, id: &str) -> OutputPage {
        self.manager
            .output(
                id,
                &OutputQuery {
                    max_bytes: usize::MAX,
                    ..Default::default()
                },
            )
            .expect("output of a known agent")
    }
}

/// One `/proc/<pid>/stat` line: its state letter and parent pid.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
    let mut rest = text[text.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Our children (by /proc) that are zombies: exited and never reaped.
pub fn zombie_children() -> Vec<u32> {
    children_where(|state| state == 'Z')
}

/// Whether `pid` is still a child of this process, running or zombie.
pub fn is_our_child(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, ppid)| ppid == std::process::id())
}

fn children_where(keep: impl Fn(char) -> bool) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(s, ppid)| ppid == me && keep(s)))
        .collect()
}

/// Whether the process group `pgid` has no member left (kill(-pgid, 0) → ESRCH).
pub fn group_gone(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None) == Err(Errno::ESRCH)
}

/// This process's open file descriptors, counted by kind: `pipe`, `file`, `socket`,
/// `anon_inode`, ... (what /proc/self/fd links to).
pub fn open_fds() -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // the fd of this read_dir itself, already closed
        };
        let target = target.display().to_string();
        let kind = if target.starts_with('/') {
            "file"
        } else {
            target.split(':').next().unwrap_or("other")
        };
        *kinds.entry(kind.to_string()).or_insert(0) += 1;
    }
    kinds
}
