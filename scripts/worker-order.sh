#!/usr/bin/env bash
# Writes worker/startup.order: the worker's functions that run from its exec to its
# answer, in the order a real run first calls them, for lld's --symbol-ordering-file
# (worker/build.rs). Placed together they fill a few dozen 64 KiB windows of code
# instead of spreading over 4 MB, so each worker maps less of its binary
# (BENCHMARKS.md, "The fourth pass on #24").
#
# The names carry hashes that depend on the compiler and on every dependency's version
# and features, so the list matches the build that scripts/install.sh makes
# (`cargo build --release --locked --workspace --bins`) with this Cargo.lock and this
# rustc. Run this again after changing either; `cargo bench --bench scale` says how much
# of the list the worker it measures still has. A stale list costs memory, not
# correctness: names the binary lacks are skipped.
#
# Needs valgrind (callgrind counts every function a run executes). Takes a release build
# (about 5 minutes from scratch) and a 3-agent run of the scale bench, workers under
# callgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null 2>&1 || { echo "valgrind is not on PATH; install it (apt-get install valgrind)" >&2; exit 1; }

cargo build --release --locked --workspace --bins
target=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin" "$tmp/real" "$tmp/runs"
# The server from this build; beside it, a worker that runs this build's worker (a copy,
# which `cargo bench` cannot relink) under callgrind, one profile per worker process.
cp "$target/release/bg-agents" "$tmp/bin/"
cp "$target/release/bg-agent-worker" "$tmp/real/"
cat >"$tmp/bin/bg-agent-worker" <<WRAP
#!/bin/sh
exec valgrind --log-file="$tmp/runs/valgrind.%p" --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file="$tmp/runs/cg.%p" "$tmp/real/bg-agent-worker" "\$@"
WRAP
chmod 700 "$tmp/bin/bg-agent-worker"
# Under valgrind a worker finds no Landlock and says so ("the bash tool is not offered").
BG_SCALE_AGENTS=3 BG_SCALE_BIN_DIR="$tmp/bin" cargo bench --locked --bench scale >/dev/null
# Then a manual run (`--json`), whose own start (arguments, the built-in configuration) the
# server's workers skip; no provider listens on port 9, so it ends at its first request.
env -i PATH="$PATH" HOME="$tmp" ANTHROPIC_API_KEY=order ANTHROPIC_BASE_URL=http://127.0.0.1:9 \
  valgrind --log-file="$tmp/manual.log" --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file="$tmp/manual.cg" "$tmp/real/bg-agent-worker" --json order >/dev/null 2>&1 || true

# Each profile names a function once in full ("fn=(7) name") and by number after; keep
# the worker's own functions (ob= ends in bg-agent-worker), first seen first, without
# callgrind's recursion marks ('2) and its unnamed entries.
runs=("$tmp"/runs/cg.*)
[ -e "${runs[0]}" ] || { echo "no callgrind profile was written under $tmp/runs" >&2; exit 1; }
[ -e "$tmp/manual.cg" ] || { echo "the manual run wrote no profile:" >&2; cat "$tmp/manual.log" >&2; exit 1; }
{
  echo "# The worker's start-up functions, for lld --symbol-ordering-file; written by"
  echo "# scripts/worker-order.sh ($(rustc --version)). Do not edit by hand."
  awk '
    FNR == 1 { ob = ""; delete objects; delete functions }
    function named(spec, table,    id) {
      if (!match(spec, /^\([0-9]+\)/)) return spec
      id = substr(spec, 2, RLENGTH - 2)
      if (length(spec) > RLENGTH + 1) table[id] = substr(spec, RLENGTH + 2)
      return table[id]
    }
    /^ob=/  { ob = named(substr($0, 4), objects) }
    /^cob=/ { named(substr($0, 5), objects) }
    /^cfn=/ { named(substr($0, 5), functions) }
    /^fn=/ {
      f = named(substr($0, 4), functions)
      sub(/\047[0-9]+$/, "", f)
      if (ob ~ /\/bg-agent-worker$/ && f !~ /^(0x|\()/ && f != "" && !(f in seen)) {
        seen[f] = 1
        print f
      }
    }
  ' "${runs[@]}" "$tmp/manual.cg"
  # valgrind lacks the Landlock system calls (444-446), so under it a worker starts
  # unconfined; a real one runs these too (worker/src/sandbox.rs, the landlock crate).
  nm --defined-only "$tmp/real/bg-agent-worker" | awk '{ print $3 }' |
    { grep -E '^_ZN(15bg_agent_worker7sandbox|8landlock)|landlock\.\.' || true; } | sort
} | awk '!seen[$0]++' >worker/startup.order.new
mv worker/startup.order.new worker/startup.order
echo "worker/startup.order: $(grep -vc '^#' worker/startup.order) functions from $((${#runs[@]} + 1)) worker runs;"
echo "build again (cargo build --release --locked --workspace --bins) to link the worker with it"
