//! Tells the client about agents that ended, without being asked: a notice on the board
//! for the hooks (and the next tool reply), the state the `Stop` hook reads, and a
//! channel notification (Claude Code's research preview) per ended agent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, ContentBlock, CustomNotification, ServerNotification};
use rmcp::{Peer, RoleServer};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::episode::Episode;
use crate::notices::{Notice, NoticeBoard, ServerState, read_more, render};
use crate::supervisor::{EndedAgent, Manager, Status};

/// The method of Claude Code's channel notifications.
pub const CHANNEL_METHOD: &str = "notifications/claude/channel";
/// The experimental capability that declares them.
pub const CHANNEL_CAPABILITY: &str = "claude/channel";

/// Notices that cannot be written, said once an episode.
static POST_FAILING: Episode = Episode::new(crate::episode::QUIET);

/// Posts a notice (and sends a channel notification) for every agent that ends, and keeps
/// the board's state current, until the manager goes away.
pub async fn run(manager: Arc<Manager>, board: Arc<NoticeBoard>, peer: Option<Peer<RoleServer>>) {
    let Some(mut ended) = manager.ended_agents() else {
        tracing::warn!("completion notices are off: the manager's ended-agent feed is taken");
        return;
    };
    let mut changes = manager.subscribe_changes();
    publish(&manager, &board);
    let mut throttle = Throttle::new();
    loop {
        let due = throttle.due;
        tokio::select! {
            agent = ended.recv() => {
                let Some(agent) = agent else { return };
                if board.take_task_claim(&agent.agent_id) {
                    // Its MCP task tells this end; a notice would tell it twice.
                    continue;
                }
                let notice = notice_of(&agent);
                if let Err(e) = board.post(&notice)
                    && POST_FAILING.begins(std::time::Instant::now())
                {
                    tracing::warn!(agent = %agent.agent_id, "cannot leave a completion notice in {}: {e}", board.dir().display());
                }
                if let Some(peer) = &peer {
                    send_channel(peer, &notice).await;
                }
            }
            r = changes.changed() => {
                if r.is_err() { return }
                throttle.changed();
            }
            () = board.claims_changed() => throttle.changed(),
            () = until(due) => {
                publish(&manager, &board);
                throttle.published();
            }
        }
    }
}

/// Least time between two writes of the state. Each write lists every live agent in a
/// new file, so one write per change cost O(N²) in a burst (1,000 agents spawned or
/// ending at once: 40% of the server's CPU, most of it ext4 creating inodes). A change
/// after a quiet spell is still published at once; one within this of the last write
/// waits for it, and the changes in between are published together.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// When the state was last published, and when it is next due (None: nothing changed
/// since).
struct Throttle {
    last: Instant,
    due: Option<Instant>,
}

impl Throttle {
    /// Just after a publish.
    fn new() -> Throttle {
        Throttle {
            last: Instant::now(),
            due: None,
        }
    }

    fn changed(&mut self) {
        self.due.get_or_insert(self.last + PUBLISH_EVERY);
    }

    fn published(&mut self) {
        self.last = Instant::now();
        self.due = None;
    }
}

/// Resolves at `at`; never when it is None.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn notice_of(agent: &EndedAgent) -> Notice {
    let text = match agent.status {
        Status::Completed => agent.result.as_deref().or(agent.error.as_deref()),
        _ => agent.error.as_deref().or(agent.result.as_deref()),
    };
    // A follow-up's end says its round, so it is not taken for the first answer again.
    let text = match (agent.round, text) {
        (1, t) => t.map(str::to_string),
        (n, Some(t)) => Some(format!("(round {n}) {t}")),
        (n, None) => Some(format!("(round {n})")),
    };
    Notice::new(
        &agent.agent_id,
        agent.label.as_deref(),
        agent.status,
        text.as_deref(),
    )
}

fn publish(manager: &Manager, board: &NoticeBoard) {
    let server = &manager.config().server;
    let state = ServerState {
        stop_hook: server.stop_hook,
        max_wait_seconds: Some(server.max_wait_seconds),
        // Agents the client tracks as MCP tasks are its to follow: the Stop hook must
        // not hold a turn for them.
        agents: manager
            .live_agents()
            .into_iter()
            .filter(|a| !board.told_by_task(&a.agent_id))
            .collect(),
    };
    // Published at every status change: a failure that persists is said once an episode.
    static FAILING: Episode = Episode::new(crate::episode::QUIET);
    if let Err(e) = board.publish_state(&state)
        && FAILING.begins(std::time::Instant::now())
    {
        tracing::warn!(
            "cannot publish the agents' state in {}: {e}",
            board.dir().display()
        );
    }
}

async fn send_channel(peer: &Peer<RoleServer>, notice: &Notice) {
    let params = json!({
        "content": format!("{}\n{}", notice.line(), read_more(std::slice::from_ref(notice))),
        "meta": {"agent_id": notice.agent_id, "status": notice.status},
    });
    let n = CustomNotification::new(CHANNEL_METHOD, Some(params));
    if let Err(e) = peer
        .send_notification(ServerNotification::CustomNotification(n))
        .await
    {
        tracing::debug!("channel notification not sent: {e}");
    }
}

/// Adds the notices not yet delivered to a tool reply (structured `notices` and the
/// text), after dropping those of agents whose end the reply itself shows.
pub fn attach(board: &NoticeBoard, reply: &mut CallToolResult) {
    if let Some(v) = &reply.structured_content {
        board.discard(&ended_in(v));
    }
    let (notices, left) = board.take_pending();
    if notices.is_empty() {
        return;
    }
    let mut lines: Vec<Value> = notices.iter().map(|n| Value::String(n.line())).collect();
    if left > 0 {
        lines.push(Value::String(format!(
            "and {left} more ended: told with your next bg-agents call (agent_list shows every agent)"
        )));
    }
    if let Some(Value::Object(map)) = reply.structured_content.as_mut() {
        map.insert("notices".into(), Value::Array(lines));
    }
    reply
        .content
        .push(ContentBlock::text(render(&notices, left)));
}

/// Ids of agents shown with a terminal status in a reply (`agent_id` + `status` at the
/// top, or in `agents`).
fn ended_in(v: &Value) -> HashSet<&str> {
    fn terminal(o: &Value) -> Option<&str> {
        let status = o.get("status").and_then(Value::as_str)?;
        let ended = crate::supervisor::Status::parse(status).is_some_and(|s| s.is_terminal());
        ended.then(|| o.get("agent_id").and_then(Value::as_str))?
    }
    let mut ids: HashSet<&str> = terminal(v).into_iter().collect();
    if let Some(agents) = v.get("agents").and_then(Value::as_array) {
        ids.extend(agents.iter().filter_map(terminal));
    }
    ids
}
