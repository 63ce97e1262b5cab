//! The command line a person meets: --help, --check-config, configuration errors and a
//! missing API key.

use crate::common;

use bg_agent_worker::protocol::{ErrorKind, Event, exit};
use common::{Harness, Step, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_explains_every_option() {
    let h = Harness::start().await;

    let r = run(h.worker(&["--help"])).await;

    assert_eq!(r.code, Some(0), "{}", r.dump());
    for option in [
        "--json",
        "--model",
        "--tier",
        "--task-type",
        "--role",
        "--cwd",
        "--config",
        "--max-turns",
        "--budget-usd",
        "--spec",
        "--check-config",
        "--help",
        "--version",
    ] {
        assert!(
            r.stdout.contains(option),
            "--help does not mention {option}"
        );
    }
    assert!(r.stdout.contains("ANTHROPIC_API_KEY"), "{}", r.stdout);
    assert!(r.stdout.contains("Exit codes"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_effective_configuration() {
    let h = Harness::start().await;
    let config = h.write(
        "user.toml",
        "[defaults]\nmax_turns = 7\n\n[tiers.fast]\nmodel = \"claude-haiku-4-5\"\n",
    );

    let r = run(h.worker(&["--check-config", "--config", config.to_str().unwrap()])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let first = r.stdout.lines().next().unwrap_or_default();
    assert!(first.contains(config.to_str().unwrap()), "{first}");
    let effective: toml::Table = toml::from_str(&r.stdout).expect("the output is TOML");
    assert_eq!(effective["defaults"]["max_turns"].as_integer(), Some(7));
    assert_eq!(
        effective["tiers"]["fast"]["model"].as_str(),
        Some("claude-haiku-4-5")
    );
    // Keys the file does not set keep their built-in values.
    assert_eq!(effective["defaults"]["max_tokens"].as_integer(), Some(8192));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_2_naming_the_key() {
    let h = Harness::start().await;
    let cases = [
        ("[providers.anthropic]\nmax_retries = 99\n", "max_retries"),
        ("[defaults]\nmax_turnz = 3\n", "max_turnz"),
    ];
    for (text, key) in cases {
        let config = h.write("bad.toml", text);
        for args in [
            vec!["--check-config", "--config", config.to_str().unwrap()],
            vec!["--config", config.to_str().unwrap(), "some task"],
        ] {
            let r = run(h.worker(&args)).await;
            assert_eq!(r.code, Some(exit::BAD_SPEC), "{args:?}\n{}", r.dump());
            let all = format!("{}{}", r.stdout, r.stderr);
            assert!(
                all.contains(key),
                "{args:?} does not name {key}\n{}",
                r.dump()
            );
        }
    }
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_from_bg_agents_config_env_is_used() {
    let h = Harness::start().await;
    let config = h.write("env.toml", "[defaults]\nmax_turns = 9\n");

    let mut cmd = h.worker(&["--check-config"]);
    cmd.env("BG_AGENTS_CONFIG", &config);
    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    let effective: toml::Table = toml::from_str(&r.stdout).expect("TOML");
    assert_eq!(effective["defaults"]["max_turns"].as_integer(), Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_api_key_is_one_line_naming_the_variable_and_exits_2() {
    let h = Harness::start().await;

    let mut cmd = h.worker(&["find the parser"]);
    cmd.env_remove("ANTHROPIC_API_KEY");
    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
    assert_eq!(r.stdout, "", "errors go to stderr");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.dump());
    assert!(lines[0].contains("ANTHROPIC_API_KEY"), "{}", lines[0]);
    assert!(h.fake.requests().is_empty());

    let mut cmd = h.worker(&["--json", "find the parser"]);
    cmd.env_remove("ANTHROPIC_API_KEY");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Config);
            assert!(message.contains("ANTHROPIC_API_KEY"), "{message}");
        }
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_spec_exits_2_with_a_config_error() {
    let h = Harness::start().await;
    let mut unknown_field = serde_json::to_value(h.spec("x")).expect("spec json");
    unknown_field["colour"] = "blue".into();
    let mut missing_cwd = h.spec("x");
    missing_cwd.cwd = h.root().join("not-here");
    let cases = [
        ("not json\n".to_string(), "valid TaskSpec"),
        (format!("{unknown_field}\n"), "colour"),
        (
            serde_json::to_string(&missing_cwd).expect("spec json") + "\n",
            "not-here",
        ),
    ];
    for (line, expected) in cases {
        let mut cmd = h.worker(&["--spec", "-"]);
        cmd.stdin(std::process::Stdio::piped());
        let mut live = common::Live::spawn(cmd);
        let stdin = live.stdin.as_mut().expect("stdin");
        tokio::io::AsyncWriteExt::write_all(stdin, line.as_bytes())
            .await
            .expect("write spec");
        let r = live.finish().await;
        assert_eq!(r.code, Some(exit::BAD_SPEC), "{line}\n{}", r.dump());
        match r.last() {
            Event::Error { kind, message } => {
                assert_eq!(kind, ErrorKind::Config);
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("not an error: {other:?}"),
        }
    }
    assert!(h.fake.requests().is_empty());
}

/// `--spec -` from a file, not the server's pipe: stdin is read on a thread (the runtime
/// takes only pipes), and its end right after the spec means the server is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_on_stdin_from_a_file_ends_as_a_server_gone() {
    let h = Harness::start().await;
    // No answer ever comes, so only stdin's end can end the run.
    h.fake.script(
        "a file spec",
        vec![Step::Hang {
            after_chunks: vec![],
        }],
    );
    let path = h.root().join("spec.jsonl");
    let line = serde_json::to_string(&h.spec("a file spec")).expect("spec json") + "\n";
    std::fs::write(&path, line).expect("write spec file");
    let mut cmd = h.worker(&["--spec", "-"]);
    cmd.stdin(std::fs::File::open(&path).expect("open spec file"));

    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::INTERRUPTED_TERM), "{}", r.dump());
    assert!(
        r.stderr.contains("stdin closed, the server is gone"),
        "{}",
        r.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_is_not_a_number_is_refused() {
    let h = Harness::start().await;

    for bad in ["NaN", "inf", "-1"] {
        let r = run(h.worker(&[&format!("--budget-usd={bad}"), "some task"])).await;

        assert_eq!(r.code, Some(exit::BAD_SPEC), "{bad}: {}", r.dump());
        assert!(r.stderr.contains("is not a budget"), "{bad}: {}", r.dump());
        assert!(h.fake.requests().is_empty(), "{bad}: the run started");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_variable_without_a_scheme_fails_at_once_naming_the_variable() {
    let h = Harness::start().await;

    let mut cmd = h.worker(&["--json", "find the parser"]);
    cmd.env("ANTHROPIC_BASE_URL", "127.0.0.1:9");
    let r = run(cmd).await;

    assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
    assert!(r.retries().is_empty(), "retried: {}", r.dump());
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Config);
            assert!(
                message.starts_with("ANTHROPIC_BASE_URL = \"127.0.0.1:9\""),
                "{message}"
            );
            assert!(message.contains("http:// or https://"), "{message}");
        }
        other => panic!("not an error: {other:?}"),
    }
    assert!(h.fake.requests().is_empty());
}

/// The system's CA roots are loaded only for a provider reached over TLS. With
/// SSL_CERT_FILE and SSL_CERT_DIR naming nothing (a system without roots), an https://
/// provider fails at once because none could be loaded, while an http:// one (a local
/// server) never asks for them and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_https_provider_loads_the_system_roots() {
    let h = Harness::start().await;
    let nothing = h.root().join("no-such-roots");
    let without_roots = |args: &[&str]| {
        let mut cmd = h.worker(args);
        cmd.env("SSL_CERT_FILE", &nothing)
            .env("SSL_CERT_DIR", &nothing);
        cmd
    };

    let mut cmd = without_roots(&["--json", "roots over https"]);
    cmd.env("ANTHROPIC_BASE_URL", "https://127.0.0.1:9");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(exit::BAD_SPEC), "{}", r.dump());
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Config);
            assert!(
                message.starts_with("cannot build the HTTP client")
                    && message.contains("No CA certificates"),
                "{message}"
            );
        }
        other => panic!("not an error: {other:?}"),
    }

    h.fake
        .script("roots over http", vec![Step::text("answered in the clear")]);
    let r = run(without_roots(&["--json", "roots over http"])).await;
    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    match r.last() {
        Event::Result { text, .. } => assert_eq!(text, "answered in the clear"),
        other => panic!("not a result: {other:?}"),
    }
}
