//! What tools/list says, kept standard, portable and small.
//!
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

/// Keeps `tool` small and portable (tools/list is loaded into the client model's context,
/// and every client validates against it): an optional input property is just its type
/// (`"type": "integer"`, not `["integer", "null"]` nor `anyOf [.., {"type": "null"}]`;
/// absent already means unset), and output schemas, which the model never reads, lose
/// their descriptions and bounds, and null where a reply leaves the key out instead. No `$schema` key: 2020-12 is MCP's default.
pub fn compact_tool(tool: &mut Tool) {
    let mut input = tool.input_schema.as_ref().clone();
    input.remove("$schema");
    drop_nullables(&mut input);
    if let Some(Value::Object(defs)) = input.get_mut("$defs") {
        for def in defs.values_mut() {
            if let Value::Object(d) = def {
                // Each property that uses the definition describes it.
                d.remove("description");
            }
        }
    }
    tool.input_schema = Arc::new(input);
    if let Some(out) = &tool.output_schema {
        let mut out = out.as_ref().clone();
        out.remove("$schema");
        drop_keyword(&mut out, "description");
        drop_keyword(&mut out, "minimum");
        drop_optional_nulls(&mut out);
        // Limits in a reply are the input's keys with numbers: the input schema spells
        // them out once.
        if let Some(Value::Object(defs)) = out.get_mut("$defs")
            && let Some(limits) = defs.get_mut("LimitsOverride")
        {
            *limits =
                serde_json::json!({"type": "object", "additionalProperties": {"type": "number"}});
        }
        tool.output_schema = Some(Arc::new(out));
    }
}

/// `["X", "null"]` types, `null` in enums and `anyOf [S, {"type": "null"}]` become X, the
/// enum without null, and S, at any depth.
fn drop_nullables(schema: &mut JsonObject) {
    drop_null(schema);
    for_each_subschema(schema, drop_nullables);
}

/// `drop_null` for every property a reply leaves out when it has no value: those not
/// `required` (schemars makes an `Option` that is always written, as null or not, a
/// required property, and one skipped when `None` an optional one).
fn drop_optional_nulls(schema: &mut JsonObject) {
    let required: Vec<Value> = match schema.get("required") {
        Some(Value::Array(r)) => r.clone(),
        _ => Vec::new(),
    };
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            if let Value::Object(p) = prop
                && !required.iter().any(|r| r == name.as_str())
            {
                drop_null(p);
            }
        }
    }
    for_each_subschema(schema, drop_optional_nulls);
}

/// The null alternative of this one schema (not below it) removed.
fn drop_null(schema: &mut JsonObject) {
    if let Some(Value::Array(types)) = schema.get("type") {
        let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if kept.len() == 1 {
            schema.insert("type".into(), kept[0].clone());
        } else if kept.len() < types.len() {
            schema.insert("type".into(), Value::Array(kept));
        }
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    let single = match schema.get("anyOf") {
        Some(Value::Array(options)) => {
            let kept: Vec<&Value> = options.iter().filter(|o| o["type"] != "null").collect();
            match kept.as_slice() {
                [one] if kept.len() < options.len() => Some((*one).clone()),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(Value::Object(inner)) = single {
        schema.remove("anyOf");
        for (k, v) in inner {
            schema.entry(k).or_insert(v);
        }
    }
}

/// Calls `f` on every object directly inside `schema` (and inside its arrays).
fn for_each_subschema(schema: &mut JsonObject, f: fn(&mut JsonObject)) {
    for v in schema.values_mut() {
        match v {
            Value::Object(o) => f(o),
            Value::Array(items) => items.iter_mut().for_each(|i| {
                if let Value::Object(o) = i {
                    f(o);
                }
            }),
            _ => {}
        }
    }
}

/// Removes every `keyword` whose value is a string or a number, at any depth (a property
/// that happens to have that name is a schema, an object, and is kept).
fn drop_keyword(schema: &mut JsonObject, keyword: &str) {
    if matches!(
        schema.get(keyword),
        Some(Value::String(_) | Value::Number(_))
    ) {
        schema.remove(keyword);
    }
    for v in schema.values_mut() {
        match v {
            Value::Object(o) => drop_keyword(o, keyword),
            Value::Array(items) => items.iter_mut().for_each(|i| {
                if let Value::Object(o) = i {
                    drop_keyword(o, keyword);
                }
            }),
            _ => {}
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
    fn optional_inputs_lose_their_nulls_and_outputs_their_descriptions() {
        let Value::Object(input) = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "n": {"description": "N.", "type": ["integer", "null"], "minimum": 0},
                "t": {"type": ["string", "null"], "enum": ["a", "b", null]},
                "l": {"description": "L.", "anyOf": [{"$ref": "#/$defs/L"}, {"type": "null"}]},
                "both": {"anyOf": [{"type": "string"}, {"type": "integer"}]}
            },
            "$defs": {"L": {"description": "gone", "type": "object", "properties": {
                "x": {"type": ["number", "null"]}
            }}}
        }) else {
            unreachable!()
        };
        let Value::Object(output) = serde_json::json!({
            "type": "object",
            "description": "gone",
            "properties": {
                "description": {"type": "string", "description": "gone"},
                "n": {"type": "integer", "minimum": 0},
                "skipped": {"type": ["string", "null"]},
                "written": {"type": ["string", "null"]}
            },
            "required": ["written"]
        }) else {
            unreachable!()
        };
        let mut tool = Tool::new("t", "d", Arc::new(input));
        tool.output_schema = Some(Arc::new(output));
        compact_tool(&mut tool);
        let input = Value::Object(tool.input_schema.as_ref().clone());
        assert_eq!(
            input,
            serde_json::json!({
                "type": "object",
                "properties": {
                    "n": {"description": "N.", "type": "integer", "minimum": 0},
                    "t": {"type": "string", "enum": ["a", "b"]},
                    "l": {"description": "L.", "$ref": "#/$defs/L"},
                    "both": {"anyOf": [{"type": "string"}, {"type": "integer"}]}
                },
                "$defs": {"L": {"type": "object", "properties": {"x": {"type": "number"}}}}
            })
        );
        let output = Value::Object(tool.output_schema.unwrap().as_ref().clone());
        assert_eq!(
            output,
            serde_json::json!({"type": "object", "properties": {
                "description": {"type": "string"},
                "n": {"type": "integer"},
                "skipped": {"type": "string"},
                "written": {"type": ["string", "null"]}
            }, "required": ["written"]})
        );
    }

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
