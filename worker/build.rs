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
//!   resident code was 4 MiB for the 1.3 MB it runs. Listed first, they are mapped by
//!   fewer than half as many faults (about 30 against 66 in a manual run).
//!   `scripts/worker-order.sh` makes the list from real runs. Its names carry hashes that
//!   change with the compiler and with the features each dependency is built with, so it
//!   matches the build `scripts/install.sh` makes (`cargo build --release --workspace
//!   --bins`) with this Cargo.lock and compiler. A name the binary lacks is skipped
//!   without a word: a stale list costs memory, never correctness (`cargo bench --bench
//!   scale` says how many names it found and where they lie).
//!
//! - **The unwinder linked in** (`libgcc_eh.a`, as `gcc -static-libgcc` links it). Rust's
//!   standard library otherwise loads `libgcc_s.so.1` into every worker for its unwinder
//!   alone: one more library to map and relocate, whose constructor also runs eight
//!   CPUID instructions, each a trip to the hypervisor on a virtual machine (together
//!   about 1% of a worker's CPU at 1,000 agents, BENCHMARKS.md, "The fifth pass on #24").
//!   The worker's `main.rs` links it when this script sets `static_unwinder`.
//!
//! A probe builds a small program with rustc exactly as the worker is linked (target,
//! linker, RUSTFLAGS), the option added and linker warnings made errors (an older GNU ld
//! ignores `-z pack-relative-relocs` with a warning; GNU ld, gold and mold have no
//! `--symbol-ordering-file`); for DT_RELR it also runs it (the loader refuses a DT_RELR
//! program it cannot load). Without it, the worker is linked without that option.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const RELR: &str = "-Wl,-z,pack-relative-relocs";
const ORDER: &str = "startup.order";

/// A program that takes the unwinder from libgcc_eh.a, as `main.rs` does with the cfg.
const STATIC_UNWINDER_PROBE: &str = "#[link(name = \"gcc_eh\", kind = \"static\")]\nunsafe extern \"C\" {}\nfn main() {\n    let _ = std::panic::catch_unwind(|| panic!(\"probe\"));\n}\n";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(static_unwinder)");
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let (Ok(target), Ok(host)) = (env::var("TARGET"), env::var("HOST")) else {
        return;
    };
    // DT_RELR: only for a native glibc build, whose probe can run here (a cross build's
    // program cannot).
    if target == host && target.ends_with("-linux-gnu") {
        let relr = [RELR.to_string()];
        if probe(&out, &target, &relr, Run::Yes) {
            link_with(&relr);
        }
        // It must unwind, so it runs (a panic caught).
        if probe_source(&out, &target, STATIC_UNWINDER_PROBE, &[], Run::Yes) {
            println!("cargo:rustc-cfg=static_unwinder");
        }
    }
    let order = env::var_os("CARGO_MANIFEST_DIR").map(|dir| PathBuf::from(dir).join(ORDER));
    // `-Wl,` splits its argument at commas. A list that does not exist is not watched
    // (cargo would run this script at every build); adding one needs `touch build.rs`.
    if let Some(order) = order.filter(|o| o.is_file() && !o.to_string_lossy().contains(',')) {
        println!("cargo:rerun-if-changed={ORDER}");
        let args = [
            format!("-Wl,--symbol-ordering-file={}", order.display()),
            // The list names the release build's symbols; a dev build has few of them
            // (the standard library's), and any stale name is skipped, not an error.
            "-Wl,--no-warn-symbol-ordering".to_string(),
        ];
        // Only a layout: linking is the whole test.
        if probe(&out, &target, &args, Run::No) {
            link_with(&args);
        }
    }
}

fn link_with(args: &[String]) {
    for arg in args {
        println!("cargo:rustc-link-arg-bin=bg-agent-worker={arg}");
    }
}

/// Whether a probe program must also run for an option to be taken.
#[derive(PartialEq)]
enum Run {
    Yes,
    No,
}

/// Whether a program rustc links for `target` as it links the worker, with `args`, builds
/// without a linker warning (and with `run`, runs here). Flags given only to the worker's
/// own rustc (`cargo rustc -- -C link-arg=…`) are not seen here.
fn probe(out: &Path, target: &str, args: &[String], run: Run) -> bool {
    probe_source(out, target, "fn main() {}\n", args, run)
}

/// `probe` with the program's source.
fn probe_source(out: &Path, target: &str, code: &str, args: &[String], run: Run) -> bool {
    let source = out.join("link_probe.rs");
    let program = out.join("link_probe");
    if std::fs::write(&source, code).is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut build = Command::new(rustc);
    build
        .arg("--target")
        .arg(target)
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
        && (run == Run::No
            || Command::new(&program)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()))
}
