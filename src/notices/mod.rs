//! Completion notices: how an agent's end reaches the model without polling.
//!
//! The server writes one small file per ended agent into a per-session directory; the
//! Claude Code hooks (`bg-agents hook …`, see `hook`) and the server's own tool replies
//! claim them. Claiming is an unlink: whoever removes the file delivers the notice, so
//! each notice reaches the model once, whichever way it goes.
//!
//! An agent spawned as an MCP task (`mcp::tasks`) is the exception: the client tells its
//! first end through the task (Claude Code's `<task-notification>`), so the board holds a
//! *task claim* on it: no notice is posted for that end, and the `Stop` hook is not told
//! it runs (the client already tracks it). Later rounds (agent_send) are told as notices.
//!
//! Layout under the base directory (`$XDG_RUNTIME_DIR/bg-agents`, else
//! `/dev/shm/bg-agents-UID`, else a private `run` directory under the state directory;
//! `base_dir`), keyed by Claude Code's session id (the
//! server's `CLAUDE_CODE_SESSION_ID`, the hook's `session_id`):
//!
//! ```text
//! <session>/<server pid>/n-<seq>-<agent id>.json   a notice not yet delivered
//! <session>/<server pid>/state.json                agents not ended, the Stop hook mode, the wait limit
//! <session>/<server pid>/reminded                  agent ids the Stop hook already named
//! ```
//!
//! Directories are 0700 and files 0600; a directory that is a symlink, or belongs to
//! another user, is refused. A server removes its own directory when it exits: its
//! notices point to agent records that die with it (`agent_status` could not answer).
//!
//! Std only (plus nix for the owner checks): the hook runs after every tool call and
//! must not pay for a runtime or the configuration.

pub mod hook;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bg_agent_worker::config::StopHook;
use serde::{Deserialize, Serialize};

pub use crate::private_fs::check_private_dir;
use crate::private_fs::{ensure_private_dir, path_is_ours};
use crate::supervisor::{LiveAgent, Status};

/// Environment variable through which Claude Code gives an MCP server its session id.
pub const SESSION_ENV: &str = "CLAUDE_CODE_SESSION_ID";
/// Characters of a result (or error) shown in a notice.
const PREVIEW_CHARS: usize = 160;
/// Characters of a label shown in a notice.
const LABEL_CHARS: usize = 60;
const STATE_FILE: &str = "state.json";
const REMINDED_FILE: &str = "reminded";
const NOTICE_PREFIX: &str = "n-";
/// Most notices delivered at once (a hook's context or one tool reply); the rest stay
/// pending for the next delivery, so a burst of ends never floods the model.
pub const MAX_NOTICES: usize = 20;

/// One agent's end, as the model is told about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub status: Status,
    /// The first line of the result (or the error), shortened.
    pub preview: String,
}

impl Notice {
    pub fn new(agent_id: &str, label: Option<&str>, status: Status, text: Option<&str>) -> Notice {
        Notice {
            agent_id: agent_id.to_string(),
            label: label
                .map(|l| one_line(l, LABEL_CHARS))
                .filter(|l| !l.is_empty()),
            status,
            preview: text.map(first_line_preview).unwrap_or_default(),
        }
    }

    /// `a-7f3k2 (auth flow) completed: The session is created in …`
    pub fn line(&self) -> String {
        let mut s = self.agent_id.clone();
        if let Some(l) = &self.label {
            s.push_str(&format!(" ({l})"));
        }
        s.push(' ');
        s.push_str(self.status.as_str());
        if !self.preview.is_empty() {
            s.push_str(": ");
            s.push_str(&self.preview);
        }
        s
    }
}

/// How to read the whole of what notices preview.
pub fn read_more(notices: &[Notice]) -> String {
    let id = match notices {
        [one] => one.agent_id.as_str(),
        _ => "<id>",
    };
    format!("Read the whole result with agent_status {{\"agent_id\": \"{id}\"}}.")
}

/// The notices as one block of text for the model; `left` more are still pending.
pub fn render(notices: &[Notice], left: usize) -> String {
    let n = notices.len();
    let mut s = format!(
        "bg-agents: {n} background agent{} ended:\n",
        if n == 1 { "" } else { "s" }
    );
    for notice in notices {
        s.push_str("- ");
        s.push_str(&notice.line());
        s.push('\n');
    }
    if left > 0 {
        s.push_str(&format!(
            "- and {left} more: told with your next tool call, or see them all now with agent_list {{\"status\": \"completed\"}} (or another status)\n"
        ));
    }
    s.push_str(&read_more(notices));
    s
}

/// Claims up to `max` of the notice files `paths` (oldest first); returns the notices and
/// how many files are left pending.
pub fn claim_some(paths: &[PathBuf], max: usize) -> (Vec<Notice>, usize) {
    let mut notices = Vec::new();
    let mut rest = paths.iter();
    for p in rest.by_ref() {
        if let Some(n) = claim(p) {
            notices.push(n);
            if notices.len() == max {
                break;
            }
        }
    }
    (notices, rest.len())
}

/// What a server publishes for the `Stop` hook, which reads no configuration itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// `[server] stop_hook`.
    pub stop_hook: StopHook,
    /// `[server] max_wait_seconds`: the longest one agent_wait blocks, which the hook
    /// tells the model. Absent in the state of a server older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_seconds: Option<u64>,
    /// Agents not ended yet (queued or running), oldest first.
    pub agents: Vec<LiveAgent>,
}

/// The directory under which every session's notices live: under `$XDG_RUNTIME_DIR`, else
/// in shared memory (`/dev/shm/bg-agents-UID`, `shared_memory_dir`), else the state
/// directory, else the temp dir; each only when no other user can swap a directory on
/// its path (a swapped board would let them put notices before the model).
///
/// Notices are small files made and removed at every agent's end: on a tmpfs that costs
/// no disk. Where `XDG_RUNTIME_DIR` is unset (containers, CI, `su` sessions), /dev/shm
/// is the tmpfs at hand; on ext4 each notice allocated an inode, and with many agents
/// ending (inodes freed and reallocated) that was a third of the server's CPU time.
pub fn base_dir() -> PathBuf {
    base_dir_from(
        |name| std::env::var_os(name),
        path_is_ours,
        shared_memory_dir,
    )
}

/// `base_dir` with the environment, the ownership check and the shared-memory
/// candidate given.
fn base_dir_from(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ours: impl Fn(&Path) -> bool,
    shared_memory: impl Fn() -> Option<PathBuf>,
) -> PathBuf {
    let env_dir = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(run) = env_dir("XDG_RUNTIME_DIR").filter(|r| ours(r)) {
        return run.join("bg-agents");
    }
    if let Some(shm) = shared_memory().filter(|d| d.parent().is_some_and(&ours)) {
        return shm;
    }
    let state = match env_dir("XDG_STATE_HOME") {
        Some(s) => Some(s).filter(|s| nearest_existing(s).is_some_and(&ours)),
        None => env_dir("HOME")
            .filter(|h| ours(h))
            .map(|h| h.join(".local/state")),
    };
    match state {
        Some(s) => s.join("bg-agents").join("run"),
        None => std::env::temp_dir().join(format!("bg-agents-{}", nix::unistd::geteuid())),
    }
}

/// `/dev/shm/bg-agents-UID` when /dev/shm is a tmpfs and that name is free or already a
/// directory of this user (one another user made first is passed over, not fought for).
fn shared_memory_dir() -> Option<PathBuf> {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    use std::os::unix::fs::MetadataExt;
    let shm = Path::new("/dev/shm");
    let on_tmpfs = statfs(shm).is_ok_and(|fs| fs.filesystem_type() == TMPFS_MAGIC);
    if !on_tmpfs {
        return None;
    }
    let me = nix::unistd::geteuid();
    let dir = shm.join(format!("bg-agents-{me}"));
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(dir),
        Ok(m) if m.is_dir() && m.uid() == me.as_raw() => Some(dir),
        _ => None,
    }
}

/// `path` or its nearest ancestor that exists.
fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

/// Whether `id` can name a session directory: Claude Code's ids are UUIDs.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Creates `path` (0600) with `contents`, atomically: readers see all of it or nothing.
fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(contents)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

/// Reads a small file without following a symlink; None if it is absent or unreadable.
fn read_small(path: &Path) -> Option<String> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut s = String::new();
    Read::take(&mut f, 1 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// Claims the notice at `path`: Some only for the one caller whose unlink succeeded.
fn claim(path: &Path) -> Option<Notice> {
    let text = read_small(path)?;
    std::fs::remove_file(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Pending notice files of one server directory, oldest first.
fn notice_files(server_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(server_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(NOTICE_PREFIX))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The agent id in a notice file name `n-<seq>-<agent id>.json`.
fn agent_of(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix(NOTICE_PREFIX)?.strip_suffix(".json")?;
    rest.split_once('-').map(|(_, id)| id)
}

/// Directories of this session's servers that are still running.
fn live_server_dirs(session_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(session_dir) else {
        return Vec::new();
    };
    // A server's directory is a real directory of ours, never a symlink (as the server
    // checks its own): one that is not is skipped, never followed.
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            (process_alive(pid) && check_private_dir(&e.path()).is_ok()).then(|| e.path())
        })
        .collect();
    dirs.sort();
    dirs
}

fn process_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(Errno::ESRCH)
        )
}

/// One server's notices and state, in `<base>/<session>/<pid>/`.
pub struct NoticeBoard {
    session_dir: PathBuf,
    dir: PathBuf,
    seq: AtomicU64,
    /// Agents whose first end an MCP task tells: no notice for it, no Stop-hook hold.
    task_claims: Mutex<HashSet<String>>,
    /// Woken when a task claim is added, so the published state drops that agent.
    claims_changed: tokio::sync::Notify,
}

impl NoticeBoard {
    /// The board of this server for `session` (the client's session id, or a name of
    /// the server's own when the client gives none): its directory is created private,
    /// and directories of servers that died without cleaning up are removed.
    pub fn open(base: &Path, session: &str) -> io::Result<NoticeBoard> {
        if !valid_session_id(session) {
            return Err(io::Error::other(format!(
                "session id `{session}` is not 1 to 128 letters, digits, `-` or `_`"
            )));
        }
        if let Some(parent) = base.parent() {
            std::fs::create_dir_all(parent)?;
        }
        ensure_private_dir(base)?;
        sweep_dead_servers(base);
        let session_dir = base.join(session);
        let dir = session_dir.join(std::process::id().to_string());
        // Another server's sweep removes every empty session directory, so this one may
        // vanish while it is made and checked, or before this server's directory is made
        // in it (a board lost, and every notice of the session with it); once that
        // exists, the session's is not empty and stays. So the two are made again when
        // one vanished underneath (not found, or "exists" from a make that then finds
        // no directory).
        let mut tries = 0;
        loop {
            let made = ensure_private_dir(&session_dir).and_then(|()| ensure_private_dir(&dir));
            match made {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                    ) && tries < 20 =>
                {
                    tries += 1
                }
                made => break made?,
            }
        }
        Ok(NoticeBoard {
            session_dir,
            dir,
            seq: AtomicU64::new(0),
            task_claims: Mutex::default(),
            claims_changed: tokio::sync::Notify::new(),
        })
    }

    /// This server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves `notice` for the next hook or tool reply.
    pub fn post(&self, notice: &Notice) -> io::Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NOTICE_PREFIX}{seq:010}-{}.json", notice.agent_id);
        let body = serde_json::to_vec(notice).map_err(io::Error::other)?;
        write_atomic(&self.dir, &name, &body)
    }

    /// Claims up to `MAX_NOTICES` notices of this server not yet delivered, oldest
    /// first; also returns how many are left pending.
    pub fn take_pending(&self) -> (Vec<Notice>, usize) {
        claim_some(&notice_files(&self.dir), MAX_NOTICES)
    }

    /// Claims and drops the notices of `agent_ids` (the model has just seen their end).
    pub fn discard(&self, agent_ids: &HashSet<&str>) {
        if agent_ids.is_empty() {
            return;
        }
        for path in notice_files(&self.dir) {
            if agent_of(&path).is_some_and(|id| agent_ids.contains(id)) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Hands the end of `agent_id`'s first round to an MCP task: no notice will be posted
    /// for it (one already posted is withdrawn), and the `Stop` hook no longer counts it.
    pub fn leave_to_task(&self, agent_id: &str) {
        self.claims().insert(agent_id.to_string());
        self.discard(&HashSet::from([agent_id]));
        self.claims_changed.notify_one();
    }

    /// Whether an MCP task tells the coming end of `agent_id`.
    pub fn told_by_task(&self, agent_id: &str) -> bool {
        self.claims().contains(agent_id)
    }

    /// Takes the task claim on `agent_id`'s end, if any: true when the task tells this
    /// end (so no notice is posted), after which its later rounds are told as notices.
    pub fn take_task_claim(&self, agent_id: &str) -> bool {
        self.claims().remove(agent_id)
    }

    /// Resolves when a task claim was added since the last call.
    pub async fn claims_changed(&self) {
        self.claims_changed.notified().await;
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.task_claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes what the `Stop` hook needs to know.
    pub fn publish_state(&self, state: &ServerState) -> io::Result<()> {
        let body = serde_json::to_vec(state).map_err(io::Error::other)?;
        write_atomic(&self.dir, STATE_FILE, &body)
    }

    /// Removes this server's directory, and the session's when no other server uses it.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(&self.session_dir);
    }
}

/// Removes the directories of servers that are gone (killed before they could clean up).
fn sweep_dead_servers(base: &Path) {
    let Ok(sessions) = std::fs::read_dir(base) else {
        return;
    };
    for session in sessions.filter_map(Result::ok) {
        let Ok(servers) = std::fs::read_dir(session.path()) else {
            continue;
        };
        for server in servers.filter_map(Result::ok) {
            let dead = server
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .is_some_and(|pid| !process_alive(pid));
            if dead {
                let _ = std::fs::remove_dir_all(server.path());
            }
        }
        let _ = std::fs::remove_dir(session.path());
    }
}

/// Whitespace collapsed to single spaces, at most `max` characters (… when cut).
fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        flat.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// The first non-empty line of `text`, shortened; "…" marks that more follows.
fn first_line_preview(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let Some(first) = lines.next() else {
        return String::new();
    };
    let line = one_line(first, PREVIEW_CHARS);
    if lines.next().is_some() && !line.ends_with('…') {
        line + " …"
    } else {
        line
    }
}

#[cfg(test)]
#[path = "notices_tests.rs"]
mod tests;
