//! The read-only tools through the real loop: results go back to the provider, and
//! paths that leave the workspace are refused to the model while the run goes on.

use crate::common;

use bg_agent_worker::protocol::{Event, exit};
use common::{Harness, Step, anthropic_tool_results, run, tool_use};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_file_tool_result_goes_back_to_the_provider() {
    let h = Harness::start().await;
    h.write(
        "workspace/src/config.rs",
        "fn parse() {}\n// marker: 7c1e-parse-here\n",
    );
    h.fake.script(
        "where is the config parsed",
        vec![
            tool_use("toolu_read", "read_file", json!({"path": "src/config.rs"})),
            Step::text("In src/config.rs."),
        ],
    );

    let r = run(h.worker(&["--json", "where is the config parsed"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("where is the config parsed");
    assert_eq!(requests.len(), 2);
    let results = anthropic_tool_results(&requests[1]);
    assert_eq!(results.len(), 1, "{results:?}");
    let (id, content, is_error) = &results[0];
    assert_eq!(id, "toolu_read");
    assert!(!is_error);
    assert_eq!(content, "1\tfn parse() {}\n2\t// marker: 7c1e-parse-here\n");
    // The assistant's tool_use is sent back before its result.
    let messages = requests[1].body["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"][0]["type"], "tool_use");
    assert_eq!(messages[1]["content"][0]["id"], "toolu_read");

    assert_eq!(
        r.tool_results(),
        [Event::ToolResult {
            id: "toolu_read".into(),
            name: "read_file".into(),
            bytes: content.len() as u64,
            is_error: false,
        }]
    );
    assert!(matches!(r.last(), Event::Result { turns: 2, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_leaving_the_workspace_are_refused_and_the_run_goes_on() {
    let h = Harness::start().await;
    let secret = "outside-secret-0b9d";
    let outside = h.write("secret.txt", &format!("{secret}\n"));
    h.write("workspace/inside.txt", "inside\n");
    std::os::unix::fs::symlink(&outside, h.workspace().join("link.txt")).expect("symlink");
    std::os::unix::fs::symlink(h.root(), h.workspace().join("up")).expect("dir symlink");
    let attempts = [
        json!({"path": "../secret.txt"}),
        json!({"path": "/etc/passwd"}),
        json!({"path": "link.txt"}),
        json!({"path": "up/secret.txt"}),
    ];
    let mut steps: Vec<Step> = attempts
        .iter()
        .enumerate()
        .map(|(i, input)| tool_use(&format!("toolu_{i}"), "read_file", input.clone()))
        .collect();
    steps.push(Step::text("I could not read them."));
    h.fake.script("read the secrets", steps);

    let r = run(h.worker(&["--json", "read the secrets"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let results = r.tool_results();
    assert_eq!(results.len(), attempts.len(), "{}", r.dump());
    assert!(
        results
            .iter()
            .all(|e| matches!(e, Event::ToolResult { is_error: true, .. })),
        "{}",
        r.dump()
    );
    let requests = h.fake.requests_for("read the secrets");
    assert_eq!(requests.len(), attempts.len() + 1);
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert_eq!(sent.len(), attempts.len());
    for ((_, content, is_error), input) in sent.iter().zip(&attempts) {
        assert!(is_error, "{input}: {content}");
        assert!(content.contains("refused"), "{input}: {content}");
        assert!(!content.contains(secret), "{input} leaked: {content}");
        assert!(!content.contains("root:"), "{input} leaked: {content}");
    }
    assert!(matches!(r.last(), Event::Result { turns: 5, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_does_not_follow_symlinks_out_of_the_workspace() {
    let h = Harness::start().await;
    let outside = h.write("outside/keys.txt", "needle-3e4f outside\n");
    h.write("workspace/a.txt", "needle-3e4f inside\n");
    std::os::unix::fs::symlink(&outside, h.workspace().join("keys.txt")).expect("symlink");
    std::os::unix::fs::symlink(outside.parent().expect("dir"), h.workspace().join("out"))
        .expect("dir symlink");
    h.fake.script(
        "grep for the needle",
        vec![
            tool_use("toolu_grep", "grep", json!({"pattern": "needle-3e4f"})),
            Step::text("done"),
        ],
    );

    let r = run(h.worker(&["--json", "grep for the needle"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("grep for the needle");
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert_eq!(
        sent,
        [(
            "toolu_grep".to_string(),
            "a.txt:1:needle-3e4f inside\n".to_string(),
            false
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_cwd_given_through_a_symlink_still_reads_its_files() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "through the alias\n");
    let alias = h.root().join("alias");
    std::os::unix::fs::symlink(h.workspace(), &alias).expect("symlink");
    h.fake.script(
        "read through the alias",
        vec![
            tool_use("toolu_1", "read_file", json!({"path": "notes.txt"})),
            Step::text("done"),
        ],
    );
    let mut spec = h.spec("read through the alias");
    spec.cwd = alias.join(".");

    let r = h.start_spec(&spec).await.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("read through the alias");
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert_eq!(
        sent,
        [(
            "toolu_1".to_string(),
            "1\tthrough the alias\n".to_string(),
            false
        )],
        "{}",
        r.dump()
    );
}

/// A thread swaps the workspace directory `d` with a symlink to a directory outside,
/// over and over, while read_file and grep run: the kernel resolves each open beneath
/// the workspace, so no read ever returns a byte from outside.
#[test]
fn a_directory_swapped_for_a_symlink_never_leads_a_read_outside() {
    use bg_agent_worker::tools::execute;
    use bg_agent_worker::values::ToolName;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    use std::sync::atomic::{AtomicBool, Ordering};

    let tmp = tempfile::tempdir().expect("temp dir");
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let workspace = root.join("workspace");
    let outside = root.join("outside");
    std::fs::create_dir_all(workspace.join("d")).expect("mkdir d");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    std::fs::write(workspace.join("d/passwd"), "inside-7a1c\n").expect("write");
    std::fs::write(outside.join("passwd"), "OUTSIDE-SECRET-52e9\n").expect("write");
    let link = workspace.join("d-link");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");

    let stop = AtomicBool::new(false);
    let tools = [ToolName::ReadFile, ToolName::Grep];
    let (mut inside_reads, mut swaps) = (0, 0u64);
    std::thread::scope(|s| {
        let swapper = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Atomic: `d` is the directory or the symlink at every instant.
                renameat2(
                    AT_FDCWD,
                    &workspace.join("d"),
                    AT_FDCWD,
                    &link,
                    RenameFlags::RENAME_EXCHANGE,
                )
                .expect("swap");
                n += 1;
            }
            n
        });
        // Stops the swapper even when an assertion below fails, so a failure cannot hang.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let guard = StopOnDrop(&stop);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for i in 0..3000 {
            let out = if i % 2 == 0 {
                execute(
                    &tools,
                    "read_file",
                    &json!({"path": "d/passwd"}),
                    &workspace,
                    deadline,
                )
            } else {
                execute(
                    &tools,
                    "grep",
                    &json!({"pattern": "SECRET|inside"}),
                    &workspace,
                    deadline,
                )
            };
            assert!(
                !out.content.contains("OUTSIDE-SECRET"),
                "read {i} leaked: {}",
                out.content
            );
            if out.content.contains("inside-7a1c") {
                inside_reads += 1;
            }
        }
        drop(guard);
        swaps = swapper.join().expect("swapper");
    });
    // The race really ran: the directory was swapped many times, and reads still got
    // through whenever it was in place.
    assert!(swaps > 100, "only {swaps} swaps");
    assert!(inside_reads > 0, "no read found the inside file");
}
