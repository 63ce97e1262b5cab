//! What a new user meets in the first hour: a configuration mistake that the server
//! answers instead of dying, quiet logs, transcripts that do not pile up forever, and
//! a provider endpoint whose origin `--check-config` shows.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::json;
use support::mcp::{RAW_CLIENT_NAME, Session, one_raw_request, server_exe};
use support::process::{API_KEY, eventually, isolated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_still_serves_and_every_tool_call_names_the_key_and_the_fix() {
    let s = Session::start("[max]\nmemroy_mb = 10\n").await;

    let info = s.client.peer_info().expect("server info");
    let instructions = info.instructions.as_deref().unwrap_or_default();
    assert!(instructions.contains("memroy_mb"), "{instructions}");
    let tools = s.client.list_all_tools().await.expect("tools/list");
    assert_eq!(
        tools.len(),
        7,
        "the tools are listed, so the model can call them"
    );
    for (tool, args) in [
        ("agent_spawn", json!({"task": "explore"})),
        ("agent_list", json!({})),
        ("agent_status", json!({"agent_id": "a-00000"})),
        ("agent_wait", json!({"agent_ids": ["a-00000"]})),
    ] {
        let e = s.tool_error(tool, args).await;
        assert!(e.contains("configuration is invalid"), "{tool}: {e}");
        assert!(e.contains("[max] memroy_mb"), "{tool}: {e}");
        assert!(e.contains("limits.toml"), "{tool}: names the file: {e}");
        assert!(e.contains("bg-agents --check-config"), "{tool}: {e}");
    }
    assert!(s.fake.requests().is_empty(), "nothing ran");
    assert_eq!(s.end().await.code(), Some(0));
}

/// Runs a server with RUST_LOG unset for one handshake and a tools/list, then closes its
/// stdin; returns its stderr.
async fn stderr_of_a_quiet_session(home: &Path, config: &Path) -> String {
    one_raw_request(home, config, "tools/list").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_default_to_warnings_without_the_clients_parameters() {
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("limits.toml");
    std::fs::write(&config, support::mcp::base_config(home.path(), "")).expect("config");

    let stderr = stderr_of_a_quiet_session(home.path(), &config).await;

    assert!(!stderr.contains("INFO"), "INFO by default: {stderr}");
    assert!(
        !stderr.contains(RAW_CLIENT_NAME),
        "the client's parameters were logged: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_logged_once_as_an_error_and_the_server_answers() {
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("limits.toml");
    std::fs::write(&config, "[server]\nmax_concurent = 3\n").expect("config");

    let stderr = stderr_of_a_quiet_session(home.path(), &config).await;

    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("[server] max_concurent"), "{stderr}");
    assert!(!errors[0].ends_with('`'), "one line, whole: {stderr}");
}

fn set_age(path: &Path, days: u64) {
    let then = SystemTime::now() - Duration::from_secs(days * 86_400);
    std::fs::File::options()
        .read(true)
        .open(path)
        .and_then(|f| f.set_modified(then))
        .expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_past_the_retention_are_removed_when_a_server_starts() {
    use std::os::unix::fs::DirBuilderExt;
    // A server that ran 40 days ago left a session of transcripts; another left one today.
    let dir = tempfile::tempdir().expect("tempdir");
    let transcripts = dir.path().join("transcripts");
    let old = transcripts.join("session-1000-1");
    let recent = transcripts.join("session-2000-2");
    for d in [&old, &recent] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .expect("mkdir");
    }
    let old_file = old.join("a-old01.jsonl");
    let recent_file = recent.join("a-new01.jsonl");
    std::fs::write(&old_file, "{\"type\":\"started\"}\n").expect("write");
    std::fs::write(&recent_file, "{\"type\":\"started\"}\n").expect("write");
    set_age(&old_file, 40);
    set_age(&old, 40);
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntranscript_dir = {:?}\ntranscript_retention_days = 30\n",
            transcripts.display().to_string()
        ),
    )
    .expect("config");

    let mut server = isolated(server_exe(), dir.path())
        .arg("--config")
        .arg(&config)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn bg-agents");

    let gone = eventually(Duration::from_secs(20), || !old_file.exists()).await;
    assert!(gone, "a 40-day-old transcript outlived a 30-day retention");
    assert!(
        eventually(Duration::from_secs(5), || !old.exists()).await,
        "its emptied session directory stayed"
    );
    assert!(recent_file.exists(), "a transcript of today was removed");
    drop(server.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(20), server.wait()).await;
}

#[test]
fn check_config_shows_the_endpoint_in_force_and_where_it_came_from() {
    let home = tempfile::tempdir().expect("tempdir");
    let run = |url: Option<&str>| {
        let mut cmd = std::process::Command::new(server_exe());
        cmd.arg("--check-config")
            .env_clear()
            .env("HOME", home.path());
        if let Some(u) = url {
            cmd.env("ANTHROPIC_BASE_URL", u);
        }
        cmd.output().expect("run bg-agents")
    };

    let out = run(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let transcripts = home.path().join(".local/state/bg-agents/transcripts");
    assert!(
        stdout.contains(&format!(
            "# transcripts: {}/session-*/AGENT_ID.jsonl (removed 30 days after they were last written)",
            transcripts.display()
        )),
        "says where transcripts are: {stdout}"
    );
    assert!(
        stdout
            .contains("anthropic: https://api.anthropic.com (from [providers.anthropic] base_url)"),
        "{stdout}"
    );

    let out = run(Some("http://127.0.0.1:8080"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "anthropic: http://127.0.0.1:8080 (from $ANTHROPIC_BASE_URL, which overrides [providers.anthropic] base_url)"
        ),
        "{stdout}"
    );

    let out = run(Some("127.0.0.1:8080"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad variable is an error: {stderr}"
    );
    assert!(
        stderr.contains("ANTHROPIC_BASE_URL = \"127.0.0.1:8080\""),
        "{stderr}"
    );
    assert!(stderr.contains("http:// or https://"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_logged_once_per_episode_not_per_retry() {
    use rmcp::ServiceExt;
    use support::provider::{FakeProvider, Step};
    const AGENTS: usize = 40;
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("limits.toml");
    std::fs::write(
        &config,
        support::mcp::base_config(dir.path(), "max_concurrent = 100")
            + "[defaults]\nopen_files = 32\n",
    )
    .expect("config");
    let mut server = isolated(server_exe(), dir.path())
        .arg("--config")
        .arg(&config)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .env("ANTHROPIC_BASE_URL", fake.base_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bg-agents");
    let pid = server.id().expect("pid");
    // About five descriptors per running agent: far fewer than 40 fit under 96.
    rlimit::prlimit(pid as i32, rlimit::Resource::NOFILE, Some((96, 96)), None).expect("prlimit");
    let stdout = server.stdout.take().expect("stdout");
    let stdin = server.stdin.take().expect("stdin");
    let stderr = server.stderr.take().expect("stderr");
    let stderr_text = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let _ = tokio::io::BufReader::new(stderr)
            .read_to_string(&mut s)
            .await;
        s
    });
    let client = ().serve((stdout, stdin)).await.expect("MCP handshake");
    let call = |name: &'static str, args: serde_json::Value| {
        let params = rmcp::model::CallToolRequestParams::new(name)
            .with_arguments(args.as_object().cloned().unwrap_or_default());
        client.call_tool(params)
    };
    let mut ids = Vec::new();
    for i in 0..AGENTS {
        let task = format!("descriptor agent #{i}#");
        fake.script(
            &task,
            vec![Step::Text {
                chunks: vec!["one ".into(), "two".into()],
                delay_ms: 3_000,
            }],
        );
        let r = call("agent_spawn", json!({ "task": task }))
            .await
            .expect("spawn");
        let v = r
            .structured_content
            .unwrap_or_else(|| panic!("spawn #{i} failed: {:?}", r.content));
        ids.push(v["agent_id"].as_str().expect("id").to_string());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = call("agent_list", json!({})).await.expect("list");
        let v = r.structured_content.expect("structured");
        let counts = v["counts"].clone();
        if counts == json!({ "completed": AGENTS }) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{counts}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client.cancel().await.expect("close");
    let _ = tokio::time::timeout(Duration::from_secs(20), server.wait()).await;
    let stderr = stderr_text.await.expect("stderr");

    let told = stderr.matches("out of file descriptors").count();
    assert_eq!(told, 1, "the shortage was told {told} times: {stderr}");
    // Nothing else repeats either (e.g. the notices' state file, written at every change,
    // fails too while descriptors are out).
    let mut seen = std::collections::HashMap::new();
    for line in stderr.lines().filter(|l| l.contains(" WARN ")) {
        let message = line.split_once(" WARN ").map_or(line, |(_, m)| m);
        let message = message.split(" agent=").next().unwrap_or(message);
        *seen.entry(message.to_string()).or_insert(0) += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated warnings: {repeated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_provider_is_refused_and_a_likely_wrong_model_is_warned_of() {
    let s = Session::start("").await;

    let e = s
        .tool_error(
            "agent_spawn",
            json!({ "task": "Summarize the notes", "model": "olama/qwen3:8b" }),
        )
        .await;
    assert!(e.contains("did you mean `ollama/qwen3:8b`?"), "{e}");
    let listed = s.ok("agent_list", json!({})).await;
    assert!(
        listed["agents"].as_array().is_none_or(|a| a.is_empty()),
        "nothing started: {listed}"
    );

    let spawned = s
        .ok(
            "agent_spawn",
            json!({ "task": "Summarize the notes", "model": "gpt-9-turbo" }),
        )
        .await;
    let warnings = spawned["warnings"].to_string();
    assert!(warnings.contains("`openai/gpt-9-turbo`"), "{spawned}");

    let spawned = s
        .ok(
            "agent_spawn",
            json!({ "task": "Summarize the notes", "model": "claude-sonet-5-5" }),
        )
        .await;
    let warnings = spawned["warnings"].to_string();
    assert!(
        warnings.contains("did you mean `claude-sonnet-5-5`?"),
        "{spawned}"
    );
    assert_eq!(s.end().await.code(), Some(0));
}

/// The plugin's hook command for `event`, as hooks.json has it.
fn plugin_hook_command(event: &str) -> String {
    let hooks = support::claude::plugin_dir().join("hooks/hooks.json");
    let text = std::fs::read_to_string(&hooks).expect("read hooks.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("hooks.json is JSON");
    v["hooks"][event][0]["hooks"][0]["command"]
        .as_str()
        .expect("a command")
        .to_string()
}

/// Runs the plugin's hook `event` as Claude Code does (`sh -c COMMAND`, the plugin's
/// root in CLAUDE_PLUGIN_ROOT, the hook's JSON on stdin), with `path` as PATH and
/// `runtime` as XDG_RUNTIME_DIR; its stdout.
fn run_plugin_hook(event: &str, session: &str, path: &str, runtime: &Path) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(plugin_hook_command(event))
        .env_clear()
        .env("PATH", path)
        .env("HOME", runtime)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("CLAUDE_PLUGIN_ROOT", support::claude::plugin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the hook");
    let input = json!({"session_id": session, "hook_event_name": event});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "the hook never fails the tool call: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn context_of(stdout: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the hook printed no JSON ({e}): {stdout}"));
    v["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn without_the_program_on_path_the_plugin_says_so_once_per_session() {
    let runtime = tempfile::tempdir().expect("tempdir");
    let path = "/usr/bin:/bin";
    assert!(
        !Path::new("/usr/bin/bg-agents").exists() && !Path::new("/bin/bg-agents").exists(),
        "bg-agents is installed system-wide; this test needs a PATH without it"
    );

    let first = run_plugin_hook("UserPromptSubmit", "s-one", path, runtime.path());
    let told = context_of(&first);
    assert!(told.contains("not on the PATH"), "{told}");
    assert!(told.contains("scripts/install.sh"), "{told}");
    assert!(told.contains("PATH here: /usr/bin:/bin"), "{told}");
    assert_eq!(
        run_plugin_hook("PostToolUse", "s-one", path, runtime.path()),
        "",
        "said once per session"
    );
    assert_eq!(run_plugin_hook("Stop", "s-two", path, runtime.path()), "");
    let other = run_plugin_hook("PostToolUse", "s-two", path, runtime.path());
    assert!(context_of(&other).contains("not on the PATH"), "{other}");
}

#[test]
fn with_no_server_of_the_session_running_the_hook_says_so_once_after_a_tool_call() {
    let runtime = tempfile::tempdir().expect("tempdir");
    let bin_dir = server_exe().parent().expect("target dir").to_path_buf();
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());

    assert_eq!(
        run_plugin_hook("UserPromptSubmit", "s-one", &path, runtime.path()),
        "",
        "before any tool call the MCP servers may still be starting"
    );
    let first = run_plugin_hook("PostToolUse", "s-one", &path, runtime.path());
    let told = context_of(&first);
    assert!(
        told.contains("no bg-agents MCP server is running"),
        "{told}"
    );
    assert!(told.contains("bg-agents --check-config"), "{told}");
    assert_eq!(
        run_plugin_hook("PostToolUse", "s-one", &path, runtime.path()),
        "",
        "said once per session"
    );

    // A session whose server runs (its directory is named after a live pid: this one's)
    // hears nothing of the kind.
    let server_dir = runtime
        .path()
        .join("bg-agents/s-live")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&server_dir).expect("mkdir");
    for d in [
        runtime.path().join("bg-agents"),
        runtime.path().join("bg-agents/s-live"),
        server_dir.clone(),
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    assert_eq!(
        run_plugin_hook("PostToolUse", "s-live", &path, runtime.path()),
        ""
    );
}

/// The README's set-up line: the first line of its first `sh` block.
fn readme_set_up_line() -> String {
    let readme = std::fs::read_to_string(support::claude::repo_dir().join("README.md"))
        .expect("read README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("README.md has an sh block");
    block.lines().next().unwrap_or_default().to_string()
}

/// Runs scripts/install.sh with `path` as PATH (nothing else but HOME) and `args`.
fn install_script(path: &str, args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().expect("tempdir");
    std::process::Command::new("sh")
        .arg(support::claude::repo_dir().join("scripts/install.sh"))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .output()
        .expect("run scripts/install.sh")
}

#[test]
fn the_set_up_line_runs_the_install_script_and_hard_codes_no_target_dir() {
    let line = readme_set_up_line();
    assert!(
        line.starts_with("scripts/install.sh && claude plugin marketplace add ./"),
        "{line}"
    );
    assert!(!line.contains("target/"), "{line}");
    assert!(!line.contains(".cargo/bin"), "{line}");
    let script = std::fs::read_to_string(support::claude::repo_dir().join("scripts/install.sh"))
        .expect("read scripts/install.sh");
    assert!(
        !script.contains("target/release"),
        "the target dir is asked of cargo"
    );
    assert!(
        script.contains("cargo metadata"),
        "the target dir is asked of cargo"
    );
}

/// A directory of links to `tools` (from /usr/bin or /bin) and nothing else: as PATH, it
/// has exactly these commands, whatever else this machine has installed.
fn bin_dir_with(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for tool in tools {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is in neither /usr/bin nor /bin"));
        std::os::unix::fs::symlink(found, dir.path().join(tool)).expect("link a tool");
    }
    dir
}

#[test]
fn the_install_script_says_what_to_do_when_rust_is_missing_and_builds_nothing() {
    // What the script runs before it looks for cargo, and no cargo.
    let bin = bin_dir_with(&["sh", "dirname", "uname"]);
    let out = install_script(&bin.path().display().to_string(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cargo (Rust) is not on PATH"), "{stderr}");
    assert!(stderr.contains("https://rustup.rs"), "{stderr}");
    assert!(stderr.contains("1.88"), "{stderr}");
}

#[test]
fn the_install_script_says_what_to_do_when_claude_code_is_missing() {
    // cargo and rustc (this build's), what the script runs before it looks for claude,
    // and no `claude`.
    let cargo_dir = std::env::var_os("CARGO")
        .map(std::path::PathBuf::from)
        .and_then(|c| c.parent().map(Path::to_path_buf))
        .expect("cargo sets CARGO for its tests");
    assert!(
        !cargo_dir.join("claude").exists(),
        "claude is installed beside cargo in {}",
        cargo_dir.display()
    );
    let bin = bin_dir_with(&["sh", "dirname", "uname", "sed", "cc"]);
    let path = format!("{}:{}", cargo_dir.display(), bin.path().display());
    let out = install_script(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Claude Code CLI (claude) is not on PATH"),
        "{stderr}"
    );
    assert!(
        stderr.contains("npm install -g @anthropic-ai/claude-code"),
        "{stderr}"
    );
    assert!(stderr.contains("BG_AGENTS_NO_CLAUDE=1"), "{stderr}");

    let out = install_script(&path, &["--bogus"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown option --bogus"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_under_an_unusable_base_url_variable_is_refused_naming_it() {
    use rmcp::ServiceExt;
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("limits.toml");
    std::fs::write(&config, support::mcp::base_config(home.path(), "")).expect("config");
    let mut server = isolated(server_exe(), home.path())
        .arg("--config")
        .arg(&config)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .env("ANTHROPIC_BASE_URL", "127.0.0.1:9")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bg-agents");
    let stdout = server.stdout.take().expect("stdout");
    let stdin = server.stdin.take().expect("stdin");
    let client = ().serve((stdout, stdin)).await.expect("MCP handshake");

    let params = rmcp::model::CallToolRequestParams::new("agent_spawn").with_arguments(
        json!({"task": "Summarize the notes"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let r = client.call_tool(params).await.expect("tools/call");
    let text = support::mcp::text_of(&r);
    assert_eq!(r.is_error, Some(true), "{text}");
    assert!(
        text.starts_with("ANTHROPIC_BASE_URL = \"127.0.0.1:9\""),
        "{text}"
    );
    assert!(text.contains("nothing was started"), "{text}");
    client.cancel().await.expect("close");
    let out = tokio::time::timeout(Duration::from_secs(20), server.wait_with_output())
        .await
        .expect("the server exits after stdin closes")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("ANTHROPIC_BASE_URL = \"127.0.0.1:9\""))
        .collect();
    assert_eq!(warned.len(), 1, "said once at start: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_without_bg_agents_on_path_tells_the_model_why() {
    use support::claude::{ClaudeHome, claude_exe, finish, plugin_dir};
    use support::provider::FakeProvider;
    let fake = FakeProvider::start().await;
    let home = ClaudeHome::new("");
    let plugin = plugin_dir();
    let mut cmd = home.command(
        &fake,
        &[
            "-p",
            "Say hello.",
            "--plugin-dir",
            plugin.to_str().expect("utf-8"),
        ],
    );
    // Claude Code and node, but not the bg-agents binaries.
    let claude_dir = claude_exe().parent().expect("claude dir").to_path_buf();
    cmd.env(
        "PATH",
        format!("{}:/usr/local/bin:/usr/bin:/bin", claude_dir.display()),
    );
    finish(
        cmd,
        "claude -p without bg-agents on PATH",
        Duration::from_secs(120),
    )
    .await;

    let told: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| {
            support::claude::occurrences(&r.body, "bg-agents program is not on the PATH") > 0
        })
        .collect();
    assert!(
        !told.is_empty(),
        "no request to the model said that bg-agents is not on PATH: {:?}",
        fake.requests()
            .iter()
            .map(|r| r.last_user_text())
            .collect::<Vec<_>>()
    );
}
