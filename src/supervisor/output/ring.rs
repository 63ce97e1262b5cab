//! The ring buffer of an agent's readable transcript ([`OutputBuffer`]): UTF-8 text
//! lines addressed by absolute byte cursors, read per line with an optional filter, from
//! a cursor or as the last lines, within a byte cap.
//!
//! Not here: compiling the filter (`filter`), the full event stream on disk
//! (`transcript`), turning events into text (the manager).

use std::collections::VecDeque;

use regex::Regex;

/// Default ring buffer capacity per agent.
pub const DEFAULT_BUFFER_CAPACITY: usize = 1024 * 1024;
/// Longest line the ring buffer stores, in bytes without its '\n'; longer lines are split.
pub const MAX_LINE: usize = 64 * 1024;

/// The widest UTF-8 character; a read returns at least this many bytes so paging with any
/// `max_bytes` always makes progress.
const MAX_CHAR_LEN: usize = 4;

/// What to read from an [`OutputBuffer`].
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// Cursor to read from, normally a previous `next_cursor`; `None` reads from the
    /// oldest retained byte. A cursor past the end reads nothing and returns the end.
    pub since: Option<u64>,
    /// Keep only lines (without their '\n') the regex matches; others are skipped but
    /// still advance `next_cursor`. A read from a cursor inside a line (after a cut by
    /// `max_bytes` or a partial read) matches the rest of that line on its own.
    pub filter: Option<&'a Regex>,
    /// Only the last `n` (matching) lines of the range; `next_cursor` is then the end of
    /// the range whatever `max_bytes` leaves out.
    pub tail_lines: Option<usize>,
    /// Cap of the returned text, in bytes: whole lines while they fit, or the start of a
    /// first line that alone does not fit (the end of the newest one with `tail_lines`).
    /// Values below 4 act as 4 so paging always progresses.
    pub max_bytes: usize,
    /// Return a trailing line that has no '\n' yet and advance over it.
    pub include_partial: bool,
}

impl Default for ReadRequest<'_> {
    /// Everything retained, unfiltered, including a trailing partial line.
    fn default() -> Self {
        Self {
            since: None,
            filter: None,
            tail_lines: None,
            max_bytes: usize::MAX,
            include_partial: true,
        }
    }
}

/// What an [`OutputBuffer::read`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub text: String,
    /// Where the next read should start (`since`) to see only later output.
    pub next_cursor: u64,
    /// Bytes between the requested cursor and where reading began: evicted from the
    /// buffer, or the rest of a line or character cut by eviction.
    pub dropped_bytes: u64,
    /// Something in range was not returned because of `max_bytes`.
    pub truncated: bool,
    /// Lines (whole or cut) in `text`.
    pub matched_lines: usize,
}

/// Ring buffer of an agent's readable transcript, addressed by absolute byte cursors:
/// cursor 0 is the first byte ever pushed, and cursors never go back.
#[derive(Debug)]
pub struct OutputBuffer {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Cursor of `buf[0]`.
    start: u64,
    /// Whether `start` begins a line (nothing evicted, or the last evicted byte was '\n').
    start_is_line_start: bool,
    /// Bytes in the current, unterminated line, across pushes.
    line_len: usize,
}

impl Default for OutputBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_BUFFER_CAPACITY)
    }
}

impl OutputBuffer {
    /// A buffer keeping at most `capacity` bytes; memory grows with use up to that.
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            capacity,
            start: 0,
            start_is_line_start: true,
            line_len: 0,
        }
    }

    /// Cursor of the oldest retained byte.
    pub fn start_cursor(&self) -> u64 {
        self.start
    }

    /// Cursor one past the newest byte: the total bytes ever stored.
    pub fn end_cursor(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Bytes retained.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends text, splitting lines longer than [`MAX_LINE`] with an inserted '\n' (the
    /// inserted bytes count in cursors), and evicts the oldest bytes past capacity.
    pub fn push(&mut self, text: &str) {
        let mut rest = text;
        while !rest.is_empty() {
            let room = MAX_LINE - self.line_len;
            // Look no further than one byte past the room, so a huge push stays linear.
            let window = &rest.as_bytes()[..rest.len().min(room + 1)];
            match find_byte(window, b'\n') {
                Some(nl) if nl <= room => {
                    self.append(&rest.as_bytes()[..=nl]);
                    self.line_len = 0;
                    rest = &rest[nl + 1..];
                }
                _ if rest.len() <= room => {
                    self.append(rest.as_bytes());
                    self.line_len += rest.len();
                    rest = "";
                }
                _ => {
                    let cut = floor_char_boundary(rest, room);
                    self.append(&rest.as_bytes()[..cut]);
                    self.append(b"\n");
                    self.line_len = 0;
                    rest = &rest[cut..];
                }
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.capacity {
            let skip = bytes.len() - self.capacity;
            let evicted = self.buf.len() + skip;
            if skip > 0 {
                self.start_is_line_start = bytes[skip - 1] == b'\n';
            } else if let Some(&last) = self.buf.back() {
                self.start_is_line_start = last == b'\n';
            }
            self.start += evicted as u64;
            self.buf.clear();
            self.reserve(self.capacity);
            self.buf.extend(&bytes[skip..]);
            return;
        }
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.start_is_line_start = self.buf[overflow - 1] == b'\n';
            self.buf.drain(..overflow);
            self.start += overflow as u64;
        }
        self.reserve(self.buf.len() + bytes.len());
        self.buf.extend(bytes);
    }

    /// Grows the allocation geometrically but never past `capacity`.
    fn reserve(&mut self, needed: usize) {
        if self.buf.capacity() < needed {
            let target = (self.buf.capacity() * 2).max(needed).min(self.capacity);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// Reads lines in `[since, end)`; see [`ReadRequest`] and [`ReadResult`].
    ///
    /// Reading never changes the buffer: the same request gives the same result until
    /// more output is pushed.
    pub fn read(&self, req: &ReadRequest<'_>) -> ReadResult {
        let (a, b) = self.buf.as_slices();
        let window = Window {
            a,
            b,
            base: self.start,
        };
        let end = self.end_cursor();
        let requested = req.since.unwrap_or(0);
        let begin = self.read_start(&window, requested);
        // A partial line is held back: the rest of it may still come.
        let scan_end = if req.include_partial {
            end
        } else {
            window.rfind_newline(begin, end).map_or(begin, |nl| nl + 1)
        };
        let scan = Scan {
            window: &window,
            begin,
            end: scan_end,
            filter: req.filter,
            max_bytes: req.max_bytes.max(MAX_CHAR_LEN),
        };
        let mut result = match req.tail_lines {
            Some(n) => scan.read_tail(n),
            None => scan.read_forward(),
        };
        result.dropped_bytes = begin.saturating_sub(requested);
        result
    }

    /// Where reading actually begins for a requested cursor: inside the window, at a
    /// character boundary, and at a line start if eviction cut into what was asked for.
    fn read_start(&self, window: &Window<'_>, requested: u64) -> u64 {
        let end = self.end_cursor();
        let pos = requested.clamp(self.start, end);
        if requested < self.start
            && !self.start_is_line_start
            && let Some(nl) = window.find_newline(pos, end)
        {
            return nl + 1;
        }
        window.ceil_char_boundary(pos, end)
    }
}

/// The retained bytes as the ring's two slices, addressed by absolute cursor.
struct Window<'a> {
    a: &'a [u8],
    b: &'a [u8],
    /// Cursor of `a[0]`.
    base: u64,
}

impl Window<'_> {
    fn index(&self, pos: u64) -> usize {
        // Every cursor passed in lies within [base, end], and end - base is the length of
        // the in-memory buffer, so the difference fits in usize.
        (pos - self.base) as usize
    }

    fn byte(&self, pos: u64) -> u8 {
        let i = self.index(pos);
        if i < self.a.len() {
            self.a[i]
        } else {
            self.b[i - self.a.len()]
        }
    }

    /// The parts of `[from, to)` that lie in `a` and in `b`.
    fn parts(&self, from: u64, to: u64) -> (&[u8], &[u8]) {
        let (i, j) = (self.index(from), self.index(to));
        let split = self.a.len();
        let in_a = &self.a[i.min(split)..j.min(split)];
        let in_b = &self.b[i.max(split) - split..j.max(split) - split];
        (in_a, in_b)
    }

    fn find_newline(&self, from: u64, to: u64) -> Option<u64> {
        let (in_a, in_b) = self.parts(from, to);
        find_byte(in_a, b'\n')
            .or_else(|| find_byte(in_b, b'\n').map(|i| in_a.len() + i))
            .map(|i| from + i as u64)
    }

    fn rfind_newline(&self, from: u64, to: u64) -> Option<u64> {
        let (in_a, in_b) = self.parts(from, to);
        rfind_byte(in_b, b'\n')
            .map(|i| in_a.len() + i)
            .or_else(|| rfind_byte(in_a, b'\n'))
            .map(|i| from + i as u64)
    }

    /// `[from, to)` as one slice: borrowed, or copied into `scratch` if it straddles the
    /// ring's wrap point.
    fn contiguous<'s>(&'s self, from: u64, to: u64, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        match self.parts(from, to) {
            (only, []) | ([], only) => only,
            (in_a, in_b) => {
                scratch.clear();
                scratch.extend_from_slice(in_a);
                scratch.extend_from_slice(in_b);
                scratch
            }
        }
    }

    fn copy_to(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        let (in_a, in_b) = self.parts(from, to);
        out.extend_from_slice(in_a);
        out.extend_from_slice(in_b);
    }

    /// The first character boundary at or after `pos` (at most `end`).
    fn ceil_char_boundary(&self, mut pos: u64, end: u64) -> u64 {
        while pos < end && is_continuation(self.byte(pos)) {
            pos += 1;
        }
        pos
    }

    /// The last character boundary at or before `pos`; `pos` must be below the end.
    fn floor_char_boundary(&self, mut pos: u64) -> u64 {
        while pos > self.base && is_continuation(self.byte(pos)) {
            pos -= 1;
        }
        pos
    }
}

/// One read over `[begin, end)`, which starts at a character boundary and ends at a line
/// end or at the end of the buffer.
struct Scan<'w, 'r> {
    window: &'w Window<'w>,
    begin: u64,
    end: u64,
    filter: Option<&'r Regex>,
    max_bytes: usize,
}

impl Scan<'_, '_> {
    /// Whole lines from the start while they fit; pages on at the first line not returned.
    fn read_forward(&self) -> ReadResult {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let mut matched_lines = 0;
        let mut pos = self.begin;
        while pos < self.end {
            let (content_end, line_end) = self.line_from(pos);
            if self.matches(pos, content_end, &mut scratch) {
                let len = (line_end - pos) as usize;
                if out.len() + len > self.max_bytes {
                    let next_cursor = if out.is_empty() {
                        let cut = self.window.floor_char_boundary(pos + self.max_bytes as u64);
                        self.window.copy_to(pos, cut, &mut out);
                        matched_lines += 1;
                        cut
                    } else {
                        pos
                    };
                    return finish(out, next_cursor, true, matched_lines);
                }
                self.window.copy_to(pos, line_end, &mut out);
                matched_lines += 1;
            }
            pos = line_end;
        }
        finish(out, self.end, false, matched_lines)
    }

    /// The last `n` matching lines, newest kept when they do not all fit.
    fn read_tail(&self, n: usize) -> ReadResult {
        let mut scratch = Vec::new();
        // (from, to) of each selected line, newest first.
        let mut selected: Vec<(u64, u64)> = Vec::new();
        let mut used = 0;
        let mut truncated = false;
        let mut line_end = self.end;
        while line_end > self.begin && selected.len() < n {
            let content_end = if self.window.byte(line_end - 1) == b'\n' {
                line_end - 1
            } else {
                line_end
            };
            let line_start = self
                .window
                .rfind_newline(self.begin, content_end)
                .map_or(self.begin, |nl| nl + 1);
            if self.matches(line_start, content_end, &mut scratch) {
                let len = (line_end - line_start) as usize;
                if used + len > self.max_bytes {
                    truncated = true;
                    if selected.is_empty() {
                        let from = line_end - self.max_bytes as u64;
                        selected.push((self.window.ceil_char_boundary(from, line_end), line_end));
                    }
                    break;
                }
                used += len;
                selected.push((line_start, line_end));
            }
            line_end = line_start;
        }
        let mut out = Vec::with_capacity(used.min(self.max_bytes));
        for &(from, to) in selected.iter().rev() {
            self.window.copy_to(from, to, &mut out);
        }
        finish(out, self.end, truncated, selected.len())
    }

    /// The content end (before '\n') and the end (after '\n') of the line at `pos`.
    fn line_from(&self, pos: u64) -> (u64, u64) {
        match self.window.find_newline(pos, self.end) {
            Some(nl) => (nl, nl + 1),
            None => (self.end, self.end),
        }
    }

    fn matches(&self, from: u64, to: u64, scratch: &mut Vec<u8>) -> bool {
        let Some(filter) = self.filter else {
            return true;
        };
        let line = self.window.contiguous(from, to, scratch);
        match std::str::from_utf8(line) {
            Ok(text) => filter.is_match(text),
            // Unreachable while lines start and end at character boundaries; matching the
            // lossy text keeps a broken invariant from hiding output.
            Err(_) => filter.is_match(&String::from_utf8_lossy(line)),
        }
    }
}

fn finish(out: Vec<u8>, next_cursor: u64, truncated: bool, matched_lines: usize) -> ReadResult {
    let text = String::from_utf8(out)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
    ReadResult {
        text,
        next_cursor,
        dropped_bytes: 0,
        truncated,
        matched_lines,
    }
}

pub(super) fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

pub(super) fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn rfind_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().rposition(|&b| b == needle)
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
