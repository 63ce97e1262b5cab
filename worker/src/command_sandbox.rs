//! The sandbox of every command the `bash` tool runs, stricter than the worker's own.
//! Checked once per agent (before the worker confines itself: can the kernel confine
//! commands?), started at the agent's first command (the janitor and the scratch
//! directory), applied in each command's child between fork and exec:
//!
//! - files (Landlock): read the workspace, the system directories programs run from and
//!   the parts of /etc that tools read; execute only from the system directories; write
//!   only to the agent's private scratch directory (HOME and TMPDIR). Nothing else is
//!   readable: not another directory of the user, not /proc (so not the worker's
//!   environment or memory).
//! - network (seccomp, and Landlock's TCP rules with no port allowed): no socket() of any
//!   family, socketpair() only for AF_UNIX, no io_uring (it would open sockets unseen).
//! - the process group is sealed: setsid() and setpgid() fail, so killing the group
//!   kills everything the command started.
//! - no capabilities (the bounding set is emptied, so a root worker's commands are not
//!   root in anything but their uid), no new privileges (setuid binaries do not elevate).
//! - the environment is built (`environment`), never inherited.
//!
//! When the kernel cannot confine commands, `prepare` says why and the worker does not
//! offer `bash`; with `[server] sandbox = "off"` (an explicit choice) commands run with
//! only their process group, environment and limits.
//!
//! Scratch directories are made in one directory per user, `$TMPDIR/bg-agent-commands-UID` (0700,
//! made by `prepare` when missing, kept): it exists when the worker confines itself, so
//! the worker's ruleset can leave its commands that directory; an agent that runs no
//! command starts no process and makes no scratch directory.
//!
//! Not here: running a command and reading its output (`tools::bash`), the worker's own
//! sandbox (`sandbox`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead as _, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetError, Scope, path_beneath_rules,
};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::values::SandboxMode;

/// Directories programs run from: readable and executable.
const EXEC_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// What tools read in /etc (users and groups, the loader, time zones, terminfo, TLS
/// roots, alternatives); /etc as a whole is not readable.
const ETC_READ: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/terminfo",
    "/etc/magic",
    "/etc/mime.types",
    "/etc/locale.alias",
    "/etc/inputrc",
    "/etc/os-release",
];

/// Character devices commands may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/urandom",
    "/dev/random",
];

/// The PATH of every command.
const PATH: &str = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin";

/// Processes a command may have at once, where RLIMIT_NPROC applies (not to root: the
/// kernel exempts uid 0; there the timeout and the sealed group end a fork bomb).
const MAX_PROCESSES: u64 = 4096;

/// An agent's command sandbox: checked by `prepare`, started by `start` at the first
/// command, then shared by its commands.
#[derive(Debug)]
pub struct Commands {
    /// This user's directory of scratch directories (see the module doc).
    base: PathBuf,
    /// Whether commands are confined by the kernel (else `sandbox = "off"`).
    confined: bool,
    /// The confinement without the scratch directory, until `start` takes it.
    plan: Mutex<Option<Plan>>,
    live: OnceLock<Live>,
    janitor: Mutex<Option<Janitor>>,
}

/// What commands run in once the scratch directory exists.
#[derive(Debug)]
pub struct Live {
    scratch: PathBuf,
    confinement: Confinement,
    env: Vec<(&'static str, OsString)>,
}

/// A small shell started at the agent's first command, before the command, outside the
/// worker's process group: it learns each running command's group on its stdin, and when
/// that ends (the worker exited, or was killed with SIGKILL and could not clean up) it
/// kills the last group still running and removes the scratch directory.
#[derive(Debug)]
struct Janitor {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
}

/// The janitor's script: it makes the scratch directory (0700) in `$1` and prints its
/// path; each stdin line is then the group of the command running now (0: none).
/// SIGPIPE is ignored: a worker killed before it read the path must not take the janitor
/// with it (the directory would be left behind); the janitor then sees its stdin end.
const JANITOR_SCRIPT: &str = r#"trap '' PIPE; d=$(mktemp -d "$1/bg-agent-scratch-XXXXXX") || exit 1; echo "$d"; exec >/dev/null; g=0; while read -r l; do g=$l; done; [ "$g" -gt 0 ] 2>/dev/null && kill -9 "-$g" 2>/dev/null; exec rm -rf -- "$d""#;

/// The confinement as `prepare` checked it. The Landlock ruleset (some thirty paths
/// opened and added) is built by `start`, with the scratch directory.
#[derive(Debug)]
enum Plan {
    Kernel {
        workspace: PathBuf,
        seccomp: BpfProgram,
    },
    Off,
}

#[derive(Debug)]
enum Confinement {
    /// The Landlock ruleset (a descriptor each command's child enforces on itself) and
    /// the seccomp program.
    Kernel {
        landlock: OwnedFd,
        seccomp: BpfProgram,
    },
    /// `sandbox = "off"`: the server's configuration says not to confine.
    Off,
}

static COMMANDS: OnceLock<Commands> = OnceLock::new();
/// The process group of the command running now (0: none), killed when the agent ends.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// The agent's prepared command sandbox, once `prepare` succeeded.
pub fn get() -> Option<&'static Commands> {
    COMMANDS.get()
}

/// Checks that commands can be confined here, for a worker in `workspace` under `mode`,
/// and makes sure this user's directory of scratch directories exists. Err says why
/// commands cannot be confined (then `bash` is not offered). Runs before the worker
/// confines itself; starts no process (`Commands::start` does, at the first command).
pub fn prepare(workspace: &Path, mode: SandboxMode) -> Result<&'static Commands, String> {
    let base = scratch_base()?;
    let plan = match mode {
        SandboxMode::Off => Plan::Off,
        SandboxMode::Auto | SandboxMode::Require => kernel_plan(workspace)?,
    };
    let commands = Commands {
        base,
        confined: matches!(plan, Plan::Kernel { .. }),
        plan: Mutex::new(Some(plan)),
        live: OnceLock::new(),
        janitor: Mutex::new(None),
    };
    COMMANDS
        .set(commands)
        .map_err(|_| "the command sandbox was prepared twice".to_string())?;
    COMMANDS
        .get()
        .ok_or_else(|| "the command sandbox is missing".to_string())
}

/// `$TMPDIR/bg-agent-commands-UID` (else under /tmp), made 0700 when missing; refused when it is
/// not a directory of this user that only this user can enter.
fn scratch_base() -> Result<PathBuf, String> {
    let tmp = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let cannot = |why: String| {
        format!(
            "cannot create a scratch directory in {}: {why}",
            tmp.display()
        )
    };
    let uid = nix::unistd::geteuid().as_raw();
    let base = tmp.join(format!("bg-agent-commands-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(cannot(format!("{}: {e}", base.display()))),
    }
    let meta =
        std::fs::symlink_metadata(&base).map_err(|e| cannot(format!("{}: {e}", base.display())))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(cannot(format!(
            "{} is not a directory of this user with mode 0700",
            base.display()
        )));
    }
    Ok(base)
}

/// Kills the running command's group and has the janitor remove the scratch directory,
/// waiting until it has: the agent is ending. Safe to call more than once.
pub fn end() {
    kill_running_group();
    let Some(c) = COMMANDS.get() else { return };
    let janitor = match c.janitor.lock() {
        Ok(mut j) => j.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(janitor) = janitor {
        janitor.finish();
    }
}

/// Starts the janitor (see `Janitor`), which makes the scratch directory in `base` and
/// says its path.
fn start_janitor(base: &Path) -> Result<(Janitor, PathBuf), String> {
    let cannot = |why: String| {
        format!(
            "cannot create a scratch directory in {}: {why}",
            base.display()
        )
    };
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", JANITOR_SCRIPT, "bg-agent-janitor"])
        .arg(base)
        .env_clear()
        .env("PATH", PATH)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| cannot(format!("/bin/sh: {e}")))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(cannot("no pipes to /bin/sh".into()));
    };
    let janitor = Janitor { child, stdin };
    let mut line = String::new();
    let read = std::io::BufReader::new(stdout).read_line(&mut line);
    let path = PathBuf::from(line.trim_end_matches('\n'));
    match read {
        Ok(_) if path.is_absolute() && path.is_dir() => Ok((janitor, path)),
        _ => {
            janitor.finish();
            Err(cannot(
                "mktemp -d failed (does the directory exist, is it writable?)".into(),
            ))
        }
    }
}

impl Janitor {
    /// Closes the janitor's stdin (it kills the last group and removes the scratch
    /// directory) and waits for it.
    fn finish(self) {
        let Janitor { mut child, stdin } = self;
        drop(stdin);
        let _ = child.wait();
    }
}

/// Tells the janitor which group runs now (0: none).
fn tell_janitor(group: i32) {
    let Some(c) = COMMANDS.get() else { return };
    if let Ok(mut j) = c.janitor.lock()
        && let Some(j) = j.as_mut()
    {
        let _ = writeln!(j.stdin, "{group}");
    }
}

/// Kills the group of the command running now, if any.
pub fn kill_running_group() {
    let group = RUNNING_GROUP.swap(0, Ordering::SeqCst);
    if group > 0 {
        kill_group(group);
    }
}

/// SIGKILL to process group `group`: every process in it, at once.
pub fn kill_group(group: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(group),
        nix::sys::signal::Signal::SIGKILL,
    );
}

impl Commands {
    /// This user's directory of scratch directories: the worker's ruleset leaves its
    /// commands this (each command's own ruleset narrows it to its scratch directory).
    pub fn scratch_base(&self) -> &Path {
        &self.base
    }

    /// One phrase for the `started` event.
    pub fn describe(&self) -> &'static str {
        if self.confined {
            "commands (bash): read-only workspace, writes only to a scratch directory, no network, no secrets"
        } else {
            "commands (bash): unconfined (sandbox = \"off\")"
        }
    }

    /// What commands run in, started at the first call: the janitor (outside the
    /// worker's process group, before any command runs) makes the scratch directory, and
    /// the commands' Landlock ruleset is built with it. Err says why no command can run.
    pub fn start(&self) -> Result<&Live, String> {
        if let Some(live) = self.live.get() {
            return Ok(live);
        }
        let mut plan = match self.plan.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(live) = self.live.get() {
            return Ok(live);
        }
        let Some(taken) = plan.take() else {
            return Err("the command sandbox could not be completed earlier".into());
        };
        // The janitor makes the directory, so no moment exists where it is there and
        // nobody would remove it (a worker killed right after making it itself).
        let (janitor, scratch) = match start_janitor(&self.base) {
            Ok(started) => started,
            Err(why) => {
                *plan = Some(taken);
                return Err(why);
            }
        };
        let confinement = match taken {
            Plan::Kernel { workspace, seccomp } => match landlock_ruleset(&workspace, &scratch) {
                Ok(landlock) => Confinement::Kernel { landlock, seccomp },
                Err(why) => {
                    janitor.finish();
                    return Err(why);
                }
            },
            Plan::Off => Confinement::Off,
        };
        match self.janitor.lock() {
            Ok(mut j) => *j = Some(janitor),
            Err(poisoned) => *poisoned.into_inner() = Some(janitor),
        }
        let live = Live {
            env: environment(&scratch),
            scratch,
            confinement,
        };
        Ok(self.live.get_or_init(|| live))
    }
}

impl Live {
    /// The private directory commands may write (their HOME and TMPDIR).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// A `bash -c command` (or `sh -c`) ready to spawn in `cwd`, in a process group of
    /// its own, with the built environment and this sandbox applied in the child.
    pub fn command(&self, command: &str, cwd: &Path) -> std::process::Command {
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let mut cmd = std::process::Command::new(shell);
        cmd.arg("-c")
            .arg(command)
            .current_dir(cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        let confinement = match &self.confinement {
            Confinement::Kernel { landlock, seccomp } => {
                Some((landlock.as_raw_fd(), seccomp.clone()))
            }
            Confinement::Off => None,
        };
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // system calls (see `in_child_confine`); the program it installs was built here,
        // in the parent.
        unsafe {
            cmd.pre_exec(move || in_child_confine(parent, confinement.as_ref()));
        }
        cmd
    }
}

/// Records `group` as the running command's group (0 when it ended).
pub fn set_running_group(group: i32) {
    RUNNING_GROUP.store(group, Ordering::SeqCst);
    tell_janitor(group);
}

/// In the child between fork and exec: die with the worker, bound processes, drop every
/// capability, then enforce the Landlock ruleset and the seccomp program (which also set
/// no_new_privs). Only system calls, no allocation: the worker has other threads.
fn in_child_confine(
    parent: libc::pid_t,
    confinement: Option<&(libc::c_int, BpfProgram)>,
) -> std::io::Result<()> {
    // SAFETY (each call below): plain system calls on values owned by this function.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if libc::getppid() != parent {
            // The worker died before the death signal was armed.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        if libc::geteuid() != 0 {
            let limit = libc::rlimit {
                rlim_cur: MAX_PROCESSES,
                rlim_max: MAX_PROCESSES,
            };
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NPROC, &mut old) == 0 && old.rlim_max > MAX_PROCESSES {
                check(libc::setrlimit(libc::RLIMIT_NPROC, &limit))?;
            }
        }
    }
    let Some((landlock, seccomp)) = confinement else {
        return Ok(());
    };
    // SAFETY: as above.
    unsafe {
        drop_capabilities()?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(libc::syscall(libc::SYS_landlock_restrict_self, *landlock, 0) as libc::c_int)?;
    }
    seccompiler::apply_filter(seccomp).map_err(|_| std::io::Error::last_os_error())
}

/// Empties the bounding, ambient, effective, permitted and inheritable capability sets,
/// so even a root worker's command holds no capability (and gains none at exec).
///
/// # Safety
/// Only system calls; call in the child between fork and exec.
unsafe fn drop_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl and capset with values owned here.
    unsafe {
        // Without CAP_SETPCAP (an unprivileged worker) the bounding set cannot change and
        // holds nothing usable anyway: EPERM is expected, EINVAL ends the list.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                let e = *libc::__errno_location();
                if e == libc::EINVAL {
                    break;
                }
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))
        .or_else(|e| {
            // Kernels before 4.3 have no ambient set.
            if e.raw_os_error() == Some(libc::EINVAL) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)
    }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The command's whole environment: a fixed PATH, HOME and TMPDIR in the scratch
/// directory, the worker's locale, and git set up to work read-only without any user or
/// system configuration (no optional locks, no pager, no prompts).
fn environment(scratch: &Path) -> Vec<(&'static str, OsString)> {
    let lang = std::env::var_os("LANG").unwrap_or_else(|| "C.UTF-8".into());
    let mut env: Vec<(&'static str, OsString)> = vec![
        ("PATH", PATH.into()),
        ("HOME", scratch.into()),
        ("TMPDIR", scratch.into()),
        ("LANG", lang),
        ("TERM", "dumb".into()),
        ("PAGER", "cat".into()),
        ("GIT_PAGER", "cat".into()),
        ("GIT_OPTIONAL_LOCKS", "0".into()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("NO_COLOR", "1".into()),
    ];
    if let Some(tz) = std::env::var_os("TZ") {
        env.push(("TZ", tz));
    }
    env
}

/// Whether this kernel can confine commands (Landlock, seccomp filters), with their
/// seccomp program; the Landlock ruleset waits for the scratch directory (`start`).
fn kernel_plan(workspace: &Path) -> Result<Plan, String> {
    if landlock_abi() < 1 {
        return Err("this kernel has no Landlock (or it is not enabled)".to_string());
    }
    let seccomp = network_filter()?;
    // SAFETY: PR_GET_SECCOMP only reads this thread's mode; EINVAL means no seccomp.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err("this kernel has no seccomp filters (CONFIG_SECCOMP_FILTER)".into());
    }
    Ok(Plan::Kernel {
        workspace: workspace.to_path_buf(),
        seccomp,
    })
}

/// The Landlock ABI this kernel has (below 1: none, or not enabled), as the crate learns
/// it when it creates a ruleset.
fn landlock_abi() -> libc::c_long {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    }
}

/// The flag of `landlock_create_ruleset` that asks for the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// Builds (does not enforce) the commands' ruleset, with what this kernel supports
/// (signals and abstract sockets are scoped from ABI 6 on).
fn landlock_ruleset(workspace: &Path, scratch: &Path) -> Result<OwnedFd, String> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(TARGET_ABI)))
        .and_then(|r| r.scope(Scope::from_all(TARGET_ABI)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules([workspace], read)))
        .and_then(add_system_rules)
        .and_then(|r| add_scratch_rule(r, scratch))
        .map_err(|e| format!("cannot build the Landlock ruleset of commands: {e}"))?;
    Option::<OwnedFd>::from(created)
        .ok_or_else(|| "this kernel has no Landlock (or it is not enabled)".to_string())
}

/// Adds the rights commands need beyond the workspace: read and execute the system
/// directories, read the parts of /etc that tools read, use the usual devices. The
/// worker adds them to its own ruleset too, with `add_scratch_rule` for this user's
/// scratch base (a command's ruleset is layered on the worker's, and can only narrow it).
pub fn add_system_rules(ruleset: RulesetCreated) -> Result<RulesetCreated, RulesetError> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    ruleset
        .add_rules(path_beneath_rules(EXEC_DIRS, read | AccessFs::Execute))?
        .add_rules(path_beneath_rules(ETC_READ, read))?
        .add_rules(path_beneath_rules(
            DEVICES,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
}

/// Whether `add_system_rules` names `path` itself, with at least read rights (a file or
/// a directory tree): a second rule for it would change nothing, since Landlock follows
/// a link the same way when it opens either. Paths beneath those named are not counted:
/// a link there may lead out of the tree.
pub fn system_rules_name(path: &Path) -> bool {
    EXEC_DIRS
        .iter()
        .chain(ETC_READ)
        .chain(DEVICES)
        .any(|p| path == Path::new(p))
}

/// Adds anything but execute beneath `dir` (a scratch directory, or the worker's scratch
/// base).
pub fn add_scratch_rule(
    ruleset: RulesetCreated,
    dir: &Path,
) -> Result<RulesetCreated, RulesetError> {
    let scratch_rights = AccessFs::from_all(TARGET_ABI) & !AccessFs::Execute;
    ruleset.add_rules(path_beneath_rules([dir], scratch_rights))
}

/// The newest Landlock ABI whose rights we ask for; older kernels get what they support.
const TARGET_ABI: ABI = ABI::V7;

/// Syscalls a command may not make: every socket (no network of any kind; a path socket
/// could reach a daemon outside, so AF_UNIX too), io_uring (it opens sockets where
/// seccomp cannot see them), leaving the process group, tracing, BPF and kernel modules.
fn network_filter() -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH.try_into().map_err(|e| {
        format!(
            "seccomp filters are not built for {}: {e}",
            std::env::consts::ARCH
        )
    })?;
    let bad = |e: seccompiler::BackendError| format!("cannot build the seccomp filter: {e}");
    let always: &[i64] = &[
        libc::SYS_socket,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_setsid,
        libc::SYS_setpgid,
        libc::SYS_ptrace,
        libc::SYS_bpf,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_kexec_load,
    ];
    let not_unix = SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )
        .map_err(bad)?,
    ])
    .map_err(bad)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in always {
        rules.insert(nr, Vec::new());
        // The same calls through the x32 ABI (numbers with bit 30 set), where it exists.
        if cfg!(target_arch = "x86_64") {
            rules.insert(nr | X32_SYSCALL_BIT, Vec::new());
        }
    }
    rules.insert(libc::SYS_socketpair, vec![not_unix.clone()]);
    if cfg!(target_arch = "x86_64") {
        rules.insert(libc::SYS_socketpair | X32_SYSCALL_BIT, vec![not_unix]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(bad)?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| bad(e))
}

/// x86_64's marker of x32 system calls.
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The worker was killed before it read the janitor's line: the janitor still
    /// removes the scratch directory (it died of SIGPIPE and left it, before).
    #[test]
    fn a_worker_gone_before_reading_the_path_leaves_no_scratch_directory() {
        let base = tempfile::tempdir().unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", JANITOR_SCRIPT, "bg-agent-janitor"])
            .arg(base.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(
                writer.as_fd().try_clone_to_owned().unwrap(),
            ))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        drop(writer);
        let left: Vec<_> = std::fs::read_dir(base.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?} ({status})");
        assert!(status.success(), "{status}");
    }
}
