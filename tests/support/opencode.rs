//! Runs the real opencode CLI (npm `opencode-ai`, pinned) against the provider double: a
//! second agentic MCP client beside Claude Code. Its model reads only the text part of a
//! tool result (never `structuredContent`), cut to its first 51,200 bytes, and calls
//! bg-agents' tools as `bg-agents_<tool>`. The double plays its model through an
//! OpenAI-compatible provider; bg-agents' own agents use the double's Anthropic API.
//! Private HOME and XDG directories, and every fetch opencode can skip switched off.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::mcp::server_exe;
use crate::process::{API_KEY, isolated};
use crate::provider::FakeProvider;

/// The opencode release the tests run.
pub const OPENCODE_VERSION: &str = "1.18.33";
/// How opencode names bg-agents' tools for its model (the server is `bg-agents` in its
/// `mcp` configuration).
pub const TOOL_PREFIX: &str = "bg-agents_";
/// opencode's provider id and model for the double.
pub const MODEL: &str = "double/opencode-model";

/// The `opencode` executable, installed with npm on first use.
pub fn opencode_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        crate::npm::install(
            &format!("opencode-{OPENCODE_VERSION}"),
            "opencode-ai",
            OPENCODE_VERSION,
            "opencode",
        )
    })
    .clone()
}

/// A private home for one opencode run: its configuration (the double as its model's
/// provider, bg-agents as a local MCP server), bg-agents' configuration, a project.
pub struct OpencodeHome {
    pub dir: TempDir,
}

impl OpencodeHome {
    pub fn new(fake: &FakeProvider) -> OpencodeHome {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "project", "run"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create the home");
        }
        let home = OpencodeHome { dir };
        std::fs::write(
            home.path("limits.toml"),
            format!(
                "[server]\ntranscript_dir = {:?}\nkill_grace_ms = 200\n",
                home.path("transcripts").display().to_string()
            ),
        )
        .expect("write limits.toml");
        let config = json!({
            "$schema": "https://opencode.ai/config.json",
            "model": MODEL,
            "autoupdate": false,
            "share": "disabled",
            "permission": {"edit": "deny", "bash": "deny", "webfetch": "deny"},
            "provider": {
                "double": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "provider double",
                    "options": {"baseURL": fake.openai_base_url(), "apiKey": "sk-double"},
                    "models": {"opencode-model": {"name": "opencode model",
                                                   "tool_call": true}},
                },
            },
            "mcp": {
                "bg-agents": {
                    "type": "local",
                    "command": [server_exe().display().to_string()],
                    "enabled": true,
                    "timeout": 60000,
                    "environment": {
                        "BG_AGENTS_CONFIG": home.path("limits.toml").display().to_string(),
                        "ANTHROPIC_API_KEY": API_KEY,
                        "ANTHROPIC_BASE_URL": fake.base_url(),
                        "XDG_RUNTIME_DIR": home.path("run").display().to_string(),
                        "RUST_LOG": "warn",
                    },
                },
            },
        });
        std::fs::write(home.path("opencode.json"), config.to_string()).expect("write config");
        home
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn project(&self) -> PathBuf {
        self.path("project")
    }

    /// `opencode run --format json MESSAGE` in the project directory, isolated.
    pub fn command(&self, message: &str) -> tokio::process::Command {
        let mut cmd = isolated(opencode_exe(), &self.path("home"));
        cmd.current_dir(self.project())
            .args([
                "run", "--format", "json", "--title", "test", "--model", MODEL,
            ])
            .arg(message)
            .env("OPENCODE_CONFIG", self.path("opencode.json"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
            .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
            .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
            .env("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1")
            .env("OPENCODE_DISABLE_SHARE", "1")
            .env("OPENCODE_DISABLE_CLAUDE_CODE", "1")
            .env("OPENCODE_DISABLE_EXTERNAL_SKILLS", "1")
            .env("OPENCODE_DISABLE_PROJECT_CONFIG", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `opencode run MESSAGE` to its end (at most `within`).
    pub async fn run(&self, message: &str, within: Duration) -> Output {
        tokio::time::timeout(within, self.command(message).output())
            .await
            .unwrap_or_else(|_| panic!("opencode run did not end within {within:?}"))
            .unwrap_or_else(|e| panic!("cannot run opencode: {e}"))
    }
}

/// The tool messages of an OpenAI-compatible request, in order: (tool_call_id, content).
pub fn tool_messages(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                other => other.to_string(),
            };
            let id = m["tool_call_id"].as_str().unwrap_or_default().to_string();
            (id, content)
        })
        .collect()
}
