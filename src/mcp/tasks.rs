//! The MCP tasks extension (`io.modelcontextprotocol/tasks`, protocol 2026-07-28): for a
//! client that declares it, `agent_spawn` answers with a task whose id is the agent id.
//!
//! One design for every client: the model sees the agent id at once (the task id, and
//! `_meta["com.anthropic/agent-task"].modelImmediateResponse`, which Claude Code shows the
//! model), and the end of the agent's first round reaches the model exactly once, through
//! the task (Claude Code's `<task-notification>`): the notice board holds a task claim on
//! that end, so neither the hooks nor tool replies tell it, and the `Stop` hook does not
//! hold a turn for the agent. Later rounds (`agent_send`) are plain notices. An end the
//! model already read in an `agent_wait` or `agent_status` reply is not repeated in full:
//! the task's result then points back to that reply.
//!
//! The task follows the agent: `working` while it is queued or running, with a
//! `statusMessage` of its progress; `completed` with a result shaped like agent_spawn's
//! (its outputSchema) plus the answer; `failed` with the failure in a sentence; `cancelled`
//! after `tasks/cancel`, which kills the agent. Its TTL covers the agent's wall clock.
//! A task id this server did not issue (the client re-adopted it after a restart) gets a
//! terminal status at once: `completed` when the agent's transcript ends with its answer,
//! else `failed`: agents never outlive the server that ran them.
//!
//! Not here: which requests may get a task (`BgAgents::call_tool`), the notices.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bg_agent_worker::protocol::{Event, TranscriptLine};
use bg_agent_worker::values::Tier;
use rmcp::ErrorData;
use rmcp::model::{
    CallToolResult, ContentBlock, CreateTaskResult, DetailedTask, JsonObject, MetaObject, Task,
    TaskPayload, TaskStatus,
};
use rmcp::task_manager::current_timestamp;
use serde_json::{Value, json};
use tokio::task::AbortHandle;

use super::BgAgents;
use super::params::SpawnParams;
use super::reply::{AgentReply, Spawned};
use super::text;
use crate::supervisor::StatusView;
use crate::supervisor::{Manager, Status};

/// How often the client is asked to poll, in milliseconds.
const POLL_INTERVAL_MS: u64 = 2000;
/// How long an ended task stays readable past its agent's end, in milliseconds.
const RETAIN_MS: u64 = 3_600_000;
/// How long one internal wait lasts before the waiter checks again.
const WAIT_SLICE: Duration = Duration::from_secs(3600);
/// The `_meta` key under which Claude Code reads what the model is told at once.
pub const AGENT_TASK_META: &str = "com.anthropic/agent-task";
/// Most bytes of a transcript's end read back after a restart.
const TRANSCRIPT_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// The agents this server answered as MCP tasks, by agent id (= task id).
#[derive(Default)]
pub(super) struct AgentTasks {
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    created_at: String,
    created: Instant,
    /// The agent's wall-clock limit, in milliseconds.
    timeout_ms: u64,
    cancel_requested: bool,
    /// The agent as its first round ended: what the task reports from then on.
    end: Option<Box<StatusView>>,
    /// The model already read that end in a tool reply.
    end_told: bool,
    /// The client was given the task's final result: it stays what it was (a later
    /// round's answer shown in a reply does not change it).
    delivered: bool,
    /// Calls in flight that may show the end (agent_wait, agent_status): until they
    /// answer, the task does not show it either, so the answer is told once.
    readers: usize,
    waiter: Option<AbortHandle>,
}

/// A call that may show task agents' ends is in flight; dropping it ends that.
pub(super) struct Reading {
    tasks: Arc<AgentTasks>,
    ids: Vec<String>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut entries = self.tasks.entries();
        for id in &self.ids {
            if let Some(e) = entries.get_mut(id) {
                e.readers = e.readers.saturating_sub(1);
            }
        }
    }
}

impl AgentTasks {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a call about the agents in `args` (agent_wait's `agent_ids`,
    /// agent_status's `agent_id`) is in flight, until the returned guard is dropped.
    pub(super) fn reading(self: &Arc<Self>, tool: &str, args: Option<&JsonObject>) -> Reading {
        let ids: Vec<String> = match (tool, args) {
            ("agent_wait", Some(a)) => a
                .get("agent_ids")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            ("agent_status", Some(a)) => a
                .get("agent_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        let mut entries = self.entries();
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| match entries.get_mut(id) {
                Some(e) => {
                    e.readers += 1;
                    true
                }
                None => false,
            })
            .collect();
        Reading {
            tasks: Arc::clone(self),
            ids,
        }
    }

    /// Marks the answers a tool reply shows (agent_status, agent_wait, agent_kill) as
    /// told, for the agents tracked as tasks.
    pub(super) fn note_told(&self, reply: &Value) {
        let answered = answered_in(reply);
        if answered.is_empty() {
            return;
        }
        let mut entries = self.entries();
        for id in answered {
            if let Some(e) = entries.get_mut(id)
                && !e.delivered
            {
                e.end_told = true;
            }
        }
    }

    /// Stops following every agent (the session is ending).
    pub(super) fn shutdown(&self) {
        for e in self.entries().values_mut() {
            if let Some(w) = e.waiter.take() {
                w.abort();
            }
        }
    }
}

impl BgAgents {
    /// Spawns the agent and answers with its task, or with the tool error a caller's
    /// mistake gets in any mode.
    pub(super) async fn spawn_as_task(
        &self,
        p: SpawnParams,
    ) -> Result<CreateTaskResult, CallToolResult> {
        let view = self
            .spawn_agent(p)
            .await
            .map_err(|m| CallToolResult::error(vec![ContentBlock::text(m)]))?;
        let id = view.agent_id.clone();
        if let Some(board) = &self.notices {
            board.leave_to_task(&id);
        }
        let timeout_ms = view.limits.timeout_seconds.saturating_mul(1000);
        let created_at = current_timestamp();
        self.agent_tasks.entries().insert(
            id.clone(),
            Entry {
                created_at: created_at.clone(),
                created: Instant::now(),
                timeout_ms,
                cancel_requested: false,
                end: None,
                end_told: false,
                delivered: false,
                readers: 0,
                waiter: None,
            },
        );
        // Started after the entry exists, so an end within microseconds is kept too.
        let waiter = tokio::spawn(follow(
            Arc::clone(&self.manager),
            Arc::clone(&self.agent_tasks),
            id.clone(),
        ));
        if let Some(e) = self.agent_tasks.entries().get_mut(&id)
            && e.end.is_none()
        {
            e.waiter = Some(waiter.abort_handle());
        }
        let spawned = Spawned::of(&view, self.manager.config());
        let task = Task::new(&id, TaskStatus::Working, &created_at, &created_at)
            .with_status_message(view.status.as_str())
            .with_ttl_ms(timeout_ms.saturating_add(RETAIN_MS))
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        let told = format!(
            "Spawned {id} ({status}): role {role}, {tier} tier → {model}.\nIts end comes to \
             you as this task's notification: no need to agent_wait on it; agent_status, \
             agent_output, agent_send and agent_kill take agent_id \"{id}\". It is stopped \
             when this session ends.",
            status = spawned.status.as_str(),
            role = spawned.role,
            tier = spawned.tier,
            model = spawned.model,
        );
        let mut meta = JsonObject::new();
        meta.insert(
            AGENT_TASK_META.into(),
            json!({ "modelImmediateResponse": told }),
        );
        Ok(CreateTaskResult::new(task).with_meta(MetaObject(meta)))
    }

    /// `tasks/get`: the task of an agent this server runs, or a terminal answer for an id
    /// it never issued.
    pub(super) fn agent_task(&self, task_id: &str) -> DetailedTask {
        let mut entries = self.agent_tasks.entries();
        let Some(e) = entries.get_mut(task_id) else {
            drop(entries);
            return self.foreign_task(task_id);
        };
        let now = current_timestamp();
        let age_ms = millis(e.created.elapsed());
        let view = match &e.end {
            Some(end) => Some((**end).clone()),
            None => self.manager.status(task_id).ok(),
        };
        let Some(view) = view else {
            // The record was dropped (retention): the task cannot say more than that.
            let task = Task::new(task_id, TaskStatus::Failed, &e.created_at, &now);
            return DetailedTask::new(
                task.with_status_message("gone: no longer retained by this server"),
                failed(format!(
                    "agent {task_id} is no longer retained by this server; its transcript \
                     has what it did"
                )),
            );
        };
        let ttl = if view.status.is_terminal() {
            age_ms.saturating_add(RETAIN_MS)
        } else {
            let ran = view.elapsed_seconds.map_or(0, |s| (s * 1000.0) as u64);
            age_ms
                .saturating_add(e.timeout_ms.saturating_sub(ran))
                .saturating_add(RETAIN_MS)
        };
        let task = Task::new(task_id, TaskStatus::Working, &e.created_at, &now)
            .with_status_message(status_message(&view))
            .with_ttl_ms(ttl)
            .with_poll_interval_ms(POLL_INTERVAL_MS);
        let phase = phase(view.status, e.cancel_requested, e.readers);
        e.delivered |= phase == TaskStatus::Completed && e.end.is_some();
        let payload = match phase {
            TaskStatus::Cancelled => TaskPayload::Cancelled,
            TaskStatus::Completed => TaskPayload::Completed {
                result: final_result(&view, self.manager.config(), e.end_told),
            },
            TaskStatus::Failed => failed(failure_sentence(&view)),
            _ => TaskPayload::Working,
        };
        DetailedTask::new(task, payload)
    }

    /// `tasks/cancel`: kills the agent. A task that already ended is refused (-32602), as
    /// the tasks extension asks.
    pub(super) fn cancel_agent_task(&self, task_id: &str) -> Result<(), ErrorData> {
        let mut entries = self.agent_tasks.entries();
        let Some(e) = entries.get_mut(task_id) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "task {task_id} was not issued by this server: its agent, if any, was \
                     stopped when the server that ran it exited; nothing to cancel"
                ),
                None,
            ));
        };
        if let Some(end) = &e.end {
            return Err(ErrorData::invalid_params(
                format!(
                    "task {task_id} already ended ({}): nothing to cancel",
                    end.status.as_str()
                ),
                None,
            ));
        }
        e.cancel_requested = true;
        drop(entries);
        let manager = Arc::clone(&self.manager);
        let id = task_id.to_string();
        tokio::spawn(async move {
            if let Err(err) = manager.kill(&id, None).await {
                tracing::warn!(agent = %id, "tasks/cancel could not kill the agent: {err}");
            }
        });
        Ok(())
    }

    /// The terminal answer for a task id this server did not issue: read from the
    /// agent's transcript when one ended with an answer.
    fn foreign_task(&self, task_id: &str) -> DetailedTask {
        let now = current_timestamp();
        let answered = valid_agent_id(task_id)
            .then(|| find_transcript(self.manager.transcript_dir(), task_id))
            .flatten()
            .and_then(|path| read_back(&path));
        let task = Task::new(task_id, TaskStatus::Failed, &now, &now);
        match answered {
            Some(back) => {
                let tiers = &self.manager.config().tiers;
                let tier = Tier::ALL
                    .into_iter()
                    .find(|t| tiers.get(*t).model == back.model)
                    .map_or("unknown", Tier::as_str);
                let structured = json!({
                    "agent_id": task_id,
                    "status": Status::Completed,
                    "result": back.result,
                    "model": back.model,
                    "tier": tier,
                    "role": back.role,
                    "routed_by": "unknown (read back from its transcript)",
                    "note": "The bg-agents server that ran this agent exited; its answer was read back from its transcript.",
                });
                DetailedTask::new(
                    task.with_status_message("completed (read back after a restart)"),
                    TaskPayload::Completed {
                        result: tool_result(
                            structured,
                            format!(
                                "{task_id} completed (read back from its transcript after a restart): {}",
                                back.result
                            ),
                        ),
                    },
                )
            }
            None => DetailedTask::new(
                task.with_status_message("stopped: its bg-agents server exited"),
                failed(format!(
                    "agent {task_id} was stopped when the bg-agents server that ran it exited \
                     (agents never outlive their session); spawn it again if its answer is \
                     still needed"
                )),
            ),
        }
    }
}

/// The task's status for an agent in `status`: an end that a blocking call in flight
/// (`readers`) is about to show stays `working` until that reply says it first; a kill
/// the client asked for (tasks/cancel) is `cancelled`.
fn phase(status: Status, cancel_requested: bool, readers: usize) -> TaskStatus {
    match status {
        s if !s.is_terminal() || readers > 0 => TaskStatus::Working,
        Status::Killed if cancel_requested => TaskStatus::Cancelled,
        Status::Completed => TaskStatus::Completed,
        _ => TaskStatus::Failed,
    }
}

/// Waits for the end of the agent's first round and keeps it as the task's end.
async fn follow(manager: Arc<Manager>, tasks: Arc<AgentTasks>, id: String) {
    loop {
        match manager.wait_status(&id, WAIT_SLICE).await {
            Ok(v) if v.status.is_terminal() => {
                if let Some(e) = tasks.entries().get_mut(&id) {
                    e.end = Some(Box::new(v));
                    e.waiter = None;
                }
                return;
            }
            Ok(_) => {}
            // The record is gone: `agent_task` says so.
            Err(_) => return,
        }
    }
}

/// Ids of agents whose final answer a reply shows: `agent_id` with a terminal `status`
/// and a `result`, at the top or in `agents` rows (agent_list's rows carry no answer).
fn answered_in(v: &Value) -> HashSet<&str> {
    fn answered(o: &Value) -> Option<&str> {
        let status = o.get("status").and_then(Value::as_str)?;
        let ended = Status::parse(status).is_some_and(Status::is_terminal);
        (ended && o.get("result").is_some()).then(|| o.get("agent_id").and_then(Value::as_str))?
    }
    let mut ids: HashSet<&str> = answered(v).into_iter().collect();
    if let Some(rows) = v.get("agents").and_then(Value::as_array) {
        ids.extend(rows.iter().filter_map(answered));
    }
    ids
}

/// The person's one-line view of the agent in the client's task panel.
fn status_message(v: &StatusView) -> String {
    let mut s = match v.status {
        Status::Queued => match &v.queued_reason {
            Some(why) => format!("queued: {why}"),
            None => "queued".to_string(),
        },
        Status::Running => format!("running, turn {}", v.turns.max(1)),
        Status::Completed => format!(
            "completed in {} turn{}",
            v.turns,
            if v.turns == 1 { "" } else { "s" }
        ),
        other => format!("{}: {}", other.as_str(), short(v.error.as_deref())),
    };
    let tokens = v.usage.input_tokens + v.usage.output_tokens;
    if tokens > 0 {
        s.push_str(&format!(", {} tokens", human_count(tokens)));
    }
    if let Some(c) = v.usage.cost_usd.filter(|c| *c > 0.0) {
        s.push_str(&format!(", ${c:.4}"));
    }
    s
}

/// The failure in a few words.
fn short(error: Option<&str>) -> String {
    let line = error
        .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("no error message");
    let mut s: String = line.chars().take(80).collect();
    if line.chars().count() > 80 {
        s.push('…');
    }
    s
}

fn human_count(n: u64) -> String {
    match n {
        0..1000 => n.to_string(),
        1000..1_000_000 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

fn failure_sentence(v: &StatusView) -> String {
    format!(
        "agent {} ended {}: {} (agent_status {{\"agent_id\": \"{}\"}} has the details)",
        v.agent_id,
        v.status.as_str(),
        short(v.error.as_deref()),
        v.agent_id
    )
}

/// A completed task's result: agent_spawn's reply (its outputSchema) with the agent's
/// final status and answer; only a pointer to the answer when the model already read it.
fn final_result(
    v: &StatusView,
    config: &bg_agent_worker::config::Config,
    told: bool,
) -> JsonObject {
    let reply = AgentReply::of(v, config, false, super::tools::RESULT_MAX_BYTES);
    let readable = text::status(&reply, None);
    let mut structured = serde_json::to_value(&reply).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut structured {
        // The model wrote the task, and "ended … ago" is stale by the time it reads this.
        map.remove("task");
        map.remove("ended_s_ago");
        map.insert("tier".into(), v.tier.as_str().into());
        map.insert("routed_by".into(), v.routed_by.as_str().into());
        if told {
            map.remove("result");
            map.remove("result_json");
            map.remove("read_on");
            map.insert(
                "note".into(),
                Value::String(format!(
                    "Its answer was already in an earlier bg-agents reply; agent_status {{\"agent_id\": \"{}\"}} shows it again.",
                    v.agent_id
                )),
            );
        }
    }
    let readable = if told {
        format!(
            "{} completed; its answer was already in an earlier bg-agents reply.",
            v.agent_id
        )
    } else {
        readable
    };
    tool_result(structured, readable)
}

fn tool_result(structured: Value, readable: String) -> JsonObject {
    let mut r = CallToolResult::structured(structured);
    r.content = vec![ContentBlock::text(readable)];
    match serde_json::to_value(&r) {
        Ok(Value::Object(o)) => o,
        _ => JsonObject::new(),
    }
}

fn failed(message: String) -> TaskPayload {
    let error = ErrorData::internal_error(message, None);
    let error = match serde_json::to_value(&error) {
        Ok(Value::Object(o)) => o,
        _ => JsonObject::new(),
    };
    TaskPayload::Failed { error }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `id` has the form of this server's agent ids (`a-` and letters or digits), so
/// it can name a transcript file and nothing else.
fn valid_agent_id(id: &str) -> bool {
    id.strip_prefix("a-").is_some_and(|rest| {
        (1..=40).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The newest transcript of `agent_id` among the sessions beside `session_dir` (each
/// server writes its own `session-…` directory under the same transcript directory).
fn find_transcript(session_dir: &Path, agent_id: &str) -> Option<PathBuf> {
    let base = session_dir.parent()?;
    let name = format!("{agent_id}.jsonl");
    std::fs::read_dir(base)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("session-"))
        .map(|e| e.path().join(&name))
        .filter_map(|p| {
            let modified = p.symlink_metadata().ok()?.modified().ok()?;
            Some((modified, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// What a transcript says of an agent that answered.
struct ReadBack {
    model: String,
    role: String,
    result: String,
}

/// The agent's last answer, when its transcript's last run ended with one.
fn read_back(path: &Path) -> Option<ReadBack> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut head = String::new();
    (&mut file).take(64 * 1024).read_to_string(&mut head).ok();
    let started = head
        .lines()
        .filter_map(TranscriptLine::event_of)
        .find_map(|e| match e {
            Event::Started { model, role, .. } => Some((model, role)),
            _ => None,
        })?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TRANSCRIPT_TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    let last = tail
        .lines()
        .rev()
        .filter_map(TranscriptLine::event_of)
        .find(|e| e.is_final() || matches!(e, Event::Started { .. }))?;
    match last {
        Event::Result { text, .. } => Some(ReadBack {
            model: started.0,
            role: started.1,
            result: text,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_follows_its_agent_and_waits_for_a_reply_that_shows_the_end() {
        assert_eq!(phase(Status::Queued, false, 0), TaskStatus::Working);
        assert_eq!(phase(Status::Running, true, 0), TaskStatus::Working);
        assert_eq!(phase(Status::Completed, false, 0), TaskStatus::Completed);
        assert_eq!(phase(Status::Completed, false, 1), TaskStatus::Working);
        assert_eq!(phase(Status::TimedOut, false, 2), TaskStatus::Working);
        assert_eq!(phase(Status::Killed, true, 0), TaskStatus::Cancelled);
        assert_eq!(phase(Status::Killed, false, 0), TaskStatus::Failed);
        assert_eq!(phase(Status::BudgetExceeded, false, 0), TaskStatus::Failed);
    }

    #[test]
    fn only_agent_ids_name_transcripts() {
        assert!(valid_agent_id("a-7f3k2"));
        for bad in ["", "a-", "../a-1", "a-1/..", "a-1.jsonl", "b-123", "a-1 2"] {
            assert!(!valid_agent_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_transcript_that_ends_with_an_answer_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-1.jsonl");
        let config = bg_agent_worker::config::Config::builtin().unwrap();
        let started = Event::Started {
            model: "m-1".into(),
            provider: "p".into(),
            role: "explorer".into(),
            limits: config.defaults,
            sandbox: None,
            cwd: None,
        }
        .to_json_line();
        let result = r#"{"type":"result","text":"the answer","stop_reason":"end_turn","turns":2}"#;
        let error = r#"{"type":"error","kind":"provider","message":"boom"}"#;
        std::fs::write(&path, format!("{started}\n{result}\n")).unwrap();
        let back = read_back(&path).expect("an answered transcript reads back");
        assert_eq!(back.result, "the answer");
        assert_eq!(back.model, "m-1");
        // A later round that failed, or one cut off, is not an answer.
        std::fs::write(&path, format!("{started}\n{result}\n{error}\n")).unwrap();
        assert!(read_back(&path).is_none());
        std::fs::write(&path, format!("{started}\n{result}\n{started}\n")).unwrap();
        assert!(read_back(&path).is_none());
    }
}
