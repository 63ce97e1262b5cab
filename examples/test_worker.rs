//! A misbehaving stand-in for bg-agent-worker, for the supervisor's tests and bench.
//!
//! It reads the TaskSpec line from stdin, like the real worker, and does what the task
//! names. Every mode first emits `started`; the long-running ones then emit a text line
//! `ready: MODE` once set up, so a test can wait for them before it pokes them.
//!
//! | task          | behaviour                                                        |
//! | ------------- | ---------------------------------------------------------------- |
//! | `ok`          | 300 numbered text lines, usage, result; exit 0                    |
//! | `spin`        | busy loop forever (ends by RLIMIT_CPU)                            |
//! | `alloc`       | allocate and touch memory until allocation fails (RLIMIT_AS)      |
//! | `ignore-term` | ignore SIGTERM, sleep forever (needs SIGKILL)                     |
//! | `sleep`       | sleep forever; SIGTERM ends it                                    |
//! | `crash`       | die of SIGSEGV                                                    |
//! | `fsize`       | write `fsize.bin` in cwd until RLIMIT_FSIZE (SIGXFSZ)             |
//! | `flood`       | write text events to stdout as fast as possible, forever          |
//! | `exit3`       | an `error` event of kind budget_exceeded; exit 3                  |
//! | `exit-stdin`  | sleep until stdin reaches EOF, then exit 143, like the real worker |
//! | `answer N`    | a result of N bytes (lines of 99 `a` and a '\n'); exit 0           |

// A test double, not shipped code: a malformed spec from the test ends it loudly.
#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    reason = "test double: failing loudly is the point"
)]

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use bg_agent_worker::protocol::{ErrorKind, Event, TaskSpec, UsageReport, exit};
use nix::sys::signal::{SigHandler, Signal, raise, signal};

/// Lines `ok` prints; enough to wrap the smallest ring buffer (4096 bytes).
const OK_LINES: usize = 300;

pub fn main() {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .expect("read the TaskSpec line");
    let spec: TaskSpec = serde_json::from_str(&line).expect("a TaskSpec on stdin");
    emit(&Event::Started {
        model: spec.model.clone(),
        provider: spec.provider.name.clone(),
        role: spec.role.clone(),
        limits: spec.limits,
        sandbox: None,
        cwd: None,
    });
    let mode = spec.task.trim();
    match mode {
        "ok" => ok(),
        "spin" => {
            ready(mode);
            loop {
                std::hint::black_box(0u64);
            }
        }
        "alloc" => {
            ready(mode);
            alloc()
        }
        "ignore-term" => {
            // SAFETY: installs SIG_IGN, no handler code runs; nothing else here touches
            // signal dispositions.
            unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.expect("ignore SIGTERM");
            ready(mode);
            sleep_forever()
        }
        "sleep" => {
            ready(mode);
            sleep_forever()
        }
        "crash" => {
            ready(mode);
            // Rust's runtime handles SIGSEGV (stack overflow reports); restore the
            // default so the raise kills the process.
            // SAFETY: installs SIG_DFL, no handler code runs.
            unsafe { signal(Signal::SIGSEGV, SigHandler::SigDfl) }.expect("default SIGSEGV");
            raise(Signal::SIGSEGV).expect("raise SIGSEGV");
            unreachable!("SIGSEGV did not kill the process")
        }
        "fsize" => {
            ready(mode);
            let mut f = std::fs::File::create("fsize.bin").expect("create fsize.bin in cwd");
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                f.write_all(&chunk).expect("write fsize.bin");
            }
        }
        "flood" => {
            ready(mode);
            let text = "flood ".repeat(170) + "\n";
            let line = Event::Text { text }.to_json_line() + "\n";
            let mut out = std::io::stdout().lock();
            // Ends when the server stops reading (EPIPE) or kills us.
            while out.write_all(line.as_bytes()).is_ok() {}
            std::process::exit(exit::INTERRUPTED_TERM)
        }
        "exit3" => {
            emit(&Event::Error {
                kind: ErrorKind::BudgetExceeded,
                message: "max_turns = 1 reached".into(),
            });
            std::process::exit(exit::BUDGET)
        }
        "exit-stdin" => {
            ready(mode);
            let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
            eprintln!("test_worker: stdin closed, the server is gone; exiting");
            std::process::exit(exit::INTERRUPTED_TERM)
        }
        other if other.starts_with("answer ") => {
            let n: usize = other["answer ".len()..]
                .parse()
                .expect("answer N: a byte count");
            let text: String = ("a".repeat(99) + "\n").chars().cycle().take(n).collect();
            emit(&Event::Result {
                text,
                stop_reason: "end_turn".into(),
                turns: 1,
                result_json: None,
            });
        }
        other => {
            eprintln!("test_worker: unknown mode `{other}`");
            std::process::exit(exit::BAD_SPEC)
        }
    }
}

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", event.to_json_line()).expect("write an event");
    out.flush().expect("flush stdout");
}

fn ready(mode: &str) {
    emit(&Event::Text {
        text: format!("ready: {mode}\n"),
    });
}

fn ok() {
    for i in 1..=OK_LINES {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        emit(&Event::Text {
            text: format!("ok line {i:04} {parity}\n"),
        });
    }
    emit(&Event::Usage(UsageReport {
        input_tokens: 120,
        output_tokens: 34,
        cost_usd: Some(0.0005),
        ..Default::default()
    }));
    emit(&Event::Result {
        text: "all done".into(),
        stop_reason: "end_turn".into(),
        turns: 1,
        result_json: None,
    });
}

/// Touches every page so the memory is really used, and keeps all of it; the allocator
/// fails under RLIMIT_AS and Rust aborts with "memory allocation of N bytes failed".
fn alloc() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::<u8>::with_capacity(1024 * 1024);
        block.resize(1024 * 1024, 1);
        kept.push(block);
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
