//! Replies as the model receives them: Claude Code shows a model a tool result's
//! structuredContent as compact JSON, so sizes are measured there, and every reply must
//! match its tool's outputSchema. Also: only standard schema formats, and a spawn with no
//! API key fails at once.

use std::collections::HashSet;

use rmcp::model::{CallToolResult, Tool};
use serde_json::{Value, json};
use support::mcp::{Session, as_model_reads, schema_mismatches};
use support::provider::Step;

/// The formats JSON Schema defines; anything else makes Claude Code warn.
const STANDARD_FORMATS: [&str; 19] = [
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

/// Every reply the model may get must fit inside this (Claude Code's own cap is 25,000
/// tokens; the target is 20,000 chars).
const REPLY_MAX_CHARS: usize = 20_000;

async fn tools(s: &Session) -> Vec<Tool> {
    s.client.list_all_tools().await.expect("tools/list")
}

/// The compact JSON of `r`, after checking it against `tool`'s outputSchema.
fn model_view(tools: &[Tool], tool: &str, r: &CallToolResult) -> String {
    assert_ne!(r.is_error, Some(true), "{tool}: {:?}", r.content);
    let t = tools.iter().find(|t| t.name == tool).expect("tool listed");
    let schema = Value::Object(t.output_schema.as_deref().expect("outputSchema").clone());
    let value = r.structured_content.as_ref().expect("structuredContent");
    let bad = schema_mismatches(&schema, value);
    assert!(
        bad.is_empty(),
        "{tool} reply does not match its outputSchema: {bad:#?}\n{value}"
    );
    as_model_reads(r)
}

/// An answer of `n` chars with quotes and line breaks (which JSON escapes).
fn answer(tag: &str, n: usize) -> String {
    let line = format!("{tag}: the \"session\" handler is in src/auth/session.rs:120.\n");
    line.repeat(n / line.len() + 1).chars().take(n).collect()
}

fn chars_before(haystack: &str, needle: &str) -> usize {
    let b = haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {haystack}"));
    haystack[..b].chars().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_reply_is_under_400_chars_with_status_first_and_no_defaults() {
    let s = Session::start("").await;
    let tools = tools(&s).await;
    let r = s
        .call(
            "agent_spawn",
            json!({
                "task": "Explore how sessions are stored and summarize the design in ten lines",
                "task_type": "exploration",
                "label": "x".repeat(64),
                "limits": { "max_turns": 5, "budget_usd": 0.5 },
            }),
        )
        .await;
    let seen = model_view(&tools, "agent_spawn", &r);
    assert!(
        seen.chars().count() <= 400,
        "{} chars: {seen}",
        seen.chars().count()
    );
    assert!(seen.starts_with("{\"agent_id\":\"a-"), "{seen}");
    assert_eq!(
        chars_before(&seen, "\"status\""),
        "{\"agent_id\":\"a-xxxxx\",".len()
    );
    assert!(!seen.contains("null") && !seen.contains("false"), "{seen}");
    let v: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(
        v["limits"],
        json!({ "max_turns": 5, "budget_usd": 0.5 }),
        "only the limits that differ from [defaults]"
    );
    assert!(text_len(&r) <= 400, "readable text: {}", text_len(&r));
}

fn text_len(r: &CallToolResult) -> usize {
    support::mcp::text_of(r).chars().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_an_ended_agent_starts_its_answer_within_300_chars_and_adds_at_most_600() {
    let s = Session::start("").await;
    let tools = tools(&s).await;
    let text = answer("found", 3000);
    s.fake.script(
        "where sessions live",
        vec![Step::Text {
            chunks: vec![text.clone()],
            delay_ms: 0,
        }],
    );
    let task = format!(
        "Find where sessions live and explain. {}",
        "Context. ".repeat(60)
    );
    let id = s
        .spawn_with(json!({ "task": task, "label": "l".repeat(64) }))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let r = s.call("agent_status", json!({ "agent_id": id })).await;
    let seen = model_view(&tools, "agent_status", &r);
    let v: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(v["status"], "completed", "{seen}");
    assert_eq!(v["result"], text.as_str(), "the whole answer");
    let answer_json = serde_json::to_string(&text).unwrap();
    let starts = chars_before(&seen, &answer_json);
    assert!(
        starts <= 300,
        "the answer starts at char {starts}: {seen:.400}"
    );
    let rest = seen.chars().count() - answer_json.chars().count();
    assert!(
        rest <= 600,
        "{rest} chars besides the answer: {}",
        seen.replace(&answer_json, "\"…\"")
    );
    for gone in ["null", "_at\"", "false", "\"limits\""] {
        assert!(!seen.contains(gone), "{gone} in {seen:.2000}");
    }
    assert!(
        v["elapsed_s"].as_f64().is_some() && v["ended_s_ago"].as_f64().is_some(),
        "{v}"
    );
    // The other one-agent replies match their schemas too.
    let verbose = s
        .call("agent_status", json!({ "agent_id": id, "verbose": true }))
        .await;
    model_view(&tools, "agent_status", &verbose);
    let out = s
        .call("agent_output", json!({ "agent_id": id, "filter": "found" }))
        .await;
    model_view(&tools, "agent_output", &out);
    let killed = s.call("agent_kill", json!({ "agent_id": id })).await;
    let seen = model_view(&tools, "agent_kill", &killed);
    assert!(
        seen.starts_with(&format!(
            "{{\"agent_id\":\"{id}\",\"status\":\"completed\",\"result\":"
        )),
        "{seen:.200}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_cut_to_fit_says_how_to_read_the_rest() {
    let s = Session::start("").await;
    let tools = tools(&s).await;
    let text = answer("long", 30_000);
    s.fake.script(
        "very long report",
        vec![Step::Text {
            chunks: vec![text.clone()],
            delay_ms: 0,
        }],
    );
    let id = s.spawn("Write a very long report").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let r = s.call("agent_status", json!({ "agent_id": id })).await;
    let seen = model_view(&tools, "agent_status", &r);
    let v: Value = serde_json::from_str(&seen).unwrap();
    // The target: at most 600 chars besides the answer, as the model reads it
    // (the answer itself is cut at 20,000 bytes, then JSON-escaped).
    let answer_chars = serde_json::to_string(&v["result"]).unwrap().chars().count();
    let rest = seen.chars().count() - answer_chars;
    assert!(
        rest <= 600,
        "{rest} chars besides the answer: {}",
        &seen[..300]
    );
    assert_eq!(v["result_truncated"], true);
    let how = v["read_on"].as_str().expect("read_on");
    assert!(how.contains("agent_output"), "{how}");
    // Reading on works: agent_output pages reach the end of the answer.
    let mut since = 0u64;
    let mut all = String::new();
    loop {
        let p = s
            .ok(
                "agent_output",
                json!({ "agent_id": id, "since": since, "max_bytes": 100_000 }),
            )
            .await;
        all.push_str(p["text"].as_str().unwrap());
        since = p["next_cursor"].as_u64().unwrap();
        if p["truncated"] != true {
            break;
        }
    }
    assert!(all.contains(&text), "agent_output has the whole answer");
}

/// Spawns `n` agents, each answering `answer(i, 400)`; waits for all of them.
async fn spawn_many(s: &Session, n: usize) -> (Vec<String>, Vec<String>) {
    let tasks: Vec<String> = (0..n)
        .map(|i| format!("Survey part #{i}# of the code"))
        .collect();
    let answers: Vec<String> = (0..n).map(|i| answer(&format!("part {i}"), 400)).collect();
    for (t, a) in tasks.iter().zip(&answers) {
        s.fake.script(
            t,
            vec![Step::Text {
                chunks: vec![a.clone()],
                delay_ms: 0,
            }],
        );
    }
    let ids = futures_util::future::join_all(
        tasks
            .iter()
            .enumerate()
            .map(|(i, t)| s.spawn_with(json!({ "task": t, "label": format!("part-{i}") }))),
    )
    .await;
    (ids, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_120_agents_stays_under_20000_chars_and_pages_through_every_result() {
    let s = Session::start_server("max_concurrent = 32").await;
    let tools = tools(&s).await;
    let (ids, answers) = spawn_many(&s, 120).await;
    let done = s.wait_all(&ids).await;
    assert_eq!(done["counts"], json!({ "completed": 120 }), "{done}");
    let mut offset = 0u64;
    let mut seen_ids = HashSet::new();
    let mut pages = 0;
    loop {
        let r = s
            .call("agent_wait", json!({ "agent_ids": ids, "offset": offset }))
            .await;
        let seen = model_view(&tools, "agent_wait", &r);
        assert!(
            seen.chars().count() <= REPLY_MAX_CHARS,
            "page {pages}: {} chars",
            seen.chars().count()
        );
        assert!(
            text_len(&r) <= REPLY_MAX_CHARS,
            "readable text {} chars",
            text_len(&r)
        );
        let v: Value = serde_json::from_str(&seen).unwrap();
        pages += 1;
        for row in v["agents"].as_array().unwrap() {
            let id = row["agent_id"].as_str().unwrap().to_string();
            let i = ids.iter().position(|x| *x == id).expect("one of ours");
            assert_eq!(
                row["result"],
                answers[i].as_str(),
                "{id}: whole answer, not cut"
            );
            assert!(seen_ids.insert(id), "an agent on two pages");
        }
        match v["next_offset"].as_u64() {
            Some(n) => {
                let more = v["more"].as_str().expect("a cut says how to read on");
                assert!(more.contains(&format!("offset {n}")), "{more}");
                assert!(n > offset, "paging moves forward");
                offset = n;
            }
            None => break,
        }
    }
    assert_eq!(seen_ids.len(), 120, "every result was read");
    assert!(pages > 1, "120 answers of 400 chars cannot fit one reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_120_agents_pages_under_20000_chars_and_lists_every_agent_once() {
    let s = Session::start_server("max_concurrent = 32").await;
    let tools = tools(&s).await;
    let (ids, _) = spawn_many(&s, 120).await;
    s.wait_all(&ids).await;
    let r = s.call("agent_list", json!({})).await;
    let seen = model_view(&tools, "agent_list", &r);
    assert!(
        seen.chars().count() <= REPLY_MAX_CHARS,
        "{} chars",
        seen.chars().count()
    );
    let v: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(v["counts"], json!({ "completed": 120 }));
    assert!(
        v["more"].as_str().unwrap_or("").contains("offset"),
        "{}",
        v["more"]
    );
    let mut offset = v["next_offset"].as_u64().expect("a second page");
    let mut listed: Vec<String> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect();
    loop {
        let r = s.call("agent_list", json!({ "offset": offset })).await;
        let seen = model_view(&tools, "agent_list", &r);
        assert!(seen.chars().count() <= REPLY_MAX_CHARS);
        let v: Value = serde_json::from_str(&seen).unwrap();
        listed.extend(
            v["agents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["agent_id"].as_str().unwrap().to_string()),
        );
        match v["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    let (mut listed, mut ids) = (listed, ids);
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids, "every agent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_label_is_refused_and_nothing_starts() {
    let s = Session::start("").await;
    let e = s
        .tool_error(
            "agent_spawn",
            json!({ "task": "x", "label": "y".repeat(65) }),
        )
        .await;
    assert!(e.contains("label is 65 chars") && e.contains("64"), "{e}");
    let e = s
        .tool_error("agent_status", json!({ "agent_id": "z".repeat(5000) }))
        .await;
    assert!(
        e.chars().count() < 300,
        "the bad id is not echoed whole: {e}"
    );
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_schema_uses_only_standard_formats() {
    let s = Session::start("").await;
    let tools = tools(&s).await;
    assert_eq!(tools.len(), 7);
    let mut bad = Vec::new();
    let mut unsigned = 0;
    for t in &tools {
        let input = Value::Object(t.input_schema.as_ref().clone());
        let output = Value::Object(t.output_schema.as_deref().expect("outputSchema").clone());
        for (which, schema) in [("inputSchema", &input), ("outputSchema", &output)] {
            walk(schema, &mut |key, v| {
                if key == "format"
                    && let Some(f) = v.as_str()
                    && !STANDARD_FORMATS.contains(&f)
                {
                    bad.push(format!("{} {which}: format {f}", t.name));
                }
                if key == "minimum" && v == &json!(0) {
                    unsigned += 1;
                }
            });
        }
    }
    assert!(bad.is_empty(), "non-standard formats: {bad:#?}");
    assert!(
        unsigned > 10,
        "unsigned numbers keep minimum 0 ({unsigned} found)"
    );
}

/// Calls `f(key, value)` for every object member at any depth.
fn walk(v: &Value, f: &mut impl FnMut(&str, &Value)) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                f(k, x);
                walk(x, f);
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_without_the_api_key_fails_at_once_and_says_how_to_pass_it() {
    let s = Session::start_without_key("").await;
    let e = s
        .tool_error("agent_spawn", json!({ "task": "Summarize the README" }))
        .await;
    for must in [
        "ANTHROPIC_API_KEY",
        "claude mcp add bg-agents",
        "--env",
        ".mcp.json",
    ] {
        assert!(e.contains(must), "{must} missing from: {e}");
    }
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]), "nothing was started: {list}");
    assert!(s.fake.requests().is_empty(), "no request was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_a_key_variable_is_not_refused_and_its_failure_shows_in_list() {
    // `ollama` has no api_key_env; nothing listens on its port here, so the agent
    // starts, fails on the connection, and agent_list says why in one line.
    let s = Session::start_without_key(
        "[providers.ollama]\nbase_url = \"http://127.0.0.1:9/v1\"\nmax_retries = 0\n\
         [tiers.fast]\nprovider = \"ollama\"\nmodel = \"qwen3:8b\"\n",
    )
    .await;
    let id = s
        .spawn_with(json!({ "task": "Summarize the README", "tier": "fast" }))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let list = s.ok("agent_list", json!({})).await;
    let row = &list["agents"][0];
    assert_eq!(row["status"], "failed", "{list}");
    let why = row["error"].as_str().expect("the reason");
    assert!(
        !why.is_empty() && !why.contains('\n') && why.chars().count() <= 200,
        "{why}"
    );
    // A failed agent's status: the error right after the status, and its exit.
    let tools = tools(&s).await;
    let r = s.call("agent_status", json!({ "agent_id": id })).await;
    let seen = model_view(&tools, "agent_status", &r);
    assert!(
        seen.starts_with(&format!(
            "{{\"agent_id\":\"{id}\",\"status\":\"failed\",\"error\":"
        )),
        "{seen}"
    );
    let v: Value = serde_json::from_str(&seen).unwrap();
    assert!(v["exit"]["reason"].is_string(), "{v}");
    assert_eq!(v["model"], "qwen3:8b");
}

/// The server's stderr from start to exit when its stdin is closed at once.
fn server_log(with_key: bool) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(support::mcp::server_exe());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null());
    if with_key {
        cmd.env("ANTHROPIC_API_KEY", support::process::API_KEY);
    }
    let out = cmd.output().expect("run bg-agents");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_server_warns_once_at_start_when_the_default_tiers_key_is_missing() {
    let log = server_log(false);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ANTHROPIC_API_KEY is not set"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("--env"),
        "{log}"
    );
    assert!(
        !server_log(true).contains("is not set"),
        "no warning with the key"
    );
}

#[test]
fn the_schema_check_catches_extra_missing_and_mistyped_fields() {
    let schema = json!({
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0},
            "b": {"$ref": "#/$defs/B"}
        },
        "required": ["a"],
        "$defs": {"B": {"type": "string", "enum": ["x", "y"]}}
    });
    assert!(schema_mismatches(&schema, &json!({"a": 1, "b": "x"})).is_empty());
    for bad in [
        json!({"b": "x"}),
        json!({"a": "1"}),
        json!({"a": 1, "c": 2}),
        json!({"a": 1, "b": "z"}),
    ] {
        assert!(!schema_mismatches(&schema, &bad).is_empty(), "{bad} passed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_values_out_of_range_are_refused_with_the_range() {
    let s = Session::start("").await;
    let id = s.spawn("Say hi").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let e = s.tool_error("agent_list", json!({ "limit": 0 })).await;
    assert!(e.contains("limit = 0") && e.contains("1 to 500"), "{e}");
    let e = s
        .tool_error("agent_wait", json!({ "agent_ids": [id], "offset": 3 }))
        .await;
    assert!(e.contains("offset = 3") && e.contains("next_offset"), "{e}");
    // An offset past the end of a list is not an error: the reply says where to start.
    let v = s.ok("agent_list", json!({ "offset": 7 })).await;
    assert_eq!(v["agents"], json!([]));
    assert!(v["more"].as_str().unwrap_or("").contains("offset 0"), "{v}");
}

/// Facts of `r`'s structuredContent missing from its text: every string and number (and
/// the statuses counted), and the name of every flag that is true.
fn facts_missing_from_text(r: &CallToolResult) -> Vec<String> {
    fn visit(key: &str, v: &Value, text: &str, lower: &str, missing: &mut Vec<String>) {
        let found = match v {
            Value::String(s) => text.contains(s.as_str()),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => text.contains(&u.to_string()),
                (_, Some(i), _) => text.contains(&i.to_string()),
                (_, _, Some(f)) => text.contains(&f.to_string()),
                _ => true,
            },
            Value::Bool(true) => lower.contains(key) || lower.contains(&key.replace('_', " ")),
            Value::Bool(false) | Value::Null => true,
            Value::Array(items) => {
                for item in items {
                    visit(key, item, text, lower, missing);
                }
                true
            }
            Value::Object(map) => {
                for (k, item) in map {
                    if key == "counts" && !text.contains(k.as_str()) {
                        missing.push(format!("counts key {k}"));
                    }
                    visit(k, item, text, lower, missing);
                }
                true
            }
        };
        if !found {
            missing.push(format!("{key}: {v}"));
        }
    }
    let text = support::mcp::text_of(r);
    let mut missing = Vec::new();
    let v = r.structured_content.clone().expect("structuredContent");
    visit("", &v, &text, &text.to_lowercase(), &mut missing);
    missing
}

/// Asserts that the text of `r` says everything its JSON says; returns the text.
fn text_says_it_all(tool: &str, r: &CallToolResult) -> String {
    assert_ne!(r.is_error, Some(true), "{tool}: {:?}", r.content);
    let missing = facts_missing_from_text(r);
    let text = support::mcp::text_of(r);
    assert!(
        missing.is_empty(),
        "{tool}: the text lacks {missing:?}\ntext:\n{text}\njson: {}",
        as_model_reads(r)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fact_of_the_json_is_in_the_text_too() {
    let s = Session::start_server("max_concurrent = 1\nsession_max_tokens = 10000000").await;
    s.fake.script(
        "slow survey",
        vec![
            Step::Text {
                chunks: (0..20).map(|i| format!("line {i}\n")).collect(),
                delay_ms: 100,
            },
            Step::text("Took the follow-up in."),
        ],
    );
    s.fake.script(
        "cut short",
        vec![Step::Length {
            chunks: vec!["Half an ans".into()],
        }],
    );
    s.fake.script(
        "unpriced one",
        vec![Step::text("Done cheaply."), Step::text("Round two.")],
    );

    let first = s
        .call(
            "agent_spawn",
            json!({"task": "slow survey", "label": "first", "limits": {"max_turns": 5}}),
        )
        .await;
    let text = text_says_it_all("agent_spawn", &first);
    assert!(text.contains("Limits (not the defaults)"), "{text}");
    let first = first.structured_content.unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = s
        .call("agent_spawn", json!({"task": "cut short", "label": "cut"}))
        .await;
    let text = text_says_it_all("agent_spawn", &queued);
    assert!(text.contains("(queued)"), "{text}");
    let cut = queued.structured_content.unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let unpriced = s
        .call(
            "agent_spawn",
            json!({"task": "unpriced one", "model": "claude-unpriced-test"}),
        )
        .await;
    let text = text_says_it_all("agent_spawn", &unpriced);
    assert!(
        text.contains("\nWarning: model `claude-unpriced-test` has no price"),
        "{text}"
    );
    let unpriced = unpriced.structured_content.unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string();

    let running = s
        .call("agent_status", json!({"agent_id": first, "verbose": true}))
        .await;
    text_says_it_all("agent_status", &running);
    let sent = s
        .call(
            "agent_send",
            json!({"agent_id": first, "message": "also count them"}),
        )
        .await;
    let text = text_says_it_all("agent_send", &sent);
    if sent.structured_content.as_ref().unwrap()["status"] == "running" {
        assert!(text.contains("Messages pending: 1"), "{text}");
    }
    let queued_status = s.call("agent_status", json!({"agent_id": cut})).await;
    text_says_it_all("agent_status", &queued_status);

    let ids = [first.clone(), cut.clone(), unpriced.clone()];
    let waited = s
        .call(
            "agent_wait",
            json!({"agent_ids": ids, "mode": "all", "wait_seconds": 30}),
        )
        .await;
    let text = text_says_it_all("agent_wait", &waited);
    assert_eq!(
        waited.structured_content.as_ref().unwrap()["done"],
        true,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "## {cut} completed [cut]\nAnswer truncated: the model stopped at the token limit"
        )),
        "agent_wait flags the truncated answer: {text}"
    );

    let listed = s.call("agent_list", json!({})).await;
    let text = text_says_it_all("agent_list", &listed);
    let rows = listed.structured_content.as_ref().unwrap()["agents"].clone();
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["agent_id"] == cut.as_str()))
        .cloned()
        .expect("the cut agent's row");
    assert_eq!(row["answer_truncated"], true, "{rows}");
    assert!(
        text.contains("answer truncated at the token limit"),
        "{text}"
    );
    assert!(text.contains("Session: {"), "{text}");

    let again = s
        .call(
            "agent_send",
            json!({"agent_id": unpriced, "message": "and again", "wait_seconds": 30}),
        )
        .await;
    let text = text_says_it_all("agent_send", &again);
    assert!(text.contains("in 2 rounds"), "{text}");
    for id in &ids {
        let verbose = s
            .call("agent_status", json!({"agent_id": id, "verbose": true}))
            .await;
        let text = text_says_it_all("agent_status", &verbose);
        assert!(text.contains("\nDetails: {"), "{text}");
        let out = s.call("agent_output", json!({"agent_id": id})).await;
        text_says_it_all("agent_output", &out);
        let killed = s.call("agent_kill", json!({"agent_id": id})).await;
        text_says_it_all("agent_kill", &killed);
    }
}

/// What opencode's model reads of a tool result: its text, cut to the first 51,200 bytes.
fn as_opencode_reads(r: &CallToolResult) -> String {
    let text = support::mcp::text_of(r);
    let mut end = text.len().min(51_200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cuts_text_at_51200_bytes_pages_through_all_output() {
    let s = Session::start("").await;
    // About 60 KB (the in-memory window is 64 KiB): one JSON page of max_bytes 100,000.
    let lines: Vec<String> = (0..550)
        .map(|i| format!("{i:05} {}\n", "é".repeat(50)))
        .collect();
    s.fake.script(
        "a lot to say",
        vec![Step::Text {
            chunks: lines.clone(),
            delay_ms: 0,
        }],
    );
    let id = s.spawn("a lot to say").await;
    s.wait_all(std::slice::from_ref(&id)).await;

    // Pages as the JSON gives them: the reference.
    let mut everything = String::new();
    let mut since = 0u64;
    loop {
        let p = s
            .ok(
                "agent_output",
                json!({"agent_id": id, "since": since, "max_bytes": 100_000}),
            )
            .await;
        everything.push_str(p["text"].as_str().unwrap());
        since = p["next_cursor"].as_u64().unwrap();
        if p["truncated"] != true {
            break;
        }
    }
    assert!(everything.len() > 55_000, "{}", everything.len());
    assert!(everything.contains(&lines.concat()));

    // Pages as opencode reads them: the paging line first, the text bounded so that the
    // cut never falls inside it, and the cursor continuing where the text ends.
    let mut read = String::new();
    let mut since = 0u64;
    for page in 0.. {
        assert!(page < 20, "paging does not end");
        let r = s
            .call(
                "agent_output",
                json!({"agent_id": id, "since": since, "max_bytes": 100_000}),
            )
            .await;
        let seen = as_opencode_reads(&r);
        assert_eq!(seen, support::mcp::text_of(&r), "nothing cut off");
        let (header, body) = seen.split_once('\n').unwrap_or((seen.as_str(), ""));
        assert!(header.starts_with('[') && header.ends_with(']'), "{header}");
        read.push_str(body);
        since = header
            .split("next_cursor ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.trim_end_matches(']').parse().ok())
            .unwrap_or_else(|| panic!("no next_cursor in {header}"));
        if !header.contains("truncated") {
            break;
        }
        assert!(
            header.contains(&format!("call again with since={since}")),
            "{header}"
        );
    }
    assert_eq!(read, everything, "the text pages hold the same output");

    // Every other reply that can be long keeps its notes ahead of the cut too.
    let status = s.call("agent_status", json!({"agent_id": id})).await;
    let seen = as_opencode_reads(&status);
    let notes = seen.find("\nResult:\n").expect("the result comes last");
    assert!(
        seen[..notes].contains("result_truncated"),
        "{}",
        &seen[..notes]
    );
    let waited = s.call("agent_wait", json!({"agent_ids": [id]})).await;
    let seen = as_opencode_reads(&waited);
    assert_eq!(seen, support::mcp::text_of(&waited), "under the cut");
    assert!(seen.contains("result cut to fit"), "{seen:.600}");
}
