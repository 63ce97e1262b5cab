//! Hardening, end to end through the real binaries: private transcripts, a protocol that
//! answers every line, descriptors that hold at scale, and causes that are right.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::mcp::{Session, server_exe};
use support::process::API_KEY;
use support::provider::{FakeProvider, Step};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A server driven by raw bytes on its stdin: what a client with bugs (or Node's
/// JSON.stringify of a cut string) really sends.
struct Raw {
    server: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    _fake: FakeProvider,
    _dir: tempfile::TempDir,
}

impl Raw {
    /// `config` is the whole limits.toml; `env` is added to a cleared environment.
    async fn start(config: &str, env: &[(&str, &str)], home: bool) -> Raw {
        let fake = FakeProvider::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("limits.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(server_exe());
        cmd.arg("--config")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("ANTHROPIC_API_KEY", API_KEY)
            .env("ANTHROPIC_BASE_URL", fake.base_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if home {
            cmd.env("HOME", dir.path());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut server = cmd.spawn().expect("spawn bg-agents");
        let stdin = server.stdin.take().expect("stdin");
        let stdout = BufReader::new(server.stdout.take().expect("stdout")).lines();
        let mut raw = Raw {
            server,
            stdin,
            stdout,
            _fake: fake,
            _dir: dir,
        };
        raw.send(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
        let init = raw.reply().await;
        assert_eq!(init["id"], 0, "{init}");
        raw.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        raw
    }

    /// Writes `line` and a newline.
    async fn send(&mut self, line: &[u8]) {
        self.stdin.write_all(line).await.expect("write");
        self.stdin.write_all(b"\n").await.expect("write");
        self.stdin.flush().await.expect("flush");
    }

    /// The next JSON-RPC message from the server (fails after 10 s).
    async fn reply(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .expect("the server answered within 10 s")
            .expect("read")
            .expect("the server is still up");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    async fn call(&mut self, id: u64, tool: &str, args: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                         "params": {"name": tool, "arguments": args}});
        self.send(req.to_string().as_bytes()).await;
        loop {
            let msg = self.reply().await;
            if msg["id"] == id {
                return msg;
            }
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.server.start_kill();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_are_private_whatever_the_umask() {
    // The server inherits the umask; 000 would make naive files world-writable.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let s = Session::start("").await;
    nix::sys::stat::umask(old);
    let id = s.spawn("Say hello privately").await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let st = s
        .ok("agent_status", json!({"agent_id": id, "verbose": true}))
        .await;
    let file = st["details"]["output"]["transcript_path"]
        .as_str()
        .expect("a transcript path")
        .to_string();
    let file = Path::new(&file);
    let session_dir = file.parent().expect("session dir");
    assert_eq!(mode(file), 0o600, "{}", file.display());
    assert_eq!(mode(session_dir), 0o700, "{}", session_dir.display());
    assert_eq!(
        mode(session_dir.parent().expect("base")),
        0o700,
        "the base transcript dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_on_disk_keeps_up_with_status() {
    let s = Session::start("").await;
    let task = "look at a file then think for long";
    s.fake.script(
        task,
        vec![
            Step::ToolUse {
                text: None,
                id: "toolu_1".into(),
                name: "glob".into(),
                input: json!({"pattern": "*"}),
            },
            Step::Hang {
                after_chunks: vec!["thinking".into()],
            },
        ],
    );
    let id = s.spawn(task).await;
    // Until status shows the first turn's usage (the second turn then hangs).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let st = loop {
        let st = s.status(&id).await;
        if st["usage"]["input_tokens"].as_u64().unwrap_or(0) > 0 {
            break st;
        }
        assert!(tokio::time::Instant::now() < deadline, "no usage: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st["status"], "running", "{st}");
    let verbose = s
        .ok("agent_status", json!({"agent_id": id, "verbose": true}))
        .await;
    let path = verbose["details"]["output"]["transcript_path"]
        .as_str()
        .expect("path");
    let on_disk = std::fs::read_to_string(path).expect("read transcript");
    assert!(on_disk.contains(r#""type":"started""#), "{on_disk}");
    assert!(on_disk.contains(r#""type":"usage""#), "{on_disk}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_home_transcripts_go_to_a_private_dir_of_this_user() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tmp_dir = tmp.path().to_str().expect("utf-8").to_string();
    let mut raw = Raw::start("", &[("TMPDIR", &tmp_dir)], false).await;

    let spawned = raw
        .call(
            1,
            "agent_spawn",
            json!({"task": "Say hello without a home"}),
        )
        .await;

    assert_eq!(spawned["result"]["isError"], false, "{spawned}");
    let uid = nix::unistd::geteuid().as_raw();
    let base = tmp.path().join(format!("bg-agents-{uid}"));
    assert_eq!(mode(&base), 0o700, "{}", base.display());
    // Transcript sessions; the completion-notice board (`server-PID`) lives here too.
    let sessions: Vec<_> = std::fs::read_dir(&base)
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("session-"))
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(mode(&sessions[0].path()), 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_dir_planted_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        support::skip(
            "not root, so no directory of another user can be planted (the symlink test \
             below covers the same refusal for everyone)",
            "run as root",
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let planted = tmp.path().join("bg-agents-0");
    std::fs::create_dir(&planted).expect("plant");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    nix::unistd::chown(&planted, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let tmp_dir = tmp.path().to_str().expect("utf-8").to_string();
    let mut raw = Raw::start("", &[("TMPDIR", &tmp_dir)], false).await;

    let spawned = raw
        .call(1, "agent_spawn", json!({"task": "Say hello into a trap"}))
        .await;

    assert_eq!(spawned["result"]["isError"], true, "{spawned}");
    let text = spawned["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("belongs to user id 65534"), "{text}");
    assert_eq!(std::fs::read_dir(&planted).expect("ls").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_dir_that_is_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let uid = nix::unistd::geteuid().as_raw();
    std::os::unix::fs::symlink(&elsewhere, tmp.path().join(format!("bg-agents-{uid}")))
        .expect("symlink");
    let tmp_dir = tmp.path().to_str().expect("utf-8").to_string();
    let mut raw = Raw::start("", &[("TMPDIR", &tmp_dir)], false).await;

    let spawned = raw
        .call(
            1,
            "agent_spawn",
            json!({"task": "Say hello through a link"}),
        )
        .await;

    assert_eq!(spawned["result"]["isError"], true, "{spawned}");
    let text = spawned["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("symlink"), "{text}");
    assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);
}

/// Sends `line` and returns the error the server answered with, as (id, code).
async fn error_for(raw: &mut Raw, line: &[u8]) -> (Value, i64) {
    raw.send(line).await;
    let reply = raw.reply().await;
    let code = reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error reply: {reply}"));
    (reply["id"].clone(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_line_gets_an_answer_and_the_server_stays_up() {
    let mut raw = Raw::start("", &[], true).await;

    assert_eq!(
        error_for(&mut raw, b"{not json").await,
        (Value::Null, -32700)
    );
    let truncated = br#"{"jsonrpc":"2.0","id":7,"method":"tools/li"#;
    assert_eq!(error_for(&mut raw, truncated).await, (Value::Null, -32700));
    let not_utf8 = b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\",\"x\":\"\xff\xfe\"}";
    assert_eq!(error_for(&mut raw, not_utf8).await, (Value::Null, -32700));
    let no_method = br#"{"jsonrpc":"2.0","id":9}"#;
    assert_eq!(error_for(&mut raw, no_method).await, (json!(9), -32600));
    assert_eq!(error_for(&mut raw, b"[1,2]").await, (Value::Null, -32600));
    assert_eq!(error_for(&mut raw, b"42").await, (Value::Null, -32600));
    let mut huge = br#"{"jsonrpc":"2.0","id":10,"method":"ping","params":{"pad":""#.to_vec();
    huge.resize(17 * 1024 * 1024, b'x');
    huge.extend_from_slice(br#""}}"#);
    assert_eq!(error_for(&mut raw, &huge).await, (Value::Null, -32600));

    // A string cut mid-emoji, as Node's JSON.stringify writes it: read as U+FFFD.
    let cut = br#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"agent_spawn","arguments":{"task":"Say hello \ud83d"}}}"#;
    raw.send(cut).await;
    let spawned = raw.reply().await;
    assert_eq!(spawned["id"], 11, "{spawned}");
    assert_eq!(spawned["result"]["isError"], false, "{spawned}");

    raw.send(br#"{"jsonrpc":"2.0","id":12,"method":"ping"}"#)
        .await;
    let pong = loop {
        let msg = raw.reply().await;
        if msg["id"] == 12 {
            break msg;
        }
    };
    assert_eq!(pong["result"], json!({}), "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_agents_at_once_all_complete_under_a_1024_descriptor_limit() {
    const AGENTS: usize = 300;
    let s = Session::start_server("max_concurrent = 300").await;
    // Soft and hard at 1,024 (the server's own raise goes to the hard limit): each
    // running agent holds ~5 descriptors, so 300 at once cannot all run.
    rlimit::prlimit(
        s.server_pid as i32,
        rlimit::Resource::NOFILE,
        Some((1024, 1024)),
        None,
    )
    .expect("prlimit");
    let mut ids = Vec::new();
    let mut queued_at_spawn = 0;
    for i in 0..AGENTS {
        // A script serves one conversation: one per agent, each answering for ~30 s, so
        // that all run at once even when the 300 spawns are slow (neighbouring tests in
        // the same binary share the CPU).
        let task = format!("slow agent #{i}#");
        s.fake.script(
            &task,
            vec![Step::Text {
                chunks: vec!["one ".into(), "two ".into(), "three".into()],
                delay_ms: 10_000,
            }],
        );
        let spawned = s.ok("agent_spawn", json!({ "task": task })).await;
        if spawned["status"] == "queued" {
            queued_at_spawn += 1;
        }
        ids.push(spawned["agent_id"].as_str().expect("id").to_string());
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let list = loop {
        let list = s.ok("agent_list", json!({})).await;
        let done: u64 = list["counts"]
            .as_object()
            .map(|c| c.iter().filter(|(k, _)| *k != "running" && *k != "queued"))
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_u64().unwrap_or(0))
            .sum();
        if done as usize == AGENTS {
            break list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", list["counts"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        list["counts"],
        json!({ "completed": AGENTS }),
        "{}",
        list["counts"]
    );
    // The descriptor limit was really reached: slots were free, yet spawns had to queue.
    assert!(queued_at_spawn > 0, "no spawn ran short of descriptors");
    eprintln!("{queued_at_spawn} of {AGENTS} spawns waited for descriptors");
}

/// Spawns an agent whose answer never ends and returns its id once it is mid-answer.
async fn hanging(s: &Session, task: &str, extra: Value) -> String {
    s.fake.script(
        task,
        vec![Step::Hang {
            after_chunks: vec!["started\n".into()],
        }],
    );
    let mut args = json!({ "task": task });
    if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    let id = s.spawn_with(args).await;
    let out = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "wait_seconds": 20 }),
        )
        .await;
    assert!(
        out["text"].as_str().unwrap_or("").contains("started"),
        "{out}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_from_outside_is_not_mistaken_for_the_cpu_limit() {
    let s = Session::start("").await;
    let id = hanging(
        &s,
        "idle until killed",
        json!({"limits": {"cpu_seconds": 1}}),
    )
    .await;
    // Wall time × cores now exceeds cpu_seconds, though the worker used almost no CPU.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pid = s.worker_pids(std::slice::from_ref(&id)).await[0];

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    s.wait_all(std::slice::from_ref(&id)).await;

    let st = s.status(&id).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["exit"]["reason"], "killed_outside", "{st}");
    assert_eq!(st["exit"]["signal"], "SIGKILL", "{st}");
    assert!(
        st["error"]
            .as_str()
            .unwrap_or("")
            .contains("from outside the server"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_the_servers_own_hard_limit_is_refused_naming_it() {
    let s = Session::start("").await;
    rlimit::prlimit(
        s.server_pid as i32,
        rlimit::Resource::NOFILE,
        Some((1024, 1024)),
        None,
    )
    .expect("prlimit");

    let text = s
        .tool_error(
            "agent_spawn",
            json!({"task": "open many files", "limits": {"open_files": 4096}}),
        )
        .await;

    assert!(text.contains("open_files = 4096"), "{text}");
    assert!(text.contains("RLIMIT_NOFILE"), "{text}");
    assert!(text.contains("at most 1024"), "{text}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]), "nothing was spawned: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_agent_whose_cwd_vanished_says_so() {
    let s = Session::start_server("max_concurrent = 1").await;
    let blocker = hanging(&s, "hold the only slot", json!({})).await;
    let doomed = tempfile::tempdir().expect("cwd");
    let cwd = doomed.path().to_str().expect("utf-8").to_string();
    let queued = s
        .ok("agent_spawn", json!({"task": "work in a dir", "cwd": cwd}))
        .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let id = queued["agent_id"].as_str().expect("id").to_string();
    drop(doomed);

    s.ok("agent_kill", json!({"agent_id": blocker, "grace_ms": 0}))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let st = s.status(&id).await;
    assert_eq!(st["status"], "failed", "{st}");
    let error = st["error"].as_str().unwrap_or("");
    assert!(error.contains(&format!("{cwd} no longer exists")), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_provider_url_are_never_shown() {
    let fake = FakeProvider::start().await;
    fake.script("Look up the owner", vec![Step::status(404)]);
    let url = fake.base_url().replace("http://", "http://alice:s3cretpw@");
    let s = Session::start(&format!(
        "[providers.vault]\nkind = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nmax_retries = 0\nrequest_timeout_seconds = 30\n"
    ))
    .await;
    let id = s
        .spawn_with(json!({"task": "Look up the owner", "model": "vault/claude-haiku-5-5"}))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;
    assert_eq!(
        fake.request_count("Look up the owner"),
        1,
        "it reached the API"
    );

    let st = s
        .ok("agent_status", json!({"agent_id": id, "verbose": true}))
        .await;
    assert_eq!(st["status"], "failed", "{st}");
    let error = st["error"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP 404 from http://127.0.0.1:"), "{st}");
    let out = s.ok("agent_output", json!({"agent_id": id})).await;
    let list = s.ok("agent_list", json!({})).await;
    let path = st["details"]["output"]["transcript_path"]
        .as_str()
        .expect("a transcript path");
    let transcript = std::fs::read_to_string(path).expect("read transcript");
    for (what, text) in [
        ("status", st.to_string()),
        ("output", out.to_string()),
        ("list", list.to_string()),
        ("transcript", transcript),
    ] {
        for secret in ["s3cretpw", "alice"] {
            assert!(!text.contains(secret), "{secret} in the {what}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_directories_and_cwds_outside_the_workspace_roots_are_refused() {
    let probe = tempfile::tempdir().expect("tempdir");
    let root = probe.path().join("projects");
    std::fs::create_dir_all(root.join("app")).expect("mkdir");
    std::fs::create_dir_all(probe.path().join("elsewhere")).expect("mkdir");
    let s = Session::launch(
        (),
        &format!("workspace_roots = [{:?}]", root.display().to_string()),
        "",
    )
    .await;
    for (cwd, says) in [
        ("/", "the root of the file system"),
        ("/proc", "a kernel file system"),
        ("/proc/self/root", "the root of the file system"),
        ("/sys", "a kernel file system"),
        ("/dev", "a kernel file system"),
    ] {
        let e = s
            .tool_error(
                "agent_spawn",
                json!({"task": "Read /etc/shadow", "cwd": cwd}),
            )
            .await;
        assert!(e.contains(says), "{cwd}: {e}");
        assert!(e.contains("nothing was started"), "{e}");
    }
    let e = s
        .tool_error(
            "agent_spawn",
            json!({"task": "Look around", "cwd": probe.path().join("elsewhere")}),
        )
        .await;
    assert!(
        e.contains("not under any of [server] workspace_roots"),
        "{e}"
    );
    let listed = s.call("agent_list", json!({})).await;
    let text = support::mcp::text_of(&listed);
    assert!(!text.contains("-0"), "an empty sum is not -0: {text}");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"], json!([]), "nothing started: {list}");
    assert!(!list.to_string().contains("-0"), "{list}");
    assert_eq!(s.fake.requests().len(), 0);

    let id = s
        .spawn_with(json!({"task": "Look around", "cwd": root.join("app")}))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;
    assert_eq!(s.status(&id).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_of_a_wait_stay_readable_after_more_agents_end_than_are_retained() {
    let s = Session::start_server("retained_agents = 2").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.spawn(&format!("Quick answer {i}")).await);
    }
    let first = s
        .ok(
            "agent_wait",
            json!({"agent_ids": ids, "mode": "all", "wait_seconds": 30}),
        )
        .await;
    assert_eq!(first["done"], true, "{first}");
    // Another agent ends between the pages: past retained_agents, the oldest would go.
    let later = s.spawn("One more").await;
    s.wait_all(std::slice::from_ref(&later)).await;
    let page = s
        .ok(
            "agent_wait",
            json!({"agent_ids": ids, "mode": "all", "offset": 1}),
        )
        .await;
    assert_eq!(page["done"], true, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_arguments_that_are_not_an_object_are_invalid_params() {
    let mut raw = Raw::start("", &[], true).await;
    for (id, arguments) in [(1, json!(5)), (2, json!("agent_id")), (3, json!([1]))] {
        let answer = raw.call(id, "agent_status", arguments).await;
        assert_eq!(answer["error"]["code"], -32602, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("params.arguments must be an object"),
            "{answer}"
        );
    }
    let listed = raw.call(4, "agent_list", json!({})).await;
    assert!(listed["result"].is_object(), "still serving: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_resource_is_json_and_an_unknown_agent_cannot_be_subscribed() {
    use rmcp::model::{ReadResourceRequestParams, ResourceContents, SubscribeRequestParams};
    let s = Session::start("").await;
    let id = s.spawn("Be read").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let read = s
        .client
        .read_resource(ReadResourceRequestParams::new(format!(
            "agent://{id}/status"
        )))
        .await
        .expect("read status");
    let ResourceContents::TextResourceContents { mime_type, .. } = &read.contents[0] else {
        panic!("text contents: {read:?}");
    };
    assert_eq!(mime_type.as_deref(), Some("application/json"));
    #[allow(deprecated)]
    let e = s
        .client
        .subscribe(SubscribeRequestParams::new("agent://a-nope/status"))
        .await
        .expect_err("an unknown agent");
    assert!(e.to_string().contains("unknown agent `a-nope`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_streamed_in_a_turn_reaches_the_transcript_on_disk_while_the_turn_goes_on() {
    let s = Session::start("").await;
    let task = "stream a little then stall";
    s.fake.script(
        task,
        vec![Step::Hang {
            after_chunks: vec!["half-way-marker ".into(), "and more".into()],
        }],
    );
    let id = s.spawn(task).await;
    let verbose = s
        .ok("agent_status", json!({"agent_id": id, "verbose": true}))
        .await;
    let path = verbose["details"]["output"]["transcript_path"]
        .as_str()
        .expect("path")
        .to_string();
    // The turn never ends (no usage, no result): only a timed flush puts its text on disk.
    let on_disk = support::process::eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("half-way-marker"))
    })
    .await;
    let st = s.status(&id).await;
    assert_eq!(st["status"], "running", "{st}");
    assert!(
        on_disk,
        "the streamed text is not on disk: {:?}",
        std::fs::read_to_string(&path)
    );
    s.ok("agent_kill", json!({"agent_id": id, "grace_ms": 0}))
        .await;
}

/// Resident memory of `pid` in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_millions_of_tiny_values_is_refused_before_it_costs_memory() {
    let mut raw = Raw::start("", &[], true).await;
    raw._fake.script(
        "Hold on",
        vec![Step::Hang {
            after_chunks: vec!["working".into()],
        }],
    );
    let spawned = raw
        .call(
            1,
            "agent_spawn",
            json!({"task": "Hold on", "cwd": raw._dir.path()}),
        )
        .await;
    let id = spawned["result"]["structuredContent"]["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_string();
    let pid = raw.server.id().expect("server pid");
    let before = rss_bytes(pid);
    // About 15 MiB: one real id, repeated (each alone is a valid agent_ids entry).
    let n = 15 * 1024 * 1024 / (id.len() + 3);
    let req = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {"name": "agent_wait",
                                "arguments": {"agent_ids": vec![id.as_str(); n], "wait_seconds": 30}}});
    let line = req.to_string();
    raw.send(line.as_bytes()).await;
    let answer = raw.reply().await;
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("JSON values"), "{message}");
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(
        grown <= 4 * line.len() as u64,
        "the server grew by {grown} bytes for a line of {}",
        line.len()
    );
    let listed = raw.call(3, "agent_list", json!({})).await;
    assert!(listed["result"].is_object(), "still serving: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_agent_costs_little_beyond_its_output_buffer() {
    let s = Session::start("").await;
    let line = "let value = compute(the, arguments); store(value); // a line of code\n";
    std::fs::write(
        s.dir.path().join("big.rs"),
        line.repeat(200 * 1024 / line.len()),
    )
    .expect("write big.rs");
    // Each agent reads big.rs (200 KiB into its conversation), then answers.
    s.fake.script(
        "Read big.rs and answer",
        (0..200)
            .map(|_| {
                Step::FromRequest(support::provider::StepFn(std::sync::Arc::new(
                    |r: &support::provider::RecordedRequest| {
                        if r.last_user_text() == "tool results received" {
                            Step::text("It computes and stores values.")
                        } else {
                            Step::ToolUse {
                                text: None,
                                id: "toolu_1".into(),
                                name: "read_file".into(),
                                input: json!({"path": "big.rs"}),
                            }
                        }
                    },
                )))
            })
            .collect(),
    );
    let run = |n: usize| {
        let s = &s;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                ids.push(
                    s.spawn_with(json!({
                        "task": format!("Read big.rs and answer ({i})"),
                        "cwd": s.dir.path(),
                        "limits": {"max_output_bytes": 4096},
                    }))
                    .await,
                );
            }
            s.wait_all(&ids).await;
            for id in &ids {
                assert_eq!(s.status(id).await["status"], "completed");
            }
        }
    };
    run(8).await; // the allocator's and the runtime's own growth first
    let before = rss_bytes(s.server_pid);
    const N: u64 = 24;
    run(N as usize).await;
    let each = rss_bytes(s.server_pid).saturating_sub(before) / N;
    eprintln!(
        "a retained agent costs the server about {} KiB",
        each / 1024
    );
    assert!(
        each <= 64 * 1024 + 4096,
        "a retained agent costs {each} bytes, more than 64 KiB beyond its 4 KiB output buffer"
    );
}
