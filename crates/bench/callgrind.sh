#!/usr/bin/env bash
# Counts the instructions PostgreSQL executes for a small store workload: a throwaway cluster
# whose postmaster runs under valgrind's callgrind (every backend it forks is counted apart), one
# `soul-bench store` run against it (one client), and each backend's total. Unlike a time, the
# count hardly moves with what else the machine does, so two builds of the SQL compare on a
# shared machine whose speed drifts between runs (docs/performance.md, "Reproducing").
#
# Usage: crates/bench/callgrind.sh [SOUL_BENCH_BINARY]   (default: target/release/soul-bench,
#        built if missing). The workload's size: CALLGRIND_USERS (30) people × CALLGRIND_TURNS (5).
# Output: one line per backend, largest last (with one client, the store's connection), then the
#         sum; the counts include each connection's start and PL/pgSQL's compilation, the same
#         for both builds of a comparison.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench="${1:-target/release/soul-bench}"
if [[ ! -x "$bench" ]]; then
  cargo build --release --locked -p soul-bench >&2
fi
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
source crates/bench/cluster.sh
"${pg_run[@]}" mkdir "$pg_dir/counts"
port=$(free_port)
"${pg_run[@]}" bash -c "exec valgrind --tool=callgrind --callgrind-out-file='$pg_dir/counts/%p' \
  --dump-instr=no --dump-line=no '$pg_bin/postgres' -D '$pg_dir/data' -h 127.0.0.1 -p $port \
  -k '$pg_dir' >'$pg_dir/log' 2>&1" &
url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
for _ in $(seq 1 120); do
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
  sleep 1
done
"$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" || { cat "$pg_dir/log" >&2; exit 1; }

# Only what the run's backends count: the files already there are the server's own processes.
ls "$pg_dir/counts" >"$pg_dir/before"
"$bench" store --backend postgres --database-url "$url" --runs 1 --clients 1 \
  --users "${CALLGRIND_USERS:-30}" --turns "${CALLGRIND_TURNS:-5}" --warmup-users 5 >&2
# A backend writes its counts when it exits, a moment after its connection closes.
sleep 5
for file in $(ls "$pg_dir/counts" | grep -vxFf "$pg_dir/before"); do
  sed -n 's/^summary: //p' "$pg_dir/counts/$file"
done | sort -n | awk '{ print "backend instructions", $1; sum += $1 } END { print "sum", sum }'
