//! Interactive Claude Code (the TUI most people run) inside a private tmux server: typed
//! into with `send-keys`, read with `capture-pane`, against the provider double.
//!
//! Each `Tui` has its own tmux server on a socket in its own temporary directory, so
//! tests never see each other's sessions; dropping it kills that server (and only it)
//! and makes sure the `claude` process it ran is gone.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::claude::{ClaudeHome, claude_exe};
use crate::process::{API_KEY, alive, target_tmp};
use crate::provider::FakeProvider;

/// The prompt Claude Code shows when it waits for the user.
pub const PROMPT: &str = "❯";

/// Writes what gets an interactive session past onboarding without a person: the
/// onboarding and the project's trust dialog done, the env API key approved, and
/// `allow` (permission rules) allowed without asking in the default permission mode.
pub fn skip_onboarding(home: &ClaudeHome, allow: &[&str]) {
    let project = home.project().display().to_string();
    let key_tail: String = API_KEY.chars().skip(API_KEY.chars().count() - 20).collect();
    let state = json!({
        "hasCompletedOnboarding": true,
        "numStartups": 3,
        "theme": "dark",
        "customApiKeyResponses": {"approved": [key_tail], "rejected": []},
        "projects": {project: {
            "hasTrustDialogAccepted": true,
            "hasCompletedProjectOnboarding": true,
            "allowedTools": []
        }}
    });
    let body = serde_json::to_string_pretty(&state).expect("json");
    // CLAUDE_CONFIG_DIR (home/.claude) holds it; HOME/.claude.json for older lookups.
    for path in [
        home.home().join(".claude/.claude.json"),
        home.home().join(".claude.json"),
    ] {
        std::fs::write(&path, &body).expect("write .claude.json");
    }
    // The default permission mode, where the allow rules decide: auto mode's safety
    // check runs on Anthropic's servers, which the provider double is not.
    let settings = json!({"permissions": {"allow": allow, "defaultMode": "default"}});
    std::fs::write(
        home.home().join(".claude/settings.json"),
        serde_json::to_string_pretty(&settings).expect("json"),
    )
    .expect("write settings.json");
}

/// One interactive `claude` in a tmux server of its own.
pub struct Tui {
    /// One TUI at a time on the machine: Claude Code starts slowly on a loaded 2-core box.
    _turn: Flock<File>,
    socket: PathBuf,
    /// The pane's process: `claude` itself (the script execs it).
    pid: Option<u32>,
    _dir: tempfile::TempDir,
}

impl Tui {
    /// Starts `claude ARGS` in `home`'s project with its isolated environment and
    /// `extra_env`, in a 200×50 terminal, and waits for its prompt.
    pub async fn start(
        home: &ClaudeHome,
        fake: &FakeProvider,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Tui {
        let turn = take_turn().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("run.sh");
        let mut lines = vec!["#!/bin/sh".to_string()];
        for (k, v) in home.env(fake) {
            // Claude Code is interactive here: not a CI run.
            if k != "CI" {
                lines.push(format!("export {k}={}", quote(&v)));
            }
        }
        for (k, v) in extra_env {
            lines.push(format!("export {k}={}", quote(v)));
        }
        lines.push(format!(
            "cd {}",
            quote(&home.project().display().to_string())
        ));
        let mut exec = format!("exec {}", quote(&claude_exe().display().to_string()));
        for a in args {
            exec.push(' ');
            exec.push_str(&quote(a));
        }
        lines.push(exec);
        std::fs::write(&script, lines.join("\n") + "\n").expect("write the run script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod the run script");
        let mut tui = Tui {
            _turn: turn,
            socket: dir.path().join("tmux.sock"),
            pid: None,
            _dir: dir,
        };
        tui.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "200",
            "-y",
            "50",
            &script.display().to_string(),
        ])
        .await;
        let pid = tui
            .tmux(&["display-message", "-p", "-t", "t", "#{pane_pid}"])
            .await;
        tui.pid = pid.trim().parse().ok();
        tui.wait_for(PROMPT, Duration::from_secs(60)).await;
        tui
    }

    async fn tmux(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!("the TUI tests need tmux (apt-get install tmux); running it failed: {e}")
            });
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen and the scrollback, as text.
    pub async fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t", "-S", "-200"])
            .await
    }

    /// Waits until the screen shows `needle`; panics with the screen after `within`.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen().await;
            if screen.contains(needle) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("the screen never showed {needle:?} within {within:?}:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Types `text` and presses Enter until Claude Code takes the line (an Enter that
    /// arrives while it is still busy starting can be lost).
    pub async fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]).await;
        self.wait_for(text, Duration::from_secs(30)).await;
        for _ in 0..20 {
            self.tmux(&["send-keys", "-t", "t", "Enter"]).await;
            tokio::time::sleep(Duration::from_millis(750)).await;
            if input_is_empty(&self.screen().await) {
                return;
            }
        }
        panic!(
            "Claude Code never took the line {text:?}:\n{}",
            self.screen().await
        );
    }

    /// Leaves Claude Code with `/exit` and waits until its process is gone.
    pub async fn exit(self) {
        self.tmux(&["send-keys", "-t", "t", "-l", "/exit"]).await;
        self.wait_for("/exit", Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() && Instant::now() < deadline {
            // The pane (and the tmux server with it) ends when claude does.
            let _ = tokio::process::Command::new("tmux")
                .arg("-S")
                .arg(&self.socket)
                .args(["send-keys", "-t", "t", "Enter"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(!self.running(), "claude did not exit after /exit");
    }

    /// Presses one key (tmux key name, e.g. `Escape`, `C-c`).
    pub async fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]).await;
    }

    /// Whether the `claude` process still runs.
    pub fn running(&self) -> bool {
        self.pid.is_some_and(alive)
    }

    /// Pids of the `bg-agent-worker` processes below this TUI's `claude` (its MCP
    /// server's agents), found by walking parent links in /proc.
    pub fn workers(&self) -> Vec<u32> {
        let Some(root) = self.pid else {
            return Vec::new();
        };
        let parents: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let (head, rest) = stat.rsplit_once(')')?;
                let comm = head.split_once('(')?.1.to_string();
                let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
                Some((pid, ppid, comm))
            })
            .collect();
        let mut below = vec![root];
        let mut i = 0;
        while i < below.len() {
            let p = below[i];
            below.extend(
                parents
                    .iter()
                    .filter(|(_, pp, _)| *pp == p)
                    .map(|(c, _, _)| *c),
            );
            i += 1;
        }
        parents
            .iter()
            .filter(|(pid, _, comm)| below.contains(pid) && comm == "bg-agent-worker")
            .map(|(pid, _, _)| *pid)
            .collect()
    }

    /// A handle that tells whether this TUI's `claude` still runs, after the TUI is gone.
    pub fn probe(&self) -> Probe {
        Probe { pid: self.pid }
    }
}

/// Whether one TUI's `claude` process still runs.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pid: Option<u32>,
}

impl Probe {
    pub fn running(&self) -> bool {
        self.pid.is_some_and(alive)
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        // Only this test's tmux server, by its own socket.
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = self.pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Whether the input box (the last line that starts with the prompt) is empty.
fn input_is_empty(screen: &str) -> bool {
    screen
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(PROMPT))
        .is_some_and(|l| l.trim() == PROMPT)
}

/// Waits for this test's turn to run a TUI (a file lock under target/tmp).
async fn take_turn() -> Flock<File> {
    let path = target_tmp().join("claude-tui.lock");
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create target/tmp");
        let file = File::create(&path).expect("create the TUI lock");
        Flock::lock(file, FlockArg::LockExclusive).expect("lock the TUI lock")
    })
    .await
    .expect("wait for the TUI lock")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
