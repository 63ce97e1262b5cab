//! What tools/list tells the client, pinned: the whole reply (names, descriptions, input
//! and output schemas, annotations) is kept in tests/golden/tools_list.json, so a change
//! to it is made on purpose and reviewed as a diff. And what it costs: the client's model
//! loads the names, descriptions and input schemas (on demand in Claude Code, through
//! ToolSearch), and every client holds the whole list. Both stay small, and the input
//! schemas portable.

use std::path::Path;

use rmcp::model::Tool;
use serde_json::{Value, json};
use support::mcp::{Session, base_config, one_raw_request};

/// The tools/list result as the client receives it from a server on `base_config`,
/// pretty-printed in the order the server wrote it.
const GOLDEN: &str = "tests/golden/tools_list.json";
/// Set to rewrite the golden file from what the server answers now.
const BLESS: &str = "BG_AGENTS_BLESS";
/// How to update the golden file on purpose.
const HOW_TO_UPDATE: &str = "if the change is intended, rewrite the file with \
    `BG_AGENTS_BLESS=1 cargo test --test tests tools_list::` and review its diff";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_is_exactly_its_golden_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("limits.toml");
    std::fs::write(&config, base_config(home.path(), "")).expect("config");
    let (line, _) = one_raw_request(home.path(), &config, "tools/list").await;
    let reply: Value = serde_json::from_str(&line).expect("a JSON-RPC reply");
    assert!(reply["result"]["tools"].is_array(), "no tools: {line}");
    let actual = format!("{:#}\n", reply["result"]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);

    if std::env::var_os(BLESS).is_some() {
        std::fs::write(&path, &actual).expect("write the golden file");
        eprintln!("{BLESS}: wrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; {HOW_TO_UPDATE}", path.display()));
    if let Some(difference) = first_difference(&expected, &actual) {
        panic!("tools/list differs from {GOLDEN}:\n{difference}\n{HOW_TO_UPDATE}");
    }
}

/// Where `actual` first departs from `expected`: the JSON path (when both parse) and the
/// lines around the first differing line, `-` expected and `+` actual; `None` if the two
/// texts are identical.
fn first_difference(expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut out = String::new();
    if let (Ok(e), Ok(a)) = (serde_json::from_str(expected), serde_json::from_str(actual)) {
        let at = differing_path(&e, &a, String::new());
        out += &format!(
            "first difference at {}\n",
            at.as_deref().unwrap_or("(whitespace)")
        );
    }
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let line = e.iter().zip(&a).take_while(|(e, a)| e == a).count();
    let context = line.saturating_sub(2);
    out += &format!("line {}:\n", line + 1);
    for l in &e[context..e.len().min(line + 3)] {
        out += &format!("- {l}\n");
    }
    for l in &a[context..a.len().min(line + 3)] {
        out += &format!("+ {l}\n");
    }
    Some(out)
}

/// The JSON path of the first value, key or key order where `a` departs from `e`.
fn differing_path(e: &Value, a: &Value, path: String) -> Option<String> {
    match (e, a) {
        (Value::Object(e), Value::Object(a)) => {
            let keys_differ = e.len() != a.len() || e.keys().zip(a.keys()).any(|(x, y)| x != y);
            if keys_differ {
                let (ek, ak): (Vec<_>, Vec<_>) = (e.keys().collect(), a.keys().collect());
                return Some(format!("{path}: keys {ek:?} became {ak:?}"));
            }
            e.iter()
                .zip(a.values())
                .find_map(|((k, e), a)| differing_path(e, a, format!("{path}/{k}")))
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (e, a))| differing_path(e, a, format!("{path}/{i}"))),
        _ if e == a => None,
        _ => Some(path),
    }
}
