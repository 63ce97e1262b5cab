//! Keeps every tool path inside the agent's workspace (its cwd): absolute paths, `..`
//! and symlinks that lead out are refused.

use std::path::{Component, Path, PathBuf};

/// Resolves `rel` inside `root` (canonical). The target must exist.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(format!(
            "`{rel}` is an absolute path; refused: use a path relative to the workspace root"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "`{rel}` contains `..`; refused: paths must stay inside the workspace"
        ));
    }
    let canon = std::fs::canonicalize(root.join(p)).map_err(|e| format!("`{rel}`: {e}"))?;
    if !canon.starts_with(root) {
        return Err(format!(
            "`{rel}` leads outside the workspace (through a symlink); refused"
        ));
    }
    Ok(canon)
}

/// Whether `path` (found by a walk under `root`) really lies inside it once symlinks
/// are resolved.
pub fn is_inside(root: &Path, path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|c| c.starts_with(root))
}
