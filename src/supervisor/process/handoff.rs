//! How a worker started on the spawner thread reaches the runtime. The spawner thread
//! has a descriptor table of its own, so its clone copies, and the worker's exec closes,
//! a handful of descriptors instead of the server's thousands; the worker's four (its
//! pidfd and the server's ends of its three pipes) cross into the server's table over a
//! unix socket (SCM_RIGHTS), and the runtime's `Receiver` task hands them to whoever asked.
//!
//! Why: a clone without CLONE_FILES copies the caller's whole table, and exec then
//! closes every close-on-exec entry of the copy. With about five descriptors per running
//! agent, that made each spawn O(running agents): at 1,000 agents `do_close_on_exec` was
//! about 4% of all the machine's samples, charged to the workers, and the copy was made
//! on the server's one thread, inside the vfork window.
//!
//! The rule that keeps this sound: a descriptor number means one thing in the server's
//! table and another (or nothing) in the spawner's. The spawner thread touches only its
//! own: its socket end, its pipes, its children. It never logs (the subscriber may write
//! to a descriptor of the server's table), never runs a signal handler (every signal is
//! blocked there: tokio's handler writes to a socket of the server's table) and never
//! wakes the runtime (tokio's waker is an eventfd of the server's table): its message
//! arriving on the socket is what wakes the runtime, through epoll, in the kernel.
//!
//! Not here: the clone itself (`clone_exec`), the thread's loop (`process::Spawner`).

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use nix::libc;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::clone_exec::{Started, reap_blocking, reap_now};
use super::signal_group;

/// Bytes of a message: the spawn's id (u64), the worker's pid (i32; 0 when it did not
/// start) and why it did not (an errno, i32; 0 when it did), little-endian.
const MESSAGE_BYTES: usize = 16;
/// Descriptors a message of a started worker carries, in this order: pidfd, stdin,
/// stdout, stderr.
const FDS: usize = 4;

/// The spawner thread's end of the socket.
pub(super) struct Outbox(OwnedFd);

/// Those who wait for a spawn's outcome, by spawn id; None once the `Receiver` is gone.
pub(super) type Waiting<W> = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<std::io::Result<W>>>>>>;

/// A socket pair for one spawner thread: its end, and the runtime's.
pub(super) fn channel() -> std::io::Result<(Outbox, OwnedFd)> {
    // SEQPACKET keeps each message whole, with its descriptors. Both ends block: the
    // spawner waits when the socket is full; the runtime reads with MSG_DONTWAIT.
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Outbox(ours), theirs))
}

/// Gives the calling thread (the spawner) a descriptor table of its own: a copy of the
/// server's, from which everything but stdin, stdout, stderr and `outbox` is closed, and
/// stdin and stdout (the MCP transport) are pointed at /dev/null so this copy keeps no
/// pipe of the client's open. Descriptors the server opens later are not added here. On
/// an error the thread shares the server's table: spawns still work, each paying for
/// the whole table as before.
pub(super) fn own_descriptor_table(outbox: &Outbox) -> std::io::Result<()> {
    // SAFETY: unshare(2) with CLONE_FILES only gives this thread a private copy of the
    // table; no descriptor changes.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    close_all_but(outbox.0.as_raw_fd());
    // SAFETY: open(2) of a constant path; the descriptor is ours until closed below.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if null >= 0 {
        // SAFETY: dup2(2) onto 0 and 1 of this thread's own table, which no Rust object
        // of this thread owns; `null` is closed once copied.
        unsafe {
            libc::dup2(null, libc::STDIN_FILENO);
            libc::dup2(null, libc::STDOUT_FILENO);
            libc::close(null);
        }
    }
    Ok(())
}

/// Closes every descriptor of this thread's private table from 3 up but `keep`: with
/// close_range(2), or where that is missing (kernels before 5.9, some seccomp profiles)
/// one by one as `/proc/thread-self/fd` lists them. A copy left open would keep the
/// server's end of the socket alive here, so the spawner would never learn that the
/// runtime stopped reading.
fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    if close_range(3, keep.saturating_sub(1))
        && close_range(keep.saturating_add(1), libc::c_uint::MAX)
    {
        return;
    }
    close_listed_but(keep);
}

/// `close_all_but` without close_range(2): every descriptor from 3 up but `keep` that
/// `/proc/thread-self/fd` lists, closed one by one.
fn close_listed_but(keep: libc::c_uint) {
    let Ok(listing) = std::fs::read_dir("/proc/thread-self/fd") else {
        return;
    };
    let open: Vec<libc::c_int> = listing
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &libc::c_int| fd > 2 && fd as libc::c_uint != keep)
        .collect();
    for fd in open {
        // SAFETY: close(2) on this thread's private table, whose descriptors no Rust
        // object of this thread owns (the listing's own is closed already: EBADF).
        unsafe { libc::close(fd) };
    }
}

/// close_range(2) of `first..=last` in this thread's table (nothing to do when first >
/// last); false when the kernel refused it.
fn close_range(first: libc::c_uint, last: libc::c_uint) -> bool {
    if first > last {
        return true;
    }
    // SAFETY: close_range(2) on this thread's private table, whose descriptors in that
    // range no Rust object of this thread owns (the thread has just begun).
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) == 0 }
}

impl Outbox {
    /// Tells the runtime how spawn `id` went: the worker's descriptors (this thread's
    /// copies are closed once sent), or why it did not start. A worker whose descriptors
    /// cannot be sent is killed, and the error sent instead.
    pub(super) fn send(&self, id: u64, started: std::io::Result<Started>) {
        let started = match started {
            Ok(s) => s,
            Err(e) => return self.send_error(id, &e),
        };
        let fds: [RawFd; FDS] = [
            started.pidfd.as_raw_fd(),
            started.stdin.as_raw_fd(),
            started.stdout.as_raw_fd(),
            started.stderr.as_raw_fd(),
        ];
        let sent = self.send_message(id, started.pid, 0, &fds);
        let pid = started.pid;
        drop(started);
        if let Err(e) = sent {
            kill_and_reap(pid);
            self.send_error(id, &e);
        }
    }

    fn send_error(&self, id: u64, e: &std::io::Error) {
        // Too many descriptors in flight between the threads is the server's table
        // running short too: the manager answers it by queueing, as for EMFILE.
        let errno = match e.raw_os_error() {
            Some(libc::ETOOMANYREFS) => libc::EMFILE,
            Some(errno) => errno,
            None => libc::EIO,
        };
        // Nothing more can be done if this fails too: the socket is broken, so the
        // runtime's `Receiver` ends and every waiting spawn is told the spawner is gone.
        let _ = self.send_message(id, 0, errno, &[]);
    }

    fn send_message(
        &self,
        id: u64,
        pid: libc::pid_t,
        errno: i32,
        fds: &[RawFd],
    ) -> std::io::Result<()> {
        let mut message = [0u8; MESSAGE_BYTES];
        message[..8].copy_from_slice(&id.to_le_bytes());
        message[8..12].copy_from_slice(&pid.to_le_bytes());
        message[12..].copy_from_slice(&errno.to_le_bytes());
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &[IoSlice::new(&message)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }
}

/// The runtime's end: a task that reads each message, turns a started worker's
/// descriptors into what the caller gets (`adopt`), and hands it to the caller waiting
/// for that spawn. A caller that gave up drops it (a `Worker` dropped kills its process).
pub(super) fn receive<W: Send + 'static>(
    socket: OwnedFd,
    waiting: Waiting<W>,
    adopt: fn(Started) -> std::io::Result<W>,
) -> std::io::Result<()> {
    // SAFETY: the OwnedFd is moved in, stays open and is only closed when the AsyncFd
    // is dropped, by the task below.
    let socket = unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    tokio::spawn(async move {
        // However this task ends (the spawner thread gone, its runtime shut down, a
        // panic), those still waiting are told that no answer will come.
        let _tell_the_waiting = CloseOnDrop(Arc::clone(&waiting));
        loop {
            let (id, started) = match next_message(&socket).await {
                Ok(Some(message)) => message,
                // The spawner thread closed its end: every message before it was read.
                Ok(None) => break,
                // Short of kernel memory: the message stays in the socket; try again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::ENOBUFS)) => {
                    tracing::warn!("reading from the spawner thread failed: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                // A message of the wrong size was read and dropped: go on with the next.
                Err(e) if e.raw_os_error().is_none() => {
                    tracing::error!("{e}");
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        "reading from the spawner thread failed: {e}; no more agents can start"
                    );
                    break;
                }
            };
            let outcome = started.and_then(|s| {
                let pid = s.pid;
                adopt(s).inspect_err(|_| kill_and_reap(pid))
            });
            let waiter = lock(&waiting).as_mut().and_then(|w| w.remove(&id));
            if let Some(waiter) = waiter {
                // A caller gone drops the worker here, which kills it.
                let _ = waiter.send(outcome);
            }
        }
    });
    Ok(())
}

/// Empties the waiting map, for good, when dropped: each waiter's `start` then says the
/// spawner is gone instead of waiting forever.
struct CloseOnDrop<W>(Waiting<W>);

impl<W> Drop for CloseOnDrop<W> {
    fn drop(&mut self) {
        lock(&self.0).take();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next message: its spawn id, and the started worker or why it did not start; None
/// when the spawner thread has closed its end.
async fn next_message(
    socket: &AsyncFd<OwnedFd>,
) -> std::io::Result<Option<(u64, std::io::Result<Started>)>> {
    loop {
        let mut ready = socket.readable().await?;
        match ready.try_io(|fd| read_message(fd.get_ref())) {
            Ok(read) => return read,
            Err(_would_block) => continue,
        }
    }
}

fn read_message(socket: &OwnedFd) -> std::io::Result<Option<(u64, std::io::Result<Started>)>> {
    let mut message = [0u8; MESSAGE_BYTES];
    let (bytes, truncated, fds) = recv_with_fds(socket, &mut message)?;
    if bytes == 0 {
        return Ok(None);
    }
    if bytes != MESSAGE_BYTES {
        return Err(std::io::Error::other(format!(
            "the spawner thread sent {bytes} bytes, not {MESSAGE_BYTES}"
        )));
    }
    let word = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&message[range]);
        i32::from_le_bytes(b)
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&message[..8]);
    let (id, pid, errno) = (u64::from_le_bytes(id), word(8..12), word(12..16));
    if errno != 0 {
        return Ok(Some((id, Err(std::io::Error::from_raw_os_error(errno)))));
    }
    let mut fds = fds.into_iter();
    let started = match (fds.next(), fds.next(), fds.next(), fds.next()) {
        (Some(pidfd), Some(stdin), Some(stdout), Some(stderr)) if !truncated => Ok(Started {
            pid,
            pidfd,
            stdin,
            stdout,
            stderr,
        }),
        _ => {
            // The kernel installs what fits in our table and drops the rest: this
            // server is out of descriptors, which the manager answers by queueing.
            kill_and_reap(pid);
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    };
    Ok(Some((id, started)))
}

/// recvmsg(2) of one message into `message` without waiting: its length, whether its
/// descriptors were cut short (MSG_CTRUNC: our table is full), and the descriptors that
/// did arrive (also when cut short, so that none leaks).
fn recv_with_fds(
    socket: &OwnedFd,
    message: &mut [u8],
) -> std::io::Result<(usize, bool, Vec<OwnedFd>)> {
    #[repr(C)]
    union Control {
        header: libc::cmsghdr,
        bytes: [u8; 128],
    }
    // SAFETY: zeroed bytes are a valid value of this union of plain data.
    let mut control: Control = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: message.as_mut_ptr().cast(),
        iov_len: message.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&raw mut control).cast();
    msg.msg_controllen = std::mem::size_of::<Control>();
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: recvmsg(2) fills `message` and `control` within the lengths given.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::with_capacity(FDS);
    // SAFETY: the CMSG_* walk stays within msg_controllen, as the kernel set it; each
    // SCM_RIGHTS payload is an array of descriptors now installed in our table.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let truncated = msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0;
    Ok((n as usize, truncated, fds))
}

/// Kills the group of our child `pid` and reaps it, on a thread of its own if it does
/// not die at once (stuck in the kernel on a slow disk).
pub(super) fn kill_and_reap(pid: libc::pid_t) {
    // 0 or less would name our own process group (or every process we may signal).
    if pid <= 0 {
        return;
    }
    signal_group(pid as u32, nix::sys::signal::Signal::SIGKILL);
    if reap_now(pid) {
        return;
    }
    let handed_off = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || reap_blocking(pid))
        .is_ok();
    if !handed_off {
        // No thread to be had: block rather than leave a zombie.
        reap_blocking(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    /// Whether `fd` is open in this thread's table.
    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    }

    /// In a thread with a private table (as the spawner has): opens four descriptors,
    /// runs `close` keeping the third, and returns which of them, and of 0..=2, are open.
    fn after_closing(close: fn(RawFd)) -> (Vec<bool>, Vec<bool>) {
        std::thread::spawn(move || {
            // SAFETY: unshare(2) with CLONE_FILES gives this test thread a private copy
            // of the table; what it closes there, no other thread sees.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_FILES) }, 0, "unshare");
            // Owned by no Rust object: the private table is dropped with the thread.
            let fds: Vec<RawFd> = (0..4)
                .map(|_| {
                    std::fs::File::open("/dev/null")
                        .expect("open")
                        .into_raw_fd()
                })
                .collect();
            close(fds[2]);
            let ours = fds.iter().map(|&fd| is_open(fd)).collect();
            let std = (0..=2).map(is_open).collect();
            (ours, std)
        })
        .join()
        .expect("test thread")
    }

    #[test]
    fn close_all_but_leaves_the_kept_descriptor_and_stdio() {
        let (ours, std) = after_closing(close_all_but);
        assert_eq!(ours, [false, false, true, false]);
        assert_eq!(std, [true, true, true]);
    }

    /// The path for kernels without close_range(2) (before 5.9) or a seccomp profile that
    /// refuses it.
    #[test]
    fn the_listing_fallback_leaves_the_kept_descriptor_and_stdio() {
        let (ours, std) = after_closing(|keep| close_listed_but(keep as libc::c_uint));
        assert_eq!(ours, [false, false, true, false]);
        assert_eq!(std, [true, true, true]);
    }
}
