//! Links the worker with packed relative relocations (DT_RELR) where the linker and the C
//! library take them.
//!
//! One worker process runs per agent. As a position-independent executable it carries
//! about 20,000 relative relocations, which the dynamic loader reads from `.rela.dyn` at
//! every start (24 bytes each); packed, they take a few kilobytes, so each worker reads
//! and maps less (BENCHMARKS.md, "The third pass on #24"). The linker must write them
//! (lld, GNU ld 2.38 or newer) and glibc 2.36 or newer must load them, so a probe first
//! builds a small program with rustc exactly as the worker is linked (target, linker,
//! RUSTFLAGS), the flag added and linker warnings made errors (an older GNU ld ignores the
//! flag with a warning), and runs it (the loader refuses a DT_RELR program it cannot
//! load). Without either, the worker is linked as before.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from)
        && probe(&out)
    {
        println!("cargo:rustc-link-arg-bin=bg-agent-worker={FLAG}");
    }
}

/// Whether a program rustc links as it links the worker, with `FLAG`, builds without a
/// linker warning and runs here. Only for a native glibc build: a cross build's program
/// cannot run on the build machine.
fn probe(out: &Path) -> bool {
    let (Ok(target), Ok(host)) = (env::var("TARGET"), env::var("HOST")) else {
        return false;
    };
    if target != host || !target.ends_with("-linux-gnu") {
        return false;
    }
    let source = out.join("relr_probe.rs");
    let program = out.join("relr_probe");
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
    build
        .arg("-C")
        .arg("link-arg=-Wl,--fatal-warnings")
        .arg("-C")
        .arg(format!("link-arg={FLAG}"));
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
