//! What the server keeps of an agent's output.
//!
//! This module owns three bounded stores, one of each per agent:
//! - [`OutputBuffer`]: a ring buffer of the agent's readable transcript (UTF-8 text lines),
//!   addressed by absolute byte cursors, read per line with an optional regex filter.
//!   It backs `agent_output` and the `agent://{id}/output` resource.
//! - [`Transcript`]: the agent's full event stream, one JSON event per line, appended to a
//!   file up to a byte cap, so output evicted from the ring buffer is not lost.
//! - [`StderrTail`]: the last bytes of the worker's stderr, for `agent_status`.
//!
//! It does not own reading the worker's pipes, parsing events into text, waiting for new
//! output, or deciding an agent's status: the manager does that and feeds these stores.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};

/// Default ring buffer capacity per agent.
pub const DEFAULT_BUFFER_CAPACITY: usize = 1024 * 1024;
/// Longest line the ring buffer stores, in bytes without its '\n'; longer lines are split.
pub const MAX_LINE: usize = 64 * 1024;
/// Default byte cap of a transcript file.
pub const DEFAULT_TRANSCRIPT_CAP: u64 = 64 * 1024 * 1024;
/// Default number of stderr bytes kept.
pub const DEFAULT_STDERR_TAIL: usize = 64 * 1024;
/// Limit on a compiled filter (regex `size_limit`, and its lazy DFA cache).
pub const FILTER_SIZE_LIMIT: usize = 1024 * 1024;

/// The widest UTF-8 character; a read returns at least this many bytes so paging with any
/// `max_bytes` always makes progress.
const MAX_CHAR_LEN: usize = 4;
/// How much of a pattern an error message quotes.
const QUOTED_PATTERN_CHARS: usize = 120;

/// A caller's mistake with output, or a transcript that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "filter is empty; pass a regex that matches the lines you want (e.g. `error|warn`), or omit the filter to read every line"
    )]
    EmptyFilter,
    #[error(
        "filter `{pattern}` is not a valid regex: {reason}; escape special characters or fix the pattern"
    )]
    BadFilter { pattern: String, reason: String },
    #[error(
        "filter `{pattern}` is too large: it compiles past the limit of {limit} bytes; use a shorter or simpler pattern (fewer alternations and repetitions)"
    )]
    FilterTooLarge { pattern: String, limit: usize },
    #[error(
        "agent id `{0}` cannot name a transcript file; use an id without path separators, NUL, or a leading '.'"
    )]
    BadAgentId(String),
    #[error(
        "cannot create transcript directory {}: {source}; point the transcript dir at a writable directory",
        path.display()
    )]
    TranscriptDir { path: PathBuf, source: io::Error },
    #[error(
        "cannot create transcript file {}: {source}; point the transcript dir at a writable directory",
        path.display()
    )]
    TranscriptFile { path: PathBuf, source: io::Error },
}

/// Compiles a per-line output filter, bounded so a hostile pattern cannot eat memory.
pub fn compile_filter(pattern: &str) -> Result<Regex, OutputError> {
    if pattern.is_empty() {
        return Err(OutputError::EmptyFilter);
    }
    RegexBuilder::new(pattern)
        .size_limit(FILTER_SIZE_LIMIT)
        .dfa_size_limit(FILTER_SIZE_LIMIT)
        .build()
        .map_err(|err| match err {
            regex::Error::CompiledTooBig(limit) => OutputError::FilterTooLarge {
                pattern: quote_pattern(pattern),
                limit,
            },
            regex::Error::Syntax(reason) => OutputError::BadFilter {
                pattern: quote_pattern(pattern),
                reason,
            },
            other => OutputError::BadFilter {
                pattern: quote_pattern(pattern),
                reason: other.to_string(),
            },
        })
}

/// Shortens a pattern for an error message; the caller still has the whole of it.
fn quote_pattern(pattern: &str) -> String {
    match pattern.char_indices().nth(QUOTED_PATTERN_CHARS) {
        Some((cut, _)) => format!("{}…", &pattern[..cut]),
        None => pattern.to_owned(),
    }
}

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

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn rfind_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    haystack.iter().rposition(|&b| b == needle)
}

/// An agent's full event stream, one JSON event per line, in `{agent_id}.jsonl`, up to a
/// byte cap. Write failures are recorded, never raised: output keeps flowing to the ring
/// buffer and the counts say what the file is missing.
#[derive(Debug)]
pub struct Transcript {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    cap_bytes: u64,
    written: u64,
    dropped: u64,
    capped: bool,
    error: Option<String>,
}

impl Transcript {
    /// Creates `dir/{agent_id}.jsonl` (0600, new: an existing file or symlink there is an
    /// error), creating `dir` (0700) if missing. Agent ids must be unique within `dir`.
    pub fn create(dir: &Path, agent_id: &str, cap_bytes: u64) -> Result<Transcript, OutputError> {
        let bad_id = agent_id.is_empty()
            || agent_id.starts_with('.')
            || agent_id.contains(['/', '\\', '\0']);
        if bad_id {
            return Err(OutputError::BadAgentId(agent_id.to_owned()));
        }
        ensure_private_dir(dir).map_err(|source| OutputError::TranscriptDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(format!("{agent_id}.jsonl"));
        let file = create_private_file(&path).map_err(|source| OutputError::TranscriptFile {
            path: path.clone(),
            source,
        })?;
        Ok(Self::with_file(path, file, cap_bytes))
    }

    fn with_file(path: PathBuf, file: File, cap_bytes: u64) -> Self {
        Self {
            path,
            writer: Some(BufWriter::new(file)),
            cap_bytes,
            written: 0,
            dropped: 0,
            capped: false,
            error: None,
        }
    }

    /// Appends `line` and a '\n'; `line` is one serialized event and holds no '\n'.
    /// Once a line would pass the cap, writes one `transcript_truncated` marker and from
    /// then on only counts dropped bytes.
    pub fn append_line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.capped || self.writer.is_none() {
            self.dropped += len;
            return;
        }
        if self.written + len > self.cap_bytes {
            self.capped = true;
            self.dropped += len;
            let marker = format!(
                "{{\"type\":\"transcript_truncated\",\"cap_bytes\":{}}}\n",
                self.cap_bytes
            );
            if self.write(marker.as_bytes()) {
                self.written += marker.len() as u64;
            }
            return;
        }
        if self.write(line.as_bytes()) && self.write(b"\n") {
            self.written += len;
        } else {
            self.dropped += len;
        }
    }

    /// Writes buffered lines to the file; a failure is recorded like a write failure.
    pub fn flush(&mut self) {
        if let Some(writer) = self.writer.as_mut()
            && let Err(err) = writer.flush()
        {
            self.fail(&err);
        }
    }

    /// Flushes and closes the file once the agent has ended, so an ended agent holds no
    /// file descriptor; later lines are counted as dropped.
    pub fn close(&mut self) {
        self.flush();
        self.writer = None;
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        let Some(writer) = self.writer.as_mut() else {
            return false;
        };
        match writer.write_all(bytes) {
            Ok(()) => true,
            Err(err) => {
                self.fail(&err);
                false
            }
        }
    }

    fn fail(&mut self, err: &io::Error) {
        self.error = Some(format!(
            "writing transcript {} failed: {err}; later events were not saved",
            self.path.display()
        ));
        self.writer = None;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes handed to the file, including the truncation marker.
    pub fn written_bytes(&self) -> u64 {
        self.written
    }

    /// Bytes of lines not saved: past the cap, or after a write error.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Whether a line went past the cap: the agent wrote more than the transcript keeps.
    /// Lines dropped after a write error (a full disk) or after `close` do not count.
    pub fn over_cap(&self) -> bool {
        self.capped
    }

    /// The write error that stopped the transcript, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// Makes `dir` a directory only this user can use: created 0700 if missing (its missing
/// parents too); an existing one must be a real directory (not a symlink) owned by this
/// user, and loses any group or other permissions. Independent of the umask.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    check_owned_dir(dir, &meta)?;
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Refuses a directory another user could have planted: a symlink, or one not owned by
/// this user.
fn check_owned_dir(dir: &Path, meta: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is a symlink or not a directory; refused, so transcripts cannot be redirected",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "{} belongs to user id {}, not to you (user id {me}); refused, so other users cannot read or redirect transcripts",
            dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// A new file that only this user can read: 0600 whatever the umask, never through a
/// symlink, never an existing file.
fn create_private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

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

    fn read_all(buf: &OutputBuffer) -> ReadResult {
        buf.read(&ReadRequest::default())
    }

    fn read_since(buf: &OutputBuffer, since: u64) -> ReadResult {
        buf.read(&ReadRequest {
            since: Some(since),
            ..ReadRequest::default()
        })
    }

    #[test]
    fn cursors_stay_absolute_across_wrap_around() {
        let mut buf = OutputBuffer::new(16);
        buf.push("0123456789\n");
        buf.push("abcdefghij\n");
        assert_eq!(
            (buf.start_cursor(), buf.end_cursor(), buf.len()),
            (6, 22, 16)
        );

        let from_start = read_all(&buf);
        assert_eq!(from_start.text, "abcdefghij\n");
        assert_eq!(from_start.next_cursor, 22);

        let inside = read_since(&buf, 8);
        assert_eq!(inside.text, "89\nabcdefghij\n");
        assert_eq!(inside.dropped_bytes, 0);

        buf.push("xy\n");
        assert_eq!((buf.start_cursor(), buf.end_cursor()), (9, 25));
        let later = read_since(&buf, 22);
        assert_eq!(later.text, "xy\n");
        assert_eq!(later.next_cursor, 25);
        assert_eq!(read_since(&buf, 25).text, "");
    }

    #[test]
    fn since_before_the_window_counts_evicted_bytes_as_dropped() {
        let mut buf = OutputBuffer::new(8);
        for line in ["ab1\n", "ab2\n", "ab3\n", "ab4\n", "ab5\n"] {
            buf.push(line);
        }
        assert_eq!(buf.start_cursor(), 12);

        let stale = read_since(&buf, 5);
        assert_eq!(stale.text, "ab4\nab5\n");
        assert_eq!(stale.dropped_bytes, 7);

        let from_start = read_all(&buf);
        assert_eq!(from_start.dropped_bytes, 12);
        assert_eq!(read_since(&buf, 12).dropped_bytes, 0);
    }

    #[test]
    fn a_zero_capacity_buffer_keeps_nothing_and_counts_it_dropped() {
        let mut buf = OutputBuffer::new(0);
        buf.push("abc\n");
        let result = read_all(&buf);
        assert_eq!((result.text.as_str(), result.next_cursor), ("", 4));
        assert_eq!(result.dropped_bytes, 4);
    }

    #[test]
    fn eviction_mid_line_reads_from_the_next_line_and_counts_the_cut_as_dropped() {
        let mut buf = OutputBuffer::new(10);
        buf.push("hello world\nok\n");
        assert_eq!(buf.start_cursor(), 5);

        let from_start = read_all(&buf);
        assert_eq!(from_start.text, "ok\n");
        assert_eq!(from_start.dropped_bytes, 12);

        assert_eq!(read_since(&buf, 2).dropped_bytes, 10);

        // A caller who already read up to the cut loses nothing.
        let at_cut = read_since(&buf, 5);
        assert_eq!(at_cut.text, " world\nok\n");
        assert_eq!(at_cut.dropped_bytes, 0);
    }

    #[test]
    fn eviction_mid_character_reads_from_the_next_character() {
        let mut buf = OutputBuffer::new(5);
        buf.push("ééé");
        assert_eq!(buf.start_cursor(), 1);

        let result = read_all(&buf);
        assert_eq!(result.text, "éé");
        assert_eq!(result.dropped_bytes, 2);
        assert_eq!(result.next_cursor, 6);
    }

    #[test]
    fn filter_matches_each_line_including_one_straddling_the_wrap_point() {
        let mut buf = OutputBuffer::new(32);
        // Cursors 0..32 fill the ring; "needle" then covers cursor 64, where it wraps.
        buf.push(&format!("{}\n", "x".repeat(31)));
        buf.push("zzzzzzz\n");
        buf.push("yyyyyyyyyyy\n");
        buf.push("0123456789needle789\n");
        assert_eq!(buf.start_cursor(), 40);
        let (a, b) = buf.buf.as_slices();
        let straddles = |part: &[u8]| !part.windows(6).any(|w| w == b"needle");
        assert!(
            !a.is_empty() && !b.is_empty(),
            "the ring should have wrapped"
        );
        assert!(
            straddles(a) && straddles(b),
            "the line should straddle the wrap"
        );

        let needle = compile_filter("^0123.*needle.*789$").unwrap();
        let result = buf.read(&ReadRequest {
            filter: Some(&needle),
            ..ReadRequest::default()
        });
        assert_eq!(result.text, "0123456789needle789\n");
        assert_eq!(result.matched_lines, 1);
        assert_eq!(result.next_cursor, buf.end_cursor());

        let ys = compile_filter("^y+$").unwrap();
        let result = buf.read(&ReadRequest {
            filter: Some(&ys),
            ..ReadRequest::default()
        });
        assert_eq!(result.text, "yyyyyyyyyyy\n");
    }

    #[test]
    fn filter_skips_non_matching_lines_and_still_advances_the_cursor() {
        let mut buf = OutputBuffer::new(1024);
        buf.push("info: a\nerror: b\ninfo: c\n");
        let errors = compile_filter("^error").unwrap();
        let result = buf.read(&ReadRequest {
            filter: Some(&errors),
            include_partial: false,
            ..ReadRequest::default()
        });
        assert_eq!(result.text, "error: b\n");
        assert_eq!(result.matched_lines, 1);
        assert_eq!(result.next_cursor, buf.end_cursor());
        assert!(!result.truncated);
    }

    #[test]
    fn tail_lines_returns_the_last_lines_with_and_without_a_filter() {
        let mut buf = OutputBuffer::new(1024);
        buf.push("1\n2\n3\n4\n5\n6");
        let last_two = |filter, include_partial| {
            buf.read(&ReadRequest {
                filter,
                tail_lines: Some(2),
                include_partial,
                ..ReadRequest::default()
            })
        };

        let result = last_two(None, false);
        assert_eq!(result.text, "4\n5\n");
        assert_eq!(result.next_cursor, 10);
        assert_eq!(result.matched_lines, 2);
        assert_eq!(last_two(None, true).text, "5\n6");

        let odd = compile_filter("[135]").unwrap();
        let result = last_two(Some(&odd), false);
        assert_eq!(result.text, "3\n5\n");
        assert_eq!(result.matched_lines, 2);

        let everything = buf.read(&ReadRequest {
            tail_lines: Some(100),
            ..ReadRequest::default()
        });
        assert_eq!(everything.text, "1\n2\n3\n4\n5\n6");
    }

    #[test]
    fn tail_lines_over_max_bytes_keeps_the_newest_lines() {
        let mut buf = OutputBuffer::new(1024);
        buf.push("aaaa\nbbbb\ncccc\n");
        let tail = |max_bytes| {
            buf.read(&ReadRequest {
                tail_lines: Some(3),
                max_bytes,
                ..ReadRequest::default()
            })
        };

        let result = tail(12);
        assert_eq!(result.text, "bbbb\ncccc\n");
        assert!(result.truncated);
        assert_eq!(result.next_cursor, 15);

        let result = tail(4);
        assert_eq!(result.text, "ccc\n");
        assert!(result.truncated);
        assert_eq!(result.matched_lines, 1);
    }

    fn sample_text() -> String {
        let mut text = String::new();
        for i in 0..40 {
            match i % 5 {
                0 => text.push('\n'),
                1 => text.push_str(&format!("line {i} with é and 🦀\n")),
                2 => text.push_str(&format!("{}\n", "🦀é".repeat(i))),
                3 => text.push_str(&format!("error {i}\n")),
                _ => text.push_str(&format!("{}\n", "a".repeat(3 * i))),
            }
        }
        text.push_str("trailing é");
        text
    }

    fn page_through(buf: &OutputBuffer, filter: Option<&Regex>, max_bytes: usize) -> String {
        let mut since = 0;
        let mut pages = String::new();
        loop {
            let page = buf.read(&ReadRequest {
                since: Some(since),
                filter,
                max_bytes,
                ..ReadRequest::default()
            });
            assert!(page.text.len() <= max_bytes.max(4), "cap {max_bytes}");
            assert_eq!(page.dropped_bytes, 0);
            pages.push_str(&page.text);
            if !page.truncated {
                assert_eq!(page.next_cursor, buf.end_cursor());
                return pages;
            }
            assert!(
                page.next_cursor > since,
                "paging must progress at cap {max_bytes}"
            );
            since = page.next_cursor;
        }
    }

    #[test]
    fn paging_with_max_bytes_reassembles_exactly_the_original_text() {
        let text = sample_text();
        // Pushed in odd pieces through a ring that has wrapped before.
        let mut buf = OutputBuffer::new(text.len() + 7);
        buf.push(&"z".repeat(text.len() / 2));
        let offset = buf.end_cursor();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let cut = floor_char_boundary(rest, 37);
            let cut = if cut == 0 { rest.len().min(4) } else { cut };
            buf.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        for max_bytes in [0, 1, 2, 3, 4, 5, 7, 16, 33, 100, 1000, usize::MAX] {
            let mut since = offset;
            let mut pages = String::new();
            loop {
                let page = buf.read(&ReadRequest {
                    since: Some(since),
                    max_bytes,
                    ..ReadRequest::default()
                });
                assert!(page.text.len() <= max_bytes.max(4));
                pages.push_str(&page.text);
                if !page.truncated {
                    break;
                }
                assert!(page.next_cursor > since);
                since = page.next_cursor;
            }
            assert_eq!(pages, text, "cap {max_bytes}");
        }
    }

    #[test]
    fn paging_a_filtered_read_returns_every_matching_line_once() {
        let mut buf = OutputBuffer::new(1 << 16);
        let text = sample_text();
        buf.push(&text);
        let filter = compile_filter("é|error").unwrap();
        let expected: String = text
            .split_inclusive('\n')
            .filter(|line| filter.is_match(line.trim_end_matches('\n')))
            .collect();
        let longest = text.split_inclusive('\n').map(str::len).max().unwrap();
        for max_bytes in [longest, longest + 1, 200, usize::MAX] {
            assert_eq!(page_through(&buf, Some(&filter), max_bytes), expected);
        }
        for max_bytes in [1, 10, 64] {
            assert_eq!(page_through(&buf, None, max_bytes), text);
        }
    }

    #[test]
    fn max_bytes_returns_whole_lines_then_cuts_a_first_line_that_does_not_fit() {
        let mut buf = OutputBuffer::new(1024);
        buf.push("abc\ndefgh\n");
        let read = |since, max_bytes| {
            buf.read(&ReadRequest {
                since: Some(since),
                max_bytes,
                ..ReadRequest::default()
            })
        };

        let first = read(0, 8);
        assert_eq!((first.text.as_str(), first.next_cursor), ("abc\n", 4));
        assert!(first.truncated);

        let cut = read(4, 4);
        assert_eq!((cut.text.as_str(), cut.next_cursor), ("defg", 8));
        assert!(cut.truncated);

        let rest = read(8, 4);
        assert_eq!((rest.text.as_str(), rest.next_cursor), ("h\n", 10));
        assert!(!rest.truncated);
    }

    #[test]
    fn reading_is_idempotent_for_a_cursor() {
        let mut buf = OutputBuffer::new(64);
        buf.push(&sample_text());
        let filter = compile_filter("a").unwrap();
        let requests = [
            ReadRequest::default(),
            ReadRequest {
                since: Some(buf.start_cursor() + 3),
                filter: Some(&filter),
                max_bytes: 10,
                include_partial: false,
                ..ReadRequest::default()
            },
            ReadRequest {
                tail_lines: Some(2),
                max_bytes: 5,
                ..ReadRequest::default()
            },
        ];
        for req in &requests {
            assert_eq!(buf.read(req), buf.read(req));
        }
    }

    #[test]
    fn a_partial_line_is_held_back_unless_include_partial() {
        let mut buf = OutputBuffer::new(1024);
        buf.push("done\nwork");
        let read = |since, include_partial| {
            buf.read(&ReadRequest {
                since: Some(since),
                include_partial,
                ..ReadRequest::default()
            })
        };

        let held = read(0, false);
        assert_eq!((held.text.as_str(), held.next_cursor), ("done\n", 5));
        let whole = read(0, true);
        assert_eq!((whole.text.as_str(), whole.next_cursor), ("done\nwork", 9));

        buf.push("ing\n");
        let read = |since| read_since(&buf, since).text;
        assert_eq!(read(5), "working\n");
        assert_eq!(read(9), "ing\n");
    }

    #[test]
    fn lines_longer_than_max_line_are_split_across_pushes() {
        let mut buf = OutputBuffer::default();
        buf.push(&"a".repeat(MAX_LINE - 5));
        buf.push(&"a".repeat(15));
        buf.push("\n");
        buf.push(&format!("{}\n", "b".repeat(MAX_LINE)));
        buf.push(&format!("{}é\n", "c".repeat(MAX_LINE - 1)));

        let text = read_all(&buf).text;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let expected = [
            format!("{}\n", "a".repeat(MAX_LINE)),
            format!("{}\n", "a".repeat(10)),
            format!("{}\n", "b".repeat(MAX_LINE)),
            format!("{}\n", "c".repeat(MAX_LINE - 1)),
            "é\n".to_owned(),
        ];
        assert_eq!(lines, expected);
        assert_eq!(buf.end_cursor(), text.len() as u64);
    }

    #[test]
    fn a_bad_regex_error_quotes_the_pattern_and_the_parse_error() {
        let message = compile_filter("(").unwrap_err().to_string();
        assert!(
            message.starts_with("filter `(` is not a valid regex: "),
            "{message}"
        );
        assert!(message.contains("unclosed group"), "{message}");
        assert!(message.contains("escape special characters"), "{message}");

        let empty = compile_filter("").unwrap_err();
        assert!(matches!(empty, OutputError::EmptyFilter));

        let huge = compile_filter(r"\w{1000}{1000}").unwrap_err();
        assert!(matches!(huge, OutputError::FilterTooLarge { .. }), "{huge}");
        assert!(huge.to_string().contains("1048576"), "{huge}");
    }

    #[test]
    fn transcript_stops_at_its_cap_with_one_marker_and_counts_dropped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut transcript = Transcript::create(&dir.path().join("t"), "agent-1", 20).unwrap();
        transcript.append_line("0123456789");
        transcript.append_line("abcdefghi");
        transcript.append_line("x");
        transcript.flush();

        let marker = "{\"type\":\"transcript_truncated\",\"cap_bytes\":20}\n";
        let written = fs::read_to_string(transcript.path()).unwrap();
        assert_eq!(written, format!("0123456789\n{marker}"));
        assert_eq!(transcript.written_bytes(), written.len() as u64);
        assert_eq!(transcript.dropped_bytes(), 12);
        assert_eq!(transcript.error(), None);
        assert_eq!(
            transcript.path(),
            dir.path().join("t").join("agent-1.jsonl")
        );
    }

    #[test]
    fn transcript_in_an_unwritable_dir_is_an_error_naming_the_path() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let dir = file.path().join("sub");
        let err = Transcript::create(&dir, "agent-1", 1024).unwrap_err();
        assert!(matches!(err, OutputError::TranscriptDir { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn transcript_refuses_an_agent_id_that_is_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Transcript::create(dir.path(), "../escape", 1024).unwrap_err();
        assert!(matches!(err, OutputError::BadAgentId(_)), "{err}");
    }

    #[test]
    fn transcript_write_error_is_recorded_and_later_bytes_count_as_dropped() {
        let Ok(full) = File::options().write(true).open("/dev/full") else {
            return; // No /dev/full on this system.
        };
        let mut transcript = Transcript::with_file(PathBuf::from("/dev/full"), full, 1 << 20);
        let line = "x".repeat(10_000);
        transcript.append_line(&line);
        transcript.append_line("after");
        transcript.flush();

        let error = transcript.error().unwrap();
        assert!(error.contains("/dev/full"), "{error}");
        assert_eq!(transcript.written_bytes(), 0);
        assert_eq!(transcript.dropped_bytes(), 10_001 + 6);
    }

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
