//! Runs the real `bg-agents` binary as a child process behind rmcp's client, against the
//! provider double, with a private HOME, config and transcript directory.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, ProtocolVersion,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use crate::process::{API_KEY, isolated};
use crate::provider::FakeProvider;

/// The server binary under test.
pub fn server_exe() -> PathBuf {
    crate::process::bin("bg-agents")
}

/// A server session: the fake provider, the server process, its client.
pub struct Session<H: ClientHandler = ()> {
    pub fake: FakeProvider,
    pub client: RunningService<RoleClient, H>,
    pub dir: TempDir,
    pub server_pid: u32,
    /// The server process (killed if the session is dropped while it runs).
    pub server: Child,
}

/// Config text every session starts from: transcripts in the temp dir, short grace, then
/// `server_keys` (more `[server]` keys, one per line).
pub fn base_config(dir: &Path, server_keys: &str) -> String {
    format!(
        "[server]\ntranscript_dir = {:?}\nkill_grace_ms = 500\n{server_keys}\n",
        dir.join("transcripts").display().to_string()
    )
}

impl Session<()> {
    pub async fn start(extra_config: &str) -> Session<()> {
        Self::start_with((), extra_config).await
    }

    /// Starts a server with more `[server]` keys, e.g. `"max_concurrent = 1"`.
    pub async fn start_server(server_keys: &str) -> Session<()> {
        Self::launch((), server_keys, "").await
    }

    /// Starts a server whose environment has no ANTHROPIC_API_KEY.
    pub async fn start_without_key(extra_config: &str) -> Session<()> {
        Self::launch_with((), "", extra_config, ClientLifecycleMode::Initialize, false).await
    }
}

impl<H: ClientHandler> Session<H> {
    /// Starts a server whose config is `base_config` + `extra_config` (other tables; for
    /// `[server]` keys use `launch`).
    pub async fn start_with(handler: H, extra_config: &str) -> Session<H> {
        Self::launch(handler, "", extra_config).await
    }

    /// Starts a server whose config is `base_config(dir, server_keys)` + `extra_config`,
    /// connected with the `initialize` handshake (what `ServiceExt::serve` does; the
    /// session then speaks 2025-11-25).
    pub async fn launch(handler: H, server_keys: &str, extra_config: &str) -> Session<H> {
        Self::launch_with(
            handler,
            server_keys,
            extra_config,
            ClientLifecycleMode::Initialize,
            true,
        )
        .await
    }

    /// Starts a server and connects with `server/discover` and per-request metadata: the
    /// 2026-07-28 protocol.
    pub async fn start_modern(handler: H) -> Session<H> {
        let modern = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        };
        Self::launch_with(handler, "", "", modern, true).await
    }

    /// `start_modern` with more `[server]` keys.
    pub async fn start_modern_with(handler: H, server_keys: &str) -> Session<H> {
        let modern = ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        };
        Self::launch_with(handler, server_keys, "", modern, true).await
    }

    async fn launch_with(
        handler: H,
        server_keys: &str,
        extra_config: &str,
        lifecycle: ClientLifecycleMode,
        with_key: bool,
    ) -> Session<H> {
        let fake = FakeProvider::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("limits.toml");
        std::fs::write(
            &config,
            format!("{}{extra_config}", base_config(dir.path(), server_keys)),
        )
        .expect("write config");
        let mut cmd = isolated(server_exe(), dir.path());
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if with_key {
            cmd.env("ANTHROPIC_API_KEY", API_KEY);
        }
        // The test owns the process (rather than rmcp's TokioChildProcess) to see how it
        // exits: code 0 after stdin EOF or a signal.
        let mut server = cmd.spawn().expect("spawn bg-agents");
        let server_pid = server.id().expect("server pid");
        let stdout = server.stdout.take().expect("server stdout");
        let stdin = server.stdin.take().expect("server stdin");
        let client = handler
            .serve_with_lifecycle((stdout, stdin), lifecycle)
            .await
            .expect("MCP handshake");
        Session {
            fake,
            client,
            dir,
            server_pid,
            server,
        }
    }

    /// Ends the session as a client does (closes the server's stdin) and returns how the
    /// server exited.
    pub async fn end(self) -> ExitStatus {
        let Session {
            client, mut server, ..
        } = self;
        client.cancel().await.expect("close the client");
        server_exit(&mut server).await
    }

    /// Sends `sig` to the server process.
    pub fn signal_server(&self, sig: Signal) {
        kill(Pid::from_raw(self.server_pid as i32), sig).expect("signal the server");
    }

    /// Worker pids of running agents (from agent_status).
    pub async fn worker_pids(&self, ids: &[String]) -> Vec<u32> {
        let mut pids = Vec::new();
        for id in ids {
            let st = self.status(id).await;
            assert_eq!(st["status"], "running", "{st}");
            let pid = st["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {st}"));
            pids.push(pid as u32);
        }
        pids
    }

    pub async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let Value::Object(map) = args else {
            panic!("arguments must be an object")
        };
        self.client
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(map))
            .await
            .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"))
    }

    /// Calls a tool that must succeed; returns its structured content.
    pub async fn ok(&self, tool: &str, args: Value) -> Value {
        let r = self.call(tool, args.clone()).await;
        assert_ne!(
            r.is_error,
            Some(true),
            "{tool} {args} failed: {}",
            text_of(&r)
        );
        assert!(!text_of(&r).is_empty(), "{tool} returned no readable text");
        r.structured_content
            .unwrap_or_else(|| panic!("{tool} returned no structuredContent"))
    }

    /// Calls a tool that must fail as a tool error; returns the error text.
    pub async fn tool_error(&self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args.clone()).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{tool} {args} should have failed: {}",
            text_of(&r)
        );
        text_of(&r)
    }

    /// Spawns an agent on `task` and returns its id.
    pub async fn spawn(&self, task: &str) -> String {
        self.spawn_with(json!({ "task": task })).await
    }

    pub async fn spawn_with(&self, args: Value) -> String {
        let v = self.ok("agent_spawn", args).await;
        v["agent_id"].as_str().expect("agent_id").to_string()
    }

    /// Waits (through agent_wait, repeatedly) until every id has ended; returns the wait view.
    pub async fn wait_all(&self, ids: &[String]) -> Value {
        for _ in 0..10 {
            let v = self
                .ok(
                    "agent_wait",
                    json!({ "agent_ids": ids, "mode": "all", "wait_seconds": 30 }),
                )
                .await;
            if v["done"] == json!(true) {
                return v;
            }
        }
        panic!("agents {ids:?} did not end within 300 s")
    }

    /// Reads every page of agent_list (following `next_offset`); returns the first
    /// reply and all rows.
    pub async fn list_all(&self, args: Value) -> (Value, Vec<Value>) {
        let first = self.ok("agent_list", args.clone()).await;
        let mut rows: Vec<Value> = first["agents"].as_array().expect("agents").clone();
        let mut next = first["next_offset"].as_u64();
        let mut pages = 1;
        while let Some(offset) = next {
            let mut a = args.clone();
            a["offset"] = json!(offset);
            let page = self.ok("agent_list", a).await;
            let got = page["agents"].as_array().expect("agents");
            assert!(!got.is_empty(), "a page past next_offset is empty: {page}");
            rows.extend(got.iter().cloned());
            next = page["next_offset"].as_u64();
            pages += 1;
            assert!(pages < 1000, "paging does not end");
        }
        (first, rows)
    }

    pub async fn status(&self, id: &str) -> Value {
        self.ok("agent_status", json!({ "agent_id": id })).await
    }
}

/// The structuredContent as the model receives it: compact JSON (what Claude Code shows).
pub fn as_model_reads(r: &CallToolResult) -> String {
    r.structured_content
        .as_ref()
        .expect("structuredContent")
        .to_string()
}

/// Checks `value` against `schema` (JSON Schema as schemars writes it: `$ref` into
/// `$defs`, `properties`, `required`, `items`, `additionalProperties`, `anyOf`/`oneOf`,
/// `type`, `enum`); returns what does not match.
pub fn schema_mismatches(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_schema(schema, schema, value, "$", &mut out);
    out
}

fn check_schema(root: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/$defs/");
        return check_schema(root, &root["$defs"][name], value, at, out);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema[key].as_array() {
            let fits = options.iter().any(|o| {
                let mut m = Vec::new();
                check_schema(root, o, value, at, &mut m);
                m.is_empty()
            });
            if !fits {
                out.push(format!("{at}: {value} matches none of {key}"));
            }
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !ok {
            out.push(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Value::Object(map) = value {
        if let Some(required) = schema["required"].as_array() {
            for r in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    out.push(format!("{at}: required `{r}` is missing"));
                }
            }
        }
        let props = schema["properties"].as_object();
        for (k, v) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check_schema(root, s, v, &format!("{at}.{k}"), out),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => out.push(format!("{at}: `{k}` is not in the schema")),
                    extra @ Value::Object(_) => {
                        check_schema(root, extra, v, &format!("{at}.{k}"), out)
                    }
                    _ if props.is_some() => {
                        out.push(format!("{at}: `{k}` is not in the schema's properties"))
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_schema(root, item_schema, v, &format!("{at}[{i}]"), out);
        }
    }
}

pub fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client that speaks the older, initialize-based protocol version, and records the
/// URIs of `notifications/resources/updated` it receives.
#[derive(Clone, Default)]
pub struct LegacyClient {
    pub updated: Arc<Mutex<Vec<String>>>,
}

impl LegacyClient {
    pub fn updated(&self) -> Vec<String> {
        self.updated.lock().unwrap().clone()
    }
}

impl ClientHandler for LegacyClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default().with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.updated.lock().unwrap().push(params.uri);
    }
}

/// The client name `one_raw_request` sends in `initialize`.
pub const RAW_CLIENT_NAME: &str = "raw-test-client";

/// Speaks MCP to a fresh server by hand, as a client's bytes would: the `initialize`
/// handshake (2025-11-25), one `method` request with id 1, then stdin closed. The server
/// reads `config` and has HOME `home` and the test API key. Returns the reply line exactly
/// as the server wrote it, and the server's stderr.
pub async fn one_raw_request(home: &Path, config: &Path, method: &str) -> (String, String) {
    let mut server = isolated(server_exe(), home)
        .arg("--config")
        .arg(config)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bg-agents");
    let mut stdin = server.stdin.take().expect("stdin");
    for message in [
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": RAW_CLIENT_NAME, "version": "1"},
        }}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": method}),
    ] {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .expect("write");
    }
    stdin.flush().await.expect("flush");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let reply = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let id = serde_json::from_str::<Value>(&line).map(|v| v["id"].clone());
            if id.is_ok_and(|id| id == 1) {
                return Some(line);
            }
        }
        None
    })
    .await;
    let Ok(Some(reply)) = reply else {
        panic!("{method} was not answered within 20 s")
    };
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), server.wait_with_output())
        .await
        .expect("the server exits after stdin closes")
        .expect("wait");
    (reply, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// How the server exited; panics if it is still running after 15 s.
pub async fn server_exit(server: &mut Child) -> ExitStatus {
    tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("the server did not exit within 15 s")
        .expect("wait for the server")
}
