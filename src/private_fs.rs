//! Directories and files that only this user can reach: where transcripts and completion
//! notices are written. Directories are 0700 and files 0600 whatever the umask; a
//! directory that is a symlink, not a directory, or another user's is refused, since it
//! could have been planted to read or redirect what bg-agents writes.
//!
//! Not here: what goes into them (`supervisor::output::transcript`, `notices`).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Makes `dir` (and missing parents) 0700 unless it exists, then checks it as
/// [`check_private_dir`] does.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
    check_private_dir(dir)
}

/// `dir` is a real directory (not a symlink) of this user, closed to others: made 0700
/// if it was open.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is a symlink or not a directory; refused, so what bg-agents writes there cannot be redirected; remove it",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "{} belongs to user id {}, not to you (user id {me}); refused, so other users cannot read or redirect what bg-agents writes; remove it or choose another directory",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether no other user (root aside) can rename or replace anything on the way to `dir`,
/// now or later: every directory on its path as written and as resolved belongs to root
/// or to this user, and one that others may write is sticky (as /tmp is), so nobody but
/// its owner renames what is in it. False when `dir` does not exist.
pub fn path_is_ours(dir: &Path) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |p: &Path| {
        fs::symlink_metadata(p).is_ok_and(|m| {
            let owner_ok = m.uid() == 0 || m.uid() == me;
            let shared_write = m.mode() & 0o022 != 0;
            let sticky = m.mode() & 0o1000 != 0;
            owner_ok && (!m.file_type().is_dir() || !shared_write || sticky)
        })
    };
    let Ok(real) = fs::canonicalize(dir) else {
        return false;
    };
    dir.is_absolute() && dir.ancestors().all(trusted) && real.ancestors().all(trusted)
}

/// A new file only this user can read: 0600 whatever the umask, never through a symlink,
/// never an existing file.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
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

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private_and_symlinks_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an open directory of ours is closed");

        let file = dir.join("f");
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(
            create_private_file(&file).is_err(),
            "never an existing file"
        );

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = ensure_private_dir(&link).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let file_link = tmp.path().join("file-link");
        std::os::unix::fs::symlink(&file, &file_link).unwrap();
        assert!(
            create_private_file(&file_link).is_err(),
            "never through a symlink"
        );
    }

    #[test]
    fn a_path_through_a_directory_others_can_change_is_not_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("ours/run");
        fs::create_dir_all(&ours).unwrap();
        assert!(path_is_ours(&ours), "{}", ours.display());
        assert!(!path_is_ours(&tmp.path().join("missing")));

        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir(open.join("run")).unwrap();
        assert!(!path_is_ours(&open.join("run")), "others may rename in it");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(path_is_ours(&open.join("run")), "sticky, as /tmp");

        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("ours"), open.join("link")).unwrap();
        assert!(
            !path_is_ours(&open.join("link/run")),
            "a link others could swap, though it leads to a path of ours"
        );

        if !nix::unistd::geteuid().is_root() {
            support::skip(
                "its last check: not root, so no directory of another user can be made",
                "run as root",
            );
            return;
        }
        let theirs = tmp.path().join("theirs");
        fs::create_dir_all(theirs.join("run")).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(!path_is_ours(&theirs.join("run")), "its owner can swap run");
    }
}
