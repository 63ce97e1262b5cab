//! `glob`: workspace paths matching a glob, honouring .gitignore.

use std::os::fd::OwnedFd;
use std::path::Path;

use serde_json::Value;

use super::{sandbox, str_arg};

const MAX_PATHS: usize = 500;

pub(super) fn run(input: &Value, root: &Path, dir: &OwnedFd) -> Result<String, String> {
    let pattern = str_arg(input, "pattern")?;
    if pattern.starts_with('/') || pattern.split('/').any(|c| c == "..") {
        return Err(format!(
            "pattern `{pattern}` leaves the workspace; use a pattern relative to the workspace root"
        ));
    }
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad glob `{pattern}`: {e}"))?
        .compile_matcher();
    let mut paths = Vec::new();
    for entry in walker(root).build().flatten() {
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() || !matcher.is_match(rel) {
            continue;
        }
        let rel = rel.to_string_lossy().into_owned();
        if !sandbox::exists_beneath(dir, &rel) {
            continue;
        }
        paths.push(rel);
    }
    // The first MAX_PATHS in sorted order, not the first found: the walk's order is the
    // file system's.
    paths.sort();
    let more = paths.len() > MAX_PATHS;
    paths.truncate(MAX_PATHS);
    if paths.is_empty() {
        return Ok(format!("no paths match `{pattern}`"));
    }
    let mut out = paths.join("\n");
    out.push('\n');
    if more {
        out.push_str(&format!(
            "[stopped at {MAX_PATHS} paths; narrow the pattern]\n"
        ));
    }
    Ok(out)
}

/// A walk of the workspace that honours .gitignore (also outside git repositories),
/// skips hidden files and never follows symlinks.
pub(super) fn walker(root: &Path) -> ignore::WalkBuilder {
    let mut b = ignore::WalkBuilder::new(root);
    b.require_git(false).follow_links(false);
    b
}
