//! The worker's events into its record: stdout read in chunks, lines cut at a cap, each
//! event applied (usage, result, readable text), the transcript fed.
//!
//! Not here: the stores themselves (`output`), session spending (`session`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bg_agent_worker::protocol::{Block, ErrorKind, Event, Role};
use bg_agent_worker::provider::estimate_tokens;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::mpsc;

use crate::supervisor::output::Transcript;
use crate::supervisor::process;
use crate::supervisor::registry::{AgentRecord, Control, OpenTurn, Usage};

use super::Inner;

/// Longest event line read from a worker, whatever the transcript cap: the server holds
/// one such line in memory per agent. A line is also never longer than the transcript
/// cap (it could not be kept). A longer line is dropped whole, counted, and ends the
/// agent as `output_limit`.
const MAX_EVENT_LINE: usize = 64 * 1024 * 1024;

impl Inner {
    /// Reads JSONL events in chunks; never blocks on anything but the pipe, and keeps at
    /// most one event line (capped by `max_event_line`) beyond what the buffers hold.
    pub(super) async fn read_stdout(
        self: Arc<Self>,
        id: String,
        stdout: Receiver,
        ctl: mpsc::UnboundedSender<Control>,
    ) {
        let max_line = self.max_event_line();
        let mut pending: Vec<u8> = Vec::new();
        // The current line passed `max_line`: its bytes are dropped up to its '\n'.
        let mut in_long_line = false;
        let mut limit_sent = false;
        // Each chunk is read into the thread's one buffer (`read_pipe`), not one of this
        // agent's own.
        let mut take = |chunk: &[u8]| {
            let mut lines = Vec::new();
            // Bytes of lines too long to keep, and whether one began here.
            let mut dropped = 0u64;
            let mut too_long = false;
            for piece in chunk.split_inclusive(|&b| b == b'\n') {
                let (body, complete) = match piece.strip_suffix(b"\n") {
                    Some(b) => (b, true),
                    None => (piece, false),
                };
                if in_long_line {
                    dropped += piece.len() as u64;
                } else if pending.len() + body.len() > max_line {
                    // Dropped whole at once, so the agent is stopped while it writes.
                    in_long_line = true;
                    too_long = true;
                    dropped += (pending.len() + piece.len()) as u64;
                    pending = Vec::new();
                } else {
                    pending.extend_from_slice(body);
                }
                if complete {
                    if in_long_line {
                        in_long_line = false;
                    } else {
                        lines.push(std::mem::take(&mut pending));
                    }
                }
            }
            let n = chunk.len() as u64;
            let over_cap = self.apply_lines(&id, &lines, n, dropped, too_long, max_line);
            if over_cap && !limit_sent {
                limit_sent = true;
                let _ = ctl.send(Control::OutputLimit);
            }
        };
        while let Ok(Some(())) = process::read_pipe(&stdout, &mut take).await {}
        if !pending.is_empty() {
            self.apply_lines(&id, &[pending], 0, 0, false, max_line);
        }
    }

    /// The longest event line read from a worker: the transcript cap, at most
    /// `MAX_EVENT_LINE`.
    pub(super) fn max_event_line(&self) -> usize {
        let cap = self
            .config
            .server
            .transcript_max_mb
            .saturating_mul(1024 * 1024);
        usize::try_from(cap).map_or(MAX_EVENT_LINE, |c| c.min(MAX_EVENT_LINE))
    }

    /// Applies complete stdout lines to the record, and counts the `dropped` bytes of
    /// lines longer than `max_line` (`too_long`: one began); true once output went over a
    /// cap.
    pub(super) fn apply_lines(
        &self,
        id: &str,
        lines: &[Vec<u8>],
        bytes: u64,
        dropped: u64,
        too_long: bool,
        max_line: usize,
    ) -> bool {
        let mut reg = self.lock();
        let mut session_spent = false;
        let Some(rec) = reg.get_mut(id) else {
            return false;
        };
        if rec.first_event_at.is_none() && bytes > 0 {
            rec.first_event_at = Some(SystemTime::now());
        }
        rec.stdout_bytes += bytes;
        rec.oversize_dropped += dropped;
        if too_long {
            // Said in the readable output; never the raw JSON of the line.
            let nl = if rec.mid_line { "\n" } else { "" };
            push_text(
                rec,
                &format!(
                    "{nl}[bg-agents: an event line longer than {max_line} bytes was dropped: the longest line the server keeps]\n"
                ),
            );
            rec.overflow.get_or_insert_with(|| {
                format!(
                    "wrote an event line longer than {max_line} bytes, the longest the server keeps ([server] transcript_max_mb, at most {MAX_EVENT_LINE} bytes); stopped so nothing is lost silently"
                )
            });
        }
        for raw in lines {
            let line = String::from_utf8_lossy(raw);
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if let Some(t) = rec.transcript.as_mut() {
                        t.append_line(&line);
                        // What status reports is on disk too: flush at each milestone
                        // (a turn's usage, the end), not only when the buffer fills.
                        if matches!(
                            event,
                            Event::Started { .. }
                                | Event::Usage { .. }
                                | Event::Result { .. }
                                | Event::Error { .. }
                        ) {
                            t.flush();
                        }
                    }
                    if let Event::Usage { .. } = &event {
                        let before = rec.usage;
                        apply_event(rec, event);
                        session_spent |= self.add_to_session(id, &before, &rec.usage);
                        continue;
                    }
                    if let Event::Retry {
                        wait_ms,
                        throttled: true,
                        ..
                    } = &event
                    {
                        self.admission().hold(
                            &rec.provider,
                            Duration::from_millis(*wait_ms),
                            Instant::now(),
                        );
                    }
                    apply_event(rec, event);
                }
                Err(_) => {
                    // Not our protocol (a crash message, a foreign program): keep it readable.
                    if let Some(t) = rec.transcript.as_mut() {
                        t.append_line(
                            &serde_json::json!({"type": "raw", "line": line}).to_string(),
                        );
                    }
                    push_text(rec, &format!("{line}\n"));
                }
            }
        }
        rec.output_seq.send_modify(|v| *v += 1);
        // Over the cap, not a write error: a full disk loses the transcript's tail
        // (counted, and told in status), never the agent.
        if rec.transcript.as_ref().is_some_and(Transcript::over_cap) {
            let cap = self.config.server.transcript_max_mb;
            rec.overflow.get_or_insert_with(|| {
                format!(
                    "wrote more output than the transcript cap ([server] transcript_max_mb = {cap}); stopped so nothing is lost silently"
                )
            });
        }
        let over_cap = rec.overflow.is_some();
        if session_spent {
            self.cancel_queued_for_session(&mut reg);
        }
        over_cap
    }
}

fn apply_event(rec: &mut AgentRecord, event: Event) {
    track_open_turn(rec, &event);
    match &event {
        Event::Started { sandbox, .. } => rec.sandbox = sandbox.clone(),
        Event::Usage {
            input_tokens,
            output_tokens,
            cache_write_tokens,
            cache_read_tokens,
            cost_usd,
            estimated,
        } => {
            // The worker counts its own round; earlier rounds add up here.
            rec.usage = rec.prior_usage.plus(&Usage {
                input_tokens: *input_tokens,
                output_tokens: *output_tokens,
                cache_write_tokens: *cache_write_tokens,
                cache_read_tokens: *cache_read_tokens,
                cost_usd: *cost_usd,
                estimated: *estimated,
            });
        }
        Event::Result {
            text,
            turns,
            stop_reason,
            result_json,
        } => {
            rec.result = Some(text.clone());
            rec.result_json = result_json.clone();
            rec.turns = rec.prior_turns + *turns;
            rec.stop_reason = Some(stop_reason.clone());
        }
        Event::Error { kind, message } => {
            rec.error = Some(message.clone());
            rec.error_kind = Some(*kind);
        }
        Event::Message { message } => {
            // A follow-up sent while it ran is delivered once it joins the conversation.
            if message.role == Role::User {
                for block in &message.content {
                    if let Block::Text { text } = block
                        && let Some(i) = rec.pending_messages.iter().position(|p| p == text)
                    {
                        rec.pending_messages.remove(i);
                        super::send::mark_follow_up(rec, text);
                    }
                }
            }
            rec.conversation.push(message.clone());
        }
        _ => {}
    }
    if let Some(text) = event.render_human(!rec.mid_line) {
        push_text(rec, &text);
    }
}

/// Follows the request in flight: opened by the user message the worker sends (the
/// task, tool results, a follow-up), grown by the text streamed back, closed by its usage
/// or the worker's final event.
fn track_open_turn(rec: &mut AgentRecord, event: &Event) {
    match event {
        Event::Message { message } if message.role == Role::User => {
            let conversation = serde_json::to_vec(&rec.conversation).map_or(0, |v| v.len());
            let message = serde_json::to_vec(message).map_or(0, |v| v.len());
            rec.open_turn = Some(OpenTurn {
                input_bytes: rec.round_spec.system_prompt.len() + conversation + message,
                output_bytes: 0,
            });
        }
        Event::Text { text } => {
            if let Some(turn) = rec.open_turn.as_mut() {
                turn.output_bytes += text.len();
            }
        }
        // An interrupted worker's request was cut, not answered: it stays open.
        Event::Error {
            kind: ErrorKind::Interrupted,
            ..
        } => {}
        Event::Usage { .. } | Event::Result { .. } | Event::Error { .. } => rec.open_turn = None,
        _ => {}
    }
}

/// What a request cut off before its usage came cost, estimated (4 bytes a token) and
/// added to `rec`'s usage, marked estimated; `None` when no request was in flight.
pub(super) fn count_cut_turn(rec: &mut AgentRecord) -> Option<Usage> {
    let turn = rec.open_turn.take()?;
    let before = rec.usage;
    let input = estimate_tokens(turn.input_bytes);
    let output = estimate_tokens(turn.output_bytes);
    rec.usage.input_tokens += input;
    rec.usage.output_tokens += output;
    rec.usage.cost_usd = match (rec.round_spec.price, before.cost_usd) {
        (Some(price), spent) => Some(spent.unwrap_or(0.0) + price.cost(input, output)),
        (None, spent) => spent,
    };
    rec.usage.estimated = true;
    Some(before)
}

fn push_text(rec: &mut AgentRecord, text: &str) {
    if text.is_empty() {
        return;
    }
    rec.output.push(text);
    rec.mid_line = !text.ends_with('\n');
}
