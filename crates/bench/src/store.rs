//! The reference workload at the store + engine level: `TurnDriver` over a real store, the
//! in-process [`ConstantModel`](crate::soul::ConstantModel), no HTTP.
//!
//! Per run: a fresh database (PostgreSQL and Supabase: a new database in the given cluster,
//! migrated; SQLite: a new file), a warm-up (`--warmup-users` other people, one turn each, at the same
//! concurrency, so every connection has prepared its statements), then `--users` people ×
//! `--turns` turns split over `--clients` concurrent clients (a person always belongs to one
//! client, so no turn waits behind another of the same person).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use soul_engine::SystemClock;
use soul_engine::process::{Registry, Runtime};
use soul_persistence::{
    Address, Inbound, PgStore, SqliteStore, Store, SupabaseConfig, SupabaseStore,
};
use soul_testkit::postgres::{self, RoundTripCounter};
use soul_testkit::postrest::{PostgrestServer, RequestCounter, token};
use soul_turns::{Handled, NoDelivery, TurnDriver};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

use crate::counting::CountingStore;
use crate::latency::LatencyRelay;
use crate::soul::{ConstantModel, SOUL};
use crate::stats::{median, ms, percentile};

/// Our tables (`migrations/`), for `pg_total_relation_size`.
const TABLES: &[&str] = &[
    "user_sessions",
    "messages",
    "soul_memories",
    "process_memories",
    "mental_process_state",
    "working_memory_snapshots",
    "inbound_messages",
    "outbound_messages",
    "scheduled_events",
];

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// `PgStore` on the cluster named by `--database-url`.
    Postgres,
    /// `SqliteStore` on a file in a temporary directory.
    Sqlite,
    /// `SupabaseStore`: `postrust-server` (PostgREST-compatible; `POSTRUST_SERVER` or
    /// `~/.cargo/bin/postrust`) on a database in the cluster named by `--database-url`, behind a
    /// TCP relay that delivers every request `--request-delay-ms` late (a remote project's network
    /// latency).
    Supabase,
}

/// The `store` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// The store.
    #[arg(long, value_enum)]
    backend: Backend,
    /// PostgreSQL: a URL of the throwaway cluster whose user may create databases.
    #[arg(long)]
    database_url: Option<String>,
    /// People in the measured phase.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Turns per person in the measured phase.
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// People in the warm-up (one turn each).
    #[arg(long, default_value_t = 100)]
    warmup_users: usize,
    /// Concurrent clients; several values run side by side in each run (e.g. `1,8`).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
    /// Runs; the summary gives the median of each figure.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Count round trips (PostgreSQL: protocol round trips; Supabase: HTTP requests, without the
    /// added latency) through a counting proxy, which adds latency of its own: use the timings of
    /// runs without it.
    #[arg(long)]
    count_round_trips: bool,
    /// Supabase: latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    request_delay_ms: u64,
    /// Directory for the SQLite files (default: a temporary directory, removed afterwards).
    #[arg(long)]
    sqlite_dir: Option<std::path::PathBuf>,
}

/// One run's figures.
#[derive(Debug, Clone)]
struct RunFigures {
    clients: usize,
    turns: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    turns_per_second: f64,
    operations_per_turn: f64,
    /// Mean time per turn awaiting `begin_turn` and `commit_turn` (under concurrency: each
    /// client's wait, summed over clients).
    begin_ms: f64,
    commit_ms: f64,
    round_trips_per_turn: Option<f64>,
    bytes_per_turn: Option<f64>,
    bytes_total: Option<i64>,
}

pub(crate) async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let soul = Registry::load()?
        .soul(SOUL)
        .context("the bench soul is not registered")?;
    let runtime = Arc::new(Runtime::new(
        soul,
        Arc::new(ConstantModel),
        Arc::new(SystemClock),
    ));
    let temp = tempfile::tempdir()?;
    let sqlite_dir = args
        .sqlite_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut all: Vec<RunFigures> = Vec::new();
    for run in 0..args.runs {
        for &clients in &args.clients {
            let tag = format!("{}_{run}_{clients}", std::process::id());
            let figures = match args.backend {
                Backend::Postgres | Backend::Supabase => {
                    server_run(&args, &runtime, clients, &tag).await?
                }
                Backend::Sqlite => {
                    let path = sqlite_dir.join(format!("bench_{tag}.db"));
                    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await?);
                    let before = sqlite_bytes(&path).await?;
                    let mut figures = workload(&args, &runtime, store, clients, None).await?;
                    let after = sqlite_bytes(&path).await?;
                    figures.bytes_total = Some(after);
                    figures.bytes_per_turn =
                        Some((after - before) as f64 / (args.warmup_users + figures.turns) as f64);
                    figures
                }
            };
            eprintln!(
                "run {run} {:?} clients={clients}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, \
                 {:.0} turns/s, {:.2} store ops/turn (begin {:.3} ms, commit {:.3} ms), round trips/turn {}, bytes/turn {}",
                args.backend,
                ms(figures.p50),
                ms(figures.p99),
                ms(figures.max),
                figures.turns_per_second,
                figures.operations_per_turn,
                figures.begin_ms,
                figures.commit_ms,
                figures
                    .round_trips_per_turn
                    .map_or("-".to_owned(), |r| format!("{r:.2}")),
                figures
                    .bytes_per_turn
                    .map_or("-".to_owned(), |b| format!("{b:.0}")),
            );
            all.push(figures);
        }
    }
    summary(&args, &all);
    Ok(())
}

fn summary(args: &StoreArgs, all: &[RunFigures]) {
    let mut out = String::new();
    out.push_str(&format!(
        "\n## store + engine, {:?}{}, {} runs (medians; each run's value in brackets)\n\n",
        args.backend,
        match args.backend {
            Backend::Supabase if args.count_round_trips => {
                ", through the request counting proxy (round trips: requests; timings not comparable)"
                    .to_owned()
            }
            Backend::Supabase => format!(", {} ms added to every request", args.request_delay_ms),
            _ if args.count_round_trips => {
                ", through the round-trip counting proxy (timings not comparable)".to_owned()
            }
            _ => String::new(),
        },
        args.runs
    ));
    out.push_str("| clients | p50 ms | p99 ms | turns/s | store ops/turn | begin ms | commit ms | round trips/turn | bytes/turn |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    {
        for &clients in &args.clients {
            let runs: Vec<&RunFigures> = all.iter().filter(|f| f.clients == clients).collect();
            let col = |get: &dyn Fn(&RunFigures) -> Option<f64>, digits: usize| -> String {
                let values: Vec<f64> = runs.iter().filter_map(|f| get(f)).collect();
                if values.is_empty() {
                    return "-".to_owned();
                }
                let each: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
                format!("{:.digits$} [{}]", median(&values), each.join(", "))
            };
            out.push_str(&format!(
                "| {clients} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                col(&|f| Some(ms(f.p50)), 3),
                col(&|f| Some(ms(f.p99)), 3),
                col(&|f| Some(f.turns_per_second), 0),
                col(&|f| Some(f.operations_per_turn), 2),
                col(&|f| Some(f.begin_ms), 3),
                col(&|f| Some(f.commit_ms), 3),
                col(&|f| f.round_trips_per_turn, 2),
                col(&|f| f.bytes_per_turn, 0),
            ));
        }
    }
    // The summary is the program's output.
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
}

/// One run on a fresh database in the cluster: through `PgStore`, or through `SupabaseStore`
/// and the REST server.
async fn server_run(
    args: &StoreArgs,
    runtime: &Arc<Runtime>,
    clients: usize,
    tag: &str,
) -> anyhow::Result<RunFigures> {
    let url = args
        .database_url
        .as_deref()
        .context("--database-url is needed for PostgreSQL and Supabase")?;
    let server = PgConnectOptions::from_str(url)?;
    let name = format!("bench_{tag}");
    let mut admin = PgConnection::connect_with(&server).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("create database {name}")))
        .await?;
    drop(admin.close().await);
    let options = server.clone().database(&name);
    PgStore::connect(&postgres::url(&options), 1)
        .await?
        .migrate()
        .await?;
    let before = table_bytes(&options).await?;
    let mut figures = match args.backend {
        Backend::Supabase => {
            let mut database_url = url::Url::parse(url)?;
            database_url.set_path(&name);
            let rest = PostgrestServer::start_on(database_url.as_str()).await;
            if args.count_round_trips {
                // Requests are counted by an HTTP proxy, a hop of its own: timings of these runs
                // are not the figure.
                let proxy = RequestCounter::start(&rest.url()).await;
                let config = SupabaseConfig::new(proxy.url(), token("service_role"))?;
                let store = Arc::new(SupabaseStore::new(config));
                let mut figures = workload(args, runtime, store, clients, None).await?;
                // Every request of the run, warm-up included, over every turn.
                let turns = args.warmup_users + figures.turns;
                figures.round_trips_per_turn = Some(proxy.count() as f64 / turns as f64);
                figures
            } else {
                let delay = Duration::from_millis(args.request_delay_ms);
                let relay = LatencyRelay::start(rest.addr(), delay).await?;
                let config = SupabaseConfig::new(relay.url(), token("service_role"))?;
                let store = Arc::new(SupabaseStore::new(config));
                let figures = workload(args, runtime, store, clients, None).await?;
                eprintln!(
                    "Supabase: {} connections to the server",
                    relay.connections()
                );
                figures
            }
        }
        _ => {
            let counter = if args.count_round_trips {
                Some(RoundTripCounter::start(&options).await)
            } else {
                None
            };
            let store_options = match &counter {
                Some(counter) => counter.route(options.clone()),
                None => options.clone(),
            };
            let store =
                PgStore::connect(&postgres::url(&store_options), u32::try_from(clients)?).await?;
            workload(args, runtime, Arc::new(store), clients, counter.as_ref()).await?
        }
    };
    let after = table_bytes(&options).await?;
    table_breakdown(&options).await?;
    figures.bytes_total = Some(after);
    figures.bytes_per_turn =
        Some((after - before) as f64 / (args.warmup_users + figures.turns) as f64);
    drop_database(&server, &name).await?;
    Ok(figures)
}

/// Drops a run's database: a cluster that keeps every run's files makes each checkpoint sync
/// thousands of them, which stalls the commits of the runs after it.
pub(crate) async fn drop_database(server: &PgConnectOptions, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect_with(server).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "drop database {name} with (force)"
        )))
        .await?;
    drop(admin.close().await);
    Ok(())
}

/// `pg_total_relation_size` (heap, indexes, TOAST) summed over our tables.
async fn table_bytes(options: &PgConnectOptions) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect_with(options).await?;
    let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    let bytes: i64 = sqlx::query_scalar(
        "select coalesce(sum(pg_total_relation_size(t::regclass)), 0)::bigint \
         from unnest($1::text[]) as t",
    )
    .bind(&tables)
    .fetch_one(&mut conn)
    .await?;
    drop(conn.close().await);
    Ok(bytes)
}

/// Each table's total size and live rows' bytes, on stderr: where the bytes per turn go.
async fn table_breakdown(options: &PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(options).await?;
    let mut lines = Vec::new();
    for table in TABLES {
        let (total, live, rows): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select pg_total_relation_size('public.{table}')::bigint, \
                    coalesce(sum(pg_column_size(t.*)), 0)::bigint, count(*) \
             from public.{table} t"
        )))
        .fetch_one(&mut conn)
        .await?;
        lines.push(format!(
            "{table} {total} B total, {rows} rows, {live} B live"
        ));
    }
    drop(conn.close().await);
    eprintln!("  tables: {}", lines.join("; "));
    Ok(())
}

/// The database's pages in use (`page_count - freelist_count`, times `page_size`), after a
/// checkpoint has moved the write-ahead log into the file.
async fn sqlite_bytes(path: &std::path::Path) -> anyhow::Result<i64> {
    let mut conn =
        sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path)).await?;
    conn.execute("pragma wal_checkpoint(truncate)").await?;
    let pages: i64 = sqlx::query_scalar("select * from pragma_page_count()")
        .fetch_one(&mut conn)
        .await?;
    let free: i64 = sqlx::query_scalar("select * from pragma_freelist_count()")
        .fetch_one(&mut conn)
        .await?;
    let size: i64 = sqlx::query_scalar("select * from pragma_page_size()")
        .fetch_one(&mut conn)
        .await?;
    drop(conn.close().await);
    Ok((pages - free) * size)
}

async fn workload(
    args: &StoreArgs,
    runtime: &Arc<Runtime>,
    store: Arc<dyn Store>,
    clients: usize,
    counter: Option<&RoundTripCounter>,
) -> anyhow::Result<RunFigures> {
    let counted = Arc::new(CountingStore::new(store));
    let driver = Arc::new(TurnDriver::new(
        counted.clone(),
        Arc::clone(runtime),
        Arc::new(SystemClock),
    ));
    // Warm-up: other people, one turn each.
    phase(&driver, clients, 1_000_000, args.warmup_users, 1).await?;

    let operations = counted.operations();
    let (begin_before, commit_before) = counted.store_time();
    let round_trips = counter.map(RoundTripCounter::count);
    let started = Instant::now();
    let mut latencies = phase(&driver, clients, 0, args.users, args.turns).await?;
    let elapsed = started.elapsed();
    let turns = args.users * args.turns;
    let (begin_after, commit_after) = counted.store_time();
    let per_turn = |n: u64| n as f64 / turns as f64;
    Ok(RunFigures {
        clients,
        turns,
        p50: percentile(&mut latencies, 50.0),
        p99: percentile(&mut latencies, 99.0),
        max: percentile(&mut latencies, 100.0),
        turns_per_second: turns as f64 / elapsed.as_secs_f64(),
        operations_per_turn: per_turn(counted.operations() - operations),
        begin_ms: ms(begin_after - begin_before) / turns as f64,
        commit_ms: ms(commit_after - commit_before) / turns as f64,
        round_trips_per_turn: counter
            .zip(round_trips)
            .map(|(counter, before)| per_turn(counter.count() - before)),
        bytes_per_turn: None,
        bytes_total: None,
    })
}

/// `users` people (numbered from `first`) × `turns` turns over `clients` clients; the latency
/// of every turn.
async fn phase(
    driver: &Arc<TurnDriver>,
    clients: usize,
    first: usize,
    users: usize,
    turns: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients.max(1) {
        let people: Vec<usize> = (first..first + users)
            .filter(|u| u % clients.max(1) == client)
            .collect();
        let driver = Arc::clone(driver);
        tasks.spawn(async move { drive(&driver, &people, turns).await });
    }
    let mut latencies = Vec::with_capacity(users * turns);
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    Ok(latencies)
}

async fn drive(
    driver: &TurnDriver,
    people: &[usize],
    turns: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(people.len() * turns);
    for turn in 0..turns {
        for &person in people {
            let inbound = Inbound {
                from: Address::new(format!("+1555{person:07}")),
                line: Default::default(),
                persona: None,
                body: format!("message {turn} of the reference workload"),
                external_id: Some(format!("SMbench{person:07}x{turn:04}")),
                received_at: Utc::now(),
                opt_out: None,
            };
            let started = Instant::now();
            let handled = driver.handle(&inbound, &NoDelivery).await?;
            latencies.push(started.elapsed());
            match handled {
                Handled::Answered(reports)
                    if reports.len() == 1 && reports.iter().all(|r| !r.fell_back) => {}
                other => bail!("turn {turn} of person {person} was not answered: {other:?}"),
            }
        }
    }
    Ok(latencies)
}
