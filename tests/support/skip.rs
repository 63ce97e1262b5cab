//! A test that cannot run here (no root, no mount) says so loudly, in one shape, instead
//! of passing in silence.

use std::io::Write;

/// Set to make every skip a failure: for a CI job that must run everything (as root).
pub const NO_SKIPS: &str = "BG_AGENTS_NO_SKIPS";

/// Prints `SKIPPED: <test>: <why>; to run it: <to_run_it>` on stderr (the test is named
/// by its thread, as libtest names it); the caller then returns. Panics instead when
/// [`NO_SKIPS`] is set.
///
/// Written to the stderr handle, not with `eprintln!`, which libtest captures and shows
/// only for a failed test: a skip is seen in every `cargo test` run.
pub fn skip(why: &str, to_run_it: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("SKIPPED: {test}: {why}; to run it: {to_run_it}");
    if std::env::var_os(NO_SKIPS).is_some() {
        panic!("{line} ({NO_SKIPS} is set)");
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}
