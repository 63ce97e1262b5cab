//! `grep`: lines matching a regex across workspace files, honouring .gitignore.

use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use serde_json::Value;

use super::glob::walker;
use super::{sandbox, str_arg, uint_arg};

const DEFAULT_RESULTS: usize = 200;
const MAX_RESULTS: usize = 2000;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_LINE_CHARS: usize = 300;

pub(super) fn run(input: &Value, root: &Path, dir: &OwnedFd) -> Result<String, String> {
    let pattern = str_arg(input, "pattern")?;
    let case_insensitive = input
        .get("case_insensitive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max = uint_arg(input, "max_results")?
        .unwrap_or(DEFAULT_RESULTS)
        .min(MAX_RESULTS);
    let re = regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("bad regex `{pattern}`: {e}"))?;
    let filter = match input.get("path_glob").and_then(Value::as_str) {
        Some(g) => Some(
            globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("bad path_glob `{g}`: {e}"))?
                .compile_matcher(),
        ),
        None => None,
    };
    let mut out = String::new();
    let mut hits = 0;
    let mut files: Vec<_> = walker(root)
        .build()
        .flatten()
        .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
        .filter_map(|e| {
            let rel = e.path().strip_prefix(root).ok()?.to_path_buf();
            let keep = filter.as_ref().is_none_or(|m| m.is_match(&rel));
            keep.then_some(rel)
        })
        .collect();
    files.sort();
    'files: for rel in files {
        // Opened beneath the workspace descriptor: the walk found it by path, and a
        // directory swapped for a symlink since must not lead the read outside.
        let Ok((file, len)) = sandbox::open_regular_file(dir, &rel.to_string_lossy()) else {
            continue;
        };
        if len > MAX_FILE_BYTES {
            continue;
        }
        let mut bytes = Vec::new();
        if file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).is_err() {
            continue;
        }
        if bytes.iter().take(8192).any(|&b| b == 0) {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if re.is_match(line) {
                if hits == max {
                    let _ = writeln!(
                        out,
                        "[stopped at {max} matches; narrow the pattern or path_glob]"
                    );
                    break 'files;
                }
                let shown: String = line.chars().take(MAX_LINE_CHARS).collect();
                let _ = writeln!(out, "{}:{}:{}", rel.display(), i + 1, shown);
                hits += 1;
            }
        }
    }
    if hits == 0 {
        return Ok(format!("no matches for `{pattern}`"));
    }
    Ok(out)
}
