//! bg-agents: the MCP server that supervises background agents, one worker process each.
//!
//! `supervisor` owns processes, records, output and their lifecycle; `mcp` translates
//! the MCP protocol to the supervisor and nothing else.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "bg-agents is Linux-only: it starts agents with clone(2), ties them to the server with \
     prctl(PR_SET_PDEATHSIG), limits them with rlimits and process groups, and keeps \
     notices in $XDG_RUNTIME_DIR as Linux has them. Build and run it on Linux (on Windows, \
     inside WSL 2)."
);

pub mod episode;
pub mod mcp;
pub mod notices;
pub mod private_fs;
pub mod supervisor;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// A comment that sends the reader to a document (`README.md`, `BENCHMARKS.md`)
    /// names one that is in the repository.
    #[test]
    fn comments_cite_only_documents_in_the_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["src", "worker/src", "tests", "benches"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(files.len() > 20, "found only {} source files", files.len());
        let doc = regex::Regex::new(r"\b[A-Z][A-Z_]*\.md\b").unwrap();
        let mut missing = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let Some(comment) = line.find("//").map(|i| &line[i..]) else {
                    continue;
                };
                for m in doc.find_iter(comment) {
                    if !root.join(m.as_str()).is_file() {
                        missing.push(format!("{}:{}: {}", file.display(), n + 1, m.as_str()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "cited but not in the repository:\n{}",
            missing.join("\n")
        );
    }
}
