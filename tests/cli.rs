//! The `bg-agents` command line: --check-config, --version, --help.

use std::path::Path;
use std::process::{Command, Output};

fn bg_agents(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bg-agents"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .output()
        .expect("run bg-agents")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("limits.toml");
    std::fs::write(
        &config,
        "[server]\nmax_concurrent = 3\n\n[max]\nmemory_mb = 4096\n",
    )
    .unwrap();
    let out = bg_agents(
        home.path(),
        &["--check-config", "--config", config.to_str().unwrap()],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(config.to_str().unwrap()),
        "names its source: {stdout}"
    );
    assert!(stdout.contains("max_concurrent = 3"), "{stdout}");
    assert!(stdout.contains("memory_mb = 4096"), "{stdout}");
    assert!(
        stdout.contains("kill_grace_ms = 2000"),
        "defaults fill the rest: {stdout}"
    );
    assert!(stdout.contains("claude-haiku-5-5"), "{stdout}");
}

#[test]
fn check_config_without_a_file_prints_the_built_in_defaults() {
    let home = tempfile::tempdir().unwrap();
    let out = bg_agents(home.path(), &["--check-config"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("max_concurrent = 8"), "{stdout}");
}

#[test]
fn a_config_with_an_unknown_key_exits_2_naming_the_key() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("limits.toml");
    std::fs::write(&config, "[server]\nmax_concurent = 3\n").unwrap();
    let out = bg_agents(
        home.path(),
        &["--check-config", "--config", config.to_str().unwrap()],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_concurent"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
}

#[test]
fn a_config_with_a_bad_value_exits_2_naming_the_key() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("limits.toml");
    std::fs::write(&config, "[server]\nmax_concurrent = 0\n").unwrap();
    let out = bg_agents(
        home.path(),
        &["--check-config", "--config", config.to_str().unwrap()],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_concurrent"), "{stderr}");
}

/// A bad configuration does not stop the server (a client would see only "connection
/// closed"): it serves, says the error on stderr, and answers every tool call with it
/// (tests/first_hour.rs). Here stdin is at EOF at once, so the session ends cleanly.
#[test]
fn serving_with_a_bad_config_logs_the_key_and_still_serves() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("limits.toml");
    std::fs::write(&config, "[defaults]\nmemory_mb = \"lots\"\n").unwrap();
    let out = bg_agents(home.path(), &["--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("[defaults] memory_mb"), "{stderr}");
    assert!(out.stdout.is_empty(), "stdout carries the protocol alone");
}

#[test]
fn a_missing_config_file_exits_2_naming_the_path() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("nope.toml");
    let out = bg_agents(
        home.path(),
        &["--check-config", "--config", missing.to_str().unwrap()],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

#[test]
fn version_prints_the_package_version() {
    let home = tempfile::tempdir().unwrap();
    let out = bg_agents(home.path(), &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("bg-agents {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_server_and_its_options() {
    let home = tempfile::tempdir().unwrap();
    let out = bg_agents(home.path(), &["--help"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for needle in [
        "MCP",
        "--config",
        "--check-config",
        "--version",
        "claude mcp add",
    ] {
        assert!(stdout.contains(needle), "help lacks {needle}: {stdout}");
    }
}
