//! The wire protocol between the bg-agents server and a worker: the `TaskSpec` the server
//! writes to the worker's stdin (then `Input` lines: follow-ups), the `Event`s the worker writes to stdout (one JSON object
//! per line), the exit codes, and the lines of a transcript (`TranscriptLine`: the events
//! and the server's notes). Both sides use these types; nobody parses by hand.
//!
//! Not here: how a spec is resolved from configuration (`resolve`), and the value types a
//! spec shares with the configuration (`values`: limits, prices, tool names...).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::values::{Limits, Price, ProviderKind, SandboxMode, TokenCounts, ToolName};

/// Exit codes of the worker process (listed for users in README.md, "Run an agent by hand").
pub mod exit {
    pub const DONE: i32 = 0;
    pub const PROVIDER: i32 = 1;
    pub const BAD_SPEC: i32 = 2;
    pub const BUDGET: i32 = 3;
    /// The answer never matched the spawn's `output_schema`.
    pub const SCHEMA_MISMATCH: i32 = 4;
    pub const INTERRUPTED_INT: i32 = 130;
    pub const INTERRUPTED_TERM: i32 = 143;
}

/// Everything a worker needs to run one agent; fully resolved, so a worker started from a
/// spec never reads configuration itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub task: String,
    #[serde(default)]
    pub agent_id: Option<String>,
    pub role: String,
    pub system_prompt: String,
    pub tools: Vec<ToolName>,
    pub provider: ProviderSpec,
    pub model: String,
    pub cwd: PathBuf,
    pub limits: Limits,
    /// USD per million tokens; `None` means the cost is unknown and budget_usd cannot apply.
    #[serde(default)]
    pub price: Option<Price>,
    /// How the worker confines itself (`[server] sandbox`).
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// The conversation so far, as its `message` events gave it, when this run continues
    /// one (a follow-up): `task` is then the new user message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    /// A JSON Schema the final answer must match (checked by `structured::OutputSchema`
    /// when the spec is resolved): the answer is then one JSON value, in `result_json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One message of a conversation, in a provider-neutral shape (Anthropic-like content
/// blocks) that the provider clients translate per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

/// A content block. On the wire it is the Anthropic content block itself (`text`,
/// `tool_use`, `tool_result`; any other type is kept whole as `Opaque`).
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
    /// A block we do not interpret (thinking, redacted_thinking, ...), passed back to the
    /// provider unchanged on the next turn.
    Opaque(serde_json::Value),
}

impl Block {
    /// The block as an Anthropic content block.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Block::Text { text } => json!({"type": "text", "text": text}),
            Block::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                json!({"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error})
            }
            Block::Opaque(v) => v.clone(),
        }
    }

    /// The block of an Anthropic content block; a known type with missing fields is an
    /// error, an unknown type is kept whole.
    pub fn from_json(v: serde_json::Value) -> Result<Block, String> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Known {
            Text {
                text: String,
            },
            ToolUse {
                id: String,
                name: String,
                input: serde_json::Value,
            },
            ToolResult {
                tool_use_id: String,
                content: String,
                #[serde(default)]
                is_error: bool,
            },
        }
        let known = matches!(
            v.get("type").and_then(|t| t.as_str()),
            Some("text" | "tool_use" | "tool_result")
        );
        if !known {
            return Ok(Block::Opaque(v));
        }
        Ok(
            match serde_json::from_value::<Known>(v).map_err(|e| e.to_string())? {
                Known::Text { text } => Block::Text { text },
                Known::ToolUse { id, name, input } => Block::ToolUse { id, name, input },
                Known::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                } => Block::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                },
            },
        )
    }
}

impl Serialize for Block {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Block, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Block::from_json(v).map_err(serde::de::Error::custom)
    }
}

/// A line the server writes to a running worker's stdin after the spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// A user message for the conversation, delivered at the next turn boundary (after
    /// the current response and its tool results). `id`, when given, is echoed in the
    /// `message` event that takes it in (`Event::Message::follow_ups`), so the server
    /// knows which of its follow-ups were taken.
    FollowUp {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// The provider a spec talks to, with the names of the environment variables that hold
/// its secrets (never the secrets themselves).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub base_url_env: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    pub max_retries: u32,
    pub request_timeout_seconds: u64,
    #[serde(default = "crate::values::default_true")]
    pub prompt_caching: bool,
    #[serde(default)]
    pub prompt_cache_key: bool,
}

/// Why a run ended in an `error` event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The provider refused or failed, retries included (exit 1).
    Provider,
    /// The spec or the configuration is unusable, e.g. a missing API key (exit 2).
    Config,
    /// max_turns, max_total_tokens or budget_usd ran out (exit 3).
    BudgetExceeded,
    /// SIGTERM/SIGINT, or the server went away (exit 130/143).
    Interrupted,
    /// The answer did not match `output_schema`, corrections included (exit 4).
    SchemaMismatch,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Provider => exit::PROVIDER,
            ErrorKind::Config => exit::BAD_SPEC,
            ErrorKind::BudgetExceeded => exit::BUDGET,
            ErrorKind::Interrupted => exit::INTERRUPTED_TERM,
            ErrorKind::SchemaMismatch => exit::SCHEMA_MISMATCH,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Token usage and cost of a run (or of an agent's rounds together): the worker's `usage`
/// event, and what the server keeps and shows of it. `input_tokens` is uncached input;
/// input written to and read from the prompt cache is counted apart (each billed at its
/// own rate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input written to the prompt cache (billed above the input rate).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Input read from the prompt cache (billed far below the input rate).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// USD; `None` when the model has no price configured: unknown, not free.
    pub cost_usd: Option<f64>,
    /// The provider reported no usage for some turn, so the tokens (and the cost) are
    /// estimated from the bytes sent and received, 4 bytes a token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl UsageReport {
    /// The report of `tokens` billed at `cost_usd`.
    pub fn of(tokens: TokenCounts, cost_usd: Option<f64>, estimated: bool) -> UsageReport {
        UsageReport {
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cache_write_tokens: tokens.cache_write,
            cache_read_tokens: tokens.cache_read,
            cost_usd,
            estimated,
        }
    }

    /// The tokens alone, as billed.
    pub fn tokens(&self) -> TokenCounts {
        TokenCounts {
            input: self.input_tokens,
            cache_write: self.cache_write_tokens,
            cache_read: self.cache_read_tokens,
            output: self.output_tokens,
        }
    }

    /// Every token, cached or not: what `max_total_tokens` counts.
    pub fn total(&self) -> u64 {
        self.tokens().total()
    }

    /// `self` (earlier rounds) plus `run` (a later round's totals). The cost is known when
    /// the later round's is (an unpriced model stays unknown).
    pub fn plus(&self, run: &UsageReport) -> UsageReport {
        let mut tokens = self.tokens();
        tokens.add(&run.tokens());
        UsageReport::of(
            tokens,
            run.cost_usd.map(|c| c + self.cost_usd.unwrap_or(0.0)),
            self.estimated || run.estimated,
        )
    }
}

/// One line of worker stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started {
        model: String,
        provider: String,
        role: String,
        limits: Limits,
        /// Which sandbox is in force, e.g. `landlock (ABI 7): ...` or `none: ...`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<String>,
        /// The workspace directory (canonical): where a resumed run (`--resume`) works.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<PathBuf>,
    },
    /// A delta of assistant text, as it streams.
    Text {
        text: String,
    },
    ToolCall {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        id: String,
        name: String,
        bytes: u64,
        is_error: bool,
    },
    /// Totals so far for the whole run.
    Usage(UsageReport),
    /// A turn is being retried; text streamed since the turn began is void.
    Retry {
        attempt: u32,
        wait_ms: u64,
        reason: String,
        /// Whether text of the failed attempt had already been streamed.
        #[serde(default)]
        discarded_output: bool,
        /// The provider throttled (HTTP 429 or 529): the server holds new starts on this
        /// provider for `wait_ms`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        throttled: bool,
    },
    /// `stop_reason` `max_tokens` means the answer was cut at the token limit.
    Result {
        text: String,
        stop_reason: String,
        turns: u32,
        /// The answer as parsed JSON, valid against the spec's `output_schema` (present
        /// exactly when the spec has one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result_json: Option<serde_json::Value>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// A message that joined the conversation (the user's task, each assistant response,
    /// each turn's tool results), in order: what a follow-up needs to continue it.
    Message {
        message: Message,
        /// The ids of the follow-ups (`Input::FollowUp`) this message took in, in the
        /// order they came; empty for any other message.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        follow_ups: Vec<u64>,
    },
}

/// The stop reason of an answer cut at the token limit (OpenAI's `length` is mapped to it).
pub const STOP_MAX_TOKENS: &str = "max_tokens";

impl Event {
    /// Whether this event ends a run (exactly one does).
    pub fn is_final(&self) -> bool {
        matches!(self, Event::Result { .. } | Event::Error { .. })
    }

    /// One JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        // Serializing these plain enums cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","kind":"provider","message":"unserializable event: {e}"}}"#)
        })
    }

    /// The human-readable rendering shared by manual runs and the server's output buffer.
    /// `Text` is passed through as it streams; everything else is one line of its own.
    pub fn render_human(&self, at_line_start: bool) -> Option<String> {
        let nl = if at_line_start { "" } else { "\n" };
        match self {
            Event::Started { .. }
            | Event::Usage(_)
            | Event::Result { .. }
            | Event::Message { .. } => None,
            Event::Text { text } => Some(text.clone()),
            Event::ToolCall { name, input, .. } => {
                Some(format!("{nl}→ {name} {}\n", summarize_input(input)))
            }
            Event::ToolResult {
                name,
                bytes,
                is_error,
                ..
            } => Some(if *is_error {
                format!("{nl}← {name}: error ({bytes} bytes)\n")
            } else {
                format!("{nl}← {name}: {bytes} bytes\n")
            }),
            Event::Retry {
                attempt,
                wait_ms,
                reason,
                discarded_output,
                ..
            } => {
                let void = if *discarded_output {
                    " (text above from the failed attempt is void)"
                } else {
                    ""
                };
                Some(format!(
                    "{nl}[retry {attempt} in {wait_ms} ms: {reason}{void}]\n"
                ))
            }
            Event::Error { message, .. } => Some(format!("{nl}error: {message}\n")),
        }
    }
}

/// A one-line summary of a tool input, short enough for a terminal line.
fn summarize_input(input: &serde_json::Value) -> String {
    let mut s = match input {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s:?}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    if s.len() > 160 {
        let mut cut = 157;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s.replace('\n', " ")
}

/// One line of a transcript file: what the server writes for an agent, and what
/// `--resume` reads back. The worker's events are written
/// as they came; the server adds its own notes beside them, told apart by their `type`.
/// A manual run's `--json` output is a transcript of events only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TranscriptLine {
    /// A worker stdout line that was not an event (a crash message, a foreign
    /// program's output), kept whole.
    Raw { line: String },
    /// The transcript reached its byte cap here: the lines after it were not kept, so
    /// the conversation in it is incomplete.
    #[serde(rename = "transcript_truncated")]
    Truncated { cap_bytes: u64 },
    /// One event of the worker, exactly its stdout line.
    #[serde(untagged)]
    Event(Event),
    /// A JSON line of no kind above (an event of a newer worker): kept, not interpreted.
    #[serde(untagged)]
    Unknown(serde_json::Value),
}

impl TranscriptLine {
    /// One JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        match self {
            TranscriptLine::Event(event) => event.to_json_line(),
            // Strings, numbers and a JSON value: serializing them cannot fail.
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }

    /// The line read back; Err when it is not JSON at all.
    pub fn parse(line: &str) -> Result<TranscriptLine, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The worker's event on `line`, if it holds one (not a note of the server's, not a
    /// line of another kind or no JSON at all).
    pub fn event_of(line: &str) -> Option<Event> {
        match TranscriptLine::parse(line) {
            Ok(TranscriptLine::Event(event)) => Some(event),
            _ => None,
        }
    }
}

#[cfg(test)]
mod transcript_line_tests {
    use super::*;

    /// Lines as the server wrote them before `TranscriptLine` existed (hand-written JSON
    /// beside the worker's events), in the order a capped transcript has them.
    const OLD_TRANSCRIPT: &str = r#"{"type":"started","model":"m","provider":"p","role":"general","limits":{"cpu_seconds":60,"memory_mb":512,"open_files":256,"max_file_mb":16,"timeout_seconds":60,"max_output_bytes":65536,"max_turns":3,"max_tokens":100,"max_total_tokens":1000,"budget_usd":1.0},"cwd":"/tmp"}
{"type":"raw","line":"thread 'main' panicked"}
{"type":"text","text":"hi"}
{"type":"something_newer","x":1}
{"type":"transcript_truncated","cap_bytes":20}"#;

    #[test]
    fn lines_the_server_wrote_before_read_as_their_kinds() {
        let lines: Vec<TranscriptLine> = OLD_TRANSCRIPT
            .lines()
            .map(|l| TranscriptLine::parse(l).unwrap())
            .collect();
        assert!(
            matches!(&lines[0], TranscriptLine::Event(Event::Started { role, .. }) if role == "general"),
            "{:?}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            TranscriptLine::Raw {
                line: "thread 'main' panicked".into()
            }
        );
        assert_eq!(
            lines[2],
            TranscriptLine::Event(Event::Text { text: "hi".into() })
        );
        assert!(
            matches!(&lines[3], TranscriptLine::Unknown(v) if v["type"] == "something_newer"),
            "{:?}",
            lines[3]
        );
        assert_eq!(lines[4], TranscriptLine::Truncated { cap_bytes: 20 });
        assert!(TranscriptLine::parse("not json").is_err());
    }

    #[test]
    fn lines_are_written_as_before() {
        assert_eq!(
            TranscriptLine::Raw { line: "x".into() }.to_json_line(),
            r#"{"type":"raw","line":"x"}"#
        );
        assert_eq!(
            TranscriptLine::Truncated { cap_bytes: 20 }.to_json_line(),
            r#"{"type":"transcript_truncated","cap_bytes":20}"#
        );
        let event = Event::Text { text: "hi".into() };
        assert_eq!(
            TranscriptLine::Event(event.clone()).to_json_line(),
            event.to_json_line()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_up_id_is_echoed_by_its_message_and_older_lines_still_parse() {
        let old: Input = serde_json::from_str(r#"{"type":"follow_up","message":"hi"}"#).unwrap();
        assert_eq!(
            old,
            Input::FollowUp {
                message: "hi".into(),
                id: None
            }
        );
        let new = Input::FollowUp {
            message: "hi".into(),
            id: Some(7),
        };
        let line = serde_json::to_string(&new).unwrap();
        assert_eq!(line, r#"{"type":"follow_up","message":"hi","id":7}"#);
        assert_eq!(serde_json::from_str::<Input>(&line).unwrap(), new);

        let message = Message {
            role: Role::User,
            content: vec![Block::Text { text: "hi".into() }],
        };
        let plain = Event::Message {
            message: message.clone(),
            follow_ups: Vec::new(),
        };
        let line = plain.to_json_line();
        assert!(!line.contains("follow_ups"), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), plain);
        let taking = Event::Message {
            message,
            follow_ups: vec![7, 8],
        };
        let line = taking.to_json_line();
        assert!(line.ends_with(r#","follow_ups":[7,8]}"#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), taking);
    }

    #[test]
    fn events_round_trip_with_type_tags() {
        let e = Event::Usage(UsageReport {
            input_tokens: 3,
            output_tokens: 4,
            ..Default::default()
        });
        let line = e.to_json_line();
        assert_eq!(
            line,
            r#"{"type":"usage","input_tokens":3,"output_tokens":4,"cost_usd":null}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        let err: Event =
            serde_json::from_str(r#"{"type":"error","kind":"budget_exceeded","message":"x"}"#)
                .unwrap();
        assert!(err.is_final());
    }

    #[test]
    fn usage_keeps_its_wire_json_and_sums_once() {
        let full = r#"{"type":"usage","input_tokens":3,"output_tokens":4,"cache_write_tokens":5,"cache_read_tokens":6,"cost_usd":0.5,"estimated":true}"#;
        let e: Event = serde_json::from_str(full).unwrap();
        assert_eq!(e.to_json_line(), full);
        let Event::Usage(u) = e else {
            panic!("not a usage event: {e:?}")
        };
        assert_eq!(u.total(), 18);
        let later = UsageReport {
            input_tokens: 1,
            cost_usd: None,
            ..Default::default()
        };
        let sum = u.plus(&later);
        assert_eq!((sum.total(), sum.cost_usd, sum.estimated), (19, None, true));
        let priced = UsageReport {
            cost_usd: Some(0.25),
            ..later
        };
        assert_eq!(u.plus(&priced).cost_usd, Some(0.75));
    }

    #[test]
    fn tool_calls_render_as_one_line() {
        let e = Event::ToolCall {
            id: "t1".into(),
            name: "read_file".into(),
            input: serde_json::json!({"path": "src/main.rs"}),
        };
        assert_eq!(
            e.render_human(false).unwrap(),
            "\n→ read_file path=\"src/main.rs\"\n"
        );
    }
}
