//! The transcript file of one agent ([`Transcript`]): its full event stream, one
//! [`TranscriptLine`] per line (the worker's events, and the server's notes: raw lines,
//! the truncation marker), up to a byte cap, and the privacy of where it lives (0600
//! files in a 0700 directory owned by this user, never through a symlink).
//!
//! Every transcript of the server is written by one shared writer thread, started on
//! first use and fed by one channel of (transcript id, line | flush | close) messages,
//! which wakes it for a line only every `GATHER_LINES` (`batching`); it owns the open
//! files. Callers (the runtime thread, under the registry lock) only
//! hand bytes over, so a slow or full disk never stalls them. Bytes waiting for the
//! writer are bounded (per transcript and in all); past the bound lines are left out,
//! counted as dropped and told as the transcript's error.
//!
//! Not here: the readable text (`ring`), deciding what a dropped byte means for the
//! agent (the manager).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bg_agent_worker::protocol::TranscriptLine;
use tokio::sync::oneshot;

use super::OutputError;
use super::batching::{self, Receiver, Sender};
use crate::private_fs::create_private_file;
pub use crate::private_fs::ensure_private_dir;

/// Default byte cap of a transcript file.
pub const DEFAULT_TRANSCRIPT_CAP: u64 = 64 * 1024 * 1024;

/// Most bytes of one transcript's lines handed to the writer and not yet written: past
/// it (the disk is slower than the agent's output), its lines are left out and counted
/// as dropped.
pub const MAX_QUEUED_BYTES: u64 = 16 * 1024 * 1024;

/// Most bytes of all transcripts' lines waiting for the writer, so many agents cannot
/// together queue without bound behind a slow disk.
pub const MAX_QUEUED_TOTAL: u64 = 64 * 1024 * 1024;

/// Bytes of all transcripts handed to the writer and not yet written.
static QUEUED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Names transcripts on the writer's channel.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Held while a transcript file is created (`Transcript::create`).
static CREATING: Mutex<()> = Mutex::new(());

/// The shared writer's channel; None until first use, or after its thread died.
static WRITER: Mutex<Option<Sender<Msg>>> = Mutex::new(None);

/// An agent's full event stream, one [`TranscriptLine`] per line, in `{agent_id}.jsonl`, up to a
/// byte cap. The file is written by the shared writer thread, never by the caller.
/// Write failures are recorded, never raised: output keeps flowing to the ring buffer
/// and the counts say what the file is missing.
#[derive(Debug)]
pub struct Transcript {
    path: PathBuf,
    id: u64,
    /// The writer's channel; None once closed.
    writer: Option<Sender<Msg>>,
    /// Fires (its sender is dropped) when the writer has flushed and closed the file.
    done: Option<oneshot::Receiver<()>>,
    shared: Arc<WriterState>,
    cap_bytes: u64,
    /// Bytes handed to the writer, counted against the cap.
    accepted: u64,
    /// Bytes left out on this side: past the cap, after close, or the writer behind.
    dropped: u64,
    capped: bool,
}

/// What the writer tells one transcript.
#[derive(Debug, Default)]
struct WriterState {
    written: AtomicU64,
    /// Bytes the writer could not write (after a write error).
    dropped: AtomicU64,
    /// Bytes handed over and not yet written.
    queued: AtomicU64,
    error: Mutex<Option<String>>,
}

impl WriterState {
    fn fail(&self, message: String) {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        error.get_or_insert(message);
    }
}

/// A message to the shared writer about transcript `id`.
#[derive(Debug)]
enum Msg {
    Open {
        id: u64,
        path: PathBuf,
        file: File,
        state: Arc<WriterState>,
        done: oneshot::Sender<()>,
    },
    /// One line with its '\n'.
    Line(u64, Vec<u8>),
    Flush(u64),
    /// Write what was given, flush, close the file, then drop `done`.
    Close(u64),
    /// Flush, then answer: the writer has caught up.
    #[cfg(test)]
    Settle(u64, std::sync::mpsc::Sender<()>),
}

/// Taken by the writer thread before each message: a test holds it to stand for a disk
/// that does not answer. Uncontended (a few nanoseconds) otherwise.
static WRITE_GATE: Mutex<()> = Mutex::new(());

/// Holds every transcript write until the guard is dropped, as a stalled disk would.
/// For tests.
#[doc(hidden)]
pub fn hold_transcript_writes() -> std::sync::MutexGuard<'static, ()> {
    WRITE_GATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands `open` to the shared writer, starting its thread if it is not running.
fn open_in_writer(open: Msg) -> io::Result<Sender<Msg>> {
    let mut slot = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    let open = match slot.as_ref() {
        Some(tx) => match tx.send(open, true) {
            Ok(()) => return Ok(tx.clone()),
            // Its thread is gone (it panicked): start another.
            Err(open) => open,
        },
        None => open,
    };
    let (tx, rx) = batching::channel(GATHER_LINES);
    std::thread::Builder::new()
        .name("transcripts".into())
        .spawn(move || write_transcripts(&rx))?;
    tx.send(open, true)
        .map_err(|_| io::Error::other("the transcript writer thread exited at once"))?;
    *slot = Some(tx.clone());
    Ok(tx)
}

impl Transcript {
    /// Creates `dir/{agent_id}.jsonl` (0600, new: an existing file or symlink there is an
    /// error), creating `dir` (0700) if missing, and hands the file to the shared writer.
    /// Agent ids must be unique within `dir`. Blocks on the file system: call it off the
    /// runtime.
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
        // One create at a time: the kernel serializes creates in a directory anyway (its
        // inode lock), and blocking threads waiting for it spin on that lock, burning
        // CPU, while a waiter on this mutex sleeps. With 1,000 spawns at once on ext4,
        // that spinning was a fifth of the blocking threads' time.
        let created = {
            let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
            create_private_file(&path)
        };
        let file = created.map_err(|source| OutputError::TranscriptFile {
            path: path.clone(),
            source,
        })?;
        Self::with_file(path.clone(), file, cap_bytes)
            .map_err(|source| OutputError::TranscriptFile { path, source })
    }

    fn with_file(path: PathBuf, file: File, cap_bytes: u64) -> io::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done) = oneshot::channel();
        let shared = Arc::new(WriterState::default());
        let writer = open_in_writer(Msg::Open {
            id,
            path: path.clone(),
            file,
            state: Arc::clone(&shared),
            done: done_tx,
        })?;
        Ok(Self {
            path,
            id,
            writer: Some(writer),
            done: Some(done),
            shared,
            cap_bytes,
            accepted: 0,
            dropped: 0,
            capped: false,
        })
    }

    /// Appends a worker stdout line that is not an event, kept whole as a
    /// [`TranscriptLine::Raw`].
    pub fn append_raw(&mut self, line: &str) {
        let raw = TranscriptLine::Raw {
            line: line.to_owned(),
        };
        self.append_line(&raw.to_json_line());
    }

    /// Appends `line` and a '\n'; `line` is one [`TranscriptLine`] (a worker's event line
    /// as it came, which is its JSON) and holds no '\n'. Once a line would pass the cap,
    /// writes one [`TranscriptLine::Truncated`] marker and from then on only counts
    /// dropped bytes. Never waits for the disk.
    pub fn append_line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.capped || self.writer.is_none() {
            self.dropped += len;
            return;
        }
        if self.accepted + len > self.cap_bytes {
            self.capped = true;
            self.dropped += len;
            let mut marker = TranscriptLine::Truncated {
                cap_bytes: self.cap_bytes,
            }
            .to_json_line();
            marker.push('\n');
            self.hand_over(marker.into_bytes());
            return;
        }
        let queued = self.shared.queued.load(Ordering::Acquire);
        let total = QUEUED_TOTAL.load(Ordering::Acquire);
        // A line longer than a bound still goes when nothing waits before it.
        if (queued > 0 && queued + len > MAX_QUEUED_BYTES)
            || (total > 0 && total + len > MAX_QUEUED_TOTAL)
        {
            self.dropped += len;
            self.shared.fail(format!(
                "writing transcript {} fell behind: more than {} bytes waited for the disk, so lines were left out",
                self.path.display(),
                if queued + len > MAX_QUEUED_BYTES { MAX_QUEUED_BYTES } else { MAX_QUEUED_TOTAL }
            ));
            return;
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.hand_over(bytes);
    }

    /// Opens a closed transcript again to append an agent's next round (`agent_send`),
    /// never through a symlink, and hands it to the shared writer; a transcript that is
    /// open, capped or failed stays as it is (what it misses stays counted). One open(2):
    /// call it off the registry lock where possible.
    pub fn reopen(&mut self) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.writer.is_some() || self.capped || self.error().is_some() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&self.path)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done) = oneshot::channel();
        let writer = open_in_writer(Msg::Open {
            id,
            path: self.path.clone(),
            file,
            state: Arc::clone(&self.shared),
            done: done_tx,
        })?;
        self.id = id;
        self.writer = Some(writer);
        self.done = Some(done);
        Ok(())
    }

    fn hand_over(&mut self, bytes: Vec<u8>) {
        let len = bytes.len() as u64;
        let Some(writer) = self.writer.as_ref() else {
            self.dropped += len;
            return;
        };
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        QUEUED_TOTAL.fetch_add(len, Ordering::AcqRel);
        if writer.send(Msg::Line(self.id, bytes), false).is_ok() {
            self.accepted += len;
        } else {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            QUEUED_TOTAL.fetch_sub(len, Ordering::AcqRel);
            self.dropped += len;
            self.shared.fail(format!(
                "writing transcript {} failed: its writer thread is gone; later events were not saved",
                self.path.display()
            ));
        }
    }

    /// Asks the writer to write buffered lines to the file; a failure is recorded like
    /// a write failure.
    pub fn flush(&mut self) {
        if let Some(writer) = self.writer.as_ref() {
            let _ = writer.send(Msg::Flush(self.id), true);
        }
    }

    /// Ends the file once the agent has ended, so an ended agent holds no file
    /// descriptor; later lines are counted as dropped. The writer writes what it was
    /// given, flushes and closes the file; the receiver (only from the first call) fires
    /// then (also when the writer is gone).
    pub fn close(&mut self) -> Option<oneshot::Receiver<()>> {
        if let Some(writer) = self.writer.take() {
            let _ = writer.send(Msg::Close(self.id), true);
        }
        self.done.take()
    }

    /// Waits until the writer has written and flushed everything handed to it.
    #[cfg(test)]
    fn settle(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(writer) = self.writer.as_ref()
            && writer.send(Msg::Settle(self.id, tx), true).is_ok()
        {
            let _ = rx.recv();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written to the file, including the truncation marker.
    pub fn written_bytes(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Bytes of lines not saved: past the cap, after a write error, or left out while
    /// the writer was behind.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped + self.shared.dropped.load(Ordering::Acquire)
    }

    /// Whether a line went past the cap: the agent wrote more than the transcript keeps.
    /// Lines dropped after a write error (a full disk) or after `close` do not count.
    pub fn over_cap(&self) -> bool {
        self.capped
    }

    /// Why lines are missing from the file for a reason other than the cap, if any: a
    /// write error, or a writer that fell behind.
    pub fn error(&self) -> Option<String> {
        self.shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Transcript {
    /// A transcript dropped unclosed (its record evicted, a start that failed) still has
    /// its file closed by the writer.
    fn drop(&mut self) {
        drop(self.close());
    }
}

/// One open transcript file, owned by the writer thread.
struct Open {
    path: PathBuf,
    /// None after a write error: later lines are only counted.
    file: Option<BufWriter<File>>,
    state: Arc<WriterState>,
    /// Dropped once the file is closed: the transcript's `close` receiver fires.
    _done: oneshot::Sender<()>,
}

impl Open {
    fn write(&mut self, bytes: &[u8]) {
        let len = bytes.len() as u64;
        match self.file.as_mut().map(|w| w.write_all(bytes)) {
            Some(Ok(())) => {
                self.state.written.fetch_add(len, Ordering::AcqRel);
            }
            Some(Err(err)) => {
                self.fail(&err);
                self.state.dropped.fetch_add(len, Ordering::AcqRel);
            }
            None => {
                self.state.dropped.fetch_add(len, Ordering::AcqRel);
            }
        }
        self.state.queued.fetch_sub(len, Ordering::AcqRel);
        QUEUED_TOTAL.fetch_sub(len, Ordering::AcqRel);
    }

    fn flush(&mut self) {
        if let Some(Err(err)) = self.file.as_mut().map(BufWriter::flush) {
            self.fail(&err);
        }
    }

    fn fail(&mut self, err: &io::Error) {
        self.state.fail(format!(
            "writing transcript {} failed: {err}; later events were not saved",
            self.path.display()
        ));
        self.file = None;
    }
}

/// How long a written line may wait in a buffer before it is on disk: what status
/// reports of a streaming turn is on disk too within about this.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How long lines handed over wait for others before the writer takes them (opening,
/// flushing and closing a transcript are taken at once): one wake-up of the writer per
/// batch, not per line. Well within `FLUSH_EVERY`.
const GATHER_LINES: Duration = Duration::from_millis(20);

/// How long the writer sleeps when no transcript has lines to flush.
const IDLE: Duration = Duration::from_secs(3600);

/// The shared writer thread: writes each transcript's lines in order, flushes when
/// asked and at least every `FLUSH_EVERY` while lines come, closes a file when its
/// transcript is closed. Runs as long as the server.
fn write_transcripts(messages: &Receiver<Msg>) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    // Transcripts with lines written since their last flush.
    let mut dirty: HashSet<u64> = HashSet::new();
    let mut flushed_at = Instant::now();
    loop {
        let wait = if dirty.is_empty() {
            IDLE
        } else {
            FLUSH_EVERY.saturating_sub(flushed_at.elapsed())
        };
        let batch = messages.recv_batch(wait);
        if flushed_at.elapsed() >= FLUSH_EVERY {
            drop(hold_transcript_writes());
            for id in dirty.drain() {
                if let Some(t) = open.get_mut(&id) {
                    t.flush();
                }
            }
            flushed_at = Instant::now();
        }
        for msg in batch {
            drop(hold_transcript_writes());
            handle(msg, &mut open, &mut dirty);
        }
    }
}

/// One message to the writer: what it does to the open files.
fn handle(msg: Msg, open: &mut HashMap<u64, Open>, dirty: &mut HashSet<u64>) {
    match msg {
        Msg::Open {
            id,
            path,
            file,
            state,
            done,
        } => {
            open.insert(
                id,
                Open {
                    path,
                    file: Some(BufWriter::new(file)),
                    state,
                    _done: done,
                },
            );
        }
        Msg::Line(id, bytes) => {
            if let Some(t) = open.get_mut(&id) {
                t.write(&bytes);
                dirty.insert(id);
            }
        }
        Msg::Flush(id) => {
            if let Some(t) = open.get_mut(&id) {
                t.flush();
            }
        }
        Msg::Close(id) => {
            if let Some(mut t) = open.remove(&id) {
                t.flush();
            }
        }
        #[cfg(test)]
        Msg::Settle(id, answer) => {
            if let Some(t) = open.get_mut(&id) {
                t.flush();
            }
            let _ = answer.send(());
        }
    }
}

/// What a retention sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub transcripts: usize,
    pub sessions: usize,
}

/// Applies `[server] transcript_retention_days`: removes the transcripts under `base`
/// (the directory that holds every session's) last written more than `keep` before
/// `now`, and session directories left empty and as old. Only `session-*` directories
/// and their `*.jsonl` files are touched, never through a symlink, and only when `base`
/// is a private directory of this user. A running server's transcripts are written to,
/// so they are recent; one that was removed is made anew at its next start.
pub fn prune_transcripts(base: &Path, keep: Duration, now: SystemTime) -> io::Result<Pruned> {
    let mut pruned = Pruned::default();
    if std::fs::symlink_metadata(base).is_err() {
        return Ok(pruned);
    }
    crate::private_fs::check_private_dir(base)?;
    let Some(cutoff) = now.checked_sub(keep) else {
        return Ok(pruned);
    };
    let older = |meta: &std::fs::Metadata| meta.modified().is_ok_and(|t| t < cutoff);
    for session in std::fs::read_dir(base)?.filter_map(Result::ok) {
        let name = session.file_name();
        let Ok(meta) = std::fs::symlink_metadata(session.path()) else {
            continue;
        };
        if !name.to_string_lossy().starts_with("session-") || !meta.is_dir() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(session.path()) else {
            continue;
        };
        let mut emptied = older(&meta);
        for file in files.filter_map(Result::ok) {
            let path = file.path();
            let old_transcript = path.extension().is_some_and(|e| e == "jsonl")
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && older(&m));
            if old_transcript && std::fs::remove_file(&path).is_ok() {
                pruned.transcripts += 1;
                emptied = true;
            }
        }
        // Only an empty directory goes (remove_dir refuses any other); one whose last
        // transcripts just went, or that was old and empty already.
        if emptied && std::fs::remove_dir(session.path()).is_ok() {
            pruned.sessions += 1;
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn age(path: &Path, days: u64) {
        let then = SystemTime::now() - Duration::from_secs(days * 86_400);
        let f = fs::File::options().read(true).open(path).unwrap();
        f.set_modified(then).unwrap();
    }

    #[test]
    fn retention_removes_old_transcripts_and_their_empty_sessions_only() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let base = base.path();
        fs::set_permissions(base, fs::Permissions::from_mode(0o700)).unwrap();
        let old_session = base.join("session-1-1");
        let mixed = base.join("session-2-2");
        for d in [&old_session, &mixed] {
            ensure_private_dir(d).unwrap();
        }
        let old_a = old_session.join("a-1.jsonl");
        let old_b = mixed.join("a-2.jsonl");
        let fresh = mixed.join("a-3.jsonl");
        let not_ours = mixed.join("notes.txt");
        let other_dir = base.join("keep-me");
        fs::create_dir(&other_dir).unwrap();
        let other = other_dir.join("a-4.jsonl");
        for f in [&old_a, &old_b, &fresh, &not_ours, &other] {
            fs::write(f, "{}\n").unwrap();
        }
        for f in [&old_a, &old_b, &not_ours, &other] {
            age(f, 40);
        }
        // A symlink to an old transcript elsewhere: the link may go, never its target.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("t.jsonl");
        fs::write(&target, "x").unwrap();
        age(&target, 40);
        std::os::unix::fs::symlink(&target, mixed.join("link.jsonl")).unwrap();

        let empty_old = base.join("session-3-3");
        let empty_new = base.join("session-4-4");
        for d in [&empty_old, &empty_new] {
            ensure_private_dir(d).unwrap();
        }
        age(&empty_old, 40);

        let now = SystemTime::now() + Duration::from_secs(1);
        let pruned = prune_transcripts(base, Duration::from_secs(30 * 86_400), now).unwrap();

        assert_eq!(pruned.transcripts, 2, "{pruned:?}");
        assert_eq!(pruned.sessions, 2, "{pruned:?}");
        assert!(!empty_old.exists(), "an old empty session directory goes");
        assert!(
            empty_new.exists(),
            "a new empty one stays (its server may be starting)"
        );
        assert!(!old_a.exists() && !old_b.exists());
        assert!(
            !old_session.exists(),
            "a session directory emptied of transcripts goes"
        );
        assert!(fresh.exists(), "a transcript written 0 days ago stays");
        assert!(not_ours.exists(), "only *.jsonl files are transcripts");
        assert!(other.exists(), "only session-* directories are looked into");
        assert!(target.exists(), "a symlink is never followed");
        assert!(
            mixed.exists(),
            "a session directory that still holds files stays"
        );
    }

    #[test]
    fn retention_refuses_a_base_that_is_a_symlink() {
        let real = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("transcripts");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let e = prune_transcripts(&link, Duration::ZERO, SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn transcript_stops_at_its_cap_with_one_marker_and_counts_dropped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut transcript = Transcript::create(&dir.path().join("t"), "agent-1", 20).unwrap();
        transcript.append_line("0123456789");
        transcript.append_line("abcdefghi");
        transcript.append_line("x");
        transcript.settle();

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
    fn a_raw_line_is_kept_whole_and_reads_back_as_raw() {
        let dir = tempfile::tempdir().unwrap();
        let mut transcript = Transcript::create(dir.path(), "agent-1", 1024).unwrap();
        transcript.append_line(r#"{"type":"text","text":"hi"}"#);
        transcript.append_raw("panicked at \"x\"");
        transcript.settle();

        let written = fs::read_to_string(transcript.path()).unwrap();
        let lines: Vec<TranscriptLine> = written
            .lines()
            .map(|l| TranscriptLine::parse(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                TranscriptLine::Event(bg_agent_worker::protocol::Event::Text { text: "hi".into() }),
                TranscriptLine::Raw {
                    line: "panicked at \"x\"".into()
                }
            ]
        );
        assert!(
            written.ends_with("{\"type\":\"raw\",\"line\":\"panicked at \\\"x\\\"\"}\n"),
            "{written}"
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
        let mut transcript =
            Transcript::with_file(PathBuf::from("/dev/full"), full, 1 << 20).unwrap();
        let line = "x".repeat(10_000);
        transcript.append_line(&line);
        transcript.append_line("after");
        transcript.settle();

        let error = transcript.error().unwrap();
        assert!(error.contains("/dev/full"), "{error}");
        assert_eq!(transcript.written_bytes(), 0);
        assert_eq!(transcript.dropped_bytes(), 10_001 + 6);
    }
    #[test]
    fn lines_past_the_queue_bound_behind_a_stalled_disk_are_counted_and_told() {
        let dir = tempfile::tempdir().unwrap();
        let mut transcript = Transcript::create(dir.path(), "agent-1", 1 << 30).unwrap();
        let line = "y".repeat(1024 * 1024 - 1);
        let lines = MAX_QUEUED_BYTES / (1024 * 1024) + 4;
        let stall = hold_transcript_writes();
        for _ in 0..lines {
            transcript.append_line(&line);
        }
        // Only the bound waits for the disk; the rest is left out at once, counted.
        assert!(transcript.dropped_bytes() >= 4 * 1024 * 1024);
        let error = transcript.error().unwrap();
        assert!(error.contains("fell behind"), "{error}");
        drop(stall);
        let done = transcript.close().unwrap();
        done.blocking_recv().unwrap_err();

        let on_disk = fs::metadata(transcript.path()).unwrap().len();
        assert_eq!(on_disk, transcript.written_bytes());
        assert_eq!(
            transcript.written_bytes() + transcript.dropped_bytes(),
            lines * 1024 * 1024
        );
    }
}
