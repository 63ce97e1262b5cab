#!/bin/sh
# The bg-agents plugin's hooks when the `bg-agents` program is not on the PATH that
# Claude Code gives its hooks (and its MCP servers): then the MCP server cannot start
# either, and without this the model and the person would hear nothing. Said once per
# session, after a prompt or a tool call; prints nothing otherwise.
# Usage (hooks.json): sh not-installed.sh post-tool-use|user-prompt-submit|stop, the
# hook's JSON on stdin.
# All of stdin is read whatever the event, so Claude Code never writes to a closed pipe.
input=$(head -c 1048576; cat >/dev/null)
case "$1" in
  post-tool-use) name=PostToolUse ;;
  user-prompt-submit) name=UserPromptSubmit ;;
  *) exit 0 ;;
esac
session=$(printf '%s' "$input" | tr -d '\n' |
  sed -n 's/.*"session_id"[[:space:]]*:[[:space:]]*"\([A-Za-z0-9_-]\{1,128\}\)".*/\1/p')
[ -n "$session" ] || exit 0
# The directory where `bg-agents hook` keeps the same notes (src/notices: base_dir).
case "${XDG_RUNTIME_DIR:-}" in
  /*) base="$XDG_RUNTIME_DIR/bg-agents" ;;
  *)
    case "${XDG_STATE_HOME:-}" in
      /*) base="$XDG_STATE_HOME/bg-agents/run" ;;
      *) [ -n "${HOME:-}" ] || exit 0; base="$HOME/.local/state/bg-agents/run" ;;
    esac
    ;;
esac
umask 077
# Nothing is made through a symlink (a planted one could redirect the note).
[ ! -L "$base" ] && [ ! -L "$base/.told" ] || exit 0
mkdir -p "$base/.told" 2>/dev/null || exit 0
# noclobber: only the hook that creates the note speaks, so a session is told once.
( set -C; : > "$base/.told/$session" ) 2>/dev/null || exit 0
path_json=$(printf '%s' "${PATH:-}" | sed 's/\\/\\\\/g; s/"/\\"/g')
printf '{"hookSpecificOutput":{"hookEventName":"%s","additionalContext":"%s"}}\n' "$name" \
  "bg-agents: the bg-agents program is not on the PATH that Claude Code gives its hooks and MCP servers, so the bg-agents MCP server cannot start and its agent_* tools are missing (said once per session). Tell the user: from a checkout of bg-agents run scripts/install.sh (it builds and installs bg-agents and bg-agent-worker and says how to put their directory on PATH), or add the directory that holds them to PATH before starting claude; then restart Claude Code. PATH here: $path_json"
