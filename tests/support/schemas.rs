//! JSON Schemas the structured-answer tests of both packages ask agents to answer in.

use serde_json::{Value, json};

/// A reviewer's findings; `line` has a minimum the Anthropic grammar cannot enforce.
pub fn findings_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "findings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string"},
                        "line": {"type": "integer", "minimum": 1},
                        "severity": {"enum": ["high", "medium", "low"]}
                    },
                    "required": ["file", "line", "severity"]
                }
            }
        },
        "required": ["findings"]
    })
}
