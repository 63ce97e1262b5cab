//! The session's caps (`[server] session_budget_usd`, `session_max_tokens`) when agents
//! run together: each starting agent or round reserves what it may spend out of what no
//! other holds, waits queued when too little is free, and is cancelled once nothing can
//! come back; what the server reports is what the provider billed, a cut request included.

use serde_json::{Value, json};
use support::mcp::Session;
use support::provider::{Billed, Step};

/// claude-haiku-5-5's built-in price, USD per million input and output tokens.
const PRICE_IN: f64 = 0.10;
const PRICE_OUT: f64 = 0.50;
const MODEL: &str = "claude-haiku-5-5";

fn cost(b: &Billed) -> f64 {
    (b.input_tokens as f64 * PRICE_IN
        + b.cache_write_tokens as f64 * PRICE_IN * 1.25
        + b.cache_read_tokens as f64 * PRICE_IN * 0.1
        + b.output_tokens as f64 * PRICE_OUT)
        / 1e6
}

fn input_cost(b: &Billed) -> f64 {
    (b.input_tokens as f64 * PRICE_IN
        + b.cache_write_tokens as f64 * PRICE_IN * 1.25
        + b.cache_read_tokens as f64 * PRICE_IN * 0.1)
        / 1e6
}

fn session_of(list: &Value) -> &Value {
    &list["session"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_at_once_spend_at_most_the_session_budget_plus_one_input_each() {
    const CAP: f64 = 0.05;
    let s = Session::launch(
        (),
        &format!("session_budget_usd = {CAP}\nmax_concurrent = 20"),
        "",
    )
    .await;
    s.fake.script(
        "Summarize part",
        (0..40).map(|_| Step::fills_max_tokens()).collect(),
    );

    let spawns = (0..20).map(|i| {
        s.ok(
            "agent_spawn",
            json!({
                "task": format!("Summarize part {i} of the design"),
                "model": MODEL,
                "limits": {"budget_usd": 0.004},
            }),
        )
    });
    let replies = futures_util::future::join_all(spawns).await;
    let ids: Vec<String> = replies
        .iter()
        .map(|r| r["agent_id"].as_str().expect("agent_id").to_string())
        .collect();
    s.wait_all(&ids).await;

    let billed = s.fake.billed();
    let requests = s.fake.requests();
    assert!(
        requests.len() <= 20,
        "one request an agent: {}",
        requests.len()
    );
    let spent: f64 = billed.iter().map(cost).sum();
    let inputs: f64 = billed.iter().map(input_cost).sum();
    assert!(
        spent <= CAP + inputs + 1e-12,
        "the provider billed ${spent:.6}, above the ${CAP} cap plus ${inputs:.6} of one input an agent"
    );
    let asked: f64 = requests
        .iter()
        .map(|r| r.max_tokens.unwrap_or(0) as f64 * PRICE_OUT / 1e6)
        .sum();
    assert!(asked <= CAP + 1e-12, "asked for ${asked:.6} of output");
    assert!(spent > CAP * 0.8, "the agents used the budget: ${spent:.6}");
    eprintln!(
        "20 agents on a ${CAP} cap: {} requests billed ${spent:.6} (inputs ${inputs:.6}), asked for ${asked:.6} of output",
        requests.len()
    );

    let list = s.ok("agent_list", json!({})).await;
    let session = session_of(&list);
    let tokens: u64 = billed.iter().map(Billed::total).sum();
    assert_eq!(session["tokens"], tokens, "reported = billed: {list}");
    let reported = session["spent_usd"].as_f64().expect("spent_usd");
    assert!(
        (reported - spent).abs() <= spent * 1e-5,
        "reported ${reported} for ${spent} billed: {list}"
    );

    let mut completed = 0;
    for id in &ids {
        let st = s.status(id).await;
        match st["status"].as_str() {
            Some("completed") => completed += 1,
            Some("killed") => {
                assert_eq!(st["exit"]["reason"], "session_budget", "{st}");
                assert!(
                    st["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("session_budget_usd")),
                    "{st}"
                );
            }
            _ => panic!("neither completed nor cancelled for the session budget: {st}"),
        }
    }
    assert!(completed >= 12, "{completed} of 20 completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_waits_while_running_agents_hold_the_session_budget_and_a_cut_request_is_counted() {
    let s = Session::launch((), "session_budget_usd = 0.01", "").await;
    s.fake.script(
        "Hold the budget",
        vec![Step::Hang {
            after_chunks: vec!["thinking about it ".repeat(50)],
        }],
    );
    s.fake.script("Answer after", vec![Step::text("Done.")]);
    let holder = s
        .ok(
            "agent_spawn",
            json!({"task": "Hold the budget", "model": MODEL, "limits": {"budget_usd": 0.01}}),
        )
        .await;
    let holder_id = holder["agent_id"].as_str().expect("id").to_string();
    assert_eq!(holder["status"], "running", "{holder}");

    let waiter = s
        .ok(
            "agent_spawn",
            json!({"task": "Answer after", "model": MODEL}),
        )
        .await;
    assert_eq!(waiter["status"], "queued", "{waiter}");
    let reason = waiter["queued_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("held by running agents") && reason.contains("session_budget_usd"),
        "{waiter}"
    );
    let waiter_id = waiter["agent_id"].as_str().expect("id").to_string();

    // Until the holder's request is out, killing it would cut nothing.
    for _ in 0..200 {
        if s.fake.request_count("Hold the budget") > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let killed = s
        .ok("agent_kill", json!({"agent_id": holder_id, "grace_ms": 0}))
        .await;
    assert_eq!(killed["status"], "killed", "{killed}");
    let usage = &killed["usage"];
    assert_eq!(usage["estimated"], true, "{killed}");
    assert!(
        usage["input_tokens"].as_u64().unwrap_or(0) > 0,
        "the cut request's input counted: {killed}"
    );
    assert!(
        usage["output_tokens"].as_u64().unwrap_or(0) >= 200,
        "what streamed counted: {killed}"
    );

    s.wait_all(std::slice::from_ref(&waiter_id)).await;
    let st = s.status(&waiter_id).await;
    assert_eq!(st["status"], "completed", "{st}");
    let list = s.ok("agent_list", json!({})).await;
    let session = session_of(&list);
    let holder_cost = usage["cost_usd"].as_f64().expect("cost");
    assert!(
        session["spent_usd"].as_f64().unwrap_or(0.0) >= holder_cost,
        "the cut request is in the session's spend: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_token_cap_is_shared_like_the_usd_cap() {
    const CAP: u64 = 30_000;
    let s = Session::launch(
        (),
        &format!("session_max_tokens = {CAP}\nmax_concurrent = 8"),
        "",
    )
    .await;
    s.fake.script(
        "Describe module",
        (0..20).map(|_| Step::fills_max_tokens()).collect(),
    );
    let spawns = (0..6).map(|i| {
        s.ok(
            "agent_spawn",
            json!({"task": format!("Describe module {i}"), "model": MODEL}),
        )
    });
    let replies = futures_util::future::join_all(spawns).await;
    let lowered = replies.iter().any(|r| {
        r["warnings"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w.as_str()
                    .is_some_and(|w| w.contains("max_total_tokens lowered"))
            })
        })
    });
    assert!(lowered, "{replies:?}");
    let ids: Vec<String> = replies
        .iter()
        .map(|r| r["agent_id"].as_str().expect("agent_id").to_string())
        .collect();
    s.wait_all(&ids).await;

    let billed = s.fake.billed();
    let tokens: u64 = billed.iter().map(Billed::total).sum();
    let inputs: u64 = billed
        .iter()
        .map(|b| b.input_tokens + b.cache_write_tokens + b.cache_read_tokens)
        .sum();
    assert!(
        tokens <= CAP + inputs,
        "{tokens} tokens billed on a {CAP} cap (+{inputs} input)"
    );
    assert!(tokens > CAP / 2, "the agents used the cap: {tokens}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(session_of(&list)["tokens"], tokens, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_round_gets_only_what_the_session_has_left() {
    const CAP: f64 = 0.004;
    let s = Session::launch((), &format!("session_budget_usd = {CAP}"), "").await;
    s.fake.script(
        "Write the report",
        vec![Step::fills_max_tokens(), Step::fills_max_tokens()],
    );
    let id = s
        .spawn_with(json!({
            "task": "Write the report", "model": MODEL, "limits": {"budget_usd": 0.002}
        }))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;
    assert_eq!(s.status(&id).await["status"], "completed");

    s.ok(
        "agent_send",
        json!({"agent_id": id, "message": "Go on.", "limits": {"budget_usd": 1.0}}),
    )
    .await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let billed = s.fake.billed();
    assert_eq!(billed.len(), 2, "{billed:?}");
    let spent: f64 = billed.iter().map(cost).sum();
    let inputs: f64 = billed.iter().map(input_cost).sum();
    assert!(
        spent <= CAP + inputs + 1e-12,
        "billed ${spent:.6} on a ${CAP} cap (+${inputs:.6} input)"
    );
    let st = s.status(&id).await;
    assert!(
        st["usage"]["cost_usd"].as_f64().unwrap_or(0.0) > 0.003,
        "the round ran on what was left: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_obeys_the_task_size_cap_and_the_agents_remaining_budget() {
    let s = Session::start("").await;
    s.fake.script("Check the config", vec![Step::text("Fine.")]);
    let id = s
        .spawn_with(json!({
            "task": "Check the config", "model": MODEL, "limits": {"budget_usd": 0.003}
        }))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let huge = "x".repeat(300 * 1024);
    let e = s
        .tool_error("agent_send", json!({"agent_id": id, "message": huge}))
        .await;
    assert!(e.contains("above the 262144-byte limit"), "{e}");

    // About 50,000 tokens of input: $0.005 at $0.10 a million, more than is left.
    let costly = "word ".repeat(40 * 1024);
    let e = s
        .tool_error("agent_send", json!({"agent_id": id, "message": costly}))
        .await;
    assert!(e.contains("cannot pay for this follow-up"), "{e}");
    assert!(e.contains("budget_usd"), "{e}");
    let st = s.status(&id).await;
    assert_eq!(st["status"], "completed", "nothing changed: {st}");
    assert_eq!(st["result"], "Fine.", "{st}");
    assert_eq!(s.fake.requests().len(), 1, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_session_budget_cancels_queued_agents_and_refuses_spawns_and_follow_ups() {
    let s = Session::launch((), "session_budget_usd = 0.002\nmax_concurrent = 1", "").await;
    s.fake
        .script("Write it all", vec![Step::fills_max_tokens_over(1000)]);
    s.fake.script("Hang on", vec![Step::text("never asked")]);
    let writer = s
        .ok(
            "agent_spawn",
            json!({"task": "Write it all", "model": MODEL}),
        )
        .await;
    let warnings = writer["warnings"].to_string();
    assert!(
        warnings.contains("budget_usd lowered from $1 to $0.0020"),
        "{writer}"
    );
    let writer_id = writer["agent_id"].as_str().expect("id").to_string();
    let queued = s
        .spawn_with(json!({"task": "Hang on", "model": MODEL}))
        .await;
    s.wait_all(&[writer_id.clone(), queued.clone()]).await;

    assert_eq!(s.status(&writer_id).await["status"], "completed");
    let st = s.status(&queued).await;
    assert_eq!(st["status"], "killed", "{st}");
    assert_eq!(st["exit"]["reason"], "session_budget", "{st}");
    assert!(
        st["error"]
            .as_str()
            .is_some_and(|e| e.contains("the session budget is spent")),
        "{st}"
    );
    assert_eq!(s.fake.request_count("Hang on"), 0);

    let e = s
        .tool_error("agent_spawn", json!({ "task": "One more" }))
        .await;
    assert!(e.contains("the session budget is spent"), "{e}");
    let e = s
        .tool_error(
            "agent_send",
            json!({"agent_id": writer_id, "message": "And more."}),
        )
        .await;
    assert!(e.contains("the session budget is spent"), "{e}");
    let list = s.ok("agent_list", json!({})).await;
    let session = session_of(&list);
    assert_eq!(session["budget_usd"], 0.002, "{list}");
    assert!(
        session["spent_usd"].as_f64().unwrap_or(0.0) >= 0.002,
        "{list}"
    );
    assert!(session["exhausted"].is_string(), "{list}");
}
