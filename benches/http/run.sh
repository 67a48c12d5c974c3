#!/usr/bin/env bash
# Whole-system HTTP benchmark (not in CI): wrk against a small JSON upstream (nginx serving a
# fixed 1 KiB body with e-mail addresses), in one run:
#   direct  : wrk -> upstream
#   nginx   : wrk -> nginx proxy_pass (upstream keepalive, injected Authorization) -> upstream
#   gw-fsync: wrk -> Gatehouse (JWT + policy + JSON masking + egress guard + audit log with
#             group-committed fdatasync) -> upstream
#   gw-os   : the same gateway, audit log durable to the OS write (no fdatasync)
#   gw-relay: a bare hyper reverse proxy, no layers: the floor of the stack (what any gateway
#             built on hyper spends before its first layer)
# Prints req/s, p50/p99 latency, each gateway's throughput ratio against nginx and its added
# p50/p99 latency over direct.
#
# Usage: benches/http/run.sh [duration=15s] [connections=32] [threads=2]
# Env: CARGO_TARGET_DIR (where the release build goes), BENCH_THREADS (gateway serving threads,
#      default one per CPU as the binary; 1: one multi-threaded runtime), BENCH_WORKERS (tokio
#      workers of that runtime),
#      BENCH_MODES (default "relay fsync os"; "memory" is an in-memory recorder, "relay" the bare
#      hyper relay, "null" a recorder that keeps nothing; a "-nomask" suffix, e.g. "null-nomask",
#      swaps the masker for one that masks nothing: together they attribute the cost of each
#      layer), BENCH_PERF (a
#      directory: profile the gateway runs with perf record -g), GATEHOUSE_BENCH_GATEWAY (a prebuilt
#      bench gateway to run instead of building one; benches/http/ab.sh uses it).
# Needs: nginx, wrk (apt-get install -y nginx wrk), a release build of the bench gateway.
set -euo pipefail

DURATION=${1:-15s}
CONNS=${2:-32}
THREADS=${3:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/gatehouse-http-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx wrk" >&2; exit 1; }
done

# Free loopback ports, chosen by the kernel (bound and released just before use).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); NGX=$(port); GW=$(port)

BODY=$(python3 -c 'import json; print(json.dumps({"users":[{"id":i,"name":"User %d"%i,"email":"user%d@example.com"%i,"plan":"pro","active":True} for i in range(12)]}))')
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
    keepalive_requests 100000;
    upstream api { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$UP;
        location / { default_type application/json; return 200 '$BODY'; }
    }
    server {
        listen 127.0.0.1:$NGX;
        location / {
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer bench-upstream-secret-4c1d9e";
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf"

if [ -n "${GATEHOUSE_BENCH_GATEWAY:-}" ]; then
    GATEWAY_BIN=$GATEHOUSE_BENCH_GATEWAY
else
    (cd "$ROOT" && cargo build --release -q -p gatehouse-http --example bench_gateway)
    GATEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_gateway"
fi
MODES=${BENCH_MODES:-relay fsync os}

start_gateway() { # mode
    rm -rf "$WORK/gw"
    local wrap=()
    # BENCH_PERF=<dir>: profile each gateway run (perf record -g) into <dir>/perf-<mode>.data.
    # shellcheck disable=SC2206
    [ -n "${BENCH_PERF:-}" ] && wrap=(perf record -q ${BENCH_PERF_ARGS:--g} -o "$BENCH_PERF/perf-$1.data" --)
    local recorder=${1%-nomask} masker=default
    [ "$recorder" != "$1" ] && masker=none
    BENCH_RECORDER=$recorder BENCH_MASKER=$masker "${wrap[@]}" "$GATEWAY_BIN" "127.0.0.1:$GW" "http://127.0.0.1:$UP" "$WORK/gw" 2>"$WORK/gw-$1.log" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    for _ in $(seq 100); do [ -s "$WORK/gw/token" ] && curl -fs -o /dev/null -H "Authorization: Bearer $(cat "$WORK/gw/token")" "http://127.0.0.1:$GW/users" && break; sleep 0.1; done
    TOKEN=$(cat "$WORK/gw/token")
    [ "$1" = relay ] || [ "$masker" = none ] && return 0
    curl -fs -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW/users" | grep -q '\[email\]' || { echo "gateway does not mask" >&2; exit 1; }
}
stop_gateway() {
    kill "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
}

# CPU time (clock ticks) of processes and their direct children: on a shared machine, CPU per
# request is steadier than req/s.
ticks() { local t=0 p; for p in "$@" $(pgrep -P "$(echo "$@" | tr ' ' ',')" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
run() { # name "pids to charge" url [header]
    local name=$1 pids=$2 url=$3; shift 3
    local t0 t1 n
    # shellcheck disable=SC2086
    t0=$(ticks $pids)
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url" > "$WORK/$name.txt"
    # shellcheck disable=SC2086
    t1=$(ticks $pids)
    local rps p50 p99 cpu
    rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$name.txt")
    n=$(awk '/requests in/ {print $1}' "$WORK/$name.txt")
    p50=$(awk '$1=="50%" {print $2}' "$WORK/$name.txt")
    p99=$(awk '$1=="99%" {print $2}' "$WORK/$name.txt")
    cpu=$(( (t1 - t0) * 1000000 / HZ / n ))
    printf "%-9s %12s req/s   p50 %-9s p99 %-9s  %4s us CPU/request\n" "$name" "$rps" "$p50" "$p99" "$cpu"
    echo "$name $rps $p50 $p99 $cpu" >> "$WORK/summary"
}
echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, $(nproc) vCPU, load: $(cut -d' ' -f1-3 /proc/loadavg)"
NGINX_WORKERS=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
# direct and nginx: CPU of the nginx worker (upstream and proxy share it; the proxy's own share
# is nginx minus direct). gw-*: CPU of the gateway process.
run direct  "$NGINX_WORKERS" "http://127.0.0.1:$UP/users"
run nginx   "$NGINX_WORKERS" "http://127.0.0.1:$NGX/users"
for mode in $MODES; do
    start_gateway "$mode"
    run "gw-$mode" "$GW_PID" "http://127.0.0.1:$GW/users" -H "Authorization: Bearer $TOKEN"
    stop_gateway
done

python3 - "$WORK/summary" <<'PY'
import sys
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit) and (unit != "s" or not v.endswith(("us","ms"))):
            return float(v[:-len(unit)]) * f
    return float(v)
rows = {l.split()[0]: l.split()[1:] for l in open(sys.argv[1])}
d, n = rows["direct"], rows["nginx"]
print(f"nginx added latency over direct: p50 {ms(n[1]) - ms(d[1]):.3f} ms, p99 {ms(n[2]) - ms(d[2]):.3f} ms; "
      f"proxy CPU per request (nginx - direct): {int(n[3]) - int(d[3])} us")
for name, g in rows.items():
    if not name.startswith("gw-"):
        continue
    print(f"{name} / nginx throughput: {float(g[0]) / float(n[0]):.2f}x (target >= 0.8x); "
          f"/ direct: {float(g[0]) / float(d[0]):.2f}x; "
          f"added latency over direct: p50 {ms(g[1]) - ms(d[1]):.3f} ms, p99 {ms(g[2]) - ms(d[2]):.3f} ms; "
          f"CPU per request {g[3]} us")
PY
