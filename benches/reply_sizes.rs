//! How big each tool's reply is as the model receives it, for 1, 10, 100 and 1,000 agents.
//!
//!     cargo build --workspace && cargo bench --profile dev --bench reply_sizes
//!
//! Claude Code shows the model a result's `structuredContent` serialized as compact JSON,
//! so that is what is measured (in chars); the readable text content is measured too.
//! Sizes do not depend on the build profile. Every agent answers with the same 400-char
//! text from the provider double on 127.0.0.1. Nothing here asserts a size (the tests do).

// Measurement harness, not shipped code: a setup step that fails ends the run with its
// message, as a test would.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "bench harness: failing loudly is the point"
)]

use support::provider;

use std::path::{Path, PathBuf};

use futures_util::future::join_all;
use provider::{FakeProvider, Step};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

type Client = RunningService<RoleClient, ()>;

/// The answer every agent gives: 400 chars, a few lines, as a short model answer reads.
fn answer(i: usize) -> String {
    let line = format!("Agent {i:04} found the handler in src/auth/session.rs:120; ");
    let mut s = String::new();
    while s.chars().count() < 400 {
        s.push_str(&line);
        s.push('\n');
    }
    s.chars().take(400).collect()
}

fn server_exe() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bg-agents"));
    let worker = exe.with_file_name("bg-agent-worker");
    assert!(
        worker.exists(),
        "{} is missing; build the workspace for this profile first",
        worker.display()
    );
    exe
}

async fn session(fake: &FakeProvider, dir: &Path) -> Client {
    let config = dir.join("limits.toml");
    let text = format!(
        "[server]\ntranscript_dir = {:?}\nkeep_transcripts = false\nmax_concurrent = 64\n\
         max_queued = 5000\nretained_agents = 5000\n",
        dir.join("transcripts").display().to_string()
    );
    std::fs::write(&config, text).expect("config");
    let mut cmd = tokio::process::Command::new(server_exe());
    cmd.arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("RUST_LOG", "error")
        .env("ANTHROPIC_API_KEY", "sk-bench")
        .env("ANTHROPIC_BASE_URL", fake.base_url());
    let transport = TokioChildProcess::new(cmd).expect("spawn server");
    ().serve(transport).await.expect("handshake")
}

async fn call(client: &Client, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(map) = args else {
        unreachable!("arguments are an object")
    };
    let r = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(map))
        .await
        .expect("call");
    assert_ne!(r.is_error, Some(true), "{tool} failed: {:?}", r.content);
    r
}

/// Chars of the compact structuredContent (what the model reads) and of the text content.
fn sizes(r: &CallToolResult) -> (usize, usize) {
    let structured = r
        .structured_content
        .as_ref()
        .map_or(0, |v| v.to_string().chars().count());
    let text = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.chars().count()))
        .sum();
    (structured, text)
}

struct Measure {
    tool: &'static str,
    structured: usize,
    text: usize,
    /// Extra facts: where the answer starts, how many pages reading on took.
    note: String,
}

/// Follows `next_offset` until the reply has none; returns (pages, largest page).
async fn read_on(client: &Client, tool: &str, args: &Value, first: &CallToolResult) -> String {
    let mut pages = 1;
    let mut largest = sizes(first).0;
    let mut next = first
        .structured_content
        .as_ref()
        .and_then(|v| v["next_offset"].as_u64());
    while let Some(offset) = next {
        let mut a = args.clone();
        a["offset"] = json!(offset);
        let r = call(client, tool, a).await;
        pages += 1;
        largest = largest.max(sizes(&r).0);
        next = r
            .structured_content
            .as_ref()
            .and_then(|v| v["next_offset"].as_u64());
    }
    if pages == 1 {
        "all in one reply".into()
    } else {
        format!("{pages} pages to read all, largest {largest}")
    }
}

async fn measure(fake: &FakeProvider, n: usize) -> Vec<Measure> {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = session(fake, dir.path()).await;
    let tasks: Vec<String> = (0..n)
        .map(|i| format!("size bench n{n} agent {i}: where is the session handler?"))
        .collect();
    for (i, t) in tasks.iter().enumerate() {
        fake.script(
            t,
            vec![Step::Text {
                chunks: vec![answer(i)],
                delay_ms: 0,
            }],
        );
    }
    let spawned = join_all(tasks.iter().enumerate().map(|(i, t)| {
        call(
            &client,
            "agent_spawn",
            json!({ "task": t, "label": format!("bench-{i}") }),
        )
    }))
    .await;
    let ids: Vec<String> = spawned
        .iter()
        .map(|r| {
            r.structured_content.as_ref().expect("structured")["agent_id"]
                .as_str()
                .expect("agent_id")
                .to_string()
        })
        .collect();
    let spawn = spawned.last().expect("one spawn");
    let mut out = vec![Measure {
        tool: "agent_spawn",
        structured: sizes(spawn).0,
        text: sizes(spawn).1,
        note: String::new(),
    }];

    let wait_args = json!({ "agent_ids": ids, "wait_seconds": 50 });
    let wait = loop {
        let r = call(&client, "agent_wait", wait_args.clone()).await;
        if r.structured_content.as_ref().expect("structured")["done"] == json!(true) {
            break r;
        }
    };
    out.push(Measure {
        tool: "agent_wait (mode all, done)",
        structured: sizes(&wait).0,
        text: sizes(&wait).1,
        note: read_on(&client, "agent_wait", &wait_args, &wait).await,
    });

    let last = ids.last().expect("one id");
    let status = call(&client, "agent_status", json!({ "agent_id": last })).await;
    let compact = status
        .structured_content
        .as_ref()
        .expect("structured")
        .to_string();
    let at = compact.find("\"result\":").map_or("no result".into(), |b| {
        format!(
            "answer (400 chars) starts at char {}",
            compact[..b].chars().count() + "\"result\":\"".len()
        )
    });
    out.push(Measure {
        tool: "agent_status (completed)",
        structured: sizes(&status).0,
        text: sizes(&status).1,
        note: at,
    });

    let output = call(&client, "agent_output", json!({ "agent_id": last })).await;
    out.push(Measure {
        tool: "agent_output",
        structured: sizes(&output).0,
        text: sizes(&output).1,
        note: String::new(),
    });

    let kill = call(&client, "agent_kill", json!({ "agent_id": last })).await;
    out.push(Measure {
        tool: "agent_kill (already ended)",
        structured: sizes(&kill).0,
        text: sizes(&kill).1,
        note: String::new(),
    });

    let list_args = json!({});
    let list = call(&client, "agent_list", list_args.clone()).await;
    out.push(Measure {
        tool: "agent_list",
        structured: sizes(&list).0,
        text: sizes(&list).1,
        note: read_on(&client, "agent_list", &list_args, &list).await,
    });
    let _ = client.cancel().await;
    out
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let counts = [1usize, 10, 100, 1000];
    let table = runtime.block_on(async {
        let fake = FakeProvider::start().await;
        let mut table = Vec::new();
        for n in counts {
            table.push(measure(&fake, n).await);
        }
        table
    });
    println!("\nchars of compact structuredContent (text content in parentheses)\n");
    println!(
        "| tool | 1 agent | 10 agents | 100 agents | 1,000 agents | notes (100 agents · 1,000 agents) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for row in 0..table[0].len() {
        let cells: Vec<String> = table
            .iter()
            .map(|m| format!("{} ({})", m[row].structured, m[row].text))
            .collect();
        let note = match (&table[2][row].note, &table[3][row].note) {
            (a, b) if a.is_empty() && b.is_empty() => String::new(),
            (a, b) => format!("{a} · {b}"),
        };
        println!(
            "| {} | {} | {} |",
            table[0][row].tool,
            cells.join(" | "),
            note
        );
    }
}
