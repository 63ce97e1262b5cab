//! Prompt caching in the agent loop, against the double's simulation of the providers'
//! caches: each turn reads the previous turn's prefix, cache writes and reads are
//! reported apart and priced at their own rates, and caching can be turned off.

use crate::common;

use bg_agent_worker::protocol::{Event, UsageReport, exit};
use common::{Harness, OPENAI_KEY, Step, run, tool_use};
use serde_json::{Value, json};

/// Usage totals of the run's last usage event: (input, cache write, cache read, output, cost).
fn totals(r: &common::Run) -> (u64, u64, u64, u64, Option<f64>) {
    r.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Usage(UsageReport {
                input_tokens,
                output_tokens,
                cache_write_tokens,
                cache_read_tokens,
                cost_usd,
                ..
            }) => Some((
                input_tokens,
                cache_write_tokens,
                cache_read_tokens,
                output_tokens,
                cost_usd,
            )),
            _ => None,
        })
        .next_back()
        .expect("a usage event")
}

/// Four turns: three reads of an 8 KB file, then the answer.
fn read_loop(h: &Harness, needle: &str) {
    let line = "fn step() { let value = compute(the, arguments); store(value); }\n";
    h.write("workspace/big.rs", &line.repeat(128));
    let mut steps: Vec<Step> = (0..3)
        .map(|i| {
            tool_use(
                &format!("toolu_{i}"),
                "read_file",
                json!({"path": "big.rs"}),
            )
        })
        .collect();
    steps.push(Step::text("Read it three times."));
    h.fake.script(needle, steps);
}

fn breakpoints(body: &Value) -> usize {
    body.to_string().matches("\"cache_control\"").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_anthropic_turn_reads_the_previous_prefix_from_the_cache() {
    let h = Harness::start().await;
    read_loop(&h, "read the big file");

    let r = run(h.worker(&["--json", "--tier", "balanced", "read the big file"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("read the big file");
    assert_eq!(requests.len(), 4);
    for req in &requests {
        assert!((1..=4).contains(&breakpoints(&req.body)), "{}", req.body);
        assert_eq!(req.body["system"][0]["cache_control"]["type"], "ephemeral");
    }
    let (input, write, read, output, cost) = totals(&r);
    assert!(
        read > 2000,
        "turns 3 and 4 read the file reads of earlier turns: {read}"
    );
    assert!(write > 0, "{write}");
    // claude-sonnet-5-5: $2 input, $10 output; writes 1.25 ×, reads 0.1 × input.
    let expected =
        (input as f64 * 2.0 + write as f64 * 2.5 + read as f64 * 0.2 + output as f64 * 10.0) / 1e6;
    let cost = cost.expect("priced");
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    read_loop(&h, "scan the big file");
    let human = run(h.worker(&["--tier", "balanced", "scan the big file"])).await;
    let last = human.stdout.lines().last().unwrap_or_default().to_string();
    assert!(last.contains(" cache write + "), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_caching_off_sends_no_breakpoints_and_reads_nothing() {
    let h = Harness::start().await;
    read_loop(&h, "no cache please");
    let config = h.write(
        "nocache.toml",
        "[providers.anthropic]\nprompt_caching = false\n",
    );

    let r = run(h.worker(&[
        "--json",
        "--config",
        config.to_str().expect("utf-8 path"),
        "no cache please",
    ]))
    .await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    for req in h.fake.requests_for("no cache please") {
        assert_eq!(breakpoints(&req.body), 0, "{}", req.body);
    }
    let (_, write, read, _, _) = totals(&r);
    assert_eq!((write, read), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_cached_tokens_are_read_under_one_stable_cache_key() {
    let h = Harness::start().await;
    read_loop(&h, "find the big file");
    let config = h.openai_config();

    let mut cmd = h.worker(&[
        "--json",
        "--tier",
        "fast",
        "--config",
        config.to_str().expect("utf-8 path"),
        "find the big file",
    ]);
    cmd.env("OPENAI_API_KEY", OPENAI_KEY);
    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("find the big file");
    let keys: Vec<&Value> = requests
        .iter()
        .map(|r| &r.body["prompt_cache_key"])
        .collect();
    assert!(
        keys[0]
            .as_str()
            .is_some_and(|k| k.starts_with("bg-agents-"))
    );
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let (_, write, read, _, _) = totals(&r);
    assert_eq!(write, 0, "OpenAI reports no cache writes");
    assert!(read >= 1024, "cached_tokens of later turns: {read}");
}
