//! bg-agents: the MCP server (stdio) that runs background agents as supervised worker
//! processes. Logs go to stderr; stdout carries the protocol alone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bg_agent_worker::config::{Config, ConfigError, Loaded};
use bg_agents::mcp::BgAgents;
use bg_agents::mcp::transport::LineTransport;
use bg_agents::notices::{self, NoticeBoard};
use bg_agents::supervisor::Manager;
use bg_agents::supervisor::manager::transcript_base;
use bg_agents::supervisor::output::prune_transcripts;
use clap::Parser;
use rmcp::ServiceExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// MCP server (stdio) that runs lightweight background agents: each agent is a separate
/// bg-agent-worker process with kernel CPU/memory limits, token and USD budgets, and
/// read-only tools, calling the provider API directly.
///
/// Register with Claude Code:  claude mcp add bg-agents --scope user -- bg-agents
/// (or install the plugin: see README.md). Logs go to stderr (level from RUST_LOG,
/// default warn). A configuration that does not load does not stop the server: it
/// starts, and every tool call answers the error, naming the key.
///
/// `bg-agents hook post-tool-use|user-prompt-submit|stop` is the plugin's Claude Code
/// hook: it reads the hook's JSON on stdin and prints this session's notices of ended
/// agents.
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// Configuration file overriding the built-in limits.toml key by key (else
    /// $BG_AGENTS_CONFIG, else ~/.config/bg-agents/limits.toml if present).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective one, and exit (2 on error).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // The hook runs after every tool call: answer before parsing anything else.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("hook") {
        return notices::hook::main(args.next().as_deref());
    }
    let cli = Cli::parse();
    let loaded = Config::load(cli.config.as_deref());
    if cli.check_config {
        return check_config(loaded);
    }
    init_logging();
    // A bad configuration must not leave a server that never answers (clients report
    // only "connection closed"): serve, and answer every tool call with the error.
    let (config, config_error) = match loaded {
        Ok(l) => (l.config, None),
        Err(e) => {
            let message = broken_config_message(&e);
            tracing::error!("{message}");
            match Config::builtin() {
                Ok(c) => (c, Some(message)),
                Err(b) => {
                    eprintln!("bg-agents: {e}; and the built-in configuration: {b}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    // One thread runs every task: the server is I/O-bound. Workers are cloned on a
    // spawner thread of their own (`supervisor::process::Spawner`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bg-agents: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Each running agent holds about five descriptors; a desktop's soft limit is often
    // 1,024 while the hard one is far higher.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "raised the soft RLIMIT_NOFILE"),
        Err(e) => tracing::warn!("cannot raise the soft RLIMIT_NOFILE: {e}"),
    }
    let code = match runtime.block_on(serve(config, config_error)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    // The stdin reader may sit in a blocking read; every worker is already gone.
    std::process::exit(code)
}

/// `--check-config`: the effective configuration and the provider endpoints in force
/// (with where each came from: the file or an environment variable); exit 2 on an error.
fn check_config(loaded: Result<Loaded, ConfigError>) -> ExitCode {
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bg-agents: {e}");
            return ExitCode::from(2);
        }
    };
    let (endpoints, bad) = loaded.config.endpoints_in_force(|v| std::env::var(v).ok());
    println!("# effective configuration (from {})", loaded.source);
    print!("{endpoints}");
    let server = &loaded.config.server;
    let kept = match server.transcript_retention_days {
        0 => "kept until you remove them".to_string(),
        days => format!("removed {days} days after they were last written"),
    };
    println!(
        "# transcripts: {}/session-*/AGENT_ID.jsonl ({kept})",
        transcript_base(&server.transcript_dir).display()
    );
    print!("{}", loaded.config.to_toml());
    if bad.is_empty() {
        return ExitCode::SUCCESS;
    }
    for e in bad {
        eprintln!("bg-agents: {e}");
    }
    ExitCode::from(2)
}

/// What every tool call answers while the configuration is broken: the error (it names
/// the file and the key) and what to do.
fn broken_config_message(e: &ConfigError) -> String {
    format!(
        "bg-agents cannot run agents: its configuration is invalid: {e}. Fix that key (or \
         remove the file), check with `bg-agents --check-config`, then restart the bg-agents \
         MCP server (in Claude Code: /mcp, or a new session). Nothing was started."
    )
}

/// Logs go to stderr. Default: warnings and errors only (RUST_LOG overrides). rmcp logs
/// every client's parameters at INFO; that stays off unless RUST_LOG names rmcp.
fn init_logging() {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() && v.contains("rmcp") => v,
        Ok(v) if !v.trim().is_empty() => format!("{v},rmcp=warn"),
        _ => "warn".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
}

async fn serve(config: Config, config_error: Option<String>) -> anyhow::Result<()> {
    let missing_key = config_error
        .is_none()
        .then(|| config.default_tier_missing_key(|v| std::env::var_os(v)))
        .flatten();
    if let Some((provider, var)) = missing_key {
        tracing::warn!(
            "{var} is not set: agent_spawn on the default tier (provider `{provider}`) will fail until the server gets it (e.g. `claude mcp add bg-agents --scope user --env {var}=YOUR_KEY -- bg-agents`)"
        );
    }
    if config_error.is_none() {
        // Spawns on such a provider are refused naming the variable; say it at start too.
        for e in config.endpoints_in_force(|v| std::env::var(v).ok()).1 {
            tracing::warn!("{e}");
        }
    }
    let manager = Arc::new(Manager::new(Arc::new(config)).context("cannot start the supervisor")?);
    tracing::info!(transcripts = %manager.transcript_dir().display(), "bg-agents serving MCP on stdio");
    if config_error.is_none() {
        prune_old_transcripts(&manager);
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let board = open_notice_board();
    let stdin_closed = CancellationToken::new();
    let transport = LineTransport::stdio(stdin_closed.clone());
    let mut publisher = None;
    let mut server = BgAgents::new(Arc::clone(&manager));
    if let Some(message) = config_error {
        server = server.with_config_error(message);
    }
    if let Some(board) = &board {
        server = server.with_notices(Arc::clone(board));
    }
    let session = async {
        let service = server.clone().serve(transport).await?;
        if let Some(board) = &board {
            publisher = Some(tokio::spawn(bg_agents::mcp::notify::run(
                Arc::clone(&manager),
                Arc::clone(board),
                Some(service.peer().clone()),
            )));
        }
        service.waiting().await?;
        anyhow::Ok(())
    };
    let why = tokio::select! {
        r = session => match r {
            Ok(()) => "session ended".to_string(),
            Err(e) => format!("session failed: {e:#}"),
        },
        // rmcp waits up to 5 s for in-flight calls after EOF; a blocking wait would hold
        // the agents running that long, so shut down as soon as stdin ends.
        _ = stdin_closed.cancelled() => "session ended (stdin closed)".to_string(),
        _ = term.recv() => "SIGTERM".to_string(),
        _ = int.recv() => "SIGINT".to_string(),
        _ = hup.recv() => "SIGHUP".to_string(),
    };
    let report = server.shutdown().await;
    if let Some(p) = publisher {
        p.abort();
    }
    // Notices die with the server: the agent records they point to are gone.
    if let Some(board) = &board {
        board.remove();
    }
    tracing::info!(
        reason = %why,
        killed = report.killed,
        cancelled = report.cancelled,
        already_ended = report.already_ended,
        survivors = report.survivors,
        "shut down"
    );
    Ok(())
}

/// Applies `[server] transcript_retention_days` off the runtime thread, so the first
/// request is not held while old transcripts go.
fn prune_old_transcripts(manager: &Manager) {
    let days = manager.config().server.transcript_retention_days;
    let Some(base) = manager.transcript_dir().parent().map(PathBuf::from) else {
        return;
    };
    if days == 0 {
        return;
    }
    let keep = std::time::Duration::from_secs(days.saturating_mul(86_400));
    tokio::task::spawn_blocking(move || {
        match prune_transcripts(&base, keep, std::time::SystemTime::now()) {
            Ok(p) if p.transcripts + p.sessions > 0 => tracing::info!(
                transcripts = p.transcripts,
                sessions = p.sessions,
                "removed transcripts older than {days} days from {}",
                base.display()
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "transcript retention ({days} days) not applied to {}: {e}",
                base.display()
            ),
        }
    });
}

/// This session's notice board: Claude Code's session id (`CLAUDE_CODE_SESSION_ID`) lets
/// its hooks find it; other clients get one named after this process, which only tool
/// replies read. None (with a warning) when the directory cannot be made safely.
fn open_notice_board() -> Option<Arc<NoticeBoard>> {
    let session = std::env::var(notices::SESSION_ENV)
        .ok()
        .filter(|s| notices::valid_session_id(s))
        .unwrap_or_else(|| format!("server-{}", std::process::id()));
    let base = notices::base_dir();
    match NoticeBoard::open(&base, &session) {
        Ok(board) => {
            tracing::debug!(dir = %board.dir().display(), "completion notices");
            Some(Arc::new(board))
        }
        Err(e) => {
            tracing::warn!(
                "completion notices are off (hooks and tool replies will not tell of ended agents; agent_status and agent_wait still do): cannot use {}: {e}",
                base.display()
            );
            None
        }
    }
}
