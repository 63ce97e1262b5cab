//! The MCP Inspector CLI (npm `@modelcontextprotocol/inspector`, pinned) as a second real
//! client, in both protocol eras: the legacy one (`initialize`, 2025-11-25), where a plain
//! call gets a plain result, and the modern one (2026-07-28), where agent_spawn is a task
//! whose result the Inspector checks against agent_spawn's outputSchema.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::mcp::{base_config, server_exe};
use support::process::{API_KEY, isolated};
use support::provider::FakeProvider;

/// The Inspector release the tests run.
const INSPECTOR_VERSION: &str = "2.12.0";
const ERAS: [&str; 2] = ["legacy", "modern"];

fn inspector_exe() -> std::path::PathBuf {
    support::npm::install(
        &format!("inspector-{INSPECTOR_VERSION}"),
        "@modelcontextprotocol/inspector",
        INSPECTOR_VERSION,
        "mcp-inspector",
    )
}

/// Runs `mcp-inspector --cli` against a bg-agents server (in `dir`, with the provider
/// double) in protocol `era` with `args`; its exit code and the JSON on its stdout.
async fn inspect(dir: &Path, fake: &FakeProvider, era: &str, args: &[&str]) -> (i32, Value) {
    let config = dir.join("limits.toml");
    std::fs::write(&config, base_config(dir, "")).expect("write limits.toml");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("create home");
    let mut cmd = isolated(inspector_exe(), &home);
    cmd.args(["--cli", "--protocol-era", era, "--format", "json", "-q"])
        .arg("-e")
        .arg(format!("ANTHROPIC_API_KEY={API_KEY}"))
        .arg("-e")
        .arg(format!("ANTHROPIC_BASE_URL={}", fake.base_url()))
        .arg("-e")
        .arg(format!("HOME={}", home.display()))
        .arg("-e")
        .arg(format!("XDG_RUNTIME_DIR={}", dir.join("run").display()))
        // Through the environment: the Inspector reads a `--config` of its own.
        .arg("-e")
        .arg(format!("BG_AGENTS_CONFIG={}", config.display()))
        .arg(server_exe())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the Inspector ends within 120 s")
        .expect("run the Inspector");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the Inspector ({era}) printed no JSON ({e}):\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_lists_the_tools_with_no_portability_error_in_both_eras() {
    let fake = FakeProvider::start().await;
    for era in ERAS {
        let dir = tempfile::tempdir().unwrap();
        // --strict exits 6 on any error-severity portability problem in the schemas.
        let (code, v) = inspect(
            dir.path(),
            &fake,
            era,
            &["--method", "tools/list", "--strict"],
        )
        .await;
        assert_eq!(code, 0, "{era}: {v}");
        let tools = v["result"]["tools"].as_array().cloned().unwrap_or_default();
        assert_eq!(tools.len(), 7, "{era}: {v}");
        assert!(
            tools.iter().all(|t| t["outputSchema"].is_object()),
            "{era}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_spawns_an_agent_in_both_eras() {
    let fake = FakeProvider::start().await;
    let spawn = [
        "--method",
        "tools/call",
        "--tool-name",
        "agent_spawn",
        "--tool-arg",
    ];

    // Legacy: no task for a plain call; the spawn's own reply, checked against its schema.
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = spawn
        .iter()
        .copied()
        .chain(["task=inspect legacy"])
        .collect();
    let (code, v) = inspect(dir.path(), &fake, "legacy", &args).await;
    assert_eq!(code, 0, "legacy: {v}");
    let r = &v["result"]["structuredContent"];
    assert!(
        r["agent_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("a-")),
        "legacy: {v}"
    );
    assert!(
        ["running", "queued"].contains(&r["status"].as_str().unwrap_or("")),
        "legacy: {v}"
    );

    // Modern: a task; the Inspector polls it to the end and checks its result against
    // agent_spawn's outputSchema.
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = spawn
        .iter()
        .copied()
        .chain(["task=inspect modern"])
        .collect();
    let (code, v) = inspect(dir.path(), &fake, "modern", &args).await;
    assert_eq!(code, 0, "modern: {v}");
    let r = &v["result"]["structuredContent"];
    assert_eq!(r["status"], "completed", "modern: {v}");
    assert_eq!(r["result"], "echo: inspect modern", "modern: {v}");
    assert!(
        r["tier"].is_string() && r["routed_by"].is_string(),
        "modern: {v}"
    );
}
