#!/bin/sh
# Builds bg-agents and bg-agent-worker from this checkout and installs both into a
# directory on PATH (the server finds the worker next to itself; Claude Code finds the
# server, and the plugin's hooks find `bg-agents hook`, on the PATH it was started with).
#
#   scripts/install.sh            release build (about 5 minutes on an idle 2-core machine)
#   scripts/install.sh --debug    unoptimized build (faster to build; for trying and CI)
#
# Where: $BG_AGENTS_BIN_DIR if set; else the first of ~/.local/bin and ~/.cargo/bin (or
# $CARGO_HOME/bin) that is on PATH; else ~/.local/bin, created, with the line to put it
# on PATH. The build honours CARGO_TARGET_DIR. Checks the prerequisites first and says
# what to do when one is missing: Linux, Rust 1.88+, a C compiler, and the Claude Code
# CLI (skip that check with BG_AGENTS_NO_CLAUDE=1 when another MCP client runs bg-agents).
set -eu

fail() {
  printf 'scripts/install.sh: %s\n' "$*" >&2
  exit 1
}

profile=release
case "${1:-}" in
  "") ;;
  --debug) profile=debug ;;
  -h | --help)
    sed -n '2,13s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
  *) fail "unknown option $1; use --debug for an unoptimized build, or no option" ;;
esac
[ $# -le 1 ] || fail "one option at most (--debug)"

cd "$(dirname "$0")/.."

[ "$(uname -s)" = Linux ] ||
  fail "bg-agents runs on Linux only (clone(2), PR_SET_PDEATHSIG, rlimits, Landlock); on Windows use WSL 2"
[ -n "${HOME:-}" ] || [ -n "${BG_AGENTS_BIN_DIR:-}" ] ||
  fail "HOME is not set; set it, or set BG_AGENTS_BIN_DIR to the directory to install into"

command -v cargo >/dev/null 2>&1 ||
  fail "cargo (Rust) is not on PATH. Install Rust 1.88 or newer with rustup (https://rustup.rs):
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or run: . \"\$HOME/.cargo/env\") and run scripts/install.sh again"
version=$(rustc --version 2>/dev/null | sed -n 's/^rustc \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
[ -n "$version" ] || fail "cannot tell the Rust version (rustc --version); install Rust with rustup (https://rustup.rs)"
major=${version% *}
minor=${version#* }
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 88 ]; }; then
  fail "Rust $major.$minor is too old: bg-agents needs 1.88 or newer; run: rustup update stable (or install Rust with rustup: https://rustup.rs)"
fi
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 ||
  fail "no C compiler (cc) on PATH: Rust links with it and the TLS library compiles C. Install one:
  sudo apt-get install build-essential    (Debian, Ubuntu)
  sudo dnf install gcc                    (Fedora)
  sudo pacman -S base-devel               (Arch)"
if [ -z "${BG_AGENTS_NO_CLAUDE:-}" ] && ! command -v claude >/dev/null 2>&1; then
  fail "the Claude Code CLI (claude) is not on PATH; the README's next commands install the plugin with it. Install it (Node.js 18+):
  npm install -g @anthropic-ai/claude-code
(see https://docs.anthropic.com/en/docs/claude-code), or set BG_AGENTS_NO_CLAUDE=1 to install only the binaries for another MCP client"
fi

on_path() {
  case ":${PATH:-}:" in
    *":$1:"*) return 0 ;;
  esac
  return 1
}

if [ -n "${BG_AGENTS_BIN_DIR:-}" ]; then
  bin=$BG_AGENTS_BIN_DIR
else
  bin=
  for d in "$HOME/.local/bin" "${CARGO_HOME:-$HOME/.cargo}/bin"; do
    if on_path "$d"; then
      bin=$d
      break
    fi
  done
  [ -n "$bin" ] || bin=$HOME/.local/bin
fi

echo "== building bg-agents and bg-agent-worker ($profile; $(rustc --version))"
if [ "$profile" = release ]; then
  cargo build --release --locked --workspace --bins
else
  cargo build --locked --workspace --bins
fi
# Where cargo put them: CARGO_TARGET_DIR, build.target-dir in a cargo config, or target/.
target=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -d "$target/$profile" ] || fail "cannot find the build output (cargo metadata says target directory \"$target\")"

mkdir -p "$bin"
install -m 755 "$target/$profile/bg-agents" "$target/$profile/bg-agent-worker" "$bin/"
echo "== installed $bin/bg-agents and $bin/bg-agent-worker ($("$bin/bg-agents" --version))"

if ! on_path "$bin"; then
  cat >&2 <<MSG
NOTE: $bin is not on your PATH, so Claude Code will not find bg-agents (its MCP server
would fail to start, and the plugin's hook would say so). Add it, then start claude
from a new shell:
  echo 'export PATH="$bin:\$PATH"' >> ~/.profile    (or ~/.bashrc, ~/.zshrc)
MSG
elif [ "$(command -v bg-agents)" != "$bin/bg-agents" ]; then
  echo "NOTE: another bg-agents comes first on PATH: $(command -v bg-agents); remove it or put $bin before it" >&2
fi
