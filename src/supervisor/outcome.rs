//! How an agent ends: the statuses (the contract), the terminal ones as an [`Outcome`]
//! of their own, why a process ended ([`ExitReason`]), and the classification of a
//! reaped worker from its exit code (`bg_agent_worker::protocol::exit`), its signal and
//! what the server itself did.
//!
//! Not here: the records (`record`) and their lifecycle (`state`), reaping (`process`).

use std::time::Duration;

use bg_agent_worker::protocol::{ErrorKind, exit};
use bg_agent_worker::values::Limits;
use nix::sys::signal::Signal;
use serde::Serialize;

/// Every status an agent can be in (README.md, "Tools"); the names are the contract.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
    /// Every status, in declaration order (derived: no list kept by hand).
    pub const ALL: &'static [Status] = <Status as strum::VariantArray>::VARIANTS;

    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    /// Its name on the wire (the same as serde's, derived from the variant).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an agent ended: only the terminal statuses, so an ended agent cannot be queued or
/// running. Its [`Status`] is [`Outcome::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Completed,
    Failed,
    Killed,
    TimedOut,
    CpuLimit,
    MemoryLimit,
    OutputLimit,
    BudgetExceeded,
}

impl Outcome {
    pub fn status(self) -> Status {
        match self {
            Outcome::Completed => Status::Completed,
            Outcome::Failed => Status::Failed,
            Outcome::Killed => Status::Killed,
            Outcome::TimedOut => Status::TimedOut,
            Outcome::CpuLimit => Status::CpuLimit,
            Outcome::MemoryLimit => Status::MemoryLimit,
            Outcome::OutputLimit => Status::OutputLimit,
            Outcome::BudgetExceeded => Status::BudgetExceeded,
        }
    }
}

impl From<Outcome> for Status {
    fn from(outcome: Outcome) -> Status {
        outcome.status()
    }
}

/// The machine-readable cause of an end, serialized as its snake_case name (the names
/// are what `exit.reason` shows callers).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::VariantArray, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ExitReason {
    Completed,
    /// `agent_kill`, a cancelled task, or shutdown, while running.
    Killed,
    /// Killed before it started.
    Cancelled,
    /// Cancelled before it started: the session's budget could not pay for it.
    SessionBudget,
    TimedOut,
    CpuLimit,
    MemoryLimit,
    FileLimit,
    OutputLimit,
    BudgetExceeded,
    ProviderError,
    ConfigError,
    /// The answer never matched the spawn's `output_schema`.
    SchemaMismatch,
    Interrupted,
    Crashed,
    /// SIGKILL or SIGXCPU from outside the server, not the CPU limit.
    KilledOutside,
    /// Exit code 0 without a result event.
    NoResult,
    SpawnFailed,
}

impl ExitReason {
    /// Every reason, in declaration order (derived: no list kept by hand): what replies
    /// and their schemas list (`mcp::reply::Exit`).
    pub const ALL: &'static [ExitReason] = <ExitReason as strum::VariantArray>::VARIANTS;

    /// Its name on the wire (the same as serde's, derived from the variant).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended, as the kernel said, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub reason: ExitReason,
}

impl ExitInfo {
    /// An end without a process exit (cancelled, or it never started).
    pub fn without_process(reason: ExitReason) -> ExitInfo {
        ExitInfo {
            code: None,
            signal: None,
            reason,
        }
    }
}

/// Why the server itself ended an agent, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCause {
    Killed,
    TimedOut,
    OutputLimit,
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
pub fn classify(f: &EndFacts) -> (Outcome, ExitInfo) {
    let signal_name = f.signal.map(signal_name);
    let info = |reason: ExitReason| ExitInfo {
        code: f.code,
        signal: signal_name.clone(),
        reason,
    };
    match f.cause {
        Some(ServerCause::Killed) => return (Outcome::Killed, info(ExitReason::Killed)),
        Some(ServerCause::TimedOut) => return (Outcome::TimedOut, info(ExitReason::TimedOut)),
        Some(ServerCause::OutputLimit) => {
            return (Outcome::OutputLimit, info(ExitReason::OutputLimit));
        }
        None => {}
    }
    if let Some(sig) = f.signal {
        let sig = Signal::try_from(sig).ok();
        return match sig {
            // The kernel sends SIGXCPU at the soft CPU limit, and SIGKILL at the hard one
            // when SIGXCPU was ignored; either way the process used that much CPU. The
            // same signals after less CPU came from someone else.
            Some(Signal::SIGXCPU | Signal::SIGKILL) if used_cpu_limit(f) => {
                (Outcome::CpuLimit, info(ExitReason::CpuLimit))
            }
            // Not ours (no server cause) and not the CPU limit: someone else killed it.
            Some(Signal::SIGXCPU | Signal::SIGKILL) => {
                (Outcome::Failed, info(ExitReason::KilledOutside))
            }
            Some(Signal::SIGXFSZ) => (Outcome::Failed, info(ExitReason::FileLimit)),
            Some(Signal::SIGABRT) | Some(Signal::SIGSEGV) | Some(Signal::SIGBUS)
                if allocation_failed(&f.stderr_tail) =>
            {
                (Outcome::MemoryLimit, info(ExitReason::MemoryLimit))
            }
            _ => (Outcome::Failed, info(ExitReason::Crashed)),
        };
    }
    match f.code {
        Some(exit::DONE) if f.result_seen => (Outcome::Completed, info(ExitReason::Completed)),
        Some(exit::DONE) => (Outcome::Failed, info(ExitReason::NoResult)),
        Some(exit::BUDGET) => (Outcome::BudgetExceeded, info(ExitReason::BudgetExceeded)),
        Some(_) if f.error_kind.is_none() && allocation_failed(&f.stderr_tail) => {
            (Outcome::MemoryLimit, info(ExitReason::MemoryLimit))
        }
        Some(exit::PROVIDER) => (Outcome::Failed, info(ExitReason::ProviderError)),
        Some(exit::BAD_SPEC) => (Outcome::Failed, info(ExitReason::ConfigError)),
        Some(exit::SCHEMA_MISMATCH) => (Outcome::Failed, info(ExitReason::SchemaMismatch)),
        Some(exit::INTERRUPTED_INT | exit::INTERRUPTED_TERM) => {
            (Outcome::Failed, info(ExitReason::Interrupted))
        }
        _ => (Outcome::Failed, info(ExitReason::Crashed)),
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
    outcome: Outcome,
    exit: &ExitInfo,
    limits: &Limits,
    worker_error: Option<&str>,
) -> Option<String> {
    let detail = worker_error.map(|e| format!(": {e}")).unwrap_or_default();
    Some(match (outcome, exit.reason) {
        (Outcome::Completed, _) => return None,
        (Outcome::Killed, _) => {
            "stopped by the server (agent_kill, a cancelled task, or shutdown)".to_string()
        }
        (Outcome::TimedOut, _) => format!(
            "ran past timeout_seconds = {}; stopped",
            limits.timeout_seconds
        ),
        (Outcome::CpuLimit, _) => {
            format!("used its CPU limit (cpu_seconds = {})", limits.cpu_seconds)
        }
        (Outcome::MemoryLimit, _) => format!(
            "ran out of memory under RLIMIT_AS (memory_mb = {})",
            limits.memory_mb
        ),
        (Outcome::OutputLimit, _) => {
            "wrote more output than the transcript cap; stopped so nothing is lost silently"
                .to_string()
        }
        (Outcome::BudgetExceeded, _) => format!("budget exhausted{detail}"),
        (_, ExitReason::FileLimit) => format!(
            "wrote a file past the file size limit (SIGXFSZ, max_file_mb = {})",
            limits.max_file_mb
        ),
        (_, ExitReason::SpawnFailed) => format!("could not start{detail}"),
        (_, ExitReason::NoResult) => "exited 0 without a result event".to_string(),
        (_, ExitReason::KilledOutside) => format!(
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

    fn limits() -> Limits {
        bg_agent_worker::config::Config::builtin().unwrap().defaults
    }

    #[test]
    fn names_on_the_wire_are_serdes_and_unique() {
        let mut names = std::collections::HashSet::new();
        for &reason in ExitReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
            assert!(names.insert(reason.as_str()), "{reason} twice");
        }
        assert_eq!(ExitReason::ALL.len(), ExitReason::SpawnFailed as usize + 1);
        for &status in Status::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Outcome::TimedOut.status().as_str(), "timed_out");
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
    fn classification_table() {
        let mut f = facts(Some(0), None);
        f.result_seen = true;
        assert_eq!(classify(&f).0, Outcome::Completed);
        assert_eq!(classify(&facts(Some(0), None)).0, Outcome::Failed);
        assert_eq!(classify(&facts(Some(3), None)).0, Outcome::BudgetExceeded);
        assert_eq!(
            classify(&facts(Some(1), None)).1.reason.as_str(),
            "provider_error"
        );
        assert_eq!(
            classify(&facts(Some(2), None)).1.reason.as_str(),
            "config_error"
        );
        // SIGXCPU from outside to an idle worker is not the CPU limit.
        let (s, e) = classify(&facts(None, Some(Signal::SIGXCPU)));
        assert_eq!((s, e.reason), (Outcome::Failed, ExitReason::KilledOutside));
        let mut f = facts(None, Some(Signal::SIGXCPU));
        f.cpu_used = Some(Duration::from_secs(f.limits.cpu_seconds));
        assert_eq!(classify(&f).0, Outcome::CpuLimit);
        let (s, e) = classify(&facts(Some(4), None));
        assert_eq!((s, e.reason.as_str()), (Outcome::Failed, "schema_mismatch"));
        let (s, e) = classify(&facts(None, Some(Signal::SIGXFSZ)));
        assert_eq!(
            (s, e.reason.as_str(), e.signal.as_deref()),
            (Outcome::Failed, "file_limit", Some("SIGXFSZ"))
        );
        assert_eq!(
            classify(&facts(None, Some(Signal::SIGSEGV)))
                .1
                .reason
                .as_str(),
            "crashed"
        );
        let mut f = facts(None, Some(Signal::SIGABRT));
        f.stderr_tail = "memory allocation of 1073741824 bytes failed\n".into();
        assert_eq!(classify(&f).0, Outcome::MemoryLimit);
        // SIGKILL from outside after a short run is a crash, not the CPU limit.
        assert_eq!(
            classify(&facts(None, Some(Signal::SIGKILL))).0,
            Outcome::Failed
        );
        let mut f = facts(None, Some(Signal::SIGKILL));
        f.cpu_used = Some(Duration::from_secs(f.limits.cpu_seconds));
        assert_eq!(classify(&f).0, Outcome::CpuLimit);
        // The server's own causes win over whatever the process did.
        let mut f = facts(Some(143), None);
        f.cause = Some(ServerCause::Killed);
        assert_eq!(classify(&f).0, Outcome::Killed);
        f.cause = Some(ServerCause::TimedOut);
        assert_eq!(classify(&f).0, Outcome::TimedOut);
        f.cause = Some(ServerCause::OutputLimit);
        assert_eq!(classify(&f).0, Outcome::OutputLimit);
    }
}
