#!/usr/bin/env bash
# Whole-system PostgreSQL benchmark: pgbench select-only and TPC-B-like, 1 and 8 clients, simple and
# prepared (extended) protocol, against
#   direct       PostgreSQL itself (TCP 127.0.0.1)
#   relay        a bare TCP relay (tokio copy_bidirectional): the floor of any proxy
#   pgbouncer    PgBouncer, session mode (Debian package; skipped if not installed)
#   gh-fsync     the PostgreSQL proxy with policy + masking + egress guard + audit recording on,
#                audit control events durable at fdatasync (group-committed) — the default
#   gh-oswrite   the same gateway with audit durability "os-write" (survives a gateway crash,
#                not a power loss)
# all in one run, printing TPS, average and median latency, each ratio against direct, and the
# median latency added per statement (median transaction latency difference / statements per
# transaction), each proxy's TPS against PgBouncer's in the same row group, and each proxy's CPU
# time per transaction (utime+stime of the proxy process, from /proc): with PostgreSQL, pgbench
# and the proxy sharing the cores, the proxy's CPU per transaction is what sets its throughput.
# Not part of CI. Usage:
#   benches/pg/run.sh [seconds-per-run (default 20)] [scale (default 10)] [protocols (default "simple prepared")]
# Env: GATEHOUSE_BENCH_GATEWAY=<binary>: use that build of the bench gateway instead of building one;
#      GATEHOUSE_BENCH_GATEWAY_B=<binary>: also run a second build as mode "gh-b" (fsync), for A/B
#      runs of two builds against the same PostgreSQL and PgBouncer (benches/pg/ab.sh);
#      BENCH_CLIENTS (default "1 8"); BENCH_SKIP: modes to leave out, e.g. "relay gh-oswrite".
set -euo pipefail

DURATION="${1:-20}"
SCALE="${2:-10}"
PROTOCOLS="${3:-simple prepared}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN_DIR="${GATEHOUSE_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
WORK="$(mktemp -d /tmp/gatehouse-pgbench-XXXXXX)"
chmod 1777 "$WORK"  # the postgres user writes its log and socket here
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # PgBouncer runs under runuser: its own pid, not runuser's, ends it.
  if [ -f "$WORK/pgbouncer.pid" ]; then kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true; fi
  if [ -f "$WORK/data/postmaster.pid" ]; then as_pg "$BIN_DIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PG_PORT=$(free_port); GW_PORT=$(free_port); GW2_PORT=$(free_port); RELAY_PORT=$(free_port); BOUNCER_PORT=$(free_port)
GW3_PORT=$(free_port)
GATEWAY_B="${GATEHOUSE_BENCH_GATEWAY_B:-}"
CLIENTS="${BENCH_CLIENTS:-1 8}"
SKIP=" ${BENCH_SKIP:-} "
PASSWORD="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKEN="bench-token"

if [ -n "${GATEHOUSE_BENCH_GATEWAY:-}" ]; then
  GATEWAY="$GATEHOUSE_BENCH_GATEWAY"
else
  echo "== building the gateway (release)"
  (cd "$ROOT" && cargo build --release -q -p gatehouse-pg --example bench_gateway)
  GATEWAY="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_gateway"
fi

echo "== starting PostgreSQL ($BIN_DIR) on 127.0.0.1:$PG_PORT"
mkdir -p "$WORK/data"; [ "$(id -u)" = 0 ] && chown postgres "$WORK/data"
as_pg "$BIN_DIR/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 100
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
CONF
cat > "$WORK/data/pg_hba.conf" <<HBA
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
as_pg "$BIN_DIR/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE bench OWNER bench"
PGPASSWORD="$PASSWORD" pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1

echo "== starting relay :$RELAY_PORT and gateways :$GW_PORT (fsync) :$GW2_PORT (os-write)"
"$GATEWAY" --relay --listen "127.0.0.1:$RELAY_PORT" --upstream "127.0.0.1:$PG_PORT" & PIDS+=($!)
"$GATEWAY" --listen "127.0.0.1:$GW_PORT" --upstream "127.0.0.1:$PG_PORT" --user bench \
  --password "$PASSWORD" --database bench --token "$TOKEN" --durability fsync \
  --audit-dir "$WORK/audit-fsync" 2>"$WORK/gateway.log" & PIDS+=($!)
"$GATEWAY" --listen "127.0.0.1:$GW2_PORT" --upstream "127.0.0.1:$PG_PORT" --user bench \
  --password "$PASSWORD" --database bench --token "$TOKEN" --durability os-write \
  --audit-dir "$WORK/audit-oswrite" 2>"$WORK/gateway2.log" & PIDS+=($!)
if [ -n "$GATEWAY_B" ]; then
  "$GATEWAY_B" --listen "127.0.0.1:$GW3_PORT" --upstream "127.0.0.1:$PG_PORT" --user bench \
    --password "$PASSWORD" --database bench --token "$TOKEN" --durability fsync \
    --audit-dir "$WORK/audit-b" 2>"$WORK/gateway3.log" & PIDS+=($!)
fi

HAVE_BOUNCER=0
if command -v pgbouncer >/dev/null 2>&1; then
  HAVE_BOUNCER=1
  cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
auth_type = plain
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
unix_socket_dir =
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
INI
  echo "\"bench\" \"$PASSWORD\"" > "$WORK/userlist.txt"
  chmod 644 "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
  if [ "$(id -u)" = 0 ]; then chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"; fi
  as_pg pgbouncer "$WORK/pgbouncer.ini" 2>/dev/null & PIDS+=($!)
else
  echo "   (pgbouncer not installed: apt-get install pgbouncer to include it)"
fi
for p in $RELAY_PORT $GW_PORT $GW2_PORT $([ -n "$GATEWAY_B" ] && echo $GW3_PORT) $([ $HAVE_BOUNCER = 1 ] && echo $BOUNCER_PORT); do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

median() { # median of column 3 (latency, µs) of pgbench per-transaction logs in $1
  python3 - "$1" <<'PY'
import glob, sys
v = []
for f in glob.glob(sys.argv[1] + "/pgbench_log.*"):
    with open(f) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3:
                v.append(int(parts[2]))
v.sort()
print(v[len(v) // 2] if v else 0)
PY
}

# CPU time (clock ticks, utime+stime, all threads) of one process; "-" for none.
ticks() { if [ "$1" = - ]; then echo 0; else awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; fi; }
HZ=$(getconf CLK_TCK)

run() { # port password workload clients protocol [proxy pid: its CPU per transaction is measured]
  local flags=""; [ "$3" = select-only ] && flags="-S"
  local pid=${6:--} t0; t0=$(ticks "$pid")
  local logdir; logdir=$(mktemp -d "$WORK/log-XXXXXX"); chmod 777 "$logdir"
  local out
  out=$(cd "$logdir" && PGPASSWORD="$2" pgbench -n $flags -M "$5" -l -T "$DURATION" -c "$4" -j "$4" -h 127.0.0.1 -p "$1" -U bench bench 2>&1)
  local t1; t1=$(ticks "$pid")
  local tps lat p50 n cpu=-
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial.*/\1/p')
  n=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  [ "$pid" != - ] && [ "${n:-0}" -gt 0 ] && cpu=$(( (t1 - t0) * 1000000 / HZ / n ))
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  p50=$(median "$logdir")
  rm -rf "$logdir"
  echo "${tps:-0} ${lat:-0} $p50 $cpu"
}

echo
printf "%-11s %-8s %-3s %-11s %10s %9s %9s %8s %12s %9s %11s\n" workload protocol cl mode tps "avg ms" "p50 µs" "vs dir" "+p50/stmt µs" "vs bouncer" "CPU µs/tx"
for protocol in $PROTOCOLS; do
  for workload in select-only tpcb; do
    stmts=1; [ "$workload" = tpcb ] && stmts=7
    for clients in $CLIENTS; do
      read -r dtps dlat dp50 _ < <(run "$PG_PORT" "$PASSWORD" $workload $clients "$protocol")
      printf "%-11s %-8s %-3s %-11s %10s %9s %9s %8s %12s %9s %11s\n" $workload "$protocol" $clients direct "$dtps" "$dlat" "$dp50" "1.00" "-" "-" "-"
      # PgBouncer runs before the others so that each row can be set against it.
      modes=""
      [ $HAVE_BOUNCER = 1 ] && modes="pgbouncer:$BOUNCER_PORT:$PASSWORD:$(cat "$WORK/pgbouncer.pid" 2>/dev/null || echo -)"
      modes="$modes relay:$RELAY_PORT:$PASSWORD:${PIDS[0]}"
      modes="$modes gh-fsync:$GW_PORT:$TOKEN:${PIDS[1]} gh-oswrite:$GW2_PORT:$TOKEN:${PIDS[2]}"
      [ -n "$GATEWAY_B" ] && modes="$modes gh-b:$GW3_PORT:$TOKEN:${PIDS[3]}"
      btps=""
      for m in $modes; do
        IFS=: read -r name port pw pid <<< "$m"
        case "$SKIP" in *" $name "*) continue ;; esac
        read -r tps lat p50 cpu < <(run "$port" "$pw" $workload $clients "$protocol" "$pid")
        [ "$name" = pgbouncer ] && btps=$tps
        ratio=$(python3 -c "print(f'{$tps/$dtps:.2f}')" 2>/dev/null || echo "?")
        added=$(python3 -c "print(f'{($p50-$dp50)/$stmts:.0f}')" 2>/dev/null || echo "?")
        vsb=$(python3 -c "print(f'{$tps/$btps:.2f}')" 2>/dev/null || echo "-")
        printf "%-11s %-8s %-3s %-11s %10s %9s %9s %8s %12s %9s %11s\n" $workload "$protocol" $clients "$name" "$tps" "$lat" "$p50" "$ratio" "$added" "$vsb" "$cpu"
      done
    done
  done
done
echo
echo "machine: $(nproc) vCPU, $(free -g | awk '/Mem:/{print $2}') GiB; load average before the summary: $(cut -d' ' -f1-3 /proc/loadavg); postgres $("$BIN_DIR/postgres" --version | awk '{print $3}'); duration ${DURATION}s per run, scale $SCALE"
