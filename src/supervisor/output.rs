//! What the server keeps of an agent's output, one bounded store of each kind per agent,
//! one concept a file:
//! - `ring` — [`OutputBuffer`]: a ring buffer of the agent's readable transcript (UTF-8
//!   text lines), addressed by absolute byte cursors, read per line with an optional
//!   regex filter. It backs `agent_output` and the `agent://{id}/output` resource.
//! - `filter` — [`compile_filter`]: the bounded per-line regex a read may filter by.
//! - `transcript` — [`Transcript`]: the agent's full event stream, one JSON event per
//!   line, appended to a private file (0600 in a 0700 directory) up to a byte cap, so
//!   output evicted from the ring buffer is not lost; one shared writer thread writes
//!   every transcript, so the disk never stalls the caller.
//! - `stderr_tail` — [`StderrTail`]: the last bytes of the worker's stderr, for
//!   `agent_status`.
//!
//! This file holds only the error type they share ([`OutputError`]).
//!
//! It does not own reading the worker's pipes, parsing events into text, waiting for new
//! output, or deciding an agent's status: the manager does that and feeds these stores.

use std::io;
use std::path::PathBuf;

mod batching;
mod filter;
mod ring;
mod stderr_tail;
mod transcript;

pub use filter::{FILTER_SIZE_LIMIT, compile_filter};
pub use ring::{DEFAULT_BUFFER_CAPACITY, MAX_LINE, OutputBuffer, ReadRequest, ReadResult};
pub use stderr_tail::{DEFAULT_STDERR_TAIL, StderrTail};
pub use transcript::{
    DEFAULT_TRANSCRIPT_CAP, MAX_QUEUED_BYTES, MAX_QUEUED_TOTAL, Pruned, Transcript,
    ensure_private_dir, hold_transcript_writes, prune_transcripts,
};

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
