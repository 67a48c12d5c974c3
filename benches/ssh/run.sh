#!/usr/bin/env bash
# Whole-system SSH benchmark for gatehouse-ssh (not in CI).
#
# Starts a throwaway OpenSSH sshd on 127.0.0.1, the gateway twice (full pipeline: masking engine,
# egress guard, audit recorder writing recordings; relay: pass-through masker, recording
# discarded), then measures with the real `ssh` client, direct and through the gateway, in the
# same run:
#   - `ssh HOST cat FILE > /dev/null` of a 1 GiB text file (GH_BENCH_BYTES),
#   - `ssh HOST true` x100 (GH_BENCH_ROUNDS), one connection each.
# Prints throughput ratios against direct and the added latency per connection.
set -euo pipefail
cd "$(dirname "$0")/../.."
export GH_BENCH_BYTES="${GH_BENCH_BYTES:-1073741824}"
export GH_BENCH_ROUNDS="${GH_BENCH_ROUNDS:-100}"
cargo build --release -p gatehouse-ssh --example ssh_bench
exec target/release/examples/ssh_bench
