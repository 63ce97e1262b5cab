//! An agent's lifecycle, with the data each state can have and nothing else: what waits
//! in the queue (`Queued`), what exists only while a worker runs (its pid, the channels to
//! its supervising task and its stdin, the request in flight: `Running`), and how it
//! ended (`Ended`). The transitions are checked; terminal states never change, except a
//! completed agent's follow-up (`reopen`).
//!
//! Not here: statuses and how an end is classified (`outcome`), the rest of a record
//! (`record`).

use std::time::SystemTime;

use bg_agent_worker::protocol::TaskSpec;
use tokio::sync::mpsc::UnboundedSender;

use super::outcome::{ExitInfo, Outcome, Status};

/// The lifecycle with only the data each state can have.
#[derive(Debug)]
pub enum AgentState {
    Queued {
        /// The spec its worker will be started with.
        spec: Box<TaskSpec>,
        /// Why it has not started although a slot was free (e.g. file descriptors).
        waiting_for: Option<String>,
    },
    Running {
        pid: u32,
        started_at: SystemTime,
        /// How the server tells the agent's supervising task to stop it.
        control: UnboundedSender<Control>,
        /// Where follow-ups go: lines for the worker's stdin.
        inbox: UnboundedSender<String>,
        /// The request in flight, from the user message it sends until its usage arrives.
        open_turn: Option<OpenTurn>,
    },
    Ended {
        outcome: Outcome,
        exit: ExitInfo,
        /// Its worker's run, when one started.
        run: Option<Run>,
        ended_at: SystemTime,
    },
}

/// The run of an ended agent's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub pid: u32,
    pub started_at: SystemTime,
}

/// A request to the task supervising a running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Kill { grace_ms: u64 },
    OutputLimit,
}

/// The channels of a running agent, handed to `AgentState::start`.
#[derive(Debug)]
pub struct Channels {
    pub control: UnboundedSender<Control>,
    pub inbox: UnboundedSender<String>,
}

/// A request the worker sent whose usage has not come yet: what it may cost if the
/// agent is cut off before the usage comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenTurn {
    /// Bytes of what the request sends (system prompt and conversation).
    pub input_bytes: usize,
    /// Bytes of text streamed back so far.
    pub output_bytes: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("illegal status transition {from:?} → {to:?}")]
pub struct IllegalTransition {
    pub from: Status,
    pub to: Status,
}

impl AgentState {
    /// A queued agent that will start with `spec`.
    pub fn queued(spec: Box<TaskSpec>) -> AgentState {
        AgentState::Queued {
            spec,
            waiting_for: None,
        }
    }

    pub fn status(&self) -> Status {
        match self {
            AgentState::Queued { .. } => Status::Queued,
            AgentState::Running { .. } => Status::Running,
            AgentState::Ended { outcome, .. } => outcome.status(),
        }
    }

    /// The pid, start and end times: what is known of them in this state.
    pub fn times(&self) -> (Option<u32>, Option<SystemTime>, Option<SystemTime>) {
        match self {
            AgentState::Queued { .. } => (None, None, None),
            AgentState::Running {
                pid, started_at, ..
            } => (Some(*pid), Some(*started_at), None),
            AgentState::Ended { run, ended_at, .. } => (
                run.map(|r| r.pid),
                run.map(|r| r.started_at),
                Some(*ended_at),
            ),
        }
    }

    /// Why a queued agent has not started although a slot was free.
    pub fn waiting_for(&self) -> Option<&String> {
        match self {
            AgentState::Queued { waiting_for, .. } => waiting_for.as_ref(),
            _ => None,
        }
    }

    /// The running agent's request in flight; `None` in any other state.
    pub fn open_turn_mut(&mut self) -> Option<&mut Option<OpenTurn>> {
        match self {
            AgentState::Running { open_turn, .. } => Some(open_turn),
            _ => None,
        }
    }

    /// The running agent's control channel; `None` in any other state.
    pub fn control(&self) -> Option<&UnboundedSender<Control>> {
        match self {
            AgentState::Running { control, .. } => Some(control),
            _ => None,
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

    /// queued → running with `channels`; returns the spec the worker is started with.
    pub fn start(
        &mut self,
        pid: u32,
        channels: Channels,
    ) -> Result<Box<TaskSpec>, IllegalTransition> {
        let running = AgentState::Running {
            pid,
            started_at: SystemTime::now(),
            control: channels.control,
            inbox: channels.inbox,
            open_turn: None,
        };
        match std::mem::replace(self, running) {
            AgentState::Queued { spec, .. } => Ok(spec),
            other => {
                let from = other.status();
                *self = other;
                Err(IllegalTransition {
                    from,
                    to: Status::Running,
                })
            }
        }
    }

    /// completed → queued, with the spec of its next round: `agent_send`'s follow-up, the
    /// one door out of an end. Every other end stays final. Returns the end it left, for
    /// `restore`.
    pub fn reopen(&mut self, spec: Box<TaskSpec>) -> Result<AgentState, IllegalTransition> {
        match self {
            AgentState::Ended {
                outcome: Outcome::Completed,
                ..
            } => Ok(std::mem::replace(self, AgentState::queued(spec))),
            other => Err(IllegalTransition {
                from: other.status(),
                to: Status::Queued,
            }),
        }
    }

    /// queued → the completed `end` it was reopened from: its next round was cancelled
    /// before it started, so the agent is what it was.
    pub fn restore(&mut self, end: AgentState) -> Result<(), IllegalTransition> {
        let completed = matches!(
            end,
            AgentState::Ended {
                outcome: Outcome::Completed,
                ..
            }
        );
        if !completed || self.status() != Status::Queued {
            return Err(IllegalTransition {
                from: self.status(),
                to: end.status(),
            });
        }
        *self = end;
        Ok(())
    }

    /// queued → killed or failed; running → any outcome. A running agent's channels
    /// close here.
    pub fn end(&mut self, outcome: Outcome, exit: ExitInfo) -> Result<(), IllegalTransition> {
        Self::check_transition(self.status(), outcome.status())?;
        let run = match self {
            AgentState::Running {
                pid, started_at, ..
            } => Some(Run {
                pid: *pid,
                started_at: *started_at,
            }),
            _ => None,
        };
        *self = AgentState::Ended {
            outcome,
            exit,
            run,
            ended_at: SystemTime::now(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::outcome::ExitReason;

    fn spec() -> Box<TaskSpec> {
        let limits = bg_agent_worker::config::Config::builtin().unwrap().defaults;
        Box::new(
            serde_json::from_value(serde_json::json!({
                "task": "t", "role": "general", "system_prompt": "s", "tools": [],
                "provider": {"name": "a", "kind": "anthropic", "base_url": "http://x", "max_retries": 0, "request_timeout_seconds": 1},
                "model": "m", "cwd": "/", "limits": limits,
            }))
            .unwrap(),
        )
    }

    fn channels() -> Channels {
        Channels {
            control: tokio::sync::mpsc::unbounded_channel().0,
            inbox: tokio::sync::mpsc::unbounded_channel().0,
        }
    }

    #[test]
    fn terminal_states_never_change() {
        for from in Status::ALL.iter().copied().filter(|s| s.is_terminal()) {
            for &to in Status::ALL {
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
        for to in Status::ALL.iter().copied().filter(|s| s.is_terminal()) {
            assert!(AgentState::check_transition(Running, to).is_ok(), "{to:?}");
        }
    }

    #[test]
    fn state_carries_pid_and_times_through_the_end() {
        let mut s = AgentState::queued(spec());
        s.start(42, channels()).unwrap();
        assert!(s.start(43, channels()).is_err());
        assert!(s.control().is_some(), "a running agent has its channels");
        s.end(
            Outcome::Completed,
            ExitInfo::without_process(ExitReason::Completed),
        )
        .unwrap();
        assert!(matches!(
            s,
            AgentState::Ended {
                run: Some(Run { pid: 42, .. }),
                ..
            }
        ));
        assert!(s.control().is_none(), "its channels closed with its end");
        assert!(
            s.end(
                Outcome::Failed,
                ExitInfo::without_process(ExitReason::Crashed)
            )
            .is_err()
        );
        assert_eq!(s.status(), Status::Completed);
        // The one door out of an end: a completed agent's follow-up queues a new round.
        let next = spec();
        let end = s.reopen(next.clone()).unwrap();
        assert_eq!(s.status(), Status::Queued);
        assert!(s.reopen(next.clone()).is_err(), "only an end reopens");
        // Its round cancelled before it started: back to the end it left, once.
        s.restore(end).unwrap();
        assert_eq!(s.status(), Status::Completed);
        let end = s.reopen(next.clone()).unwrap();
        s.start(43, channels()).unwrap();
        assert!(
            s.restore(end).is_err(),
            "a round that started cannot be undone"
        );
        s.end(
            Outcome::Completed,
            ExitInfo::without_process(ExitReason::Completed),
        )
        .unwrap();
        s.reopen(next.clone()).unwrap();
        s.start(44, channels()).unwrap();
        s.end(
            Outcome::BudgetExceeded,
            ExitInfo::without_process(ExitReason::BudgetExceeded),
        )
        .unwrap();
        assert_eq!(
            s.reopen(next).err(),
            Some(IllegalTransition {
                from: Status::BudgetExceeded,
                to: Status::Queued
            })
        );
    }
}
