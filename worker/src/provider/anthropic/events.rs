//! The events of an Anthropic Messages stream, typed. An event's data is read in one
//! pass into `Fields` (serde's tagged enums would first buffer every event whole), then
//! sorted by its `type` into a `StreamEvent`. Text and JSON deltas borrow from the
//! event's data unless they hold escapes, so a delta costs no allocation of its own.
//!
//! Not here: what the events add up to (`Accumulator`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::super::{ProviderError, optional_str};

#[derive(Debug, PartialEq)]
pub(super) enum StreamEvent<'a> {
    MessageStart {
        usage: Option<Usage>,
    },
    /// The block stays a `Value`: any type but text and tool_use is passed back as sent.
    ContentBlockStart {
        index: usize,
        block: Value,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        stop_reason: Option<Cow<'a, str>>,
        usage: Option<Usage>,
    },
    MessageStop,
    Error(StreamError<'a>),
    /// `ping`, and event types added after this client (or data with no type): ignored,
    /// as the API asks.
    Other,
}

#[derive(Debug, PartialEq)]
pub(super) enum BlockDelta<'a> {
    Text(Cow<'a, str>),
    InputJson(Cow<'a, str>),
    Thinking(Cow<'a, str>),
    Signature(Cow<'a, str>),
    /// Delta types added after this client: ignored, as the API asks.
    Other,
}

/// Token counts as the API sends them; a count it leaves out is None.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Usage {
    pub(super) input_tokens: Option<u64>,
    pub(super) cache_creation_input_tokens: Option<u64>,
    pub(super) cache_read_input_tokens: Option<u64>,
    pub(super) output_tokens: Option<u64>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct StreamError<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "optional_str")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    pub(super) message: Option<Cow<'a, str>>,
}

impl StreamEvent<'_> {
    /// The event an SSE event carries; None for a `ping` whose data is not JSON.
    pub(super) fn parse(
        ev: &eventsource_stream::Event,
    ) -> Result<Option<StreamEvent<'_>>, ProviderError> {
        match serde_json::from_str::<Fields>(&ev.data) {
            Ok(fields) => Ok(Some(fields.into())),
            Err(_) if ev.event == "ping" => Ok(None),
            Err(e) => Err(ProviderError::Retryable {
                reason: format!("unparsable `{}` event: {e}", ev.event),
                retry_after: None,
            }),
        }
    }
}

/// Every event type's fields; which are there depends on `kind`.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "optional_str")]
    kind: Option<Cow<'a, str>>,
    index: Option<usize>,
    message: Option<MessageHead>,
    #[serde(default)]
    content_block: Value,
    #[serde(borrow)]
    delta: Option<DeltaFields<'a>>,
    usage: Option<Usage>,
    #[serde(borrow)]
    error: Option<StreamError<'a>>,
}

#[derive(Deserialize)]
struct MessageHead {
    usage: Option<Usage>,
}

/// A block delta's fields (by `kind`), or a message delta's (`stop_reason`).
#[derive(Default, Deserialize)]
struct DeltaFields<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "optional_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    signature: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_str")]
    stop_reason: Option<Cow<'a, str>>,
}

impl<'a> From<Fields<'a>> for StreamEvent<'a> {
    fn from(f: Fields<'a>) -> Self {
        let index = f.index.unwrap_or(0);
        let delta = f.delta.unwrap_or_default();
        match f.kind.as_deref() {
            Some("message_start") => StreamEvent::MessageStart {
                usage: f.message.and_then(|m| m.usage),
            },
            Some("content_block_start") => StreamEvent::ContentBlockStart {
                index,
                block: f.content_block,
            },
            Some("content_block_delta") => StreamEvent::ContentBlockDelta {
                index,
                delta: delta.into(),
            },
            Some("content_block_stop") => StreamEvent::ContentBlockStop { index },
            Some("message_delta") => StreamEvent::MessageDelta {
                stop_reason: delta.stop_reason,
                usage: f.usage,
            },
            Some("message_stop") => StreamEvent::MessageStop,
            Some("error") => StreamEvent::Error(f.error.unwrap_or_default()),
            _ => StreamEvent::Other,
        }
    }
}

impl<'a> From<DeltaFields<'a>> for BlockDelta<'a> {
    fn from(d: DeltaFields<'a>) -> Self {
        let text = |t: Option<Cow<'a, str>>| t.unwrap_or_default();
        match d.kind.as_deref() {
            Some("text_delta") => BlockDelta::Text(text(d.text)),
            Some("input_json_delta") => BlockDelta::InputJson(text(d.partial_json)),
            Some("thinking_delta") => BlockDelta::Thinking(text(d.thinking)),
            Some("signature_delta") => BlockDelta::Signature(text(d.signature)),
            _ => BlockDelta::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &str) -> StreamEvent<'_> {
        serde_json::from_str::<Fields>(data).unwrap().into()
    }

    #[test]
    fn a_text_delta_without_escapes_borrows_from_the_event() {
        let data = r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"plain"}}"#;
        let event = parse(data);
        assert!(
            matches!(
                event,
                StreamEvent::ContentBlockDelta {
                    index: 2,
                    delta: BlockDelta::Text(Cow::Borrowed("plain"))
                }
            ),
            "{event:?}"
        );
    }

    #[test]
    fn each_type_takes_only_its_own_fields() {
        assert_eq!(
            parse(
                r#"{"type":"message_delta","index":4,"delta":{"stop_reason":"end_turn","text":"x"},"usage":{"output_tokens":9}}"#
            ),
            StreamEvent::MessageDelta {
                stop_reason: Some("end_turn".into()),
                usage: Some(Usage {
                    output_tokens: Some(9),
                    ..Default::default()
                })
            }
        );
        assert_eq!(
            parse(r#"{"type":"content_block_stop","index":null,"delta":null,"message":null}"#),
            StreamEvent::ContentBlockStop { index: 0 }
        );
        for other in [
            r#"{"index":1}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"x","delta":{}}"#,
        ] {
            assert_eq!(parse(other), StreamEvent::Other, "{other}");
        }
    }
}
