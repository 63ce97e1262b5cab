//! The server's stdin and stdout as the runtime's own I/O when they are pipes or unix
//! stream sockets, which is what MCP clients give a stdio server (node's child_process,
//! and so Claude Code, makes socket pairs; Python's subprocess, pipes): reads and writes
//! are driven by epoll on the runtime's thread. tokio's `Stdin` and `Stdout` hand every
//! read, write and flush to a blocking-pool thread instead: three cross-thread hops per
//! request, which at 1,000 agents spawned at once were a tenth of the server's CPU.
//!
//! Anything else (a terminal, a file, /dev/null) keeps tokio's `Stdin` and `Stdout`: a
//! terminal is shared with the shell, which must not find it left non-blocking.
//!
//! The descriptions behind fd 0 and 1 become non-blocking (O_NONBLOCK belongs to the
//! open file, not the descriptor): nothing else in the server reads stdin or writes
//! stdout. A stdout that is also the server's stderr (`2>&1`) keeps tokio's `Stdout`, so
//! the log never writes to a non-blocking file.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::stat::{SFlag, fstat};
use tokio::io::{AsyncRead, AsyncWrite};

/// What the server reads its requests from.
pub type Input = Box<dyn AsyncRead + Send + Unpin>;
/// What the server writes its replies to.
pub type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// What kind of file a standard descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fifo,
    StreamSocket,
    Other,
}

fn kind_of(fd: impl AsFd) -> Kind {
    let Ok(st) = fstat(fd.as_fd()) else {
        return Kind::Other;
    };
    let format = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if format == SFlag::S_IFIFO {
        Kind::Fifo
    } else if format == SFlag::S_IFSOCK && is_stream_socket(fd) {
        Kind::StreamSocket
    } else {
        Kind::Other
    }
}

fn is_stream_socket(fd: impl AsFd) -> bool {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream)
}

/// The server's stdin, read by the runtime itself when it is a pipe or a stream socket.
pub fn input() -> Input {
    let stdin = std::io::stdin();
    take_over(
        stdin.as_fd(),
        kind_of(&stdin),
        |fd, kind| -> std::io::Result<Input> {
            Ok(match kind {
                Kind::Fifo => Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?),
                _ => Box::new(stream(fd)?),
            })
        },
        || Box::new(tokio::io::stdin()),
    )
}

/// The server's stdout, written by the runtime itself when it is a pipe or a stream
/// socket, and not also the server's stderr (`2>&1`): the log's writes would then meet a
/// non-blocking file, and a log line cut short would run into the next reply.
pub fn output() -> Output {
    let stdout = std::io::stdout();
    let kind = if same_file(&stdout, std::io::stderr()) {
        Kind::Other
    } else {
        kind_of(&stdout)
    };
    take_over(
        stdout.as_fd(),
        kind,
        |fd, kind| -> std::io::Result<Output> {
            Ok(match kind {
                Kind::Fifo => Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?),
                _ => Box::new(stream(fd)?),
            })
        },
        || Box::new(tokio::io::stdout()),
    )
}

/// Standard descriptor `std_fd` (of `kind`) as the runtime's own I/O, made by `own` from
/// a copy that closes on exec (the descriptor itself stays open); tokio's blocking one
/// (`blocking`) for any other kind of file, or when taking it over fails, with the file
/// put back in blocking mode.
fn take_over<T>(
    std_fd: BorrowedFd<'_>,
    kind: Kind,
    own: impl FnOnce(OwnedFd, Kind) -> std::io::Result<T>,
    blocking: impl FnOnce() -> T,
) -> T {
    if kind == Kind::Other {
        return blocking();
    }
    match std_fd.try_clone_to_owned().and_then(|fd| own(fd, kind)) {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(
                "fd {} stays on tokio's blocking I/O: {e}",
                std_fd.as_raw_fd()
            );
            back_to_blocking(std_fd);
            blocking()
        }
    }
}

/// Whether `a` and `b` are the same open file (the same device and inode).
fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
    match (fstat(a.as_fd()), fstat(b.as_fd())) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Puts `fd`'s open file back in blocking mode, for tokio's blocking reader or writer
/// when taking it over failed after O_NONBLOCK was set.
fn back_to_blocking(fd: impl AsFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let raw = fd.as_fd();
    if let Ok(flags) = fcntl(raw, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags).difference(OFlag::O_NONBLOCK);
        let _ = fcntl(raw, FcntlArg::F_SETFL(flags));
    }
}

fn stream(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let socket = std::os::unix::net::UnixStream::from(fd);
    socket.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_and_stream_sockets_are_told_apart_from_other_files() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(kind_of(&r), Kind::Fifo);
        assert_eq!(kind_of(&w), Kind::Fifo);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(kind_of(&a), Kind::StreamSocket);
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert_eq!(kind_of(&d), Kind::Other);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(kind_of(&null), Kind::Other);
    }

    #[test]
    fn a_copy_of_a_descriptor_is_the_same_file_and_another_pipe_is_not() {
        let (_r, w) = nix::unistd::pipe().unwrap();
        let copy = w.try_clone().unwrap();
        assert!(same_file(&w, &copy));
        let (_r2, w2) = nix::unistd::pipe().unwrap();
        assert!(!same_file(&w, &w2));
    }
}
