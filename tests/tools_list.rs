//! What tools/list costs the client: its model loads the names, descriptions and input
//! schemas (on demand in Claude Code, through ToolSearch), and every client holds the
//! whole list. Both stay small, and the input schemas portable.

use rmcp::model::Tool;
use serde_json::{Value, json};
use support::mcp::Session;

/// Most characters (compact JSON) of all tools' names, descriptions and input schemas.
const MODEL_LOADS_MAX: usize = 12_000;
/// Most characters (compact JSON) of the whole tools/list result.
const TOOLS_LIST_MAX: usize = 25_000;

fn chars(v: &impl serde::Serialize) -> usize {
    serde_json::to_string(v).unwrap().chars().count()
}

fn what_the_model_loads(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "inputSchema": t.input_schema}))
            .collect(),
    )
}

/// Paths of `"type": [.., "null"]` arrays and `null` enum values in `v`.
fn nullables(v: &Value, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(types)) = o.get("type")
                && types.iter().any(|t| t == "null")
            {
                found.push(path.to_string());
            }
            if let Some(Value::Array(values)) = o.get("enum")
                && values.iter().any(Value::is_null)
            {
                found.push(format!("{path}/enum"));
            }
            for (k, inner) in o {
                nullables(inner, &format!("{path}/{k}"), found);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                nullables(inner, &format!("{path}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// Paths of properties that are not required (a reply leaves them out when unset) yet
/// allow null, in `v` at any depth.
fn optional_nullables(v: &Value, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            let required = o.get("required").and_then(Value::as_array);
            if let Some(Value::Object(props)) = o.get("properties") {
                for (name, prop) in props {
                    let optional = !required.is_some_and(|r| r.iter().any(|x| x == name.as_str()));
                    let mut here = Vec::new();
                    nullables(
                        &json!({"p": {"type": prop["type"], "enum": prop["enum"]}})["p"],
                        "",
                        &mut here,
                    );
                    let any_null = prop["anyOf"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|s| s["type"] == "null"));
                    if optional && (!here.is_empty() || any_null) {
                        found.push(format!("{path}/properties/{name}"));
                    }
                }
            }
            for (k, inner) in o {
                optional_nullables(inner, &format!("{path}/{k}"), found);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                optional_nullables(inner, &format!("{path}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_stays_small_and_its_input_schemas_portable() {
    let s = Session::start("").await;
    let listed = s.client.list_tools(None).await.expect("tools/list");
    assert!(listed.next_cursor.is_none(), "one page");
    let tools = &listed.tools;
    assert_eq!(
        tools.len(),
        7,
        "{:?}",
        tools.iter().map(|t| &t.name).collect::<Vec<_>>()
    );

    let loads = chars(&what_the_model_loads(tools));
    let whole = chars(&listed);
    eprintln!("tools/list: names+descriptions+input schemas {loads} chars, whole {whole} chars");
    assert!(
        loads <= MODEL_LOADS_MAX,
        "names, descriptions and input schemas: {loads} chars > {MODEL_LOADS_MAX}"
    );
    assert!(
        whole <= TOOLS_LIST_MAX,
        "tools/list: {whole} chars > {TOOLS_LIST_MAX}"
    );

    for t in tools {
        let mut found = Vec::new();
        nullables(
            &Value::Object(t.input_schema.as_ref().clone()),
            "",
            &mut found,
        );
        assert!(found.is_empty(), "{}: nullable types at {found:?}", t.name);
        let out = Value::Object(
            t.output_schema
                .as_deref()
                .cloned()
                .expect("an outputSchema"),
        );
        let mut found = Vec::new();
        optional_nullables(&out, "", &mut found);
        assert!(
            found.is_empty(),
            "{}: output properties left out when unset, yet nullable: {found:?}",
            t.name
        );
    }
}
