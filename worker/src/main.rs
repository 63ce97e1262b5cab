//! bg-agent-worker: runs one agent. Started by the bg-agents server with `--spec -` (a
//! TaskSpec on stdin, JSONL events on stdout), or by hand with a task on the command line.
//!
//! `c_main` below, the C `main`, replaces the standard library's start-up wrapper: one
//! worker starts per agent, and that wrapper costs 24 system calls a start, most of them
//! to read /proc/self/maps for the main thread's stack guard (BENCHMARKS.md, "The fifth
//! pass on #24"). What of it the worker needs, `main` does itself.

// The unit tests below run under the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

use std::path::PathBuf;

use anyhow::Context;
use bg_agent_worker::agent::{self, Emit};
use bg_agent_worker::config::Config;
use bg_agent_worker::protocol::{ErrorKind, Event, TaskSpec, exit};
use bg_agent_worker::provider::Client;
use bg_agent_worker::resolve::{SpawnRequest, resolve};
use bg_agent_worker::resume::Earlier;
use bg_agent_worker::values::{LimitsOverride, TaskType, Tier, ToolName};
use bg_agent_worker::{command_sandbox, sandbox};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

// The unwinder from libgcc_eh.a, where build.rs found it links and unwinds: without it
// the standard library loads libgcc_s.so.1 into every worker for its unwinder alone.
#[cfg(static_unwinder)]
#[link(name = "gcc_eh", kind = "static")]
unsafe extern "C" {}

mod emit;
mod server_input;
use emit::{HumanOut, JsonOut};
use server_input::ServerInput;

/// Run one background agent: a model with read-only tools (read_file, glob, grep, and
/// bash for commands in a sandbox: the workspace read-only, no network) working
/// on TASK inside a directory, streaming its answer as it arrives.
///
/// Examples:
///   bg-agent-worker "Find where the config file is parsed"
///   bg-agent-worker --tier quality --cwd ../repo "Decide between the two cache designs in docs/"
///   bg-agent-worker --json --max-turns 5 "List the public API of src/lib.rs"
///   bg-agent-worker --resume run.jsonl "And where is it called from?"
///
/// The API key comes from the environment variable the provider names in the
/// configuration (ANTHROPIC_API_KEY for the default tiers; ANTHROPIC_BASE_URL overrides
/// the endpoint). Exit codes: 0 done, 1 provider error, 2 bad spec or configuration,
/// 3 budget exhausted, 4 answer never matched --output-schema, 130/143 interrupted.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// The task for the agent (omit with --spec or --check-config).
    task: Option<String>,
    /// Print the JSONL event stream instead of readable text.
    #[arg(long)]
    json: bool,
    /// Model name or alias (haiku, sonnet, opus); overrides tier and routing.
    #[arg(long)]
    model: Option<String>,
    /// Tier: fast, balanced or quality.
    #[arg(long, value_parser = parse_tier)]
    tier: Option<Tier>,
    /// Task type: exploration, analysis, reasoning or critical (routes to a tier).
    #[arg(long, value_parser = parse_task_type)]
    task_type: Option<TaskType>,
    /// Role (system prompt, tools, limits): general, explorer, analyst, reviewer,
    /// architect, or one from your config. Default: picked from the task's words.
    #[arg(long)]
    role: Option<String>,
    /// The tools the agent may use instead of its role's, comma-separated: read_file,
    /// glob, grep, bash (e.g. `--tools read_file,bash`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_tool)]
    tools: Option<Vec<ToolName>>,
    /// Workspace directory the tools may read (default: the current directory).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Configuration file overriding the built-in limits.toml (else $BG_AGENTS_CONFIG,
    /// else ~/.config/bg-agents/limits.toml if present).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Most model turns for this run.
    #[arg(long, value_name = "N")]
    max_turns: Option<u32>,
    /// Most USD this run may spend.
    #[arg(long, value_name = "USD", value_parser = parse_budget)]
    budget_usd: Option<f64>,
    /// A JSON Schema (a JSON file, at most 16 KiB) the answer must match: the answer is
    /// validated (and asked for again, twice at most, when it does not match) and printed
    /// as that JSON value alone; progress goes to stderr. Exit 4 when it never matches.
    #[arg(long, value_name = "FILE")]
    output_schema: Option<PathBuf>,
    /// Read a complete TaskSpec (JSON) from FILE, or from stdin with `-` (the server's
    /// way in: stdin then stays open, and its end means the server is gone).
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["task", "model", "tier", "task_type", "role", "tools", "cwd", "config", "max_turns", "budget_usd", "resume", "output_schema"])]
    spec: Option<String>,
    /// Continue a finished run with TASK as the follow-up: TRANSCRIPT is its event stream
    /// (a server transcript, or what `--json` printed), which gives the conversation, the
    /// model, role and workspace (--model, --role and --cwd override them).
    #[arg(long, value_name = "TRANSCRIPT", conflicts_with_all = ["tier", "task_type"])]
    resume: Option<PathBuf>,
    /// Validate the configuration, print the effective one, and exit.
    #[arg(long)]
    check_config: bool,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::parse(s).ok_or_else(|| format!("unknown tier `{s}`; use fast, balanced or quality"))
}

fn parse_tool(s: &str) -> Result<ToolName, String> {
    ToolName::parse(s.trim())
        .ok_or_else(|| format!("unknown tool `{s}`; use read_file, glob, grep or bash"))
}

fn parse_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a budget; give a number of US dollars, 0 or more (e.g. 0.5)"
        )),
    }
}

fn parse_task_type(s: &str) -> Result<TaskType, String> {
    TaskType::parse(s).ok_or_else(|| {
        format!("unknown task type `{s}`; use exploration, analysis, reasoning or critical")
    })
}

/// The process's entry, called by the C runtime, in place of the standard library's
/// (which first finds the main thread's stack in /proc/self/maps and installs a
/// stack-overflow handler on an alternate signal stack, then calls a Rust `main`). It
/// keeps what of that the worker relies on: SIGPIPE ignored, so a write to a server that
/// is gone fails and the worker ends as `end_process` says, and the standard descriptors
/// open. A panic ends it with 101, as the wrapper does; a stack overflow is a SIGSEGV
/// without the wrapper's message. Arguments come from `std::env` (glibc hands them to the
/// standard library at load).
#[cfg_attr(not(test), unsafe(export_name = "main"))]
#[cfg_attr(test, allow(dead_code, reason = "the test harness has its own main"))]
extern "C" fn c_main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    ignore_sigpipe();
    if !standard_fds_open() {
        return exit::PROVIDER;
    }
    match std::panic::catch_unwind(run_process) {
        Ok(never) => match never {},
        Err(_) => end_process(PANICKED),
    }
}

/// The exit code of a Rust program whose `main` panicked.
const PANICKED: i32 = 101;

/// As the standard library does before `main`: a write to a closed pipe then fails with
/// EPIPE instead of killing the process (programs it starts get SIGPIPE back, as std's
/// `Command` resets it in the child).
fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN runs no code of ours in a signal handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// As the standard library does before `main`: a standard descriptor the worker was
/// started without is opened on /dev/null, so no file or socket opened later becomes
/// stdout. False when that fails.
fn standard_fds_open() -> bool {
    let mut fds = [0, 1, 2].map(|fd| nix::libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes only the three entries of `fds`.
    let polled = unsafe { nix::libc::poll(fds.as_mut_ptr(), 3, 0) };
    if polled < 0 {
        // Where poll cannot tell (std falls back to fcntl the same way).
        // SAFETY: F_GETFD only reads the descriptor's flags.
        for f in &mut fds {
            if unsafe { nix::libc::fcntl(f.fd, nix::libc::F_GETFD) } < 0 {
                f.revents = nix::libc::POLLNVAL;
            }
        }
    }
    fds.iter()
        .filter(|f| f.revents & nix::libc::POLLNVAL != 0)
        .all(|_| {
            // Opened in order, so each takes the lowest free descriptor: the closed one.
            // SAFETY: a constant path; the descriptor is kept for the process's life.
            let fd = unsafe { nix::libc::open(c"/dev/null".as_ptr(), nix::libc::O_RDWR) };
            fd >= 0
        })
}

/// The run, from the command line to the end of the process. It ends the process
/// itself, with its runtime still alive: dropping the runtime would wait for the tools'
/// threads, and a command's may never end.
fn run_process() -> std::convert::Infallible {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bg-agent-worker: cannot start the runtime: {e}");
            end_process(exit::PROVIDER)
        }
    };
    // The provider key may be in this process's environment (a manual run, or the
    // server's hand-over): not dumpable, so no other process of the user reads it from
    // /proc/PID/environ or mem (commands cannot read /proc at all).
    // SAFETY: prctl(PR_SET_DUMPABLE) changes only this process's flag.
    unsafe { nix::libc::prctl(nix::libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let code = runtime.block_on(run(cli));
    end_process(code)
}

/// Ends the process: the running command's group is killed and the scratch directory
/// removed first. Spawned tool threads may still be running; do not wait for them.
fn end_process(code: i32) -> ! {
    command_sandbox::end();
    std::process::exit(code)
}

/// Prepares the sandbox of commands when the spec offers `bash`, or takes `bash` out of
/// the spec and says why. The phrase goes into the `started` event's sandbox.
fn prepare_commands(spec: &mut TaskSpec) -> sandbox::CommandsState {
    if !spec.tools.contains(&ToolName::Bash) {
        return sandbox::CommandsState::NotOffered;
    }
    let workspace = std::fs::canonicalize(&spec.cwd).unwrap_or_else(|_| spec.cwd.clone());
    match command_sandbox::prepare(&workspace, spec.sandbox) {
        Ok(commands) => sandbox::CommandsState::Ready(commands),
        Err(why) => {
            spec.tools.retain(|t| *t != ToolName::Bash);
            eprintln!("warning: the bash tool is not offered: {why}");
            sandbox::CommandsState::Unavailable(why)
        }
    }
}

/// `--check-config`: validates the configuration and prints the effective one, with the
/// endpoints in force; the exit code says whether it is usable.
fn check_config(cli: &Cli) -> i32 {
    match Config::load(cli.config.as_deref()) {
        Ok(loaded) => {
            let (endpoints, bad) = loaded.config.endpoints_in_force(|v| std::env::var(v).ok());
            println!("# effective configuration (from {})", loaded.source);
            print!("{endpoints}");
            print!("{}", loaded.config.to_toml());
            for e in &bad {
                eprintln!("bg-agent-worker: {e}");
            }
            if bad.is_empty() {
                exit::DONE
            } else {
                exit::BAD_SPEC
            }
        }
        Err(e) => {
            eprintln!("bg-agent-worker: {e}");
            exit::BAD_SPEC
        }
    }
}

async fn run(cli: Cli) -> i32 {
    if cli.check_config {
        return check_config(&cli);
    }
    // First, so a SIGTERM during startup still ends with `interrupted` and 143.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("bg-agent-worker: cannot install signal handlers");
        return exit::PROVIDER;
    };
    // `--spec -`: the server is on the other end of stdin, and follow-ups come that way.
    let mut from_server = None;
    let spec = if cli.spec.as_deref() == Some("-") {
        server_input::read_spec().map(|(spec, input)| {
            from_server = Some(input);
            spec
        })
    } else {
        load_spec(&cli)
    };
    let out: Box<dyn Emit> = if cli.json || cli.spec.is_some() {
        Box::new(JsonOut::default())
    } else {
        Box::new(HumanOut::new(
            spec.as_ref().is_ok_and(|s| s.output_schema.is_some()),
        ))
    };
    let prepared = spec.map_err(|e| format!("{e:#}")).and_then(prepare);
    let (spec, client) = match prepared {
        Ok(ready) => ready,
        Err(message) => {
            out.emit(&Event::Error {
                kind: ErrorKind::Config,
                message,
            });
            return exit::BAD_SPEC;
        }
    };
    let interrupted = |what: &str, code: i32| {
        out.emit(&Event::Error {
            kind: ErrorKind::Interrupted,
            message: what.to_string(),
        });
        code
    };
    let (mut inbox, stdin_closed) = inputs(from_server);
    // The reasons to stop wait in a task of their own: the agent's future is woken for
    // every chunk of the stream, and a `select!` over all four would poll the two signal
    // streams (a lock each) and the end of stdin on every wake.
    let mut stop = tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => Stop::Term,
            _ = int.recv() => Stop::Int,
            () = stdin_closed => Stop::ServerGone,
        }
    });
    tokio::select! {
        biased;
        code = agent::run(&spec, &client, out.as_ref(), &mut inbox) => code,
        Ok(stop) = &mut stop => match stop {
            Stop::Term => interrupted("received SIGTERM", exit::INTERRUPTED_TERM),
            Stop::Int => interrupted("received SIGINT", exit::INTERRUPTED_INT),
            Stop::ServerGone => {
                eprintln!("bg-agent-worker: stdin closed, the server is gone; exiting");
                exit::INTERRUPTED_TERM
            }
        },
    }
}

/// Why a run stops before its agent ends.
enum Stop {
    Term,
    Int,
    /// Stdin from the server ended.
    ServerGone,
}

/// What the run needs before its first turn and may fail for the spec's sake: the
/// provider's client, the sandbox of commands, and this process confined. Err is the
/// message of the `config` error.
fn prepare(mut spec: TaskSpec) -> Result<(TaskSpec, Client), String> {
    let client =
        Client::new(&spec.provider, |v| std::env::var(v).ok()).map_err(|e| e.to_string())?;
    // Commands get a sandbox of their own, prepared before the worker confines itself
    // (its ruleset must leave commands the rights theirs grant). Where the kernel cannot
    // confine them, `bash` is not offered, and `started` says why.
    let commands = prepare_commands(&mut spec);
    // Before the agent loop and while this is the only thread: Landlock confines the
    // calling thread and the threads it starts later (the tools' blocking pool).
    sandbox::confine(&spec, client.base_url(), &commands).map_err(|e| e.to_string())?;
    Ok((spec, client))
}

/// The follow-ups, and a future that resolves when stdin ends (the server is gone), when
/// the server is on the other end of stdin; else an empty inbox and an end that never
/// comes.
fn inputs(
    from_server: Option<ServerInput>,
) -> (agent::Inbox, impl Future<Output = ()> + Send + 'static) {
    let (inbox, closed) = match from_server {
        Some(input) => {
            let (inbox, closed) = input.listen();
            (inbox, Some(closed))
        }
        None => (agent::Inbox::default(), None),
    };
    let closed = async {
        match closed {
            Some(closed) => {
                let _ = closed.await;
            }
            None => std::future::pending().await,
        }
    };
    (inbox, closed)
}

/// The spec: from `--spec FILE`, else from the options (`from_options`); `--spec -` is
/// `server_input::read_spec`.
fn load_spec(cli: &Cli) -> anyhow::Result<TaskSpec> {
    match cli.spec.as_deref() {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the TaskSpec file {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("{path} is not a valid TaskSpec"))
        }
        None => from_options(cli),
    }
}

/// The spec of a manual run: resolved from the options and the configuration, exactly
/// as the server resolves a spawn; with `--resume`, continuing the transcript's run.
fn from_options(cli: &Cli) -> anyhow::Result<TaskSpec> {
    let Some(task) = cli.task.clone() else {
        anyhow::bail!("no task given; run `bg-agent-worker \"TASK\"` (see --help)");
    };
    let mut loaded = Config::load(cli.config.as_deref())?;
    // Whichever role the task gets, it gets these tools (and the budget check
    // below prices their definitions).
    if let Some(tools) = &cli.tools {
        for role in loaded.config.roles.values_mut() {
            role.tools = tools.clone();
        }
    }
    let earlier = cli.resume.as_deref().map(Earlier::read).transpose()?;
    let req = SpawnRequest {
        task,
        role: cli
            .role
            .clone()
            .or(earlier.as_ref().map(|e| e.role.clone())),
        task_type: cli.task_type,
        tier: cli.tier,
        model: cli
            .model
            .clone()
            .or(earlier.as_ref().map(|e| e.model.clone())),
        cwd: cli
            .cwd
            .clone()
            .or(earlier.as_ref().and_then(|e| e.cwd.clone())),
        limits: LimitsOverride {
            max_turns: cli.max_turns,
            budget_usd: cli.budget_usd,
            ..Default::default()
        },
        agent_id: None,
        output_schema: cli.output_schema.as_deref().map(read_schema).transpose()?,
    };
    let mut resolution = resolve(&loaded.config, &req)?;
    for warning in &resolution.warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(earlier) = earlier {
        resolution.spec.history = earlier.messages;
    }
    Ok(resolution.spec)
}

/// The JSON of `--output-schema FILE` (checked as a schema when the spec is resolved).
fn read_schema(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the --output-schema file {shown}"))?;
    serde_json::from_str(&text).with_context(|| {
        format!("--output-schema {shown} is not JSON; give a JSON Schema written as JSON")
    })
}
