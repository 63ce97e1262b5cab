//! How provider failures end or retry a turn: what is retried and how often, what is
//! fatal at once, what the run reports, and that the API key is never part of it.

use crate::common;

use bg_agent_worker::protocol::{ErrorKind, Event, exit};
use common::{Harness, Step, run, status_now};
use serde_json::json;
use support::process::API_KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_overload_and_mid_stream_errors_are_retried_until_success() {
    let h = Harness::start().await;
    h.fake.script(
        "flaky provider",
        vec![
            // First, so that its backoff (no retry-after) is the shortest.
            Step::MidStreamError {
                after_chunks: vec!["partial ".into(), "answer".into()],
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
            },
            status_now(429),
            status_now(529),
            Step::text("Recovered answer."),
        ],
    );

    let r = run(h.worker(&["--json", "flaky provider"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert_eq!(h.fake.request_count("flaky provider"), 4);
    let retries = r.retries();
    assert_eq!(retries.len(), 3, "{}", r.dump());
    let expected = [
        (1, "overloaded_error", true, None, false),
        (2, "429", false, Some(0), true),
        (3, "529", false, Some(0), true),
    ];
    for (event, (n, why, discarded, wait, throttle)) in retries.iter().zip(expected) {
        let Event::Retry {
            attempt,
            wait_ms,
            reason,
            discarded_output,
            throttled,
        } = event
        else {
            unreachable!()
        };
        assert_eq!(*attempt, n);
        assert!(reason.contains(why), "retry {n}: {reason}");
        assert_eq!(*discarded_output, discarded, "retry {n}");
        assert_eq!(
            *throttled, throttle,
            "retry {n}: HTTP 429/529 are throttling"
        );
        if let Some(w) = wait {
            assert_eq!(*wait_ms, w, "retry-after: 0 is honoured");
        }
    }
    match r.last() {
        Event::Result { text, turns, .. } => {
            assert_eq!(
                text, "Recovered answer.",
                "the void attempt is not the answer"
            );
            assert_eq!(turns, 1, "retries are not turns");
        }
        other => panic!("not a result: {other:?}\n{}", r.dump()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_message_is_retried() {
    let h = Harness::start().await;
    h.fake.script(
        "dropped connection",
        vec![
            Step::CloseMidMessage {
                after_chunks: vec!["half an ".into()],
            },
            Step::text("Whole answer."),
        ],
    );

    let r = run(h.worker(&["--json", "dropped connection"])).await;

    assert_eq!(r.code, Some(exit::DONE), "{}", r.dump());
    assert_eq!(h.fake.request_count("dropped connection"), 2);
    match r.retries().as_slice() {
        [
            Event::Retry {
                attempt: 1,
                discarded_output: true,
                ..
            },
        ] => {}
        other => panic!("expected one retry that voids the partial text: {other:?}"),
    }
    assert!(matches!(r.last(), Event::Result { text, .. } if text == "Whole answer."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_end_in_a_provider_error_with_exit_1() {
    let h = Harness::start().await;
    // The built-in anthropic provider retries 4 times.
    h.fake.script("always busy", vec![status_now(529); 6]);

    let r = run(h.worker(&["--json", "always busy"])).await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    assert_eq!(h.fake.request_count("always busy"), 5);
    assert_eq!(r.retries().len(), 4);
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Provider);
            assert!(message.contains("Overloaded"), "{message}");
            assert!(message.contains("4 retries"), "{message}");
        }
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_is_fatal_with_the_providers_message_and_not_retried() {
    let h = Harness::start().await;
    let message = "messages.0.content: text content blocks must be non-empty";
    h.fake.script(
        "malformed",
        vec![
            Step::Status {
                code: 400,
                error_type: "invalid_request_error".into(),
                message: message.into(),
                retry_after: None,
            },
            Step::text("never reached"),
        ],
    );

    let r = run(h.worker(&["--json", "malformed"])).await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    assert_eq!(h.fake.request_count("malformed"), 1);
    assert!(r.retries().is_empty());
    match r.last() {
        Event::Error { kind, message: m } => {
            assert_eq!(kind, ErrorKind::Provider);
            assert!(m.contains(message), "{m}");
            assert!(m.contains("400"), "{m}");
        }
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_for_an_enforced_spend_limit_is_not_retried() {
    let h = Harness::start().await;
    h.fake.script(
        "over the spend limit",
        vec![
            Step::StatusBody {
                code: 429,
                body: json!({
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "You have reached your specified API usage limits.",
                        "details": {"error_code": "enforced_spend_limit_reached"},
                    },
                }),
                retry_after: Some(0),
            },
            Step::text("never reached"),
        ],
    );

    let r = run(h.worker(&["--json", "over the spend limit"])).await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    assert_eq!(h.fake.request_count("over the spend limit"), 1);
    assert!(r.retries().is_empty());
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Provider);
            assert!(message.contains("usage limits"), "{message}");
        }
        other => panic!("not an error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_never_appears_in_output_or_logs() {
    let h = Harness::start().await;
    // The provider echoing the key back in its error message is the worst case.
    let echoes_key = Step::Status {
        code: 401,
        error_type: "authentication_error".into(),
        message: format!("invalid x-api-key: {API_KEY}"),
        retry_after: None,
    };
    h.fake.script("bad key", vec![echoes_key; 2]);
    h.fake.script("server errors", vec![status_now(503); 6]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };

    let runs = [
        run(h.worker(&["--json", "bad key"])).await,
        run(h.worker(&["bad key"])).await,
        run(h.worker(&["--json", "server errors"])).await,
        {
            let mut cmd = h.worker(&["--json", "nobody listening"]);
            cmd.env("ANTHROPIC_BASE_URL", format!("http://{closed}"));
            // Connection failures are retried with backoff; one retry keeps this quick.
            let config = h.write("one-retry.toml", "[providers.anthropic]\nmax_retries = 1\n");
            cmd.arg("--config").arg(config);
            run(cmd).await
        },
    ];

    // Run::new already asserted the key is absent; check the runs were the ones meant.
    for r in &runs {
        assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    }
    assert!(
        runs[0]
            .stdout
            .contains("invalid x-api-key: [redacted API key]"),
        "{}",
        runs[0].dump()
    );
    assert!(
        runs[3].stdout.contains("cannot connect"),
        "{}",
        runs[3].dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_read_only_up_to_a_bound() {
    let h = Harness::start().await;
    h.fake.script(
        "endless error",
        vec![
            Step::EndlessErrorBody { code: 400 },
            Step::text("never reached"),
        ],
    );

    // Without the bound the worker reads until RUN_TIMEOUT (or memory) runs out.
    let r = run(h.worker(&["--json", "endless error"])).await;

    assert_eq!(r.code, Some(exit::PROVIDER), "{}", r.dump());
    match r.last() {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Provider);
            assert!(message.contains("400"), "{message}");
            assert!(message.len() < 4096, "{} bytes", message.len());
        }
        other => panic!("not an error: {other:?}"),
    }
}
