//! The worker's stdin when the server started it (`--spec -`): the TaskSpec line, then
//! the server's `Input` lines (follow-ups) while the agent runs, then its end (the server
//! is gone).
//!
//! After the spec, stdin is read on the runtime when it is a pipe, as the server gives it:
//! no thread per agent. Anything else (a file, a terminal: `--spec -` by hand) is read on
//! a thread of its own. Taking the pipe makes its open file description non-blocking,
//! and it stays so: the server gives each worker a pipe of its own, and nothing the
//! worker starts inherits it (the janitor's stdin is its own pipe, commands get
//! /dev/null); a pipe shared with another reader by hand would see EAGAIN there.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;

use anyhow::Context;
use bg_agent_worker::agent::{FollowUp, Inbox};
use bg_agent_worker::protocol::{Input, TaskSpec};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

/// Stdin after the spec line: a descriptor of its own, and the bytes read past the line.
pub struct ServerInput {
    file: File,
    rest: Vec<u8>,
}

/// Reads the TaskSpec line from stdin, blocking (the server writes it first thing), and
/// keeps what came after it for `listen`.
pub fn read_spec() -> anyhow::Result<(TaskSpec, ServerInput)> {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot read the TaskSpec from stdin")?;
    let mut reader = BufReader::new(File::from(fd));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .context("cannot read the TaskSpec from stdin")?;
    let spec =
        serde_json::from_slice(&line).context("stdin does not hold a valid TaskSpec line")?;
    let rest = reader.buffer().to_vec();
    let file = reader.into_inner();
    Ok((spec, ServerInput { file, rest }))
}

impl ServerInput {
    /// Follow-ups go to the inbox as their lines arrive; the receiver resolves at end of
    /// file (the server is gone). A line that is not an `Input` is said on stderr and
    /// skipped. Call it inside the runtime.
    pub fn listen(self) -> (Inbox, oneshot::Receiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = oneshot::channel();
        let ServerInput { file, rest } = self;
        let is_pipe = file.metadata().is_ok_and(|m| m.file_type().is_fifo());
        let pipe = is_pipe
            .then(|| file.try_clone())
            .and_then(Result::ok)
            .and_then(|dup| tokio::net::unix::pipe::Receiver::from_file(dup).ok());
        match pipe {
            Some(pipe) => {
                tokio::spawn(async move {
                    let unread = tokio::io::AsyncReadExt::chain(Cursor::new(rest), pipe);
                    let mut lines = tokio::io::BufReader::new(unread);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        if !took(lines.read_until(b'\n', &mut line).await, &line, &tx) {
                            break;
                        }
                    }
                    let _ = closed_tx.send(());
                });
            }
            None => {
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(Cursor::new(rest).chain(Blocking(file)));
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        if !took(lines.read_until(b'\n', &mut line), &line, &tx) {
                            break;
                        }
                    }
                    let _ = closed_tx.send(());
                });
            }
        }
        (Inbox::new(rx), closed_rx)
    }
}

/// What one read of a line means, read on the runtime or on a thread: false at the end of
/// stdin, and at a read error, which ends the server's input as its end would (said
/// first, so it is not lost); else the line goes to the inbox.
fn took(read: io::Result<usize>, line: &[u8], inbox: &mpsc::UnboundedSender<FollowUp>) -> bool {
    match read {
        Ok(0) => false,
        Ok(_) => {
            deliver(line, inbox);
            true
        }
        Err(e) => {
            eprintln!("bg-agent-worker: cannot read stdin: {e}");
            false
        }
    }
}

/// One line from the server into the inbox; anything else said on stderr.
fn deliver(line: &[u8], inbox: &mpsc::UnboundedSender<FollowUp>) {
    match serde_json::from_slice::<Input>(line) {
        Ok(Input::FollowUp { message, id }) => {
            let _ = inbox.send(FollowUp { id, message });
        }
        Err(e) => eprintln!("bg-agent-worker: ignored a stdin line: {e}"),
    }
}

/// Stdin read by a thread: waits where the descriptor is non-blocking (a pipe the
/// runtime could not take after it made it so).
struct Blocking(File);

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
                    poll(&mut fds, PollTimeout::NONE).map_err(io::Error::from)?;
                }
                read => return read,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_is_not_an_input_is_skipped_and_a_follow_up_is_delivered() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        deliver(b"not json\n", &tx);
        assert!(rx.try_recv().is_err());
        let line = serde_json::to_vec(&Input::FollowUp {
            message: "and the tests?".into(),
            id: Some(7),
        })
        .expect("an Input serializes");
        deliver(&line, &tx);
        let got = rx.try_recv().expect("the follow-up is in the inbox");
        assert_eq!(
            got,
            FollowUp {
                id: Some(7),
                message: "and the tests?".into()
            }
        );
    }
}
