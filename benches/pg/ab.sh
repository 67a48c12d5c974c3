#!/usr/bin/env bash
# Interleaved A/B of two builds of the PostgreSQL bench gateway (not part of CI): each round is
# one benches/pg/run.sh run with both builds (fsync audit) and PgBouncer against the same
# PostgreSQL; the builds swap places every round so that neither always runs first. Prints each
# round's CPU per transaction (the proxy process's utime+stime / transactions) and the medians,
# each against PgBouncer's in the same runs.
#
# Usage: benches/pg/ab.sh <binary A> <binary B> [rounds=3] [seconds per run=10] [clients="8"]
# Build a binary with: cargo build --release -p gatehouse-pg --example bench_gateway
# (target/release/examples/bench_gateway); build the other commit in a worktree.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${3:-3}; SECS=${4:-10}
export BENCH_CLIENTS=${5:-8} BENCH_SKIP="relay gh-oswrite"
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d /tmp/gatehouse-pg-ab.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then first=$A; second=$B; fa=A; fb=B; else first=$B; second=$A; fa=B; fb=A; fi
  echo "== round $r: gh-fsync=$fa gh-b=$fb (load $(cut -d' ' -f1-3 /proc/loadavg))"
  GATEHOUSE_BENCH_GATEWAY=$first GATEHOUSE_BENCH_GATEWAY_B=$second \
    bash "$HERE/run.sh" "$SECS" 10 "simple prepared" | tee "$OUT/round-$r.txt" |
    awk -v fa="$fa" -v fb="$fb" -v r="$r" '
      $4 == "gh-fsync" { print r, $1, $2, $3, fa, $NF }
      $4 == "gh-b"     { print r, $1, $2, $3, fb, $NF }
      $4 == "pgbouncer" { print r, $1, $2, $3, "pgbouncer", $NF }' >> "$OUT/cpu"
done
python3 - "$OUT/cpu" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r, workload, protocol, clients, who, cpu = line.split()
    if cpu not in ("-", "0"):
        rows[(workload, protocol, clients, who)].append(int(cpu))
print("\nCPU µs per transaction, median of rounds (each round's value in brackets)")
print(f"{'workload':<11} {'protocol':<9} {'cl':<3} {'pgbouncer':>18} {'A':>22} {'B':>22} {'B/A':>6} {'A/pgb':>6} {'B/pgb':>6}")
for key in sorted({k[:3] for k in rows}):
    med = {w: statistics.median(rows[key + (w,)]) for w in ("pgbouncer", "A", "B") if rows.get(key + (w,))}
    cell = lambda w: f"{med.get(w, 0):.0f} {rows.get(key + (w,), [])}"
    ratio = lambda x, y: f"{med[x] / med[y]:.2f}" if med.get(x) and med.get(y) else "-"
    print(f"{key[0]:<11} {key[1]:<9} {key[2]:<3} {cell('pgbouncer'):>18} {cell('A'):>22} {cell('B'):>22} "
          f"{ratio('B', 'A'):>6} {ratio('A', 'pgbouncer'):>6} {ratio('B', 'pgbouncer'):>6}")
PY
