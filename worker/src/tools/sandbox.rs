//! Keeps every tool path inside the agent's workspace (its cwd). Files are opened
//! relative to a descriptor of the workspace directory with `openat2(RESOLVE_BENEATH)`,
//! so the kernel resolves each component once and refuses any that leads out: a
//! component swapped for a symlink between a check and the open cannot redirect it.
//! Only regular files are opened for reading (no FIFOs, devices or sockets).
//!
//! Not here: the process-wide Landlock confinement (`crate::sandbox`), which makes the
//! kernel the boundary even for code that does not come through these functions.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

/// Why a workspace path could not be opened, as a sentence for the model.
pub type Refusal = String;

/// Refuses absolute paths and `..` before the kernel sees them, with a message that says
/// what to do instead.
fn check_relative(rel: &str) -> Result<(), Refusal> {
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(format!(
            "`{rel}` is an absolute path; refused: use a path relative to the workspace root"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "`{rel}` contains `..`; refused: paths must stay inside the workspace"
        ));
    }
    Ok(())
}

/// A descriptor of the workspace directory `root`, the anchor of every later open.
pub fn open_root(root: &Path) -> Result<OwnedFd, Refusal> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open the workspace {}: {e}", root.display()))
}

/// Opens `rel` beneath `root` with `flags` (openat2 refuses flags that do not apply,
/// e.g. O_NOCTTY with O_PATH): the kernel refuses absolute symlinks, `..`
/// and symlinks whose target leaves `root`, whatever happens to the path meanwhile.
fn open_beneath(root: &OwnedFd, rel: &str, flags: OFlag) -> Result<OwnedFd, Refusal> {
    check_relative(rel)?;
    let rel_path = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel_path, how).map_err(|e| match e {
        Errno::EXDEV | Errno::ELOOP => {
            format!("`{rel}` leads outside the workspace (through a symlink); refused")
        }
        e => format!("`{rel}`: {}", std::io::Error::from(e)),
    })
}

/// A regular file beneath `root`, open for reading, with its size. Directories,
/// FIFOs, devices and sockets are refused: reading a FIFO would block the agent, a
/// device could have effects. O_NONBLOCK makes the open itself return at once.
pub fn open_regular_file(root: &OwnedFd, rel: &str) -> Result<(File, u64), Refusal> {
    let fd = open_beneath(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| format!("`{rel}`: {e}"))?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok((file, meta.len()));
    }
    Err(if kind.is_dir() {
        format!("`{rel}` is a directory; use glob to list it")
    } else if kind.is_fifo() {
        format!("`{rel}` is a FIFO (named pipe); refused: only regular files can be read")
    } else if kind.is_char_device() || kind.is_block_device() {
        format!("`{rel}` is a device; refused: only regular files can be read")
    } else {
        format!("`{rel}` is not a regular file; refused")
    })
}

/// Whether `rel`, found by a walk, still names something beneath `root` (a walk reads
/// directories by path, and one swapped for a symlink would list outside names).
pub fn exists_beneath(root: &OwnedFd, rel: &str) -> bool {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_NOFOLLOW).is_ok()
}
