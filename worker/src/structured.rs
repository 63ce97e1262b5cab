//! Structured answers: a spawn's `output_schema` (a JSON Schema the final answer must
//! match), checked once when a spawn is resolved, sent to the provider in the form its API
//! accepts, and enforced on the answer: parsed, validated, and asked for again with the
//! validation errors when it does not match.
//!
//! Not here: where the schema goes in a request (the provider modules), the turn loop that
//! asks again (`agent`).

use serde_json::{Map, Value};

/// Largest schema accepted (its compact JSON): it is sent with every request.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;

/// How many times an answer that does not match is sent back with its errors before the
/// run ends `schema_mismatch`.
pub const CORRECTIONS: u32 = 2;

/// Validation errors quoted back to the model (and in the final error), at most.
const ERRORS_SHOWN: usize = 8;

/// Why an `output_schema` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error(
        "output_schema is {0} bytes of JSON, above the {MAX_SCHEMA_BYTES}-byte limit; give a smaller schema (drop descriptions and examples, or ask for less)"
    )]
    TooLarge(usize),
    #[error(
        "output_schema must be a JSON Schema object such as {{\"type\": \"object\", \"properties\": {{...}}}}, not {0}"
    )]
    NotAnObject(&'static str),
    #[error("output_schema is not a valid JSON Schema: {0}; fix it and spawn again")]
    Invalid(String),
}

/// A checked schema with its validator.
#[derive(Debug)]
pub struct OutputSchema {
    schema: Value,
    validator: jsonschema::Validator,
}

/// What became of an answer checked against the schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    /// The answer, parsed: it matches.
    Valid(Value),
    /// It does not parse or match: one line per problem.
    Invalid(Vec<String>),
}

impl OutputSchema {
    /// Checks size, shape and the JSON Schema meta-schema, and builds the validator.
    /// Remote `$ref`s are not fetched (the worker has no network but its provider's).
    pub fn new(schema: &Value) -> Result<OutputSchema, SchemaError> {
        let bytes = schema.to_string().len();
        if bytes > MAX_SCHEMA_BYTES {
            return Err(SchemaError::TooLarge(bytes));
        }
        if !schema.is_object() {
            return Err(SchemaError::NotAnObject(json_kind(schema)));
        }
        if let Err(e) = jsonschema::meta::validate(schema) {
            return Err(SchemaError::Invalid(format!("at {}: {e}", pointer(&e))));
        }
        let validator =
            jsonschema::validator_for(schema).map_err(|e| SchemaError::Invalid(e.to_string()))?;
        Ok(OutputSchema {
            schema: schema.clone(),
            validator,
        })
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Parses the model's answer text (one JSON value, a Markdown code fence around it
    /// tolerated) and validates it.
    pub fn check_text(&self, text: &str) -> Checked {
        match serde_json::from_str::<Value>(unfenced(text)) {
            Ok(value) => self.check_value(value),
            Err(e) => Checked::Invalid(vec![format!(
                "the answer is not one JSON value ({e}); answer with the JSON value alone, no prose around it"
            )]),
        }
    }

    pub fn check_value(&self, value: Value) -> Checked {
        let errors: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(ERRORS_SHOWN)
            .map(|e| format!("at {}: {e}", pointer(&e)))
            .collect();
        if errors.is_empty() {
            Checked::Valid(value)
        } else {
            Checked::Invalid(errors)
        }
    }

    /// The user message that sends an answer back with what is wrong with it.
    pub fn correction(&self, errors: &[String]) -> String {
        format!(
            "Your answer does not match the required JSON Schema:\n- {}\nAnswer again with one JSON value that matches this schema, and nothing else:\n{}",
            errors.join("\n- "),
            self.schema
        )
    }
}

/// The JSON pointer (`/findings/0/line`, or `/` for the root) where an error is.
fn pointer(e: &jsonschema::ValidationError<'_>) -> String {
    let p = e.instance_path().to_string();
    if p.is_empty() { "/".into() } else { p }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text inside a ```json … ``` fence, when the whole answer is one; else the text.
fn unfenced(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return t;
    };
    // The info string (`json`) runs to the first newline.
    body.split_once('\n').map_or(body, |(_, b)| b).trim()
}

/// The tool that takes the answer where a provider refuses its structured-output parameter.
pub const FINAL_TOOL: &str = "final_answer";

/// How a schema reaches the model: the API's own structured-output parameter, or a
/// `final_answer` tool whose input is the answer (for servers that refuse the parameter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delivery<'a> {
    Native(&'a Value),
    /// `forced`: the request makes the model call the tool (`tool_choice`).
    FinalTool {
        schema: &'a Value,
        forced: bool,
    },
}

/// The final tool's description and input schema. Tool inputs are objects, so a schema of
/// anything else is wrapped as the `answer` property (`from_tool_input` unwraps it).
pub fn final_tool_schema(schema: &Value) -> Value {
    if schema["type"] == "object" {
        schema.clone()
    } else {
        serde_json::json!({
            "type": "object",
            "properties": {"answer": schema},
            "required": ["answer"],
            "additionalProperties": false
        })
    }
}

pub const FINAL_TOOL_DESCRIPTION: &str = "Give your final answer: call this once, when you are done, with the answer as its input. Nothing else ends the task.";

/// The answer in a final tool call's input (see `final_tool_schema`).
pub fn from_tool_input(schema: &Value, input: &Value) -> Value {
    if schema["type"] == "object" {
        input.clone()
    } else {
        input.get("answer").cloned().unwrap_or(Value::Null)
    }
}

/// Keywords the Anthropic structured-output grammar does not take; they are moved into
/// the `description` (so the model still reads them) and enforced here, by validation.
const ANTHROPIC_UNSUPPORTED: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
];

/// The schema as Anthropic's `output_config.format` takes it: objects closed
/// (`additionalProperties: false`, which the API requires), unsupported constraints moved
/// into descriptions, `minItems` above 1 lowered to 1 (with the real bound described). The
/// answer is still validated against the schema as given.
pub fn for_anthropic(schema: &Value) -> Value {
    let mut out = schema.clone();
    adapt_anthropic(&mut out);
    out
}

fn adapt_anthropic(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut notes = Vec::new();
            for key in ANTHROPIC_UNSUPPORTED {
                if let Some(moved) = map.remove(*key) {
                    notes.push(format!("{key}: {moved}"));
                }
            }
            if let Some(n) = map.get("minItems").and_then(Value::as_u64)
                && n > 1
            {
                notes.push(format!("minItems: {n}"));
                map.insert("minItems".into(), Value::from(1));
            }
            // An open object (no `additionalProperties`, or `true`) is closed silently; a
            // schema for the extra properties is described.
            if is_object_schema(map)
                && let Some(extra) = map.insert("additionalProperties".into(), Value::Bool(false))
                && extra.is_object()
            {
                notes.push(format!("additionalProperties: {extra}"));
            }
            if !notes.is_empty() {
                describe(map, &notes);
            }
            for (key, child) in map.iter_mut() {
                match subschemas(key) {
                    Sub::Named => child
                        .as_object_mut()
                        .into_iter()
                        .flat_map(|named| named.values_mut())
                        .for_each(adapt_anthropic),
                    Sub::Direct => adapt_anthropic(child),
                    Sub::Data => {}
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(adapt_anthropic),
        _ => {}
    }
}

/// What a schema keyword's value holds, for walking a schema.
enum Sub {
    /// Schemas by name (`properties`, `$defs`): the names are not keywords.
    Named,
    /// A schema, or an array of them (`items`, `anyOf`, ...).
    Direct,
    /// Data or names, never schemas (`enum`, `const`, `required`, ...).
    Data,
}

fn subschemas(keyword: &str) -> Sub {
    match keyword {
        "properties" | "$defs" | "definitions" | "dependentSchemas" | "patternProperties" => {
            Sub::Named
        }
        "items"
        | "prefixItems"
        | "additionalProperties"
        | "anyOf"
        | "allOf"
        | "oneOf"
        | "not"
        | "if"
        | "then"
        | "else"
        | "contains"
        | "propertyNames"
        | "unevaluatedProperties"
        | "unevaluatedItems" => Sub::Direct,
        _ => Sub::Data,
    }
}

/// The schemas directly inside `map` (one level down).
fn children(map: &Map<String, Value>) -> Vec<&Value> {
    let mut out = Vec::new();
    for (key, value) in map {
        match (subschemas(key), value) {
            (Sub::Named, Value::Object(named)) => out.extend(named.values()),
            (Sub::Direct, Value::Array(items)) => out.extend(items.iter()),
            (Sub::Direct, v) => out.push(v),
            _ => {}
        }
    }
    out
}

fn is_object_schema(map: &Map<String, Value>) -> bool {
    map.get("type") == Some(&Value::String("object".into())) || map.contains_key("properties")
}

fn describe(map: &mut Map<String, Value>, notes: &[String]) {
    let note = format!("({})", notes.join(", "));
    let text = match map.get("description").and_then(Value::as_str) {
        Some(d) => format!("{d} {note}"),
        None => note,
    };
    map.insert("description".into(), Value::String(text));
}

/// Whether OpenAI's `strict: true` accepts the schema: every object closed and every
/// property required. Otherwise the schema is sent with `strict: false` (best effort),
/// and validation here holds the answer to it.
pub fn openai_strict(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            if is_object_schema(map) {
                let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
                let props: Vec<&String> = map
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| p.keys().collect())
                    .unwrap_or_default();
                let required: Vec<&str> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !closed || props.iter().any(|p| !required.contains(&p.as_str())) {
                    return false;
                }
            }
            children(map).into_iter().all(openai_strict)
        }
        _ => true,
    }
}

#[cfg(test)]
#[path = "structured_tests.rs"]
mod tests;
