//! `bash`: one command (`bash -c`) in the agent's workspace, in a process group and a
//! sandbox of its own (`command_sandbox`). Its combined output is captured while it runs
//! and capped (head and tail kept, the cut said); when it exits or times out its whole
//! group is killed, so nothing it started outlives it.
//!
//! Not here: what the sandbox allows (`command_sandbox`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::Value;

use super::{str_arg, uint_arg};
use crate::command_sandbox::{self, Live};

/// Per-command timeout when the model gives none.
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// Output bytes kept from the start and from the end of a command's output.
const KEEP_HEAD: usize = 15_000;
const KEEP_TAIL: usize = 15_000;
/// How long the output pipe is drained after the group was killed.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// Runs the command in `input` in `root`, stopping it at `timeout_s` or at `deadline`
/// (the agent's wall clock), whichever is first.
pub(super) fn run(input: &Value, root: &Path, deadline: Instant) -> Result<String, String> {
    let command = str_arg(input, "command")?;
    let asked = uint_arg(input, "timeout_s")?.map_or(DEFAULT_TIMEOUT_S, |n| n as u64);
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(
            "the agent's wall clock (timeout_seconds) has run out: no time for a command; give your answer now"
                .into(),
        );
    }
    let Some(commands) = command_sandbox::get() else {
        return Err("commands cannot run in this agent (no command sandbox)".into());
    };
    // The first command starts the sandbox's janitor and scratch directory.
    let commands = commands
        .start()
        .map_err(|e| format!("the command could not start: {e}"))?;
    let timeout = Duration::from_secs(asked).min(left);
    let run = start_and_wait(commands, command, root, timeout)?;
    let report = run.report(asked, timeout);
    if run.timed_out {
        Err(report)
    } else {
        Ok(report)
    }
}

/// A finished command.
struct Finished {
    status: ExitStatus,
    timed_out: bool,
    output: Captured,
}

fn start_and_wait(
    commands: &Live,
    command: &str,
    root: &Path,
    timeout: Duration,
) -> Result<Finished, String> {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create the output pipe: {e}"))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| format!("cannot create the output pipe: {e}"))?;
    let mut cmd = commands.command(command, root);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2));
    let spawned = cmd.spawn();
    // The Command holds the pipe's write ends: drop it, or the output never ends.
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("the command could not start: {e}"))?;
    let group = child.id() as i32;
    command_sandbox::set_running_group(group);
    let exited = pidfd(group);
    let started = Instant::now();
    let mut output = Captured::default();
    let mut reader = Some(std::fs::File::from(reader));
    let mut timed_out = false;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match wait_for(reader.as_ref(), exited.as_ref(), left) {
            Ready::Output => {
                if let Some(r) = reader.as_mut()
                    && !output.read_from(r)
                {
                    reader = None;
                }
            }
            Ready::Exited => break,
            Ready::Nothing => {}
        }
        // Without a pidfd (Linux before 5.3), the exit is seen once the output ends.
        if exited.is_none() && reader.is_none() {
            break;
        }
    }
    // The command ended or ran out of time: nothing it started may outlive it. Killed
    // before the leader is reaped, so the group id cannot have been reused.
    command_sandbox::kill_group(group);
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for the command: {e}"))?;
    command_sandbox::set_running_group(0);
    if let Some(mut r) = reader {
        drain(&mut r, &mut output);
    }
    Ok(Finished {
        status,
        timed_out,
        output,
    })
}

enum Ready {
    Output,
    Exited,
    Nothing,
}

/// Waits up to `left` for output or the command's exit.
fn wait_for(reader: Option<&std::fs::File>, exited: Option<&OwnedFd>, left: Duration) -> Ready {
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut fds = Vec::with_capacity(2);
    if let Some(r) = reader {
        fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
    }
    if let Some(p) = exited {
        fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
    }
    if fds.is_empty() {
        std::thread::sleep(left.min(Duration::from_millis(50)));
        return Ready::Nothing;
    }
    if poll(&mut fds, timeout).unwrap_or(0) <= 0 {
        return Ready::Nothing;
    }
    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
    // Output first: whatever was written before the exit is read before it is reported.
    if reader.is_some() && ready(&fds[0]) {
        Ready::Output
    } else if fds.last().is_some_and(ready) && exited.is_some() {
        Ready::Exited
    } else {
        Ready::Nothing
    }
}

/// Reads what is left in the pipe after the group was killed, for at most `DRAIN_WAIT`
/// (a process outside the group, possible only unconfined, may still hold it).
fn drain(reader: &mut std::fs::File, output: &mut Captured) {
    let until = Instant::now() + DRAIN_WAIT;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match wait_for(Some(reader), None, left) {
            Ready::Output => {
                if !output.read_from(reader) {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// A pidfd of `pid` (readable once it exits), where the kernel has them.
fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) returns a new descriptor that we then own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a fresh descriptor owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The head and the tail of a command's output, and its total size.
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Captured {
    /// Reads one chunk; false at the end of the output (or an error).
    fn read_from(&mut self, reader: &mut std::fs::File) -> bool {
        let mut buf = [0u8; 64 * 1024];
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.push(&buf[..n]);
                true
            }
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = KEEP_HEAD - self.head.len();
        let into_head = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        if bytes.len() >= KEEP_TAIL {
            self.tail.clear();
            bytes = &bytes[bytes.len() - KEEP_TAIL..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(KEEP_TAIL);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    /// The output as the model reads it, with the cut said where one was made.
    fn text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        let kept = (self.head.len() + self.tail.len()) as u64;
        if self.total > kept {
            let _ = write!(
                s,
                "\n[... {} bytes cut from the middle of {} bytes of output; narrow the command (| head, | tail, grep) to see them ...]\n",
                self.total - kept,
                self.total
            );
        }
        let (a, b) = self.tail.as_slices();
        s.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        s
    }
}

impl Finished {
    /// The exit status first, then the output.
    fn report(&self, asked: u64, timeout: Duration) -> String {
        let mut s = if self.timed_out {
            let why = if timeout.as_secs() < asked {
                " (what was left of the agent's wall clock)"
            } else {
                ""
            };
            format!(
                "timed out after {} s{why}: the command and every process it started were killed; give a larger timeout_s or a narrower command\n",
                timeout.as_secs_f64().round()
            )
        } else if let Some(code) = self.status.code() {
            format!("exit status {code}\n")
        } else {
            let signal = self.status.signal().unwrap_or(0);
            let name = nix::sys::signal::Signal::try_from(signal)
                .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string());
            format!("killed by {name}\n")
        };
        if self.output.total == 0 {
            s.push_str("(no output)\n");
        } else {
            s.push_str(&self.output.text());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_head_and_tail_and_says_what_was_cut() {
        let mut c = Captured::default();
        c.push(&vec![b'a'; KEEP_HEAD]);
        c.push(&vec![b'b'; 100_000]);
        c.push(b"the end");
        let text = c.text();
        assert!(text.starts_with(&"a".repeat(KEEP_HEAD)), "{text:.40}");
        assert!(text.ends_with("bbbthe end"), "{}", &text[text.len() - 40..]);
        assert!(
            text.contains("[... 85007 bytes cut from the middle of 115007 bytes of output;"),
            "{text:.200}"
        );
        assert_eq!(c.tail.len(), KEEP_TAIL);
    }

    #[test]
    fn no_command_starts_once_the_agents_wall_clock_ran_out() {
        let e = run(
            &serde_json::json!({"command": "true"}),
            Path::new("/"),
            Instant::now(),
        )
        .unwrap_err();
        assert!(
            e.contains("wall clock (timeout_seconds) has run out"),
            "{e}"
        );
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let later = Instant::now() + Duration::from_secs(60);
        let e = run(
            &serde_json::json!({"command": "true", "timeout_s": 0}),
            Path::new("/"),
            later,
        )
        .unwrap_err();
        assert_eq!(e, "`timeout_s` must be a positive integer");
    }

    #[test]
    fn short_output_is_kept_whole() {
        let mut c = Captured::default();
        c.push(b"one\n");
        c.push(b"two\n");
        assert_eq!(c.text(), "one\ntwo\n");
    }
}
