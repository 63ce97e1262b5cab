//! The tools offered to the model: the read-only workspace tools `read_file`, `glob`,
//! `grep`, and `bash` (a command in a sandbox of its own). Every file is opened beneath a
//! descriptor of the agent's cwd (`sandbox`); a refusal or any other failure is an
//! `is_error` result for the model, never the end of the run.
//!
//! Not here: what a command may do (`crate::command_sandbox`); anything that spawns
//! agents (workers never get that).

mod bash;
mod glob;
mod grep;
mod read_file;
pub mod sandbox;

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::provider::ToolDef;
use crate::values::ToolName;

/// Cap of one tool result, in bytes; longer output is cut and says so.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// What a tool call returns to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(content: String) -> Self {
        ToolOutput {
            content: cap(content),
            is_error: false,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        ToolOutput {
            content: message.into(),
            is_error: true,
        }
    }
}

fn cap(mut s: String) -> String {
    if s.len() > MAX_RESULT_BYTES {
        let mut cut = MAX_RESULT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = s.len();
        s.truncate(cut);
        s.push_str(&format!(
            "\n[output cut at {MAX_RESULT_BYTES} of {total} bytes; narrow the request]"
        ));
    }
    s
}

/// The definitions of `tools`, as offered to the model.
pub fn definitions(tools: &[ToolName]) -> Vec<ToolDef> {
    tools.iter().map(|&t| definition(t)).collect()
}

fn definition(tool: ToolName) -> ToolDef {
    match tool {
        ToolName::ReadFile => ToolDef {
            name: "read_file",
            description: "Read a text file in the workspace. Returns numbered lines (`N\\tline`). Use offset/limit to page through long files.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Path relative to the workspace root."},
                    "offset": {"type": "integer", "minimum": 0, "description": "First line to return (1-based; 0 also means the first). Default 1."},
                    "limit": {"type": "integer", "minimum": 1, "description": "Lines to return. Default 2000."}
                },
                "required": ["path"]
            }),
        },
        ToolName::Glob => ToolDef {
            name: "glob",
            description: "List files in the workspace whose relative path matches a glob (e.g. `src/**/*.rs`, `**/Cargo.toml`). Honours .gitignore. Sorted, at most 500 paths.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Glob over paths relative to the workspace root."}
                },
                "required": ["pattern"]
            }),
        },
        ToolName::Grep => ToolDef {
            name: "grep",
            description: "Search file contents in the workspace with a regular expression (Rust regex syntax). Honours .gitignore. Returns `path:line:text` lines.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Regular expression searched per line."},
                    "path_glob": {"type": "string", "description": "Only files whose relative path matches this glob, e.g. `**/*.rs`."},
                    "case_insensitive": {"type": "boolean", "description": "Default false."},
                    "max_results": {"type": "integer", "minimum": 1, "description": "Default 200, at most 2000."}
                },
                "required": ["pattern"]
            }),
        },
        ToolName::Bash => ToolDef {
            name: "bash",
            description: "Run a shell command (`bash -c`) in the workspace, e.g. `git log --oneline -20`, `git diff`, `git show HEAD`, `git blame -L 10,40 src/x.rs`, `rg -n pattern`, `ls -la`, `wc -l`. Sandboxed: the workspace is read-only, there is no network, and only $TMPDIR (= $HOME, a scratch directory of this agent) is writable. Returns the exit status, then stdout and stderr combined, cut to the first and last 15,000 bytes. Every process the command started is killed when it ends.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line, run with bash -c in the workspace root."},
                    "timeout_s": {"type": "integer", "minimum": 1, "description": "Seconds before the command is killed. Default 60; never more than what is left of the agent's time."}
                },
                "required": ["command"]
            }),
        },
    }
}

/// Runs tool `name` with `input` inside `root` (the agent's canonical cwd); a command
/// stops at `deadline` (the agent's wall clock) at the latest. Tools not in `allowed`
/// are refused.
pub fn execute(
    allowed: &[ToolName],
    name: &str,
    input: &Value,
    root: &Path,
    deadline: Instant,
) -> ToolOutput {
    let Some(tool) = ToolName::parse(name).filter(|t| allowed.contains(t)) else {
        let offered: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
        return ToolOutput::error(format!(
            "unknown tool `{name}`; the tools available are: {}",
            offered.join(", ")
        ));
    };
    if !input.is_object() {
        return ToolOutput::error(not_an_object(name, input));
    }
    let dir = match sandbox::open_root(root) {
        Ok(dir) => dir,
        Err(e) => return ToolOutput::error(e),
    };
    let result = match tool {
        ToolName::ReadFile => read_file::run(input, &dir),
        ToolName::Glob => glob::run(input, root, &dir),
        ToolName::Grep => grep::run(input, root, &dir),
        ToolName::Bash => bash::run(input, root, deadline),
    };
    match result {
        Ok(s) => ToolOutput::ok(s),
        Err(e) => ToolOutput::error(e),
    }
}

/// The error for arguments that are not a JSON object: small models write unfinished or
/// invalid JSON (the provider keeps such arguments as the model's text). Said to the model,
/// so it can call again.
fn not_an_object(name: &str, input: &Value) -> String {
    let (raw, why) = match input {
        Value::String(raw) => match serde_json::from_str::<Value>(raw) {
            Err(e) => (raw.clone(), format!("not valid JSON ({e})")),
            Ok(_) => (raw.clone(), "not a JSON object".to_string()),
        },
        other => (other.to_string(), "not a JSON object".to_string()),
    };
    let shown: String = raw.chars().take(200).collect();
    let more = if shown.len() < raw.len() { "…" } else { "" };
    format!(
        "the arguments of `{name}` are {why}: {shown}{more}; call `{name}` again with its arguments as one JSON object, as its schema says"
    )
}

/// A required string field of a tool input.
fn str_arg<'a>(input: &'a Value, key: &str) -> Result<&'a str, String> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument `{key}`"))
}

/// An optional positive integer field of a tool input.
fn uint_arg(input: &Value, key: &str) -> Result<Option<usize>, String> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .map(|n| Some(n as usize))
            .ok_or_else(|| format!("`{key}` must be a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    #[test]
    fn tools_outside_the_role_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = execute(
            &[ToolName::Grep],
            "read_file",
            &json!({"path": "x"}),
            dir.path(),
            later(),
        );
        assert!(out.is_error);
        assert!(
            out.content.contains("the tools available are: grep"),
            "{}",
            out.content
        );
    }

    #[test]
    fn read_file_with_a_huge_limit_reads_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\nthree\n").unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let input = json!({"path": "a.txt", "offset": 2, "limit": u64::MAX});
        let out = execute(&[ToolName::ReadFile], "read_file", &input, &root, later());
        assert!(!out.is_error, "{}", out.content);
        assert_eq!(out.content, "2\ttwo\n3\tthree\n");
    }

    #[test]
    fn glob_returns_the_first_500_paths_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        // Created in reverse order, so a walk in directory order does not meet them sorted.
        let mut names: Vec<String> = (0..700).map(|i| format!("f{i:04}.txt")).collect();
        for name in names.iter().rev() {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let out = execute(
            &[ToolName::Glob],
            "glob",
            &json!({"pattern": "*.txt"}),
            &root,
            later(),
        );
        assert!(!out.is_error, "{}", out.content);
        names.truncate(500);
        let listed: Vec<&str> = out.content.lines().take(500).collect();
        assert_eq!(listed, names);
        assert!(
            out.content
                .ends_with("[stopped at 500 paths; narrow the pattern]\n"),
            "{}",
            out.content
        );
    }

    #[test]
    fn read_file_refuses_a_fifo_at_once_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        nix::unistd::mkfifo(&root.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let out = execute(
            &[ToolName::ReadFile],
            "read_file",
            &json!({"path": "pipe"}),
            &root,
            later(),
        );
        assert!(out.is_error);
        assert!(out.content.contains("is a FIFO"), "{}", out.content);
    }

    #[test]
    fn long_results_are_capped_and_say_so() {
        let s = cap("x".repeat(MAX_RESULT_BYTES + 10));
        assert!(s.ends_with("narrow the request]"));
    }
}
