//! Only standard JSON Schema `format`s in the tools' schemas. schemars writes formats
//! such as `uint64`, `uint32`, `uint`, `int32` and `double` for Rust number types; they
//! are not JSON Schema formats and clients warn about each one (Claude Code logs
//! `unknown format "uint64" ignored in schema`). The number's `type` and `minimum: 0`
//! (for unsigned types) already say what the format tried to.

use std::sync::Arc;

use bg_agent_worker::config::{Config, KILL_GRACE_MAX_MS};
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

/// Declares `notices` in `tool`'s output schema: `notify::attach` adds it to any reply
/// when agents of this session ended unreported.
pub fn declare_notices(tool: &mut Tool) {
    let Some(out) = &tool.output_schema else {
        return;
    };
    let mut out = out.as_ref().clone();
    if let Some(Value::Object(props)) = out.get_mut("properties") {
        props.insert(
            "notices".into(),
            serde_json::json!({
                "type": "array",
                "items": {"type": "string"},
                "description": "Agents of this session that ended and were not reported yet, one line each."
            }),
        );
    }
    tool.output_schema = Some(Arc::new(out));
}

/// Completes parameter descriptions with what this server's configuration sets, so they
/// never disagree with a user's limits.toml: each limit's default and ceiling
/// (`[defaults]`, `[max]`), the longest wait (`[server] max_wait_seconds`), the kill
/// grace (`[server] kill_grace_ms`) and the roles defined.
pub fn describe_from_config(tool: &mut Tool, config: &Config) {
    let mut input = tool.input_schema.as_ref().clone();
    let defaults = serde_json::to_value(config.defaults).unwrap_or_default();
    let max = serde_json::to_value(config.max).unwrap_or_default();
    if let Value::Object(defaults) = &defaults {
        for (key, d) in defaults {
            let m = &max[key.as_str()];
            append_description(
                &mut input,
                key,
                &format!("This server: default {d}, at most {m}."),
            );
        }
    }
    let server = &config.server;
    if let Some(Value::Object(props)) = input.get("properties")
        && props.contains_key("wait_seconds")
        && let Some(d) = &tool.description
    {
        let more = format!(" The server's max wait: {} s.", server.max_wait_seconds);
        tool.description = Some(format!("{d}{more}").into());
    }
    append_description(
        &mut input,
        "wait_seconds",
        &format!("This server: at most {} s.", server.max_wait_seconds),
    );
    append_description(
        &mut input,
        "grace_ms",
        &format!(
            "This server: default {}, at most {KILL_GRACE_MAX_MS}.",
            server.kill_grace_ms
        ),
    );
    if tool.name == "agent_spawn" {
        let roles: Vec<&str> = config.roles.keys().map(String::as_str).collect();
        append_description(
            &mut input,
            "role",
            &format!("Roles of this server: {}.", roles.join(", ")),
        );
    }
    tool.input_schema = Arc::new(input);
}

/// Appends `more` to the description of every property named `name`, at any depth.
fn append_description(schema: &mut JsonObject, name: &str, more: &str) {
    if let Some(Value::Object(props)) = schema.get_mut("properties")
        && let Some(Value::Object(prop)) = props.get_mut(name)
    {
        let text = match prop.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d} {more}"),
            None => more.to_string(),
        };
        prop.insert("description".into(), Value::String(text));
    }
    for (key, v) in schema.iter_mut() {
        if key == "properties" {
            if let Value::Object(props) = v {
                for p in props.values_mut() {
                    if let Value::Object(o) = p {
                        append_nested(o, name, more);
                    }
                }
            }
        } else if let Value::Object(o) = v {
            append_nested(o, name, more);
        }
    }
}

/// `append_description` below the top: in `$defs` and in nested object schemas.
fn append_nested(o: &mut JsonObject, name: &str, more: &str) {
    if o.contains_key("properties") {
        append_description(o, name, more);
    } else {
        for v in o.values_mut() {
            if let Value::Object(inner) = v {
                append_nested(inner, name, more);
            }
        }
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
