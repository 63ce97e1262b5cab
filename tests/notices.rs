//! Notices of ended agents through the MCP connection itself: on every tool reply (for
//! clients without hooks) and as channel notifications (Claude Code's research preview).
//! The hooks' side is in `src/notices` (unit tests) and `tests/claude_code.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bg_agents::notices::hook::Event;
use rmcp::model::CustomNotification;
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};
use support::mcp::{Session, text_of};
use support::process::eventually;
use support::provider::Step;

/// Where a test server (no CLAUDE_CODE_SESSION_ID, HOME in its temp dir, no
/// XDG_RUNTIME_DIR) keeps its notices: in shared memory (`/dev/shm/bg-agents-UID`) where
/// that is a tmpfs of this user's, else under its state directory. Whichever it is, the
/// server made it at its start.
fn board_dir<H: ClientHandler>(s: &Session<H>) -> PathBuf {
    let pid = s.server_pid;
    let uid = nix::unistd::geteuid();
    let shm = PathBuf::from(format!("/dev/shm/bg-agents-{uid}/server-{pid}/{pid}"));
    if shm.is_dir() {
        return shm;
    }
    s.dir
        .path()
        .join(format!(".local/state/bg-agents/run/server-{pid}/{pid}"))
}

fn notice_file_exists(dir: &std::path::Path, id: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-{id}.json"))
        })
    })
}

fn slow(chunks: &[&str]) -> Step {
    Step::Text {
        chunks: chunks.iter().map(|c| c.to_string()).collect(),
        delay_ms: 700,
    }
}

#[tokio::test]
async fn tool_replies_carry_each_undelivered_notice_once() {
    let s = Session::start("").await;
    s.fake.script("QUICK-A", vec![Step::text("Alpha is done.")]);
    s.fake.script("SLOW-B", vec![slow(&["Beta ", "is done."])]);
    let a = s
        .spawn_with(json!({"task": "QUICK-A", "label": "alpha"}))
        .await;
    let b = s.spawn("SLOW-B").await;
    let dir = board_dir(&s);
    assert!(
        eventually(Duration::from_secs(10), || notice_file_exists(&dir, &a)).await,
        "a notice for {a} in {}",
        dir.display()
    );

    // A call about another agent carries the notice of the one that ended.
    let r = s.call("agent_status", json!({"agent_id": b})).await;
    let v = r.structured_content.clone().expect("structured");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(
        v["notices"],
        json!([format!("{a} (alpha) completed: Alpha is done.")]),
        "{v}"
    );
    assert!(
        text_of(&r).contains(&format!("{a} (alpha) completed")),
        "{}",
        text_of(&r)
    );
    assert!(!notice_file_exists(&dir, &a), "claimed");

    // Told once.
    let v = s.status(&b).await;
    assert!(v.get("notices").is_none(), "{v}");

    // A reply that shows an agent's end is its notice: none follows for it.
    let waited = s.wait_all(std::slice::from_ref(&b)).await;
    assert!(waited.get("notices").is_none(), "{waited}");
    let listed = s.ok("agent_list", json!({})).await;
    assert!(listed.get("notices").is_none(), "{listed}");
    assert!(!notice_file_exists(&dir, &b));
    s.end().await;
}

#[tokio::test]
async fn errors_carry_notices_too() {
    let s = Session::start("").await;
    s.fake.script("QUICK-C", vec![Step::text("Gamma.")]);
    let c = s.spawn("QUICK-C").await;
    let dir = board_dir(&s);
    assert!(eventually(Duration::from_secs(10), || notice_file_exists(&dir, &c)).await);
    let err = s
        .tool_error("agent_status", json!({"agent_id": "a-nope"}))
        .await;
    assert!(
        err.contains("unknown agent") && err.contains(&format!("{c} completed: Gamma.")),
        "{err}"
    );
    s.end().await;
}

#[tokio::test]
async fn the_servers_notices_leave_with_it() {
    let s = Session::start("").await;
    s.fake.script("QUICK-D", vec![Step::text("Delta.")]);
    let d = s.spawn("QUICK-D").await;
    let dir = board_dir(&s);
    assert!(eventually(Duration::from_secs(10), || notice_file_exists(&dir, &d)).await);
    let session_dir = dir.parent().expect("session dir").to_path_buf();
    let status = s.end().await;
    assert!(status.success(), "{status}");
    assert!(!dir.exists() && !session_dir.exists(), "{}", dir.display());
}

#[tokio::test]
async fn the_stop_hook_names_the_configured_wait_limit() {
    let s = Session::start_server("max_wait_seconds = 17").await;
    s.fake.script("SLOW-W", vec![slow(&["W ", "is ", "done."])]);
    let w = s.spawn("SLOW-W").await;
    let dir = board_dir(&s);
    let state = dir.join("state.json");
    let names_w = || std::fs::read_to_string(&state).is_ok_and(|t| t.contains(&w));
    assert!(
        eventually(Duration::from_secs(10), names_w).await,
        "{} names {w}",
        state.display()
    );
    let session = dir.parent().expect("session dir");
    let base = session.parent().expect("base dir");
    let session_id = session.file_name().and_then(|n| n.to_str()).expect("id");
    let input = json!({"session_id": session_id, "stop_hook_active": false}).to_string();
    let out = bg_agents::notices::hook::answer(Event::Stop, &input, base)
        .expect("the hook answers")
        .expect("a reminder");
    let reason = out["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&w) && reason.contains("it blocks up to 17 s;"),
        "{reason}"
    );
    s.end().await;
}

/// Records Claude Code channel notifications.
#[derive(Clone, Default)]
struct ChannelClient {
    received: Arc<Mutex<Vec<CustomNotification>>>,
}

impl ClientHandler for ChannelClient {
    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        self.received.lock().unwrap().push(notification);
    }
}

#[tokio::test]
async fn each_ended_agent_sends_one_channel_notification() {
    let client = ChannelClient::default();
    let received = Arc::clone(&client.received);
    let s = Session::start_with(client, "").await;
    let info = s.client.peer_info().expect("server info");
    let declared = info
        .capabilities
        .experimental
        .as_ref()
        .is_some_and(|e| e.contains_key("claude/channel"));
    assert!(declared, "{:?}", info.capabilities);
    s.fake
        .script("QUICK-E", vec![Step::text("Epsilon.\nMore.")]);
    s.fake.script("QUICK-F", vec![Step::status(400)]);
    let e = s.spawn("QUICK-E").await;
    let f = s.spawn("QUICK-F").await;
    s.wait_all(&[e.clone(), f.clone()]).await;
    let both = eventually(Duration::from_secs(5), || {
        received.lock().unwrap().len() >= 2
    })
    .await;
    let got = received.lock().unwrap().clone();
    assert!(both, "{got:?}");
    assert_eq!(got.len(), 2, "{got:?}");
    for n in &got {
        assert_eq!(n.method, "notifications/claude/channel");
    }
    let params: Vec<Value> = got
        .iter()
        .map(|n| n.params.clone().unwrap_or_default())
        .collect();
    let of = |id: &str| {
        params
            .iter()
            .find(|p| p["meta"]["agent_id"] == id)
            .unwrap_or_else(|| panic!("no channel notification for {id}: {params:?}"))
            .clone()
    };
    let pe = of(&e);
    assert_eq!(pe["meta"]["status"], "completed");
    let content = pe["content"].as_str().unwrap();
    assert!(
        content.starts_with(&format!("{e} completed: Epsilon. …")),
        "{content}"
    );
    assert!(
        content.contains(&format!("agent_status {{\"agent_id\": \"{e}\"}}")),
        "{content}"
    );
    assert_eq!(of(&f)["meta"]["status"], "failed");
    s.end().await;
}
