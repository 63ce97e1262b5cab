//! bg-agent-worker: runs one agent. Started by the bg-agents server with `--spec -` (a
//! TaskSpec on stdin, JSONL events on stdout), or by hand with a task on the command line.

use std::cell::Cell;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bg_agent_worker::agent::{self, Emit};
use bg_agent_worker::config::Config;
use bg_agent_worker::protocol::{ErrorKind, Event, Input, STOP_MAX_TOKENS, TaskSpec, exit};
use bg_agent_worker::provider::Client;
use bg_agent_worker::resolve::{SpawnRequest, resolve};
use bg_agent_worker::values::{LimitsOverride, TaskType, Tier, ToolName};
use bg_agent_worker::{command_sandbox, sandbox};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bg-agent-worker: cannot start the runtime: {e}");
            return ExitCode::from(exit::PROVIDER as u8);
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

async fn run(cli: Cli) -> i32 {
    if cli.check_config {
        return match Config::load(cli.config.as_deref()) {
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
        };
    }
    // First, so a SIGTERM during startup still ends with `interrupted` and 143.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("bg-agent-worker: cannot install signal handlers");
        return exit::PROVIDER;
    };
    let from_server = cli.spec.as_deref() == Some("-");
    let json = cli.json || cli.spec.is_some();
    let spec = load_spec(&cli);
    let out: Box<dyn Emit> = if json {
        Box::new(JsonOut)
    } else {
        Box::new(HumanOut {
            structured: spec.as_ref().is_ok_and(|s| s.output_schema.is_some()),
            ..HumanOut::default()
        })
    };
    let mut spec = match spec {
        Ok(s) => s,
        Err(e) => {
            out.emit(&Event::Error {
                kind: ErrorKind::Config,
                message: format!("{e:#}"),
            });
            return exit::BAD_SPEC;
        }
    };
    let client = match Client::new(&spec.provider, |v| std::env::var(v).ok()) {
        Ok(c) => c,
        Err(e) => {
            out.emit(&Event::Error {
                kind: ErrorKind::Config,
                message: e.to_string(),
            });
            return exit::BAD_SPEC;
        }
    };
    // Commands get a sandbox of their own, prepared before the worker confines itself
    // (its ruleset must leave commands the rights theirs grant). Where the kernel cannot
    // confine them, `bash` is not offered, and `started` says why.
    let commands = prepare_commands(&mut spec);
    // Before the agent loop and while this is the only thread: Landlock confines the
    // calling thread and the threads it starts later (the tools' blocking pool).
    if let Err(e) = sandbox::confine(&spec, client.base_url(), &commands) {
        out.emit(&Event::Error {
            kind: ErrorKind::Config,
            message: e.to_string(),
        });
        return exit::BAD_SPEC;
    }
    let interrupted = |what: &str, code: i32| {
        out.emit(&Event::Error {
            kind: ErrorKind::Interrupted,
            message: what.to_string(),
        });
        code
    };
    let (mut inbox, stdin_closed) = if from_server {
        let (inbox, closed) = read_inputs();
        (inbox, Some(closed))
    } else {
        (agent::Inbox::default(), None)
    };
    let stdin_closed = async {
        match stdin_closed {
            Some(closed) => {
                let _ = closed.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        code = agent::run(&spec, &client, out.as_ref(), &mut inbox) => code,
        _ = term.recv() => interrupted("received SIGTERM", exit::INTERRUPTED_TERM),
        _ = int.recv() => interrupted("received SIGINT", exit::INTERRUPTED_INT),
        _ = stdin_closed => {
            eprintln!("bg-agent-worker: stdin closed, the server is gone; exiting");
            exit::INTERRUPTED_TERM
        }
    }
}

/// The spec: from `--spec FILE|-`, else resolved from the options and configuration,
/// exactly as the server resolves a spawn.
fn load_spec(cli: &Cli) -> anyhow::Result<TaskSpec> {
    match cli.spec.as_deref() {
        Some("-") => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the TaskSpec from stdin")?;
            serde_json::from_str(&line).context("stdin does not hold a valid TaskSpec line")
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the TaskSpec file {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("{path} is not a valid TaskSpec"))
        }
        None => {
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
    }
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

/// What `--resume` takes from a finished run's events.
struct Earlier {
    /// `PROVIDER/MODEL`, so the same provider answers.
    model: String,
    role: String,
    cwd: Option<PathBuf>,
    messages: Vec<bg_agent_worker::protocol::Message>,
}

impl Earlier {
    fn read(path: &std::path::Path) -> anyhow::Result<Earlier> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the transcript {shown}"))?;
        let mut started = None;
        let mut messages = Vec::new();
        let mut last_end = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{shown} holds a line that is not JSON: {line:.80}"))?;
            if value["type"] == "transcript_truncated" {
                anyhow::bail!(
                    "{shown} was cut at its size cap, so the conversation is incomplete; start a new run"
                );
            }
            // Lines of other kinds (a crashed worker's `raw` output) are not events.
            let Ok(event) = serde_json::from_value::<Event>(value) else {
                continue;
            };
            match event {
                Event::Started {
                    model,
                    provider,
                    role,
                    cwd,
                    ..
                } => {
                    started.get_or_insert((format!("{provider}/{model}"), role, cwd));
                }
                Event::Message { message, .. } => messages.push(message),
                Event::Result { .. } => last_end = Some(None),
                Event::Error { message, .. } => last_end = Some(Some(message)),
                _ => {}
            }
        }
        let Some((model, role, cwd)) = started else {
            anyhow::bail!(
                "{shown} holds no `started` event: give the transcript of a run (the server's, or what `--json` printed)"
            );
        };
        match last_end {
            Some(None) => {}
            Some(Some(error)) => anyhow::bail!(
                "the run in {shown} did not finish with an answer (it ended: {error}); only a finished run continues, start a new one"
            ),
            None => anyhow::bail!(
                "the run in {shown} has not finished (no result event); wait for its answer, or start a new run"
            ),
        }
        if messages.is_empty() {
            anyhow::bail!(
                "{shown} holds no `message` events (written by an older worker?); start a new run"
            );
        }
        Ok(Earlier {
            model,
            role,
            cwd,
            messages,
        })
    }
}

/// Reads the server's lines after the spec from stdin on a thread of its own (the same
/// buffered stdin the spec line came from): follow-ups go to the inbox; the receiver
/// resolves at end of file (the server is gone). A line that is not an `Input` is said on
/// stderr and skipped.
fn read_inputs() -> (agent::Inbox, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => match serde_json::from_str::<Input>(&line) {
                    Ok(Input::FollowUp { message, id }) => {
                        let _ = tx.send(agent::FollowUp { id, message });
                    }
                    Err(e) => eprintln!("bg-agent-worker: ignored a stdin line: {e}"),
                },
            }
        }
        let _ = closed_tx.send(());
    });
    (agent::Inbox::new(rx), closed_rx)
}

/// JSONL on stdout, flushed per event so the server sees each at once.
struct JsonOut;

impl Emit for JsonOut {
    fn emit(&self, event: &Event) {
        let mut stdout = std::io::stdout().lock();
        let ok = writeln!(stdout, "{}", event.to_json_line()).and_then(|_| stdout.flush());
        if ok.is_err() {
            // Nobody is reading any more: the server is gone.
            end_process(exit::INTERRUPTED_TERM);
        }
    }
}

/// Readable output for a terminal: text as it streams, a line per tool call, a last
/// line with turns, tokens and cost.
/// With `structured` (an output schema), stdout gets the answer's JSON value alone and
/// everything else goes to stderr, so `> answer.json` holds exactly the value.
#[derive(Default)]
struct HumanOut {
    mid_line: Cell<bool>,
    usage: Cell<Option<Usage>>,
    structured: bool,
}

/// The last `usage` event's figures.
#[derive(Clone, Copy)]
struct Usage {
    input: u64,
    output: u64,
    cache_write: u64,
    cache_read: u64,
    cost: Option<f64>,
    estimated: bool,
}

impl Emit for HumanOut {
    fn emit(&self, event: &Event) {
        let mut stdout = std::io::stdout().lock();
        let at_start = !self.mid_line.get();
        if let Event::Usage {
            input_tokens,
            output_tokens,
            cache_write_tokens,
            cache_read_tokens,
            cost_usd,
            estimated,
        } = event
        {
            self.usage.set(Some(Usage {
                input: *input_tokens,
                output: *output_tokens,
                cache_write: *cache_write_tokens,
                cache_read: *cache_read_tokens,
                cost: *cost_usd,
                estimated: *estimated,
            }));
        }
        let summary = match event {
            Event::Result {
                turns, stop_reason, ..
            } => Some((*turns, stop_reason == STOP_MAX_TOKENS)),
            _ => None,
        };
        if self.structured {
            if let Event::Result {
                result_json: Some(value),
                ..
            } = event
            {
                let pretty = serde_json::to_string_pretty(value).unwrap_or_default();
                let _ = writeln!(stdout, "{pretty}").and_then(|_| stdout.flush());
            }
            if matches!(event, Event::Text { .. }) {
                return;
            }
        }
        let mut text = event.render_human(at_start).unwrap_or_default();
        if let Some((turns, cut)) = summary {
            let u = self.usage.get().unwrap_or(Usage {
                input: 0,
                output: 0,
                cache_write: 0,
                cache_read: 0,
                cost: None,
                estimated: false,
            });
            let cost = u.cost.map_or("cost unknown".into(), |c| format!("${c:.4}"));
            let mut input = format!("{} in", u.input);
            if u.cache_write + u.cache_read > 0 {
                input.push_str(&format!(
                    " + {} cache write + {} cache read",
                    u.cache_write, u.cache_read
                ));
            }
            let nl = if text.is_empty() && at_start || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            if cut {
                text.push_str(&format!(
                    "{nl}[the answer was cut at the token limit (stop reason max_tokens); raise max_tokens or budgets, or ask for less]\n"
                ));
            }
            let nl = if cut { "" } else { nl };
            text.push_str(&format!(
                "{nl}— {turns} turn{} · {input} / {} out tokens{} · {cost}\n",
                if turns == 1 { "" } else { "s" },
                u.output,
                if u.estimated { " (estimated)" } else { "" }
            ));
        }
        if text.is_empty() {
            return;
        }
        self.mid_line.set(!text.ends_with('\n'));
        // An error goes to stderr, where someone running `bg-agent-worker TASK > out.md`
        // still sees it.
        let _ = if matches!(event, Event::Error { .. }) || self.structured {
            std::io::stderr().lock().write_all(text.as_bytes())
        } else {
            stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
        };
    }
}
