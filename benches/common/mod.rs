//! What the end-to-end benches (`bg_agents`, `scale`) share: a release server over MCP
//! stdio against the provider double, a checked tool call, and waiting for agents' ends.

use std::path::Path;

use bg_agent_worker::config::Config;
use bg_agent_worker::resolve::{SpawnRequest, resolve};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use support::provider::FakeProvider;

/// The provider key the benches give the server (the double accepts any).
pub const KEY: &str = "sk-bench";

/// Starts `server` with `config_text` (written to `dir`/limits.toml) in a cleared
/// environment whose HOME is `dir`, talking to `fake`; the MCP client and the server's
/// pid.
pub async fn mcp_session(
    server: &Path,
    config_text: &str,
    dir: &Path,
    fake: &FakeProvider,
) -> (RunningService<RoleClient, ()>, u32) {
    let config = dir.join("limits.toml");
    std::fs::write(&config, config_text).expect("config");
    let mut cmd = tokio::process::Command::new(server);
    cmd.arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("RUST_LOG", "warn")
        .env("ANTHROPIC_API_KEY", KEY)
        .env("ANTHROPIC_BASE_URL", fake.base_url());
    let transport = TokioChildProcess::new(cmd).expect("spawn server");
    let pid = transport.id().expect("pid");
    let client = ().serve(transport).await.expect("handshake");
    (client, pid)
}

/// Calls `tool`; its structured content, which must not be an error.
pub async fn call(client: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> Value {
    let Value::Object(map) = args else {
        unreachable!()
    };
    let r = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(map))
        .await
        .expect("call");
    assert_ne!(r.is_error, Some(true), "{tool} failed: {:?}", r.content);
    r.structured_content.expect("structured")
}

/// Spawns one agent per task, all at once (the calls concurrent); their ids, in order.
pub async fn spawn_all(client: &RunningService<RoleClient, ()>, tasks: &[String]) -> Vec<String> {
    let spawned = futures_util::future::join_all(
        tasks
            .iter()
            .map(|task| call(client, "agent_spawn", json!({ "task": task }))),
    )
    .await;
    spawned
        .iter()
        .map(|v| v["agent_id"].as_str().expect("id").to_string())
        .collect()
}

/// `agent_wait` on `ids` until all have ended.
pub async fn wait_all(client: &RunningService<RoleClient, ()>, ids: &[String]) {
    loop {
        let v = call(
            client,
            "agent_wait",
            json!({ "agent_ids": ids, "wait_seconds": 50 }),
        )
        .await;
        if v["done"] == json!(true) {
            return;
        }
    }
}

/// A manual run of `worker` on the built-in config's spec for `task` in `dir`, against
/// the double at `fake_url`: its spec written to `dir`/spec.json, stdout discarded.
pub fn worker_run(worker: &Path, task: &str, fake_url: &str, dir: &Path) -> std::process::Command {
    let cfg = Config::builtin().expect("config");
    let mut spec = resolve(
        &cfg,
        &SpawnRequest {
            task: task.to_string(),
            cwd: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )
    .expect("resolve")
    .spec;
    spec.provider.base_url = fake_url.to_string();
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_string(&spec).expect("spec")).expect("write spec");
    let mut cmd = std::process::Command::new(worker);
    cmd.arg("--spec")
        .arg(&path)
        .env_clear()
        .env("ANTHROPIC_API_KEY", KEY)
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(std::process::Stdio::null());
    cmd
}
