//! The structured answer of a run with an `output_schema`: how the schema is asked for
//! (the provider's own parameter, or a `final_answer` tool when the provider refuses that
//! parameter), and what becomes of each final answer: delivered as its JSON value, sent
//! back with its validation errors (at most `CORRECTIONS` times), or `schema_mismatch`.
//!
//! Not here: the schema's checks and the provider forms (`structured`), the turn loop.

use serde_json::Value;

use crate::protocol::Block;
use crate::structured::{
    CORRECTIONS, Checked, Delivery, FINAL_TOOL, OutputSchema, SchemaError, from_tool_input,
};
use crate::values::ProviderKind;

/// The schema of a run's answer and how it is asked for, across turns.
#[derive(Debug)]
pub(super) struct Wanted {
    schema: OutputSchema,
    /// The provider refused its structured-output parameter: the answer comes as the
    /// input of the final tool.
    via_tool: bool,
    /// Make the next request call the final tool (after an answer that missed it).
    force_tool: bool,
    corrections: u32,
}

/// What becomes of a final answer.
pub(super) enum Judged {
    /// Deliver it: the answer's text and its value.
    Answer { text: String, value: Value },
    /// Send it back: `note` for the readable output, `reply` for the conversation (the
    /// user message's blocks).
    AskAgain { note: String, reply: Vec<Block> },
    /// It never matched: the `schema_mismatch` error's message.
    Mismatch(String),
}

impl Wanted {
    pub(super) fn new(schema: &Value) -> Result<Wanted, SchemaError> {
        Ok(Wanted {
            schema: OutputSchema::new(schema)?,
            via_tool: false,
            force_tool: false,
            corrections: 0,
        })
    }

    pub(super) fn delivery(&self) -> Delivery<'_> {
        if self.via_tool {
            Delivery::FinalTool {
                schema: self.schema.schema(),
                forced: self.force_tool,
            }
        } else {
            Delivery::Native(self.schema.schema())
        }
    }

    /// When `error` is the provider refusing its structured-output parameter (HTTP 400 or
    /// 422 naming it), switches to the final tool and returns the note for the output.
    pub(super) fn fall_back(&mut self, kind: ProviderKind, error: &str) -> Option<String> {
        let parameter = match kind {
            ProviderKind::Anthropic => "output_config",
            ProviderKind::Openai => "response_format",
        };
        let refused = (error.starts_with("HTTP 400") || error.starts_with("HTTP 422"))
            && error.contains(parameter);
        if self.via_tool || !refused {
            return None;
        }
        self.via_tool = true;
        Some(format!(
            "[the provider refused `{parameter}` ({error}); the answer is asked for through a `{FINAL_TOOL}` tool instead]\n"
        ))
    }

    /// The final tool's call among `calls` (id, name, input), when the answer comes that way.
    pub(super) fn final_call<'c>(
        &self,
        calls: &'c [(String, String, Value)],
    ) -> Option<&'c (String, String, Value)> {
        if !self.via_tool {
            return None;
        }
        calls.iter().find(|(_, name, _)| name == FINAL_TOOL)
    }

    /// Judges an answer given as text (the response ended without a tool call).
    pub(super) fn judge_text(&mut self, text: &str, can_correct: bool) -> Judged {
        let checked = self.schema.check_text(text);
        let errors = match checked {
            Checked::Valid(value) => {
                return Judged::Answer {
                    text: text.to_string(),
                    value,
                };
            }
            Checked::Invalid(errors) => errors,
        };
        self.judge_errors(errors, can_correct, |message| {
            vec![Block::Text { text: message }]
        })
    }

    /// Judges an answer given through the final tool; every call of the response gets its
    /// tool result in a reply (the others are not run).
    pub(super) fn judge_call(
        &mut self,
        id: &str,
        input: &Value,
        calls: &[(String, String, Value)],
        can_correct: bool,
    ) -> Judged {
        let value = from_tool_input(self.schema.schema(), input);
        let errors = match self.schema.check_value(value) {
            Checked::Valid(value) => {
                return Judged::Answer {
                    text: value.to_string(),
                    value,
                };
            }
            Checked::Invalid(errors) => errors,
        };
        self.judge_errors(errors, can_correct, |message| {
            calls
                .iter()
                .map(|(call_id, name, _)| Block::ToolResult {
                    tool_use_id: call_id.clone(),
                    content: if call_id == id {
                        message.clone()
                    } else {
                        format!("not run: `{name}` came with the final answer")
                    },
                    is_error: true,
                })
                .collect()
        })
    }

    fn judge_errors(
        &mut self,
        errors: Vec<String>,
        can_correct: bool,
        reply: impl FnOnce(String) -> Vec<Block>,
    ) -> Judged {
        if self.corrections < CORRECTIONS && can_correct {
            self.corrections += 1;
            let mut message = self.schema.correction(&errors);
            if self.via_tool {
                message.push_str(&format!(
                    "\nGive it as the input of the `{FINAL_TOOL}` tool."
                ));
                self.force_tool = true;
            }
            return Judged::AskAgain {
                note: format!(
                    "\n[the answer does not match output_schema ({}); asked again, correction {} of {CORRECTIONS}]\n",
                    errors.join("; "),
                    self.corrections
                ),
                reply: reply(message),
            };
        }
        let why = if self.corrections < CORRECTIONS {
            " (no turn or budget left to ask again)"
        } else {
            ""
        };
        Judged::Mismatch(format!(
            "the answer does not match output_schema after {} correction{}{why}: {}; the last answer ends the agent's output (agent_output); loosen the schema or say more in the task about the answer's form",
            self.corrections,
            if self.corrections == 1 { "" } else { "s" },
            errors.join("; ")
        ))
    }
}
