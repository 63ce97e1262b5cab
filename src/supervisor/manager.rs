//! The supervisor of every agent of one server: [`Manager`], the public facade the MCP
//! layer calls, and `Inner`, the state its tasks share (registry, admission, session
//! spending, the spawner). Each concept is a file of its own under `manager/`:
//! - `spawn`: accepting a spawn (resolve, check, admit now or queue, make the record);
//! - `send`: follow-ups (`agent_send`): a completed agent's next round, a queued one's task;
//! - `start`: starting a queued agent (transcript, worker process, the queue moving on);
//! - `supervise`: a running worker until it is reaped (stdin, wall clock, signals, its end);
//! - `kill`: stopping one agent (cancelling a queued one, telling a running one's task);
//! - `ingest`: the worker's events into its record and transcript;
//! - `session`: the session's spending against its caps;
//! - `wait`: waiting for ends, status changes and output without polling;
//! - `query`: reading records (status, output, lists, marks);
//! - `shutdown`: ending everything when the server stops.
//!
//! This file holds the error type, the shared state and the lock helpers.
//!
//! Not here: the MCP protocol (`mcp`), fork/exec details (`process`), records and their
//! lifecycle (`record`, `state`), how an end is classified (`outcome`), output stores
//! (`output`), per-provider pacing (`admission`).

mod ingest;
mod kill;
mod query;
mod send;
mod session;
mod shutdown;
mod spawn;
mod start;
mod supervise;
mod wait;

pub use query::OutputQuery;
pub use wait::WaitMode;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bg_agent_worker::config::Config;
use bg_agent_worker::resolve::ResolveError;
use tokio::sync::{mpsc, watch};

use super::admission::Admission;
use super::outcome::{ExitInfo, ExitReason, Outcome};
use super::output::OutputError;
use super::process::{SpawnError, Spawner};
use super::record::AgentRecord;
use super::registry::Registry;
use super::view::EndedAgent;
use query::compiled_filter;
use session::SessionSpend;
use start::out_of_descriptors;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Workspace(#[from] super::request::WorkspaceError),
    #[error("unknown agent `{id}`; {hint}")]
    UnknownAgent { id: String, hint: String },
    #[error(
        "the queue is full: {queued} agents are waiting ([server] max_queued = {max}); wait for some to finish (agent_wait) or kill some (agent_kill), then spawn again"
    )]
    QueueFull { queued: usize, max: usize },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{0}; make [server] transcript_dir writable or point it at another directory")]
    Transcript(OutputError),
    #[error(transparent)]
    Filter(OutputError),
    #[error(
        "{var} is not set in the bg-agents server's environment, so agents on provider `{provider}` cannot call its API; nothing was started. \
         Give the MCP server the key and restart it (Claude Code: /mcp): \
         `claude mcp add bg-agents --scope user --env {var}=YOUR_KEY -- bg-agents`, \
         or in .mcp.json `\"env\": {{\"{var}\": \"${{{var}}}\"}}` (then export {var} where Claude Code starts), \
         or for the plugin export {var} in the shell that starts Claude Code. \
         Or pick a tier or model on a provider that needs no key."
    )]
    MissingKey { var: String, provider: String },
    #[error("{0}; nothing was started (then restart the MCP server; Claude Code: /mcp)")]
    BadBaseUrl(#[from] bg_agent_worker::config::BaseUrlError),
    #[error("the server is shutting down; no new agents start")]
    ShuttingDown,
    #[error(
        "its working directory {} no longer exists (removed while the agent waited to start); spawn it again with an existing cwd",
        path.display()
    )]
    CwdGone { path: PathBuf },
    #[error(
        "{0}; nothing was started (raise the cap in [server] of the config and restart the server, or ask for less: a smaller task, limits.budget_usd or limits.max_total_tokens, a cheaper model)"
    )]
    SessionBudget(String),
    #[error(
        "the message is {bytes} bytes, above the {max}-byte limit of a task (a queued agent's task and its follow-ups count together); put long material in a file under the agent's cwd and point the agent at it",
        max = bg_agent_worker::resolve::MAX_TASK_BYTES
    )]
    MessageTooLong { bytes: usize },
    #[error(
        "agent `{id}` is running: its worker already has its limits, so limits cannot change now and nothing was sent; send without limits, or wait until it completes (agent_wait) and send with limits then"
    )]
    LimitsWhileRunning { id: String },
    #[error(
        "agent `{id}` cannot pay for this follow-up: its next request would send about {input} input tokens (the conversation so far and the message), needing {need} of its {key}, and {left} is left; nothing was sent. Send a shorter message, send with a larger limits.{key} (at most [max]) once it completed, or spawn a new agent with the context it needs"
    )]
    FollowUpTooCostly {
        id: String,
        key: &'static str,
        input: u64,
        need: String,
        left: String,
    },
    #[error(
        "agent_ids is empty; pass one or more ids returned by agent_spawn (agent_list shows them)"
    )]
    NoIds,
    #[error("message is empty; give the follow-up's text")]
    EmptyMessage,
    #[error("agent `{id}` is {status}: {why}")]
    NotResumable {
        id: String,
        status: &'static str,
        why: String,
    },
    #[error(
        "agent `{id}` has no conversation to continue (its worker told none); spawn a new agent with the task and the context it needs"
    )]
    NoConversation { id: String },
    #[error(
        "agent `{id}` has used {used} of its {key} ({limit}) over its rounds; send again with a larger limits.{key} (at most [max]), or spawn a new agent"
    )]
    RoundBudget {
        id: String,
        key: &'static str,
        used: String,
        limit: String,
    },
}

/// The supervisor of every agent of one server.
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    transcript_dir: PathBuf,
    registry: Mutex<Registry>,
    /// Bumped on every status change; waiters subscribe.
    changed: watch::Sender<u64>,
    spawner: Spawner,
    shutting_down: AtomicBool,
    /// Where every agent's end is sent, once, in order, after `ended_agents` was called
    /// (before that, ends are told to no one).
    ended: Mutex<Option<mpsc::UnboundedSender<EndedAgent>>>,
    /// Per-provider caps and holds. Locked only after `registry`, or alone.
    admission: Mutex<Admission>,
    /// A wake-up to start queued agents when a provider's hold ends is pending.
    release_scheduled: AtomicBool,
    /// Starts that run out of file descriptors: logged once an episode, not at every
    /// retry of every queued agent.
    fd_shortage: crate::episode::Episode,
    /// What all agents of this session spent. Locked only after `registry`, or alone.
    session: Mutex<SessionSpend>,
}

impl Manager {
    /// A manager for `config`; transcripts go to a fresh session directory under the
    /// configured (or default) transcript dir. Must be called inside a tokio runtime.
    pub fn new(config: Arc<Config>) -> std::io::Result<Manager> {
        let base = transcript_base(&config.server.transcript_dir);
        let session = format!(
            "session-{}-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            std::process::id()
        );
        let admission = Mutex::new(Admission::new(&config));
        Ok(Manager {
            inner: Arc::new(Inner {
                admission,
                transcript_dir: base.join(session),
                config,
                registry: Mutex::new(Registry::default()),
                changed: watch::channel(0).0,
                spawner: Spawner::new()?,
                shutting_down: AtomicBool::new(false),
                ended: Mutex::new(None),
                release_scheduled: AtomicBool::new(false),
                fd_shortage: crate::episode::Episode::default(),
                session: Mutex::new(SessionSpend::default()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A receiver that changes whenever any agent's status changes.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Every agent's end from now on, once each, in the order they ended (any terminal
    /// status: completed, failed, killed, cancelled, limits). One receiver per manager:
    /// `None` when one was already handed out.
    pub fn ended_agents(&self) -> Option<mpsc::UnboundedReceiver<EndedAgent>> {
        let mut ended = self.inner.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *ended = Some(tx);
        Some(rx)
    }

    pub fn transcript_dir(&self) -> &Path {
        &self.inner.transcript_dir
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sends `rec`'s end to whoever asked for ends (`Manager::ended_agents`).
    fn tell_ended(&self, rec: &AgentRecord) {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = ended.as_ref() {
            let _ = tx.send(EndedAgent::of(rec));
        }
    }

    /// Ends `id`, which never ran (queued, or its start failed), with `outcome`, `reason`
    /// and `error`, and tells whoever listens; nothing happens when it is no longer queued.
    fn end_unstarted(
        &self,
        reg: &mut Registry,
        id: &str,
        outcome: Outcome,
        reason: ExitReason,
        error: String,
    ) {
        let exit = ExitInfo::without_process(reason);
        if let Some(rec) = reg.end_queued(id, outcome, exit) {
            rec.answer.error = Some(error);
            if let Some(t) = rec.io.transcript.as_mut() {
                drop(t.close());
            }
            rec.io.bump();
            self.tell_ended(rec);
            let retain = self.config.server.retained_agents;
            reg.note_ended(id, retain);
        }
    }

    fn get<'r>(&self, reg: &'r Registry, id: &str) -> Result<&'r AgentRecord, ManagerError> {
        reg.get(id).ok_or_else(|| {
            let near = reg.nearest_ids(id, 3);
            ManagerError::UnknownAgent {
                id: id.to_string(),
                hint: if near.is_empty() {
                    "no agents exist yet; spawn one with agent_spawn".to_string()
                } else {
                    format!(
                        "did you mean {}? agent_list shows every agent",
                        near.join(", ")
                    )
                },
            }
        })
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How many transcript file-system jobs (a spawn's directory check, a start's create) run
/// at once on the runtime's blocking pool. A burst of spawns otherwise started a pool
/// thread for nearly every agent (350 for 1,000 at once), most of them only to wait on
/// the create lock (`output::transcript`); and a hung file system could hold as many
/// threads as there were spawns. Capping the pool itself instead would let these jobs
/// queue ahead of tokio's `Stdin` and `Stdout` (a terminal or file on stdio,
/// `mcp::stdio`), which need a pool thread to keep MCP answering.
static FILE_JOBS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Runs `job` on the blocking pool, at most `FILE_JOBS` at a time.
async fn file_job<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let _permit = FILE_JOBS.acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| e.to_string())
}

/// `configured`, else $XDG_STATE_HOME/bg-agents/transcripts, else
/// ~/.local/state/bg-agents/transcripts, else the temp dir.
pub fn transcript_base(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    // No home: a directory of this user's own under the temp dir (checked to be ours at
    // the first spawn), never one shared by every user.
    match state {
        Some(s) => s.join("bg-agents").join("transcripts"),
        None => {
            let uid = nix::unistd::geteuid().as_raw();
            std::env::temp_dir().join(format!("bg-agents-{uid}"))
        }
    }
}
