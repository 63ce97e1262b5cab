//! Providers through the server: any model named plainly, what a spawn says about its
//! provider and budget, answers cut at the token limit, and many agents sharing one
//! rate-limited provider (per-provider caps and holds after a 429).

use serde_json::{Value, json};
use support::mcp::Session;
use support::provider::{Quirks, Step};

/// `[providers.local]`: OpenAI-compatible, no key, at the fake; `extra` lines appended to
/// the table.
fn local_provider(s_base_url: &str, extra: &str) -> String {
    format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{s_base_url}\"\nmax_retries = 8\nrequest_timeout_seconds = 30\n{extra}\n"
    )
}

/// The fake's address is only known once the session has started it; the server reads
/// its config at start. So sessions that need `local` point it at a second fake.
async fn second_fake() -> support::provider::FakeProvider {
    support::provider::FakeProvider::start().await
}

fn id_of(v: &Value) -> String {
    v["agent_id"].as_str().expect("agent_id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_named_in_the_model_runs_there_and_an_unpriced_budget_is_flagged() {
    let local = second_fake().await;
    local.set_quirks(Quirks {
        no_usage: true,
        ..Default::default()
    });
    local.script(
        "Summarize the notes",
        vec![Step::Length {
            chunks: vec!["The notes say".into(), " that".into()],
        }],
    );
    let s = Session::start(&local_provider(&local.openai_base_url(), "")).await;

    let spawned = s
        .ok(
            "agent_spawn",
            json!({ "task": "Summarize the notes", "model": "local/tiny" }),
        )
        .await;
    assert_eq!(spawned["provider"], "local", "{spawned}");
    assert_eq!(spawned["model"], "tiny", "{spawned}");
    assert!(
        spawned["routing_reason"]
            .as_str()
            .is_some_and(|r| r.contains("provider `local` named in the model")),
        "{spawned}"
    );
    let warnings = spawned["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{spawned}");
    let warning = warnings[0].as_str().unwrap_or_default();
    assert!(
        warning.contains("budget_usd ($1) cannot be enforced"),
        "{warning}"
    );
    assert!(warning.contains("[pricing.\"tiny\"]"), "{warning}");

    let id = id_of(&spawned);
    s.wait_all(std::slice::from_ref(&id)).await;
    let st = s.status(&id).await;
    assert_eq!(st["status"], "completed", "{st}");
    assert_eq!(st["usage"]["estimated"], true, "{st}");
    assert!(
        st["usage"]["input_tokens"].as_u64().unwrap_or(0) > 0,
        "{st}"
    );
    assert!(
        st["answer_truncated"]
            .as_str()
            .is_some_and(|t| t.contains("stopped at the token limit")),
        "{st}"
    );
    assert_eq!(local.requests().len(), 1);
    assert!(s.fake.requests().is_empty(), "nothing went to anthropic");

    // A bare name that is no tier's model goes to the routed tier's provider and says so.
    let bare = s
        .ok(
            "agent_spawn",
            json!({ "task": "Summarize the notes", "model": "llama3.2" }),
        )
        .await;
    // The default tier's provider is not repeated as `provider`; the reason names it.
    assert!(bare.get("provider").is_none(), "{bare}");
    assert!(
        bare["routing_reason"]
            .as_str()
            .is_some_and(|r| r.contains("provider `anthropic`") && r.contains("PROVIDER/llama3.2")),
        "{bare}"
    );
    s.wait_all(&[id_of(&bare)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_cannot_pay_for_one_request_is_refused_and_nothing_starts() {
    let s = Session::start("").await;
    let e = s
        .tool_error(
            "agent_spawn",
            json!({ "task": "Summarize the notes", "limits": { "budget_usd": 0 } }),
        )
        .await;
    assert!(
        e.contains("limits.budget_usd = 0 cannot pay for a single request"),
        "{e}"
    );
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]), "{list}");
    assert!(s.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cap_queues_its_agents_and_says_why_while_others_run() {
    let local = second_fake().await;
    local.script(
        "Hold the line",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    let s = Session::start(&local_provider(
        &local.openai_base_url(),
        "max_concurrent = 1",
    ))
    .await;

    let first = s
        .ok(
            "agent_spawn",
            json!({ "task": "Hold the line", "model": "local/tiny" }),
        )
        .await;
    assert_eq!(first["status"], "running", "{first}");
    let second = s
        .ok(
            "agent_spawn",
            json!({ "task": "Second in line", "model": "local/tiny" }),
        )
        .await;
    assert_eq!(second["status"], "queued", "{second}");
    let st = s.status(&id_of(&second)).await;
    assert!(
        st["queued_reason"]
            .as_str()
            .is_some_and(|r| r.contains("[providers.local] max_concurrent = 1")),
        "{st}"
    );
    // Another provider is not held up behind it.
    let other = s
        .ok("agent_spawn", json!({ "task": "Other provider" }))
        .await;
    assert_eq!(other["status"], "running", "{other}");

    s.ok("agent_kill", json!({ "agent_id": id_of(&first) }))
        .await;
    let done = s.wait_all(&[id_of(&second), id_of(&other)]).await;
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(s.status(&id_of(&second)).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_agents_share_a_provider_that_allows_eight_and_all_complete() {
    let local = second_fake().await;
    // The real limit: 8 requests in flight, 429 with retry-after: 1 beyond.
    local.set_quirks(Quirks {
        max_in_flight: Some(8),
        retry_after_secs: 1,
        ..Default::default()
    });
    // Every answer streams for about 300 ms, so requests overlap.
    let slow = Step::Text {
        chunks: vec!["Counted".into(), " and".into(), " done.".into()],
        delay_ms: 150,
    };
    local.script("Count to three", vec![slow; 200]);
    // The user's cap (12) is above the provider's real limit (8): the holds after each
    // 429 are what keeps the rest from hammering it.
    let s = Session::launch(
        (),
        "max_concurrent = 40",
        &local_provider(&local.openai_base_url(), "max_concurrent = 12"),
    )
    .await;

    let mut ids = Vec::new();
    for i in 0..40 {
        let v = s
            .ok(
                "agent_spawn",
                json!({ "task": format!("Count to three, agent {i}"), "model": "local/tiny" }),
            )
            .await;
        ids.push(id_of(&v));
    }
    let waited = s.wait_all(&ids).await;
    assert_eq!(waited["done"], true);
    for id in &ids {
        let st = s.status(id).await;
        assert_eq!(st["status"], "completed", "{st}");
        assert_eq!(st["result"], "Counted and done.", "{st}");
    }
    let throttled = local.throttled();
    eprintln!(
        "40 agents: {throttled} answers of 429, peak {} in flight, {} requests",
        local.peak_in_flight(),
        local.requests().len()
    );
    assert!(local.peak_in_flight() <= 8);
    // Without coordination every wave of retries collides again (about 80 429s for 40
    // agents at 8 at a time); with the cap and the holds, fewer than one per agent.
    assert!(
        throttled < 40,
        "{throttled} 429s for 40 agents: the server did not hold starts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_list_report_cache_writes_and_reads_apart() {
    let s = Session::start("").await;
    let line = "fn step() { let value = compute(the, arguments); store(value); }\n";
    std::fs::write(s.dir.path().join("big.rs"), line.repeat(128)).expect("write big.rs");
    let mut steps: Vec<Step> = (0..3)
        .map(|i| Step::ToolUse {
            text: None,
            id: format!("toolu_{i}"),
            name: "read_file".into(),
            input: json!({"path": "big.rs"}),
        })
        .collect();
    steps.push(Step::text("Read it three times."));
    s.fake.script("Read big.rs three times", steps);

    let id = s
        .spawn_with(json!({ "task": "Read big.rs three times", "cwd": s.dir.path() }))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let st = s.status(&id).await;
    assert_eq!(st["status"], "completed", "{st}");
    let usage = &st["usage"];
    assert!(
        usage["cache_read_tokens"].as_u64().unwrap_or(0) > 2000,
        "{st}"
    );
    assert!(
        usage["cache_write_tokens"].as_u64().unwrap_or(0) > 0,
        "{st}"
    );
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(
        list["total_cache_read_tokens"], usage["cache_read_tokens"],
        "{list}"
    );
    assert_eq!(list["total_cost_usd"], usage["cost_usd"], "{list}");
}
