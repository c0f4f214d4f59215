#!/usr/bin/env bash
# Proves Sesame works across a real NAT. Each party has a network namespace of its own:
#
#   lan 10.77.1.2 -- router (NAT) -- wan (a bridge) -- relay 10.77.2.2
#   (agent, services, sshd)                         \- client 10.77.2.3 (connect, ssh)
#
# The router masquerades the LAN and rejects every connection opened from the WAN, so the only
# way in is the agent's own connection out to the relay.
#
#   SESAME_BIN=target/release/sesame scripts/test-nat.sh
#
# Needs root: prints `nat test: skipped: REASON` and exits 0 when it cannot make namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

sesame=${SESAME_BIN:?set SESAME_BIN to the sesame binary to test}
if [ "$(id -u)" -ne 0 ]; then
  echo "nat test: skipped: not root (network namespaces need root)"
  exit 0
fi
need_packages ip:iproute2 tc:iproute2 iptables:iptables python3:python3 sha256sum:coreutils ps:procps \
  ssh:openssh-client scp:openssh-client ssh-keygen:openssh-client /usr/sbin/sshd:openssh-server

id=sx$$ # namespace names are $id-NAME: unique to this run
names=(lan router wan relay client)
work=$(mktemp -d /tmp/sesame-nat.XXXXXX)
mkdir -p "$work"/{logs,lan,client,ssh}
step=setup
started=$SECONDS

in_ns() { local ns=$1; shift; ip netns exec "$id-$ns" "$@"; }
ns_pids() { local ns; for ns in "${names[@]}"; do ip netns pids "$id-$ns" 2>/dev/null || true; done; }

# Everything in our namespaces was started by this script, sshd's sessions included.
cleanup() {
  local status=$?
  ns_pids | xargs -r kill 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(ns_pids)" ] && break; sleep 0.1; done
  ns_pids | xargs -r kill -KILL 2>/dev/null || true
  wait 2>/dev/null || true
  for ns in "${names[@]}"; do ip netns del "$id-$ns" 2>/dev/null || true; done
  [ -z "${made_run_sshd:-}" ] || rmdir /run/sshd
  if [ "$status" -ne 0 ]; then
    for log in "$work"/logs/*; do echo "--- tail of $log" >&2; tail -n 15 "$log" >&2; done
    rm -f "$work"/{lan,client}/*.bin
    echo "nat test: failed in step '$step'; logs are in $work/logs" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

ok() { echo "nat test: $step: ok${1:+ ($1)}"; }
fail() { echo "nat test: $step: FAILED: $*" >&2; exit 1; }

# Runs CMD... in namespace NS in the background, its output in logs/LOG; $! is its pid (not a
# subshell's: `ip netns exec` execs CMD).
spawn() { local ns=$1 log=$2; shift 2; ip netns exec "$id-$ns" "$@" > "$work/logs/$log" 2>&1 & }

# Stops PIDs (children of this shell): TERM, then KILL for what still runs after 5 s.
stop() {
  kill "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    ps -o stat= -p "$(IFS=,; echo "$*")" | grep -qv '^Z' || break
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}

# Prints the first line of logs/LOG matching PATTERN, waiting up to SECONDS (default 30).
wait_line() {
  local log=$work/logs/$1 pattern=$2 seconds=${3:-30}
  for _ in $(seq $((seconds * 10))); do
    grep -m1 -E -- "$pattern" "$log" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no line matching '$pattern' in $log within ${seconds}s"
}

same_file() {
  [ "$(sha256sum < "$1")" = "$(sha256sum < "$2")" ] ||
    fail "$2 ($(stat -c %s "$2") bytes) differs from $1 ($(stat -c %s "$1") bytes)"
}

# Succeeds when a TCP connection from namespace NS to HOST:PORT opens within 5 s.
tcp_opens() { in_ns "$1" timeout 5 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; }

setup_network() {
  for ns in "${names[@]}"; do
    ip netns add "$id-$ns" 2>"$work/logs/netns" ||
      { echo "nat test: skipped: cannot create a network namespace: $(cat "$work/logs/netns")"; exit 0; }
    in_ns "$ns" ip link set lo up
  done
  ip -n "$id-lan" link add eth0 type veth peer name lan0 netns "$id-router"
  in_ns wan ip link add br0 type bridge
  in_ns wan ip link set br0 up
  # A bridge port per WAN party, named after it; the party's end is wan0 (router) or eth0.
  ip -n "$id-wan" link add router type veth peer name wan0 netns "$id-router"
  ip -n "$id-wan" link add relay type veth peer name eth0 netns "$id-relay"
  ip -n "$id-wan" link add client type veth peer name eth0 netns "$id-client"
  for port in router relay client; do in_ns wan ip link set "$port" master br0 up; done

  address lan eth0 10.77.1.2/24 10.77.1.1
  address router lan0 10.77.1.1/24
  address router wan0 10.77.2.1/24
  # Their default route is the router, so WAN->LAN fails because the router refuses it.
  address relay eth0 10.77.2.2/24 10.77.2.1
  address client eth0 10.77.2.3/24 10.77.2.1

  in_ns router sysctl -q -w net.ipv4.ip_forward=1
  in_ns router iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
  in_ns router iptables -A FORWARD -i lan0 -o wan0 -j ACCEPT
  in_ns router iptables -A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  in_ns router iptables -A FORWARD -i wan0 -o lan0 -p tcp -j REJECT --reject-with tcp-reset
  in_ns router iptables -A FORWARD -i wan0 -o lan0 -j REJECT
}

# Gives NS's interface IF the address ADDR, and a default route via GATEWAY if given.
address() {
  in_ns "$1" ip addr add "$3" dev "$2"
  in_ns "$1" ip link set "$2" up
  [ -z "${4:-}" ] || in_ns "$1" ip route add default via "$4"
}

# In the LAN: two services on ports they pick (random data, at full speed and paced), and sshd.
start_services() {
  head -c 16M /dev/urandom > "$work/lan/16.bin"
  head -c 64M /dev/urandom > "$work/lan/64.bin"
  head -c 64M /dev/urandom > "$work/client/64.bin"
  cat > "$work/serve.py" <<'EOF'
# Sends FILE to each connection, then closes it; no faster than RATE bytes/s if given.
import socket, sys, threading, time
path, rate = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0

def send(conn):
    with conn, open(path, "rb") as file:
        if not rate:
            return conn.sendfile(file)
        start, sent = time.monotonic(), 0
        while chunk := file.read(65536):
            conn.sendall(chunk)
            sent += len(chunk)
            time.sleep(max(0, start + sent / rate - time.monotonic()))

def serve(conn):
    try:
        send(conn)
    except (BrokenPipeError, ConnectionResetError):
        pass  # a reader that leaves early, such as the probe in step_no_way_in

server = socket.create_server(("0.0.0.0", 0))
print(server.getsockname()[1], flush=True)
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
EOF
  spawn lan svc python3 "$work/serve.py" "$work/lan/16.bin"
  svc_port=$(wait_line svc '^[0-9]+$' 10)
  # 12 MiB/s: the 64 MiB take about 5 s, long enough to cut the link in the middle.
  spawn lan paced python3 "$work/serve.py" "$work/lan/64.bin" $((12 << 20))
  paced_port=$(wait_line paced '^[0-9]+$' 10)

  ssh-keygen -q -t ed25519 -N '' -C nat-test-host -f "$work/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -C nat-test-client -f "$work/ssh/id"
  cp "$work/ssh/id.pub" "$work/ssh/authorized_keys"
  [ -x /usr/lib/openssh/sftp-server ] || fail "no /usr/lib/openssh/sftp-server, which scp needs"
  cat > "$work/ssh/sshd_config" <<EOF
Port 22
HostKey $work/ssh/host_key
AuthorizedKeysFile $work/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  # sshd's privilege separation directory.
  [ -d /run/sshd ] || { mkdir -m 0755 /run/sshd; made_run_sshd=1; }
  spawn lan sshd /usr/sbin/sshd -D -e -f "$work/ssh/sshd_config"
  wait_line sshd 'Server listening on' 10 > /dev/null
}

# (Re)starts the relay and the agent, with --keepalive KEEPALIVE if given; sets sesame_flags.
start_tunnel() {
  local keepalive=${1:-} tag=${1:-main} flags=()
  [ -z "${tunnel_pids:-}" ] || stop "${tunnel_pids[@]}"
  [ -z "$keepalive" ] || flags=(--keepalive "$keepalive")
  spawn relay "relay-$tag" "$sesame" "${flags[@]}" -v relay serve --listen 10.77.2.2:0 --grace 2s \
    --data-dir "$work/relay-data-$tag"
  tunnel_pids=($!)
  relay_log=relay-$tag
  local addr fingerprint token
  addr=$(wait_line "$relay_log" '^relay listening on 10\.77\.2\.2:[0-9]+$' 10 | awk '{print $4}')
  # Across the "internet", the relay serves TLS with its self-signed certificate, and wants
  # its token.
  fingerprint=$(wait_line "$relay_log" '^  fingerprint: ' 10 | awk '{print $2}')
  wait_line "$relay_log" '^  admin token file: ' 10 > /dev/null
  token=$(cat "$work/relay-data-$tag/admin-token")
  sesame_flags=("${flags[@]}" --relay "https://$addr" --fingerprint "$fingerprint" --token "$token")
  agent_log=agent-$tag
  spawn lan "$agent_log" "$sesame" "${sesame_flags[@]}" expose 22 "$svc_port" "$paced_port" --name lanbox
  tunnel_pids+=($!)
  wait_line "$agent_log" '^remote lanbox is connected to relay' 20 > /dev/null
}

# Copies what lanbox's PORT sends into FILE, over one `connect --stdio`.
fetch_stdio() {
  in_ns client timeout 120 "$sesame" "${sesame_flags[@]}" connect lanbox --port "$1" --stdio \
    < /dev/null > "$2" 2>> "$work/logs/connect-stdio" || fail "connect --stdio to port $1 failed (exit $?)"
}

# Copies what lanbox's PORT sends into FILE, through `connect --listen 127.0.0.1:0`.
fetch_listen() {
  spawn client connect-listen "$sesame" "${sesame_flags[@]}" connect lanbox --port "$1" \
    --listen 127.0.0.1:0
  local pid=$! port
  port=$(wait_line connect-listen "^listening on 127\.0\.0\.1:[0-9]+: connections go to lanbox port $1\$" 10 |
    sed -E 's/^listening on [0-9.]+:([0-9]+):.*/\1/')
  in_ns client timeout 60 bash -c "cat < /dev/tcp/127.0.0.1/$port" > "$2" ||
    fail "reading from connect --listen's port $port failed"
  stop "$pid"
}

# Packets the router rejected on their way into the LAN.
rejected() { in_ns router iptables -nvxL FORWARD | awk '/REJECT/ {n += $1} END {print n + 0}'; }

step_no_way_in() {
  step="no way in"
  tcp_opens lan 10.77.1.2 "$svc_port" || fail "the service does not answer inside the LAN"
  local before
  before=$(rejected)
  for ns in client relay; do
    ! tcp_opens "$ns" 10.77.1.2 "$svc_port" || fail "$ns opened a connection to 10.77.1.2:$svc_port"
  done
  [ "$(rejected)" -ge $((before + 2)) ] || fail "the router's reject rules did not see the attempts"
  ok "the service answers in the LAN; the router rejects client and relay"
}

step_agent_behind_nat() {
  step="agent behind the NAT"
  local json peer
  json=$(in_ns client "$sesame" "${sesame_flags[@]}" ls --json) || fail "sesame ls failed"
  python3 -c 'import json, sys; sys.exit(not any(r["name"] == "lanbox" for r in json.load(sys.stdin)))' \
    <<< "$json" || fail "ls --json does not list lanbox: $json"
  peer=$(wait_line "$relay_log" 'remote connected.*peer=' 5 | grep -o 'peer=[0-9.:]*')
  [[ $peer == peer=10.77.2.1:* ]] || fail "the relay saw the agent as $peer, not as the router"
  ! grep -q '10\.77\.1\.' "$work/logs/$relay_log" || fail "the relay's log has a LAN address"
  ok "ls lists lanbox; the relay saw the agent as ${peer#peer=}, the router"
}

step_transfer() {
  step="transfer"
  fetch_stdio "$svc_port" "$work/client/16-stdio.bin"
  same_file "$work/lan/16.bin" "$work/client/16-stdio.bin"
  fetch_listen "$svc_port" "$work/client/16-listen.bin"
  same_file "$work/lan/16.bin" "$work/client/16-listen.bin"
  ok "16 MiB byte-exact over connect --stdio and connect --listen"
}

step_ssh() {
  step="ssh"
  local proxy out
  proxy="$(printf '%q ' "$sesame" "${sesame_flags[@]}")connect %h --port 22 --stdio"
  local opts=(-F /dev/null -i "$work/ssh/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o BatchMode=yes -o LogLevel=ERROR -o "ProxyCommand=$proxy")
  out=$(in_ns client timeout 30 ssh "${opts[@]}" root@lanbox ip -4 addr show 2>> "$work/logs/ssh") ||
    fail "ssh root@lanbox failed"
  grep -q 'inet 10\.77\.1\.2/' <<< "$out" || fail "the command did not run in the LAN: $out"
  # The namespaces share one file system: both sides' copies are compared here.
  in_ns client timeout 60 scp "${opts[@]}" -q "$work/client/64.bin" "root@lanbox:$work/lan/up.bin" \
    2>> "$work/logs/ssh" || fail "scp upload failed"
  same_file "$work/client/64.bin" "$work/lan/up.bin"
  in_ns client timeout 60 scp "${opts[@]}" -q "root@lanbox:$work/lan/64.bin" "$work/client/down.bin" \
    2>> "$work/logs/ssh" || fail "scp download failed"
  same_file "$work/lan/64.bin" "$work/client/down.bin"
  ok "a command ran in the LAN; 64 MiB byte-exact up and down with scp"
}

step_netem() {
  step="netem"
  local err
  if ! err=$(in_ns router tc qdisc add dev wan0 root netem delay 20ms loss 1% 2>&1); then
    [[ $err == *"qdisc kind is unknown"* ]] || fail "tc qdisc add: $err"
    echo "nat test: netem: skipped: the kernel has no netem (delay goes untested; loss follows)"
    return
  fi
  fetch_stdio "$svc_port" "$work/client/16-netem.bin"
  in_ns router tc qdisc del dev wan0 root
  same_file "$work/lan/16.bin" "$work/client/16-netem.bin"
  ok "16 MiB byte-exact with 20 ms delay and 1% loss on the router's WAN side"
}

# Loss without netem: the router drops 2% of the packets it forwards, both ways, at random.
step_loss() {
  step="packet loss"
  local drop=(FORWARD -m statistic --mode random --probability 0.02 -j DROP)
  in_ns router iptables -I "${drop[@]}"
  fetch_stdio "$svc_port" "$work/client/16-loss.bin"
  local dropped
  dropped=$(in_ns router iptables -nvxL FORWARD | awk '/statistic/ {print $1}')
  in_ns router iptables -D "${drop[@]}"
  same_file "$work/lan/16.bin" "$work/client/16-loss.bin"
  [ "$dropped" -gt 0 ] || fail "the router dropped no packet"
  ok "16 MiB byte-exact while the router dropped $dropped packets"
}

# Unplugs (down) or plugs back (up) the cable between the router and the WAN, at the bridge's
# end: the router loses its carrier but keeps its NAT table, which taking its own wan0 down
# would flush, killing the masqueraded connections.
wan_cable() { in_ns wan ip link set router "$1"; }

# Waits up to 10 s for FILE to reach BYTES.
wait_size() {
  for _ in $(seq 100); do
    [ "$(stat -c %s "$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  fail "$1 did not reach $2 bytes within 10 s"
}

step_cut_short() {
  step="link cut, short"
  start_tunnel 6s
  local out=$work/client/64-cut.bin
  : > "$out"
  fetch_stdio "$paced_port" "$out" &
  local pid=$!
  # Cut once the download is under way, for less than the keepalive: TCP carries it through.
  wait_size "$out" $((8 << 20))
  wan_cable down
  sleep 2
  wan_cable up
  [ "$(stat -c %s "$out")" -lt $((64 << 20)) ] || fail "the download ended before the link came back"
  wait "$pid" || fail "the download did not survive a 2 s cut"
  same_file "$work/lan/64.bin" "$out"
  ok "a paced 64 MiB download survived 2 s without the link, byte-exact"
}

step_cut_long() {
  step="link cut, long"
  start_tunnel 3s
  wan_cable down
  local cut=$SECONDS lost back reconnect
  # The keepalive (3 s) notices the dead relay while the link is still down.
  wait_line "$agent_log" 'lost the relay' 7 > /dev/null
  lost=$((SECONDS - cut))
  sleep $((8 - lost))
  wan_cable up
  back=$SECONDS
  wait_line "$agent_log" 'reconnected' 20 > /dev/null
  reconnect=$((SECONDS - back))
  sed -n '/lost the relay/,/reconnected/p' "$work/logs/$agent_log" | grep -q 'retrying in' ||
    fail "the agent printed no 'retrying in' between losing the relay and reconnecting"
  wait_line "$relay_log" 'remote disconnected' 5 > /dev/null
  fetch_stdio "$svc_port" "$work/client/16-after-cut.bin"
  same_file "$work/lan/16.bin" "$work/client/16-after-cut.bin"
  ok "lost the relay after ${lost}s, reconnected ${reconnect}s after the link came back"
}

setup_network
start_services
start_tunnel
step_no_way_in
step_agent_behind_nat
step_transfer
step_ssh
step_netem
step_loss
step_cut_short
step_cut_long
echo "nat test: passed in $((SECONDS - started))s"
