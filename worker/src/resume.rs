//! Reading a finished run's transcript for `--resume`: the conversation to continue, and
//! the model, role and workspace it ran with.
//!
//! A transcript is the server's (`TranscriptLine`s: the worker's events and the server's
//! notes) or what a manual `--json` run printed (events only). Only a run that ended with
//! an answer, and whose transcript is whole, continues.
//!
//! Not here: applying it to a spawn (the binary), the server's own follow-ups, which read
//! the conversation back in `agent_send`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::protocol::{Event, Message, TranscriptLine};

/// What `--resume` takes from a finished run's events.
#[derive(Debug, Clone, PartialEq)]
pub struct Earlier {
    /// `PROVIDER/MODEL`, so the same provider answers.
    pub model: String,
    pub role: String,
    /// The workspace the run worked in, when its `started` event says.
    pub cwd: Option<PathBuf>,
    /// The conversation, as its `message` events gave it.
    pub messages: Vec<Message>,
}

impl Earlier {
    /// Reads the transcript at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Earlier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the transcript {}", path.display()))?;
        Earlier::parse(&text, &path.display().to_string())
    }

    /// Reads a transcript's `text`; `shown` names it in errors. Err when a line is not
    /// JSON, the transcript was cut at its cap, or the run did not end with an answer.
    pub fn parse(text: &str, shown: &str) -> anyhow::Result<Earlier> {
        let mut seen = Seen::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed = TranscriptLine::parse(line)
                .with_context(|| format!("{shown} holds a line that is not JSON: {line:.80}"))?;
            match parsed {
                TranscriptLine::Event(event) => seen.take(event),
                TranscriptLine::Truncated { .. } => bail!(
                    "{shown} was cut at its size cap, so the conversation is incomplete; start a new run"
                ),
                // Not events: a crashed worker's output, a newer worker's kind.
                TranscriptLine::Raw { .. } | TranscriptLine::Unknown(_) => {}
            }
        }
        seen.finished(shown)
    }
}

/// What the events of a transcript said so far.
#[derive(Default)]
struct Seen {
    /// The first `started` event's model (with its provider), role and workspace.
    started: Option<(String, String, Option<PathBuf>)>,
    messages: Vec<Message>,
    /// How the last round ended: None while none has, Some(None) with an answer,
    /// Some(Some(error)) with an error.
    last_end: Option<Option<String>>,
}

impl Seen {
    fn take(&mut self, event: Event) {
        match event {
            Event::Started {
                model,
                provider,
                role,
                cwd,
                ..
            } => {
                self.started
                    .get_or_insert((format!("{provider}/{model}"), role, cwd));
            }
            Event::Message { message, .. } => self.messages.push(message),
            Event::Result { .. } => self.last_end = Some(None),
            Event::Error { message, .. } => self.last_end = Some(Some(message)),
            _ => {}
        }
    }

    /// The run to continue, or why it cannot be.
    fn finished(self, shown: &str) -> anyhow::Result<Earlier> {
        let Some((model, role, cwd)) = self.started else {
            bail!(
                "{shown} holds no `started` event: give the transcript of a run (the server's, or what `--json` printed)"
            );
        };
        match self.last_end {
            Some(None) => {}
            Some(Some(error)) => bail!(
                "the run in {shown} did not finish with an answer (it ended: {error}); only a finished run continues, start a new one"
            ),
            None => bail!(
                "the run in {shown} has not finished (no result event); wait for its answer, or start a new run"
            ),
        }
        if self.messages.is_empty() {
            bail!(
                "{shown} holds no `message` events (written by an older worker?); start a new run"
            );
        }
        Ok(Earlier {
            model,
            role,
            cwd,
            messages: self.messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Block, Role};

    const STARTED: &str = r#"{"type":"started","model":"claude-x","provider":"anthropic","role":"explorer","limits":{"cpu_seconds":60,"memory_mb":512,"open_files":256,"max_file_mb":16,"timeout_seconds":60,"max_output_bytes":65536,"max_turns":3,"max_tokens":100,"max_total_tokens":1000,"budget_usd":1.0},"cwd":"/work/repo"}"#;
    const TASK: &str = r#"{"type":"message","message":{"role":"user","content":[{"type":"text","text":"find it"}]}}"#;
    const ANSWER: &str = r#"{"type":"message","message":{"role":"assistant","content":[{"type":"text","text":"here"}]}}"#;
    const RESULT: &str = r#"{"type":"result","text":"here","stop_reason":"end_turn","turns":1}"#;

    fn transcript(lines: &[&str]) -> String {
        lines.join("\n") + "\n"
    }

    #[test]
    fn a_transcript_written_the_old_way_resumes() {
        // As the server wrote it before `TranscriptLine`: hand-written `raw` notes among
        // the events, a usage line, a blank line.
        let text = transcript(&[
            STARTED,
            r#"{"type":"raw","line":"a stray line"}"#,
            TASK,
            r#"{"type":"text","text":"here"}"#,
            ANSWER,
            r#"{"type":"usage","input_tokens":3,"output_tokens":4,"cost_usd":null}"#,
            "",
            RESULT,
        ]);
        let earlier = Earlier::parse(&text, "t.jsonl").unwrap();
        assert_eq!(earlier.model, "anthropic/claude-x");
        assert_eq!(earlier.role, "explorer");
        assert_eq!(earlier.cwd, Some(PathBuf::from("/work/repo")));
        assert_eq!(earlier.messages.len(), 2);
        assert_eq!(earlier.messages[1].role, Role::Assistant);
        assert_eq!(
            earlier.messages[1].content,
            vec![Block::Text {
                text: "here".into()
            }]
        );
    }

    #[test]
    fn a_capped_transcript_does_not_resume() {
        let text = transcript(&[
            STARTED,
            TASK,
            r#"{"type":"transcript_truncated","cap_bytes":20}"#,
        ]);
        let e = Earlier::parse(&text, "t.jsonl").unwrap_err().to_string();
        assert!(e.contains("cut at its size cap"), "{e}");
    }

    #[test]
    fn only_a_run_that_ended_with_an_answer_resumes() {
        let error = r#"{"type":"error","kind":"provider","message":"overloaded"}"#;
        let cases = [
            (transcript(&[TASK, ANSWER, RESULT]), "no `started` event"),
            (transcript(&[STARTED, TASK, ANSWER]), "has not finished"),
            (
                transcript(&[STARTED, TASK, ANSWER, RESULT, TASK, error]),
                "it ended: overloaded",
            ),
            (transcript(&[STARTED, RESULT]), "no `message` events"),
            (transcript(&[STARTED, "not json"]), "not JSON: not json"),
        ];
        for (text, want) in cases {
            let e = Earlier::parse(&text, "t.jsonl").unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_later_round_keeps_the_first_start_and_every_message() {
        let text = transcript(&[STARTED, TASK, ANSWER, RESULT, STARTED, TASK, ANSWER, RESULT]);
        let earlier = Earlier::parse(&text, "t.jsonl").unwrap();
        assert_eq!(earlier.messages.len(), 4);
    }
}
