#!/usr/bin/env bash
# Checks the two ways the README gives to install `sesame`: `cargo install --locked --path cli`,
# and a statically linked Linux build (the musl target) that runs on any Linux machine. Each
# binary then starts a relay and lists its remotes with the relay's first token, over TLS.
# Installs what it needs: the musl target (rustup) and musl-tools (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

work=$(mktemp -d)
relay_pid=
cleanup() {
  [ -z "$relay_pid" ] || kill "$relay_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Runs a relay with BIN, and `ls` against it with its first token; fails unless both work.
smoke() {
  local bin=$1 out=$work/relay.out
  "$bin" --version
  "$bin" relay serve --listen 127.0.0.1:0 --data-dir "$work/data-${bin//\//_}" > "$out" 2>&1 &
  relay_pid=$!
  local addr fingerprint token_file
  addr=$(wait_line "$out" '^relay listening on ' "$relay_pid" | sed 's/^relay listening on //')
  fingerprint=$(wait_line "$out" '^  fingerprint: ' "$relay_pid" | sed 's/^  fingerprint: //')
  token_file=$(wait_line "$out" '^  admin token file: ' "$relay_pid" |
    sed 's/^  admin token file: //')
  HOME=$work/home "$bin" --relay "https://$addr" --fingerprint "$fingerprint" \
    --token "$(cat "$token_file")" ls | grep -q "no remotes"
  kill "$relay_pid"
  wait "$relay_pid" || true
  relay_pid=
  echo "$bin: a relay and ls work"
}

echo "== cargo install --locked --path cli" >&2
cargo install --quiet --locked --path cli --root "$work/install" --target-dir target
smoke "$work/install/bin/sesame"

echo "== a statically linked build (x86_64-unknown-linux-musl)" >&2
need_packages musl-gcc:musl-tools
rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
  rustup target add x86_64-unknown-linux-musl
cargo build --quiet --release --locked -p sesame --target x86_64-unknown-linux-musl
static=target/x86_64-unknown-linux-musl/release/sesame
if ldd "$static" 2>&1 | grep -q '=>'; then
  ldd "$static" >&2
  echo "$static links shared libraries" >&2
  exit 1
fi
smoke "$static"
