//! The worker's events into its record: stdout read in chunks, lines cut at a cap, each
//! event applied (usage, result, readable text), the transcript fed.
//!
//! Not here: the stores themselves (`output`), session spending (`session`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bg_agent_worker::protocol::{ErrorKind, Event, Role};
use bg_agent_worker::provider::estimate_tokens;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::mpsc;

use crate::supervisor::output::Transcript;
use crate::supervisor::process;
use crate::supervisor::record::AgentRecord;
use crate::supervisor::state::{Control, OpenTurn};
use bg_agent_worker::protocol::UsageReport;

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
            // A line whole in this chunk is borrowed from it; one begun in an earlier
            // chunk is the bytes gathered in `pending`.
            let mut lines: Vec<Cow<'_, [u8]>> = Vec::new();
            // Bytes of lines too long to keep, and whether one began here.
            let mut dropped = 0u64;
            let mut too_long = false;
            for piece in chunk.split_inclusive(|&b| b == b'\n') {
                let (body, complete) = match piece.strip_suffix(b"\n") {
                    Some(b) => (b, true),
                    None => (piece, false),
                };
                if complete && !in_long_line && pending.is_empty() && body.len() <= max_line {
                    lines.push(Cow::Borrowed(body));
                    continue;
                }
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
                        lines.push(Cow::Owned(std::mem::take(&mut pending)));
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
            self.apply_lines(&id, &[Cow::Owned(pending)], 0, 0, false, max_line);
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
        lines: &[Cow<'_, [u8]>],
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
        let io = &mut rec.io;
        if io.first_event_at.is_none() && bytes > 0 {
            io.first_event_at = Some(SystemTime::now());
        }
        io.stdout_bytes += bytes;
        io.oversize_dropped += dropped;
        if too_long {
            // Said in the readable output; never the raw JSON of the line.
            io.push_line(&format!(
                "[bg-agents: an event line longer than {max_line} bytes was dropped: the longest line the server keeps]\n"
            ));
            io.overflow.get_or_insert_with(|| {
                format!(
                    "wrote an event line longer than {max_line} bytes, the longest the server keeps ([server] transcript_max_mb, at most {MAX_EVENT_LINE} bytes); stopped so nothing is lost silently"
                )
            });
        }
        for raw in lines {
            let line = String::from_utf8_lossy(raw);
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if let Some(t) = rec.io.transcript.as_mut() {
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
                        let before = rec.totals.usage;
                        apply_event(rec, event);
                        session_spent |= self.add_to_session(id, &before, &rec.totals.usage);
                        continue;
                    }
                    if let Event::Retry {
                        wait_ms,
                        throttled: true,
                        ..
                    } = &event
                    {
                        self.admission().hold(
                            &rec.route.provider,
                            Duration::from_millis(*wait_ms),
                            Instant::now(),
                        );
                    }
                    apply_event(rec, event);
                }
                Err(_) => {
                    // Not our protocol (a crash message, a foreign program): keep it readable.
                    if let Some(t) = rec.io.transcript.as_mut() {
                        t.append_raw(&line);
                    }
                    rec.io.push_text(&format!("{line}\n"));
                }
            }
        }
        rec.io.bump();
        // Over the cap, not a write error: a full disk loses the transcript's tail
        // (counted, and told in status), never the agent.
        if rec.io.transcript.as_ref().is_some_and(Transcript::over_cap) {
            let cap = self.config.server.transcript_max_mb;
            rec.io.overflow.get_or_insert_with(|| {
                format!(
                    "wrote more output than the transcript cap ([server] transcript_max_mb = {cap}); stopped so nothing is lost silently"
                )
            });
        }
        let over_cap = rec.io.overflow.is_some();
        if session_spent {
            self.cancel_queued_for_session(&mut reg);
        }
        over_cap
    }
}

fn apply_event(rec: &mut AgentRecord, event: Event) {
    track_open_turn(rec, &event);
    match &event {
        Event::Started { sandbox, .. } => rec.io.sandbox = sandbox.clone(),
        Event::Usage(run) => {
            // The worker counts its own round; earlier rounds add up here.
            rec.totals.usage = rec.rounds.prior.usage.plus(run);
        }
        Event::Result {
            text,
            turns,
            stop_reason,
            result_json,
        } => {
            rec.answer.result = Some(text.clone());
            rec.answer.result_json = result_json.clone();
            rec.answer.stop_reason = Some(stop_reason.clone());
            rec.totals.turns = rec.rounds.prior.turns + *turns;
        }
        Event::Error { kind, message } => {
            rec.answer.error = Some(message.clone());
            rec.answer.error_kind = Some(*kind);
        }
        Event::Message {
            message,
            follow_ups,
        } => {
            // A follow-up sent while it ran is delivered once it joins the conversation.
            for text in rec.rounds.take_in(follow_ups) {
                super::send::mark_follow_up(rec, &text);
            }
            rec.rounds.conversation.push(message.clone());
        }
        _ => {}
    }
    match &event {
        // Most events: borrowed, not copied into a rendering first.
        Event::Text { text } => rec.io.push_text(text),
        _ => {
            if let Some(text) = event.render_human(!rec.io.mid_line) {
                rec.io.push_text(&text);
            }
        }
    }
}

/// Follows the request in flight: opened by the user message the worker sends (the
/// task, tool results, a follow-up), grown by the text streamed back, closed by its usage
/// or the worker's final event.
fn track_open_turn(rec: &mut AgentRecord, event: &Event) {
    match event {
        Event::Message { message, .. } if message.role == Role::User => {
            let conversation =
                serde_json::to_vec(rec.rounds.conversation.messages()).map_or(0, |v| v.len());
            let message = serde_json::to_vec(message).map_or(0, |v| v.len());
            let input_bytes = rec.rounds.spec.system_prompt.len() + conversation + message;
            if let Some(open) = rec.state.open_turn_mut() {
                *open = Some(OpenTurn {
                    input_bytes,
                    output_bytes: 0,
                });
            }
        }
        Event::Text { text } => {
            if let Some(Some(turn)) = rec.state.open_turn_mut() {
                turn.output_bytes += text.len();
            }
        }
        // An interrupted worker's request was cut, not answered: it stays open.
        Event::Error {
            kind: ErrorKind::Interrupted,
            ..
        } => {}
        Event::Usage { .. } | Event::Result { .. } | Event::Error { .. } => {
            if let Some(open) = rec.state.open_turn_mut() {
                *open = None;
            }
        }
        _ => {}
    }
}

/// What a request cut off before its usage came cost, estimated (4 bytes a token) and
/// added to `rec`'s usage, marked estimated; `None` when no request was in flight.
pub(super) fn count_cut_turn(rec: &mut AgentRecord) -> Option<UsageReport> {
    let turn = rec.state.open_turn_mut()?.take()?;
    let usage = &mut rec.totals.usage;
    let before = *usage;
    let input = estimate_tokens(turn.input_bytes);
    let output = estimate_tokens(turn.output_bytes);
    usage.input_tokens += input;
    usage.output_tokens += output;
    usage.cost_usd = match (rec.rounds.spec.price, before.cost_usd) {
        (Some(price), spent) => Some(spent.unwrap_or(0.0) + price.cost(input, output)),
        (None, spent) => spent,
    };
    usage.estimated = true;
    Some(before)
}
