# Sourced by bench.sh, compare.sh and callgrind.sh: a new, empty PostgreSQL data directory (`initdb`
# defaults, trust authentication) in a temporary directory that is stopped and deleted when the
# script exits. Sets `pg_bin` (Debian's newest PostgreSQL), `pg_dir` (the directory: `data`, and
# room for a log and sockets) and `pg_run` (the prefix that runs a command as the cluster's owner:
# `postgres` when the script runs as root, which PostgreSQL refuses to be).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
  echo "PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2
  exit 1
fi
pg_dir=$(mktemp -d)
pg_run=()
if [[ $(id -u) -eq 0 ]]; then
  chown postgres: "$pg_dir"
  pg_run=(runuser -u postgres --)
fi
stop_postgres() {
  "${pg_run[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap stop_postgres EXIT
"${pg_run[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >/dev/null

# A loopback port nothing listens on (checked, not reserved: the server's start is the test).
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

# Starts the cluster on a free loopback port with stock settings (fsync, synchronous_commit and
# full_page_writes on; `BENCH_PG_OPTIONS` adds server options) and sets `url`; exits when five
# ports in a row were taken meanwhile.
start_cluster() {
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if "${pg_run[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -s start \
      -o "-h 127.0.0.1 -p $port -k $pg_dir ${BENCH_PG_OPTIONS:-}"; then
      url="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
      return 0
    fi
  done
  cat "$pg_dir/log" >&2
  exit 1
}
