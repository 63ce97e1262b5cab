#!/usr/bin/env bash
# Writes worker/startup.order: the worker's functions that run from its exec to its exit,
# for lld's --symbol-ordering-file (worker/build.rs). Placed together they fill a few
# dozen 64 KiB windows of code instead of spreading over its 8 MB, so each worker maps
# less of its binary (BENCHMARKS.md, "The fourth pass on #24").
#
# The names carry hashes that depend on the compiler, Cargo.lock and the features every
# dependency is built with, so the list matches the build that scripts/install.sh makes
# (`cargo build --release --locked --workspace --bins`) with this Cargo.lock and this
# rustc. Run this again after changing the worker's start or stream path, a dependency
# or the compiler: new functions land outside the list, and `cargo bench --bench scale`
# then shows a higher worker RSS (its last row says how much of the list the worker it
# measures has). A stale list costs memory, not correctness: names the binary lacks are
# skipped.
#
# Needs valgrind (callgrind names every function a run executes). Takes a release build
# (about 5 minutes from scratch) and a 3-agent run of the scale bench, workers under
# callgrind; then link again (the build below says how).
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
# Then a manual run (`--json`), whose own start (arguments, a configuration file) the
# server's workers skip. Its provider is a closed port and it may not retry, so it ends
# at its first request.
cat >"$tmp/order.toml" <<'TOML'
[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:1"
api_key_env = "ANTHROPIC_API_KEY"
max_retries = 0
request_timeout_seconds = 5
TOML
env -i PATH="$PATH" HOME="$tmp" ANTHROPIC_API_KEY=order \
  valgrind --log-file="$tmp/manual.log" --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file="$tmp/manual.cg" "$tmp/real/bg-agent-worker" --config "$tmp/order.toml" \
  --json order >/dev/null 2>&1 || true

runs=("$tmp"/runs/cg.*)
[ -e "${runs[0]}" ] || { echo "no callgrind profile was written under $tmp/runs" >&2; exit 1; }
[ -e "$tmp/manual.cg" ] || { echo "the manual run wrote no profile:" >&2; cat "$tmp/manual.log" >&2; exit 1; }
# Each profile names a function once in full ("fn=(7) name") and by number after; keep
# the worker's own functions (ob= ends in bg-agent-worker), without callgrind's recursion
# marks ('2) and its unnamed entries, one a line: "CALLS NAME", CALLS what the profiles'
# calls= lines add up to for it.
counted() {
  awk '
    FNR == 1 { ob = ""; delete objects; delete functions }
    function named(spec, table,    id) {
      if (!match(spec, /^\([0-9]+\)/)) return spec
      id = substr(spec, 2, RLENGTH - 2)
      if (length(spec) > RLENGTH + 1) table[id] = substr(spec, RLENGTH + 2)
      return table[id]
    }
    function bare(f) { sub(/\047[0-9]+$/, "", f); return f }
    /^ob=/  { ob = named(substr($0, 4), objects) }
    /^cob=/ { named(substr($0, 5), objects) }
    /^cfn=/ { callee = bare(named(substr($0, 5), functions)) }
    /^calls=/ { split(substr($0, 7), n, " "); calls[callee] += n[1] }
    /^fn=/ {
      f = bare(named(substr($0, 4), functions))
      if (ob ~ /\/bg-agent-worker$/ && f !~ /^(0x|\()/ && f != "") seen[f] = 1
    }
    END { for (f in seen) print calls[f] + 0, f }
  ' "$@"
}
# The server's workers' functions first, then those only the manual run adds: a server's
# worker then finds all it runs at the front. Of the first, those called for every event
# of a stream (on average at least 40 times a worker, each worker streaming 50 deltas)
# come first of all: a worker woken for a chunk then runs code from a few pages, not
# from pages all over its 1.4 MB of start-up code. Each group is sorted by name, so a list
# made again changes only where a group's set changed.
counted "${runs[@]}" >"$tmp/counts"
hot=$((40 * ${#runs[@]}))
awk -v hot="$hot" '$1 >= hot { print $2 }' "$tmp/counts" | LC_ALL=C sort -u >"$tmp/hot"
awk -v hot="$hot" '$1 < hot { print $2 }' "$tmp/counts" | LC_ALL=C sort -u >"$tmp/cold"
cat "$tmp/hot" "$tmp/cold" >"$tmp/server"
counted "$tmp/manual.cg" | cut -d ' ' -f 2 | LC_ALL=C sort -u |
  LC_ALL=C comm -23 - <(LC_ALL=C sort "$tmp/server") >"$tmp/manual"
cat "$tmp/server" "$tmp/manual" >"$tmp/seen"
# A worker runs some 800 of its own functions; far fewer means the profiles did not name
# them (a stripped binary, another path in ob=), and a list of them would order nothing.
seen=$(wc -l <"$tmp/seen")
[ "$seen" -ge 300 ] || { echo "callgrind named only $seen of the worker's functions; is the worker stripped? (nothing written)" >&2; exit 1; }
# valgrind lacks the Landlock system calls (444-446), so under it a worker starts
# unconfined and without the bash tool; a real one runs these too (worker/src/sandbox.rs,
# the commands' rules in worker/src/command_sandbox.rs, the landlock crate). Chosen by
# their demangled names (nm -p keeps both listings in the symbol table's order).
# Functions only (nm types t, T, w, W).
paste -d ' ' <(nm -p --defined-only "$tmp/real/bg-agent-worker" | awk '{ print $2, $3 }') \
  <(nm -p -C --defined-only "$tmp/real/bg-agent-worker" | cut -d ' ' -f 3-) |
  awk '$1 ~ /^[tTwW]$/' |
  { grep -E '[ <(&,](landlock::|bg_agent_worker::sandbox::|bg_agent_worker::command_sandbox::(prepare|add_system_rules|add_scratch_rule|landlock_abi))' || true; } |
  cut -d ' ' -f 2 | LC_ALL=C sort -u >"$tmp/landlock"
{
  echo "# The worker's start-up functions, for lld --symbol-ordering-file; written by"
  echo "# scripts/worker-order.sh ($(rustc --version)). Do not edit by hand."
  cat "$tmp/seen" "$tmp/landlock" | awk '!seen[$0]++'
} >"$tmp/startup.order"
mv "$tmp/startup.order" worker/startup.order
echo "worker/startup.order: $(grep -vc '^#' worker/startup.order) functions, $(wc -l <"$tmp/hot") of them run for each event first ($seen named by callgrind in $((${#runs[@]} + 1)) worker runs, $(wc -l <"$tmp/landlock") of the Landlock path by name);"
echo "build again (cargo build --release --locked --workspace --bins) to link the worker with it"
