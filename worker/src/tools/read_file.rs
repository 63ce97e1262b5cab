//! `read_file`: numbered lines of one text file, paged by offset/limit.

use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::OwnedFd;

use serde_json::Value;

use super::{sandbox, str_arg, uint_arg};

/// Files larger than this are refused whole; page them with offset/limit... but they
/// still have to be read, so keep it bounded.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
const DEFAULT_LIMIT: usize = 2000;
const MAX_LINE_CHARS: usize = 2000;

pub(super) fn run(input: &Value, root: &OwnedFd) -> Result<String, String> {
    let rel = str_arg(input, "path")?;
    // 0 is read as the first line: small models send it (llama-cpp-python's grammar
    // ignores the schema's `minimum`), and it can only mean the start.
    let offset = match input.get("offset") {
        Some(v) if v.as_u64() == Some(0) => 1,
        _ => uint_arg(input, "offset")?.unwrap_or(1),
    };
    let limit = uint_arg(input, "limit")?.unwrap_or(DEFAULT_LIMIT);
    let (file, len) = sandbox::open_regular_file(root, rel)?;
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "`{rel}` is {len} bytes, above the {MAX_FILE_BYTES}-byte limit; use grep to find the part you need"
        ));
    }
    // Bounded even if the file grows after the size check.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("`{rel}`: {e}"))?;
    if bytes.iter().take(8192).any(|&b| b == 0) {
        return Err(format!("`{rel}` looks binary; refused"));
    }
    let text = String::from_utf8_lossy(&bytes);
    let total = text.lines().count();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate().skip(offset - 1).take(limit) {
        let line: String = if line.chars().count() > MAX_LINE_CHARS {
            line.chars().take(MAX_LINE_CHARS).collect::<String>() + " [line cut]"
        } else {
            line.to_string()
        };
        let _ = writeln!(out, "{}\t{}", i + 1, line);
    }
    let shown_end = (offset - 1).saturating_add(limit).min(total);
    if offset > total && total > 0 {
        return Err(format!(
            "offset {offset} is past the end (`{rel}` has {total} lines)"
        ));
    }
    if shown_end < total {
        let _ = writeln!(
            out,
            "[lines {offset}-{shown_end} of {total}; continue with offset {}]",
            shown_end + 1
        );
    }
    Ok(out)
}
