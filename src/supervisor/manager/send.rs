//! Follow-ups (`agent_send`): another user message to an agent. A completed agent starts a
//! new round of the same conversation (a new worker with the conversation as `history`
//! and what is left of its turn, token and USD budgets); a running agent's worker gets it
//! on stdin and takes it at its next turn boundary; a queued agent's task gets it
//! appended. Every other end is final.
//!
//! Not here: the state machine's door itself (`registry`, `AgentState::reopen`), starting
//! the round's worker (`start`).

use std::sync::atomic::Ordering;

use bg_agent_worker::protocol::{Input, TaskSpec};
use bg_agent_worker::resolve::{ResolveError, raised_limits};
use bg_agent_worker::structured::OutputSchema;
use bg_agent_worker::values::{Limits, LimitsOverride};

use super::{Inner, Manager, ManagerError};
use crate::supervisor::outcome::Status;
use crate::supervisor::output::OutputError;
use crate::supervisor::registry::{AgentRecord, AgentState};
use crate::supervisor::view::StatusView;

/// What a follow-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A completed agent began round `n` (queued or running).
    Round(u32),
    /// A queued agent's task got the message appended.
    Appended,
    /// A running agent takes the message at its next turn boundary.
    Pending,
}

impl Manager {
    /// Sends `message` to agent `id`, raising its limits by `raise` (within `[max]`)
    /// first, with `schema` as the answer's output schema from now on (a completed or
    /// queued agent only); returns what happened and the agent's status right after.
    pub fn send(
        &self,
        id: &str,
        message: &str,
        raise: &LimitsOverride,
        schema: Option<&serde_json::Value>,
    ) -> Result<(Sent, StatusView), ManagerError> {
        let inner = &self.inner;
        if message.trim().is_empty() {
            return Err(ManagerError::EmptyMessage);
        }
        if let Some(schema) = schema {
            OutputSchema::new(schema)
                .map_err(|e| ManagerError::Resolve(ResolveError::Schema(e)))?;
        }
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ManagerError::ShuttingDown);
        }
        let sent = {
            let mut reg = inner.lock();
            let Some(rec) = reg.get_mut(id) else {
                drop(reg);
                return Err(self.status(id).err().unwrap_or(ManagerError::UnknownAgent {
                    id: id.to_string(),
                    hint: "agent_list shows the agents".into(),
                }));
            };
            let limits = raised_limits(&inner.config, &rec.limits, raise)?;
            match rec.status() {
                Status::Queued => {
                    if let AgentState::Queued { spec } = &mut rec.state {
                        spec.task.push_str("\n\n");
                        spec.task.push_str(message);
                        spec.limits = limits;
                        if let Some(schema) = schema {
                            spec.output_schema = Some(schema.clone());
                        }
                    }
                    keep_schema(rec, schema);
                    rec.limits = limits;
                    Sent::Appended
                }
                Status::Completed => {
                    if let Some(why) = inner.session().exhausted.clone() {
                        return Err(ManagerError::SessionBudget(why));
                    }
                    let mut spec = next_round(rec, message, limits)?;
                    if let Some(schema) = schema {
                        spec.output_schema = Some(schema.clone());
                    }
                    if let Some(t) = rec.transcript.as_mut() {
                        t.reopen().map_err(|source| {
                            ManagerError::Transcript(OutputError::TranscriptFile {
                                path: t.path().to_path_buf(),
                                source,
                            })
                        })?;
                    }
                    rec.state
                        .reopen(Box::new(spec))
                        .map_err(|_| not_resumable(rec))?;
                    keep_schema(rec, schema);
                    begin_round(rec, limits, message);
                    reg.queue_round(id);
                    Sent::Round(reg.get(id).map_or(0, |r| r.rounds))
                }
                Status::Running if schema.is_some() => {
                    return Err(ManagerError::NotResumable {
                        id: rec.id.clone(),
                        status: Status::Running.as_str(),
                        why: "a running agent's answer keeps the schema it started with; send the message without output_schema, or wait for its answer (agent_wait) and send again with output_schema".into(),
                    });
                }
                Status::Running => {
                    let line = serde_json::to_string(&Input::FollowUp {
                        message: message.to_string(),
                    })
                    .map_err(|_| not_resumable(rec))?;
                    let delivered = rec
                        .inbox
                        .as_ref()
                        .is_some_and(|tx| tx.send(line + "\n").is_ok());
                    if !delivered {
                        return Err(not_resumable(rec));
                    }
                    rec.pending_messages.push(message.to_string());
                    Sent::Pending
                }
                _ => return Err(not_resumable(rec)),
            }
        };
        if let Sent::Round(_) = sent {
            Inner::start_next(inner);
        }
        inner.bump();
        Ok((sent, self.status(id)?))
    }
}

/// The spec of a completed agent's next round: its spawn spec with the conversation so
/// far, `message` as the new user message, and what is left of `limits` after the earlier
/// rounds (turns, tokens, USD). Err when nothing is left of one of them.
fn next_round(rec: &AgentRecord, message: &str, limits: Limits) -> Result<TaskSpec, ManagerError> {
    if rec.conversation.is_empty() {
        return Err(ManagerError::NoConversation { id: rec.id.clone() });
    }
    let used_tokens = rec.usage.total_tokens();
    let used_usd = rec.usage.cost_usd.unwrap_or(0.0);
    let spent = |key: &'static str, used: String, limit: String| ManagerError::RoundBudget {
        id: rec.id.clone(),
        key,
        used,
        limit,
    };
    if rec.turns >= limits.max_turns {
        return Err(spent(
            "max_turns",
            rec.turns.to_string(),
            limits.max_turns.to_string(),
        ));
    }
    if used_tokens >= limits.max_total_tokens {
        return Err(spent(
            "max_total_tokens",
            used_tokens.to_string(),
            limits.max_total_tokens.to_string(),
        ));
    }
    if rec.usage.cost_usd.is_some() && used_usd >= limits.budget_usd {
        return Err(spent(
            "budget_usd",
            format!("${used_usd:.4}"),
            format!("${}", limits.budget_usd),
        ));
    }
    let mut spec = (*rec.round_spec).clone();
    spec.task = message.to_string();
    spec.history = rec.conversation.clone();
    spec.limits = Limits {
        max_turns: limits.max_turns - rec.turns,
        max_total_tokens: limits.max_total_tokens - used_tokens,
        budget_usd: limits.budget_usd - used_usd,
        ..limits
    };
    Ok(spec)
}

/// The record at the start of a new round: earlier usage set aside to add up, the last
/// round's answer and end cleared, and the follow-up said in the readable output.
fn begin_round(rec: &mut AgentRecord, limits: Limits, message: &str) {
    rec.limits = limits;
    rec.rounds += 1;
    rec.prior_usage = rec.usage;
    rec.prior_turns = rec.turns;
    rec.result = None;
    rec.result_json = None;
    rec.stop_reason = None;
    rec.error = None;
    rec.error_kind = None;
    rec.waiting_for = None;
    rec.pending_messages.clear();
    let nl = if rec.mid_line { "\n" } else { "" };
    let text = format!(
        "{nl}\n[round {}: follow-up] {}\n",
        rec.rounds,
        message.replace('\n', " ")
    );
    rec.output.push(&text);
    rec.mid_line = false;
    rec.output_seq.send_modify(|v| *v += 1);
}

/// A follow-up's `output_schema` holds for this round and the later ones (each round
/// starts from `round_spec`).
fn keep_schema(rec: &mut AgentRecord, schema: Option<&serde_json::Value>) {
    if let Some(schema) = schema {
        rec.round_spec.output_schema = Some(schema.clone());
    }
}

fn not_resumable(rec: &AgentRecord) -> ManagerError {
    let status = rec.status();
    let why = match status {
        Status::Running => "it is ending or starting and cannot take a message now: wait for its answer (agent_wait), then agent_send again".to_string(),
        Status::BudgetExceeded => format!(
            "its budget ran out mid-task ({}), so its conversation stopped in the middle of a turn and cannot continue; spawn a new agent with larger limits (agent_spawn limits) and the context it needs",
            rec.error.as_deref().unwrap_or("budget exceeded")
        ),
        _ => "only a completed agent continues its conversation; spawn a new agent (agent_spawn) with the task and the context it needs".to_string(),
    };
    ManagerError::NotResumable {
        id: rec.id.clone(),
        status: status.as_str(),
        why,
    }
}
