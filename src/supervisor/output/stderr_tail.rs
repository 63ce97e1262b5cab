//! The last bytes of a worker's stderr ([`StderrTail`]), shown by `agent_status` and read
//! to tell an allocation failure from a crash.
//!
//! Not here: reading the pipe (the manager).

use std::collections::VecDeque;

use super::ring::{find_byte, is_continuation};

/// Default number of stderr bytes kept.
pub const DEFAULT_STDERR_TAIL: usize = 64 * 1024;

/// The last bytes of a worker's stderr.
#[derive(Debug)]
pub struct StderrTail {
    buf: VecDeque<u8>,
    capacity: usize,
    total: u64,
}

impl Default for StderrTail {
    fn default() -> Self {
        Self::new(DEFAULT_STDERR_TAIL)
    }
}

impl StderrTail {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            capacity,
            total: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let keep = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.buf.len() + keep.len()).saturating_sub(self.capacity);
        self.buf.drain(..overflow);
        self.buf.extend(keep);
    }

    /// The kept bytes as text (invalid UTF-8 replaced). When older bytes were dropped, it
    /// starts after the first '\n' in the first half, so it does not open mid-line.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(self.buf.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let cut_into = self.total > bytes.len() as u64;
        let start = if cut_into {
            match find_byte(&bytes[..bytes.len() / 2], b'\n') {
                Some(nl) => nl + 1,
                None => bytes.iter().take_while(|&&b| is_continuation(b)).count(),
            }
        } else {
            0
        };
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Bytes ever pushed, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_last_bytes_from_a_line_start() {
        let mut tail = StderrTail::new(20);
        tail.push(b"first line\n");
        assert_eq!(tail.text(), "first line\n");
        tail.push(b"second line\nthird\n");
        assert_eq!(tail.total_bytes(), 29);
        assert_eq!(tail.text(), "second line\nthird\n");

        let mut tail = StderrTail::new(3);
        tail.push("xé".as_bytes());
        tail.push("é".as_bytes());
        assert_eq!(tail.text(), "é");
        assert_eq!(tail.total_bytes(), 5);
    }
}
