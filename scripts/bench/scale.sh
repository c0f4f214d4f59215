#!/usr/bin/env bash
# The scale bench: one relay process with 1,000 and then 10,000 light agents (from the library,
# in one process), then 10,000 tunneled connections open at once. Prints, for each, the relay's
# RSS per agent and per connection, registrations per second, and the time for every agent to
# register again after the relay restarts on the same address.
#
#   scripts/bench/scale.sh [AGENTS...]      (default: 1000 10000)
#
# Each agent holds a descriptor in the relay and in this bench (tunneled connections are HTTP/2
# streams, not sockets), so the open-files limit is raised to the hard limit, which must allow
# the agents plus about a thousand.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -q -p sesame -p sesame-tests --bin sesame --bin scale
ulimit -n "$(ulimit -Hn)"
agents=("$@")
[ ${#agents[@]} -gt 0 ] || agents=(1000 10000)
for count in "${agents[@]}"; do
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((count + 1024)) ]; then
    echo "the open-files limit $(ulimit -n) is too low for $count agents" >&2
    exit 1
  fi
  echo "## $count agents"
  echo
  target/release/scale target/release/sesame "$count" 10000
  echo
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r)"
