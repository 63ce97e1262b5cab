//! The printers of a run's events: JSONL on stdout (the server's way, and `--json`), or
//! readable text for a terminal.
//!
//! Not here: what the events are (`protocol`), the readable form of one event
//! (`Event::render_human`, shared with the server's output buffer).

use std::cell::{Cell, RefCell};
use std::io::Write;

use bg_agent_worker::agent::Emit;
use bg_agent_worker::protocol::{Event, STOP_MAX_TOKENS, UsageReport, exit};
use serde::Serialize;

/// JSONL on stdout, flushed per event so the server sees each at once. Each line is
/// serialized into one buffer kept for the next and written whole, with one write.
#[derive(Default)]
pub struct JsonOut {
    line: RefCell<Vec<u8>>,
}

/// `Event::Text` with its text borrowed: the same line, without a copy of the delta.
#[derive(Serialize)]
#[serde(tag = "type", rename = "text")]
struct TextLine<'a> {
    text: &'a str,
}

impl JsonOut {
    /// Writes `value` as one line; `or_else` is the line (`Event::to_json_line`'s) for
    /// a value that cannot be serialized.
    fn write_line(&self, value: &impl Serialize, or_else: impl FnOnce() -> String) {
        let mut line = self.line.borrow_mut();
        line.clear();
        if serde_json::to_writer(&mut *line, value).is_err() {
            line.clear();
            line.extend_from_slice(or_else().as_bytes());
        }
        line.push(b'\n');
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(&line)
            .and_then(|_| stdout.flush())
            .is_err()
        {
            // Nobody is reading any more: the server is gone.
            crate::end_process(exit::INTERRUPTED_TERM);
        }
    }
}

impl Emit for JsonOut {
    fn emit(&self, event: &Event) {
        self.write_line(event, || event.to_json_line());
    }

    fn emit_text(&self, text: &str) {
        let event = || {
            Event::Text {
                text: text.to_string(),
            }
            .to_json_line()
        };
        self.write_line(&TextLine { text }, event);
    }
}

/// Readable output for a terminal: text as it streams, a line per tool call, a last
/// line with turns, tokens and cost.
/// With `structured` (an output schema), stdout gets the answer's JSON value alone and
/// everything else goes to stderr, so `> answer.json` holds exactly the value.
#[derive(Default)]
pub struct HumanOut {
    mid_line: Cell<bool>,
    /// The last `usage` event's figures.
    usage: Cell<Option<UsageReport>>,
    structured: bool,
}

impl HumanOut {
    /// A printer for a run whose answer is plain text, or (`structured`) one JSON value.
    pub fn new(structured: bool) -> HumanOut {
        HumanOut {
            structured,
            ..HumanOut::default()
        }
    }

    /// The closing lines of a run of `turns` turns: a note when the token limit `cut`
    /// the answer, then the turns, tokens and cost. `text` is what is printed before
    /// them, `at_start` whether that begins a line.
    fn summary(&self, text: &str, at_start: bool, turns: u32, cut: bool) -> String {
        let u = self.usage.get().unwrap_or_default();
        let cost = u
            .cost_usd
            .map_or("cost unknown".into(), |c| format!("${c:.4}"));
        let mut input = format!("{} in", u.input_tokens);
        if u.cache_write_tokens + u.cache_read_tokens > 0 {
            input.push_str(&format!(
                " + {} cache write + {} cache read",
                u.cache_write_tokens, u.cache_read_tokens
            ));
        }
        let mut nl = if text.is_empty() && at_start || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let mut lines = String::new();
        if cut {
            lines.push_str(&format!(
                "{nl}[the answer was cut at the token limit (stop reason max_tokens); raise max_tokens or budgets, or ask for less]\n"
            ));
            nl = "";
        }
        lines.push_str(&format!(
            "{nl}— {turns} turn{} · {input} / {} out tokens{} · {cost}\n",
            if turns == 1 { "" } else { "s" },
            u.output_tokens,
            if u.estimated { " (estimated)" } else { "" }
        ));
        lines
    }
}

impl Emit for HumanOut {
    fn emit(&self, event: &Event) {
        let mut stdout = std::io::stdout().lock();
        let at_start = !self.mid_line.get();
        if let Event::Usage(u) = event {
            self.usage.set(Some(*u));
        }
        if self.structured {
            if let Event::Result {
                result_json: Some(value),
                ..
            } = event
            {
                let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
                let _ = writeln!(stdout, "{pretty}").and_then(|_| stdout.flush());
            }
            if matches!(event, Event::Text { .. }) {
                return;
            }
        }
        let mut text = event.render_human(at_start).unwrap_or_default();
        if let Event::Result {
            turns, stop_reason, ..
        } = event
        {
            let summary = self.summary(&text, at_start, *turns, stop_reason == STOP_MAX_TOKENS);
            text.push_str(&summary);
        }
        if text.is_empty() {
            return;
        }
        self.mid_line.set(!text.ends_with('\n'));
        // An error goes to stderr, where someone running `bg-agent-worker TASK > out.md`
        // still sees it.
        let _ = if matches!(event, Event::Error { .. }) || self.structured {
            std::io::stderr().lock().write_all(text.as_bytes())
        } else {
            stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_text_line_is_the_text_event_line() {
        for text in ["", "delta 01 ", "a\"b\\c\nd\te\u{1}é 😀"] {
            let line = serde_json::to_string(&TextLine { text }).unwrap();
            let event = Event::Text { text: text.into() };
            assert_eq!(line, event.to_json_line());
        }
    }
}
