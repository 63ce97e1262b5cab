//! Two link options for the worker, each taken only where the linker and the C library
//! take it. One worker process runs per agent, so what its start costs is paid per agent
//! (BENCHMARKS.md, "The third pass on #24" and "The fourth pass on #24").
//!
//! - **Packed relative relocations (DT_RELR).** As a position-independent executable the
//!   worker carries about 20,000 relative relocations, which the dynamic loader reads from
//!   `.rela.dyn` at every start (24 bytes each); packed, they take a few kilobytes, so
//!   each worker reads and maps less. The linker must write them (lld, GNU ld 2.38 or
//!   newer) and glibc 2.36 or newer must load them.
//! - **The start-up code placed together** (`startup.order`, lld's
//!   `--symbol-ordering-file`). The functions a worker runs from exec to exit are spread
//!   over 8 MB of code; the kernel maps code 64 KiB around each page fault, so a worker's
//!   resident code was 4 MiB for the 1.3 MB it runs. Listed first, they are mapped by a
//!   third as many faults. `scripts/worker-order.sh` makes the list from real runs. Its
//!   names carry hashes that change with the compiler and with the features each
//!   dependency is built with, so it matches the build `scripts/install.sh` makes
//!   (`cargo build --release --workspace --bins`) with this Cargo.lock and compiler; a
//!   name the binary lacks is skipped without a word, so a stale list costs memory, never
//!   correctness (`cargo bench --bench scale` says how many names it found).
//!
//! A probe builds a small program with rustc exactly as the worker is linked (target,
//! linker, RUSTFLAGS), the option added and linker warnings made errors (an older GNU ld
//! ignores `-z pack-relative-relocs` with a warning; GNU ld has no
//! `--symbol-ordering-file`), and runs it (the loader refuses a DT_RELR program it cannot
//! load). Without it, the worker is linked without that option.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const RELR: &str = "-Wl,-z,pack-relative-relocs";
const ORDER: &str = "startup.order";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={ORDER}");
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let order = env::var_os("CARGO_MANIFEST_DIR").map(|dir| PathBuf::from(dir).join(ORDER));
    let mut options = vec![vec![RELR.to_string()]];
    // `-Wl,` splits its argument at commas.
    if let Some(order) = order.filter(|o| o.is_file() && !o.to_string_lossy().contains(',')) {
        options.push(vec![
            format!("-Wl,--symbol-ordering-file={}", order.display()),
            // The list names symbols of the release build; a dev build has none of them.
            "-Wl,--no-warn-symbol-ordering".to_string(),
        ]);
    }
    for args in options {
        if probe(&out, &args) {
            for arg in args {
                println!("cargo:rustc-link-arg-bin=bg-agent-worker={arg}");
            }
        }
    }
}

/// Whether a program rustc links as it links the worker, with `args`, builds without a
/// linker warning and runs here. Only for a native glibc build: a cross build's program
/// cannot run on the build machine.
fn probe(out: &Path, args: &[String]) -> bool {
    let (Ok(target), Ok(host)) = (env::var("TARGET"), env::var("HOST")) else {
        return false;
    };
    if target != host || !target.ends_with("-linux-gnu") {
        return false;
    }
    let source = out.join("link_probe.rs");
    let program = out.join("link_probe");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut build = Command::new(rustc);
    build
        .arg("--target")
        .arg(&target)
        .arg("--edition=2024")
        .arg("-o")
        .arg(&program)
        .arg(&source);
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        build
            .arg("-C")
            .arg(format!("linker={}", linker.to_string_lossy()));
    }
    // The flags cargo gives every crate (RUSTFLAGS, `build.rustflags`), which may choose
    // the linker (`-C linker=`, `-C link-arg=-fuse-ld=…`).
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        build.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    // First: GNU ld makes only the warnings after it errors.
    build.arg("-C").arg("link-arg=-Wl,--fatal-warnings");
    for arg in args {
        build.arg("-C").arg(format!("link-arg={arg}"));
    }
    let built = build
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    built
        && Command::new(&program)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
