//! What callers ask the supervisor for, and the policy that checks it before the
//! manager acts: caps on labels, model names and ids, waits within `[server]
//! max_wait_seconds`, the kill grace ceiling, known roles, each agent once in a wait.
//! A caller (the MCP tools) converts its parameters into these requests and nothing more.
//!
//! Not here: resolving a spawn into a model and limits (`bg_agent_worker::resolve`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bg_agent_worker::config::KILL_GRACE_MAX_MS;
use bg_agent_worker::resolve::SpawnRequest;

use super::manager::{Manager, ManagerError, WaitMode};
use super::view::{SpawnView, StatusView, WaitView};

/// Longest label (chars); labels are echoed in every list row.
pub const LABEL_MAX_CHARS: usize = 64;
/// Longest model name (chars) a spawn may give.
pub const MODEL_MAX_CHARS: usize = 128;
/// Longest agent id accepted; real ids are `a-` and five characters.
pub const ID_MAX_CHARS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error(
        "label is {chars} chars, above the {LABEL_MAX_CHARS}-char cap; give a short name such as `auth-explore` (put details in task)"
    )]
    LabelTooLong { chars: usize },
    #[error(
        "model `{shown}` is {chars} chars, above the {MODEL_MAX_CHARS}-char cap; give a model name such as claude-haiku-5-5, or omit it"
    )]
    ModelTooLong { shown: String, chars: usize },
    #[error(
        "agent_id `{shown}` is {chars} chars; ids look like a-7f3k2 (agent_spawn returns them, agent_list shows them)"
    )]
    IdTooLong { shown: String, chars: usize },
    #[error("wait_seconds = {value} is not valid; give a number of seconds from 0 to {max}")]
    BadWait { value: f64, max: u64 },
    #[error(
        "grace_ms = {0} is above {KILL_GRACE_MAX_MS}; give 0 to {KILL_GRACE_MAX_MS} milliseconds"
    )]
    GraceAboveCeiling(u64),
    #[error("unknown role `{shown}`; use one of: {valid}")]
    UnknownRole { shown: String, valid: String },
}

/// Directories no agent may work in, whatever `[server] workspace_roots` says: the whole
/// file system, and the kernel's views of processes, devices and itself.
const SYSTEM_DIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why a directory cannot be an agent's workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(
        "cwd {} is {what}: an agent there could read every file the server can; nothing was started. Give the project directory the agent should read as cwd",
        path.display()
    )]
    System { path: PathBuf, what: &'static str },
    #[error(
        "cwd {} is not under any of [server] workspace_roots ({roots}); nothing was started. Give a directory under one of them, or add its root to workspace_roots in the config and restart the server",
        path.display()
    )]
    OutsideRoots { path: PathBuf, roots: String },
}

/// Refuses `cwd` (already resolved: absolute, no symlinks) as a workspace when it is `/`,
/// under /proc, /sys or /dev, or outside every one of `roots` (when any is given).
pub fn check_workspace(cwd: &Path, roots: &[String]) -> Result<(), WorkspaceError> {
    let system = |what| WorkspaceError::System {
        path: cwd.to_path_buf(),
        what,
    };
    if cwd.parent().is_none() {
        return Err(system("the root of the file system"));
    }
    if SYSTEM_DIRS.iter().any(|d| cwd.starts_with(d)) {
        return Err(system("a kernel file system (/proc, /sys or /dev)"));
    }
    if roots.is_empty() {
        return Ok(());
    }
    // A root is compared as resolved, so a root given through a symlink still matches.
    let inside = roots.iter().any(|r| {
        let root = std::fs::canonicalize(r).unwrap_or_else(|_| PathBuf::from(r));
        cwd.starts_with(root)
    });
    if inside {
        Ok(())
    } else {
        Err(WorkspaceError::OutsideRoots {
            path: cwd.to_path_buf(),
            roots: roots.join(", "),
        })
    }
}

/// A caller's string as echoed in an error: at most 40 chars.
pub fn shown(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(39).collect::<String>())
    }
}

/// Refuses ids that cannot be agent ids before they are echoed anywhere.
pub fn check_id(id: &str) -> Result<(), RequestError> {
    let chars = id.chars().count();
    if chars > ID_MAX_CHARS {
        return Err(RequestError::IdTooLong {
            shown: shown(id),
            chars,
        });
    }
    Ok(())
}

/// `ids` checked, each once, in the caller's order.
pub fn distinct_ids(ids: Vec<String>) -> Result<Vec<String>, RequestError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        check_id(&id)?;
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// A spawn as a caller asks for it: the request the worker library resolves, and the
/// caller's label. Empty `role` and `model` mean "not given".
#[derive(Debug, Clone, Default)]
pub struct SpawnAgent {
    pub request: SpawnRequest,
    pub label: Option<String>,
}

/// What a blocking call does when the caller gives no `wait_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnset {
    /// Answer at once.
    NoWait,
    /// Wait as long as one call may (`[server] max_wait_seconds`).
    Longest,
}

/// A wait as it will run: within `[server] max_wait_seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    pub duration: Duration,
    /// The caller asked for more than one call may wait (it should call again).
    pub capped: bool,
}

impl Manager {
    /// Checks a spawn request and starts (or queues) the agent.
    pub async fn spawn_agent(&self, r: SpawnAgent) -> Result<SpawnView, RequestError> {
        let SpawnAgent { mut request, label } = r;
        if let Some(label) = &label {
            let chars = label.chars().count();
            if chars > LABEL_MAX_CHARS {
                return Err(RequestError::LabelTooLong { chars });
            }
        }
        if let Some(model) = &request.model {
            let chars = model.chars().count();
            if chars > MODEL_MAX_CHARS {
                return Err(RequestError::ModelTooLong {
                    shown: shown(model),
                    chars,
                });
            }
        }
        request.role = request.role.filter(|r| !r.is_empty());
        request.model = request.model.filter(|m| !m.is_empty());
        Ok(self.spawn(request, label).await?)
    }

    /// The wait a caller asked for (`asked` seconds), within `[server] max_wait_seconds`.
    pub fn wait_within(&self, asked: Option<f64>, unset: WhenUnset) -> Result<Wait, RequestError> {
        let max = self.config().server.max_wait_seconds;
        let s = match (asked, unset) {
            (Some(s), _) => s,
            (None, WhenUnset::NoWait) => 0.0,
            (None, WhenUnset::Longest) => max as f64,
        };
        if !s.is_finite() || s < 0.0 {
            return Err(RequestError::BadWait { value: s, max });
        }
        Ok(Wait {
            duration: Duration::from_secs_f64(s.min(max as f64)),
            capped: s > max as f64,
        })
    }

    /// Checks a kill request (the grace at most `KILL_GRACE_MAX_MS`) and stops the agent.
    pub async fn kill_agent(
        &self,
        id: &str,
        grace_ms: Option<u64>,
    ) -> Result<StatusView, RequestError> {
        check_id(id)?;
        if let Some(g) = grace_ms
            && g > KILL_GRACE_MAX_MS
        {
            return Err(RequestError::GraceAboveCeiling(g));
        }
        Ok(self.kill(id, grace_ms).await?)
    }

    /// Refuses a role the configuration does not define, listing those it does.
    pub fn check_role(&self, role: &str) -> Result<(), RequestError> {
        let roles = &self.config().roles;
        if roles.contains_key(role) {
            return Ok(());
        }
        let valid: Vec<&str> = roles.keys().map(String::as_str).collect();
        Err(RequestError::UnknownRole {
            shown: shown(role),
            valid: valid.join(", "),
        })
    }

    /// Waits for `ids` (each once, in the caller's order); unknown ids fail before any
    /// waiting.
    pub async fn wait_agents(
        &self,
        ids: &[String],
        mode: WaitMode,
        wait: Wait,
    ) -> Result<WaitView, RequestError> {
        self.wait(ids, mode, Duration::ZERO).await?;
        Ok(self.wait(ids, mode, wait.duration).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_keeps_the_first_of_each_in_order() {
        let ids = ["a-2", "a-1", "a-2", "a-3", "a-1"]
            .map(String::from)
            .to_vec();
        assert_eq!(distinct_ids(ids).unwrap(), ["a-2", "a-1", "a-3"]);
        let long = vec!["a-".to_string() + &"x".repeat(40)];
        assert!(matches!(
            distinct_ids(long),
            Err(RequestError::IdTooLong { chars: 42, .. })
        ));
    }

    #[test]
    fn system_directories_are_never_workspaces_and_roots_bound_the_rest() {
        for bad in [
            "/",
            "/proc",
            "/proc/1/root",
            "/sys/kernel",
            "/dev",
            "/dev/shm",
        ] {
            let e = check_workspace(Path::new(bad), &[])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("cwd {bad} is ")), "{e}");
            assert!(e.contains("Give the project directory"), "{e}");
        }
        assert!(check_workspace(Path::new("/home/me/src/app"), &[]).is_ok());
        assert!(
            check_workspace(Path::new("/devices"), &[]).is_ok(),
            "by component"
        );
        let roots = ["/home/me/src".to_string()];
        assert!(check_workspace(Path::new("/home/me/src/app"), &roots).is_ok());
        let e = check_workspace(Path::new("/home/me/srcs"), &roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not under any of [server] workspace_roots (/home/me/src)"),
            "{e}"
        );
    }

    #[test]
    fn shown_cuts_long_strings() {
        assert_eq!(shown("abc"), "abc");
        assert_eq!(shown(&"x".repeat(50)).chars().count(), 40);
    }
}
