//! The transcript file of one agent ([`Transcript`]): its full event stream, one JSON
//! event per line, up to a byte cap, and the privacy of where it lives (0600 files in a
//! 0700 directory owned by this user, never through a symlink).
//!
//! Not here: the readable text (`ring`), deciding what a dropped byte means for the
//! agent (the manager).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::OutputError;

/// Default byte cap of a transcript file.
pub const DEFAULT_TRANSCRIPT_CAP: u64 = 64 * 1024 * 1024;

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

    /// Opens a closed transcript again to append an agent's next round (`agent_send`),
    /// never through a symlink; a transcript that is open, capped or failed stays as it
    /// is (what it misses stays counted).
    pub fn reopen(&mut self) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.writer.is_some() || self.capped || self.error.is_some() {
            return Ok(());
        }
        let file = fs::OpenOptions::new()
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)?;
        self.writer = Some(BufWriter::new(file));
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
