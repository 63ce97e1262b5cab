//! The MCP server end to end: the real `bg-agents` binary behind rmcp's client, real
//! worker processes, the provider double.

use std::collections::HashSet;

use serde_json::json;
use support::mcp::Session;
use support::provider::Step;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_then_wait_returns_the_agents_answer() {
    let s = Session::start("").await;
    let spawned = s
        .ok("agent_spawn", json!({ "task": "Say hello to the tests", "task_type": "exploration", "label": "hello" }))
        .await;
    assert_eq!(spawned["status"], "running");
    assert_eq!(spawned["tier"], "fast");
    assert_eq!(spawned["model"], "claude-haiku-5-5");
    assert_eq!(spawned["routed_by"], "task_type");
    assert_eq!(
        spawned.get("limits"),
        None,
        "all limits are the defaults: {spawned}"
    );
    let id = spawned["agent_id"].as_str().unwrap().to_string();
    let waited = s.wait_all(std::slice::from_ref(&id)).await;
    assert_eq!(waited["ended"], json!([id]));
    let st = s.status(&id).await;
    assert_eq!(st["status"], "completed", "{st}");
    assert_eq!(st["result"], "echo: Say hello to the tests");
    assert_eq!(
        st.get("exit"),
        None,
        "a normal completion has no exit block: {st}"
    );
    assert!(st["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(st["usage"]["cost_usd"].as_f64().unwrap() > 0.0);
    let req = &s.fake.requests()[0];
    assert_eq!(req.model, "claude-haiku-5-5");
    assert_eq!(req.api_key.as_deref(), Some(support::process::API_KEY));
    assert!(req.system.as_deref().unwrap_or("").contains("agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_waits_and_output_streams_text() {
    let s = Session::start("").await;
    s.fake.script(
        "slow poem",
        vec![Step::Text {
            chunks: vec![
                "line one\n".into(),
                "line two\n".into(),
                "line three\n".into(),
            ],
            delay_ms: 200,
        }],
    );
    let id = s.spawn("Write a slow poem").await;
    let st = s
        .ok(
            "agent_status",
            json!({ "agent_id": id, "wait_seconds": 20 }),
        )
        .await;
    assert_eq!(st["status"], "completed");
    assert_eq!(st["result"], "line one\nline two\nline three\n");
    let out = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "filter": "^line t" }),
        )
        .await;
    assert_eq!(out["text"], "line two\nline three\n");
    assert_eq!(out["matched_lines"], 2);
}

/// A line-numbered text of `n` lines, and the same text cut into chunks of `chunk` bytes
/// (so chunk edges fall inside lines).
fn numbered_lines(n: usize, chunk: usize) -> (String, Vec<String>) {
    let text: String = (0..n)
        .map(|i| format!("line {i:03} of the long answer\n"))
        .collect();
    let chunks = text
        .as_bytes()
        .chunks(chunk)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    (text, chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_reports_the_role_tier_model_and_effective_limits_it_chose() {
    let s = Session::start("").await;
    let v = s
        .ok(
            "agent_spawn",
            json!({ "task": "Look at the parser", "role": "reviewer", "tier": "quality", "limits": { "memory_mb": 512, "max_turns": 5 } }),
        )
        .await;
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["role"], "reviewer");
    assert_eq!(v["tier"], "quality");
    assert_eq!(v["model"], "claude-opus-5-5");
    assert_eq!(v["routed_by"], "tier");
    assert_eq!(v["limits"]["memory_mb"], 512);
    assert_eq!(v["limits"]["max_turns"], 5);
    assert_eq!(
        v["limits"].as_object().unwrap().len(),
        2,
        "only limits that differ from [defaults] are shown: {v}"
    );
    let id = v["agent_id"].as_str().unwrap().to_string();
    let verbose = s
        .ok("agent_status", json!({ "agent_id": id, "verbose": true }))
        .await;
    assert_eq!(
        verbose["limits"]["cpu_seconds"], 600,
        "unset limits come from [defaults]: {verbose}"
    );
    assert_eq!(verbose["limits"]["memory_mb"], 512);
    s.wait_all(std::slice::from_ref(&id)).await;
    assert_eq!(s.fake.requests()[0].model, "claude-opus-5-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_running_agent_has_its_pid_and_no_result() {
    let s = Session::start("").await;
    s.fake.script(
        "keep thinking",
        vec![Step::Hang {
            after_chunks: vec!["thinking\n".into()],
        }],
    );
    let id = s.spawn("keep thinking about it").await;
    let st = s.status(&id).await;
    assert_eq!(st["status"], "running", "{st}");
    assert!(st["pid"].as_u64().is_some_and(|p| p > 0), "{st}");
    assert!(st["result"].is_null(), "{st}");
    assert!(st["exit"].is_null(), "{st}");
    assert!(st["ended_at"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_counts_agents_by_status_with_token_and_cost_totals() {
    let s = Session::start("").await;
    s.fake.script(
        "never finishes",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let done = vec![
        s.spawn("First quick task").await,
        s.spawn_with(json!({ "task": "Second quick task", "role": "explorer", "label": "second" }))
            .await,
    ];
    s.wait_all(&done).await;
    let hanging = s.spawn("This one never finishes").await;

    let list = s.ok("agent_list", json!({})).await;
    let rows = list["agents"].as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [done[0].as_str(), done[1].as_str(), hanging.as_str()],
        "oldest first"
    );
    assert_eq!(list["counts"], json!({ "completed": 2, "running": 1 }));
    assert_eq!(rows[1]["label"], "second");
    assert_eq!(rows[1]["role"], "explorer");
    let (mut input, mut output, mut cost) = (0, 0, 0.0);
    for id in &done {
        let st = s.status(id).await;
        input += st["usage"]["input_tokens"].as_u64().unwrap();
        output += st["usage"]["output_tokens"].as_u64().unwrap();
        cost += st["usage"]["cost_usd"].as_f64().unwrap();
    }
    assert!(input > 0 && output > 0);
    assert_eq!(list["total_input_tokens"], input);
    assert_eq!(list["total_output_tokens"], output);
    assert!(
        (list["total_cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{list}"
    );

    let running = s.ok("agent_list", json!({ "status": "running" })).await;
    assert_eq!(running["agents"].as_array().unwrap().len(), 1);
    assert_eq!(running["agents"][0]["agent_id"], hanging.as_str());
    let explorers = s.ok("agent_list", json!({ "role": "explorer" })).await;
    assert_eq!(explorers["agents"].as_array().unwrap().len(), 1);
    assert_eq!(explorers["agents"][0]["agent_id"], done[1].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_any_returns_when_the_first_agent_ends() {
    let s = Session::start("").await;
    s.fake.script(
        "stays busy",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let busy = s.spawn("stays busy forever").await;
    let quick = s.spawn("answers at once").await;
    let v = s
        .ok(
            "agent_wait",
            json!({ "agent_ids": [busy, quick], "mode": "any", "wait_seconds": 30 }),
        )
        .await;
    assert_eq!(v["done"], true, "{v}");
    assert_eq!(v["ended"], json!([quick]));
    assert_eq!(v["still_running"], json!([busy]));
    let quick_view = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == quick.as_str())
        .unwrap();
    assert_eq!(quick_view["result"], "echo: answers at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_that_runs_out_says_not_done_and_what_still_runs() {
    let s = Session::start("").await;
    s.fake.script(
        "stays busy",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let busy = s.spawn("stays busy forever").await;
    let v = s
        .ok(
            "agent_wait",
            json!({ "agent_ids": [busy], "wait_seconds": 0.3 }),
        )
        .await;
    assert_eq!(v["done"], false, "{v}");
    assert_eq!(v["ended"], json!([]));
    assert_eq!(v["still_running"], json!([busy]));
    let text = support::mcp::text_of(
        &s.call(
            "agent_wait",
            json!({ "agent_ids": [busy], "wait_seconds": 0 }),
        )
        .await,
    );
    assert!(text.contains("call agent_wait again"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_an_ended_agent_reports_it_instead_of_failing() {
    let s = Session::start("").await;
    let id = s.spawn("Finish quickly").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let v = s.ok("agent_kill", json!({ "agent_id": id })).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["result"], "echo: Finish quickly");
    assert_eq!(s.status(&id).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_queued_agent_cancels_it_before_it_starts() {
    let s = Session::start_server("max_concurrent = 1").await;
    s.fake.script(
        "holds the slot",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let first = s.spawn("holds the slot").await;
    let queued = s
        .ok("agent_spawn", json!({ "task": "waits in the queue" }))
        .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let queued = queued["agent_id"].as_str().unwrap().to_string();

    let v = s.ok("agent_kill", json!({ "agent_id": queued })).await;
    assert_eq!(v["status"], "killed", "{v}");
    assert_eq!(v["exit"]["reason"], "cancelled");
    assert!(
        v["pid"].is_null(),
        "a cancelled agent never had a process: {v}"
    );

    s.ok("agent_kill", json!({ "agent_id": first, "grace_ms": 0 }))
        .await;
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["counts"], json!({ "killed": 2 }), "{list}");
    let asked: Vec<String> = s
        .fake
        .requests()
        .iter()
        .map(|r| r.first_user_text())
        .collect();
    assert!(
        asked.iter().all(|t| !t.contains("waits in the queue")),
        "{asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_agents_start_in_order_as_slots_free() {
    let s = Session::start_server("max_concurrent = 1").await;
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let v = s
            .ok("agent_spawn", json!({ "task": format!("Queued task {i}") }))
            .await;
        statuses.push(v["status"].as_str().unwrap().to_string());
        ids.push(v["agent_id"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses[0], "running");
    let waited = s.wait_all(&ids).await;
    for (i, a) in waited["agents"].as_array().unwrap().iter().enumerate() {
        assert_eq!(a["status"], "completed", "{a}");
        assert_eq!(a["result"], format!("echo: Queued task {i}"));
    }
    let asked: Vec<String> = s
        .fake
        .requests()
        .iter()
        .map(|r| r.first_user_text())
        .collect();
    assert_eq!(
        asked,
        ["Queued task 0", "Queued task 1", "Queued task 2"],
        "first in, first out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_spawned_at_once_each_complete_with_their_own_result() {
    let s = Session::start("").await;
    let tasks: Vec<String> = (0..50).map(|i| format!("Parallel job #{i}#")).collect();
    let ids = futures_util::future::join_all(tasks.iter().map(|t| s.spawn(t))).await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 50, "every spawn got its own id");

    let v = s.wait_all(&ids).await;
    assert_eq!(v["ended"].as_array().unwrap().len(), 50);
    assert_eq!(v.get("still_running"), None, "none still running: {v}");
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 50);
    for (id, task) in ids.iter().zip(&tasks) {
        let a = agents
            .iter()
            .find(|a| a["agent_id"] == id.as_str())
            .unwrap();
        assert_eq!(a["status"], "completed", "{a}");
        assert_eq!(
            a["result"],
            format!("echo: {task}"),
            "{id} got another agent's answer"
        );
    }
    let mut asked: Vec<String> = s
        .fake
        .requests()
        .iter()
        .map(|r| r.first_user_text())
        .collect();
    asked.sort();
    let mut expected = tasks.clone();
    expected.sort();
    assert_eq!(asked, expected, "one request per agent, none duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_pages_with_since_and_max_bytes_reassemble_the_whole_text() {
    let s = Session::start("").await;
    let (text, chunks) = numbered_lines(200, 100);
    s.fake.script(
        "long answer",
        vec![Step::Text {
            chunks,
            delay_ms: 0,
        }],
    );
    let id = s.spawn("Give a long answer").await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let whole = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "max_bytes": 100_000 }),
        )
        .await;
    assert_eq!(whole["text"], text.as_str());
    assert_eq!(whole.get("truncated"), None);

    let mut pages = Vec::new();
    let mut since = json!(null);
    loop {
        let p = s
            .ok(
                "agent_output",
                json!({ "agent_id": id, "since": since, "max_bytes": 300 }),
            )
            .await;
        let t = p["text"].as_str().unwrap().to_string();
        assert!(t.len() <= 300, "page of {} bytes", t.len());
        assert!(!t.is_empty(), "a page in range is never empty");
        pages.push(t);
        since = p["next_cursor"].clone();
        if p["truncated"] != true {
            break;
        }
        assert!(pages.len() < 100, "paging does not end");
    }
    assert!(pages.len() >= 18, "{} pages", pages.len());
    assert_eq!(pages.concat(), text);
    assert_eq!(since, json!(text.len()));
    let past_end = s
        .ok("agent_output", json!({ "agent_id": id, "since": since }))
        .await;
    assert_eq!(past_end["text"], "");
    assert_eq!(past_end.get("truncated"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_filter_pages_match_the_filtered_text_and_consume_nothing() {
    let s = Session::start("").await;
    let (text, chunks) = numbered_lines(200, 100);
    s.fake.script(
        "long answer",
        vec![Step::Text {
            chunks,
            delay_ms: 0,
        }],
    );
    let id = s.spawn("Give a long answer").await;
    s.wait_all(std::slice::from_ref(&id)).await;
    let wanted: String = text
        .lines()
        .filter(|l| l.starts_with("line 1") && l.contains("7 "))
        .map(|l| format!("{l}\n"))
        .collect();

    let filtered = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "filter": "^line 1\\d7 " }),
        )
        .await;
    assert_eq!(filtered["text"], wanted.as_str());
    assert_eq!(filtered["matched_lines"], 10);

    let mut pages = String::new();
    let mut since = json!(null);
    for _ in 0..100 {
        let p = s
            .ok("agent_output", json!({ "agent_id": id, "filter": "^line 1\\d7 ", "since": since, "max_bytes": 60 }))
            .await;
        pages.push_str(p["text"].as_str().unwrap());
        since = p["next_cursor"].clone();
        if p["truncated"] != true {
            break;
        }
    }
    assert_eq!(pages, wanted);

    let again = s
        .ok(
            "agent_output",
            json!({ "agent_id": id, "max_bytes": 100_000 }),
        )
        .await;
    assert_eq!(again["text"], text.as_str(), "filtering consumed output");
    let tail = s
        .ok("agent_output", json!({ "agent_id": id, "tail_lines": 2 }))
        .await;
    assert_eq!(
        tail["text"],
        "line 198 of the long answer\nline 199 of the long answer\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_follows_a_running_agent_with_since_and_wait_seconds() {
    let s = Session::start("").await;
    let (text, chunks) = numbered_lines(20, 40);
    s.fake.script(
        "slow answer",
        vec![Step::Text {
            chunks,
            delay_ms: 30,
        }],
    );
    let id = s.spawn("Give a slow answer").await;
    let mut seen = String::new();
    let mut since = 0u64;
    let mut reads = 0;
    loop {
        let p = s
            .ok(
                "agent_output",
                json!({ "agent_id": id, "since": since, "wait_seconds": 10, "max_bytes": 200 }),
            )
            .await;
        reads += 1;
        seen.push_str(p["text"].as_str().unwrap());
        since = p["next_cursor"].as_u64().unwrap();
        if p["status"] == "completed" && p["truncated"] != true {
            break;
        }
        assert_ne!(p["status"], "failed", "{p}");
        assert!(reads < 500, "following does not end");
    }
    assert_eq!(seen, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_beyond_the_buffer_is_counted_as_dropped_and_kept_in_the_transcript() {
    let s = Session::start("").await;
    let (text, chunks) = numbered_lines(200, 100);
    s.fake.script(
        "long answer",
        vec![Step::Text {
            chunks,
            delay_ms: 0,
        }],
    );
    let id = s
        .spawn_with(json!({ "task": "Give a long answer", "limits": { "max_output_bytes": 4096 } }))
        .await;
    s.wait_all(std::slice::from_ref(&id)).await;

    let out = s
        .ok("agent_output", json!({ "agent_id": id, "since": 0 }))
        .await;
    let kept = out["text"].as_str().unwrap();
    let dropped = out["dropped_bytes"].as_u64().unwrap();
    assert!(
        dropped > 0 && kept.len() <= 4096,
        "dropped {dropped}, kept {}",
        kept.len()
    );
    assert!(text.ends_with(kept), "the newest output is kept");
    assert!(
        kept.starts_with("line "),
        "reading resumes at a line start: {kept:.40}"
    );
    assert_eq!(
        dropped as usize + kept.len(),
        text.len(),
        "every byte is either returned or counted"
    );
    let readable = support::mcp::text_of(
        &s.call("agent_output", json!({ "agent_id": id, "since": 0 }))
            .await,
    );
    assert!(
        readable.contains("transcript"),
        "the text says where the rest is: {readable:.200}"
    );

    let st = s
        .ok("agent_status", json!({ "agent_id": id, "verbose": true }))
        .await;
    let evicted = st["details"]["output"]["output_evicted_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        evicted > 0 && evicted <= dropped,
        "evicted {evicted}, dropped {dropped}: {st}"
    );
    let transcript = std::fs::read_to_string(out["transcript_path"].as_str().unwrap()).unwrap();
    let streamed: String = transcript
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "text")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text, "the transcript holds all of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_with_a_repeated_id_reports_each_agent_once() {
    let s = Session::start("").await;
    let a = s.spawn("First of two").await;
    let b = s.spawn("Second of two").await;
    let v = s
        .ok(
            "agent_wait",
            json!({ "agent_ids": [a, b, a], "wait_seconds": 30 }),
        )
        .await;
    assert_eq!(v["done"], true, "{v}");
    assert_eq!(v["ended"], json!([a, b]), "{v}");
    assert_eq!(v["agents"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_server_maximum_is_capped_and_says_so() {
    let s = Session::start_server("max_wait_seconds = 1").await;
    s.fake.script(
        "stays busy",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let id = s.spawn("stays busy forever").await;
    let r = s
        .call(
            "agent_status",
            json!({ "agent_id": id, "wait_seconds": 1000 }),
        )
        .await;
    assert_ne!(r.is_error, Some(true));
    assert_eq!(r.structured_content.as_ref().unwrap()["status"], "running");
    let text = support::mcp::text_of(&r);
    assert!(text.contains("capped at 1 s"), "{text}");
    let v = s.ok("agent_wait", json!({ "agent_ids": [id] })).await;
    assert_eq!(
        v["done"], false,
        "the default wait is the maximum, then it returns: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_ended_is_ended_in_every_view_at_once() {
    let s = Session::start("").await;
    let id = s.spawn("End at once").await;
    let v = s
        .ok(
            "agent_status",
            json!({ "agent_id": id, "wait_seconds": 30 }),
        )
        .await;
    assert_eq!(v["status"], "completed");
    let list = s.ok("agent_list", json!({})).await;
    assert_eq!(list["agents"][0]["status"], "completed", "{list}");
    let waited = s
        .ok(
            "agent_wait",
            json!({ "agent_ids": [id], "wait_seconds": 0 }),
        )
        .await;
    assert_eq!(waited["done"], true, "{waited}");
    let out = s.ok("agent_output", json!({ "agent_id": id })).await;
    assert_eq!(out["status"], "completed", "{out}");
    let r = s
        .client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(format!(
            "agent://{id}/status"
        )))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &r.contents[0] else {
        panic!("expected text")
    };
    assert!(text.contains("\"completed\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_which_sandbox_confines_the_worker() {
    let confined = Session::start("").await;
    let unconfined = Session::start_server("sandbox = \"off\"").await;

    let a = confined.spawn("Say hello from the sandbox").await;
    let b = unconfined.spawn("Say hello without a sandbox").await;
    confined.wait_all(std::slice::from_ref(&a)).await;
    unconfined.wait_all(std::slice::from_ref(&b)).await;

    let st = confined.status(&a).await;
    assert_eq!(st["status"], "completed", "{st}");
    let said = st["sandbox"].as_str().unwrap_or_default();
    assert!(said.starts_with("landlock (ABI "), "{st}");
    let st = unconfined.status(&b).await;
    assert_eq!(st["status"], "completed", "{st}");
    assert_eq!(
        st["sandbox"], "none: sandbox = \"off\"; commands (bash): unconfined (sandbox = \"off\")",
        "{st}"
    );
}
