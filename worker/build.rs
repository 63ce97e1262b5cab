//! Links the worker with packed relative relocations (DT_RELR) where the linker and the C
//! library take them.
//!
//! One worker process runs per agent. As a position-independent executable it carries
//! about 20,000 relative relocations, which the dynamic loader reads from `.rela.dyn` at
//! every start (24 bytes each); packed, they take a few kilobytes, so each worker reads
//! and maps less (BENCHMARKS.md, "DT_RELR"). It needs GNU ld ≥ 2.38 (or lld) to write
//! them and glibc ≥ 2.36 to load them, so a probe first links and runs a small program
//! with the flag; without either, the worker is linked as before.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from)
        && probe(&out)
    {
        println!("cargo:rustc-link-arg-bin=bg-agent-worker={FLAG}");
    }
}

/// Whether a program linked with `FLAG` by the linker rustc uses builds and runs here.
/// Only for a native glibc build: a cross build's program cannot run on the build machine.
fn probe(out: &Path) -> bool {
    let (Ok(target), Ok(host)) = (env::var("TARGET"), env::var("HOST")) else {
        return false;
    };
    if target != host || !target.ends_with("-linux-gnu") {
        return false;
    }
    // A function pointer in static data: one relative relocation in a PIE.
    let source = out.join("relr_probe.c");
    let program = out.join("relr_probe");
    let text = "static int zero(void) { return 0; }\n\
                int (*const entry)(void) = zero;\n\
                int main(void) { return entry(); }\n";
    if std::fs::write(&source, text).is_err() {
        return false;
    }
    let linker = env::var_os("RUSTC_LINKER").unwrap_or_else(|| "cc".into());
    let linked = Command::new(linker)
        .args(["-pie", "-fPIE", FLAG, "-o"])
        .arg(&program)
        .arg(&source)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    linked
        && Command::new(&program)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
