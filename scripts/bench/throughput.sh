#!/usr/bin/env bash
# Measures one connection's throughput through Sesame against the same iperf3 run on plain
# loopback, in one run: relay, agent and dialer are release builds on this machine.
#
#   scripts/bench/throughput.sh [SECONDS]
#
# Prints MiB/s for each direction and the ratio to direct loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
need_packages iperf3:iperf3

seconds=${1:-5}
cargo build --release -q -p sesame
sesame=target/release/sesame
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Prints the first line of FILE matching PATTERN, waiting up to 30 s for it to be written.
wait_line() {
  local file=$1 pattern=$2
  touch "$file"
  grep -m1 -E "$pattern" <(timeout 30 tail -n +1 -f "$file") && return 0
  echo "timed out waiting for '$pattern' in $file" >&2; cat "$file" >&2; exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

iperf_port=$(free_port)
iperf3 --server --bind 127.0.0.1 --port "$iperf_port" > "$work/iperf-server" 2>&1 & pids+=($!)
"$sesame" relay serve --listen 127.0.0.1:0 > "$work/relay" 2>&1 & pids+=($!)
relay="http://$(wait_line "$work/relay" '^relay listening on ' | awk '{print $4}')"
"$sesame" --relay "$relay" expose "$iperf_port" --name bench > "$work/expose" 2>&1 & pids+=($!)
wait_line "$work/expose" 'reach it with' > /dev/null
"$sesame" --relay "$relay" connect bench --port "$iperf_port" > "$work/connect" 2>&1 & pids+=($!)
tunnel=$(wait_line "$work/connect" '^listening on ' | sed -E 's/^listening on ([0-9.]+):([0-9]+):.*/\2/')

# Runs iperf3 against PORT (REVERSE = -R or empty) and prints MiB/s received.
measure() {
  local port=$1 reverse=${2:-}
  iperf3 --client 127.0.0.1 --port "$port" --time "$seconds" --json $reverse |
    python3 -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8 / 2**20))'
}

echo "| path | dialer to agent MiB/s | agent to dialer MiB/s |"
echo "| --- | --- | --- |"
direct_up=$(measure "$iperf_port"); direct_down=$(measure "$iperf_port" -R)
echo "| direct loopback | $direct_up | $direct_down |"
up=$(measure "$tunnel"); down=$(measure "$tunnel" -R)
echo "| sesame (connect --listen) | $up | $down |"
python3 -c "print('| ratio to direct | %.2f | %.2f |' % ($up / $direct_up, $down / $direct_down))"
