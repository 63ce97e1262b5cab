//! The registry of agents: records by id, the FIFO of queued agents, which agents hold a
//! run slot, the order in which agents ended (for eviction), and the ids pending waits
//! watch or a wait's pages still read.
//!
//! Not here: a record's parts (`record`), its lifecycle (`state`), statuses and how an
//! end is classified (`outcome`), scheduling (`manager`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::outcome::{ExitInfo, Outcome};
use super::record::AgentRecord;

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
        self.queue.iter().any(|q| {
            self.agents
                .get(q)
                .is_some_and(|r| r.route.provider == provider)
        })
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

    #[test]
    fn run_slots_follow_admission_and_are_given_back_once() {
        let mut r = Registry::default();
        r.insert(AgentRecord::for_test("a"), false);
        r.insert(AgentRecord::for_test("b"), true);
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
        for _ in 0..2000 {
            let id = r.new_id();
            assert_eq!(id.len(), 7);
            assert!(id.starts_with("a-"));
            assert!(!r.agents.contains_key(&id), "{id} is already taken");
            r.agents.insert(id.clone(), AgentRecord::for_test(&id));
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
        r.agents
            .insert(first.clone(), AgentRecord::for_test(&first));
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
