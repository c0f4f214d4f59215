# shellcheck shell=bash
# Shared by the benchmarks that run tunnels side by side (compare.sh, http.sh): starting and
# stopping processes, waiting for them, free ports, installing the peers and Sesame, and
# rathole's configuration. Sourced from the repository's root, after scripts/lib.sh.
#
# Sets: $sesame (SESAME_BIN, or built by need_sesame), $tools (where peers are installed),
# $work (a temp dir, removed on exit), $results (lines for the report), pids (every process
# started here, stopped on exit). A script may define `cleanup_more`, run on exit after the
# processes are stopped.

sesame=${SESAME_BIN:+$(realpath "$SESAME_BIN")}
tools=${SESAME_BENCH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sesame-bench}
work=$(mktemp -d)
results=$work/results # lines of "WHERE METRIC VALUE", for the report
pids=()               # everything started here, stopped on exit

fail() { echo "${0##*/}: $*" >&2; exit 1; }
warn() { echo "${0##*/}: $*" >&2; }

# Stops every process started here (waiting up to 5 s before killing), and removes what was made.
cleanup() {
  local _
  kill "${pids[@]}" 2>/dev/null || true
  for _ in {1..50}; do
    any_alive || break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if declare -F cleanup_more > /dev/null; then cleanup_more; fi
  rm -rf "$work"
}
any_alive() {
  local pid
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts CMD in the background with its output in $work/NAME.log; sets $pid.
spawn() {
  local name=$1
  shift
  : > "$work/$name.log" # there before wait_line reads it
  "$@" > "$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}

# Prints the first line of $work/NAME.log matching PATTERN, waiting up to 30 s while PID lives.
wait_line() {
  local name=$1 pattern=$2 pid=$3 _
  for _ in {1..300}; do
    grep -m1 -E "$pattern" "$work/$name.log" && return 0
    kill -0 "$pid" 2>/dev/null || fail "$name exited: $(cat "$work/$name.log")"
    sleep 0.1
  done
  fail "timed out waiting for '$pattern' from $name: $(cat "$work/$name.log")"
}

# Starts `sesame relay serve --listen 127.0.0.1:0 ARGS...` as NAME with a data directory of its
# own; sets $pid and relay_flags: --relay and --token, and --fingerprint unless it serves
# plaintext (--insecure-plaintext among ARGS).
start_relay() {
  local name=$1 addr token fingerprint
  shift
  spawn "$name" "$sesame" relay serve --listen 127.0.0.1:0 --data-dir "$work/$name-data" "$@"
  addr=$(wait_line "$name" '^relay listening on ' "$pid" | awk '{print $4}')
  # On a pipe, the relay leaves its first token in a file only its user can read.
  wait_line "$name" '^  admin token file: ' "$pid" > /dev/null
  token=$(cat "$work/$name-data/admin-token")
  case " $* " in
    *" --insecure-plaintext "*) relay_flags=(--relay "http://$addr" --token "$token") ;;
    *)
      fingerprint=$(wait_line "$name" '^  fingerprint: ' "$pid" | awk '{print $2}')
      relay_flags=(--relay "https://$addr" --fingerprint "$fingerprint" --token "$token")
      ;;
  esac
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Whether a server could listen on PORT (SO_REUSEADDR, as tokio's listeners: TIME_WAIT is no use).
port_is_free() {
  python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
# Prints LOW-HIGH, COUNT consecutive ports that are free now on 127.0.0.1 (for --tcp-ports),
# up to 100 tries. They are drawn below the kernel's ephemeral range: there no client
# connection holds a port (a busy run leaves thousands in TIME_WAIT) and no `bind(0)` picks one.
free_port_range() {
  python3 -c 'import random, socket, sys
count = int(sys.argv[1])
try:
    first_ephemeral = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError):
    first_ephemeral = 32768
low, high = (10000, first_ephemeral - count) if first_ephemeral - count > 11000 else (1024, 65536 - count)
for _ in range(100):
    start = random.randrange(low, high)
    held = []
    try:
        for port in range(start, start + count):
            s = socket.socket()
            held.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in held:
            s.close()
    print(f"{start}-{start + count - 1}")
    break
else:
    sys.exit(f"no {count} consecutive free ports found")' "$1"
}
# Waits (bounded) until PORT answers an echo, or with "open" only accepts a connection.
wait_echo() { python3 scripts/bench/echo.py ready "$1" 30 || fail "no echo through port $1"; }
wait_open() { python3 scripts/bench/echo.py open "$1" 30 || fail "nothing listens on port $1"; }

# Installs a crate's binary BIN into $tools unless it is there already.
cargo_install() {
  local bin=$1
  shift
  [ -x "$tools/bin/$bin" ] && return 0
  echo "installing $bin into $tools (takes minutes)" >&2
  cargo install -q --root "$tools" "$@"
}

# rathole 0.5.0's lock file pins a `time` crate that current Rust no longer compiles, so its
# dependencies are resolved afresh. Only the tcp and noise transports are measured: no TLS
# (and so no OpenSSL) or WebSocket.
install_rathole() {
  cargo_install rathole rathole --version 0.5.0 --no-default-features --features server,client,noise
}

# Drops FILE...'s pages from the page cache, written back first, so that every tunnel starts
# from its executable as from disk. A freshly built or installed executable sits in the cache
# in the large blocks its writing left, and a process maps whole blocks around each page it
# runs: its idle RSS would depend on how recently it was built rather than on what it does.
uncache() {
  python3 - "$@" <<'EOF'
import os
import sys

for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
EOF
}

# Sets $sesame: SESAME_BIN, or a release build of this tree.
need_sesame() {
  if [ -z "$sesame" ]; then
    cargo build --release -q -p sesame
    sesame=$PWD/target/release/sesame
  fi
}

# Writes DIR/server.toml and DIR/client.toml: a rathole server on 127.0.0.1:CONTROL with
# TRANSPORT (tcp or noise, with keys made by `rathole --genkey`), one service per
# NAME=ENTRY:TARGET word, which the server serves on 127.0.0.1:ENTRY and the client carries to
# 127.0.0.1:TARGET.
rathole_config() {
  local dir=$1 transport=$2 control=$3 service name entry target
  local private public server_keys='' client_keys=''
  shift 3
  mkdir -p "$dir"
  if [ "$transport" = noise ]; then
    "$tools/bin/rathole" --genkey > "$dir/keys"
    private=$(awk '/Private Key/ {getline; print}' "$dir/keys")
    public=$(awk '/Public Key/ {getline; print}' "$dir/keys")
    printf -v server_keys '[server.transport.noise]\nlocal_private_key = "%s"' "$private"
    printf -v client_keys '[client.transport.noise]\nremote_public_key = "%s"' "$public"
  fi
  printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.transport]\ntype = "%s"\n%s\n' \
    "$control" "$transport" "$server_keys" > "$dir/server.toml"
  printf '[client]\nremote_addr = "127.0.0.1:%s"\n[client.transport]\ntype = "%s"\n%s\n' \
    "$control" "$transport" "$client_keys" > "$dir/client.toml"
  for service in "$@"; do
    name=${service%%=*} entry=${service#*=} target=${service##*:}
    entry=${entry%%:*}
    printf '[server.services.%s]\ntoken = "bench"\nbind_addr = "127.0.0.1:%s"\n' \
      "$name" "$entry" >> "$dir/server.toml"
    printf '[client.services.%s]\ntoken = "bench"\nlocal_addr = "127.0.0.1:%s"\n' \
      "$name" "$target" >> "$dir/client.toml"
  done
}

# Prints the relay's TCP port that agent NAME (its log in $work/NAME.log, PID) published for
# its exposed PORT: the `public: tcp://HOST:P` line under `port PORT -> ...`. Waits like wait_line.
published_tcp_port() {
  local name=$1 port=$2 pid=$3 found _
  for _ in {1..300}; do
    found=$(awk -v port="$port" '$1 == "port" { exposed = $2 }
      $1 == "public:" && $2 ~ /^tcp:/ && exposed == port { n = split($2, part, ":"); print part[n]; exit }' \
      "$work/$name.log")
    [ -n "$found" ] && { echo "$found"; return 0; }
    kill -0 "$pid" 2>/dev/null || fail "$name exited: $(cat "$work/$name.log")"
    sleep 0.1
  done
  fail "timed out waiting for the public TCP port of port $port from $name: $(cat "$work/$name.log")"
}

# Other work on the machine skews every figure: the report says how much CPU it took meanwhile.
# WHEN is start or end.
account() {
  local machine ours
  read -r machine ours <<< "$(python3 scripts/bench/procstat.py account $$)"
  printf 'machine machine-cpu-%s %s\nmachine our-cpu-%s %s\nmachine time-%s %s\n' \
    "$1" "$machine" "$1" "$ours" "$1" "$(date +%s.%N)" >> "$results"
}
