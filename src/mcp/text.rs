//! Readable texts for clients whose model reads only the text of a tool result (opencode,
//! Cursor and others). Each is made from the reply the model reads (`reply`), so it is
//! bounded the same way, and it carries the same facts: a warning, a note or a flag that is
//! only in the JSON is lost to such a model.
//!
//! What a reader needs to go on (cursor, counts, truncation, what to call next) comes first:
//! some clients cut a text at their own limit (opencode keeps the first 51,200 bytes), and
//! only a long answer or a page of output may run on after it.
//!
//! Not here: the JSON (`reply`).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::reply::{AgentReply, Listed, OutputReply, Spawned, Usage, WaitRow, Waited};
use crate::supervisor::Status;

fn usage(u: &Usage) -> String {
    let mut s = format!("{} in / {} out tokens", u.input_tokens, u.output_tokens);
    if u.cache_write_tokens > 0 || u.cache_read_tokens > 0 {
        let _ = write!(
            s,
            " (+{} cache-write, {} cache-read)",
            u.cache_write_tokens, u.cache_read_tokens
        );
    }
    match u.cost_usd {
        Some(c) => {
            let _ = write!(s, ", ${c}");
        }
        None => s.push_str(", cost unknown (no price configured)"),
    }
    if u.estimated {
        s.push_str(" (estimated: the provider sent no usage)");
    }
    s
}

/// `v` as compact JSON, for nested facts shown as they are (limits, details, session).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub fn spawned(v: &Spawned) -> String {
    let mut s = format!(
        "Spawned {id} ({status}): role {role}, {tier} tier → {model} (by {by})",
        id = v.agent_id,
        status = v.status.as_str(),
        role = v.role,
        tier = v.tier,
        model = v.model,
        by = v.routed_by,
    );
    if let Some(p) = &v.provider {
        let _ = write!(s, " on provider {p}");
    }
    if let Some(l) = &v.label {
        let _ = write!(s, ", label \"{l}\"");
    }
    s.push('.');
    for w in &v.warnings {
        let _ = write!(s, "\nWarning: {w}");
    }
    if let Some(q) = &v.queued_reason {
        let _ = write!(s, "\nQueued: {q}");
    }
    if let Some(r) = &v.routing_reason {
        let _ = write!(s, "\nRouting: {r}");
    }
    if let Some(l) = &v.limits {
        let _ = write!(s, "\nLimits (not the defaults): {}", json(l));
    }
    let _ = write!(
        s,
        "\nKeep working; get the answer with agent_wait {{\"agent_ids\": [\"{id}\"]}} or agent_status {{\"agent_id\": \"{id}\", \"wait_seconds\": 30}}.",
        id = v.agent_id
    );
    s
}

/// One agent: a header line, every note, the small facts, and the answer last, so a cut
/// client-side can only shorten the answer (after the note that says how to read it all).
pub fn status(v: &AgentReply, wait_capped: Option<Duration>) -> String {
    let mut s = format!("{} {}", v.agent_id, v.status.as_str());
    if let Some(l) = &v.label {
        let _ = write!(s, " [{l}]");
    }
    if let Some(e) = v.elapsed_s {
        let _ = write!(s, " after {e} s");
    }
    let _ = write!(s, " · {} · role {} · {} turn(s)", v.model, v.role, v.turns);
    if let Some(r) = v.rounds {
        let _ = write!(s, " in {r} rounds");
    }
    if let Some(u) = &v.usage {
        let _ = write!(s, " · {}", usage(u));
    }
    if let Some(exit) = &v.exit {
        let _ = write!(s, " · exit {}", exit.reason);
        if let Some(code) = exit.code {
            let _ = write!(s, " (code {code})");
        }
        if let Some(signal) = &exit.signal {
            let _ = write!(s, " (signal {signal})");
        }
    }
    if let Some(t) = &v.answer_truncated {
        let _ = write!(s, "\nAnswer truncated: {t}");
    }
    if let Some(more) = &v.read_on {
        let _ = write!(s, "\nResult cut to fit (result_truncated): {more}");
    }
    if let Some(err) = &v.error {
        let _ = write!(s, "\nError: {err}");
    }
    if let Some(q) = &v.queued_reason {
        let _ = write!(s, "\nQueued: {q}");
    }
    if let Some(n) = v.messages_pending {
        let _ = write!(
            s,
            "\nMessages pending: {n} follow-up(s) not yet taken in (read at its next turn boundary; if it has ended, they were never read: agent_send them again)"
        );
    }
    if let Some(t) = &v.transcript_error {
        let _ = write!(s, "\nTranscript error: {t}");
    }
    let _ = write!(s, "\nTask: {}", v.task);
    let mut facts = Vec::new();
    if let Some(pid) = v.pid {
        facts.push(format!("pid {pid}"));
    }
    if let Some(q) = v.queued_s {
        facts.push(format!("queued {q} s"));
    }
    if let Some(e) = v.ended_s_ago {
        facts.push(format!("ended {e} s ago"));
    }
    if let Some(sb) = &v.sandbox {
        facts.push(format!("sandbox {sb}"));
    }
    if !facts.is_empty() {
        let _ = write!(s, "\n{}", facts.join(" · "));
    }
    if let Some(l) = &v.limits {
        // `verbose` (which adds details) shows every limit, else those not the defaults.
        let which = if v.details.is_some() {
            "all"
        } else {
            "not the defaults"
        };
        let _ = write!(s, "\nLimits ({which}): {}", json(l));
    }
    if let Some(d) = &v.details {
        let _ = write!(s, "\nDetails: {}", json(d));
    }
    if let Some(t) = &v.stderr_tail {
        let _ = write!(s, "\nStderr (last lines):\n{t}");
    }
    if !v.status.is_terminal() {
        s.push_str("\nStill going: call agent_status with wait_seconds, or agent_wait, to block until it ends.");
        if let Some(w) = wait_capped {
            let _ = write!(s, " (this wait was capped at {} s)", w.as_secs());
        }
    }
    if let Some(j) = &v.result_json {
        let _ = write!(s, "\nResult (JSON, valid against output_schema):\n{j}");
    } else if let Some(r) = &v.result {
        let _ = write!(s, "\nResult:\n{r}");
    }
    s
}

/// Most bytes of output in one text reply: what a client that cuts at 51,200 bytes keeps,
/// with room for the paging line and the notices of ended agents.
pub const OUTPUT_TEXT_MAX_BYTES: usize = 40_000;

/// A page of output: the line to read on first, then the text. `shortened`: the page was
/// read again at `OUTPUT_TEXT_MAX_BYTES` for this text (the JSON has the longer one).
pub fn output(p: &OutputReply, shortened: bool) -> String {
    let mut notes = vec![
        format!("agent {}", p.agent_id),
        format!("next_cursor {}", p.next_cursor),
        format!("status {}", p.status.as_str()),
    ];
    if p.text.is_empty() {
        notes.insert(0, "no output in range".into());
    }
    if p.truncated {
        let bound = if shortened {
            format!(" (a text reply holds at most {OUTPUT_TEXT_MAX_BYTES} bytes of output)")
        } else {
            String::new()
        };
        notes.push(format!(
            "truncated: {} bytes here{bound}, more after them: call again with since={}",
            p.text.len(),
            p.next_cursor
        ));
    }
    if let Some(n) = p.matched_lines {
        notes.push(format!("{n} matching lines"));
    }
    if p.dropped_bytes > 0 {
        notes.push(format!(
            "{} earlier bytes are no longer in memory (see the transcript{})",
            p.dropped_bytes,
            p.transcript_path
                .as_deref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default()
        ));
    }
    let mut s = format!("[{}]", notes.join("; "));
    if !p.text.is_empty() {
        s.push('\n');
        s.push_str(&p.text);
    }
    s
}

/// Counts, totals and paging first, then one line per agent.
pub fn list(v: &Listed) -> String {
    let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut s = format!(
        "Agents: {} · {} in / {} out tokens",
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
        v.total_input_tokens,
        v.total_output_tokens,
    );
    if v.total_cache_write_tokens > 0 || v.total_cache_read_tokens > 0 {
        let _ = write!(
            s,
            " (+{} cache-write, {} cache-read)",
            v.total_cache_write_tokens, v.total_cache_read_tokens
        );
    }
    let _ = write!(s, " · ${}", v.total_cost_usd);
    if v.agents_with_unknown_cost > 0 {
        let _ = write!(
            s,
            " (+{} agents with unknown cost)",
            v.agents_with_unknown_cost
        );
    }
    if let Some(session) = &v.session {
        let _ = write!(s, "\nSession: {}", json(session));
    }
    if let Some(m) = &v.more {
        let _ = write!(s, "\n[{m}]");
    }
    if v.agents.is_empty() {
        if v.more.is_none() {
            s.push_str("\nNo agents match. Start one with agent_spawn.");
        }
        return s;
    }
    for a in &v.agents {
        let _ = write!(s, "\n{} {}", a.agent_id, a.status.as_str());
        if let Some(l) = &a.label {
            let _ = write!(s, " [{l}]");
        }
        let _ = write!(s, " · {} · {}", a.role, a.model);
        if let Some(e) = a.elapsed_s {
            let _ = write!(s, " · {e} s");
        }
        let _ = write!(s, " · {}", a.task);
        if a.answer_truncated {
            s.push_str(" · answer truncated at the token limit (agent_status says how to go on)");
        }
        if let Some(e) = &a.error {
            let _ = write!(s, " · {e}");
        }
    }
    s
}

/// The outcome, the ids and paging first, then each ended agent's answer.
pub fn waited(v: &Waited, wait_capped: Option<Duration>) -> String {
    let running = v
        .counts
        .iter()
        .filter(|(k, _)| Status::parse(k).is_some_and(|s| !s.is_terminal()))
        .map(|(_, n)| n)
        .sum::<usize>();
    let ended = v.counts.values().sum::<usize>() - running;
    let mut s = if v.done {
        format!(
            "Done: {ended} ended ({running} still running) after {} s.",
            v.waited_s
        )
    } else {
        format!(
            "Wait ran out after {} s: {ended} ended, {running} still running; call agent_wait again to keep waiting.",
            v.waited_s,
        )
    };
    if let Some(w) = wait_capped {
        let _ = write!(s, " (wait capped at {} s)", w.as_secs());
    }
    let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = write!(s, "\nBy status: {}", counts.join(", "));
    if !v.ended.is_empty() {
        let _ = write!(s, "\nEnded: {}", v.ended.join(", "));
    }
    if !v.still_running.is_empty() {
        let _ = write!(s, "\nStill running: {}", v.still_running.join(", "));
    }
    if let Some(m) = &v.more {
        let _ = write!(s, "\n[{m}]");
    }
    for a in &v.agents {
        wait_row(&mut s, a);
    }
    s
}

fn wait_row(s: &mut String, a: &WaitRow) {
    let _ = write!(s, "\n\n## {} {}", a.agent_id, a.status.as_str());
    if let Some(l) = &a.label {
        let _ = write!(s, " [{l}]");
    }
    if let Some(t) = &a.answer_truncated {
        let _ = write!(s, "\nAnswer truncated: {t}");
    }
    if a.result_truncated && a.result.is_none() && a.result_json.is_none() {
        s.push_str(
            "\n[result_json left out for its size (result_truncated): agent_status shows it]",
        );
    } else if a.result_truncated {
        s.push_str("\n[result cut to fit (result_truncated): agent_status has up to 20000 bytes, agent_output all of it]");
    }
    if let Some(e) = &a.error {
        let _ = write!(s, "\nError: {e}");
    }
    if let Some(j) = &a.result_json {
        let _ = write!(s, "\n{j}");
    } else if let Some(r) = &a.result {
        let _ = write!(s, "\n{r}");
    }
}
