#!/usr/bin/env bash
# Compares two builds side by side (docs/performance.md, "Comparing two builds"): builds
# `soul-bench` and `sms-gateway` (release) at each of two commits in worktrees of their own,
# starts one throwaway PostgreSQL cluster with stock settings, and runs the chosen workloads
# alternating between the builds, one run each, for ROUNDS rounds. Each run's summary goes to
# stdout under a `## <commit> <workload>` line; take medians and paired ratios from them.
#
# Usage: crates/bench/compare.sh BEFORE AFTER [ROUNDS] [WORKLOADS]
#   BEFORE, AFTER  commits (anything `git rev-parse` takes; AFTER may be `.`: the work tree)
#   ROUNDS         default 3
#   WORKLOADS      comma-separated, default gateway,gateway-trips,ack500,store:
#                  gateway        closed gateway workload
#                  gateway-trips  the same through the round-trip counter
#                  ack500         open workload, 5,000 webhooks at 500/s
#                  store          store + engine on PostgreSQL, 1 and 8 clients
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:?BEFORE commit}
after=${2:?AFTER commit}
rounds=${3:-3}
workloads=${4:-gateway,gateway-trips,ack500,store}

builds=$(mktemp -d)
cleanup_builds() {
  for tree in "$builds"/tree-*; do
    [[ -d $tree ]] && git worktree remove --force "$tree" >/dev/null 2>&1
  done
  rm -rf "$builds"
}
trap cleanup_builds EXIT

# The release binaries of `commit`, in a directory named by `label`; `.` builds the work tree.
build() {
  local commit=$1 label=$2 tree
  if [[ $commit == . ]]; then
    tree=$PWD
  else
    tree="$builds/tree-$label"
    git worktree add --detach -q "$tree" "$commit"
  fi
  # One at a time: together, their dependencies would be built with unified features.
  (cd "$tree" && cargo build --release --locked -p sms-gateway >&2 && cargo build --release --locked -p soul-bench >&2)
  mkdir -p "$builds/$label"
  cp "$tree/target/release/soul-bench" "$tree/target/release/sms-gateway" "$builds/$label/"
}
build "$before" before
build "$after" after

source crates/bench/cluster.sh
trap 'stop_postgres; cleanup_builds' EXIT
start_cluster

run() {
  local label=$1 workload=$2 dir="$builds/$1"
  echo "## $label $workload (load $(cut -d' ' -f1 /proc/loadavg))"
  case $workload in
    gateway) "$dir/soul-bench" gateway --database-url "$url" --gateway-bin "$dir/sms-gateway" --mode closed --runs 1 ;;
    gateway-trips) "$dir/soul-bench" gateway --database-url "$url" --gateway-bin "$dir/sms-gateway" --mode closed --runs 1 --count-round-trips ;;
    ack500) "$dir/soul-bench" gateway --database-url "$url" --gateway-bin "$dir/sms-gateway" --mode open --rate 500 --requests 5000 --people 1000 --runs 1 ;;
    store) "$dir/soul-bench" store --backend postgres --database-url "$url" --runs 1 ;;
    *) echo "unknown workload $workload" >&2; exit 2 ;;
  esac
}

echo "# compare $(git rev-parse --short "$before") (before) with $after (after), $(date -u '+%Y-%m-%d %H:%M UTC')"
IFS=, read -ra chosen <<<"$workloads"
for round in $(seq "$rounds"); do
  # The order alternates from round to round, so that neither build always runs first.
  if ((round % 2)); then order=(before after); else order=(after before); fi
  for workload in "${chosen[@]}"; do
    for label in "${order[@]}"; do
      run "$label" "$workload"
    done
  done
done
