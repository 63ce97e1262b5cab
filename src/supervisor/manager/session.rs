//! What the agents of one session spend together against `[server] session_budget_usd`
//! and `session_max_tokens`. Concurrent agents share the caps by reservation: an agent
//! (or a follow-up round) that starts holds its whole `budget_usd` and `max_total_tokens`
//! out of what nobody else holds, lowered to what is left; one that finds too little
//! waits queued while others hold the rest, and is refused once nothing can come back.
//! The worker keeps each agent within its limits (past them by at most one request's
//! input), so the session spends at most its caps plus one request's input per agent.
//!
//! Not here: one agent's own budget (the worker enforces it).

use std::collections::HashMap;
use std::sync::MutexGuard;

use bg_agent_worker::protocol::TaskSpec;
use bg_agent_worker::values::{Limits, fmt_limit};
use serde::Serialize;

use crate::supervisor::outcome::ExitReason;
use crate::supervisor::record::Usage;
use crate::supervisor::registry::Registry;
use crate::supervisor::view::round_usd;

use super::Inner;

/// Output tokens a grant must pay for beyond the first request's input to be worth
/// starting: less than this is "nothing left".
const LEAST_OUTPUT_TOKENS: u64 = 256;

/// What the agents of one server session spent together, against its caps.
#[derive(Debug, Default)]
pub(super) struct SessionSpend {
    pub(super) cost_usd: f64,
    pub(super) tokens: u64,
    /// Why the session's budget is spent, once it is.
    pub(super) exhausted: Option<String>,
    /// What each agent holding a run slot may still spend, by agent id.
    holds: HashMap<String, Hold>,
}

/// The part of a reservation not spent yet.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    usd: f64,
    tokens: u64,
}

/// What the session lets a starting agent (or round) have.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Grant {
    /// It starts with these limits; `lowered` says how they were cut to what is left.
    Start {
        limits: Limits,
        lowered: Option<String>,
    },
    /// Too little is unreserved now; running agents hold the rest until they end.
    Wait(String),
    /// Too little is left and nothing is held that could come back: the session is spent.
    Spent(String),
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
    /// What running agents hold of the caps (they may still spend it).
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub reserved_usd: f64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub reserved_tokens: u64,
    /// Set once the cap is reached: new spawns and follow-ups are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl SessionSpend {
    fn held_usd(&self) -> f64 {
        self.holds.values().map(|h| h.usd).sum()
    }

    fn held_tokens(&self) -> u64 {
        self.holds.values().map(|h| h.tokens).sum()
    }
}

/// Tokens of `spec`'s first request, estimated (4 bytes a token) from what it sends.
fn first_request_tokens(spec: &TaskSpec) -> u64 {
    let history = serde_json::to_vec(&spec.history).map_or(0, |v| v.len());
    bg_agent_worker::provider::estimate_tokens(spec.system_prompt.len() + spec.task.len() + history)
}

impl Inner {
    pub(super) fn session(&self) -> MutexGuard<'_, SessionSpend> {
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the session lets `spec` start with now (its limits, lowered to what no other
    /// agent holds), or why it must wait or cannot start.
    pub(super) fn grant(&self, spend: &SessionSpend, spec: &TaskSpec) -> Grant {
        let server = &self.config.server;
        if let Some(why) = &spend.exhausted {
            return Grant::Spent(why.clone());
        }
        if server.session_budget_usd.is_none() && server.session_max_tokens.is_none() {
            return Grant::Start {
                limits: spec.limits,
                lowered: None,
            };
        }
        let mut limits = spec.limits;
        let mut lowered = Vec::new();
        let input = first_request_tokens(spec);
        if let (Some(cap), Some(price)) = (server.session_budget_usd, spec.price) {
            let held = spend.held_usd();
            let free = cap - spend.cost_usd - held;
            let least = price
                .cost(input, LEAST_OUTPUT_TOKENS)
                .min(limits.budget_usd);
            if free < least {
                let why = format!(
                    "the session budget has ${:.4} unreserved of [server] session_budget_usd = ${cap} (${:.4} spent, ${held:.4} held by running agents); this agent needs at least ${least:.4}",
                    free.max(0.0),
                    spend.cost_usd
                );
                return if held > 0.0 {
                    Grant::Wait(format!(
                        "{why}; it starts when running agents end and give back what they did not spend"
                    ))
                } else {
                    Grant::Spent(why)
                };
            }
            if free < limits.budget_usd {
                lowered.push(format!(
                    "budget_usd lowered from ${} to ${free:.4}: what no running agent holds of [server] session_budget_usd = ${cap}",
                    fmt_limit(limits.budget_usd)
                ));
                limits.budget_usd = free;
            }
        }
        if let Some(cap) = server.session_max_tokens {
            let held = spend.held_tokens();
            let free = cap.saturating_sub(spend.tokens).saturating_sub(held);
            let least = (input + LEAST_OUTPUT_TOKENS).min(limits.max_total_tokens);
            if free < least {
                let why = format!(
                    "the session has {free} tokens unreserved of [server] session_max_tokens = {cap} ({} used, {held} held by running agents); this agent needs at least {least}",
                    spend.tokens
                );
                return if held > 0 {
                    Grant::Wait(format!(
                        "{why}; it starts when running agents end and give back what they did not use"
                    ))
                } else {
                    Grant::Spent(why)
                };
            }
            if free < limits.max_total_tokens {
                lowered.push(format!(
                    "max_total_tokens lowered from {} to {free}: what no running agent holds of [server] session_max_tokens = {cap}",
                    limits.max_total_tokens
                ));
                limits.max_total_tokens = free;
            }
        }
        Grant::Start {
            limits,
            lowered: (!lowered.is_empty()).then(|| lowered.join("; ")),
        }
    }

    /// Agent `id` starts holding `limits` (what `grant` gave it) out of the caps.
    pub(super) fn reserve(&self, spend: &mut SessionSpend, id: &str, spec: &TaskSpec) {
        let server = &self.config.server;
        let hold = Hold {
            usd: if server.session_budget_usd.is_some() && spec.price.is_some() {
                spec.limits.budget_usd
            } else {
                0.0
            },
            tokens: if server.session_max_tokens.is_some() {
                spec.limits.max_total_tokens
            } else {
                0
            },
        };
        spend.holds.insert(id.to_string(), hold);
    }

    /// Agent `id` ended (or never started): what it did not spend is free again.
    pub(super) fn unreserve(&self, id: &str) {
        self.session().holds.remove(id);
    }

    pub(super) fn session_view(&self) -> Option<SessionView> {
        let server = &self.config.server;
        if server.session_budget_usd.is_none() && server.session_max_tokens.is_none() {
            return None;
        }
        let spend = self.session();
        Some(SessionView {
            spent_usd: round_usd(spend.cost_usd),
            budget_usd: server.session_budget_usd,
            tokens: spend.tokens,
            max_tokens: server.session_max_tokens,
            reserved_usd: round_usd(spend.held_usd()),
            reserved_tokens: spend.held_tokens(),
            exhausted: spend.exhausted.clone(),
        })
    }

    /// Adds agent `id`'s usage since `before` to the session (out of what it holds);
    /// true when this reached a session cap for the first time.
    pub(super) fn add_to_session(&self, id: &str, before: &Usage, now: &Usage) -> bool {
        let server = &self.config.server;
        let tokens = now.total_tokens().saturating_sub(before.total_tokens());
        let usd = (now.cost_usd.unwrap_or(0.0) - before.cost_usd.unwrap_or(0.0)).max(0.0);
        let mut spend = self.session();
        spend.tokens += tokens;
        spend.cost_usd += usd;
        if let Some(hold) = spend.holds.get_mut(id) {
            hold.tokens = hold.tokens.saturating_sub(tokens);
            hold.usd = (hold.usd - usd).max(0.0);
        }
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

    /// The session's budget is spent: the queued agents are cancelled (running ones end
    /// within what they hold).
    pub(super) fn cancel_queued_for_session(&self, reg: &mut Registry) {
        let Some(why) = self.session().exhausted.clone() else {
            return;
        };
        let why = format!("cancelled before it started: {why}");
        for id in reg.queued_ids() {
            self.cancel_queued(reg, &id, ExitReason::SessionBudget, &why);
        }
    }
}
