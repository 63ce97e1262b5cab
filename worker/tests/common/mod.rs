//! Helpers shared by the worker's integration tests: per test, a fake provider, a
//! workspace and a home directory of its own; the real worker binary started with a
//! cleared environment; its output parsed into protocol `Event`s.
//!
//! Every finished run is checked for the API key: it must never appear in any output.
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bg_agent_worker::config::Config;
use bg_agent_worker::protocol::{Event, TaskSpec};
use bg_agent_worker::resolve::{SpawnRequest, resolve};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use support::process::{API_KEY, isolated};
pub use support::provider::{FakeProvider, RecordedRequest, Step};

/// The OpenAI-compatible provider's key; like `API_KEY`, it must never appear in output.
pub const OPENAI_KEY: &str = "sk-openai-test-5b8e1a-never-print-me-77c0";
/// A run that takes longer than this is hung: fail rather than block the suite.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// One test's world: the fake provider, and under one temporary root a workspace (the
/// agent's cwd), a home directory (so no developer config is found), the workers' TMPDIR
/// (where their commands' scratch directories go) and files outside the workspace.
pub struct Harness {
    pub fake: FakeProvider,
    root: tempfile::TempDir,
}

impl Harness {
    /// Must run on a multi-thread runtime: the fake serves on the test's runtime.
    pub async fn start() -> Harness {
        let root = tempfile::tempdir().expect("temp dir");
        for dir in ["workspace", "home/.config", "tmp"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("create test dirs");
        }
        Harness {
            fake: FakeProvider::start().await,
            root,
        }
    }

    /// The temporary root holding workspace/ and home/ (canonical).
    pub fn root(&self) -> PathBuf {
        std::fs::canonicalize(self.root.path()).expect("canonical temp root")
    }

    /// The workers' TMPDIR (canonical): where their commands' scratch directories are.
    pub fn tmp(&self) -> PathBuf {
        self.root().join("tmp")
    }

    /// The agent's cwd (canonical).
    pub fn workspace(&self) -> PathBuf {
        self.root().join("workspace")
    }

    /// Writes `content` to `rel` under the temporary root and returns its path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.root().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// A manual run of the worker in the workspace, pointed at the fake through
    /// ANTHROPIC_BASE_URL with the test key. The environment is cleared first so a
    /// developer's real key or config cannot leak in.
    pub fn command(&self) -> Command {
        let mut cmd = isolated(
            env!("CARGO_BIN_EXE_bg-agent-worker"),
            &self.root().join("home"),
        );
        cmd.env("ANTHROPIC_BASE_URL", self.fake.base_url())
            .env("ANTHROPIC_API_KEY", API_KEY)
            // Scratch directories of commands go here, where a test can see them.
            .env("TMPDIR", self.tmp())
            .current_dir(self.workspace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `command()` with `args`.
    pub fn worker(&self, args: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.args(args);
        cmd
    }

    /// A spec exactly as the server resolves it from the built-in configuration, with
    /// the workspace as cwd and the fake as the Anthropic endpoint.
    pub fn spec(&self, task: &str) -> TaskSpec {
        let config = Config::builtin().expect("built-in config");
        let request = SpawnRequest {
            task: task.to_string(),
            cwd: Some(self.workspace()),
            ..Default::default()
        };
        let mut spec = resolve(&config, &request).expect("resolve spec").spec;
        spec.provider.base_url = self.fake.base_url();
        spec.provider.base_url_env = None;
        spec
    }

    /// A config file that routes the `fast` tier to the fake's OpenAI-compatible API.
    pub fn openai_config(&self) -> PathBuf {
        self.write(
            "openai.toml",
            &format!(
                "[tiers.fast]\nprovider = \"openai\"\nmodel = \"local-model\"\n\n\
                 [providers.openai]\nbase_url = \"{}\"\nmax_retries = 1\n",
                self.fake.openai_base_url()
            ),
        )
    }

    /// Starts the worker the server's way: `--spec -`, the spec as one line on stdin,
    /// stdin kept open.
    pub async fn start_spec(&self, spec: &TaskSpec) -> Live {
        let mut cmd = self.worker(&["--spec", "-"]);
        cmd.stdin(Stdio::piped());
        let mut live = Live::spawn(cmd);
        let line = serde_json::to_string(spec).expect("serialize spec") + "\n";
        let stdin = live.stdin.as_mut().expect("piped stdin");
        stdin.write_all(line.as_bytes()).await.expect("write spec");
        stdin.flush().await.expect("flush spec");
        live
    }
}

/// Runs `cmd` to its end (stdin as the command set it) and collects its output.
pub async fn run(mut cmd: Command) -> Run {
    let child = cmd.spawn().expect("spawn bg-agent-worker");
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("the worker did not finish in time")
        .expect("wait for the worker");
    Run::new(
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A worker still running, its stdout read event by event.
pub struct Live {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far.
    seen: Vec<String>,
}

impl Live {
    pub fn spawn(mut cmd: Command) -> Live {
        let mut child = cmd.spawn().expect("spawn bg-agent-worker");
        let stdout = child.stdout.take().expect("piped stdout");
        Live {
            stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("worker still running") as i32)
    }

    /// Reads events until one satisfies `pred`, and returns it.
    pub async fn wait_for(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        let read = async {
            while let Some(line) = self.lines.next_line().await.expect("read stdout") {
                self.seen.push(line.clone());
                let event = parse_event(&line);
                if pred(&event) {
                    return event;
                }
            }
            panic!(
                "stdout ended before the expected event; got:\n{}",
                self.seen.join("\n")
            );
        };
        tokio::time::timeout(RUN_TIMEOUT, read)
            .await
            .expect("the expected event did not come in time")
    }

    /// Closes stdin (for a `--spec -` worker: the server is gone).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the worker to exit and returns everything it wrote.
    pub async fn finish(mut self) -> Run {
        let rest = async {
            while let Some(line) = self.lines.next_line().await.expect("read stdout") {
                self.seen.push(line);
            }
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                e.read_to_string(&mut stderr).await.expect("read stderr");
            }
            let status = self.child.wait().await.expect("wait for the worker");
            (status, stderr)
        };
        let (status, stderr) = tokio::time::timeout(RUN_TIMEOUT, rest)
            .await
            .expect("the worker did not exit in time");
        let mut stdout = self.seen.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Run::new(status.code(), stdout, stderr)
    }
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    /// None when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn new(code: Option<i32>, stdout: String, stderr: String) -> Run {
        for key in [API_KEY, OPENAI_KEY] {
            assert!(
                !stdout.contains(key) && !stderr.contains(key),
                "the API key leaked into the output:\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        Run {
            code,
            stdout,
            stderr,
        }
    }

    /// Every stdout line as an event; panics on a line that is not one.
    pub fn events(&self) -> Vec<Event> {
        self.stdout.lines().map(parse_event).collect()
    }

    /// The `type` of every event, in order.
    pub fn types(&self) -> Vec<String> {
        self.events().iter().map(event_type).collect()
    }

    /// The last event, which must end the run.
    pub fn last(&self) -> Event {
        let last = self.events().pop().expect("no events");
        assert!(
            last.is_final(),
            "the last event does not end the run: {last:?}"
        );
        last
    }

    /// The concatenated `text` deltas.
    pub fn text(&self) -> String {
        self.events()
            .iter()
            .filter_map(|e| match e {
                Event::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn retries(&self) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e, Event::Retry { .. }))
            .collect()
    }

    pub fn tool_results(&self) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e, Event::ToolResult { .. }))
            .collect()
    }

    /// For assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn parse_event(line: &str) -> Event {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not an event ({e}): {line}"))
}

pub fn event_type(event: &Event) -> String {
    let value = serde_json::to_value(event).expect("serialize event");
    value["type"].as_str().expect("event type").to_string()
}

/// The tool results sent back to the provider in a recorded Anthropic request:
/// `(tool_use_id, content, is_error)` of every `tool_result` block.
pub fn anthropic_tool_results(request: &RecordedRequest) -> Vec<(String, String, bool)> {
    let messages = request.body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            let content = match &b["content"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (
                b["tool_use_id"].as_str().unwrap_or_default().to_string(),
                content,
                b["is_error"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// A tool call step for the fake.
pub fn tool_use(id: &str, name: &str, input: Value) -> Step {
    Step::ToolUse {
        text: None,
        id: id.to_string(),
        name: name.to_string(),
        input,
    }
}

/// An error response with a `retry-after: 0` header, so retries do not slow the suite.
pub fn status_now(code: u16) -> Step {
    match Step::status(code) {
        Step::Status {
            code,
            error_type,
            message,
            ..
        } => Step::Status {
            code,
            error_type,
            message,
            retry_after: Some(0),
        },
        other => other,
    }
}
