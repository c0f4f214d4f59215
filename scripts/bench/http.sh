#!/usr/bin/env bash
# Measures HTTP through Sesame's public endpoints, all on loopback, in one run: requests per
# second and latency (wrk) against one nginx serving a 1 KiB and a 64 KiB static file, through
#
#   direct        nginx itself (the limit)
#   sesame-http   the relay's virtual host web.tunnel.test, plain HTTP/1.1
#   sesame-https  the same virtual host over HTTPS (a self-signed certificate made here)
#   sesame-tcp    a public TCP port of the same relay, published by the same agent
#   rathole-tcp   a rathole server and client, tcp transport
#
#   scripts/bench/http.sh [SECONDS]     how long each wrk run lasts (5)
#
# Each run is wrk with 2 threads and 32 keep-alive connections, every request carrying
# `Host: web.tunnel.test`. Each file takes the paths in turn before the next file starts, so
# that machine noise spreads over all of them. Alongside requests per second and wrk's p50 and
# p99 latency, the CPU time of each path's tunnel processes during its run is read from /proc.
# Prints markdown tables; docs/benchmarks.md explains them.
#
# Installs what it needs: wrk, nginx, openssl, curl and python3 from Debian, rathole from
# crates.io into SESAME_BENCH_DIR (default ~/.cache/sesame-bench). Takes Sesame from SESAME_BIN,
# or builds it. nginx runs as the current user in the foreground, with its configuration, pid
# file, logs and temp files in a temp dir, and is stopped on exit. (On a machine that starts
# services, installing Debian's nginx package also starts the system's nginx on port 80; this
# script never uses it.)
set -euo pipefail
SESAME_BIN=${SESAME_BIN:+$(realpath "$SESAME_BIN")}
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
# shellcheck source=scripts/bench/common.sh
source scripts/bench/common.sh
PATH=$PATH:/usr/sbin # nginx, for a user whose PATH lacks it

seconds=${1:-5}
paths=(direct sesame-http sesame-https sesame-tcp rathole-tcp)
files=(1k 64k) # their sizes in KiB
threads=2 connections=32
domain=tunnel.test name=web
host=$name.$domain
nginx_port=
declare -A url   # each path's base URL
declare -A procs # each path's tunnel processes, as ROLE=PID words

install_tools() {
  need_packages wrk:wrk nginx:nginx openssl:openssl curl:curl python3:python3
  install_rathole
  need_sesame
}

# nginx serving the files from $work/nginx. nginx cannot listen on port 0 and say which port it
# got, so a free port is picked (python binds port 0, reads the port and lets it go) and written
# into its configuration.
start_nginx() {
  local dir=$work/nginx file user=''
  mkdir -p "$dir/www"
  for file in "${files[@]}"; do head -c $((${file%k} * 1024)) /dev/urandom > "$dir/www/$file"; done
  nginx_port=$(free_port)
  # Started by root, nginx's workers would switch to a user that cannot read $work.
  [ "$(id -u)" -ne 0 ] || user="user $(id -un) $(id -gn);"
  cat > "$dir/nginx.conf" << EOF
$user
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  # Every connection stays open for the whole run (nginx closes one after 1,000 requests by
  # default): the runs measure requests, not new connections.
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$nginx_port;
    root $dir/www;
  }
}
EOF
  spawn nginx nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_open "$nginx_port"
}

start_direct() {
  url[direct]=http://127.0.0.1:$nginx_port procs[direct]=
}

# One relay serving the virtual hosts over HTTP and HTTPS and a range of TCP ports, and one
# agent publishing nginx's port on both: three paths, measured one at a time.
start_sesame() {
  local dir=$work/sesame relay_pid path
  mkdir "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=*.$domain" -addext "subjectAltName=DNS:*.$domain" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2> /dev/null
  start_relay sesame-relay --domain "$domain" \
    --http-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" \
    --tcp-ports "$(free_port_range 2)" --public-host 127.0.0.1
  relay_pid=$pid
  url[sesame-http]="http://$(wait_line sesame-relay '^serving http://' "$pid" | awk '{print $4}')"
  url[sesame-https]="https://$(wait_line sesame-relay '^serving https://' "$pid" | awk '{print $4}')"
  spawn sesame-agent "$sesame" "${relay_flags[@]}" expose "$nginx_port" --name "$name" --http --tcp
  # The agent prints its public addresses once the relay has published them all.
  url[sesame-tcp]="http://127.0.0.1:$(published_tcp_port sesame-agent "$nginx_port" "$pid")"
  for path in sesame-http sesame-https sesame-tcp; do procs[$path]="relay=$relay_pid agent=$pid"; done
}

# A rathole server and client with the tcp transport.
start_rathole() {
  local dir=$work/rathole entry server_pid
  entry=$(free_port)
  rathole_config "$dir" tcp "$(free_port)" "web=$entry:$nginx_port"
  spawn rathole-server "$tools/bin/rathole" --server "$dir/server.toml"
  server_pid=$pid
  spawn rathole-client "$tools/bin/rathole" --client "$dir/client.toml"
  # The server listens for the service only once the client has connected.
  wait_open "$entry"
  url[rathole-tcp]=http://127.0.0.1:$entry procs[rathole-tcp]="server=$server_pid client=$pid"
}

# Fails unless every file comes through PATH whole, with status 200.
check_path() {
  local path=$1 file got
  for file in "${files[@]}"; do
    got=$(curl -sk --max-time 10 -o /dev/null -w '%{http_code} %{size_download}' -H "Host: $host" \
      "${url[$path]}/$file") || true
    [ "$got" = "200 $(stat -c %s "$work/nginx/www/$file")" ] ||
      fail "GET /$file through $path answered '$got': $(tail -5 "$work"/*.log)"
  done
}

# CPU seconds used so far by PATH's tunnel processes, summed.
cpu_of() {
  # shellcheck disable=SC2086 # the list is words
  python3 scripts/bench/procstat.py cpu ${procs[$1]} | awk '{ sum += $2 } END { printf "%.2f", sum }'
}

# One wrk run through PATH for FILE; records requests/s, latency p50 and p99, errors, and the
# tunnel's CPU time.
measure() {
  local path=$1 file=$2 before after out _ requests duration p50 p99 errors
  [ -z "${procs[$path]}" ] || before=$(cpu_of "$path")
  out=$(timeout $((seconds + 30)) wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency \
    -s scripts/bench/wrk-summary.lua -H "Host: $host" "${url[$path]}/$file") ||
    { warn "wrk through $path failed: $out"; return 0; }
  [ -z "${procs[$path]}" ] || after=$(cpu_of "$path")
  read -r _ requests duration p50 p99 _ errors <<< "$(grep '^summary ' <<< "$out")"
  {
    echo "$path/$file rps $(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.1f", r / d }')"
    echo "$path/$file requests $requests"
    echo "$path/$file p50 $p50"
    echo "$path/$file p99 $p99"
    echo "$path/$file errors $errors"
    [ -z "${procs[$path]}" ] || echo "$path/$file cpu $(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')"
  } >> "$results"
}

versions() {
  echo "Versions: $("$sesame" --version), rathole $("$tools/bin/rathole" --version | awk '/Build Version/ {print $3}')," \
    "$(nginx -v 2>&1 | cut -d' ' -f3), $( (wrk -v || true) 2>&1 | head -1 | cut -d' ' -f1-2)," \
    "$(openssl version | cut -d' ' -f1-2), $(curl --version | head -1 | cut -d' ' -f1-2)"
}

main() {
  local path file
  install_tools
  account start
  start_nginx
  echo "starting the paths" >&2
  start_direct
  start_sesame
  start_rathole
  for path in "${paths[@]}"; do check_path "$path"; done
  for file in "${files[@]}"; do
    echo "measuring GET /$file, ${#paths[@]} runs of $seconds s" >&2
    for path in "${paths[@]}"; do measure "$path" "$file"; done
  done
  account end
  python3 scripts/bench/http_report.py "$results" "${files[*]}" "${paths[@]}"
  echo
  versions
  echo "wrk -t$threads -c$connections -d${seconds}s, Host: $host; nginx 1 worker, keep-alive for the whole run."
}

main
