//! The agent loop: turns with the model until it ends its turn or a budget runs out,
//! running the read-only tools it asks for, retrying failed turns, and reporting every
//! step as an `Event`.
//!
//! Not here: signals and stdin (the binary), HTTP details (`provider`).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{ErrorKind, Event, STOP_MAX_TOKENS, TaskSpec, UsageReport, exit};
use crate::provider::{
    Block, Client, Message, ProviderError, Role, TokenUsage, ToolDef, TurnOutput, TurnRequest,
    throttled,
};
use crate::tools;

mod answer;
use answer::{Judged, Wanted};

/// Where events go: stdout as JSONL, a terminal, a test.
pub trait Emit {
    fn emit(&self, event: &Event);

    /// `Event::Text` with `text`: a delta as it streams, the most frequent event. A
    /// printer that can write it without a copy of `text` says so here.
    fn emit_text(&self, text: &str) {
        self.emit(&Event::Text {
            text: text.to_string(),
        });
    }
}

/// A follow-up from the server (an `Input::FollowUp` line on stdin): its text, and its
/// id, echoed in the `message` event that takes it in.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub id: Option<u64>,
    pub message: String,
}

/// Follow-ups that arrive while the agent runs, taken at each turn boundary.
#[derive(Default)]
pub struct Inbox(Option<tokio::sync::mpsc::UnboundedReceiver<FollowUp>>);

impl Inbox {
    pub fn new(rx: tokio::sync::mpsc::UnboundedReceiver<FollowUp>) -> Inbox {
        Inbox(Some(rx))
    }

    /// Every follow-up waiting now, oldest first.
    fn take_all(&mut self) -> Vec<FollowUp> {
        let mut got = Vec::new();
        if let Some(rx) = self.0.as_mut() {
            while let Ok(m) = rx.try_recv() {
                got.push(m);
            }
        }
        got
    }
}

/// `follow_ups` as text blocks, and the ids the `message` that takes them in echoes.
fn texts(follow_ups: Vec<FollowUp>) -> (Vec<Block>, Vec<u64>) {
    let ids = follow_ups.iter().filter_map(|f| f.id).collect();
    let blocks = follow_ups
        .into_iter()
        .map(|f| Block::Text { text: f.message })
        .collect();
    (blocks, ids)
}

/// Longest wait between retries, whatever the backoff or `retry-after` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Runs the task to its end and returns the process exit code. Exactly one final event
/// (`result` or `error`) is emitted.
pub async fn run(spec: &TaskSpec, client: &Client, out: &dyn Emit, inbox: &mut Inbox) -> i32 {
    let mut run = match Run::start(spec, client, out) {
        Ok(run) => run,
        Err(code) => return code,
    };
    for turn in 1..=spec.limits.max_turns {
        if let ControlFlow::Break(code) = run.turn(turn, inbox).await {
            return code;
        }
    }
    fail(
        out,
        ErrorKind::BudgetExceeded,
        format!(
            "max_turns ({}) reached while the model still wanted tools; spawn again with a larger limits.max_turns or a narrower task",
            spec.limits.max_turns
        ),
    )
}

/// One run across its turns: what every turn sends, and what the turns so far spent.
struct Run<'a> {
    spec: &'a TaskSpec,
    client: &'a Client,
    out: &'a dyn Emit,
    /// The workspace, canonical: the sandbox compares canonical paths.
    root: Arc<PathBuf>,
    /// When the server stops the agent (timeout_seconds): no command runs past it.
    deadline: Instant,
    tool_defs: Vec<ToolDef>,
    /// The answer's schema, when the spec has one.
    wanted: Option<Wanted>,
    /// The conversation so far, as sent with the next turn.
    messages: Vec<Message>,
    /// Tokens of every turn so far.
    total: TokenUsage,
    /// Whether some turn's usage was estimated (the provider reported none).
    estimated: bool,
    /// Stable for the whole conversation, so every turn lands on the same cache.
    cache_key: String,
}

/// A turn's tool calls: (id, name, input).
type Calls = Vec<(String, String, serde_json::Value)>;

impl<'a> Run<'a> {
    /// Checks the workspace and the schema, tells `started` and the task: the run before
    /// its first turn. Err(exit code) after the `error` event.
    fn start(spec: &'a TaskSpec, client: &'a Client, out: &'a dyn Emit) -> Result<Self, i32> {
        // A spec written by hand may name its cwd relatively or through a symlink.
        let root = match std::fs::canonicalize(&spec.cwd) {
            Ok(p) if p.is_dir() => Arc::new(p),
            Ok(_) => {
                return Err(fail(
                    out,
                    ErrorKind::Config,
                    bad_cwd(spec, "not a directory"),
                ));
            }
            Err(e) => return Err(fail(out, ErrorKind::Config, bad_cwd(spec, &e.to_string()))),
        };
        out.emit(&Event::Started {
            model: spec.model.clone(),
            provider: spec.provider.name.clone(),
            role: spec.role.clone(),
            limits: spec.limits,
            sandbox: crate::sandbox::in_force(),
            cwd: Some(root.as_ref().clone()),
        });
        let wanted = match spec.output_schema.as_ref().map(Wanted::new).transpose() {
            Ok(w) => w,
            Err(e) => return Err(fail(out, ErrorKind::Config, e.to_string())),
        };
        let cache_key = format!(
            "bg-agents-{}",
            spec.agent_id.clone().unwrap_or_else(|| format!(
                "run-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ))
        );
        let mut run = Run {
            spec,
            client,
            out,
            root,
            deadline: Instant::now() + Duration::from_secs(spec.limits.timeout_seconds),
            tool_defs: tools::definitions(&spec.tools),
            wanted,
            messages: spec.history.clone(),
            total: TokenUsage::default(),
            estimated: false,
            cache_key,
        };
        run.push(Message {
            role: Role::User,
            content: vec![Block::Text {
                text: spec.task.clone(),
            }],
        });
        Ok(run)
    }

    /// Turn number `turn`: asks the model, then ends the run with its answer, or runs the
    /// tools it called and goes on (Continue). Break(exit code) once the run ended.
    async fn turn(&mut self, turn: u32, inbox: &mut Inbox) -> ControlFlow<i32> {
        let (output, max_tokens) = self.ask().await?;
        let over_budget = self.count(&output);
        let TurnOutput {
            mut content,
            stop_reason,
            ..
        } = output;
        // A call cut at the token limit has unfinished arguments: it is never run, and
        // never retried (the same limit would cut it again).
        let cut_calls = if stop_reason == STOP_MAX_TOKENS {
            drop_tool_calls(&mut content)
        } else {
            Vec::new()
        };
        let calls = tool_calls(&content);
        let text = answer_text(&content);
        self.push(Message {
            role: Role::Assistant,
            content,
        });
        let last_turn = turn == self.spec.limits.max_turns;
        let can_go_on = !last_turn && over_budget.is_none();
        if let Some(w) = self.wanted.as_mut()
            && let Some((id, _, input)) = w.final_call(&calls)
        {
            // Readable like a text answer: the output ends with it.
            self.out.emit(&Event::Text {
                text: format!("{input}\n"),
            });
            let judged = w.judge_call(id, input, &calls, can_go_on);
            return self.end_structured(judged, stop_reason, turn);
        }
        if calls.is_empty() {
            // A follow-up that came during this response is answered before the end.
            // Taken only when it can be answered: otherwise it stays undelivered, and
            // the server says so.
            if can_go_on && self.take_follow_ups(inbox) {
                return ControlFlow::Continue(());
            }
            let answer = Answer {
                text,
                stop_reason,
                turn,
                max_tokens,
                cut_calls,
            };
            return self.end(answer, can_go_on);
        }
        // A finished answer is delivered even if its turn went over budget (it is paid
        // for); the budget stops the run before it spends on another turn.
        if let Some(message) = over_budget {
            return ControlFlow::Break(fail(self.out, ErrorKind::BudgetExceeded, message));
        }
        if last_turn {
            return ControlFlow::Continue(());
        }
        let results = self.run_tools(calls).await;
        self.push_results(results, inbox);
        ControlFlow::Continue(())
    }

    /// Sends the conversation for one turn, retried as the provider allows; the output
    /// with the `max_tokens` it was asked under. Break(exit code) when the budgets cannot
    /// pay for a turn or the provider failed for good.
    async fn ask(&mut self) -> ControlFlow<i32, (TurnOutput, u32)> {
        let spec = self.spec;
        let max_tokens = match output_allowance(spec, self.total) {
            Ok(n) => n,
            Err(message) => {
                return ControlFlow::Break(fail(self.out, ErrorKind::BudgetExceeded, message));
            }
        };
        loop {
            let req = TurnRequest {
                cache_key: Some(&self.cache_key),
                model: &spec.model,
                system: &spec.system_prompt,
                messages: &self.messages,
                tools: &self.tool_defs,
                max_tokens,
                output_schema: self.wanted.as_ref().map(Wanted::delivery),
            };
            let message =
                match turn_with_retries(self.client, &req, spec.provider.max_retries, self.out)
                    .await
                {
                    Ok(output) => return ControlFlow::Continue((output, max_tokens)),
                    Err(message) => message,
                };
            // A provider that refuses its structured-output parameter gets the same
            // request with the final tool instead.
            let Some(note) = self
                .wanted
                .as_mut()
                .and_then(|w| w.fall_back(spec.provider.kind, &message))
            else {
                return ControlFlow::Break(fail(self.out, ErrorKind::Provider, message));
            };
            self.out.emit(&Event::Text { text: note });
        }
    }

    /// Adds a turn's tokens to the run's and tells the totals (a `usage` event); why the
    /// run is over budget now, if it is.
    fn count(&mut self, output: &TurnOutput) -> Option<String> {
        self.total.add(&output.usage);
        self.estimated |= output.usage_estimated;
        let cost = self.spec.price.map(|p| p.cost_of(&self.total));
        self.out.emit(&Event::Usage(UsageReport::of(
            self.total,
            cost,
            self.estimated,
        )));
        budget_exceeded(self.spec, self.total, cost)
    }

    /// Ends the run with a response that called no tool: its text is the answer (not
    /// when empty), or, with a schema, the answer judged (asked again when it can be).
    fn end(&mut self, answer: Answer, can_correct: bool) -> ControlFlow<i32> {
        let Answer {
            text,
            stop_reason,
            turn,
            max_tokens,
            cut_calls,
        } = answer;
        let Some(w) = self.wanted.as_mut() else {
            if text.trim().is_empty() {
                let kind = if stop_reason == STOP_MAX_TOKENS {
                    ErrorKind::BudgetExceeded
                } else {
                    ErrorKind::Provider
                };
                let message = no_answer(&stop_reason, &cut_calls, max_tokens, turn);
                return ControlFlow::Break(fail(self.out, kind, message));
            }
            return ControlFlow::Break(finish(self.out, text, stop_reason, turn, None));
        };
        let judged = w.judge_text(&text, can_correct);
        self.end_structured(judged, stop_reason, turn)
    }

    /// Acts on a judged structured answer: delivers it (Break), sends it back for another
    /// try (the reply joins the conversation; Continue), or ends with `schema_mismatch`.
    fn end_structured(
        &mut self,
        judged: Judged,
        stop_reason: String,
        turn: u32,
    ) -> ControlFlow<i32> {
        match judged {
            Judged::Answer { text, value } => {
                ControlFlow::Break(finish(self.out, text, stop_reason, turn, Some(value)))
            }
            Judged::AskAgain { note, reply } => {
                self.out.emit(&Event::Text { text: note });
                self.push(Message {
                    role: Role::User,
                    content: reply,
                });
                ControlFlow::Continue(())
            }
            Judged::Mismatch(message) => {
                ControlFlow::Break(fail(self.out, ErrorKind::SchemaMismatch, message))
            }
        }
    }

    /// Runs the calls in order, each told as a `tool_call` and a `tool_result`; their
    /// results, for the next message.
    async fn run_tools(&self, calls: Calls) -> Vec<Block> {
        let mut results = Vec::with_capacity(calls.len());
        for (id, name, input) in calls {
            self.out.emit(&Event::ToolCall {
                id: id.clone(),
                name: name.clone(),
                input: input.clone(),
            });
            let result = run_tool(
                self.spec,
                Arc::clone(&self.root),
                name.clone(),
                input,
                self.deadline,
            )
            .await;
            self.out.emit(&Event::ToolResult {
                id: id.clone(),
                name,
                bytes: result.content.len() as u64,
                is_error: result.is_error,
            });
            results.push(Block::ToolResult {
                tool_use_id: id,
                content: result.content,
                is_error: result.is_error,
            });
        }
        results
    }

    /// Follow-up intake at the end of an answer: every follow-up waiting now joins the
    /// conversation as the next user message. Whether any did.
    fn take_follow_ups(&mut self, inbox: &mut Inbox) -> bool {
        let pending = inbox.take_all();
        if pending.is_empty() {
            return false;
        }
        let (content, ids) = texts(pending);
        self.push_taking(
            Message {
                role: Role::User,
                content,
            },
            ids,
        );
        true
    }

    /// Follow-up intake at a turn boundary: the tool `results`, then every follow-up
    /// waiting now, join the conversation as the next user message.
    fn push_results(&mut self, mut results: Vec<Block>, inbox: &mut Inbox) {
        let (follow_ups, ids) = texts(inbox.take_all());
        results.extend(follow_ups);
        self.push_taking(
            Message {
                role: Role::User,
                content: results,
            },
            ids,
        );
    }

    /// Adds a message to the conversation and tells it (see [`push_message`]).
    fn push(&mut self, message: Message) {
        push_message(&mut self.messages, message, self.out);
    }

    /// `push` of a message that takes in the follow-ups `ids`.
    fn push_taking(&mut self, message: Message, ids: Vec<u64>) {
        push_taking(&mut self.messages, message, ids, self.out);
    }
}

/// A response that called no tool, to end the run with.
struct Answer {
    text: String,
    stop_reason: String,
    turn: u32,
    /// The `max_tokens` the turn was asked under.
    max_tokens: u32,
    /// The calls cut at the token limit (dropped, never run), by name.
    cut_calls: Vec<String>,
}

/// The tool calls of a turn's content, in order.
fn tool_calls(content: &[Block]) -> Calls {
    content
        .iter()
        .filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some((id.clone(), name.clone(), input.clone())),
            _ => None,
        })
        .collect()
}

/// The text of a turn's content: its text blocks joined.
fn answer_text(content: &[Block]) -> String {
    content
        .iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Removes the tool calls from a turn's content; their names, in order.
fn drop_tool_calls(content: &mut Vec<Block>) -> Vec<String> {
    let mut names = Vec::new();
    content.retain(|b| match b {
        Block::ToolUse { name, .. } => {
            names.push(name.clone());
            false
        }
        _ => true,
    });
    names
}

/// The error for a final turn with no text: an empty answer is not a result. Says whether
/// the token limit cut it (and inside which call) or the model said nothing.
fn no_answer(stop_reason: &str, cut_calls: &[String], max_tokens: u32, turn: u32) -> String {
    if stop_reason != STOP_MAX_TOKENS {
        return format!(
            "the model ended turn {turn} with no text and no tool call: an empty answer (stop_reason {stop_reason}). A local server may have constrained the output to nothing (its log says why); try again, rephrase the task, or use another model"
        );
    }
    let inside = match cut_calls {
        [] => String::new(),
        names => format!(
            ", inside its call to `{}` (not run: its arguments were unfinished)",
            names.join("`, `")
        ),
    };
    format!(
        "the model's turn {turn} was cut at the token limit (max_tokens {max_tokens} for this turn) before it wrote any answer{inside}; spawn again with a larger limits.max_tokens (a nearly spent max_total_tokens or budget_usd also lowers it)"
    )
}

/// Adds a message to the conversation and tells it (a `message` event: what a follow-up
/// resumes from). A user message after a user message (a history that ended with tool
/// results, say) joins it: the providers want the roles to alternate.
fn push_message(messages: &mut Vec<Message>, message: Message, out: &dyn Emit) {
    push_taking(messages, message, Vec::new(), out);
}

/// `push_message` of a message that takes in the follow-ups `ids`.
fn push_taking(messages: &mut Vec<Message>, message: Message, ids: Vec<u64>, out: &dyn Emit) {
    out.emit(&Event::Message {
        message: message.clone(),
        follow_ups: ids,
    });
    match messages.last_mut() {
        Some(last) if last.role == Role::User && message.role == Role::User => {
            last.content.extend(message.content);
        }
        _ => messages.push(message),
    }
}

/// Emits the answer and returns the exit code of a run done.
fn finish(
    out: &dyn Emit,
    text: String,
    stop_reason: String,
    turns: u32,
    result_json: Option<serde_json::Value>,
) -> i32 {
    out.emit(&Event::Result {
        text,
        stop_reason,
        turns,
        result_json,
    });
    exit::DONE
}

fn fail(out: &dyn Emit, kind: ErrorKind, message: String) -> i32 {
    out.emit(&Event::Error { kind, message });
    kind.exit_code()
}

fn bad_cwd(spec: &TaskSpec, reason: &str) -> String {
    format!(
        "cwd {}: {reason}; give an existing directory",
        spec.cwd.display()
    )
}

/// The `max_tokens` of the next request: the per-response limit, lowered to what the
/// remaining token and USD budgets can pay for, so a turn overshoots a budget by at most
/// its input. Err when the budgets cannot pay for a single output token.
fn output_allowance(spec: &TaskSpec, total: TokenUsage) -> Result<u32, String> {
    let limits = &spec.limits;
    let mut allowance = limits.max_tokens as u64;
    let remaining = limits.max_total_tokens.saturating_sub(total.total());
    if remaining == 0 {
        return Err(format!(
            "token budget exhausted: {} tokens used, max_total_tokens is {}",
            total.total(),
            limits.max_total_tokens
        ));
    }
    allowance = allowance.min(remaining);
    if let Some(price) = spec.price.filter(|p| p.output > 0.0) {
        let spent = price.cost_of(&total);
        let left = limits.budget_usd - spent;
        let affordable = (left * 1_000_000.0 / price.output).floor();
        if affordable < 1.0 {
            return Err(format!(
                "USD budget exhausted: ${spent:.4} spent, budget_usd is ${}; not even one more output token fits",
                limits.budget_usd
            ));
        }
        allowance = allowance.min(affordable as u64);
    }
    Ok(allowance as u32)
}

fn budget_exceeded(spec: &TaskSpec, total: TokenUsage, cost: Option<f64>) -> Option<String> {
    let tokens = total.total();
    if tokens > spec.limits.max_total_tokens {
        return Some(format!(
            "token budget exhausted: {tokens} tokens used, max_total_tokens is {}",
            spec.limits.max_total_tokens
        ));
    }
    match cost {
        Some(c) if c > spec.limits.budget_usd => Some(format!(
            "USD budget exhausted: ${c:.4} spent, budget_usd is ${}",
            spec.limits.budget_usd
        )),
        _ => None,
    }
}

/// Runs a tool off the async thread, so signals stay responsive during a long grep.
async fn run_tool(
    spec: &TaskSpec,
    root: Arc<PathBuf>,
    name: String,
    input: serde_json::Value,
    deadline: Instant,
) -> tools::ToolOutput {
    let allowed = spec.tools.clone();
    tokio::task::spawn_blocking(move || tools::execute(&allowed, &name, &input, &root, deadline))
        .await
        .unwrap_or_else(|e| tools::ToolOutput {
            content: format!("the tool failed: {e}"),
            is_error: true,
        })
}

/// One turn, retried on retryable failures with exponential backoff and jitter (or the
/// provider's `retry-after`). Err is the final message for the `error` event.
async fn turn_with_retries(
    client: &Client,
    req: &TurnRequest<'_>,
    max_retries: u32,
    out: &dyn Emit,
) -> Result<TurnOutput, String> {
    let mut attempt = 0;
    loop {
        let mut streamed = false;
        let result = client
            .turn(req, &mut |t| {
                streamed = true;
                out.emit_text(t);
            })
            .await;
        match result {
            Ok(o) => return Ok(o),
            Err(ProviderError::Fatal(m)) => return Err(m),
            Err(ProviderError::Retryable {
                reason,
                retry_after,
            }) => {
                let throttled = throttled(&reason);
                if attempt >= max_retries {
                    return Err(format!("{reason} (gave up after {attempt} retries)"));
                }
                attempt += 1;
                let wait = retry_after
                    .unwrap_or_else(|| backoff(attempt))
                    .min(MAX_RETRY_WAIT);
                out.emit(&Event::Retry {
                    attempt,
                    wait_ms: wait.as_millis() as u64,
                    reason,
                    discarded_output: streamed,
                    throttled,
                });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// 0.5 s, 1 s, 2 s, ... capped at 30 s, each ±25 % so parallel agents spread out.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    exp.min(BACKOFF_CAP).mul_f64(0.75 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..50 {
            let b1 = backoff(1);
            assert!(
                b1 >= Duration::from_millis(375) && b1 <= Duration::from_millis(625),
                "{b1:?}"
            );
            let b10 = backoff(10);
            assert!(b10 <= Duration::from_millis(37_500), "{b10:?}");
        }
    }
}
