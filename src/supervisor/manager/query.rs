//! Reading records: status, output pages, lists, live agents, resource marks.
//!
//! Not here: the view types shared with the MCP layer (`view`), waiting (`wait`).

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::supervisor::outcome::Status;
use crate::supervisor::output::{ReadRequest, compile_filter};
use crate::supervisor::record::AgentRecord;
use crate::supervisor::registry::Registry;
use crate::supervisor::state::AgentState;
use crate::supervisor::view::{ListRow, StatusView, round_usd};

use super::session::Grant;
use super::{Inner, Manager, ManagerError, SessionView};

/// What a read of an agent's output asks for.
#[derive(Debug, Clone, Default)]
pub struct OutputQuery {
    pub filter: Option<String>,
    pub since: Option<u64>,
    pub tail_lines: Option<usize>,
    pub max_bytes: usize,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OutputPage {
    pub agent_id: String,
    pub text: String,
    /// Pass as `since` to continue after what was returned.
    pub next_cursor: u64,
    /// Bytes between `since` and where reading resumed: output that left the in-memory
    /// window (reading resumes at the next whole line). The transcript file has them.
    pub dropped_bytes: u64,
    /// True when more output in range was not returned because of max_bytes.
    pub truncated: bool,
    pub matched_lines: usize,
    pub status: Status,
    pub transcript_path: Option<String>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ListView {
    /// The agents that match the filters, oldest first.
    pub agents: Vec<ListRow>,
    /// Every agent of the session by status (not filtered).
    pub counts: HashMap<String, usize>,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    /// Input written to and read from the prompt cache (not in total_input_tokens).
    #[serde(skip_serializing_if = "is_zero")]
    pub total_cache_write_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub total_cache_read_tokens: u64,
    /// Sum over agents with a known cost.
    pub total_cost_usd: f64,
    /// This session's spending against `[server] session_budget_usd` /
    /// `session_max_tokens` (every agent, evicted ones too), when either is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionView>,
    /// Agents whose cost is unknown (no price configured), left out of the total.
    pub agents_with_unknown_cost: usize,
}

/// An agent that just reached a terminal status, as told to `Manager::ended_agents`
/// (for completion notices: the record itself may be evicted soon after).
#[derive(Debug, Clone)]
pub struct EndedAgent {
    pub agent_id: String,
    pub label: Option<String>,
    pub status: Status,
    /// The final answer (completed agents).
    pub result: Option<String>,
    pub error: Option<String>,
    /// Which round ended: 1, or more after follow-ups (`agent_send`).
    pub round: u32,
}

impl EndedAgent {
    pub(super) fn of(rec: &AgentRecord) -> EndedAgent {
        EndedAgent {
            agent_id: rec.id.clone(),
            label: rec.meta.label.clone(),
            status: rec.status(),
            result: rec.answer.result.clone(),
            error: rec.answer.error.clone(),
            round: rec.rounds.count,
        }
    }
}

/// An agent not yet ended, for the state the `Stop` hook reads.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    pub agent_id: String,
    pub label: Option<String>,
    pub status: Status,
}

impl Manager {
    /// The agents not yet ended (queued or running), oldest first.
    pub fn live_agents(&self) -> Vec<LiveAgent> {
        let reg = self.inner.lock();
        let mut live: Vec<&AgentRecord> = reg
            .records()
            .filter(|r| !r.status().is_terminal())
            .collect();
        live.sort_by(|a, b| {
            a.meta
                .created_at
                .cmp(&b.meta.created_at)
                .then(a.id.cmp(&b.id))
        });
        live.into_iter()
            .map(|r| LiveAgent {
                agent_id: r.id.clone(),
                label: r.meta.label.clone(),
                status: r.status(),
            })
            .collect()
    }

    pub fn status(&self, id: &str) -> Result<StatusView, ManagerError> {
        let reg = self.inner.lock();
        Ok(self.inner.status_view(&reg, self.inner.get(&reg, id)?))
    }

    pub fn output(&self, id: &str, q: &OutputQuery) -> Result<OutputPage, ManagerError> {
        self.read_output(id, q, compiled_filter(q)?.as_ref())
    }

    /// `output` with `q.filter` already compiled (as `filter`).
    pub(super) fn read_output(
        &self,
        id: &str,
        q: &OutputQuery,
        filter: Option<&regex::Regex>,
    ) -> Result<OutputPage, ManagerError> {
        let reg = self.inner.lock();
        let rec = self.inner.get(&reg, id)?;
        let status = rec.status();
        let r = rec.io.output.read(&ReadRequest {
            since: q.since,
            filter,
            tail_lines: q.tail_lines,
            max_bytes: q.max_bytes,
            include_partial: filter.is_none() || status.is_terminal(),
        });
        Ok(OutputPage {
            agent_id: id.to_string(),
            text: r.text,
            next_cursor: r.next_cursor,
            dropped_bytes: r.dropped_bytes,
            truncated: r.truncated,
            matched_lines: r.matched_lines,
            status,
            transcript_path: rec
                .io
                .transcript
                .as_ref()
                .map(|t| t.path().display().to_string()),
        })
    }

    pub fn list(&self, status: Option<Status>, role: Option<&str>) -> ListView {
        let reg = self.inner.lock();
        let mut recs: Vec<&AgentRecord> = reg
            .records()
            .filter(|r| status.is_none_or(|s| r.status() == s))
            .filter(|r| role.is_none_or(|x| r.meta.role == x))
            .collect();
        recs.sort_by(|a, b| {
            a.meta
                .created_at
                .cmp(&b.meta.created_at)
                .then(a.id.cmp(&b.id))
        });
        let mut counts = HashMap::new();
        for r in reg.records() {
            *counts.entry(r.status().as_str().to_string()).or_insert(0) += 1;
        }
        ListView {
            total_input_tokens: recs.iter().map(|r| r.totals.usage.input_tokens).sum(),
            total_output_tokens: recs.iter().map(|r| r.totals.usage.output_tokens).sum(),
            total_cache_write_tokens: recs.iter().map(|r| r.totals.usage.cache_write_tokens).sum(),
            total_cache_read_tokens: recs.iter().map(|r| r.totals.usage.cache_read_tokens).sum(),
            total_cost_usd: round_usd(recs.iter().filter_map(|r| r.totals.usage.cost_usd).sum()),
            session: self.inner.session_view(),
            agents_with_unknown_cost: recs
                .iter()
                .filter(|r| {
                    r.totals.usage.cost_usd.is_none()
                        && r.totals.usage.input_tokens + r.totals.usage.output_tokens > 0
                })
                .count(),
            agents: recs.into_iter().map(ListRow::of).collect(),
            counts,
        }
    }
}

/// Where an agent stands, as resource-update notifications compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentMark {
    pub status: Status,
    /// Bumped whenever output arrives or the agent ends.
    pub output_seq: u64,
}

impl Manager {
    /// Every agent's id with its status and output sequence.
    pub fn marks(&self) -> Vec<(String, AgentMark)> {
        self.inner
            .lock()
            .records()
            .map(|r| {
                let mark = AgentMark {
                    status: r.status(),
                    output_seq: *r.io.output_seq.borrow(),
                };
                (r.id.clone(), mark)
            })
            .collect()
    }
}

impl Inner {
    /// `rec` as callers see it, with why it waits when it is queued.
    pub(super) fn status_view(&self, reg: &Registry, rec: &AgentRecord) -> StatusView {
        let mut view = StatusView::of(rec);
        if rec.status() == Status::Queued {
            view.queued_reason = Some(self.queued_reason(reg, rec));
        }
        view
    }

    /// Why queued agent `rec` still waits.
    pub(super) fn queued_reason(&self, reg: &Registry, rec: &AgentRecord) -> String {
        if let Some(why) = self
            .admission()
            .blocked(&rec.route.provider, Instant::now())
        {
            return why;
        }
        if let AgentState::Queued { spec, .. } = &rec.state
            && let Grant::Wait(why) | Grant::Spent(why) = self.grant(&self.session(), spec)
        {
            return why;
        }
        format!(
            "{} agents are running ([server] max_concurrent = {}); {} queued",
            reg.running(),
            self.config.server.max_concurrent,
            reg.queued()
        )
    }
}

/// The query's per-line filter, compiled; Err for a pattern that is not a valid regex.
pub(super) fn compiled_filter(q: &OutputQuery) -> Result<Option<regex::Regex>, ManagerError> {
    q.filter
        .as_deref()
        .map(|p| compile_filter(p).map_err(ManagerError::Filter))
        .transpose()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
