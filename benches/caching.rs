//! What prompt caching saves: an 8-turn `read_file` loop over a 4 KiB file, run by the
//! worker's agent loop against the provider double's simulation of the Messages API's
//! prompt cache (breakpoints, 20-block lookback, 1,024-token minimum), with caching on
//! and off. Prints input tokens uncached / written / read and the input cost of each.
//!
//!     cargo bench --bench caching
//!
//! Nothing here asserts: the numbers go to BENCHMARKS.md.

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

use support::provider;

use std::sync::Mutex;

use bg_agent_worker::agent::{self, Emit};
use bg_agent_worker::config::Config;
use bg_agent_worker::protocol::Event;
use bg_agent_worker::provider::Client;
use bg_agent_worker::resolve::{SpawnRequest, resolve};
use bg_agent_worker::values::{Tier, TokenCounts};
use provider::{FakeProvider, Step};
use serde_json::json;

const TURNS: usize = 8;

/// Keeps the last usage event.
#[derive(Default)]
struct LastUsage(Mutex<Option<TokenCounts>>);

impl Emit for LastUsage {
    fn emit(&self, event: &Event) {
        if let Event::Usage(u) = event
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some(u.tokens());
        }
    }
}

/// Runs the loop once; returns the run's token totals.
async fn read_loop(fake: &FakeProvider, dir: &std::path::Path, caching: bool) -> TokenCounts {
    let task = format!("Read notes.md {TURNS} times (caching {caching})");
    let mut steps: Vec<Step> = (1..TURNS)
        .map(|i| Step::ToolUse {
            text: None,
            id: format!("toolu_{i}"),
            name: "read_file".into(),
            input: json!({"path": "notes.md"}),
        })
        .collect();
    steps.push(Step::text("Read it."));
    fake.script(&task, steps);
    let config = Config::builtin().expect("built-in config");
    let request = SpawnRequest {
        task,
        tier: Some(Tier::Balanced),
        cwd: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let mut spec = resolve(&config, &request).expect("resolve").spec;
    spec.provider.base_url = fake.base_url();
    spec.provider.base_url_env = None;
    spec.provider.prompt_caching = caching;
    let client = Client::new(&spec.provider, |_| Some("sk-bench".into())).expect("client");
    let out = LastUsage::default();
    let code = agent::run(&spec, &client, &out, &mut agent::Inbox::default()).await;
    assert_eq!(code, 0, "the loop ran to its answer");
    let last = out.0.lock().ok().and_then(|l| *l);
    last.expect("a usage event")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let line = "- the build runs cargo, then the tests, then the benches; see README.md\n";
    let mut notes = String::new();
    while notes.len() < 4096 {
        notes.push_str(line);
    }
    std::fs::write(dir.path().join("notes.md"), &notes).expect("write notes.md");
    let (on, off) = runtime.block_on(async {
        let fake = FakeProvider::start().await;
        let on = read_loop(&fake, dir.path(), true).await;
        let off = read_loop(&fake, dir.path(), false).await;
        (on, off)
    });
    let price = Config::builtin()
        .expect("built-in config")
        .pricing
        .get("claude-sonnet-5-5")
        .copied()
        .expect("sonnet has a price");
    let input_cost = |t: &TokenCounts| price.cost_of(&TokenCounts { output: 0, ..*t });
    println!(
        "\n{TURNS}-turn read_file loop over a {} B file, claude-sonnet-5-5 (${}/M input, writes 1.25×, reads 0.1×)\n",
        notes.len(),
        price.input
    );
    println!("| caching | input uncached | cache written | cache read | input cost |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, t) in [("off", &off), ("on", &on)] {
        println!(
            "| {name} | {} | {} | {} | ${:.5} |",
            t.input,
            t.cache_write,
            t.cache_read,
            input_cost(t)
        );
    }
    println!(
        "\ninput cost with caching: {:.2}× cheaper (target ≥ 2.5×)",
        input_cost(&off) / input_cost(&on)
    );
}
