//! Only standard JSON Schema `format`s in the tools' schemas. schemars writes formats
//! such as `uint64`, `uint32`, `uint`, `int32` and `double` for Rust number types; they
//! are not JSON Schema formats and clients warn about each one (Claude Code logs
//! `unknown format "uint64" ignored in schema`). The number's `type` and `minimum: 0`
//! (for unsigned types) already say what the format tried to.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use serde_json::Value;

/// The formats JSON Schema (2020-12) defines.
pub const STANDARD_FORMATS: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Removes every non-standard `format` from `tool`'s input and output schemas.
pub fn standardize_tool(tool: &mut Tool) {
    let mut input = tool.input_schema.as_ref().clone();
    standardize(&mut input);
    tool.input_schema = Arc::new(input);
    if let Some(out) = &tool.output_schema {
        let mut out = out.as_ref().clone();
        standardize(&mut out);
        tool.output_schema = Some(Arc::new(out));
    }
}

/// Removes every non-standard `format` keyword in `schema`, at any depth. A property that
/// happens to be named `format` is a schema (an object), not a string, and is kept.
pub fn standardize(schema: &mut JsonObject) {
    let non_standard = matches!(
        schema.get("format"),
        Some(Value::String(f)) if !STANDARD_FORMATS.contains(&f.as_str())
    );
    if non_standard {
        schema.remove("format");
    }
    for v in schema.values_mut() {
        standardize_value(v);
    }
}

fn standardize_value(v: &mut Value) {
    match v {
        Value::Object(o) => standardize(o),
        Value::Array(items) => items.iter_mut().for_each(standardize_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_non_standard_formats() {
        let Value::Object(mut s) = serde_json::json!({
            "type": "object",
            "properties": {
                "n": {"type": "integer", "format": "uint64", "minimum": 0},
                "x": {"type": ["number", "null"], "format": "double"},
                "when": {"type": "string", "format": "date-time"},
                "format": {"type": "string"},
                "list": {"type": "array", "items": {"type": "integer", "format": "int32"}},
                "any": {"anyOf": [{"type": "integer", "format": "uint"}, {"type": "null"}]}
            },
            "$defs": {"L": {"type": "integer", "format": "uint32", "minimum": 0}}
        }) else {
            unreachable!()
        };
        standardize(&mut s);
        let out = Value::Object(s);
        assert_eq!(
            out["properties"]["n"],
            serde_json::json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(
            out["properties"]["x"],
            serde_json::json!({"type": ["number", "null"]})
        );
        assert_eq!(out["properties"]["when"]["format"], "date-time");
        assert_eq!(
            out["properties"]["format"],
            serde_json::json!({"type": "string"})
        );
        assert_eq!(
            out["properties"]["list"]["items"],
            serde_json::json!({"type": "integer"})
        );
        assert_eq!(
            out["properties"]["any"]["anyOf"][0],
            serde_json::json!({"type": "integer"})
        );
        assert_eq!(
            out["$defs"]["L"],
            serde_json::json!({"type": "integer", "minimum": 0})
        );
    }
}
