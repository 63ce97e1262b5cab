//! Agent records and their status state machine, and how a worker's end is classified.
//!
//! Not here: processes (`process`), output storage (`output`), scheduling (`manager`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use bg_agent_worker::protocol::{ErrorKind, TaskSpec};
use bg_agent_worker::roles::RoleChoice;
use bg_agent_worker::routing::RoutedBy;
use bg_agent_worker::values::{Limits, Tier};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::output::{OutputBuffer, StderrTail, Transcript};

/// Every status an agent can be in (README.md, "Tools"); the names are the contract.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Killed,
    TimedOut,
    CpuLimit,
    MemoryLimit,
    OutputLimit,
    BudgetExceeded,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Queued,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Killed,
        Status::TimedOut,
        Status::CpuLimit,
        Status::MemoryLimit,
        Status::OutputLimit,
        Status::BudgetExceeded,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Killed => "killed",
            Status::TimedOut => "timed_out",
            Status::CpuLimit => "cpu_limit",
            Status::MemoryLimit => "memory_limit",
            Status::OutputLimit => "output_limit",
            Status::BudgetExceeded => "budget_exceeded",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// How a process ended, as the kernel said.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<String>,
    /// Machine-readable cause: completed, killed, timed_out, cpu_limit, memory_limit,
    /// file_limit, output_limit, budget_exceeded, provider_error, config_error,
    /// interrupted, crashed, spawn_failed, cancelled, transcript_error.
    pub reason: String,
}

/// Why the server itself ended an agent, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCause {
    Killed,
    /// The session's budget (`[server] session_budget_usd` / `session_max_tokens`) ran out.
    SessionBudget,
    TimedOut,
    OutputLimit,
    /// The transcript file could not be created, so the output could not be kept.
    NoTranscript,
}

/// The lifecycle with only the data each state can have.
#[derive(Debug)]
pub enum AgentState {
    Queued {
        spec: Box<TaskSpec>,
    },
    Running {
        pid: u32,
        started_at: SystemTime,
    },
    Ended {
        status: Status,
        exit: ExitInfo,
        started_at: Option<SystemTime>,
        pid: Option<u32>,
        ended_at: SystemTime,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("illegal status transition {from:?} → {to:?}")]
pub struct IllegalTransition {
    pub from: Status,
    pub to: Status,
}

impl AgentState {
    pub fn status(&self) -> Status {
        match self {
            AgentState::Queued { .. } => Status::Queued,
            AgentState::Running { .. } => Status::Running,
            AgentState::Ended { status, .. } => *status,
        }
    }

    /// queued → running; queued → killed (cancelled) or failed (could not start);
    /// running → any terminal status. Terminal states never change.
    pub fn check_transition(from: Status, to: Status) -> Result<(), IllegalTransition> {
        let ok = match from {
            Status::Queued => matches!(to, Status::Running | Status::Killed | Status::Failed),
            Status::Running => to.is_terminal(),
            _ => false,
        };
        ok.then_some(()).ok_or(IllegalTransition { from, to })
    }

    pub fn start(&mut self, pid: u32) -> Result<Box<TaskSpec>, IllegalTransition> {
        Self::check_transition(self.status(), Status::Running)?;
        let old = std::mem::replace(
            self,
            AgentState::Running {
                pid,
                started_at: SystemTime::now(),
            },
        );
        match old {
            AgentState::Queued { spec } => Ok(spec),
            // check_transition only allows Running from Queued.
            _ => unreachable!("start from a non-queued state passed the transition check"),
        }
    }

    pub fn end(&mut self, status: Status, exit: ExitInfo) -> Result<(), IllegalTransition> {
        Self::check_transition(self.status(), status)?;
        let (started_at, pid) = match self {
            AgentState::Running { pid, started_at } => (Some(*started_at), Some(*pid)),
            _ => (None, None),
        };
        *self = AgentState::Ended {
            status,
            exit,
            started_at,
            pid,
            ended_at: SystemTime::now(),
        };
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Uncached input; cache writes and reads are counted apart.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
    /// `None`: the model has no price, the cost is unknown (not zero).
    pub cost_usd: Option<f64>,
    /// The provider sent no usage for some turn: tokens and cost are estimates.
    pub estimated: bool,
}

/// Everything known about one agent.
#[derive(Debug)]
pub struct AgentRecord {
    pub id: String,
    pub label: Option<String>,
    pub task_preview: String,
    pub role: String,
    pub role_choice: RoleChoice,
    pub tier: Tier,
    pub model: String,
    pub provider: String,
    pub routed_by: RoutedBy,
    pub routing_reason: String,
    pub limits: Limits,
    pub cwd: String,
    pub created_at: SystemTime,
    pub state: AgentState,
    pub usage: Usage,
    /// The final answer's stop reason (`max_tokens`: cut at the token limit).
    pub stop_reason: Option<String>,
    pub turns: u32,
    pub result: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub output: OutputBuffer,
    pub transcript: Option<Transcript>,
    pub stderr: StderrTail,
    /// Bytes read from the worker's stdout (events), all of them.
    pub stdout_bytes: u64,
    /// When the worker's first output arrived (its `started` event, normally).
    pub first_event_at: Option<SystemTime>,
    /// Which sandbox the worker says is in force (from its `started` event).
    pub sandbox: Option<String>,
    /// Why a queued agent has not started although a slot was free.
    pub waiting_for: Option<String>,
    /// Event lines longer than the line cap, dropped; their bytes are counted here.
    pub oversize_dropped: u64,
    /// Why the agent's output went over a cap (the transcript's, or the longest event
    /// line), once it did: the agent is being stopped as `output_limit`.
    pub overflow: Option<String>,
    /// Whether the readable output ends in the middle of a line.
    pub mid_line: bool,
    /// Bumped whenever output arrives or the agent ends; waiters on output subscribe.
    pub output_seq: tokio::sync::watch::Sender<u64>,
    /// How the server tells the agent's supervising task to stop it (while running).
    pub control: Option<tokio::sync::mpsc::UnboundedSender<Control>>,
}

/// A request to the task supervising a running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Kill {
        grace_ms: u64,
    },
    /// Stop: the session's budget is spent.
    SessionBudget,
    OutputLimit,
}

impl AgentRecord {
    pub fn status(&self) -> Status {
        self.state.status()
    }
}

/// Records by id, plus the FIFO of queued agents and the order in which agents ended
/// (for eviction).
#[derive(Debug, Default)]
pub struct Registry {
    pub agents: HashMap<String, AgentRecord>,
    pub queue: VecDeque<String>,
    ended: VecDeque<String>,
    pub running: usize,
    /// Ids that pending waits are watching, with how many waits: never evicted while
    /// watched, so a wait always sees the end (and result) of what it waits for.
    watched: HashMap<String, usize>,
}

impl Registry {
    /// A fresh id like `a-7f3k2`, unique among the records.
    pub fn new_id(&self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
        loop {
            let suffix: String = (0..5)
                .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
                .collect();
            let id = format!("a-{suffix}");
            if !self.agents.contains_key(&id) {
                return id;
            }
        }
    }

    /// Records that `id` ended and evicts the oldest ended records past `retain`, except
    /// those a pending wait watches (evicted at a later end, once unwatched).
    /// Returns the evicted records (their transcripts are closed when dropped).
    pub fn note_ended(&mut self, id: &str, retain: usize) -> Vec<AgentRecord> {
        self.ended.push_back(id.to_string());
        let mut evicted = Vec::new();
        let mut kept = Vec::new();
        while self.ended.len() > retain {
            let Some(old) = self.ended.pop_front() else {
                break;
            };
            if self.watched.contains_key(&old) {
                kept.push(old);
            } else if let Some(rec) = self.agents.remove(&old) {
                evicted.push(rec);
            }
        }
        for old in kept.into_iter().rev() {
            self.ended.push_front(old);
        }
        evicted
    }

    /// A wait starts watching `ids`: they stay readable until `unwatch`.
    pub fn watch(&mut self, ids: &[String]) {
        for id in ids {
            *self.watched.entry(id.clone()).or_default() += 1;
        }
    }

    /// The wait that watched `ids` returned.
    pub fn unwatch(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(n) = self.watched.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    self.watched.remove(id);
                }
            }
        }
    }

    /// Ids that look like `wanted`, for "did you mean" messages: same prefix first.
    pub fn nearest_ids(&self, wanted: &str, n: usize) -> Vec<String> {
        let mut ids: Vec<(usize, &String)> = self
            .agents
            .keys()
            .map(|id| (edit_distance(wanted, id), id))
            .collect();
        ids.sort();
        ids.into_iter().take(n).map(|(_, id)| id.clone()).collect()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What the server knows when a worker process has been reaped.
#[derive(Debug, Clone)]
pub struct EndFacts {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub cause: Option<ServerCause>,
    pub limits: Limits,
    /// CPU time the worker used (user + system, from the exit's rusage), when known.
    pub cpu_used: Option<Duration>,
    /// The worker's own final event.
    pub result_seen: bool,
    pub error_kind: Option<ErrorKind>,
    pub stderr_tail: String,
}

/// Classifies a worker's end into a status and exit info, from the exit codes of
/// `bg_agent_worker::protocol::exit` and the signal that ended it.
pub fn classify(f: &EndFacts) -> (Status, ExitInfo) {
    let signal_name = f.signal.map(signal_name);
    let info = |reason: &str| ExitInfo {
        code: f.code,
        signal: signal_name.clone(),
        reason: reason.to_string(),
    };
    match f.cause {
        Some(ServerCause::Killed) => return (Status::Killed, info("killed")),
        Some(ServerCause::SessionBudget) => {
            return (Status::BudgetExceeded, info("session_budget"));
        }
        Some(ServerCause::TimedOut) => return (Status::TimedOut, info("timed_out")),
        Some(ServerCause::OutputLimit) => return (Status::OutputLimit, info("output_limit")),
        Some(ServerCause::NoTranscript) => return (Status::Failed, info("transcript_error")),
        None => {}
    }
    if let Some(sig) = f.signal {
        let sig = Signal::try_from(sig).ok();
        return match sig {
            Some(Signal::SIGXCPU) => (Status::CpuLimit, info("cpu_limit")),
            // The hard CPU limit ends with SIGKILL from the kernel when SIGXCPU was
            // ignored; the process must have used at least that much CPU.
            Some(Signal::SIGKILL) if used_cpu_limit(f) => (Status::CpuLimit, info("cpu_limit")),
            // Not ours (no server cause) and not the CPU limit: someone else killed it.
            Some(Signal::SIGKILL) => (Status::Failed, info("killed_outside")),
            Some(Signal::SIGXFSZ) => (Status::Failed, info("file_limit")),
            Some(Signal::SIGABRT) | Some(Signal::SIGSEGV) | Some(Signal::SIGBUS)
                if allocation_failed(&f.stderr_tail) =>
            {
                (Status::MemoryLimit, info("memory_limit"))
            }
            _ => (Status::Failed, info("crashed")),
        };
    }
    match f.code {
        Some(0) if f.result_seen => (Status::Completed, info("completed")),
        Some(0) => (Status::Failed, info("no_result")),
        Some(3) => (Status::BudgetExceeded, info("budget_exceeded")),
        Some(_) if f.error_kind.is_none() && allocation_failed(&f.stderr_tail) => {
            (Status::MemoryLimit, info("memory_limit"))
        }
        Some(1) => (Status::Failed, info("provider_error")),
        Some(2) => (Status::Failed, info("config_error")),
        Some(130) | Some(143) => (Status::Failed, info("interrupted")),
        _ => (Status::Failed, info("crashed")),
    }
}

/// Whether the measured CPU time reached `cpu_seconds` (less a little: the kernel
/// checks RLIMIT_CPU on its ticks). Unmeasured is never the limit.
fn used_cpu_limit(f: &EndFacts) -> bool {
    f.cpu_used
        .is_some_and(|cpu| cpu.as_secs_f64() + 0.5 >= f.limits.cpu_seconds as f64)
}

/// Allocation failures under RLIMIT_AS as runtimes report them: Rust's
/// "memory allocation of N bytes failed", C's ENOMEM text, Python's MemoryError.
fn allocation_failed(stderr_tail: &str) -> bool {
    [
        "memory allocation of",
        "Cannot allocate memory",
        "MemoryError",
        "out of memory",
    ]
    .iter()
    .any(|m| stderr_tail.contains(m))
}

pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

/// A human sentence for an ended agent's `error`, when the status is not `completed`.
pub fn describe_end(
    status: Status,
    exit: &ExitInfo,
    limits: &Limits,
    worker_error: Option<&str>,
) -> Option<String> {
    let detail = worker_error.map(|e| format!(": {e}")).unwrap_or_default();
    Some(match (status, exit.reason.as_str()) {
        (Status::Completed, _) => return None,
        (Status::Killed, _) => {
            "stopped by the server (agent_kill, a cancelled task, or shutdown)".to_string()
        }
        (Status::TimedOut, _) => format!(
            "ran past timeout_seconds = {}; stopped",
            limits.timeout_seconds
        ),
        (Status::CpuLimit, _) => {
            format!("used its CPU limit (cpu_seconds = {})", limits.cpu_seconds)
        }
        (Status::MemoryLimit, _) => format!(
            "ran out of memory under RLIMIT_AS (memory_mb = {})",
            limits.memory_mb
        ),
        (Status::OutputLimit, _) => {
            "wrote more output than the transcript cap; stopped so nothing is lost silently"
                .to_string()
        }
        (Status::BudgetExceeded, _) => format!("budget exhausted{detail}"),
        (_, "file_limit") => format!(
            "wrote a file past the file size limit (SIGXFSZ, max_file_mb = {})",
            limits.max_file_mb
        ),
        (_, "spawn_failed") => format!("could not start{detail}"),
        (_, "transcript_error") => format!("stopped: could not keep its transcript{detail}"),
        (_, "no_result") => "exited 0 without a result event".to_string(),
        (_, "killed_outside") => format!(
            "killed by {} from outside the server (not agent_kill, and not the CPU limit: cpu_seconds = {})",
            exit.signal.as_deref().unwrap_or("a signal"),
            limits.cpu_seconds
        ),
        (_, reason) => {
            let how = match (&exit.signal, exit.code) {
                (Some(s), _) => format!("killed by {s}"),
                (None, Some(c)) => format!("exited with code {c}"),
                (None, None) => "ended".to_string(),
            };
            format!("{reason}: {how}{detail}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_agent_is_not_evicted_until_its_wait_returns() {
        let mut reg = Registry::default();
        let ids = ["a".to_string()];
        reg.watch(&ids);
        reg.note_ended("a", 1);
        reg.note_ended("b", 1);
        assert_eq!(
            reg.ended,
            ["a", "b"],
            "kept past retained_agents while watched"
        );
        reg.unwatch(&ids);
        reg.note_ended("c", 1);
        assert_eq!(reg.ended, ["c"]);
        assert!(reg.watched.is_empty());
    }

    fn limits() -> Limits {
        bg_agent_worker::config::Config::builtin().unwrap().defaults
    }

    fn facts(code: Option<i32>, signal: Option<Signal>) -> EndFacts {
        EndFacts {
            code,
            signal: signal.map(|s| s as i32),
            cause: None,
            limits: limits(),
            cpu_used: Some(Duration::from_millis(10)),
            result_seen: false,
            error_kind: None,
            stderr_tail: String::new(),
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for from in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in Status::ALL {
                assert!(
                    AgentState::check_transition(from, to).is_err(),
                    "{from:?} → {to:?}"
                );
            }
        }
    }

    #[test]
    fn legal_transitions() {
        use Status::*;
        assert!(AgentState::check_transition(Queued, Running).is_ok());
        assert!(AgentState::check_transition(Queued, Killed).is_ok());
        assert!(AgentState::check_transition(Queued, Completed).is_err());
        assert!(AgentState::check_transition(Running, Queued).is_err());
        assert!(AgentState::check_transition(Running, Running).is_err());
        for to in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(AgentState::check_transition(Running, to).is_ok(), "{to:?}");
        }
    }

    #[test]
    fn state_carries_pid_and_times_through_the_end() {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "task": "t", "role": "general", "system_prompt": "s", "tools": [],
            "provider": {"name": "a", "kind": "anthropic", "base_url": "http://x", "max_retries": 0, "request_timeout_seconds": 1},
            "model": "m", "cwd": "/", "limits": limits(),
        }))
        .unwrap();
        let mut s = AgentState::Queued {
            spec: Box::new(spec),
        };
        s.start(42).unwrap();
        assert!(s.start(43).is_err());
        s.end(Status::Completed, ExitInfo::default()).unwrap();
        assert!(matches!(
            s,
            AgentState::Ended {
                pid: Some(42),
                started_at: Some(_),
                ..
            }
        ));
        assert!(s.end(Status::Failed, ExitInfo::default()).is_err());
        assert_eq!(s.status(), Status::Completed);
    }

    #[test]
    fn classification_table() {
        let mut f = facts(Some(0), None);
        f.result_seen = true;
        assert_eq!(classify(&f).0, Status::Completed);
        assert_eq!(classify(&facts(Some(0), None)).0, Status::Failed);
        assert_eq!(classify(&facts(Some(3), None)).0, Status::BudgetExceeded);
        assert_eq!(classify(&facts(Some(1), None)).1.reason, "provider_error");
        assert_eq!(classify(&facts(Some(2), None)).1.reason, "config_error");
        assert_eq!(
            classify(&facts(None, Some(Signal::SIGXCPU))).0,
            Status::CpuLimit
        );
        let (s, e) = classify(&facts(None, Some(Signal::SIGXFSZ)));
        assert_eq!(
            (s, e.reason.as_str(), e.signal.as_deref()),
            (Status::Failed, "file_limit", Some("SIGXFSZ"))
        );
        assert_eq!(
            classify(&facts(None, Some(Signal::SIGSEGV))).1.reason,
            "crashed"
        );
        let mut f = facts(None, Some(Signal::SIGABRT));
        f.stderr_tail = "memory allocation of 1073741824 bytes failed\n".into();
        assert_eq!(classify(&f).0, Status::MemoryLimit);
        // SIGKILL from outside after a short run is a crash, not the CPU limit.
        assert_eq!(
            classify(&facts(None, Some(Signal::SIGKILL))).0,
            Status::Failed
        );
        let mut f = facts(None, Some(Signal::SIGKILL));
        f.cpu_used = Some(Duration::from_secs(f.limits.cpu_seconds));
        assert_eq!(classify(&f).0, Status::CpuLimit);
        // The server's own causes win over whatever the process did.
        let mut f = facts(Some(143), None);
        f.cause = Some(ServerCause::Killed);
        assert_eq!(classify(&f).0, Status::Killed);
        f.cause = Some(ServerCause::TimedOut);
        assert_eq!(classify(&f).0, Status::TimedOut);
        f.cause = Some(ServerCause::OutputLimit);
        assert_eq!(classify(&f).0, Status::OutputLimit);
    }

    /// A queued record with id `id` and `limits`, as the registry holds one.
    fn record(id: &str, limits: Limits) -> AgentRecord {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "task": "t", "role": "general", "system_prompt": "s", "tools": [],
            "provider": {"name": "a", "kind": "anthropic", "base_url": "http://x", "max_retries": 0, "request_timeout_seconds": 1},
            "model": "m", "cwd": "/", "limits": limits,
        }))
        .unwrap();
        AgentRecord {
            id: id.to_string(),
            label: None,
            task_preview: "t".into(),
            role: "general".into(),
            role_choice: RoleChoice::Default,
            tier: Tier::Fast,
            model: "m".into(),
            provider: "a".into(),
            routed_by: RoutedBy::Default,
            routing_reason: String::new(),
            limits,
            cwd: "/".into(),
            created_at: SystemTime::now(),
            state: AgentState::Queued {
                spec: Box::new(spec),
            },
            usage: Usage::default(),
            turns: 0,
            result: None,
            error: None,
            error_kind: None,
            output: OutputBuffer::new(4096),
            transcript: None,
            stderr: StderrTail::new(1024),
            stdout_bytes: 0,
            first_event_at: None,
            sandbox: None,
            waiting_for: None,
            stop_reason: None,
            oversize_dropped: 0,
            overflow: None,
            mid_line: false,
            output_seq: tokio::sync::watch::channel(0).0,
            control: None,
        }
    }

    #[test]
    fn ids_are_short_and_unique() {
        let mut r = Registry::default();
        let limits = limits();
        for _ in 0..2000 {
            let id = r.new_id();
            assert_eq!(id.len(), 7);
            assert!(id.starts_with("a-"));
            assert!(!r.agents.contains_key(&id), "{id} is already taken");
            r.agents.insert(id.clone(), record(&id, limits));
        }
        assert_eq!(r.agents.len(), 2000);
    }

    #[test]
    fn a_drawn_id_that_is_taken_is_drawn_again() {
        // The same seed draws the same first id; once that id is taken, new_id must
        // move past it.
        let mut r = Registry::default();
        fastrand::seed(7);
        let first = r.new_id();
        r.agents.insert(first.clone(), record(&first, limits()));
        fastrand::seed(7);
        let second = r.new_id();
        assert_ne!(second, first);
        assert!(!r.agents.contains_key(&second));
    }

    #[test]
    fn nearest_ids_rank_by_edit_distance() {
        assert_eq!(edit_distance("a-7f3k2", "a-7f3k3"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
