#!/usr/bin/env bash
# Lints the API under proto/ with buf (STANDARD and comment rules, see buf.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
tools=target/tools
buf="$tools/node_modules/.bin/buf"
if ! [ -x "$buf" ] || [ "$("$buf" --version)" != "$BUF_VERSION" ]; then
  echo "installing buf $BUF_VERSION from npm into $tools" >&2
  mkdir -p "$tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" "@bufbuild/buf@$BUF_VERSION" >&2
fi
echo "== buf lint" >&2
"$buf" lint
