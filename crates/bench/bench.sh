#!/usr/bin/env bash
# Reproduces the figures of docs/performance.md: builds the bench and the gateway (release),
# starts a throwaway PostgreSQL cluster with stock settings (fsync on) on a free loopback port,
# runs every benchmark, and stops and removes the cluster on exit.
#
# Usage: crates/bench/bench.sh [store|gateway|snapshot|all]   (default: all)
# Output: the summaries on stdout; per-run lines on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"

# Built one at a time: together, their dependencies would be built with unified features.
cargo build --release --locked -p sms-gateway >&2
cargo build --release --locked -p soul-bench >&2
bench=target/release/soul-bench

source crates/bench/cluster.sh
start_cluster
"$pg_bin/psql" "$url" -Atc "select version(); show fsync; show synchronous_commit; show shared_buffers" >&2

echo "# soul-bench, $(date -u '+%Y-%m-%d %H:%M UTC'), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $what == all || $what == store ]]; then
  "$bench" store --backend postgres --database-url "$url"
  "$bench" store --backend postgres --database-url "$url" --count-round-trips
  "$bench" store --backend sqlite
  "$bench" store --backend supabase --database-url "$url" --clients 1 --request-delay-ms 20
  "$bench" store --backend supabase --database-url "$url" --clients 1 --count-round-trips
fi
if [[ $what == all || $what == gateway ]]; then
  "$bench" gateway --database-url "$url" --mode closed
  "$bench" gateway --database-url "$url" --mode closed --count-round-trips
  "$bench" gateway --database-url "$url" --mode open --rate 500 --requests 5000 --people 1000
  "$bench" gateway --database-url "$url" --mode open --rate 150 --requests 1500 --people 1000
  "$bench" gateway --database-url "$url" --mode open --model-delay-ms 1000 --rate 2000 \
    --requests 10000 --people 10000
  # Enough webhooks that more than 10,000 conversations are in flight at once.
  "$bench" gateway --database-url "$url" --mode open --model-delay-ms 1000 --rate 2000 \
    --requests 15000 --people 15000
fi
if [[ $what == all || $what == snapshot ]]; then
  "$bench" snapshot --turns 200 --every 20
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
