//! Agent records, their state machine, and the registry that holds them: records by id,
//! the FIFO of queued agents, which agents hold a run slot, and the order in which agents
//! ended (for eviction).
//!
//! Not here: statuses and how an end is classified (`outcome`), processes (`process`),
//! output storage (`output`), scheduling (`manager`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bg_agent_worker::protocol::{ErrorKind, Message, TaskSpec, UsageReport};
use bg_agent_worker::roles::RoleChoice;
use bg_agent_worker::routing::RoutedBy;
use bg_agent_worker::values::{Limits, Tier};

use super::outcome::{ExitInfo, Outcome, Status};
use super::output::{OutputBuffer, StderrTail, Transcript};

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
        outcome: Outcome,
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
            AgentState::Ended { outcome, .. } => outcome.status(),
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

    /// queued → running; returns the spec the worker is started with.
    pub fn start(&mut self, pid: u32) -> Result<Box<TaskSpec>, IllegalTransition> {
        let running = AgentState::Running {
            pid,
            started_at: SystemTime::now(),
        };
        match std::mem::replace(self, running) {
            AgentState::Queued { spec } => Ok(spec),
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
            } => Ok(std::mem::replace(self, AgentState::Queued { spec })),
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

    /// queued → killed or failed; running → any outcome.
    pub fn end(&mut self, outcome: Outcome, exit: ExitInfo) -> Result<(), IllegalTransition> {
        Self::check_transition(self.status(), outcome.status())?;
        let (started_at, pid) = match self {
            AgentState::Running { pid, started_at } => (Some(*started_at), Some(*pid)),
            _ => (None, None),
        };
        *self = AgentState::Ended {
            outcome,
            exit,
            started_at,
            pid,
            ended_at: SystemTime::now(),
        };
        Ok(())
    }
}

/// What a completed agent was before `agent_send` queued its next round: put back when
/// that round is cancelled before it starts.
#[derive(Debug)]
pub struct Reopened {
    /// Its completed end.
    pub end: AgentState,
    pub limits: Limits,
    pub result: Option<String>,
    pub stop_reason: Option<String>,
    pub prior_usage: UsageReport,
    pub prior_turns: u32,
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
    pub usage: UsageReport,
    /// The final answer's stop reason (`max_tokens`: cut at the token limit).
    pub stop_reason: Option<String>,
    pub turns: u32,
    pub result: Option<String>,
    /// The answer parsed, when the spawn asked for an `output_schema` (valid against it).
    pub result_json: Option<serde_json::Value>,
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
    /// The conversation so far, from the worker's `message` events: what a follow-up
    /// (`agent_send`) continues. Empty once the agent ended: a completed agent's is read
    /// back from its transcript for its next round (`conversation_saved`).
    pub conversation: Vec<Message>,
    /// The conversation left memory when the agent completed: its transcript holds all
    /// of it.
    pub conversation_saved: bool,
    /// What every round's worker shares (model, role, tools, cwd, provider): the spec the
    /// agent was spawned with.
    pub round_spec: Box<TaskSpec>,
    /// Rounds begun: 1 at spawn, one more per follow-up.
    pub rounds: u32,
    /// Usage and turns of the rounds before the current one; the current worker reports
    /// its own, and `usage`/`turns` are the sums.
    pub prior_usage: UsageReport,
    pub prior_turns: u32,
    /// Where follow-ups to the running worker go (lines for its stdin), while it runs.
    pub inbox: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Follow-ups sent while it ran that its worker has not yet taken into the
    /// conversation (it does at its next turn boundary).
    pub pending_messages: Vec<String>,
    /// The request in flight, from the user message it sends until its usage arrives.
    pub open_turn: Option<OpenTurn>,
    /// While a follow-up round waits queued: what the agent was before it.
    pub reopened: Option<Box<Reopened>>,
}

/// A request to the task supervising a running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Kill { grace_ms: u64 },
    OutputLimit,
}

impl AgentRecord {
    pub fn status(&self) -> Status {
        self.state.status()
    }
}

/// Records by id, plus the FIFO of queued agents, the agents that hold a run slot
/// (starting or running, counted against `max_concurrent`) and the order in which agents
/// ended (for eviction).
#[derive(Debug, Default)]
pub struct Registry {
    agents: HashMap<String, AgentRecord>,
    queue: VecDeque<String>,
    /// Ids holding a run slot: from being admitted to start until their start failed or
    /// their process was reaped. A set, so a slot is given back once however many paths
    /// end an agent.
    slots: HashSet<String>,
    ended: VecDeque<String>,
    /// Ids that pending waits are watching, with how many waits: never evicted while
    /// watched, so a wait always sees the end (and result) of what it waits for.
    watched: HashMap<String, usize>,
    /// Ids a wait returned, until when they stay: the caller reads its reply's later
    /// pages with the same ids, however many agents ended in between.
    pinned: HashMap<String, Instant>,
}

/// How long the agents a wait returned stay readable for its later pages.
const PAGE_HOLD: Duration = Duration::from_secs(600);

impl Registry {
    pub fn get(&self, id: &str) -> Option<&AgentRecord> {
        self.agents.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut AgentRecord> {
        self.agents.get_mut(id)
    }

    /// Every record, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values()
    }

    /// Adds a new record: queued at the back of the FIFO, or holding a run slot when it
    /// starts at once (`start_now`).
    pub fn insert(&mut self, record: AgentRecord, start_now: bool) {
        let id = record.id.clone();
        self.agents.insert(id.clone(), record);
        if start_now {
            self.slots.insert(id);
        } else {
            self.queue.push_back(id);
        }
    }

    /// Forgets `id` entirely (a spawn that failed changes nothing).
    pub fn remove(&mut self, id: &str) -> Option<AgentRecord> {
        self.queue.retain(|q| q != id);
        self.slots.remove(id);
        self.agents.remove(id)
    }

    /// Takes queued `id` out of the queue without ending it; true when it was queued.
    pub fn unqueue(&mut self, id: &str) -> bool {
        let before = self.queue.len();
        self.queue.retain(|q| q != id);
        self.queue.len() < before
    }

    /// Queues `id` for another round (its state already reopened): out of the order of
    /// ended agents, so it is not evicted while it runs.
    pub fn queue_round(&mut self, id: &str) {
        self.ended.retain(|e| e != id);
        self.queue.push_back(id.to_string());
    }

    /// Agents holding a run slot: starting or running.
    pub fn running(&self) -> usize {
        self.slots.len()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The queued ids, oldest first.
    pub fn queued_ids(&self) -> Vec<String> {
        self.queue.iter().cloned().collect()
    }

    /// Whether an agent of `provider` waits in the queue.
    pub fn queues_provider(&self, provider: &str) -> bool {
        self.queue
            .iter()
            .any(|q| self.agents.get(q).is_some_and(|r| r.provider == provider))
    }

    /// Takes the first queued agent that `admits` lets start out of the queue and gives
    /// it a run slot; drops queued ids whose record is gone.
    pub fn admit_next(&mut self, mut admits: impl FnMut(&AgentRecord) -> bool) -> Option<String> {
        let mut i = 0;
        while i < self.queue.len() {
            let Some(rec) = self.agents.get(&self.queue[i]) else {
                self.queue.remove(i);
                continue;
            };
            if admits(rec) {
                let id = self.queue.remove(i)?;
                self.slots.insert(id.clone());
                return Some(id);
            }
            i += 1;
        }
        None
    }

    /// `id` gives its run slot back (its start failed, was cancelled, or its process was
    /// reaped); a slot already given back is fine.
    pub fn release_slot(&mut self, id: &str) {
        self.slots.remove(id);
    }

    /// `id` gives its run slot back and waits at the head of the queue again.
    pub fn requeue_front(&mut self, id: &str) {
        self.slots.remove(id);
        self.queue.retain(|q| q != id);
        self.queue.push_front(id.to_string());
    }

    /// Ends queued agent `id` with `outcome` and takes it out of the queue; `None` when
    /// there is no such record or its state may not end so.
    pub fn end_queued(
        &mut self,
        id: &str,
        outcome: Outcome,
        exit: ExitInfo,
    ) -> Option<&mut AgentRecord> {
        self.queue.retain(|q| q != id);
        let rec = self.agents.get_mut(id)?;
        rec.state.end(outcome, exit).ok()?;
        Some(rec)
    }

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
        let now = Instant::now();
        self.pinned.retain(|_, until| *until > now);
        let mut evicted = Vec::new();
        let mut kept = Vec::new();
        while self.ended.len() > retain {
            let Some(old) = self.ended.pop_front() else {
                break;
            };
            if self.watched.contains_key(&old) || self.pinned.contains_key(&old) {
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

    /// The wait that watched `ids` returned: they stay readable for `PAGE_HOLD` more.
    pub fn unwatch(&mut self, ids: &[String]) {
        let until = Instant::now() + PAGE_HOLD;
        for id in ids {
            self.pinned.insert(id.clone(), until);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::outcome::ExitReason;

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
        assert_eq!(reg.ended, ["a", "c"], "kept for the wait's later pages");
        assert!(reg.watched.is_empty());
        if let (Some(until), Some(past)) = (
            reg.pinned.get_mut("a"),
            Instant::now().checked_sub(Duration::from_secs(1)),
        ) {
            *until = past;
        }
        reg.note_ended("d", 1);
        assert_eq!(reg.ended, ["d"], "evicted once the pages' hold ran out");
    }

    fn limits() -> Limits {
        bg_agent_worker::config::Config::builtin().unwrap().defaults
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
        s.end(
            Outcome::Completed,
            ExitInfo::without_process(ExitReason::Completed),
        )
        .unwrap();
        assert!(matches!(
            s,
            AgentState::Ended {
                pid: Some(42),
                started_at: Some(_),
                ..
            }
        ));
        assert!(
            s.end(
                Outcome::Failed,
                ExitInfo::without_process(ExitReason::Crashed)
            )
            .is_err()
        );
        assert_eq!(s.status(), Status::Completed);
        // The one door out of an end: a completed agent's follow-up queues a new round.
        let next = Box::new(s_spec());
        let end = s.reopen(next.clone()).unwrap();
        assert_eq!(s.status(), Status::Queued);
        assert!(s.reopen(next.clone()).is_err(), "only an end reopens");
        // Its round cancelled before it started: back to the end it left, once.
        s.restore(end).unwrap();
        assert_eq!(s.status(), Status::Completed);
        let end = s.reopen(next.clone()).unwrap();
        s.start(43).unwrap();
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
        s.start(44).unwrap();
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

    fn s_spec() -> TaskSpec {
        serde_json::from_value(serde_json::json!({
            "task": "t", "role": "general", "system_prompt": "s", "tools": [],
            "provider": {"name": "a", "kind": "anthropic", "base_url": "http://x", "max_retries": 0, "request_timeout_seconds": 1},
            "model": "m", "cwd": "/", "limits": limits(),
        }))
        .unwrap()
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
            usage: UsageReport::default(),
            turns: 0,
            result: None,
            result_json: None,
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
            conversation: Vec::new(),
            conversation_saved: false,
            round_spec: Box::new(s_spec()),
            rounds: 1,
            prior_usage: UsageReport::default(),
            prior_turns: 0,
            inbox: None,
            pending_messages: Vec::new(),
            open_turn: None,
            reopened: None,
        }
    }

    #[test]
    fn run_slots_follow_admission_and_are_given_back_once() {
        let mut r = Registry::default();
        r.insert(record("a", limits()), false);
        r.insert(record("b", limits()), true);
        assert_eq!((r.running(), r.queued()), (1, 1));
        assert_eq!(r.admit_next(|_| false), None);
        assert_eq!(r.admit_next(|_| true).as_deref(), Some("a"));
        assert_eq!((r.running(), r.queued()), (2, 0));
        r.release_slot("a");
        r.release_slot("a");
        assert_eq!(r.running(), 1, "a slot given back twice counts once");
        r.requeue_front("b");
        assert_eq!((r.running(), r.queued_ids()), (0, vec!["b".to_string()]));
        assert!(r.remove("b").is_some());
        assert_eq!((r.running(), r.queued()), (0, 0));
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
