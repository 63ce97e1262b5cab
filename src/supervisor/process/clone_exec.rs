//! The unsafe part of starting a worker: clone(CLONE_VM | CLONE_VFORK) — what
//! posix_spawn does — and, in the child between clone and exec, its process group,
//! kernel limits and parent-death signal, set with raw system calls only.
//!
//! A `pre_exec` hook would do the same but forces std to fork(), copying the server's
//! page tables on every spawn (measured: 0.8 ms against 0.2 ms).
//!
//! Each function says where its effect lands: `in_child_*` functions run in the child
//! between clone and exec, on memory shared with the suspended parent, and may only make
//! single async-signal-safe system calls (no allocation, no locks, no Rust runtime); the
//! others run in the parent.
//!
//! Not here: what the command, environment and limits are (`process::Plan::new`), the
//! running worker handle (`process::Worker`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;

use super::Plan;

/// A started worker before it is handed to the runtime.
pub(super) struct Started {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
}

/// What the child needs, as raw pointers into memory the parent keeps alive: with
/// CLONE_VFORK the parent thread is suspended until the child has exec'd or exited.
struct ChildArgs {
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    limits: [(rlimit::Resource, u64, u64); 5],
    parent: libc::pid_t,
    stdio: [RawFd; 3],
    /// Where the child reports why it could not exec (shared memory under CLONE_VM).
    errno: *mut libc::c_int,
}

/// Stack for the child between clone and exec; it only makes system calls.
const CHILD_STACK_BYTES: usize = 64 * 1024;

thread_local! {
    /// The child stack of the spawns made from this thread, allocated once.
    static CHILD_STACK: std::cell::RefCell<Vec<u8>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Starts `plan` with clone(CLONE_VM | CLONE_VFORK), as posix_spawn does, but with the
/// limits and the parent-death signal set in the child before exec. A fork() would copy
/// the server's page tables on every spawn; this costs what a plain spawn costs.
pub(super) fn clone_exec(plan: &Plan) -> std::io::Result<Started> {
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let mut child_errno: libc::c_int = 0;
    let args = ChildArgs {
        exe: plan.exe.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: plan.cwd.as_ptr(),
        limits: plan.limits,
        parent: std::process::id() as libc::pid_t,
        stdio: [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
        errno: &mut child_errno,
    };
    let pid = clone_vfork_on_thread_stack(&args)?;
    drop((in_r, out_w, err_w));
    if child_errno != 0 {
        reap_blocking(pid);
        return Err(std::io::Error::from_raw_os_error(child_errno));
    }
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_child(pid);
            reap_blocking(pid);
            return Err(std::io::Error::other(format!(
                "pidfd_open failed (Linux 5.3 or later is required): {e}"
            )));
        }
    };
    Ok(Started {
        pid,
        pidfd,
        stdin: in_w,
        stdout: out_r,
        stderr: err_r,
    })
}

/// The pointers of `strings` followed by the null pointer that ends an argv or envp.
fn null_terminated(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

/// A pipe whose ends close on exec (the child's ends are dup2'd onto 0, 1, 2 instead).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2(2) fills two new descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Clones the calling thread into a child that runs `child_main(args)` on this thread's
/// child stack; returns once the child has exec'd or exited (CLONE_VFORK).
fn clone_vfork_on_thread_stack(args: &ChildArgs) -> std::io::Result<libc::pid_t> {
    let (pid, clone_error) = CHILD_STACK.with_borrow_mut(|stack| {
        if stack.is_empty() {
            *stack = vec![0u8; CHILD_STACK_BYTES];
        }
        // SAFETY: the stack outlives the child's use of it (this thread is suspended
        // until exec/_exit, so one stack per thread serves every spawn from it); the top
        // is 16-byte aligned as the ABI wants; every signal is blocked in this thread
        // across clone so no handler can run in the child before it resets them;
        // child_main only makes raw system calls.
        unsafe {
            let top = stack.as_mut_ptr().add(stack.len());
            let top = top.sub(top as usize % 16);
            let old = block_all_signals_in_this_thread();
            let pid = libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                args as *const ChildArgs as *mut libc::c_void,
            );
            let clone_error = std::io::Error::last_os_error();
            restore_signal_mask_of_this_thread(&old);
            (pid, clone_error)
        }
    });
    if pid < 0 {
        return Err(clone_error);
    }
    Ok(pid)
}

/// pthread_sigmask(3): blocks every signal in the calling thread; returns the old mask.
pub(super) fn block_all_signals_in_this_thread() -> libc::sigset_t {
    // SAFETY: zeroed sigsets are valid values for sigfillset and pthread_sigmask to fill.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

/// pthread_sigmask(3): puts back the calling thread's mask from before the clone.
fn restore_signal_mask_of_this_thread(old: &libc::sigset_t) {
    // SAFETY: `old` is a mask pthread_sigmask returned.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// pidfd_open(2): a descriptor that becomes readable when our child `pid` exits.
fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor returned to us and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// kill(2): SIGKILL to the child we just started (its group is not ours to signal yet).
fn kill_child(pid: libc::pid_t) {
    // SAFETY: kill(2) of our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// waitpid(2): reaps our child `pid`, blocking until it has exited.
pub(super) fn reap_blocking(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// waitpid(2) with WNOHANG: reaps our child `pid` if it has exited; true when it is
/// gone (reaped now, or no longer ours to wait for).
pub(super) fn reap_now(pid: libc::pid_t) -> bool {
    let mut status = 0;
    // SAFETY: waitpid(2) with WNOHANG on our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r != 0
}

/// The child between clone and exec. It shares the parent's memory, so it may only make
/// raw system calls: no allocation, no locks, no Rust runtime. Each step below is a
/// single async-signal-safe system call (or a loop of them); the first that fails
/// reports its errno to the parent and exits 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the ChildArgs on the suspended parent's stack, and every
    // pointer in it stays valid until exec or _exit (CLONE_VFORK).
    let a = unsafe { &*(arg as *const ChildArgs) };
    in_child_reset_signal_handlers();
    in_child_unblock_signals();
    let ready = in_child_own_process_group()
        && in_child_set_limits(&a.limits)
        && in_child_die_with_parent(a.parent)
        && in_child_wire_stdio(&a.stdio)
        && in_child_chdir(a.cwd);
    if ready {
        in_child_exec(a);
    }
    in_child_fail(a.errno)
}

/// sigaction(2), in the child: handlers are code in the parent's memory; reset every
/// caught signal to its default, and SIGPIPE too (Rust ignores it; std's Command resets
/// it).
fn in_child_reset_signal_handlers() {
    for sig in 1..65 {
        // SAFETY: zeroed sigactions are valid values; sigaction(2) only reads/writes them.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// sigprocmask(2), in the child: the parent blocked everything around clone; start
/// unblocked.
fn in_child_unblock_signals() {
    // SAFETY: a zeroed sigset emptied by sigemptyset is a valid mask.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// setpgid(2), in the child: its own process group, so a kill reaches everything it
/// starts.
fn in_child_own_process_group() -> bool {
    // SAFETY: setpgid(2) on the calling process.
    unsafe { libc::setpgid(0, 0) == 0 }
}

/// setrlimit(2), in the child, through the rlimit crate (a plain struct and the raw call,
/// no allocation on success): the kernel enforces the agent's limits from here on.
fn in_child_set_limits(limits: &[(rlimit::Resource, u64, u64)]) -> bool {
    limits
        .iter()
        .all(|&(resource, soft, hard)| rlimit::setrlimit(resource, soft, hard).is_ok())
}

/// prctl(2), in the child: SIGKILL when the thread that cloned us dies (the server's main
/// thread or the spawner thread; both live as long as the server). Then getppid(2): if
/// the server died before prctl took effect, the signal will never come; give up
/// (ESRCH) instead of running orphaned.
fn in_child_die_with_parent(parent: libc::pid_t) -> bool {
    // SAFETY: prctl(2) and getppid(2) on the calling process; writing errno is how a
    // failure is reported to `in_child_fail`.
    unsafe {
        let signal = libc::SIGKILL as libc::c_ulong;
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0 {
            return false;
        }
        if libc::getppid() != parent {
            *libc::__errno_location() = libc::ESRCH;
            return false;
        }
    }
    true
}

/// dup2(2), in the child: the pipes become stdin, stdout, stderr (dup2 clears
/// close-on-exec).
fn in_child_wire_stdio(stdio: &[RawFd; 3]) -> bool {
    stdio
        .iter()
        .enumerate()
        // SAFETY: dup2(2) of descriptors the parent keeps open until we exec.
        .all(|(target, fd)| unsafe { libc::dup2(*fd, target as libc::c_int) } >= 0)
}

/// chdir(2), in the child.
fn in_child_chdir(cwd: *const libc::c_char) -> bool {
    // SAFETY: `cwd` is a NUL-terminated string the suspended parent keeps alive.
    unsafe { libc::chdir(cwd) == 0 }
}

/// execve(2), in the child: returns only when it failed.
fn in_child_exec(a: &ChildArgs) {
    // SAFETY: exe, argv and envp are NUL-terminated strings and null-terminated pointer
    // arrays the suspended parent keeps alive.
    unsafe { libc::execve(a.exe, a.argv, a.envp) };
}

/// _exit(2), in the child, after storing errno where the parent reads it (ECHILD when a
/// step failed without setting errno).
fn in_child_fail(errno: *mut libc::c_int) -> ! {
    // SAFETY: `errno` points to a local of the suspended parent (shared under CLONE_VM);
    // _exit(2) ends the child without running any Rust code.
    unsafe {
        *errno = *libc::__errno_location();
        if *errno == 0 {
            *errno = libc::ECHILD;
        }
        libc::_exit(127)
    }
}
