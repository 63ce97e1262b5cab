//! Structured answers (`--output-schema FILE`, a spec's `output_schema`): the schema goes
//! to each API in its own structured-output parameter (Anthropic `output_config.format`,
//! OpenAI `response_format`), the answer is validated, an invalid one is sent back with its
//! errors (twice at most), and one that never matches ends `schema_mismatch` (exit 4). A
//! provider that refuses the parameter gets the answer asked for through a final tool.

use crate::common;

use bg_agent_worker::protocol::{ErrorKind, Event, exit};
use common::{Harness, OPENAI_KEY, Step, run, tool_use};
use serde_json::{Value, json};
use support::provider::Quirks;
use support::schemas::findings_schema;

const VALID: &str = r#"{"findings":[{"file":"src/lib.rs","line":12,"severity":"high"}]}"#;
/// Matches the schema as the API enforces it, but line 0 is below the minimum.
const LINE_ZERO: &str = r#"{"findings":[{"file":"src/lib.rs","line":0,"severity":"high"}]}"#;

#[derive(Clone, Copy, Debug)]
enum Api {
    Anthropic,
    OpenAi,
}

/// `bg-agent-worker --json --output-schema SCHEMA TASK` on `api`.
async fn run_structured(h: &Harness, api: Api, schema: &Value, task: &str) -> common::Run {
    let schema_file = h.write("schema.json", &schema.to_string());
    let schema_arg = schema_file.to_str().expect("utf-8 path").to_string();
    let config = h.openai_config();
    let mut args = vec!["--json", "--output-schema", &schema_arg];
    if let Api::OpenAi = api {
        args.extend([
            "--tier",
            "fast",
            "--config",
            config.to_str().expect("utf-8"),
        ]);
    }
    args.push(task);
    let mut cmd = h.worker(&args);
    cmd.env("OPENAI_API_KEY", OPENAI_KEY);
    run(cmd).await
}

fn result_json(r: &common::Run) -> Value {
    match r.last() {
        Event::Result {
            result_json: Some(v),
            ..
        } => v,
        other => panic!("no result_json: {other:?}\n{}", r.dump()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_answer_comes_back_as_its_json_value_on_both_apis() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let h = Harness::start().await;
        h.fake.script("review lib", vec![Step::text(VALID)]);
        let r = run_structured(&h, api, &findings_schema(), "review lib").await;
        assert_eq!(r.code, Some(exit::DONE), "{api:?}: {}", r.dump());
        assert_eq!(
            result_json(&r),
            serde_json::from_str::<Value>(VALID).unwrap()
        );
        let request = &h.fake.requests_for("review lib")[0];
        match api {
            Api::Anthropic => {
                // The API's subset: objects closed, `minimum` moved into the description.
                let format = &request.body["output_config"]["format"];
                assert_eq!(format["type"], "json_schema", "{}", request.body);
                let line =
                    &format["schema"]["properties"]["findings"]["items"]["properties"]["line"];
                assert!(line.get("minimum").is_none(), "{line}");
                assert_eq!(line["description"], "(minimum: 1)");
                assert_eq!(format["schema"]["additionalProperties"], false);
            }
            Api::OpenAi => {
                let format = &request.body["response_format"];
                assert_eq!(format["type"], "json_schema", "{}", request.body);
                assert_eq!(format["json_schema"]["name"], "answer");
                assert_eq!(format["json_schema"]["schema"], findings_schema());
                // Not strict: OpenAI's strict mode would refuse these open objects.
                assert_eq!(format["json_schema"]["strict"], false);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_schema_is_strict_on_openai() {
    let h = Harness::start().await;
    let schema = json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": false
    });
    h.fake
        .script("is it ok", vec![Step::text(r#"{"ok": true}"#)]);
    let r = run_structured(&h, Api::OpenAi, &schema, "is it ok").await;
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert_eq!(result_json(&r), json!({"ok": true}));
    let request = &h.fake.requests_for("is it ok")[0];
    assert_eq!(
        request.body["response_format"]["json_schema"]["strict"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_answer_is_sent_back_with_its_errors_and_corrected() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let h = Harness::start().await;
        h.fake
            .script("review lib", vec![Step::text(LINE_ZERO), Step::text(VALID)]);
        let r = run_structured(&h, api, &findings_schema(), "review lib").await;
        assert_eq!(r.code, Some(exit::DONE), "{api:?}: {}", r.dump());
        assert_eq!(result_json(&r)["findings"][0]["line"], 12);
        assert!(
            matches!(r.last(), Event::Result { turns: 2, .. }),
            "{}",
            r.dump()
        );
        let requests = h.fake.requests_for("review lib");
        assert_eq!(requests.len(), 2, "{api:?}: {}", r.dump());
        let correction = requests[1].last_user_text();
        assert!(
            correction.contains("at /findings/0/line:") && correction.contains("minimum"),
            "{api:?}: the correction does not say what is wrong: {correction}"
        );
        assert!(
            r.text().contains("asked again, correction 1 of 2"),
            "{api:?}: the output does not say the answer was sent back: {}",
            r.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_matches_ends_schema_mismatch_with_the_last_answer_readable() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let h = Harness::start().await;
        let last = r#"{"findings":[{"file":"src/lib.rs","line":-3,"severity":"high"}]}"#;
        h.fake.script(
            "review lib",
            vec![
                Step::text(LINE_ZERO),
                Step::text("No findings, the code is fine."),
                Step::text(last),
            ],
        );
        let r = run_structured(&h, api, &findings_schema(), "review lib").await;
        assert_eq!(r.code, Some(exit::SCHEMA_MISMATCH), "{api:?}: {}", r.dump());
        match r.last() {
            Event::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::SchemaMismatch);
                assert!(message.contains("after 2 corrections"), "{message}");
                assert!(message.contains("at /findings/0/line:"), "{message}");
            }
            other => panic!("{api:?}: not an error: {other:?}"),
        }
        assert_eq!(h.fake.request_count("review lib"), 3, "{}", r.dump());
        assert!(
            r.text().ends_with(last),
            "{api:?}: last answer not readable: {}",
            r.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schema_is_refused_before_any_request() {
    let h = Harness::start().await;
    for (schema, says) in [
        (
            json!({"type": "objekt"}),
            "output_schema is not a valid JSON Schema: at /type:",
        ),
        (
            json!(["findings"]),
            "output_schema must be a JSON Schema object",
        ),
        (
            json!({"type": "object", "description": "x".repeat(17 * 1024)}),
            "above the 16384-byte limit",
        ),
    ] {
        let r = run_structured(&h, Api::Anthropic, &schema, "review lib").await;
        assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
        match r.last() {
            Event::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::Config);
                assert!(message.contains(says), "{message}");
            }
            other => panic!("not an error: {other:?}"),
        }
    }
    let not_json = h.write("prose.json", "findings, please");
    let r = run(h.worker(&[
        "--json",
        "--output-schema",
        not_json.to_str().expect("utf-8"),
        "review lib",
    ]))
    .await;
    assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
    assert!(r.stdout.contains("is not JSON"), "{}", r.dump());
    assert_eq!(h.fake.request_count("review lib"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_prints_the_json_value_alone() {
    let h = Harness::start().await;
    h.fake
        .script("review lib", vec![Step::text(LINE_ZERO), Step::text(VALID)]);
    let schema = h.write("schema.json", &findings_schema().to_string());
    let r = run(h.worker(&[
        "--output-schema",
        schema.to_str().expect("utf-8"),
        "review lib",
    ]))
    .await;
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let printed: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON value ({e}): {}", r.dump()));
    assert_eq!(printed, serde_json::from_str::<Value>(VALID).unwrap());
    assert!(r.stderr.contains("2 turns"), "{}", r.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_structured_outputs_the_answer_comes_through_a_forced_final_tool() {
    for api in [Api::Anthropic, Api::OpenAi] {
        let h = Harness::start().await;
        h.fake.set_quirks(Quirks {
            no_structured_output: true,
            ..Default::default()
        });
        let line_zero: Value = serde_json::from_str(LINE_ZERO).unwrap();
        let valid: Value = serde_json::from_str(VALID).unwrap();
        h.fake.script(
            "review lib",
            vec![
                Step::text("One bug, in src/lib.rs at line 12."),
                tool_use("call_1", "final_answer", line_zero),
                tool_use("call_2", "final_answer", valid.clone()),
            ],
        );
        let r = run_structured(&h, api, &findings_schema(), "review lib").await;
        assert_eq!(r.code, Some(exit::DONE), "{api:?}: {}", r.dump());
        assert_eq!(result_json(&r), valid, "{api:?}");
        let requests = h.fake.requests_for("review lib");
        assert_eq!(requests.len(), 4, "{api:?}: {}", r.dump());
        // The refused parameter, then the tool: offered, and forced after each miss.
        let native = match api {
            Api::Anthropic => "output_config",
            Api::OpenAi => "response_format",
        };
        assert!(requests[0].body.get(native).is_some(), "{api:?}");
        for (i, request) in requests.iter().enumerate().skip(1) {
            assert!(request.body.get(native).is_none(), "{api:?} #{i}");
            assert!(
                request.tools.iter().any(|t| t == "final_answer"),
                "{api:?} #{i}: {:?}",
                request.tools
            );
            let forced = request.body["tool_choice"]
                .to_string()
                .contains("final_answer");
            assert_eq!(
                forced,
                i >= 2,
                "{api:?} #{i}: {}",
                request.body["tool_choice"]
            );
        }
        assert_eq!(requests[3].last_user_text(), "tool results received");
        assert!(
            requests[3]
                .body
                .to_string()
                .contains("at /findings/0/line:"),
            "{api:?}: the tool result does not say what is wrong"
        );
        assert!(
            r.text().contains("through a `final_answer` tool"),
            "{api:?}: {}",
            r.text()
        );
    }
}
