//! What the agents of one session spent together against `[server] session_budget_usd`
//! and `session_max_tokens`, and stopping everything once that is spent.
//!
//! Not here: one agent's own budget (the worker enforces it).

use std::sync::MutexGuard;

use bg_agent_worker::resolve::Resolution;
use serde::Serialize;

use crate::supervisor::registry::{Control, Registry, Usage};

use super::Inner;

/// What the agents of one server session spent together, against its caps.
#[derive(Debug, Default)]
pub(super) struct SessionSpend {
    pub(super) cost_usd: f64,
    pub(super) tokens: u64,
    /// Why the session's budget is spent, once it is.
    pub(super) exhausted: Option<String>,
}

/// The session's spending in agent_list, when `[server]` caps it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionView {
    pub spent_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Set once the cap is reached: new spawns are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
}

impl Inner {
    /// Lowers a priced agent's budget_usd to what is left of the session's, and says so.
    pub(super) fn fit_to_session(&self, resolution: &mut Resolution) {
        let Some(cap) = self.config.server.session_budget_usd else {
            return;
        };
        let left = (cap - self.session().cost_usd).max(0.0);
        let limits = &mut resolution.spec.limits;
        if resolution.spec.price.is_some() && limits.budget_usd > left {
            resolution.warnings.push(format!(
                "budget_usd lowered from ${} to ${left:.4}, what is left of [server] session_budget_usd = ${cap}",
                limits.budget_usd
            ));
            limits.budget_usd = left;
        }
    }

    pub(super) fn session(&self) -> MutexGuard<'_, SessionSpend> {
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn session_view(&self) -> Option<SessionView> {
        let server = &self.config.server;
        if server.session_budget_usd.is_none() && server.session_max_tokens.is_none() {
            return None;
        }
        let spend = self.session();
        Some(SessionView {
            spent_usd: spend.cost_usd,
            budget_usd: server.session_budget_usd,
            tokens: spend.tokens,
            max_tokens: server.session_max_tokens,
            exhausted: spend.exhausted.clone(),
        })
    }

    /// Adds an agent's usage since `before` to the session; true when this reached a
    /// session cap for the first time.
    pub(super) fn add_to_session(&self, before: &Usage, now: &Usage) -> bool {
        let tokens = |u: &Usage| {
            u.input_tokens + u.output_tokens + u.cache_write_tokens + u.cache_read_tokens
        };
        let server = &self.config.server;
        let mut spend = self.session();
        spend.tokens += tokens(now).saturating_sub(tokens(before));
        spend.cost_usd += (now.cost_usd.unwrap_or(0.0) - before.cost_usd.unwrap_or(0.0)).max(0.0);
        if spend.exhausted.is_some() {
            return false;
        }
        let why = match (server.session_budget_usd, server.session_max_tokens) {
            (Some(cap), _) if spend.cost_usd >= cap => format!(
                "the session budget is spent: ${:.4} of [server] session_budget_usd = ${cap}",
                spend.cost_usd
            ),
            (_, Some(cap)) if spend.tokens >= cap => format!(
                "the session's tokens are spent: {} of [server] session_max_tokens = {cap}",
                spend.tokens
            ),
            _ => return false,
        };
        spend.exhausted = Some(why);
        true
    }

    /// The session's budget is spent: stops every running agent (as budget_exceeded) and
    /// cancels the queued ones.
    pub(super) fn stop_session(&self, reg: &mut Registry) {
        for rec in reg.records() {
            if let Some(c) = &rec.control {
                let _ = c.send(Control::SessionBudget);
            }
        }
        let why = self.session().exhausted.clone();
        let queued: Vec<String> = reg.queued_ids();
        for id in queued {
            self.cancel_queued(reg, &id);
            if let Some(rec) = reg.get_mut(&id) {
                rec.error.clone_from(&why);
            }
        }
    }
}
