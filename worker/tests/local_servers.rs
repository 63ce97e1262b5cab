//! Providers as they really are: OpenAI-compatible local servers with their quirks
//! (llama-cpp-python, llama.cpp's server), slow healthy streams, answers cut at the token
//! limit, and provider errors that must say what to do. The fake reproduces each quirk;
//! one test each, so none can come back.

use crate::common;

use std::path::{Path, PathBuf};

use bg_agent_worker::protocol::{ErrorKind, Event, UsageReport, exit};
use common::{FakeProvider, Harness, Step, run, tool_use};
use serde_json::json;
use support::provider::Quirks;

/// A config with provider `local` (OpenAI-compatible, no key) at `base_url`; the model is
/// named `local/tiny` on the command line. `extra` is appended.
fn local_config(h: &Harness, base_url: &str, timeout_s: u64, extra: &str) -> PathBuf {
    h.write(
        "local.toml",
        &format!(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"{base_url}\"\n\
             max_retries = 0\nrequest_timeout_seconds = {timeout_s}\n{extra}"
        ),
    )
}

/// `local_config` with 2 retries a turn: for tests that show a failure is not retried.
fn retrying_local_config(h: &Harness) -> PathBuf {
    h.write(
        "local-retrying.toml",
        &format!(
            "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\nmax_retries = 2\nrequest_timeout_seconds = 30\n",
            h.fake.openai_base_url()
        ),
    )
}

/// `bg-agent-worker --model local/tiny --config CONFIG [--json] TASK`.
async fn run_local(h: &Harness, config: &Path, json: bool, task: &str) -> common::Run {
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec!["--model", "local/tiny", "--config", config];
    if json {
        args.push("--json");
    }
    args.push(task);
    run(h.worker(&args)).await
}

fn result(r: &common::Run) -> (String, String) {
    match r.last() {
        Event::Result {
            text, stop_reason, ..
        } => (text, stop_reason),
        other => panic!("not a result: {other:?}\n{}", r.dump()),
    }
}

fn error(r: &common::Run) -> (ErrorKind, String) {
    match r.last() {
        Event::Error { kind, message } => (kind, message),
        other => panic!("not an error: {other:?}\n{}", r.dump()),
    }
}

fn last_usage(r: &common::Run) -> (u64, u64, Option<f64>, bool) {
    r.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Usage(UsageReport {
                input_tokens,
                output_tokens,
                cost_usd,
                estimated,
                ..
            }) => Some((input_tokens, output_tokens, cost_usd, estimated)),
            _ => None,
        })
        .next_back()
        .expect("a usage event")
}

fn glob_then_answer(h: &Harness, needle: &str) {
    h.write("workspace/src/lib.rs", "pub fn a() {}\n");
    h.fake.script(
        needle,
        vec![
            tool_use("call_1", "glob", json!({"pattern": "**/*.rs"})),
            Step::text("One Rust file."),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_name_repeated_in_every_chunk_is_taken_once() {
    let h = Harness::start().await;
    h.fake.set_quirks(Quirks {
        repeat_tool_name: true,
        ..Default::default()
    });
    glob_then_answer(&h, "repeat the name");
    let config = local_config(&h, &h.fake.openai_base_url(), 30, "");

    let r = run_local(&h, &config, true, "repeat the name").await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let results = r.tool_results();
    assert_eq!(results.len(), 1, "{}", r.dump());
    assert!(
        matches!(&results[0], Event::ToolResult { name, is_error: false, .. } if name == "glob"),
        "{:?}",
        results[0]
    );
    assert_eq!(result(&r).0, "One Rust file.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_offered_without_tool_choice_so_llama_cpp_python_answers() {
    let h = Harness::start().await;
    h.fake.set_quirks(Quirks {
        empty_on_streaming_auto_tool_choice: true,
        repeat_tool_name: true,
        no_usage: true,
        ..Default::default()
    });
    glob_then_answer(&h, "no tool choice");
    let config = retrying_local_config(&h);

    let r = run_local(&h, &config, true, "no tool choice").await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert!(r.retries().is_empty(), "no empty 200: {}", r.dump());
    assert_eq!(r.tool_results().len(), 1, "{}", r.dump());
    assert_eq!(result(&r).0, "One Rust file.");
    let requests = h.fake.requests_for("no tool choice");
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.body["tools"][0]["type"], "function");
        assert_eq!(
            request.body.get("tool_choice"),
            None,
            "OpenAI's default is already auto: {}",
            request.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_200_is_not_retried_and_points_at_the_server_log() {
    let h = Harness::start().await;
    h.fake.script(
        "refused quietly",
        vec![Step::Empty, Step::text("a retry would get this")],
    );
    let config = retrying_local_config(&h);

    let r = run_local(&h, &config, true, "refused quietly").await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    assert!(r.retries().is_empty(), "{}", r.dump());
    assert_eq!(h.fake.request_count("refused quietly"), 1);
    let message = error(&r).1;
    assert!(
        message.contains("empty stream for model `tiny`"),
        "{message}"
    );
    assert!(message.contains("not retried"), "{message}");
    assert!(message.contains("Its log says why"), "{message}");
    assert!(message.contains("context size"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_cut_at_the_token_limit_ends_truncated_and_is_never_retried() {
    let h = Harness::start().await;
    let cut = |text: Option<&str>| Step::ToolUseCut {
        text: text.map(str::to_string),
        id: "call_1".into(),
        name: "read_file".into(),
        input: json!({"path": "src/a_rather_long_file_name.rs", "offset": 1}),
    };
    h.fake
        .script("cut with words", vec![cut(Some("Reading the file first."))]);
    h.fake
        .script("cut mute", vec![cut(None), Step::text("never")]);
    h.fake.script(
        "cut on anthropic",
        vec![cut(Some("Reading the file first."))],
    );
    let config = retrying_local_config(&h);

    // Text before the cut call: a truncated answer, the call not run.
    let r = run_local(&h, &config, true, "cut with words").await;
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert_eq!(
        result(&r),
        ("Reading the file first.".into(), "max_tokens".into())
    );
    assert!(r.tool_results().is_empty(), "{}", r.dump());
    assert!(r.retries().is_empty(), "{}", r.dump());
    assert_eq!(h.fake.request_count("cut with words"), 1);

    // Nothing but the cut call: an error that names the limit and the call.
    let r = run_local(&h, &config, true, "cut mute").await;
    assert_eq!(r.code, Some(exit::BUDGET), "{}", r.dump());
    assert!(r.retries().is_empty(), "{}", r.dump());
    assert_eq!(h.fake.request_count("cut mute"), 1);
    let (kind, message) = error(&r);
    assert_eq!(kind, ErrorKind::BudgetExceeded);
    assert!(
        message.contains("cut at the token limit (max_tokens"),
        "{message}"
    );
    assert!(
        message.contains("inside its call to `read_file`"),
        "{message}"
    );
    assert!(message.contains("larger limits.max_tokens"), "{message}");

    // The same on the Anthropic API (stop_reason max_tokens inside a tool_use block).
    let r = run(h.worker(&["--json", "cut on anthropic"])).await;
    assert_eq!(
        result(&r),
        ("Reading the file first.".into(), "max_tokens".into()),
        "{}",
        r.dump()
    );
    assert!(r.retries().is_empty(), "{}", r.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tool_arguments_are_a_tool_error_the_model_corrects() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "first line\nsecond line\n");
    h.fake.script(
        "sloppy json",
        vec![
            Step::ToolUseRaw {
                id: "call_1".into(),
                name: "read_file".into(),
                arguments: "{\"path\": \"notes.txt\", \"offset\": }".into(),
            },
            // llama-cpp-python's grammar ignores `minimum`: small models send offset 0.
            tool_use(
                "call_2",
                "read_file",
                json!({"path": "notes.txt", "offset": 0}),
            ),
            Step::text("It has two lines."),
        ],
    );
    let config = retrying_local_config(&h);

    let r = run_local(&h, &config, true, "sloppy json").await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert!(
        r.retries().is_empty(),
        "not a retry of the turn: {}",
        r.dump()
    );
    let results: Vec<bool> = r
        .tool_results()
        .into_iter()
        .map(|e| match e {
            Event::ToolResult { is_error, .. } => is_error,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(results, vec![true, false], "{}", r.dump());
    let requests = h.fake.requests_for("sloppy json");
    assert_eq!(requests.len(), 3);
    let tool_message = |i: usize| {
        requests[i].body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "tool"))
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .expect("a tool message")
    };
    let corrected = tool_message(1);
    assert!(
        corrected.starts_with("Error: the arguments of `read_file` are not valid JSON"),
        "{corrected}"
    );
    assert!(corrected.contains("call `read_file` again"), "{corrected}");
    // What the model wrote goes back as it wrote it.
    let sent_back = requests[1].body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "assistant"))
        .map(|m| m["tool_calls"][0]["function"]["arguments"].clone())
        .expect("the call is sent back");
    assert_eq!(sent_back, "{\"path\": \"notes.txt\", \"offset\": }");
    let read = tool_message(2);
    assert!(read.starts_with("1\tfirst line\n2\tsecond line"), "{read}");
    assert_eq!(result(&r).0, "It has two lines.");

    // The same on the Anthropic API, which takes a tool_use input only as an object.
    h.fake.script(
        "sloppy on anthropic",
        vec![
            Step::ToolUseRaw {
                id: "toolu_1".into(),
                name: "read_file".into(),
                arguments: "{\"path\": ".into(),
            },
            Step::text("Corrected."),
        ],
    );
    let r = run(h.worker(&["--json", "sloppy on anthropic"])).await;
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert!(r.retries().is_empty(), "{}", r.dump());
    let requests = h.fake.requests_for("sloppy on anthropic");
    assert_eq!(requests.len(), 2, "{}", r.dump());
    let sent_back = &requests[1].body["messages"][1]["content"][0];
    assert_eq!(sent_back["type"], "tool_use");
    assert_eq!(sent_back["input"], json!({}));
    let results = common::anthropic_tool_results(&requests[1]);
    assert!(
        results[0].2 && results[0].1.contains("are not valid JSON"),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_final_answer_is_an_error_not_a_success() {
    let h = Harness::start().await;
    h.fake.script(
        "say nothing",
        vec![Step::Text {
            chunks: vec![],
            delay_ms: 0,
        }],
    );
    let config = local_config(&h, &h.fake.openai_base_url(), 30, "");

    let r = run_local(&h, &config, true, "say nothing").await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    let (kind, message) = error(&r);
    assert_eq!(kind, ErrorKind::Provider);
    assert!(
        message.starts_with("the model ended turn 1 with no text and no tool call"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assistant_tool_call_message_has_empty_content() {
    let h = Harness::start().await;
    h.fake.set_quirks(Quirks {
        reject_null_content: true,
        ..Default::default()
    });
    glob_then_answer(&h, "no null content");
    let config = local_config(&h, &h.fake.openai_base_url(), 30, "");

    let r = run_local(&h, &config, true, "no null content").await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert!(r.retries().is_empty(), "no HTTP 500: {}", r.dump());
    let requests = h.fake.requests_for("no null content");
    assert_eq!(requests.len(), 2);
    let assistant = requests[1].body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "assistant"))
        .cloned()
        .expect("the tool call is sent back");
    assert_eq!(assistant["content"], "");
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "glob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_usage_is_estimated_marked_and_priced() {
    let h = Harness::start().await;
    h.fake.set_quirks(Quirks {
        no_usage: true,
        ..Default::default()
    });
    h.fake
        .script("no usage here", vec![Step::text("A short answer.")]);
    let priced = "[pricing.\"tiny\"]\ninput = 1.0\noutput = 2.0\n";
    let config = local_config(&h, &h.fake.openai_base_url(), 30, priced);

    let r = run_local(&h, &config, true, "no usage here").await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let (input, output, cost, estimated) = last_usage(&r);
    assert!(estimated, "{}", r.dump());
    // The request body is at least the system prompt and tools: well over 100 tokens.
    assert!(input > 100, "input estimated from the bytes sent: {input}");
    assert_eq!(output, "A short answer.".len().div_ceil(4) as u64);
    let expected = (input as f64 * 1.0 + output as f64 * 2.0) / 1e6;
    assert!(
        cost.is_some_and(|c| (c - expected).abs() < 1e-12),
        "{cost:?}"
    );

    let human = run_local(&h, &config, false, "no usage here").await;
    let last = human.stdout.lines().last().unwrap_or_default().to_string();
    assert!(last.contains("tokens (estimated)"), "{}", human.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_in_a_last_chunk_with_empty_choices_is_read() {
    let h = Harness::start().await;
    h.fake.script("usage at the end", vec![Step::text("Done.")]);
    let config = local_config(&h, &h.fake.openai_base_url(), 30, "");

    let r = run_local(&h, &config, true, "usage at the end").await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let (input, output, cost, estimated) = last_usage(&r);
    assert!(!estimated, "the server sent usage: {}", r.dump());
    // The fake counts a quarter of the request body, at least 1; output "Done." is 1.
    let body_len = h.fake.requests_for("usage at the end")[0]
        .body
        .to_string()
        .len() as u64;
    assert!(
        input >= body_len / 4 - 2 && input <= body_len / 4 + 2,
        "{input} vs {body_len}"
    );
    assert_eq!(output, 1);
    assert_eq!(cost, None, "tiny has no price");
    assert!(
        r.stderr.contains("budget_usd ($1) cannot be enforced"),
        "an unpriced model's budget warning: {}",
        r.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_cut_at_the_token_limit_is_reported_on_both_apis() {
    let h = Harness::start().await;
    let cut = || Step::Length {
        chunks: vec!["The answer starts".into(), " and then".into()],
    };
    h.fake.script("cut me short", vec![cut(), cut(), cut()]);
    let config = local_config(&h, &h.fake.openai_base_url(), 30, "");

    let openai = run_local(&h, &config, true, "cut me short").await;
    assert_eq!(openai.code, Some(exit::DONE), "{}", openai.dump());
    assert_eq!(result(&openai).1, "max_tokens", "finish_reason length");

    let anthropic = run(h.worker(&["--json", "cut me short"])).await;
    assert_eq!(anthropic.code, Some(exit::DONE), "{}", anthropic.dump());
    assert_eq!(result(&anthropic).1, "max_tokens");

    let human = run(h.worker(&["cut me short"])).await;
    assert!(
        human
            .stdout
            .contains("the answer was cut at the token limit"),
        "{}",
        human.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_healthy_stream_longer_than_the_request_timeout_completes() {
    let h = Harness::start().await;
    let chunks: Vec<String> = (0..6).map(|i| format!("part {i}. ")).collect();
    h.fake.script(
        "slow but steady",
        vec![Step::Text {
            chunks: chunks.clone(),
            delay_ms: 400,
        }],
    );
    let config = local_config(&h, &h.fake.openai_base_url(), 1, "");

    let started = std::time::Instant::now();
    let r = run_local(&h, &config, true, "slow but steady").await;

    assert!(
        started.elapsed() > std::time::Duration::from_secs(2),
        "the stream ran past the 1 s request timeout"
    );
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert!(r.retries().is_empty(), "{}", r.dump());
    assert_eq!(result(&r).0, chunks.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_times_out_as_a_timeout_naming_the_key() {
    let h = Harness::start().await;
    h.fake.script(
        "goes silent",
        vec![Step::Hang {
            after_chunks: vec!["Thinking".into()],
        }],
    );
    let config = local_config(&h, &h.fake.openai_base_url(), 1, "");

    let r = run_local(&h, &config, true, "goes silent").await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    let (kind, message) = error(&r);
    assert_eq!(kind, ErrorKind::Provider);
    assert!(
        message.starts_with("timed out: the stream went silent"),
        "{message}"
    );
    assert!(
        message.contains("[providers.local] request_timeout_seconds"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_stream_names_the_url_and_model() {
    let h = Harness::start().await;
    h.fake.script("empty please", vec![Step::Empty]);
    let config = local_config(&h, &h.fake.openai_base_url(), 30, "");

    let r = run_local(&h, &config, true, "empty please").await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    let message = error(&r).1;
    let url = format!("{}/chat/completions", h.fake.openai_base_url());
    assert!(
        message.contains(&format!(
            "{url} answered HTTP 200 with an empty stream for model `tiny`"
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_connection_refused_name_the_url_and_model() {
    let h = Harness::start().await;
    // The path /v2/... is not the API's: the fake answers 404.
    let wrong = format!("{}/v2", h.fake.base_url());
    let config = local_config(&h, &wrong, 30, "");
    let r = run_local(&h, &config, true, "wrong path").await;
    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    let message = error(&r).1;
    assert!(
        message.starts_with(&format!(
            "HTTP 404 from {wrong}/chat/completions (model `tiny`)"
        )),
        "{message}"
    );
    assert!(message.contains("[providers.local] base_url"), "{message}");

    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let refused = format!("http://127.0.0.1:{port}/v1");
    let config = local_config(&h, &refused, 30, "");
    let r = run_local(&h, &config, true, "nobody home").await;
    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    let message = error(&r).1;
    assert!(
        message.starts_with(&format!(
            "cannot connect to {refused}/chat/completions (model `tiny`); is the server running?"
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_so_the_key_never_reaches_another_origin() {
    let h = Harness::start().await;
    let elsewhere = FakeProvider::start().await;
    h.fake.script(
        "redirect me",
        vec![Step::Redirect {
            location: format!("{}/v1/messages", elsewhere.base_url()),
        }],
    );

    let r = run(h.worker(&["--json", "redirect me"])).await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    assert!(
        elsewhere.requests().is_empty(),
        "the other origin got a request"
    );
    let message = error(&r).1;
    assert!(message.starts_with("HTTP 307 from "), "{message}");
    assert!(message.contains(&elsewhere.base_url()), "{message}");
    assert!(
        message.contains("[providers.anthropic] base_url"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_runs_error_reads_error_colon_on_stderr() {
    let h = Harness::start().await;
    h.fake.script("refused", vec![Step::status(400)]);

    let r = run(h.worker(&["refused"])).await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    assert!(
        r.stderr
            .starts_with("error: HTTP 400: invalid_request_error: Invalid request"),
        "{}",
        r.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_far_past_max_tokens_is_cut_when_the_server_ignores_it() {
    let h = Harness::start().await;
    // 60 chunks of 100 bytes: about 1500 tokens, from a server that ignores max_tokens.
    let chunks: Vec<String> = (0..60).map(|_| "word ".repeat(20)).collect();
    h.fake.script(
        "never stops",
        vec![Step::Text {
            chunks,
            delay_ms: 0,
        }],
    );
    // $1000 per million output tokens: a $0.05 budget buys 50 output tokens.
    let priced = "[pricing.\"tiny\"]\ninput = 0.0\noutput = 1000.0\n";
    let config = local_config(&h, &h.fake.openai_base_url(), 30, priced);
    let config_arg = config.to_str().expect("utf-8 path");

    let r = run(h.worker(&[
        "--json",
        "--model",
        "local/tiny",
        "--config",
        config_arg,
        "--budget-usd",
        "0.05",
        "never stops",
    ]))
    .await;

    assert_eq!(
        h.fake.requests_for("never stops")[0].max_tokens,
        Some(50),
        "max_tokens lowered to the budget"
    );
    let (text, stop_reason) = result(&r);
    assert_eq!(stop_reason, "max_tokens", "{}", r.dump());
    // Cut at 2 × 50 + 64 estimated tokens: 4 bytes each, plus at most one chunk.
    assert!(
        text.len() <= (2 * 50 + 64) * 4 + 100,
        "{} bytes",
        text.len()
    );
    assert!(text.len() < 6000);
}
