//! Structured answers through the server: `output_schema` on agent_spawn, agent_send and
//! roles; `result_json` in agent_status and agent_wait (rows that carry the value and
//! little else, within the reply bound); `schema_mismatch` when an answer never matches;
//! a bad schema refused before anything starts.

use serde_json::{Value, json};
use support::mcp::{Session, as_model_reads};
use support::provider::Step;
use support::schemas::findings_schema;

fn finding(file: &str, line: i64) -> Value {
    json!({"findings": [{"file": file, "line": line, "severity": "high"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_answer_is_result_json_in_status_and_in_wait_rows() {
    let s = Session::start("").await;
    let answer = finding("src/auth.rs", 42);
    s.fake.script(
        "review the auth module",
        vec![Step::text(&answer.to_string())],
    );
    let id = s
        .spawn_with(json!({"task": "review the auth module", "output_schema": findings_schema()}))
        .await;
    let waited = s.wait_all(std::slice::from_ref(&id)).await;
    let row = &waited["agents"][0];
    assert_eq!(row["status"], "completed", "{waited}");
    assert_eq!(row["result_json"], answer, "{waited}");
    assert!(
        row.get("result").is_none(),
        "a structured row carries the value, not the text too: {row}"
    );

    let st = s.status(&id).await;
    assert_eq!(st["result_json"], answer, "{st}");
    assert_eq!(
        serde_json::from_str::<Value>(st["result"].as_str().expect("result")).ok(),
        Some(answer),
        "{st}"
    );
    let request = &s.fake.requests_for("review the auth module")[0];
    assert_eq!(
        request.body["output_config"]["format"]["type"], "json_schema",
        "{}",
        request.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_matches_fails_with_schema_mismatch_and_stays_readable() {
    let s = Session::start("").await;
    s.fake.script(
        "review the cache module",
        vec![
            Step::text(&finding("src/cache.rs", 0).to_string()),
            Step::text("Nothing serious."),
            Step::text(&finding("src/cache.rs", -1).to_string()),
        ],
    );
    let id = s
        .spawn_with(json!({"task": "review the cache module", "output_schema": findings_schema()}))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let st = s.status(&id).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["exit"]["reason"], "schema_mismatch", "{st}");
    let error = st["error"].as_str().expect("error");
    assert!(
        error.contains("does not match output_schema after 2 corrections"),
        "{error}"
    );
    assert!(st.get("result_json").is_none(), "{st}");
    let out = s.ok("agent_output", json!({"agent_id": id})).await;
    let text = out["text"].as_str().expect("text");
    assert!(
        text.contains(r#""line":-1"#),
        "the last answer is not readable in agent_output: {text}"
    );
    assert_eq!(s.fake.request_count("review the cache module"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_output_schema_is_a_spawn_error_and_starts_nothing() {
    let s = Session::start("").await;
    for (schema, says) in [
        (
            json!({"type": "objekt"}),
            "output_schema is not a valid JSON Schema",
        ),
        (
            json!("findings"),
            "output_schema must be a JSON Schema object",
        ),
        (
            json!({"type": "object", "description": "x".repeat(20_000)}),
            "above the 16384-byte limit",
        ),
    ] {
        let e = s
            .tool_error(
                "agent_spawn",
                json!({"task": "review it", "output_schema": schema}),
            )
            .await;
        assert!(e.contains(says), "{e}");
    }
    let (list, rows) = s.list_all(json!({})).await;
    assert!(rows.is_empty(), "{list}");
    assert_eq!(s.fake.request_count("review it"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_wait_over_20_structured_agents_stays_within_the_reply_bound() {
    let s = Session::start("max_concurrent = 20\n").await;
    // About 900 chars a value: 20 of them do not fit one reply, so rows page.
    let answer = |i: usize| {
        let findings: Vec<Value> = (1..=12)
            .map(|l| json!({"file": format!("src/module_{i}.rs"), "line": l, "severity": "low"}))
            .collect();
        json!({ "findings": findings })
    };
    let mut ids = Vec::new();
    for i in 0..20 {
        let task = format!("structured review number {i:02}");
        s.fake
            .script(&task, vec![Step::text(&answer(i).to_string())]);
        ids.push(
            s.spawn_with(json!({"task": task, "output_schema": findings_schema()}))
                .await,
        );
    }
    s.wait_all(&ids).await;
    let mut got = Vec::new();
    let mut offset = 0;
    for _ in 0..20 {
        let r = s
            .call(
                "agent_wait",
                json!({"agent_ids": ids, "wait_seconds": 1, "offset": offset}),
            )
            .await;
        let compact = as_model_reads(&r);
        assert!(
            compact.chars().count() < 20_000,
            "an agent_wait reply is {} chars",
            compact.chars().count()
        );
        let v = r.structured_content.expect("structuredContent");
        for row in v["agents"].as_array().expect("agents") {
            assert!(row.get("result").is_none(), "{row}");
            got.push(row["result_json"].clone());
        }
        match v["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    assert!(
        offset > 0,
        "20 values of ~900 chars should not fit one reply"
    );
    let want: Vec<Value> = (0..20).map(answer).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_default_schema_applies_and_a_spawn_overrides_it() {
    let role = "[roles.reviewer.output_schema]\ntype = \"object\"\nrequired = [\"findings\"]\n\
                [roles.reviewer.output_schema.properties.findings]\ntype = \"array\"\n";
    let s = Session::start(role).await;
    s.fake.script(
        "check the role schema",
        vec![Step::text(r#"{"findings": []}"#)],
    );
    s.fake
        .script("check my own schema", vec![Step::text(r#"{"ok": true}"#)]);
    let by_role = s
        .spawn_with(json!({"task": "check the role schema", "role": "reviewer"}))
        .await;
    let own =
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]});
    let by_spawn = s
        .spawn_with(
            json!({"task": "check my own schema", "role": "reviewer", "output_schema": own}),
        )
        .await;
    s.wait_all(&[by_role.clone(), by_spawn.clone()]).await;
    assert_eq!(
        s.status(&by_role).await["result_json"],
        json!({"findings": []})
    );
    assert_eq!(
        s.status(&by_spawn).await["result_json"],
        json!({"ok": true})
    );
    let sent = &s.fake.requests_for("check my own schema")[0];
    assert!(
        sent.body["output_config"]["format"]["schema"]["properties"]
            .get("ok")
            .is_some(),
        "{}",
        sent.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_send_with_output_schema_structures_the_next_rounds() {
    let s = Session::start("").await;
    s.fake.script(
        "look at the parser",
        vec![
            Step::text("The parser has two bugs."),
            Step::text(&finding("src/parse.rs", 7).to_string()),
            Step::text(&finding("src/lex.rs", 3).to_string()),
        ],
    );
    let id = s.spawn("look at the parser").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let e = s
        .tool_error(
            "agent_send",
            json!({"agent_id": id, "message": "as JSON", "output_schema": {"type": 7}}),
        )
        .await;
    assert!(
        e.contains("output_schema is not a valid JSON Schema"),
        "{e}"
    );
    let answered = s
        .ok(
            "agent_send",
            json!({"agent_id": id, "message": "List them as findings.", "output_schema": findings_schema(), "wait_seconds": 30}),
        )
        .await;
    assert_eq!(answered["status"], "completed", "{answered}");
    assert_eq!(
        answered["result_json"],
        finding("src/parse.rs", 7),
        "{answered}"
    );
    // Later rounds keep the schema the follow-up gave.
    let again = s
        .ok(
            "agent_send",
            json!({"agent_id": id, "message": "And in the lexer?", "wait_seconds": 30}),
        )
        .await;
    assert_eq!(again["result_json"], finding("src/lex.rs", 3), "{again}");
    let requests = s.fake.requests_for("look at the parser");
    assert!(
        requests
            .last()
            .expect("requests")
            .body
            .get("output_config")
            .is_some(),
        "the third round was not asked for the schema"
    );
}
