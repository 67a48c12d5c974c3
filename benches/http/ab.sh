#!/usr/bin/env bash
# Interleaved A/B of two builds of the HTTP bench gateway (not part of CI): each round runs
# benches/http/run.sh once per build (audit log with fdatasync, default masking), in alternating
# order, each run measuring direct and nginx too. Prints each run's CPU per request of the
# gateway and of nginx's proxying (nginx worker minus direct), and the medians.
#
# Usage: benches/http/ab.sh <binary A> <binary B> [rounds=3] [duration=10s]
# Build a binary with: cargo build --release -p gatehouse-http --example bench_gateway
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${3:-3}; DUR=${4:-10s}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d /tmp/gatehouse-http-ab.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
for r in $(seq "$ROUNDS"); do
  order="A B"; [ $((r % 2)) = 0 ] && order="B A"
  for who in $order; do
    bin=$A; [ "$who" = B ] && bin=$B
    echo "== round $r, build $who (load $(cut -d' ' -f1-3 /proc/loadavg))"
    GATEHOUSE_BENCH_GATEWAY=$bin BENCH_MODES=fsync bash "$HERE/run.sh" "$DUR" | tee "$OUT/$r-$who.txt" |
      awk -v who="$who" '
        $1 == "direct" && $3 == "req/s" { d = $(NF-2) }
        $1 == "nginx" && $3 == "req/s" { n = $(NF-2) }
        $1 == "gw-fsync" && $3 == "req/s" { g = $(NF-2); rps = $2 }
        END { print who, g, n - d, rps }' >> "$OUT/cpu"
  done
done
python3 - "$OUT/cpu" <<'PY'
import statistics, sys, collections
g, n = collections.defaultdict(list), []
for line in open(sys.argv[1]):
    who, gw, ngx, rps = line.split()
    g[who].append(int(gw)); n.append(int(ngx))
mn = statistics.median(n)
print(f"\nCPU µs per request, medians (runs in brackets): nginx proxying {mn:.0f} {n}")
for who in ("A", "B"):
    m = statistics.median(g[who])
    print(f"  build {who}: {m:.0f} {g[who]}  = {m / mn:.2f}x nginx")
print(f"  B/A: {statistics.median(g['B']) / statistics.median(g['A']):.2f}")
PY
