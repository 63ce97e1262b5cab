//! Follow-ups (`agent_send`): another user message to an agent. A completed agent starts a
//! new round of the same conversation (a new worker with the conversation as `history`
//! and what is left of its turn, token and USD budgets); a running agent's worker gets it
//! on stdin and takes it at its next turn boundary; a queued agent's task gets it
//! appended. Every other end is final.
//!
//! Not here: the rounds themselves (`record`: `AgentRecord::begin_round`), the state
//! machine's door (`state`: `AgentState::reopen`), starting the round's worker (`start`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use bg_agent_worker::protocol::{Event, Input, Message, TaskSpec, TranscriptLine};
use bg_agent_worker::provider::estimate_tokens;
use bg_agent_worker::resolve::{MAX_TASK_BYTES, ResolveError, raised_limits};
use bg_agent_worker::structured::OutputSchema;
use bg_agent_worker::values::{Limits, LimitsOverride};

use super::session::Grant;
use super::{Inner, Manager, ManagerError};
use crate::supervisor::outcome::Status;
use crate::supervisor::output::OutputError;
use crate::supervisor::record::{AgentRecord, Conversation, PendingFollowUp, Totals};
use crate::supervisor::state::AgentState;
use crate::supervisor::view::{Sent, StatusView};

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
        if message.len() > MAX_TASK_BYTES {
            return Err(ManagerError::MessageTooLong {
                bytes: message.len(),
            });
        }
        if let Some(schema) = schema {
            OutputSchema::new(schema)
                .map_err(|e| ManagerError::Resolve(ResolveError::Schema(e)))?;
        }
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ManagerError::ShuttingDown);
        }
        // A completed agent's conversation waits in its transcript: read it back first,
        // without holding the registry.
        let saved = {
            let reg = inner.lock();
            reg.get(id)
                .filter(|r| {
                    r.rounds.conversation == Conversation::InTranscript
                        && r.status() == Status::Completed
                })
                .and_then(|r| {
                    r.io.transcript
                        .as_ref()
                        .map(|t| (t.path().to_path_buf(), r.rounds.count))
                })
        };
        let loaded = saved
            .map(|(path, rounds)| read_conversation(&path).map(|c| (c, rounds)))
            .transpose()
            .map_err(|source| {
                ManagerError::Transcript(OutputError::TranscriptFile {
                    path: inner.transcript_dir.clone(),
                    source,
                })
            })?;
        let sent = {
            let mut reg = inner.lock();
            if let (Some(rec), Some((conversation, rounds))) = (reg.get_mut(id), loaded)
                && rec.rounds.conversation == Conversation::InTranscript
                && rec.rounds.count == rounds
            {
                rec.rounds.conversation = Conversation::Memory(conversation);
            }
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
                    if let AgentState::Queued { spec, .. } = &mut rec.state {
                        let bytes = spec.task.len() + 2 + message.len();
                        if bytes > MAX_TASK_BYTES {
                            return Err(ManagerError::MessageTooLong { bytes });
                        }
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
                    if let Grant::Spent(why) = inner.grant(&inner.session(), &spec) {
                        return Err(ManagerError::SessionBudget(why));
                    }
                    let server = &inner.config.server;
                    let waits = reg.running() >= server.max_concurrent
                        || reg.queues_provider(&spec.provider.name)
                        || inner
                            .admission()
                            .blocked(&spec.provider.name, Instant::now())
                            .is_some();
                    if waits && reg.queued() >= server.max_queued {
                        return Err(ManagerError::QueueFull {
                            queued: reg.queued(),
                            max: server.max_queued,
                        });
                    }
                    let Some(rec) = reg.get_mut(id) else {
                        return Err(ManagerError::UnknownAgent {
                            id: id.to_string(),
                            hint: "agent_list shows the agents".into(),
                        });
                    };
                    if let Some(t) = rec.io.transcript.as_mut() {
                        t.reopen().map_err(|source| {
                            ManagerError::Transcript(OutputError::TranscriptFile {
                                path: t.path().to_path_buf(),
                                source,
                            })
                        })?;
                    }
                    rec.begin_round(Box::new(spec), limits)
                        .map_err(|_| not_resumable(rec))?;
                    keep_schema(rec, schema);
                    mark_follow_up(rec, message);
                    rec.io.bump();
                    let round = rec.rounds.count;
                    reg.queue_round(id);
                    Sent::Round(round)
                }
                Status::Running if schema.is_some() => {
                    return Err(ManagerError::NotResumable {
                        id: rec.id.clone(),
                        status: Status::Running.as_str(),
                        why: "a running agent's answer keeps the schema it started with; send the message without output_schema, or wait for its answer (agent_wait) and send again with output_schema".into(),
                    });
                }
                Status::Running => {
                    if !raise.is_empty() {
                        return Err(ManagerError::LimitsWhileRunning { id: id.to_string() });
                    }
                    affordable(rec, message, &rec.limits)?;
                    let id = rec.rounds.next_follow_up_id();
                    let line = serde_json::to_string(&Input::FollowUp {
                        message: message.to_string(),
                        id: Some(id),
                    });
                    let delivered = match (&rec.state, line) {
                        (AgentState::Running { inbox, .. }, Ok(line)) => {
                            inbox.send(line + "\n").is_ok()
                        }
                        _ => false,
                    };
                    if !delivered {
                        return Err(not_resumable(rec));
                    }
                    rec.rounds.pending.push(PendingFollowUp {
                        id,
                        text: message.to_string(),
                    });
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

/// The conversation in a transcript: its `message` events, in order.
fn read_conversation(path: &std::path::Path) -> std::io::Result<Vec<Message>> {
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut conversation = Vec::new();
    for line in file.lines() {
        if let Some(Event::Message { message, .. }) = TranscriptLine::event_of(&line?) {
            conversation.push(message);
        }
    }
    Ok(conversation)
}

/// The spec of a completed agent's next round: its spawn spec with the conversation so
/// far, `message` as the new user message, and what is left of `limits` after the earlier
/// rounds (turns, tokens, USD). Err when nothing is left of one of them.
fn next_round(rec: &AgentRecord, message: &str, limits: Limits) -> Result<TaskSpec, ManagerError> {
    if rec.rounds.conversation.messages().is_empty() {
        return Err(ManagerError::NoConversation { id: rec.id.clone() });
    }
    let Totals { usage, turns } = rec.totals;
    let used_tokens = usage.total();
    let used_usd = usage.cost_usd.unwrap_or(0.0);
    let spent = |key: &'static str, used: String, limit: String| ManagerError::RoundBudget {
        id: rec.id.clone(),
        key,
        used,
        limit,
    };
    if turns >= limits.max_turns {
        return Err(spent(
            "max_turns",
            turns.to_string(),
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
    if usage.cost_usd.is_some() && used_usd >= limits.budget_usd {
        return Err(spent(
            "budget_usd",
            format!("${used_usd:.4}"),
            format!("${}", limits.budget_usd),
        ));
    }
    affordable(rec, message, &limits)?;
    let mut spec = (*rec.rounds.spec).clone();
    spec.task = message.to_string();
    spec.history = rec.rounds.conversation.messages().to_vec();
    spec.limits = Limits {
        max_turns: limits.max_turns - turns,
        max_total_tokens: limits.max_total_tokens - used_tokens,
        budget_usd: limits.budget_usd - used_usd,
        ..limits
    };
    Ok(spec)
}

/// Refuses a follow-up whose first request cannot be paid from what is left of `rec`'s
/// `limits`: the whole conversation goes to the provider again with `message`, and the
/// worker can only hold back output, never input.
fn affordable(rec: &AgentRecord, message: &str, limits: &Limits) -> Result<(), ManagerError> {
    let conversation =
        serde_json::to_vec(rec.rounds.conversation.messages()).map_or(0, |v| v.len());
    let input = estimate_tokens(rec.rounds.spec.system_prompt.len() + conversation + message.len());
    let used_tokens = rec.totals.usage.total();
    let tokens_left = limits.max_total_tokens.saturating_sub(used_tokens);
    let too_big = |key: &'static str, need: String, left: String| ManagerError::FollowUpTooCostly {
        id: rec.id.clone(),
        key,
        input,
        need,
        left,
    };
    if input >= tokens_left {
        return Err(too_big(
            "max_total_tokens",
            format!("{} tokens", input + 1),
            format!("{tokens_left} tokens"),
        ));
    }
    if let (Some(price), Some(used_usd)) = (rec.rounds.spec.price, rec.totals.usage.cost_usd) {
        let need = price.cost(input, 1);
        let left = limits.budget_usd - used_usd;
        if need > left {
            return Err(too_big(
                "budget_usd",
                format!("${need:.4}"),
                format!("${:.4}", left.max(0.0)),
            ));
        }
    }
    Ok(())
}

/// Says a follow-up in the readable output, on a line of its own, so the answers before
/// and after it do not run together: the same marker whether it began a new round (a
/// completed agent) or joined the running one at a turn boundary.
pub(super) fn mark_follow_up(rec: &mut AgentRecord, message: &str) {
    rec.io.push_line(&format!(
        "\n[round {}: follow-up] {}\n",
        rec.rounds.count,
        message.replace('\n', " ")
    ));
}

/// A follow-up's `output_schema` holds for this round and the later ones (each round
/// starts from `rounds.spec`).
fn keep_schema(rec: &mut AgentRecord, schema: Option<&serde_json::Value>) {
    if let Some(schema) = schema {
        rec.rounds.spec.output_schema = Some(schema.clone());
    }
}

fn not_resumable(rec: &AgentRecord) -> ManagerError {
    let status = rec.status();
    let why = match status {
        Status::Running => "it is ending or starting and cannot take a message now: wait for its answer (agent_wait), then agent_send again".to_string(),
        Status::BudgetExceeded => format!(
            "its budget ran out mid-task ({}), so its conversation stopped in the middle of a turn and cannot continue; spawn a new agent with larger limits (agent_spawn limits) and the context it needs",
            rec.answer.error.as_deref().unwrap_or("budget exceeded")
        ),
        _ => "only a completed agent continues its conversation; spawn a new agent (agent_spawn) with the task and the context it needs".to_string(),
    };
    ManagerError::NotResumable {
        id: rec.id.clone(),
        status: status.as_str(),
        why,
    }
}
