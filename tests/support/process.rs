//! Processes under test: the built binaries, a cleared environment to run them in, and
//! what the OS says about a pid.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// The provider API key every test hands to what it runs. Distinctive, so that finding
/// it in any output is unambiguous: it must never appear there.
pub const API_KEY: &str = "sk-ant-test-9f3c7e-never-print-me-41d2";

/// `target/<profile>`, found from the running test binary at
/// `target/<profile>/deps/<test>` (this crate is not a test target, so Cargo's
/// `CARGO_BIN_EXE_*` and `CARGO_TARGET_TMPDIR` are not set for it).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// The executable `name` of this workspace, which `cargo test` builds for the package
/// whose tests are running.
pub fn bin(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing; `cargo test` builds it for the package that defines it",
        path.display()
    );
    path
}

/// A directory for test artifacts that outlive one test (Cargo's `target/tmp`).
pub fn target_tmp() -> PathBuf {
    let dir = profile_dir().parent().expect("target/").join("tmp");
    std::fs::create_dir_all(&dir).expect("create target/tmp");
    dir
}

/// `program` with a cleared environment, so that a developer's real API key or config
/// cannot leak in: PATH is kept, HOME is `home` and XDG_CONFIG_HOME `home/.config`.
/// The process is killed if the command's child is dropped while it runs.
pub fn isolated(program: impl AsRef<OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .kill_on_drop(true);
    cmd
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Polls `cond` until it holds or `within` passes (for things the OS does
/// asynchronously, like a process exiting after its parent died).
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether every one of `pids` is gone within a few seconds.
pub async fn all_gone(pids: &[u32]) -> bool {
    eventually(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))).await
}

/// Processes (pid, process group) whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ppid: u32 = fields.get(1)?.parse().ok()?;
            let pgrp: u32 = fields.get(2)?.parse().ok()?;
            (ppid == parent).then_some((pid, pgrp))
        })
        .collect()
}

/// Processes in process group `group`.
pub fn group_members(group: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(group)
                && alive(pid)
        })
        .collect()
}

/// The process group of the command the worker `worker` runs now (its child that leads
/// a group of its own and is not the janitor), once it has at least `members` processes.
pub async fn command_group(worker: u32, members: usize) -> u32 {
    for _ in 0..250 {
        let found = children_of(worker).into_iter().find(|&(pid, group)| {
            pid == group && !is_janitor(pid) && group_members(group).len() >= members
        });
        if let Some((_, group)) = found {
            return group;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no command group of {members}; the worker's children: {:?}",
        children_of(worker)
    );
}

pub fn is_janitor(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"bg-agent-janitor"))
}
