//! Runs the real Claude Code CLI (npm `@anthropic-ai/claude-code`, pinned) against the
//! provider double, with a private HOME and configuration and nothing reaching the
//! internet.
//!
//! The CLI is installed by the tests themselves, once, under `target/tmp` (`npm`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::mcp::server_exe;
use crate::process::{API_KEY, isolated};
use crate::provider::{FakeProvider, RecordedRequest};

/// The Claude Code release the tests run.
pub const CLAUDE_CODE_VERSION: &str = "2.1.328";
/// How the plugin's tools are named for the model.
pub const PLUGIN_TOOL_PREFIX: &str = "mcp__plugin_bg-agents_bg-agents__";

/// The `claude` executable, installed with npm on first use.
pub fn claude_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(install).clone()
}

fn install() -> PathBuf {
    crate::npm::install(
        &format!("claude-code-{CLAUDE_CODE_VERSION}"),
        "@anthropic-ai/claude-code",
        CLAUDE_CODE_VERSION,
        "claude",
    )
}

/// The repository's root (a plugin marketplace).
pub fn repo_dir() -> PathBuf {
    // This crate is tests/support in the repository.
    let support = Path::new(env!("CARGO_MANIFEST_DIR"));
    support
        .ancestors()
        .nth(2)
        .expect("tests/support has a grandparent")
        .to_path_buf()
}

/// The repository's plugin directory.
pub fn plugin_dir() -> PathBuf {
    repo_dir().join("plugin")
}

/// The lines of README.md's shell blocks that run `claude`, in order.
pub fn readme_claude_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_dir().join("README.md")).expect("read README.md");
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            // A line may chain commands (`cargo build ... && claude plugin ...`): each
            // `claude` command of it counts.
            l if in_sh => lines.extend(
                l.split(" && ")
                    .map(str::trim)
                    .filter(|c| c.starts_with("claude "))
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    lines
}

/// A private home for one Claude Code run: HOME, its config, the runtime directory,
/// bg-agents' configuration, and a project directory to run in.
pub struct ClaudeHome {
    pub dir: TempDir,
}

impl ClaudeHome {
    /// A fresh home whose bg-agents configuration ends with `bg_agents_toml`.
    pub fn new(bg_agents_toml: &str) -> ClaudeHome {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home/.claude", "project", "run"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("create the home");
        }
        std::fs::write(
            dir.path().join("limits.toml"),
            format!(
                "[server]\ntranscript_dir = {:?}\nkill_grace_ms = 200\n{bg_agents_toml}\n",
                dir.path().join("transcripts").display().to_string()
            ),
        )
        .expect("write limits.toml");
        ClaudeHome { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// `$XDG_RUNTIME_DIR`, where the notices of this home's sessions live.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A `claude` command in the project directory: the built bg-agents binaries first
    /// on PATH, the provider double as the API, telemetry, updates and other traffic
    /// off, and `extra_env` on top.
    pub fn command(&self, fake: &FakeProvider, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.isolate(claude_exe(), fake);
        cmd.args(args);
        cmd
    }

    /// `sh -c LINE` in `dir`, with `claude` on PATH and the same isolation as `command`.
    pub fn shell(&self, fake: &FakeProvider, line: &str, dir: &Path) -> tokio::process::Command {
        let mut cmd = self.isolate("sh", fake);
        cmd.arg("-c").arg(line).current_dir(dir);
        cmd
    }

    /// The environment `command` gives `claude` (for a runner that is not a Command).
    pub fn env(&self, fake: &FakeProvider) -> Vec<(String, String)> {
        let cmd = self.isolate("true", fake);
        cmd.as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect()
    }

    fn isolate(&self, program: impl AsRef<OsStr>, fake: &FakeProvider) -> tokio::process::Command {
        let bin_dir = server_exe().parent().expect("bin dir").to_path_buf();
        let claude_dir = claude_exe().parent().expect("claude dir").to_path_buf();
        let path = format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin",
            bin_dir.display(),
            claude_dir.display()
        );
        let mut cmd = isolated(program, &self.home());
        cmd.current_dir(self.project())
            .env("PATH", path)
            .env("CLAUDE_CONFIG_DIR", self.home().join(".claude"))
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("BG_AGENTS_CONFIG", self.dir.path().join("limits.toml"))
            .env("ANTHROPIC_API_KEY", API_KEY)
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("CI", "true")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `claude ARGS` to its end (at most `within`); panics with its output if it
    /// does not exit 0.
    pub async fn run(&self, fake: &FakeProvider, args: &[&str], within: Duration) -> Output {
        finish(
            self.command(fake, args),
            &format!("claude {args:?}"),
            within,
        )
        .await
    }
}

/// Runs `cmd` to its end (at most `within`); panics with its output unless it exits 0.
pub async fn finish(mut cmd: tokio::process::Command, what: &str, within: Duration) -> Output {
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {within:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} exited with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The text of every `tool_result` in a request, by tool_use id, in order.
pub fn tool_results(body: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        for block in m["content"].as_array().into_iter().flatten() {
            if block["type"] == "tool_result" {
                let text = match &block["content"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => String::new(),
                };
                let id = block["tool_use_id"].as_str().unwrap_or_default();
                out.push((id.to_string(), text));
            }
        }
    }
    out
}

/// How many times `needle` occurs in the request's messages (all of them, as JSON).
pub fn occurrences(body: &Value, needle: &str) -> usize {
    body["messages"].to_string().matches(needle).count()
}

/// A readable account of the main loop's requests (the last user text and the tool
/// results of each), for failure messages.
pub fn requests_story(requests: &[RecordedRequest]) -> String {
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let results: Vec<String> = tool_results(&r.body)
                .into_iter()
                .map(|(id, text)| format!("  {id}: {text}"))
                .collect();
            format!(
                "#{i} last user: {}\n{}",
                r.last_user_text(),
                results.join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
