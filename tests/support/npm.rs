//! Real clients installed from npm by the tests themselves, once per version, under
//! `target/tmp` (a file lock keeps parallel tests from racing); a machine without npm
//! fails those tests loudly.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::{Flock, FlockArg};

use crate::process::target_tmp;

/// The executable `bin` of npm package `package@version`, installed on first use under
/// `target/tmp/<dir>`; checked by the version in the installed package's `package.json`
/// (not every package's `bin --version` prints it).
pub fn install(dir: &str, package: &str, version: &str, bin: &str) -> PathBuf {
    let root = target_tmp().join(dir);
    std::fs::create_dir_all(&root).expect("create the npm install directory");
    let exe = root.join("node_modules/.bin").join(bin);
    let lock = File::create(root.join(".lock")).expect("create the install lock");
    let _held = Flock::lock(lock, FlockArg::LockExclusive).expect("lock the install");
    if installed_version(&root, package).as_deref() == Some(version) && exe.exists() {
        return exe;
    }
    let name = package;
    let package = format!("{package}@{version}");
    eprintln!("installing {package} under {} (once)", root.display());
    let out = std::process::Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&root)
        .arg(&package)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need npm to install {package}, and running npm failed: {e}. \
                 Install Node.js 20+ with npm (e.g. `apt-get install nodejs npm`)"
            )
        });
    assert!(
        out.status.success(),
        "npm install {package} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        installed_version(&root, name).as_deref(),
        Some(version),
        "npm installed another version of {name} under {}",
        root.display()
    );
    assert!(
        exe.exists(),
        "{} is missing after npm install",
        exe.display()
    );
    exe
}

/// The version of `package` installed under `root`, from its package.json.
fn installed_version(root: &Path, package: &str) -> Option<String> {
    let manifest = root.join("node_modules").join(package).join("package.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    v["version"].as_str().map(str::to_string)
}
