//! Continuing a conversation: a run tells every message it adds (`message` events), and a
//! spec with that `history` continues it, sending the provider the whole conversation.

use crate::common;

use bg_agent_worker::protocol::{Block, Event, Input, Message, Role, exit};
use common::{Harness, Live, Step, tool_use};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn messages(events: &[Event]) -> Vec<Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The server may write a follow-up right behind the spec: in one write here, so the
/// worker's first read of stdin takes both lines. The follow-up is not lost with the
/// read-ahead; it joins the conversation at the first turn boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_written_in_the_same_write_as_the_spec_is_taken_in() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "the port is 8080\n");
    h.fake.script(
        "where is the port",
        vec![
            tool_use("toolu_1", "read_file", json!({"path": "notes.txt"})),
            Step::text("8080; the tests do not set one."),
        ],
    );
    let mut cmd = h.worker(&["--spec", "-"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut live = Live::spawn(cmd);
    let spec = serde_json::to_string(&h.spec("where is the port")).expect("spec json");
    let follow_up = serde_json::to_string(&Input::FollowUp {
        message: "and in the tests?".into(),
        id: Some(7),
    })
    .expect("input json");
    let stdin = live.stdin.as_mut().expect("piped stdin");
    stdin
        .write_all(format!("{spec}\n{follow_up}\n").as_bytes())
        .await
        .expect("write spec and follow-up");
    stdin.flush().await.expect("flush");

    let r = live.finish().await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let took_in: Vec<(Vec<u64>, Message)> = r
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message {
                message,
                follow_ups,
            } if !follow_ups.is_empty() => Some((follow_ups, message)),
            _ => None,
        })
        .collect();
    assert_eq!(took_in.len(), 1, "{}", r.dump());
    assert_eq!(took_in[0].0, vec![7]);
    let said = serde_json::to_string(&took_in[0].1).expect("message json");
    assert!(said.contains("and in the tests?"), "{said}");
    let requests = h.fake.requests_for("where is the port");
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].body["messages"]
            .to_string()
            .contains("and in the tests?"),
        "the second request carries the follow-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_sends_the_whole_earlier_conversation_with_tool_blocks() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "the port is 8080\n");
    h.fake.script(
        "where is the port",
        vec![
            tool_use("toolu_1", "read_file", json!({"path": "notes.txt"})),
            Step::text("It is 8080."),
            Step::text("Yes, only there."),
        ],
    );

    let first = h
        .start_spec(&h.spec("where is the port"))
        .await
        .finish()
        .await;
    assert_eq!(first.code, Some(exit::DONE), "{}", first.dump());
    let history = messages(&first.events());
    let roles: Vec<Role> = history.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::User, Role::Assistant],
        "task, tool call, tool result, answer"
    );
    assert!(matches!(
        &history[2].content[0],
        Block::ToolResult { tool_use_id, content, is_error: false }
            if tool_use_id == "toolu_1" && content.contains("8080")
    ));

    let mut spec = h.spec("Is it set anywhere else?");
    spec.history = history.clone();
    let second = h.start_spec(&spec).await.finish().await;
    assert_eq!(second.code, Some(exit::DONE), "{}", second.dump());
    match second.last() {
        Event::Result { text, turns, .. } => {
            assert_eq!(text, "Yes, only there.");
            assert_eq!(turns, 1);
        }
        other => panic!("not a result: {other:?}"),
    }
    // The second run tells only what it added: the follow-up and its answer.
    let added = messages(&second.events());
    assert_eq!(added.len(), 2);
    assert_eq!(
        added[0].content,
        vec![Block::Text {
            text: "Is it set anywhere else?".into()
        }]
    );

    let requests = h.fake.requests_for("where is the port");
    assert_eq!(requests.len(), 3);
    let sent = requests[2].body["messages"].as_array().expect("messages");
    let types: Vec<(String, Vec<String>)> = sent
        .iter()
        .map(|m| {
            let blocks = m["content"].as_array().expect("blocks");
            (
                m["role"].as_str().unwrap_or_default().to_string(),
                blocks
                    .iter()
                    .map(|b| b["type"].as_str().unwrap_or_default().to_string())
                    .collect(),
            )
        })
        .collect();
    let expect = |r: &str, t: &[&str]| (r.to_string(), t.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        types,
        vec![
            expect("user", &["text"]),
            expect("assistant", &["tool_use"]),
            expect("user", &["tool_result"]),
            expect("assistant", &["text"]),
            expect("user", &["text"]),
        ]
    );
    assert_eq!(sent[1]["content"][0]["id"], Value::from("toolu_1"));
    assert_eq!(sent[3]["content"][0]["text"], Value::from("It is 8080."));
    assert_eq!(
        sent[4]["content"][0]["text"],
        Value::from("Is it set anywhere else?")
    );
}

#[test]
fn blocks_travel_as_anthropic_content_blocks() {
    let thinking = json!({"type": "thinking", "thinking": "hmm", "signature": "s"});
    let m = Message {
        role: Role::Assistant,
        content: vec![
            Block::Opaque(thinking.clone()),
            Block::ToolUse {
                id: "t".into(),
                name: "glob".into(),
                input: json!({"pattern": "*"}),
            },
        ],
    };
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["content"][0], thinking);
    assert_eq!(v["content"][1]["type"], "tool_use");
    assert_eq!(serde_json::from_value::<Message>(v).unwrap(), m);
    let bad = json!({"role": "user", "content": [{"type": "tool_result"}]});
    assert!(serde_json::from_value::<Message>(bad).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_a_finished_run_from_its_transcript() {
    let h = Harness::start().await;
    h.write("workspace/notes.txt", "the port is 8080\n");
    h.fake.script(
        "find the port",
        vec![
            tool_use("toolu_1", "read_file", json!({"path": "notes.txt"})),
            Step::text("It is 8080."),
            Step::text("Nowhere else."),
            Step::text("Still nowhere."),
        ],
    );
    let first = common::run(h.worker(&["--json", "--model", "haiku", "find the port"])).await;
    assert_eq!(first.code, Some(exit::DONE), "{}", first.dump());
    let transcript = h.write("run.jsonl", &first.stdout);

    let path = transcript.to_str().expect("utf-8 path");
    let second = common::run(h.worker(&["--json", "--resume", path, "Anywhere else?"])).await;
    assert_eq!(second.code, Some(exit::DONE), "{}", second.dump());
    assert!(matches!(second.last(), Event::Result { text, .. } if text == "Nowhere else."));
    let requests = h.fake.requests_for("find the port");
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].model, requests[0].model, "the same model");
    assert_eq!(requests[2].system, requests[0].system, "the same role");
    let sent = requests[2].body["messages"].as_array().expect("messages");
    assert_eq!(sent.len(), 5, "{sent:?}");
    assert_eq!(sent[2]["content"][0]["type"], "tool_result");
    assert!(
        sent[2]["content"][0]["content"]
            .as_str()
            .is_some_and(|c| c.contains("8080")),
        "the tool result read in the workspace travels on: {sent:?}"
    );
    assert_eq!(sent[4]["content"][0]["text"], "Anywhere else?");

    // Appending each run's events to the file keeps the whole conversation resumable.
    let both = first.stdout.clone() + &second.stdout;
    let transcript = h.write("run.jsonl", &both);
    let third =
        common::run(h.worker(&["--json", "--resume", transcript.to_str().unwrap(), "Sure?"])).await;
    assert_eq!(third.code, Some(exit::DONE), "{}", third.dump());
    let last = h.fake.requests_for("find the port").pop().unwrap();
    assert_eq!(last.body["messages"].as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_run_that_did_not_finish_and_says_why() {
    let h = Harness::start().await;
    let endless = (0..5)
        .map(|i| tool_use(&format!("toolu_{i}"), "glob", json!({"pattern": "*"})))
        .collect();
    h.fake.script("never done", endless);
    let first = common::run(h.worker(&["--json", "--max-turns", "1", "never done"])).await;
    assert_eq!(first.code, Some(exit::BUDGET), "{}", first.dump());
    let transcript = h.write("failed.jsonl", &first.stdout);
    let before = h.fake.requests().len();

    let r = common::run(h.worker(&["--resume", transcript.to_str().unwrap(), "go on"])).await;
    assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
    assert!(
        r.stderr.contains("did not finish with an answer") && r.stderr.contains("max_turns"),
        "{}",
        r.dump()
    );
    let missing = common::run(h.worker(&["--resume", "/nonexistent/run.jsonl", "go on"])).await;
    assert_eq!(missing.code, Some(exit::BAD_SPEC));
    assert!(
        missing.stderr.contains("cannot read the transcript"),
        "{}",
        missing.dump()
    );
    assert_eq!(h.fake.requests().len(), before, "nothing was sent");
}
