//! Reading records: status, output pages, lists, live agents, resource marks.
//!
//! Not here: the view types these build (`view`), waiting (`wait`).

use std::collections::HashMap;
use std::time::Instant;

use crate::supervisor::outcome::Status;
use crate::supervisor::output::{ReadRequest, compile_filter};
use crate::supervisor::record::AgentRecord;
use crate::supervisor::registry::Registry;
use crate::supervisor::state::AgentState;
use crate::supervisor::view::{AgentMark, ListView, LiveAgent, OutputPage, StatusView};

use super::session::Grant;
use super::{Inner, Manager, ManagerError};

/// What a read of an agent's output asks for.
#[derive(Debug, Clone, Default)]
pub struct OutputQuery {
    pub filter: Option<String>,
    pub since: Option<u64>,
    pub tail_lines: Option<usize>,
    pub max_bytes: usize,
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
        live.into_iter().map(LiveAgent::of).collect()
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
            *counts.entry(r.status()).or_insert(0) += 1;
        }
        ListView::of(&recs, counts, self.inner.session_view())
    }
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
