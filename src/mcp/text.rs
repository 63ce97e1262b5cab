//! Short readable texts for clients that show only the text of a tool result.

use std::fmt::Write as _;
use std::time::Duration;

use crate::supervisor::manager::{ListView, OutputPage, WaitView};
use crate::supervisor::view::{SpawnView, StatusView, UsageView};

/// Cuts `view.result` to `max` bytes (at a char boundary); true when it cut.
pub fn cap_result(view: &mut StatusView, max: usize) -> bool {
    let Some(r) = view.result.as_mut() else {
        return false;
    };
    if r.len() <= max {
        return false;
    }
    let mut cut = max;
    while !r.is_char_boundary(cut) {
        cut -= 1;
    }
    r.truncate(cut);
    view.result_truncated = true;
    true
}

fn usage(u: &UsageView) -> String {
    let cost = u
        .cost_usd
        .map_or("cost unknown".to_string(), |c| format!("${c:.4}"));
    format!(
        "{} in / {} out tokens, {cost}",
        u.input_tokens, u.output_tokens
    )
}

pub fn spawned(v: &SpawnView) -> String {
    format!(
        "Spawned {id} ({status}): role {role} ({role_by}), {tier} tier → {model} ({reason}).\n\
         Keep working; get the answer with agent_wait {{\"agent_ids\": [\"{id}\"]}} or agent_status {{\"agent_id\": \"{id}\", \"wait_seconds\": 30}}.",
        id = v.agent_id,
        status = v.status.as_str(),
        role = v.role,
        role_by = v.role_selected_by,
        tier = v.tier,
        model = v.model,
        reason = v.routing_reason,
    )
}

pub fn status(v: &StatusView, result_cut: bool, wait_capped: Option<Duration>) -> String {
    let mut s = format!("{} {}", v.agent_id, v.status.as_str());
    if let Some(e) = v.elapsed_seconds {
        let _ = write!(s, " after {e:.1} s");
    }
    let _ = write!(
        s,
        " · {} · {} turn(s) · {}",
        v.model,
        v.turns,
        usage(&v.usage)
    );
    if let Some(exit) = &v.exit
        && v.status.as_str() != "completed"
    {
        let _ = write!(s, " · exit {}", exit.reason);
    }
    if let Some(err) = &v.error {
        let _ = write!(s, "\nError: {err}");
    }
    if let Some(r) = &v.result {
        let _ = write!(s, "\nResult:\n{r}");
        if result_cut {
            s.push_str("\n[result cut to fit; read the rest with agent_output]");
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

pub fn output(p: &OutputPage) -> String {
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

pub fn list(v: &ListView) -> String {
    if v.agents.is_empty() {
        return "No agents match. Start one with agent_spawn.".into();
    }
    let mut s = String::new();
    for a in &v.agents {
        let label = a
            .label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{} {}{} · {} · {} · {}",
            a.agent_id,
            a.status.as_str(),
            label,
            a.role,
            a.model,
            a.task
        );
    }
    let mut counts: Vec<_> = v.counts.iter().collect();
    counts.sort();
    let counts: Vec<String> = counts
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
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
    s
}

pub fn waited(v: &WaitView, results_cut: bool, wait_capped: Option<Duration>) -> String {
    let mut s = if v.done {
        format!(
            "{} ended ({} still running) after {:.1} s.",
            v.ended.len(),
            v.still_running.len(),
            v.waited_seconds
        )
    } else {
        format!(
            "Wait ran out after {:.1} s: {} ended, {} still running; call agent_wait again to keep waiting.",
            v.waited_seconds,
            v.ended.len(),
            v.still_running.len()
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
        if let Some(r) = &a.result {
            let _ = write!(s, "\n{r}");
            if a.result_truncated {
                s.push_str("\n[cut; agent_status has more, agent_output has all]");
            }
        }
    }
    if results_cut {
        s.push_str("\n\n[some results were cut to keep this reply small]");
    }
    s
}
