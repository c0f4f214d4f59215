#!/usr/bin/env bash
# Runs every check and every test of the workspace, then the NAT test in network namespaces
# (where it can make them), a 60 s soak, and the two ways of installing
# (scripts/install-check.sh). Installs what the tests need when it is missing: curl, python3,
# kill and the Python modules websockets, grpc, protobuf and prometheus_client (Debian
# packages), buf (npm's @bufbuild/buf, into target/tools); the NAT test and the install check
# install their own.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_packages curl:curl python3:python3 kill:procps npm:npm
need_python_modules websockets:python3-websockets grpc:python3-grpcio google.protobuf:python3-protobuf \
  prometheus_client:python3-prometheus-client
scripts/lint-proto.sh

echo "== cargo fmt" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== cargo test" >&2
cargo test --workspace --locked
echo "== NAT test in network namespaces" >&2
SESAME_BIN=target/debug/sesame scripts/test-nat.sh
echo "== soak: connections churned for 60 s, then leaks checked" >&2
SESAME_BIN=target/debug/sesame scripts/soak.sh --duration 60
echo "== installing: cargo install, and a statically linked build" >&2
scripts/install-check.sh
