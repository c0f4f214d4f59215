#!/usr/bin/env bash
# Measures Sesame side by side with its peers, all on loopback, in one run: direct loopback (the
# limit), `ssh -R`, rathole (tcp and noise transports), bore, and Sesame four ways: through
# `connect --listen` and through a public TCP port of the relay, each in plaintext and over TLS.
# Each path forwards to the same iperf3 server and the same echo server.
#
#   scripts/bench/compare.sh [SECONDS]     how long each iperf3 run and connection run lasts (5)
#
# Measures bulk throughput (iperf3, 1 and 8 streams, both directions), the round trip of
# 64-byte messages, new connections per second and time to first byte, the tunnel processes'
# RSS at idle and at peak, and their CPU seconds per GiB moved. Each measurement takes the paths
# in turn before the next measurement starts, so that machine noise spreads over all of them.
# Prints markdown tables; docs/benchmarks.md explains them.
#
# Installs what it needs: iperf3, OpenSSH and python3 from Debian, rathole and bore from
# crates.io into SESAME_BENCH_DIR (default ~/.cache/sesame-bench). Takes Sesame from SESAME_BIN,
# or builds it.
set -euo pipefail
SESAME_BIN=${SESAME_BIN:+$(realpath "$SESAME_BIN")}
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/bench/common.sh
source scripts/bench/common.sh

seconds=${1:-5}
# SESAME_BENCH_PATHS="direct sesame-tcp rathole-tcp" measures only those (for a quick look while
# profiling); the published tables take every path.
read -ra paths <<< "${SESAME_BENCH_PATHS:-direct sesame sesame-tls sesame-tcp sesame-tcp-tls bore rathole-tcp rathole-noise ssh}"
bore_control_port=7835 # fixed in bore 0.6: it has no flag for it

made_run_sshd=
declare -A target   # the iperf3 and echo servers' ports
declare -A entry    # each path's entrance to them, by PATH/iperf3 and PATH/echo
declare -A procs    # each path's tunnel processes, as ROLE=PID words
declare -A cpu_only # processes counted in CPU time but not shown in memory

cleanup_more() { [ -z "$made_run_sshd" ] || rmdir /run/sshd; }

install_tools() {
  need_packages iperf3:iperf3 sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client python3:python3
  cargo_install bore --locked bore-cli --version 0.6.0
  install_rathole
  need_sesame
  uncache "$sesame" "$tools/bin/bore" "$tools/bin/rathole" "$(command -v sshd)" "$(command -v ssh)"
}

# The servers behind every tunnel.
start_targets() {
  spawn iperf3 iperf3 --server --bind 127.0.0.1 --port "$(free_port)" --forceflush
  target[iperf3]=$(wait_line iperf3 '^Server listening on ' "$pid" | awk '{print $4}')
  spawn echo python3 scripts/bench/echo.py serve
  target[echo]=$(wait_line echo '^echo listening on ' "$pid" | awk '{print $4}')
}

start_direct() {
  entry[direct/iperf3]=${target[iperf3]} entry[direct/echo]=${target[echo]} procs[direct]=
}

# Relay, an agent exposing both targets, and a `connect --listen` dialer per target; the gRPC
# connections in plaintext for PATH sesame, over TLS (the relay's default) for sesame-tls.
start_sesame() {
  local path=${1:-sesame} relay_pid agent_pid dialers=() service plaintext=()
  [ "$path" = sesame-tls ] || plaintext=(--insecure-plaintext)
  start_relay "$path-relay" "${plaintext[@]}"
  relay_pid=$pid
  spawn "$path-agent" "$sesame" "${relay_flags[@]}" expose "${target[iperf3]}" "${target[echo]}" --name bench
  agent_pid=$pid
  wait_line "$path-agent" '^remote bench is connected to relay ' "$pid" > /dev/null
  for service in iperf3 echo; do
    spawn "$path-dialer-$service" "$sesame" "${relay_flags[@]}" connect bench --port "${target[$service]}" \
      --listen 127.0.0.1:0
    dialers+=("dialer-$service=$pid")
    entry[$path/$service]=$(wait_line "$path-dialer-$service" '^listening on ' "$pid" |
      sed -E 's/^listening on [0-9.]+:([0-9]+):.*/\1/')
  done
  wait_echo "${entry[$path/echo]}"
  procs[$path]="relay=$relay_pid agent=$agent_pid ${dialers[*]}"
}

# A relay with a range of public TCP ports, and an agent publishing both targets on two of them:
# the clients connect to the relay itself, with no `connect --listen` in between. The agent's
# connection to the relay is plaintext for PATH sesame-tcp, over TLS for sesame-tcp-tls: the
# shape of `ssh -R` and rathole noise, encrypted between the tunnel's two ends only.
start_sesame_tcp() {
  local path=$1 relay_pid service plaintext=()
  [ "$path" = sesame-tcp-tls ] || plaintext=(--insecure-plaintext)
  start_relay "$path-relay" "${plaintext[@]}" --tcp-ports "$(free_port_range 4)" --public-host 127.0.0.1
  relay_pid=$pid
  spawn "$path-agent" "$sesame" "${relay_flags[@]}" expose "${target[iperf3]}" "${target[echo]}" --name bench \
    --tcp="${target[iperf3]}" --tcp="${target[echo]}"
  for service in iperf3 echo; do
    entry[$path/$service]=$(published_tcp_port "$path-agent" "${target[$service]}" "$pid")
  done
  wait_echo "${entry[$path/echo]}"
  procs[$path]="relay=$relay_pid agent=$pid"
}

# A server and a `bore local` per target, each asking for a free port on the server.
start_bore() {
  local server_pid clients=() service port
  port_is_free "$bore_control_port" ||
    fail "bore's control port $bore_control_port (bore 0.6 cannot change it) is in use: free it to run this"
  spawn bore-server "$tools/bin/bore" server --bind-addr 127.0.0.1
  server_pid=$pid
  wait_line bore-server 'server listening' "$pid" > /dev/null
  for service in iperf3 echo; do
    port=$(free_port)
    spawn "bore-client-$service" "$tools/bin/bore" local "${target[$service]}" --local-host 127.0.0.1 \
      --to 127.0.0.1 --port "$port"
    clients+=("client-$service=$pid")
    wait_line "bore-client-$service" "listening at 127.0.0.1:$port" "$pid" > /dev/null
    entry[bore/$service]=$port
  done
  wait_echo "${entry[bore/echo]}"
  procs[bore]="server=$server_pid ${clients[*]}"
}

# A rathole server and client with TRANSPORT (tcp or noise), one service per target.
start_rathole() {
  local transport=$1 path=rathole-$1 dir=$work/rathole-$1 server_pid
  entry[$path/iperf3]=$(free_port) entry[$path/echo]=$(free_port)
  rathole_config "$dir" "$transport" "$(free_port)" "iperf3=${entry[$path/iperf3]}:${target[iperf3]}" \
    "echo=${entry[$path/echo]}:${target[echo]}"
  spawn "$path-server" "$tools/bin/rathole" --server "$dir/server.toml"
  server_pid=$pid
  spawn "$path-client" "$tools/bin/rathole" --client "$dir/client.toml"
  # The server listens for a service only once that service's client has connected.
  wait_open "${entry[$path/iperf3]}"
  wait_echo "${entry[$path/echo]}"
  procs[$path]="server=$server_pid client=$pid"
}

# sshd on a free port with its own host key and authorized key, and `ssh -N -R` per target.
start_ssh() {
  local dir=$work/ssh port sshd_pid monitor session _
  mkdir "$dir"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  port=$(free_port) entry[ssh/iperf3]=$(free_port) entry[ssh/echo]=$(free_port)
  cat > "$dir/sshd_config" << EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile none
UsePAM no
StrictModes no
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
EOF
  # Privilege separation needs this directory; a machine without a running sshd lacks it.
  [ -d /run/sshd ] || { mkdir -m 0755 /run/sshd && made_run_sshd=1; }
  spawn sshd "$(command -v sshd)" -D -e -f "$dir/sshd_config"
  sshd_pid=$pid
  wait_line sshd "^Server listening on 127.0.0.1 port $port" "$pid" > /dev/null
  spawn ssh ssh -N -F /dev/null -i "$dir/client_key" -p "$port" -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile="$dir/known_hosts" -o ExitOnForwardFailure=yes \
    -R "${entry[ssh/iperf3]}:127.0.0.1:${target[iperf3]}" -R "${entry[ssh/echo]}:127.0.0.1:${target[echo]}" \
    "$(id -un)@127.0.0.1"
  wait_open "${entry[ssh/iperf3]}"
  wait_echo "${entry[ssh/echo]}"
  # sshd forks a process per connection. For a user other than root that one is a monitor,
  # and its child the session that forwards.
  monitor=$(pgrep -P "$sshd_pid") || fail "no sshd process for the connection"
  session=$(pgrep -P "$monitor") || session=$monitor
  pids+=("$monitor" "$session")
  procs[ssh]="sshd-session=$session ssh=$pid"
  cpu_only[ssh]="sshd-listener=$sshd_pid"
  [ "$monitor" = "$session" ] || cpu_only[ssh]+=" sshd-monitor=$monitor"
}

start_path() {
  case $1 in
    rathole-*) start_rathole "${1#rathole-}" ;;
    sesame-tcp*) start_sesame_tcp "$1" ;;
    sesame-tls) start_sesame sesame-tls ;;
    *) "start_$1" ;;
  esac
}

# PATH/ROLE=PID for every tunnel process; with "all", those counted only in CPU time too.
labels() {
  local path role_pid
  for path in "${paths[@]}"; do
    # shellcheck disable=SC2086 # the lists are words
    for role_pid in ${procs[$path]} ${1:+${cpu_only[$path]:-}}; do echo "$path/$role_pid"; done
  done
}

# Appends procstat.py's "PATH/ROLE VALUE" lines to the results as METRIC/ROLE, or as METRIC
# alone with "summed".
record_procs() {
  awk -v metric="$1" -v summed="${2:-}" \
    '{ split($1, p, "/"); print p[1], (summed ? metric : metric "/" p[2]), $2 }' >> "$results"
}

# iperf3 client through PATH for $seconds with STREAMS streams; DIRECTION up sends to the
# server behind the tunnel, down (--reverse) receives from it. Records Gbit/s and bytes moved.
measure_iperf() {
  local path=$1 streams=$2 direction=$3 reverse=() json
  [ "$direction" = down ] && reverse=(--reverse)
  json=$(timeout $((seconds + 30)) iperf3 --client 127.0.0.1 --port "${entry[$path/iperf3]}" --time "$seconds" \
    --parallel "$streams" "${reverse[@]}" --json) ||
    { warn "iperf3 through $path failed: $(grep -o '"error":.*' <<< "$json")"; return 0; }
  python3 -c '
import json, sys
received = json.load(sys.stdin)["end"]["sum_received"]
print(sys.argv[1], sys.argv[2], "%.3f" % (received["bits_per_second"] / 1e9))
print(sys.argv[1], "bytes", received["bytes"])' "$path" "gbps-$streams-$direction" <<< "$json" >> "$results"
}

# 5,000 round trips of 64 bytes on one connection, after a warm-up.
measure_rtt() {
  local path=$1 out p50 p99
  out=$(timeout 120 python3 scripts/bench/echo.py rtt "${entry[$path/echo]}") ||
    { warn "round trips through $path failed"; return 0; }
  read -r p50 p99 <<< "$out"
  printf '%s rtt-p50 %s\n%s rtt-p99 %s\n' "$path" "$p50" "$path" "$p99" >> "$results"
}

# Four clients opening connections for $seconds: each one round trip, then close.
measure_conns() {
  local path=$1 rate
  rate=$(timeout $((seconds + 60)) python3 scripts/bench/echo.py conns "${entry[$path/echo]}" "$seconds" 4) ||
    { warn "new connections through $path failed"; return 0; }
  echo "$path conns $rate" >> "$results"
}

# Connect to first echoed byte, one connection at a time (up to $seconds).
measure_ttfb() {
  local path=$1 p50
  p50=$(timeout $((seconds + 60)) python3 scripts/bench/echo.py ttfb "${entry[$path/echo]}" "$seconds") ||
    { warn "first bytes through $path failed"; return 0; }
  echo "$path ttfb-p50 $p50" >> "$results"
}

# The bulk runs, with the peak RSS sampled meanwhile and the CPU time read before and after.
bulk() {
  local sampler run path shown all
  mapfile -t shown < <(labels)
  mapfile -t all < <(labels all)
  python3 scripts/bench/procstat.py cpu "${all[@]}" | record_procs cpu-before summed
  python3 scripts/bench/procstat.py peak $((30 * seconds + 600)) "${shown[@]}" > "$work/peak" &
  sampler=$!
  pids+=("$sampler")
  for run in "1 up" "1 down" "8 up" "8 down"; do
    for path in "${paths[@]}"; do
      # shellcheck disable=SC2086 # streams and direction
      measure_iperf "$path" $run
    done
  done
  kill -TERM "$sampler" 2>/dev/null || true # it stops by itself too, after a bound
  wait "$sampler" || true
  record_procs rss-peak < "$work/peak"
  python3 scripts/bench/procstat.py cpu "${all[@]}" | record_procs cpu-after summed
}

versions() {
  echo "Versions: $("$sesame" --version), $("$tools/bin/bore" --version)," \
    "rathole $("$tools/bin/rathole" --version | awk '/Build Version/ {print $3}')," \
    "$(ssh -V 2>&1 | cut -d, -f1), $(iperf3 --version | head -1 | cut -d' ' -f1-2), $(python3 --version)"
}

main() {
  local path
  install_tools
  account start
  start_targets
  for path in "${paths[@]}"; do
    echo "starting $path" >&2
    start_path "$path"
  done
  labels | xargs python3 scripts/bench/procstat.py rss | record_procs rss-idle
  labels | xargs python3 scripts/bench/procstat.py anon | record_procs anon-idle
  echo "measuring bulk throughput, $((4 * ${#paths[@]})) runs of $seconds s" >&2
  bulk
  echo "measuring round trips" >&2
  for path in "${paths[@]}"; do measure_rtt "$path"; done
  echo "measuring new connections and first bytes" >&2
  for path in "${paths[@]}"; do measure_conns "$path"; done
  for path in "${paths[@]}"; do measure_ttfb "$path"; done
  account end
  python3 scripts/bench/report.py "$results" "${paths[@]}"
  echo
  versions
  echo "bore's control port is $bore_control_port: bore 0.6 has no flag to change it."
}

main
