//! The worker's Landlock sandbox, seen from outside: what the `started` event says, and
//! the kernel refusing a read outside the workspace that path checks alone would allow.

use crate::common;

use bg_agent_worker::protocol::{Event, exit};
use bg_agent_worker::values::SandboxMode;
use common::{Harness, Step, anthropic_tool_results, run, tool_use};
use serde_json::json;

fn started_sandbox(events: &[Event]) -> String {
    match events.first() {
        Some(Event::Started { sandbox, .. }) => sandbox.clone().unwrap_or_default(),
        other => panic!("first event is not `started`: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_says_which_sandbox_is_in_force() {
    let h = Harness::start().await;
    h.fake.script("confined run", vec![Step::text("done")]);
    h.fake.script("unconfined run", vec![Step::text("done")]);

    let confined = h.start_spec(&h.spec("confined run")).await.finish().await;
    let mut spec = h.spec("unconfined run");
    spec.sandbox = SandboxMode::Off;
    let unconfined = h.start_spec(&spec).await.finish().await;

    assert_eq!(confined.code, Some(exit::DONE), "{}", confined.dump());
    // This machine's kernel has Landlock (the suite needs ABI ≥ 4 for this test).
    let said = started_sandbox(&confined.events());
    assert!(said.starts_with("landlock (ABI "), "{said}");
    assert!(said.contains("TCP to the provider only"), "{said}");
    assert_eq!(unconfined.code, Some(exit::DONE), "{}", unconfined.dump());
    assert_eq!(
        started_sandbox(&unconfined.events()),
        "none: sandbox = \"off\"; commands (bash): unconfined (sandbox = \"off\")"
    );
}

/// The workspace directory is replaced (by a directory holding a secret) after the
/// worker confined itself. The tools open the workspace by its path, so openat2 alone
/// would read the secret; Landlock's rule holds the original directory, and the kernel
/// refuses the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_refuses_a_read_outside_the_confined_workspace() {
    let h = Harness::start().await;
    let secret = "landlock-secret-6d2f";
    h.write("elsewhere/secret.txt", &format!("{secret}\n"));
    h.write("workspace/secret.txt", "the workspace's own file\n");
    h.fake.script(
        "read after the swap",
        vec![
            // Answered first: the worker waits a second before its retry, and the test
            // swaps the workspace meanwhile.
            Step::Status {
                code: 529,
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
                retry_after: Some(1),
            },
            tool_use("toolu_1", "read_file", json!({"path": "secret.txt"})),
            Step::text("done"),
        ],
    );
    let worker = tokio::spawn(run(h.worker(&["--json", "read after the swap"])));
    while h.fake.request_count("read after the swap") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    std::fs::rename(h.workspace(), h.root().join("workspace-original")).expect("move away");
    std::fs::rename(h.root().join("elsewhere"), h.workspace()).expect("move in");

    let r = worker.await.expect("join");

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let requests = h.fake.requests_for("read after the swap");
    let sent = anthropic_tool_results(requests.last().expect("requests"));
    assert_eq!(sent.len(), 1, "{}", r.dump());
    let (_, content, is_error) = &sent[0];
    assert!(is_error, "{content}");
    assert!(!content.contains(secret), "leaked: {content}");
    assert!(content.contains("Permission denied"), "{content}");
}
