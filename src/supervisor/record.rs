//! Everything known about one agent, as a few small parts with one owner each: who it is
//! (`Meta`), how it was routed (the worker's `Route`), its limits, its lifecycle
//! (`AgentState`), what it spent (`Totals`) and answered (`Answer`), its output (`Io`),
//! and its rounds of conversation (`Rounds`). Built by [`AgentRecord::new`].
//!
//! Not here: the lifecycle's transitions (`state`), the registry that holds records
//! (`registry`), what callers see of a record (`view`).

use std::time::SystemTime;

use bg_agent_worker::protocol::{ErrorKind, Message, TaskSpec, UsageReport};
use bg_agent_worker::roles::RoleChoice;
use bg_agent_worker::routing::Route;
use bg_agent_worker::values::Limits;

use super::outcome::{Outcome, Status};
use super::output::{OutputBuffer, StderrTail, Transcript};
use super::state::{AgentState, IllegalTransition};

/// Characters of the task kept in records and lists.
const TASK_PREVIEW_CHARS: usize = 200;
/// Bytes of the worker's stderr kept (its last lines).
const STDERR_TAIL_BYTES: usize = 64 * 1024;

/// Everything known about one agent.
#[derive(Debug)]
pub struct AgentRecord {
    pub id: String,
    pub meta: Meta,
    /// How the model was chosen (tier, provider, model, the rule and why).
    pub route: Route,
    /// Its limits over all its rounds (a round's worker gets what is left of them).
    pub limits: Limits,
    pub state: AgentState,
    pub totals: Totals,
    pub answer: Answer,
    pub io: Io,
    pub rounds: Rounds,
}

/// Who the agent is: fixed at spawn.
#[derive(Debug, Clone)]
pub struct Meta {
    pub label: Option<String>,
    /// The task on one line, at most `TASK_PREVIEW_CHARS`.
    pub task_preview: String,
    pub role: String,
    pub role_choice: RoleChoice,
    pub cwd: String,
    pub created_at: SystemTime,
}

/// What the agent spent, over all its rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub usage: UsageReport,
    pub turns: u32,
}

/// The last round's answer, or why there is none.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub result: Option<String>,
    /// The answer parsed, when the spawn asked for an `output_schema` (valid against it).
    pub result_json: Option<serde_json::Value>,
    /// The final answer's stop reason (`max_tokens`: cut at the token limit).
    pub stop_reason: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
}

/// The agent's output: the readable ring, the transcript, stderr, and counters.
#[derive(Debug)]
pub struct Io {
    pub output: OutputBuffer,
    pub transcript: Option<Transcript>,
    pub stderr: StderrTail,
    /// Bytes read from the worker's stdout (events), all of them.
    pub stdout_bytes: u64,
    /// When the worker's first output arrived (its `started` event, normally).
    pub first_event_at: Option<SystemTime>,
    /// Which sandbox the worker says is in force (from its `started` event).
    pub sandbox: Option<String>,
    /// Event lines longer than the line cap, dropped; their bytes are counted here.
    pub oversize_dropped: u64,
    /// Why the agent's output went over a cap (the transcript's, or the longest event
    /// line), once it did: the agent is being stopped as `output_limit`.
    pub overflow: Option<String>,
    /// Whether the readable output ends in the middle of a line.
    pub mid_line: bool,
    /// Bumped whenever output arrives or the agent ends; waiters on output subscribe.
    pub output_seq: tokio::sync::watch::Sender<u64>,
}

impl Io {
    /// Appends `text` to the readable output.
    pub fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.output.push(text);
        self.mid_line = !text.ends_with('\n');
    }

    /// Appends `line` (ending in a newline) on a line of its own.
    pub fn push_line(&mut self, line: &str) {
        let nl = if self.mid_line { "\n" } else { "" };
        self.push_text(&format!("{nl}{line}"));
    }

    /// Wakes whoever waits on this agent's output.
    pub fn bump(&self) {
        self.output_seq.send_modify(|v| *v += 1);
    }
}

/// The rounds of the agent's conversation: what a follow-up (`agent_send`) needs to
/// continue it, and what to put back when a follow-up round is cancelled before it
/// starts.
#[derive(Debug)]
pub struct Rounds {
    /// What every round's worker shares (model, role, tools, cwd, provider): the spec the
    /// agent was spawned with.
    pub spec: Box<TaskSpec>,
    /// Rounds begun: 1 at spawn, one more per follow-up.
    pub count: u32,
    /// Usage and turns of the rounds before the current one; the current worker reports
    /// its own, and the record's `totals` are the sums.
    pub prior: Totals,
    /// The conversation so far: what a follow-up continues.
    pub conversation: Conversation,
    /// Follow-ups sent while it ran that its worker has not yet taken into the
    /// conversation (it does at its next turn boundary, and says so by their ids).
    pub pending: Vec<PendingFollowUp>,
    /// The id of the next follow-up sent to a running worker.
    next_follow_up: u64,
    /// While a follow-up round waits queued: what the agent was before it.
    reopened: Option<Box<Reopened>>,
}

/// An agent's conversation, from its worker's `message` events, or where to read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Conversation {
    /// In memory, in order; empty when none was told (or once an agent that cannot
    /// continue ended).
    Memory(Vec<Message>),
    /// All of it is in the completed agent's transcript: read back for its next round,
    /// so an ended agent holds none of it in memory.
    InTranscript,
}

impl Conversation {
    /// The messages in memory; none when they are in the transcript.
    pub fn messages(&self) -> &[Message] {
        match self {
            Conversation::Memory(messages) => messages,
            Conversation::InTranscript => &[],
        }
    }

    /// Adds a message the worker told. The worker of a round continues a conversation
    /// read back into memory, so one in the transcript gets none.
    pub fn push(&mut self, message: Message) {
        if let Conversation::Memory(messages) = self {
            messages.push(message);
        }
    }
}

/// A follow-up on its way into a running worker's conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFollowUp {
    /// Echoed by the worker's `message` event that takes it in.
    pub id: u64,
    pub text: String,
}

/// What a completed agent was before `agent_send` queued its next round: put back when
/// that round is cancelled before it starts.
#[derive(Debug)]
struct Reopened {
    /// Its completed end.
    end: AgentState,
    limits: Limits,
    answer: Answer,
    prior: Totals,
}

impl Rounds {
    /// A fresh id for a follow-up to the running worker: its worker echoes it when it
    /// takes the follow-up in.
    pub fn next_follow_up_id(&mut self) -> u64 {
        let id = self.next_follow_up;
        self.next_follow_up += 1;
        id
    }

    /// The worker took follow-ups `ids` into its conversation: their texts, in order,
    /// no longer pending. Ids not pending (told twice, or unknown) are skipped.
    pub fn take_in(&mut self, ids: &[u64]) -> Vec<String> {
        ids.iter()
            .filter_map(|id| {
                let i = self.pending.iter().position(|p| p.id == *id)?;
                Some(self.pending.remove(i).text)
            })
            .collect()
    }

    /// The round started: it can no longer be cancelled back to the end before it.
    pub fn started(&mut self) {
        self.reopened = None;
    }

    /// What an ended agent no longer needs in memory: its round's task and history (a
    /// next round gets new ones), and its conversation, which only a completed agent
    /// continues, from its transcript when that holds all of it (`saved`; kept in memory
    /// when it does not).
    pub fn release(&mut self, outcome: Outcome, saved: bool) {
        self.spec.task = String::new();
        self.spec.history = Vec::new();
        if outcome != Outcome::Completed || saved {
            let told = !self.conversation.messages().is_empty();
            self.conversation = if outcome == Outcome::Completed && told {
                Conversation::InTranscript
            } else {
                Conversation::Memory(Vec::new())
            };
        }
    }
}

impl AgentRecord {
    /// A queued agent `id` whose first round starts with `spec` (its `agent_id` set),
    /// routed by `route` to the role chosen by `role_choice`.
    pub fn new(
        id: String,
        label: Option<String>,
        spec: TaskSpec,
        route: Route,
        role_choice: RoleChoice,
    ) -> AgentRecord {
        let meta = Meta {
            label,
            task_preview: preview(&spec.task),
            role: spec.role.clone(),
            role_choice,
            cwd: spec.cwd.display().to_string(),
            created_at: SystemTime::now(),
        };
        let io = Io {
            output: OutputBuffer::new(spec.limits.max_output_bytes as usize),
            transcript: None,
            stderr: StderrTail::new(STDERR_TAIL_BYTES),
            stdout_bytes: 0,
            first_event_at: None,
            sandbox: None,
            oversize_dropped: 0,
            overflow: None,
            mid_line: false,
            output_seq: tokio::sync::watch::channel(0).0,
        };
        let rounds = Rounds {
            spec: Box::new(spec.clone()),
            count: 1,
            prior: Totals::default(),
            conversation: Conversation::Memory(Vec::new()),
            pending: Vec::new(),
            next_follow_up: 0,
            reopened: None,
        };
        AgentRecord {
            id,
            meta,
            route,
            limits: spec.limits,
            state: AgentState::queued(Box::new(spec)),
            totals: Totals::default(),
            answer: Answer::default(),
            io,
            rounds,
        }
    }

    pub fn status(&self) -> Status {
        self.state.status()
    }

    /// A completed agent's next round, queued with `spec` under `limits` (over all its
    /// rounds): what it was is kept to put back should the round be cancelled before it
    /// starts; earlier usage is set aside to add up, and the last answer cleared.
    pub fn begin_round(
        &mut self,
        spec: Box<TaskSpec>,
        limits: Limits,
    ) -> Result<(), IllegalTransition> {
        let end = self.state.reopen(spec)?;
        self.rounds.reopened = Some(Box::new(Reopened {
            end,
            limits: self.limits,
            answer: std::mem::take(&mut self.answer),
            prior: self.rounds.prior,
        }));
        self.limits = limits;
        self.rounds.count += 1;
        self.rounds.prior = self.totals;
        self.rounds.pending.clear();
        Ok(())
    }

    /// Puts back the completed agent a queued follow-up round began from (its end,
    /// limits, answer and earlier usage): the round was cancelled before it started.
    /// False when the agent is not such a round.
    pub fn cancel_round(&mut self) -> bool {
        let Some(before) = self.rounds.reopened.take() else {
            return false;
        };
        let Reopened {
            end,
            limits,
            answer,
            prior,
        } = *before;
        if self.state.restore(end).is_err() {
            return false;
        }
        self.limits = limits;
        self.answer = answer;
        self.rounds.prior = prior;
        self.rounds.count -= 1;
        true
    }
}

/// `task` on one line, at most `TASK_PREVIEW_CHARS`.
fn preview(task: &str) -> String {
    let one_line = task.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= TASK_PREVIEW_CHARS {
        one_line
    } else {
        one_line
            .chars()
            .take(TASK_PREVIEW_CHARS - 1)
            .collect::<String>()
            + "…"
    }
}

#[cfg(test)]
impl AgentRecord {
    /// A queued record with id `id`, as the registry holds one.
    pub(crate) fn for_test(id: &str) -> AgentRecord {
        let limits = bg_agent_worker::config::Config::builtin().unwrap().defaults;
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "task": "t", "role": "general", "system_prompt": "s", "tools": [],
            "provider": {"name": "a", "kind": "anthropic", "base_url": "http://x", "max_retries": 0, "request_timeout_seconds": 1},
            "model": "m", "cwd": "/", "limits": limits,
        }))
        .unwrap();
        let route = Route {
            tier: bg_agent_worker::values::Tier::Fast,
            provider: "a".into(),
            model: "m".into(),
            routed_by: bg_agent_worker::routing::RoutedBy::Default,
            reason: String::new(),
        };
        AgentRecord::new(id.to_string(), None, spec, route, RoleChoice::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::outcome::{ExitInfo, ExitReason};
    use crate::supervisor::state::Channels;

    #[test]
    fn a_cancelled_round_puts_back_the_completed_agent_it_began_from() {
        let mut rec = AgentRecord::for_test("a");
        let channels = Channels {
            control: tokio::sync::mpsc::unbounded_channel().0,
            inbox: tokio::sync::mpsc::unbounded_channel().0,
        };
        rec.state.start(1, channels).unwrap();
        let done = ExitInfo::without_process(ExitReason::Completed);
        rec.state.end(Outcome::Completed, done).unwrap();
        rec.answer.result = Some("42".into());
        rec.totals.turns = 3;
        let before_limits = rec.limits;
        let mut raised = rec.limits;
        raised.max_turns += 5;
        let next = rec.rounds.spec.clone();
        rec.begin_round(next.clone(), raised).unwrap();
        assert_eq!(rec.status(), Status::Queued);
        assert_eq!((rec.rounds.count, rec.rounds.prior.turns), (2, 3));
        assert!(rec.answer.result.is_none(), "a new round has no answer yet");
        assert!(rec.cancel_round());
        assert_eq!(rec.status(), Status::Completed);
        assert_eq!(rec.answer.result.as_deref(), Some("42"));
        assert_eq!((rec.rounds.count, rec.rounds.prior.turns), (1, 0));
        assert_eq!(rec.limits, before_limits);
        assert!(!rec.cancel_round(), "put back once");
        // A round that started cannot be put back.
        rec.begin_round(next, raised).unwrap();
        let channels = Channels {
            control: tokio::sync::mpsc::unbounded_channel().0,
            inbox: tokio::sync::mpsc::unbounded_channel().0,
        };
        rec.state.start(2, channels).unwrap();
        rec.rounds.started();
        assert!(!rec.cancel_round());
        assert_eq!(rec.status(), Status::Running);
    }

    #[test]
    fn follow_ups_are_taken_in_by_id_once() {
        let mut rounds = AgentRecord::for_test("a").rounds;
        let (first, second) = (rounds.next_follow_up_id(), rounds.next_follow_up_id());
        assert_ne!(first, second);
        for id in [first, second] {
            let text = "same text".to_string();
            rounds.pending.push(PendingFollowUp { id, text });
        }
        assert_eq!(rounds.take_in(&[second, 99]), ["same text"]);
        assert_eq!(rounds.pending.len(), 1);
        assert_eq!(rounds.pending[0].id, first);
        assert!(rounds.take_in(&[second]).is_empty(), "taken in once");
        assert_eq!(rounds.take_in(&[first]), ["same text"]);
        assert!(rounds.pending.is_empty());
    }

    #[test]
    fn a_preview_is_one_line_of_at_most_200_chars() {
        assert_eq!(preview("a\n  b\tc"), "a b c");
        let long = preview(&"x".repeat(300));
        assert_eq!(long.chars().count(), TASK_PREVIEW_CHARS);
        assert!(long.ends_with('…'));
    }
}
