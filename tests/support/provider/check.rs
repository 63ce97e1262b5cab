//! What a real service refuses before doing any work: malformed requests, wrong
//! headers, schemas outside the supported subset, the quirks of other servers, and the
//! rate limit.

use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{ANTHROPIC_PATH, Api, FakeState, InFlight, OPENAI_PATH, Quirks, api_key, header_str};

/// What a quirky server refuses that the official API accepts.
pub(super) fn quirky(quirks: &Quirks, (api, body): (Api, Value)) -> Result<(Api, Value), Rejected> {
    let null_content = body["messages"].as_array().is_some_and(|messages| {
        messages
            .iter()
            .any(|m| m["role"] == "assistant" && m.get("content") == Some(&Value::Null))
    });
    if quirks.reject_null_content && api == Api::OpenAi && null_content {
        return Err(Rejected {
            api,
            code: 500,
            error_type: "internal_server_error",
            message: "'NoneType' object is not iterable".into(),
            retry_after: None,
        });
    }
    Ok((api, body))
}

/// `Quirks::empty_on_streaming_auto_tool_choice`: what llama-cpp-python answers with an
/// empty body.
pub(super) fn refuses_auto_tool_choice(quirks: &Quirks, (api, body): &(Api, Value)) -> bool {
    quirks.empty_on_streaming_auto_tool_choice
        && *api == Api::OpenAi
        && body["stream"] == true
        && body["tool_choice"] == "auto"
}

/// `Quirks::no_structured_output`: the refusals of servers and models without structured
/// outputs, in their words.
pub(super) fn without_structured_output(
    quirks: &Quirks,
    (api, body): (Api, Value),
) -> Result<(Api, Value), Rejected> {
    if !quirks.no_structured_output {
        return Ok((api, body));
    }
    let message = match api {
        Api::Anthropic if body.pointer("/output_config/format").is_some() => format!(
            "output_config.format: structured outputs are not supported for the model '{}'",
            body["model"].as_str().unwrap_or_default()
        ),
        Api::OpenAi if body["response_format"]["type"] == "json_schema" => {
            "response_format type must be one of \"text\" or \"json_object\", but got: json_schema"
                .to_string()
        }
        _ => return Ok((api, body)),
    };
    Err(Rejected {
        api,
        code: 400,
        error_type: "invalid_request_error",
        message,
        retry_after: None,
    })
}

/// The rate limit of `Quirks::max_in_flight`: a permit for the response, or a 429.
pub(super) fn admit(
    state: &mut FakeState,
    accepted: (Api, Value),
) -> Result<((Api, Value), Option<InFlight>), Rejected> {
    let Some(max) = state.quirks.max_in_flight else {
        return Ok((accepted, None));
    };
    let now = state.in_flight.load(Ordering::SeqCst);
    if now >= max {
        state.throttled += 1;
        return Err(Rejected {
            api: accepted.0,
            code: 429,
            error_type: "rate_limit_error",
            message: format!(
                "Number of concurrent connections has exceeded your rate limit ({max}); please retry later."
            ),
            retry_after: Some(state.quirks.retry_after_secs),
        });
    }
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    state.peak_in_flight = state.peak_in_flight.max(now + 1);
    Ok((accepted, Some(InFlight(state.in_flight.clone()))))
}

/// A request the real service would refuse before doing any work.
pub(super) struct Rejected {
    pub(super) api: Api,
    pub(super) code: u16,
    pub(super) error_type: &'static str,
    pub(super) message: String,
    pub(super) retry_after: Option<u64>,
}

/// Accepts a request the real service would serve, as `(api, body)`.
pub(super) fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    parsed: Result<Value, serde_json::Error>,
) -> Result<(Api, Value), Rejected> {
    let api = match path {
        ANTHROPIC_PATH => Api::Anthropic,
        OPENAI_PATH => Api::OpenAi,
        _ => {
            return Err(Rejected {
                api: Api::Anthropic,
                code: 404,
                error_type: "not_found_error",
                message: format!("Not found: {method} {path}"),
                retry_after: None,
            });
        }
    };
    let reject = |code, error_type, message: &str| Rejected {
        api,
        code,
        error_type,
        message: message.to_string(),
        retry_after: None,
    };
    let invalid = |message: &str| Err(reject(400, "invalid_request_error", message));
    if method != Method::POST {
        return Err(reject(
            405,
            "invalid_request_error",
            "Method not allowed; use POST",
        ));
    }
    let body = match parsed {
        Ok(body) if body.is_object() => body,
        Ok(_) => return invalid("The request body must be a JSON object"),
        Err(err) => {
            return invalid(&format!(
                "There was an error parsing the body of your request: {err}"
            ));
        }
    };
    match api {
        Api::Anthropic => {
            if api_key(headers).is_none() {
                let message = "x-api-key header is required";
                return Err(reject(401, "authentication_error", message));
            }
            if header_str(headers, "anthropic-version").is_none() {
                return invalid("anthropic-version: header is required");
            }
            if !body["model"].is_string() {
                return invalid("model: Field required");
            }
            if !body["messages"].is_array() {
                return invalid("messages: Field required");
            }
            if body["max_tokens"].as_u64().is_none() {
                return invalid("max_tokens: Field required");
            }
            if let Some(at) = tool_use_input_not_an_object(&body) {
                return invalid(&format!("{at}.input: Input should be a valid dictionary"));
            }
        }
        Api::OpenAi => {
            if !body["model"].is_string() {
                return invalid("you must provide a model parameter");
            }
            if !body["messages"].is_array() {
                return invalid("Missing required parameter: 'messages'.");
            }
        }
    }
    if body["stream"] != Value::Bool(true) {
        return invalid("this fake only streams: set \"stream\": true");
    }
    let structured = match api {
        Api::Anthropic => check_output_config(&body),
        Api::OpenAi => check_response_format(&body),
    }
    .and_then(|()| check_forced_tool(api, &body));
    if let Err(message) = structured {
        return invalid(&message);
    }
    Ok((api, body))
}

/// Where an Anthropic request has a `tool_use` block whose input is not an object
/// (`messages.N.content.M`), as the API names it in its 400.
fn tool_use_input_not_an_object(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    messages.iter().enumerate().find_map(|(n, m)| {
        m["content"]
            .as_array()?
            .iter()
            .enumerate()
            .find_map(|(k, b)| {
                (b["type"] == "tool_use" && !b["input"].is_object())
                    .then(|| format!("messages.{n}.content.{k}.tool_use"))
            })
    })
}

/// A `tool_choice` that names one tool (Anthropic `{type: "tool", name}`, OpenAI
/// `{type: "function", function: {name}}`) must name a tool the request offers.
fn check_forced_tool(api: Api, body: &Value) -> Result<(), String> {
    let choice = &body["tool_choice"];
    let named = match api {
        Api::Anthropic if choice["type"] == "tool" => choice["name"].as_str(),
        Api::OpenAi if choice["type"] == "function" => choice["function"]["name"].as_str(),
        _ => return Ok(()),
    };
    let offered = body["tools"].as_array().is_some_and(|tools| {
        tools.iter().any(|t| {
            let name = t["name"]
                .as_str()
                .or_else(|| t["function"]["name"].as_str());
            name.is_some() && name == named
        })
    });
    if offered {
        Ok(())
    } else {
        Err(format!(
            "tool_choice: the tool {} is not among the tools offered",
            named.unwrap_or("(no name)")
        ))
    }
}

/// Keywords the Messages API's structured outputs refuse in a schema (its documented
/// limitations: no numeric, string-length or most array constraints).
const ANTHROPIC_REFUSED_KEYWORDS: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
];

/// Anthropic structured outputs, `output_config: {format: {type: "json_schema", schema}}`,
/// checked as the API does before any work: the format type, and a schema within the
/// supported subset (every object closed with `additionalProperties: false`, none of the
/// refused keywords, `minItems` 0 or 1). The model then answers in text that is the JSON.
fn check_output_config(body: &Value) -> Result<(), String> {
    // `output_config` carries other settings too (Claude Code sends `effort`).
    let Some(format) = body.pointer("/output_config/format") else {
        return Ok(());
    };
    if format["type"] != "json_schema" {
        return Err(format!(
            "output_config.format.type: Input should be 'json_schema' (got {})",
            format["type"]
        ));
    }
    let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
        return Err("output_config.format.schema: Field required".into());
    };
    anthropic_schema_problem(schema, "")
        .map_or(Ok(()), |p| Err(format!("output_config.format.schema: {p}")))
}

fn anthropic_schema_problem(schema: &Value, at: &str) -> Option<String> {
    match schema {
        Value::Object(map) => {
            for key in ANTHROPIC_REFUSED_KEYWORDS {
                if map.contains_key(*key) {
                    return Some(format!(
                        "at '{at}': the keyword '{key}' is not supported for structured outputs"
                    ));
                }
            }
            if map
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 1)
            {
                return Some(format!(
                    "at '{at}': minItems values other than 0 or 1 are not supported"
                ));
            }
            let object =
                map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if object && map.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Some(format!(
                    "at '{at}': For 'object' type, 'additionalProperties' must be explicitly set to false"
                ));
            }
            subschemas(map, at)
                .into_iter()
                .find_map(|(path, v)| anthropic_schema_problem(v, &path))
        }
        _ => None,
    }
}

/// The schemas one level inside a schema object, with their paths: values of
/// `properties`/`$defs` (by name), `items`, `anyOf` members and the like. Names and data
/// (`required`, `enum`, `const`) are not schemas.
fn subschemas<'v>(map: &'v serde_json::Map<String, Value>, at: &str) -> Vec<(String, &'v Value)> {
    let mut out = Vec::new();
    for (key, value) in map {
        match (key.as_str(), value) {
            (
                "properties" | "$defs" | "definitions" | "patternProperties",
                Value::Object(named),
            ) => {
                out.extend(named.iter().map(|(n, v)| (format!("{at}/{key}/{n}"), v)));
            }
            (
                "items"
                | "prefixItems"
                | "additionalProperties"
                | "anyOf"
                | "allOf"
                | "oneOf"
                | "not"
                | "if"
                | "then"
                | "else",
                v,
            ) => match v {
                Value::Array(items) => out.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("{at}/{key}/{i}"), v)),
                ),
                v => out.push((format!("{at}/{key}"), v)),
            },
            _ => {}
        }
    }
    out
}

/// OpenAI `response_format: {type: "json_schema", json_schema: {name, schema, strict}}`,
/// checked as the API does: a name of letters, digits, `_` and `-` (at most 64), a schema
/// object, and with `strict: true` every object closed and every property required.
fn check_response_format(body: &Value) -> Result<(), String> {
    let Some(format) = body.get("response_format") else {
        return Ok(());
    };
    match format["type"].as_str() {
        Some("text" | "json_object") => return Ok(()),
        Some("json_schema") => {}
        _ => {
            return Err(format!(
                "Invalid value for 'response_format.type': {}. Supported values are: 'json_object', 'json_schema', and 'text'.",
                format["type"]
            ));
        }
    }
    let spec = &format["json_schema"];
    let name = spec["name"].as_str().unwrap_or("");
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(
            "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
                .into(),
        );
    }
    let Some(schema) = spec.get("schema").filter(|s| s.is_object()) else {
        return Err("Missing required parameter: 'response_format.json_schema.schema'.".into());
    };
    if spec["strict"] == Value::Bool(true)
        && let Some(problem) = openai_strict_problem(schema, "")
    {
        return Err(format!(
            "Invalid schema for response_format '{name}': In context=({problem})"
        ));
    }
    Ok(())
}

fn openai_strict_problem(schema: &Value, at: &str) -> Option<String> {
    match schema {
        Value::Object(map) => {
            let object =
                map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if object {
                if map.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return Some(format!(
                        "'{at}'), 'additionalProperties' is required to be supplied and to be false"
                    ));
                }
                let required: Vec<&str> = map["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(missing) = map["properties"]
                    .as_object()
                    .and_then(|p| p.keys().find(|k| !required.contains(&k.as_str())))
                {
                    return Some(format!(
                        "'{at}'), 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'"
                    ));
                }
            }
            subschemas(map, at)
                .into_iter()
                .find_map(|(path, v)| openai_strict_problem(v, &path))
        }
        _ => None,
    }
}
