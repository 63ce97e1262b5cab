//! Parallel-spawn stress through MCP, sized for CI on 2 cores: many agents at once,
//! many in a row, many killed at once. Real server, real workers, the provider double.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use support::mcp::Session;
use support::process::{alive, eventually};
use support::provider::Step;

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// Zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z")
            && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        {
            out.push(pid);
        }
    }
    out
}

fn group_gone(pgid: u32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_spawns_all_complete_with_their_own_results() {
    let s = Session::start("max_concurrent = 64\n").await;
    // Each echo streams the task back: a few KB per agent.
    let filler = "lorem ipsum dolor ".repeat(200);
    let tasks: Vec<String> = (0..200)
        .map(|i| format!("stress task {i}: {filler}"))
        .collect();
    let ids: Vec<String> = join_all(tasks.iter().map(|t| s.spawn(t))).await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 200, "every spawn got its own id");

    let waited = s.wait_all(&ids).await;
    assert_eq!(waited["counts"]["completed"], 200, "{waited}");
    for (id, task) in ids.iter().zip(&tasks) {
        let st = s.status(id).await;
        assert_eq!(st["status"], "completed", "{id}: {st}");
        assert_eq!(
            st["result"].as_str().unwrap(),
            format!("echo: {task}"),
            "{id} got someone else's answer"
        );
    }
    let (list, rows) = s.list_all(json!({})).await;
    assert_eq!(list["counts"]["completed"], 200);
    let listed: HashSet<&str> = rows
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (rows.len(), listed.len()),
        (200, 200),
        "none lost or duplicated across pages"
    );
    assert_eq!(
        s.fake.requests().len(),
        200,
        "one provider request per agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sequential_cycles_keep_rss_fds_and_zombies_flat() {
    let s = Session::start("").await;
    let server = s.server_pid;
    let cycle = |i: usize| {
        let s = &s;
        async move {
            let id = s.spawn(&format!("cycle {i}")).await;
            let st = s
                .ok(
                    "agent_status",
                    json!({ "agent_id": id, "wait_seconds": 30 }),
                )
                .await;
            assert_eq!(st["status"], "completed", "cycle {i}: {st}");
        }
    };
    // Warm up: the runtime, allocator arenas and the record table reach their working size.
    for i in 0..50 {
        cycle(i).await;
    }
    let rss_before = rss_kib(server);
    let fds_before = fd_count(server);
    for i in 50..1050 {
        cycle(i).await;
    }
    let rss_after = rss_kib(server);
    assert!(
        eventually(Duration::from_secs(5), || fd_count(server) == fds_before).await,
        "server fds: {fds_before} before, {} after",
        fd_count(server)
    );
    assert!(
        zombies_of(server).is_empty(),
        "zombies: {:?}",
        zombies_of(server)
    );
    let grown = rss_after.saturating_sub(rss_before);
    // Printed for the record (`--nocapture`); the assertion is the bound.
    eprintln!("1000 cycles: server RSS {rss_before} KiB → {rss_after} KiB, fds {fds_before}");
    assert!(
        grown < 5 * 1024,
        "server RSS grew {grown} KiB ({rss_before} → {rss_after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_running_agents_killed_in_parallel_all_end_killed() {
    let s = Session::start("max_concurrent = 100\n").await;
    s.fake.script(
        "hang-for-kill",
        (0..100)
            .map(|_| Step::Hang {
                after_chunks: vec!["working\n".into()],
            })
            .collect(),
    );
    let tasks: Vec<String> = (0..100).map(|i| format!("hang-for-kill {i}")).collect();
    let ids: Vec<String> = join_all(tasks.iter().map(|t| s.spawn(t))).await;
    // Every agent is mid-stream: its first text has arrived.
    for id in &ids {
        let out = s
            .ok(
                "agent_output",
                json!({ "agent_id": id, "wait_seconds": 30 }),
            )
            .await;
        assert_eq!(out["text"], "working\n", "{id}: {out}");
    }
    let mut pids = Vec::new();
    for id in &ids {
        let st = s.status(id).await;
        assert_eq!(st["status"], "running");
        pids.push(st["pid"].as_u64().unwrap() as u32);
    }
    let killed = join_all(
        ids.iter()
            .map(|id| s.ok("agent_kill", json!({ "agent_id": id, "grace_ms": 2000 }))),
    )
    .await;
    for k in &killed {
        assert_eq!(k["status"], "killed", "{k}");
    }
    for pid in pids {
        assert!(group_gone(pid), "process group {pid} still exists");
        assert!(!alive(pid), "worker {pid} still alive");
    }
    assert!(zombies_of(s.server_pid).is_empty());
}
