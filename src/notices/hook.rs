//! `bg-agents hook EVENT`: the Claude Code hooks of the bg-agents plugin.
//!
//! Claude Code runs the hook with its JSON on stdin (`session_id`, and for `Stop`
//! `stop_hook_active`). `post-tool-use` (after every tool call) and `user-prompt-submit`
//! print this session's notices of ended agents as `additionalContext`, which Claude Code
//! puts before the model in its next request; with nothing to say they print nothing.
//! `stop` holds the model's turn once (`decision: block`) while this session's agents
//! are still running or ended unreported, and never twice in a row (Claude Code sets
//! `stop_hook_active` on the retry).
//!
//! It runs after every tool call, so it does no more than read stdin, list one or two
//! directories and unlink what it delivers: no runtime, no configuration. Problems are
//! told on stderr and never fail the user's tool call (exit 0).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bg_agent_worker::config::StopHook;
use serde_json::{Value, json};

use super::{
    LiveAgent, MAX_NOTICES, REMINDED_FILE, STATE_FILE, ServerState, base_dir, check_private_dir,
    claim_some, live_server_dirs, notice_files, read_small, render, valid_session_id,
};

/// The hook events this binary answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    PostToolUse,
    UserPromptSubmit,
    Stop,
}

impl Event {
    pub fn parse(arg: &str) -> Option<Event> {
        match arg {
            "post-tool-use" => Some(Event::PostToolUse),
            "user-prompt-submit" => Some(Event::UserPromptSubmit),
            "stop" => Some(Event::Stop),
            _ => None,
        }
    }

    fn hook_event_name(self) -> &'static str {
        match self {
            Event::PostToolUse => "PostToolUse",
            Event::UserPromptSubmit => "UserPromptSubmit",
            Event::Stop => "Stop",
        }
    }
}

/// Runs the hook named by `arg` and prints its answer; the process's exit code.
pub fn main(arg: Option<&str>) -> ExitCode {
    let Some(event) = arg.and_then(Event::parse) else {
        eprintln!(
            "usage: bg-agents hook post-tool-use|user-prompt-submit|stop (Claude Code runs it \
             with the hook's JSON on stdin; see hooks/hooks.json)"
        );
        return ExitCode::from(1);
    };
    let mut input = String::new();
    if let Err(e) = std::io::stdin().take(1 << 20).read_to_string(&mut input) {
        eprintln!("bg-agents hook: cannot read the hook input on stdin: {e}");
        return ExitCode::SUCCESS;
    }
    let base = base_dir();
    match answer(event, &input, &base) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {
            if let Some(out) = no_server_notice(event, &input, &base) {
                println!("{out}");
            }
        }
        Err(why) => eprintln!("bg-agents hook: {why}"),
    }
    ExitCode::SUCCESS
}

/// Where the hooks note the sessions already told that no server runs (one empty file
/// per session id, `<base>/.told/<session>`); a dot keeps it from being a session.
const TOLD_DIR: &str = ".told";
/// How long those notes are kept.
const TOLD_KEEP: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Once per session, after a tool call: when no bg-agents server of this session is
/// running, the model is told so (its agent_* tools are missing, or every call will
/// fail) and what to check, instead of nothing at all. Only after a tool call, when
/// Claude Code has started its MCP servers; a server that runs says nothing here.
/// (The plugin's hook command says so itself when `bg-agents` is not on PATH.)
fn no_server_notice(event: Event, input: &str, base: &Path) -> Option<Value> {
    if event != Event::PostToolUse {
        return None;
    }
    let input: Value = serde_json::from_str(input).ok()?;
    let session = input.get("session_id").and_then(Value::as_str)?;
    if !valid_session_id(session) || !live_server_dirs(&base.join(session)).is_empty() {
        return None;
    }
    // The base must be ours and private (as for notices) before anything is made in it.
    if std::fs::symlink_metadata(base).is_ok() {
        check_private_dir(base).ok()?;
    }
    let told = base.join(TOLD_DIR);
    crate::private_fs::ensure_private_dir(&told).ok()?;
    forget_old_notes(&told);
    // Told once: only the hook whose file is new speaks.
    crate::private_fs::create_private_file(&told.join(session)).ok()?;
    Some(json!({"hookSpecificOutput": {
        "hookEventName": event.hook_event_name(),
        "additionalContext": "bg-agents: no bg-agents MCP server is running in this session, so its agent_* tools are missing or cannot answer (said once per session). Tell the user, who can check `/mcp` or `claude mcp list` (is bg-agents connected?), run `bg-agents --check-config` in a terminal, and start `claude --debug` to see why a server did not start; see Troubleshooting in the bg-agents README.",
    }}))
}

/// Removes the notes of sessions told more than `TOLD_KEEP` ago.
fn forget_old_notes(told: &Path) {
    let Ok(entries) = std::fs::read_dir(told) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in entries.filter_map(Result::ok) {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > TOLD_KEEP));
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The JSON the hook prints for `input` (None: print nothing), with notices under `base`.
pub fn answer(event: Event, input: &str, base: &Path) -> Result<Option<Value>, String> {
    let input: Value = serde_json::from_str(input)
        .map_err(|e| format!("the hook input on stdin is not JSON: {e}"))?;
    let Some(session) = input.get("session_id").and_then(Value::as_str) else {
        return Err("the hook input has no session_id".into());
    };
    if !valid_session_id(session) {
        return Err(format!("session_id `{session}` is not a session id"));
    }
    let session_dir = base.join(session);
    if !session_dir.exists() {
        return Ok(None);
    }
    check_private_dir(base)
        .and_then(|()| check_private_dir(&session_dir))
        .map_err(|e| format!("not reading notices: {e}"))?;
    let servers = live_server_dirs(&session_dir);
    Ok(match event {
        Event::PostToolUse | Event::UserPromptSubmit => {
            let files: Vec<PathBuf> = servers.iter().flat_map(|d| notice_files(d)).collect();
            let (notices, left) = claim_some(&files, MAX_NOTICES);
            (!notices.is_empty()).then(|| {
                json!({"hookSpecificOutput": {
                    "hookEventName": event.hook_event_name(),
                    "additionalContext": render(&notices, left),
                }})
            })
        }
        Event::Stop => {
            let again = input.get("stop_hook_active").and_then(Value::as_bool) == Some(true);
            if again {
                None
            } else {
                stop(&servers).map(|reason| json!({"decision": "block", "reason": reason}))
            }
        }
    })
}

/// The reason to hold the turn, if any server that reminds has agents running that were
/// not named before, or notices not delivered yet (which it claims).
fn stop(servers: &[impl AsRef<Path>]) -> Option<String> {
    let mut running: Vec<LiveAgent> = Vec::new();
    // The shortest wait of the servers that remind (one, in practice).
    let mut max_wait: Option<u64> = None;
    let mut fresh = false;
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in servers {
        let dir = dir.as_ref();
        let Some(state) = read_small(&dir.join(STATE_FILE))
            .and_then(|s| serde_json::from_str::<ServerState>(&s).ok())
        else {
            continue;
        };
        if state.stop_hook != StopHook::Remind {
            continue;
        }
        max_wait = max_wait.into_iter().chain(state.max_wait_seconds).min();
        let reminded_path = dir.join(REMINDED_FILE);
        let reminded_text = read_small(&reminded_path).unwrap_or_default();
        let reminded: HashSet<&str> = reminded_text.lines().collect();
        let new: Vec<&LiveAgent> = state
            .agents
            .iter()
            .filter(|a| !reminded.contains(a.agent_id.as_str()))
            .collect();
        if !new.is_empty() {
            fresh = true;
            let mut all = reminded_text.clone();
            for a in &new {
                all.push_str(&a.agent_id);
                all.push('\n');
            }
            if let Err(e) = super::write_atomic(dir, REMINDED_FILE, all.as_bytes()) {
                eprintln!("bg-agents hook: cannot record the reminder: {e}");
            }
        }
        running.extend(state.agents);
        files.extend(notice_files(dir));
    }
    let (notices, left) = claim_some(&files, MAX_NOTICES);
    if !fresh && notices.is_empty() {
        return None;
    }
    let mut reason = String::from("bg-agents: before you finish, ");
    if running.is_empty() {
        reason.push_str("background agents of this session ended and you were not told yet.\n");
    } else {
        let mut names: Vec<String> = running
            .iter()
            .take(MAX_NOTICES)
            .map(|a| match &a.label {
                Some(l) => format!("{} ({l}, {})", a.agent_id, a.status),
                None => format!("{} ({})", a.agent_id, a.status),
            })
            .collect();
        if running.len() > MAX_NOTICES {
            names.push(format!(
                "and {} more (agent_list {{\"status\": \"running\"}})",
                running.len() - MAX_NOTICES
            ));
        }
        let ids: Vec<&str> = running
            .iter()
            .take(MAX_NOTICES)
            .map(|a| a.agent_id.as_str())
            .collect();
        let blocks = match max_wait {
            Some(s) => format!("it blocks up to {s} s; call again to keep waiting"),
            None => "call again to keep waiting".to_string(),
        };
        reason.push_str(&format!(
            "{} background agent{} of this session {} not done: {}. Collect the results with \
             agent_wait {} ({blocks}), or stop them with agent_kill if they are no longer \
             needed; they are killed when the session ends.\n",
            running.len(),
            if running.len() == 1 { "" } else { "s" },
            if running.len() == 1 { "is" } else { "are" },
            names.join(", "),
            json!({"agent_ids": ids}),
        ));
    }
    if !notices.is_empty() {
        reason.push_str(&render(&notices, left));
    }
    Some(reason.trim_end().to_string())
}
