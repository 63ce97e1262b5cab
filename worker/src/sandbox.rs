//! The worker's kernel sandbox: before the agent loop the process confines itself with
//! Landlock to reading its workspace (the cwd tree) and the few system files that HTTPS
//! and name resolution need, with no writes and no execution; with Landlock ABI ≥ 4 it
//! may open TCP connections only to its provider's port (and a proxy's); with ABI ≥ 6 it
//! may not signal processes or reach abstract sockets outside its own domain.
//!
//! `SandboxMode` (the server's `[server] sandbox`, carried in the TaskSpec): `auto`
//! confines when the kernel can and says when it cannot, `require` refuses to run
//! unconfined, `off` does not confine.
//!
//! Landlock confines the calling thread and the threads it starts afterwards, so this
//! runs while the worker has a single thread (before any blocking-pool thread exists).
//!
//! When the agent may run commands (`bash`), the worker also keeps what their stricter
//! sandbox grants them (`command_sandbox::add_system_rules`: execute system programs;
//! `add_scratch_rule`: write this user's scratch base, which holds their scratch
//! directory), since a command's ruleset can only narrow the worker's.
//!
//! Not here: the per-open confinement of tool paths (`tools::sandbox`), the sandbox of
//! commands (`command_sandbox`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus,
    Scope, path_beneath_rules,
};

use crate::command_sandbox::{self, Commands};
use crate::protocol::TaskSpec;
use crate::values::SandboxMode;

/// The newest Landlock ABI whose rights we ask for; older kernels get what they support.
const TARGET_ABI: ABI = ABI::V7;

/// System files read after confinement: TLS roots, name resolution (glibc may load NSS
/// modules from the library directories), and the usual character devices.
const SYSTEM_READ_PATHS: &[&str] = &[
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/etc/resolv.conf",
    "/run/systemd/resolve",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/dev/null",
    "/dev/urandom",
];

/// Environment variables naming more TLS roots (honoured by rustls-native-certs).
const CERT_ENV: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR"];
/// Environment variables naming a proxy that reqwest would connect to instead.
const PROXY_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];
/// DNS over TCP (the fallback for large answers).
const DNS_PORT: u16 = 53;

/// Which sandbox is in force, as the `started` event and `agent_status` say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InForce {
    /// Landlock confines the worker; `net` says whether TCP connects are confined too.
    Landlock { abi: u8, net: bool },
    /// `auto` on a kernel without (enabled) Landlock: the worker runs unconfined.
    Unavailable { why: String },
    /// `sandbox = "off"`.
    Off,
}

impl InForce {
    /// One short phrase, e.g. `landlock (ABI 7): read-only workspace, TCP to the provider only`.
    pub fn describe(&self) -> String {
        match self {
            InForce::Landlock { abi, net: true } => format!(
                "landlock (ABI {abi}): read-only workspace, no writes or execution, TCP to the provider only"
            ),
            InForce::Landlock { abi, net: false } => format!(
                "landlock (ABI {abi}): read-only workspace, no writes or execution; network unconfined (needs ABI 4)"
            ),
            InForce::Unavailable { why } => format!("none: {why} (sandbox = \"auto\")"),
            InForce::Off => "none: sandbox = \"off\"".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "sandbox = \"require\" but {0}; run on Linux 5.13 or newer with Landlock enabled (lsm=landlock), or set sandbox = \"auto\" in [server]"
    )]
    Required(String),
    #[error("cannot set up the Landlock sandbox: {0}")]
    Setup(#[from] RulesetError),
}

/// Whether the agent runs commands, and in which sandbox.
#[derive(Debug)]
pub enum CommandsState {
    /// The spec does not offer `bash`.
    NotOffered,
    /// `bash` is offered, its commands confined by this.
    Ready(&'static Commands),
    /// The spec asked for `bash`, but commands cannot be confined here (why).
    Unavailable(String),
}

impl CommandsState {
    fn describe(&self) -> Option<String> {
        match self {
            CommandsState::NotOffered => None,
            CommandsState::Ready(c) => Some(c.describe().to_string()),
            CommandsState::Unavailable(why) => Some(format!("bash not offered: {why}")),
        }
    }

    fn scratch_base(&self) -> Option<&Path> {
        match self {
            CommandsState::Ready(c) => Some(c.scratch_base()),
            _ => None,
        }
    }
}

static IN_FORCE: OnceLock<String> = OnceLock::new();

/// The description of the sandbox this process put itself in, once `confine` ran.
pub fn in_force() -> Option<String> {
    IN_FORCE.get().cloned()
}

/// Confines this process as `spec.sandbox` asks, with `base_url` the provider's
/// effective endpoint, leaving its `commands` what their own sandbox grants them. Must
/// run before any other thread is started.
pub fn confine(
    spec: &TaskSpec,
    base_url: &str,
    commands: &CommandsState,
) -> Result<InForce, SandboxError> {
    let state = match spec.sandbox {
        SandboxMode::Off => InForce::Off,
        mode => {
            let status = restrict_current_thread(
                &spec.cwd,
                &connect_ports(base_url),
                commands.scratch_base(),
            )?;
            match (status_in_force(&status), mode) {
                (InForce::Unavailable { why }, SandboxMode::Require) => {
                    return Err(SandboxError::Required(why));
                }
                (state, _) => state,
            }
        }
    };
    let said = match (&state, commands) {
        // The worker keeps what its commands' stricter sandbox grants them.
        (InForce::Landlock { .. }, CommandsState::Ready(c)) => format!(
            "{}; for its commands it may also run system programs and write in {}, where their scratch directory is made; {}",
            state.describe(),
            c.scratch_base().display(),
            c.describe()
        ),
        _ => match commands.describe() {
            Some(c) => format!("{}; {c}", state.describe()),
            None => state.describe(),
        },
    };
    let _ = IN_FORCE.set(said);
    Ok(state)
}

/// Installs the ruleset on the calling thread (and the threads it starts later).
fn restrict_current_thread(
    workspace: &Path,
    ports: &[u16],
    scratch_base: Option<&Path>,
) -> Result<RestrictionStatus, RulesetError> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    // With commands, their system rules (added below) name seven of the worker's own
    // paths again; each rule costs an open, two stats, the rule and a close.
    let system_read = system_read_paths()
        .into_iter()
        .filter(|p| scratch_base.is_none() || !command_sandbox::system_rules_name(p));
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .scope(Scope::from_all(TARGET_ABI))?
        .create()?
        .add_rules(path_beneath_rules([workspace], read))?
        .add_rules(path_beneath_rules(system_read, read))?
        .add_rules(
            ports
                .iter()
                .map(|&p| Ok::<_, RulesetError>(NetPort::new(p, AccessNet::ConnectTcp))),
        )?;
    let ruleset = match scratch_base {
        Some(base) => {
            command_sandbox::add_scratch_rule(command_sandbox::add_system_rules(ruleset)?, base)?
        }
        None => ruleset,
    };
    ruleset.restrict_self()
}

/// What the kernel enforced, from the crate's report.
fn status_in_force(status: &RestrictionStatus) -> InForce {
    match (&status.ruleset, &status.landlock) {
        (RulesetStatus::NotEnforced, LandlockStatus::NotEnabled) => InForce::Unavailable {
            why: "Landlock is not enabled in this kernel".into(),
        },
        (RulesetStatus::NotEnforced, _) => InForce::Unavailable {
            why: "this kernel has no Landlock".into(),
        },
        (_, LandlockStatus::Available { effective_abi, .. }) => InForce::Landlock {
            abi: *effective_abi as u8,
            net: *effective_abi >= ABI::V4,
        },
        (_, _) => InForce::Unavailable {
            why: "Landlock reported no ABI".into(),
        },
    }
}

/// System paths, plus any TLS roots named by the environment.
fn system_read_paths() -> Vec<PathBuf> {
    let from_env = CERT_ENV
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from);
    SYSTEM_READ_PATHS
        .iter()
        .map(PathBuf::from)
        .chain(from_env)
        .collect()
}

/// The TCP ports the worker may connect to: its provider's, a proxy's, and DNS.
fn connect_ports(base_url: &str) -> Vec<u16> {
    let proxies = PROXY_ENV.iter().filter_map(|v| std::env::var(v).ok());
    let mut ports: Vec<u16> = std::iter::once(base_url.to_string())
        .chain(proxies)
        .filter_map(|u| url_port(&u))
        .collect();
    ports.push(DNS_PORT);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The port of `url`, or its scheme's default.
fn url_port(url: &str) -> Option<u16> {
    reqwest::Url::parse(url).ok()?.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_rules_name_seven_of_the_system_paths_again() {
        let named: Vec<&str> = SYSTEM_READ_PATHS
            .iter()
            .copied()
            .filter(|p| command_sandbox::system_rules_name(Path::new(p)))
            .collect();
        assert_eq!(
            named,
            [
                "/etc/ssl",
                "/etc/ca-certificates",
                "/etc/nsswitch.conf",
                "/lib",
                "/lib64",
                "/dev/null",
                "/dev/urandom",
            ]
        );
        // Not what lies beneath (a link there may lead out), nor a path written otherwise.
        for kept in [
            "/usr/lib",
            "/usr/share/ca-certificates",
            "/usr/../opt",
            "/etc",
        ] {
            assert!(
                !command_sandbox::system_rules_name(Path::new(kept)),
                "{kept}"
            );
        }
    }

    #[test]
    fn ports_come_from_the_url_or_its_scheme() {
        assert_eq!(url_port("https://api.anthropic.com"), Some(443));
        assert_eq!(url_port("http://127.0.0.1:8123/v1"), Some(8123));
        assert_eq!(url_port("http://localhost"), Some(80));
        assert_eq!(url_port("not a url"), None);
    }
}
