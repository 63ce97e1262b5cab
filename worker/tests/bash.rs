//! The `bash` tool with real commands under the real kernel: what a command can do (git,
//! its scratch directory), what its sandbox refuses (workspace writes, reads outside,
//! every kind of socket, the key), and that nothing it starts outlives it.

use crate::common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

use bg_agent_worker::protocol::{Event, exit};
use common::{Harness, Run, Step, anthropic_tool_results, run, tool_use};
use serde_json::{Value, json};
use support::process::{API_KEY, all_gone, command_group, group_members};

/// Runs one agent whose model makes the `inputs` bash calls in turn, then answers; returns
/// the run and each call's (content, is_error) as the provider received it.
async fn commands(h: &Harness, task: &str, inputs: Vec<Value>) -> (Run, Vec<(String, bool)>) {
    let n = inputs.len();
    let mut steps: Vec<Step> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| tool_use(&format!("toolu_{i}"), "bash", input))
        .collect();
    steps.push(Step::text("done"));
    h.fake.script(task, steps);
    let r = run(h.worker(&["--json", "--role", "general", task])).await;
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for(task);
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert_eq!(sent.len(), n, "{}", r.dump());
    let results = sent.into_iter().map(|(_, c, e)| (c, e)).collect();
    (r, results)
}

/// One command's result.
async fn command(h: &Harness, task: &str, line: &str) -> (String, bool) {
    let (_, mut results) = commands(h, task, vec![json!({ "command": line })]).await;
    results.remove(0)
}

/// A git repository in the workspace with one commit of `a.txt`.
fn git_repo(h: &Harness) {
    h.write("workspace/a.txt", "first line\n");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(args)
            .current_dir(h.workspace())
            .env("HOME", h.root().join("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "a.txt"]);
    git(&["commit", "-q", "-m", "Add the first line 3f9a"]);
}

/// The scratch directories in the workers' TMPDIR: they are made in this user's scratch
/// base, `$TMPDIR/bg-agent-commands-UID`.
fn scratch_dirs(h: &Harness) -> Vec<String> {
    let base = h.tmp().join(format!(
        "bg-agent-commands-{}",
        nix::unistd::geteuid().as_raw()
    ));
    std::fs::read_dir(base).map_or_else(
        |_| Vec::new(),
        |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

/// The `started` event's sandbox description.
fn started_sandbox(r: &Run) -> String {
    match r.events().first() {
        Some(Event::Started { sandbox, .. }) => sandbox.clone().unwrap_or_default(),
        other => panic!("first event is not `started`: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_log_shows_the_history_of_the_workspace() {
    let h = Harness::start().await;
    git_repo(&h);

    let (out, is_error) = command(&h, "show the history", "git log --oneline").await;

    assert!(!is_error, "{out}");
    assert!(out.starts_with("exit status 0\n"), "{out}");
    assert!(out.contains("Add the first line 3f9a"), "{out}");
    // No error about a missing or unreadable ~/.gitconfig, no lock file left.
    assert!(!out.contains("warning") && !out.contains("fatal"), "{out}");
    assert!(!h.workspace().join(".git/index.lock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_diff_and_status_show_uncommitted_work() {
    let h = Harness::start().await;
    git_repo(&h);
    h.write("workspace/a.txt", "first line\nsecond line 8c2e\n");

    let (run, results) = commands(
        &h,
        "what changed",
        vec![
            json!({"command": "git status --short"}),
            json!({"command": "git diff"}),
        ],
    )
    .await;

    let (status, diff) = (&results[0].0, &results[1].0);
    assert!(status.contains(" M a.txt"), "{status}\n{}", run.dump());
    assert!(diff.starts_with("exit status 0\n"), "{diff}");
    assert!(diff.contains("+second line 8c2e"), "{diff}");
    assert!(!h.workspace().join(".git/index.lock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_the_workspace_fails_and_leaves_no_file() {
    let h = Harness::start().await;
    h.write("workspace/kept.txt", "original\n");

    let (out, _) = command(
        &h,
        "try to write",
        "echo new > created.txt; echo changed > kept.txt; rm kept.txt; mkdir d; ls",
    )
    .await;

    assert!(out.contains("Permission denied"), "{out}");
    assert!(!h.workspace().join("created.txt").exists(), "{out}");
    assert!(!h.workspace().join("d").exists(), "{out}");
    assert_eq!(
        std::fs::read_to_string(h.workspace().join("kept.txt")).expect("kept.txt"),
        "original\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_run_only_from_system_directories() {
    let h = Harness::start().await;
    let script = h.write("workspace/run.sh", "#!/bin/sh\necho ran-from-workspace\n");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let (out, _) = command(
        &h,
        "run programs from anywhere",
        "./run.sh; cp /bin/true \"$TMPDIR/t\" && \"$TMPDIR/t\" && echo ran-from-scratch; bash run.sh",
    )
    .await;

    let denied = |what: &str| {
        out.lines()
            .any(|l| l.contains(what) && l.contains("Permission denied"))
    };
    assert!(denied("./run.sh"), "{out}");
    assert!(denied("/t:"), "{out}");
    assert!(!out.contains("ran-from-scratch"), "{out}");
    // Reading a script is not executing it: the shell from /usr/bin runs it.
    assert!(out.ends_with("ran-from-workspace\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scratch_directory_is_writable_and_gone_after_the_agent() {
    let h = Harness::start().await;

    let (out, is_error) = command(
        &h,
        "use the scratch directory",
        r#"echo note-5d1a > "$TMPDIR/n.txt" && cat "$HOME/n.txt" && [ "$HOME" = "$TMPDIR" ] && echo "dir=$TMPDIR""#,
    )
    .await;

    assert!(!is_error, "{out}");
    assert!(out.starts_with("exit status 0\nnote-5d1a\n"), "{out}");
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("dir="))
        .expect("the command printed its scratch directory");
    assert!(dir.contains("bg-agent-scratch-"), "{dir}");
    assert!(!Path::new(dir).exists(), "{dir} outlived the agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_reach_nothing_not_even_the_provider() {
    let h = Harness::start().await;
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    tcp.set_nonblocking(true).expect("nonblocking");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    udp.set_nonblocking(true).expect("nonblocking");
    let tcp_port = tcp.local_addr().expect("addr").port();
    let udp_port = udp.local_addr().expect("addr").port();
    let provider_port = h
        .fake
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("provider port");
    let line = format!(
        "echo hi > /dev/tcp/127.0.0.1/{tcp_port}; \
         printf 'POST /v1/messages HTTP/1.0\\r\\n\\r\\n' > /dev/tcp/127.0.0.1/{provider_port}; \
         echo hi > /dev/udp/127.0.0.1/{udp_port}; \
         git ls-remote http://127.0.0.1:{tcp_port}/x.git"
    );

    let (out, _) = command(&h, "reach the network", &line).await;

    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(
        matches!(tcp.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a TCP connection reached the listener: {out}"
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(udp.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a UDP datagram reached the socket: {out}"
    );
    // The provider saw only the worker's own two requests.
    assert_eq!(h.fake.requests().len(), 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_sibling_directory_cannot_be_read() {
    let h = Harness::start().await;
    let secret = "sibling-secret-71b0";
    h.write("sibling/secret.txt", &format!("{secret}\n"));

    let (out, _) = command(
        &h,
        "read next door",
        "cat ../sibling/secret.txt; ls ../sibling; cat /etc/shadow",
    )
    .await;

    assert!(!out.contains(secret), "leaked: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(!out.lines().any(|l| l == "secret.txt"), "listed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_in_no_environment_a_command_can_read() {
    let h = Harness::start().await;

    let (out, _) = command(
        &h,
        "print the environments",
        "env; cat /proc/$PPID/environ; cat /proc/self/environ; tr '\\0' '\\n' < /proc/1/environ",
    )
    .await;

    assert!(out.contains("HOME="), "env did not run: {out}");
    assert!(out.contains("GIT_OPTIONAL_LOCKS=0"), "{out}");
    assert!(!out.contains(API_KEY), "the key leaked: {out}");
    assert!(
        !out.contains("ANTHROPIC"),
        "a provider variable leaked: {out}"
    );
}

/// The pids a command printed as `pid=N`, wherever they are in a line: a background
/// program writing its stderr at the same moment can put its words before one (seen:
/// `setsid: pid=4906`, setsid's refusal and the echo interleaved).
fn printed_pids(out: &str) -> Vec<u32> {
    out.split("pid=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_process_does_not_outlive_its_command() {
    let h = Harness::start().await;

    let (out, is_error) = command(
        &h,
        "start something in the background",
        "sleep 1000 & echo pid=$!; (sleep 1000 &); setsid sleep 1000 & echo pid=$!; nohup sleep 1000 >/dev/null 2>&1 & echo pid=$!",
    )
    .await;

    assert!(!is_error, "{out}");
    let pids = printed_pids(&out);
    assert_eq!(pids.len(), 3, "{out}");
    assert!(all_gone(&pids).await, "still running: {pids:?}\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_of_output_are_capped_and_the_agent_finishes() {
    let h = Harness::start().await;

    let (out, is_error) = command(
        &h,
        "flood the output",
        "echo first-line-9e1f; head -c 50000000 /dev/zero | tr '\\0' x; echo; echo last-line-4c7b",
    )
    .await;

    assert!(!is_error);
    assert!(out.len() < 31_000, "{} bytes came back", out.len());
    assert!(
        out.starts_with("exit status 0\nfirst-line-9e1f\n"),
        "{out:.100}"
    );
    assert!(
        out.ends_with("last-line-4c7b\n"),
        "{}",
        &out[out.len() - 100..]
    );
    assert!(
        out.contains("bytes cut from the middle of 50000032 bytes of output"),
        "{}",
        &out[14_900..15_300]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_group() {
    let h = Harness::start().await;

    let (_, results) = commands(
        &h,
        "wait too long",
        vec![json!({
            "command": "sleep 1000 & echo pid=$!; for i in 1 2 3; do (sleep 1000; echo never) & echo pid=$!; done; sleep 1000",
            "timeout_s": 1
        })],
    )
    .await;

    let (out, is_error) = &results[0];
    assert!(is_error, "{out}");
    assert!(out.starts_with("timed out after 1 s"), "{out}");
    let pids = printed_pids(out);
    assert_eq!(pids.len(), 4, "{out}");
    assert!(all_gone(&pids).await, "still running: {pids:?}");
    assert!(!out.contains("never"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_during_a_command_kills_the_command() {
    let h = Harness::start().await;
    h.fake.script(
        "run forever",
        vec![
            tool_use(
                "toolu_0",
                "bash",
                json!({"command": "sleep 1000 & sleep 1000 & sleep 1000"}),
            ),
            Step::text("done"),
        ],
    );
    let mut spec = h.spec("run forever");
    spec.role = "general".into();
    let mut live = h.start_spec(&spec).await;
    live.wait_for(|e| matches!(e, Event::ToolCall { .. })).await;
    let worker = live.pid().as_raw() as u32;
    let group = command_group(worker, 3).await;

    // What agent_kill does first: SIGTERM to the worker.
    nix::sys::signal::kill(live.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let r = live.finish().await;

    assert_eq!(r.code, Some(exit::INTERRUPTED_TERM), "{}", r.dump());
    let gone =
        support::process::eventually(Duration::from_secs(5), || group_members(group).is_empty())
            .await;
    assert!(
        gone,
        "still running in group {group}: {:?}",
        group_members(group)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_bash_cannot_run_anything() {
    let h = Harness::start().await;
    h.fake.script(
        "decide without commands",
        vec![
            tool_use("toolu_0", "bash", json!({"command": "touch $TMPDIR/ran"})),
            Step::text("done"),
        ],
    );

    let r = run(h.worker(&["--json", "--role", "architect", "decide without commands"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("decide without commands");
    assert!(
        !requests[0].tools.iter().any(|t| t == "bash"),
        "{:?}",
        requests[0].tools
    );
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert!(sent[0].2, "{sent:?}");
    assert!(sent[0].1.contains("unknown tool `bash`"), "{sent:?}");
    assert!(!started_sandbox(&r).contains("commands"), "{}", r.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_says_how_commands_are_confined() {
    let h = Harness::start().await;
    h.fake.script("say the sandbox", vec![Step::text("done")]);

    let r = run(h.worker(&["--json", "--role", "general", "say the sandbox"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let said = started_sandbox(&r);
    assert!(
        said.contains(
            "commands (bash): read-only workspace, writes only to a scratch directory, no network"
        ),
        "{said}"
    );
    let requests = h.fake.requests_for("say the sandbox");
    assert!(requests[0].tools.iter().any(|t| t == "bash"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_leaves_no_command_and_no_scratch() {
    let h = Harness::start().await;
    h.fake.script(
        "die mid-command",
        vec![
            tool_use(
                "toolu_0",
                "bash",
                json!({"command": "touch $TMPDIR/f; sleep 1000 & sleep 1000 & sleep 1000"}),
            ),
            Step::text("done"),
        ],
    );
    let mut spec = h.spec("die mid-command");
    spec.role = "general".into();
    let mut live = h.start_spec(&spec).await;
    live.wait_for(|e| matches!(e, Event::ToolCall { .. })).await;
    let worker = live.pid().as_raw() as u32;
    let scratches = || scratch_dirs(&h).len();
    let group = command_group(worker, 3).await;
    assert_eq!(
        scratches(),
        1,
        "the agent's scratch directory is in {}",
        h.tmp().display()
    );

    // What a server does when the worker ignores SIGTERM past the grace, or dies itself.
    nix::sys::signal::kill(live.pid(), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    let r = live.finish().await;

    assert_eq!(r.code, None, "{}", r.dump());
    let cleaned = support::process::eventually(Duration::from_secs(5), || {
        group_members(group).is_empty() && scratches() == 0
    })
    .await;
    assert!(
        cleaned,
        "group {group}: {:?}; scratch directories left: {}",
        group_members(group),
        scratches()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_runs_no_command_starts_no_process_and_makes_no_scratch() {
    let h = Harness::start().await;
    let chunks = (0..10).map(|i| format!("part {i} ")).collect();
    h.fake.script(
        "answer without commands",
        vec![Step::Text {
            chunks,
            delay_ms: 50,
        }],
    );
    let mut spec = h.spec("answer without commands");
    spec.role = "general".into();
    let mut live = h.start_spec(&spec).await;
    live.wait_for(|e| matches!(e, Event::Text { .. })).await;
    let worker = live.pid().as_raw() as u32;

    // Mid-answer, with `bash` offered: no janitor, no command, no scratch directory.
    let children = support::process::children_of(worker);
    let scratch_mid_run = scratch_dirs(&h);
    let r = live.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let said = started_sandbox(&r);
    assert!(said.contains("commands (bash): "), "{said}");
    assert!(!said.contains("bash not offered"), "{said}");
    let requests = h.fake.requests_for("answer without commands");
    assert!(requests[0].tools.iter().any(|t| t == "bash"));
    assert_eq!(children, [], "the worker's children mid-run");
    assert_eq!(scratch_mid_run, Vec::<String>::new(), "scratch mid-run");
    assert_eq!(
        scratch_dirs(&h),
        Vec::<String>::new(),
        "scratch after the run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_command_sandbox_bash_is_not_offered_and_started_says_why() {
    let h = Harness::start().await;
    h.fake
        .script("no scratch possible", vec![Step::text("done")]);
    let mut cmd = h.worker(&["--json", "--role", "general", "no scratch possible"]);
    // The scratch directory cannot be made, so commands cannot be confined to it.
    cmd.env("TMPDIR", h.root().join("missing"));

    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let said = started_sandbox(&r);
    assert!(
        said.contains("bash not offered: cannot create a scratch directory in"),
        "{said}"
    );
    assert!(
        r.stderr.contains("the bash tool is not offered"),
        "{}",
        r.stderr
    );
    let requests = h.fake.requests_for("no scratch possible");
    assert_eq!(requests[0].tools, ["read_file", "glob", "grep"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_takes_bash_with_the_tools_option() {
    let h = Harness::start().await;
    h.fake.script(
        "weigh it with a command",
        vec![
            tool_use("toolu_0", "bash", json!({"command": "echo from-bash-2a7c"})),
            Step::text("done"),
        ],
    );

    let r = run(h.worker(&[
        "--json",
        "--role",
        "architect",
        "--tools",
        "read_file,bash",
        "weigh it with a command",
    ]))
    .await;
    let unknown = run(h.worker(&["--tools", "read_file,shell", "anything"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("weigh it with a command");
    assert_eq!(requests[0].tools, ["read_file", "bash"]);
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert_eq!(sent[0].1, "exit status 0\nfrom-bash-2a7c\n", "{sent:?}");
    assert_eq!(unknown.code, Some(2), "{}", unknown.dump());
    assert!(
        unknown
            .stderr
            .contains("unknown tool `shell`; use read_file, glob, grep or bash"),
        "{}",
        unknown.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_never_runs_past_the_agents_wall_clock() {
    let h = Harness::start().await;
    h.fake.script(
        "a short agent",
        vec![
            tool_use(
                "toolu_0",
                "bash",
                json!({"command": "sleep 1000", "timeout_s": 600}),
            ),
            Step::text("done"),
        ],
    );
    let mut spec = h.spec("a short agent");
    spec.role = "general".into();
    spec.limits.timeout_seconds = 2;

    let r = h.start_spec(&spec).await.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("a short agent");
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    let (_, out, is_error) = &sent[0];
    assert!(is_error, "{out}");
    assert!(
        out.starts_with("timed out after 2 s (what was left of the agent's wall clock)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sandbox_off_commands_run_unconfined_as_configured() {
    let h = Harness::start().await;
    h.fake.script(
        "unconfined by choice",
        vec![
            tool_use(
                "toolu_0",
                "bash",
                json!({"command": "echo made > made.txt"}),
            ),
            Step::text("done"),
        ],
    );
    let mut spec = h.spec("unconfined by choice");
    spec.sandbox = bg_agent_worker::values::SandboxMode::Off;

    let r = h.start_spec(&spec).await.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert!(
        started_sandbox(&r).ends_with("commands (bash): unconfined (sandbox = \"off\")"),
        "{}",
        r.dump()
    );
    let made = std::fs::read_to_string(h.workspace().join("made.txt")).expect("made.txt");
    assert_eq!(made, "made\n");
}

/// A fork bomb with a bound (a binary tree of 127 processes, so a failure cannot take the
/// machine down): the timeout kills every process of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_tree_ends_at_its_timeout_and_leaves_nothing() {
    let h = Harness::start().await;

    let (_, results) = commands(
        &h,
        "grow a tree",
        vec![json!({
            "command": "echo group=$$; f() { if [ $1 -lt 6 ]; then f $(($1+1)) & f $(($1+1)) & fi; sleep 1000; }; f 0",
            "timeout_s": 2
        })],
    )
    .await;

    let (out, is_error) = &results[0];
    assert!(*is_error && out.starts_with("timed out after 2 s"), "{out}");
    let group: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("group="))
        .and_then(|g| g.parse().ok())
        .expect("the command printed its group");
    let gone =
        support::process::eventually(Duration::from_secs(5), || group_members(group).is_empty())
            .await;
    assert!(gone, "left in group {group}: {:?}", group_members(group));
}
