//! Short readable texts for clients that show only the text of a tool result. Each is
//! made from the reply the model reads (`reply`), so it is bounded the same way.

use std::fmt::Write as _;
use std::time::Duration;

use super::reply::{AgentReply, Listed, OutputReply, Spawned, Usage, Waited};

fn usage(u: &Usage) -> String {
    let cost = u
        .cost_usd
        .map_or("cost unknown".to_string(), |c| format!("${c:.4}"));
    format!(
        "{} in / {} out tokens, {cost}",
        u.input_tokens, u.output_tokens
    )
}

pub fn spawned(v: &Spawned) -> String {
    format!(
        "Spawned {id} ({status}): role {role}, {tier} tier → {model} (by {by}).\n\
         Keep working; get the answer with agent_wait {{\"agent_ids\": [\"{id}\"]}} or agent_status {{\"agent_id\": \"{id}\", \"wait_seconds\": 30}}.",
        id = v.agent_id,
        status = v.status.as_str(),
        role = v.role,
        tier = v.tier,
        model = v.model,
        by = v.routed_by,
    )
}

pub fn status(v: &AgentReply, wait_capped: Option<Duration>) -> String {
    let mut s = format!("{} {}", v.agent_id, v.status.as_str());
    if let Some(e) = v.elapsed_s {
        let _ = write!(s, " after {e:.1} s");
    }
    let _ = write!(s, " · {} · {} turn(s)", v.model, v.turns);
    if let Some(u) = &v.usage {
        let _ = write!(s, " · {}", usage(u));
    }
    if let Some(exit) = &v.exit {
        let _ = write!(s, " · exit {}", exit.reason);
    }
    if let Some(err) = &v.error {
        let _ = write!(s, "\nError: {err}");
    }
    if let Some(j) = &v.result_json {
        let _ = write!(s, "\nResult (JSON, valid against output_schema):\n{j}");
    } else if let Some(r) = &v.result {
        let _ = write!(s, "\nResult:\n{r}");
        if let Some(more) = &v.read_on {
            let _ = write!(s, "\n[{more}]");
        }
    }
    if !v.status.is_terminal() {
        s.push_str("\nStill going: call agent_status with wait_seconds, or agent_wait, to block until it ends.");
        if let Some(w) = wait_capped {
            let _ = write!(s, " (this wait was capped at {} s)", w.as_secs());
        }
    }
    s
}

pub fn output(p: &OutputReply) -> String {
    let mut s = p.text.clone();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    let mut notes = vec![
        format!("next_cursor {}", p.next_cursor),
        format!("status {}", p.status.as_str()),
    ];
    if p.truncated {
        notes.push(format!(
            "truncated: call again with since={} for more",
            p.next_cursor
        ));
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
    if p.text.is_empty() {
        notes.insert(0, "no output in range".into());
    }
    let _ = write!(s, "[{}]", notes.join("; "));
    s
}

pub fn list(v: &Listed) -> String {
    if v.agents.is_empty() {
        return match &v.more {
            Some(m) => format!("No agents on this page: {m}"),
            None => "No agents match. Start one with agent_spawn.".into(),
        };
    }
    let mut s = String::new();
    for a in &v.agents {
        let label = a
            .label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let _ = write!(
            s,
            "{} {}{} · {} · {} · {}",
            a.agent_id,
            a.status.as_str(),
            label,
            a.role,
            a.model,
            a.task
        );
        if let Some(e) = &a.error {
            let _ = write!(s, " · {e}");
        }
        s.push('\n');
    }
    let counts: Vec<String> = v.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = write!(
        s,
        "{} · {} in / {} out tokens · ${:.4}",
        counts.join(", "),
        v.total_input_tokens,
        v.total_output_tokens,
        v.total_cost_usd
    );
    if v.agents_with_unknown_cost > 0 {
        let _ = write!(
            s,
            " (+{} agents with unknown cost)",
            v.agents_with_unknown_cost
        );
    }
    if let Some(m) = &v.more {
        let _ = write!(s, "\n[{m}]");
    }
    s
}

pub fn waited(v: &Waited, wait_capped: Option<Duration>) -> String {
    let running = v
        .counts
        .iter()
        .filter(|(k, _)| *k == "queued" || *k == "running")
        .map(|(_, n)| n)
        .sum::<usize>();
    let ended = v.counts.values().sum::<usize>() - running;
    let mut s = if v.done {
        format!(
            "{ended} ended ({running} still running) after {:.1} s.",
            v.waited_s
        )
    } else {
        format!(
            "Wait ran out after {:.1} s: {ended} ended, {running} still running; call agent_wait again to keep waiting.",
            v.waited_s,
        )
    };
    if let Some(w) = wait_capped {
        let _ = write!(s, " (wait capped at {} s)", w.as_secs());
    }
    for a in &v.agents {
        let _ = write!(s, "\n\n## {} {}", a.agent_id, a.status.as_str());
        if let Some(e) = &a.error {
            let _ = write!(s, "\nError: {e}");
        }
        if let Some(j) = &a.result_json {
            let _ = write!(s, "\n{j}");
        } else if a.result_truncated && a.result.is_none() {
            s.push_str("\n[result_json left out for its size; agent_status shows it]");
        }
        if let Some(r) = &a.result {
            let _ = write!(s, "\n{r}");
            if a.result_truncated {
                s.push_str("\n[cut; agent_status has more, agent_output has all]");
            }
        }
    }
    if let Some(m) = &v.more {
        let _ = write!(s, "\n\n[{m}]");
    }
    s
}
