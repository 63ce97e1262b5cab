//! `agent://{id}/status` and `agent://{id}/output` resources, and their update
//! notifications: `subscriptions/listen` on 2026-07-28 connections, the legacy
//! `resources/subscribe` on older ones.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ResourceUpdatedNotificationParam,
};
use rmcp::service::SubscriptionContext;
use rmcp::{ErrorData, Peer, RoleServer};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::reply::AgentReply;
use super::tools::{OUTPUT_DEFAULT_BYTES, RESULT_MAX_BYTES};
use crate::supervisor::{AgentMark, Manager, OutputQuery};

/// Newest agents listed by resources/list (templates cover the rest).
const LISTED_AGENTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Status,
    Output,
}

pub fn uri(id: &str, kind: Kind) -> String {
    match kind {
        Kind::Status => format!("agent://{id}/status"),
        Kind::Output => format!("agent://{id}/output"),
    }
}

/// `agent://{id}/status|output` → (id, kind).
pub fn parse(uri: &str) -> Option<(&str, Kind)> {
    let rest = uri.strip_prefix("agent://")?;
    let (id, what) = rest.split_once('/')?;
    let kind = match what {
        "status" => Kind::Status,
        "output" => Kind::Output,
        _ => return None,
    };
    (!id.is_empty()).then_some((id, kind))
}

pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("agent://{id}/status", "agent status")
            .with_description(
                "Status of a background agent as JSON: status, result once completed, usage, exit.",
            )
            .with_mime_type("application/json"),
        ResourceTemplate::new("agent://{id}/output", "agent output")
            .with_description("The newest readable output of a background agent (up to 20 KB).")
            .with_mime_type("text/plain"),
    ])
}

pub fn list(manager: &Manager) -> ListResourcesResult {
    let view = manager.list(None, None);
    let skip = view.agents.len().saturating_sub(LISTED_AGENTS);
    let mut items = Vec::new();
    for a in view.agents.into_iter().skip(skip) {
        items.push(
            Resource::new(
                uri(&a.agent_id, Kind::Status),
                format!("{} status", a.agent_id),
            )
            .with_description(format!("{} · {}", a.status.as_str(), a.task))
            .with_mime_type("application/json"),
        );
        items.push(
            Resource::new(
                uri(&a.agent_id, Kind::Output),
                format!("{} output", a.agent_id),
            )
            .with_mime_type("text/plain"),
        );
    }
    ListResourcesResult::with_all_items(items)
}

pub fn read(manager: &Manager, uri_str: &str) -> Result<ReadResourceResult, ErrorData> {
    let Some((id, kind)) = parse(uri_str) else {
        return Err(ErrorData::resource_not_found(
            format!(
                "unknown resource `{uri_str}`; use agent://{{id}}/status or agent://{{id}}/output"
            ),
            None,
        ));
    };
    let not_found =
        |e: crate::supervisor::ManagerError| ErrorData::resource_not_found(e.to_string(), None);
    let mime = match kind {
        Kind::Status => "application/json",
        Kind::Output => "text/plain",
    };
    let text = match kind {
        Kind::Status => {
            let view = manager.status(id).map_err(not_found)?;
            let view = AgentReply::of(&view, manager.config(), true, RESULT_MAX_BYTES);
            serde_json::to_string_pretty(&view)
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
        }
        Kind::Output => {
            let q = OutputQuery {
                tail_lines: Some(10_000),
                max_bytes: OUTPUT_DEFAULT_BYTES,
                ..Default::default()
            };
            manager.output(id, &q).map_err(not_found)?.text
        }
    };
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri_str).with_mime_type(mime),
    ]))
}

/// How often new output is looked for: an agent's output resource is notified at most
/// this often, however fast the agent writes (a status change is notified at once).
const OUTPUT_NOTIFY_EVERY: Duration = Duration::from_secs(1);

/// The resources that changed since the last call: both of an agent whose status
/// changed, its output alone when only new output arrived.
#[derive(Default)]
struct ChangeTracker {
    seen: HashMap<String, AgentMark>,
}

impl ChangeTracker {
    fn changed(&mut self, now: Vec<(String, AgentMark)>) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = HashMap::with_capacity(now.len());
        for (id, mark) in now {
            match self.seen.get(&id) {
                Some(old) if *old == mark => {}
                Some(old) if old.status == mark.status => out.push(uri(&id, Kind::Output)),
                _ => {
                    out.push(uri(&id, Kind::Status));
                    out.push(uri(&id, Kind::Output));
                }
            }
            seen.insert(id, mark);
        }
        // Evicted agents are forgotten.
        self.seen = seen;
        out
    }
}

/// What a notifier waits on: any status change (at once) and new output (every
/// `OUTPUT_NOTIFY_EVERY`).
struct Changes {
    status: watch::Receiver<u64>,
    output_tick: tokio::time::Interval,
    tracker: ChangeTracker,
}

impl Changes {
    fn new(manager: &Manager) -> Changes {
        let mut output_tick = tokio::time::interval(OUTPUT_NOTIFY_EVERY);
        output_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tracker = ChangeTracker::default();
        tracker.changed(manager.marks());
        Changes {
            status: manager.subscribe_changes(),
            output_tick,
            tracker,
        }
    }

    /// The URIs of the next changes; None once the manager is gone.
    async fn next(&mut self, manager: &Manager) -> Option<Vec<String>> {
        loop {
            tokio::select! {
                r = self.status.changed() => r.ok()?,
                _ = self.output_tick.tick() => {}
            }
            let changed = self.tracker.changed(manager.marks());
            if !changed.is_empty() {
                return Some(changed);
            }
        }
    }
}

/// 2026-07-28: run one `subscriptions/listen` stream until the client cancels it.
pub async fn listen(manager: &Manager, context: SubscriptionContext) -> Result<(), ErrorData> {
    let mut changes = Changes::new(manager);
    loop {
        let uris = tokio::select! {
            _ = context.cancelled() => return Ok(()),
            u = changes.next(manager) => match u {
                Some(u) => u,
                None => return Ok(()),
            },
        };
        for u in uris {
            // URIs the client did not ask for are refused by the sink; that is fine.
            let _ = context.sink().notify_resource_updated(u).await;
        }
    }
}

/// Legacy `resources/subscribe`: the URIs a client subscribed to, and one notifier task
/// per session.
#[derive(Default)]
pub struct LegacySubscriptions {
    uris: Arc<Mutex<HashSet<String>>>,
    started: Mutex<bool>,
}

impl LegacySubscriptions {
    pub fn subscribe(
        &self,
        manager: Arc<Manager>,
        wanted_uri: String,
        peer: Peer<RoleServer>,
    ) -> Result<(), ErrorData> {
        let Some((id, _)) = parse(&wanted_uri) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "cannot subscribe to `{wanted_uri}`; subscribe to agent://{{id}}/status or agent://{{id}}/output"
                ),
                None,
            ));
        };
        if let Err(e) = manager.status(id) {
            return Err(ErrorData::invalid_params(
                format!("cannot subscribe to `{wanted_uri}`: {e}"),
                None,
            ));
        }
        self.uris
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wanted_uri);
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if !*started {
            *started = true;
            let uris = Arc::clone(&self.uris);
            tokio::spawn(async move {
                let mut changes = Changes::new(&manager);
                while let Some(changed) = changes.next(&manager).await {
                    let wanted: Vec<String> = {
                        let uris = uris.lock().unwrap_or_else(|p| p.into_inner());
                        changed.into_iter().filter(|u| uris.contains(u)).collect()
                    };
                    for u in wanted {
                        if peer
                            .notify_resource_updated(ResourceUpdatedNotificationParam::new(u))
                            .await
                            .is_err()
                        {
                            return; // The session is gone.
                        }
                    }
                }
            });
        }
        Ok(())
    }

    pub fn unsubscribe(&self, uri: &str) {
        self.uris
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        assert_eq!(
            parse(&uri("a-12345", Kind::Status)),
            Some(("a-12345", Kind::Status))
        );
        assert_eq!(parse("agent://a-1/output"), Some(("a-1", Kind::Output)));
        assert_eq!(parse("agent:///status"), None);
        assert_eq!(parse("file:///x"), None);
        assert_eq!(parse("agent://a-1/other"), None);
    }

    #[test]
    fn new_output_changes_the_output_resource_alone() {
        use crate::supervisor::Status;
        let mark = |status, output_seq| AgentMark { status, output_seq };
        let mut t = ChangeTracker::default();
        let first = t.changed(vec![("a-1".into(), mark(Status::Running, 0))]);
        assert_eq!(first, ["agent://a-1/status", "agent://a-1/output"]);
        assert!(
            t.changed(vec![("a-1".into(), mark(Status::Running, 0))])
                .is_empty()
        );
        assert_eq!(
            t.changed(vec![("a-1".into(), mark(Status::Running, 3))]),
            ["agent://a-1/output"]
        );
        assert_eq!(
            t.changed(vec![("a-1".into(), mark(Status::Completed, 4))]),
            ["agent://a-1/status", "agent://a-1/output"]
        );
    }
}
