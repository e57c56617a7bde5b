//! The gateway figures: the real `sms-gateway` binary on loopback, a fresh PostgreSQL database,
//! an OpenAI-compatible model server and a Twilio-compatible sink in this process (minimal axum
//! servers: a fixed completion after an optional delay; a `201 Created` message resource for
//! every send), and a load driver sending signed webhooks.
//!
//! - `--mode closed`: the reference workload end to end: `--users` people in parallel, each
//!   sending `--turns` messages one after the other, each after the previous reply reached the
//!   sink (after a warm-up of `--warmup-users` other people, one turn each). Turns per second is
//!   measured-phase turns over its wall time, webhook sent → reply accepted.
//! - `--mode open`: `--requests` webhooks at a fixed `--rate` from `--people` people, each sent at
//!   its scheduled time whether or not earlier ones were answered; the acknowledgement latency is
//!   measured from the scheduled time (no coordinated omission), after a warm-up of
//!   `--warmup-users` other people, one webhook each at the same rate. Also reports how many replies
//!   reached the sink, the most conversations in flight, and the gateway's peak RSS.
//!
//! Every run is bounded: loopback only, a fixed number of requests, and time limits.

use std::collections::HashMap;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use soul_testkit::postgres::RoundTripCounter;
use soul_testkit::twilio::InboundSmsWebhook;
use sqlx::{Connection, Executor, PgConnection};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::stats::{median, ms, percentile};

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "bench-auth-token-0123456789abcdef";
const OUR_NUMBER: &str = "+15005550006";
/// Give up on a reply after this long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Open mode: wait at most this long for the replies after the last webhook.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Each person waits for the reply before sending the next message.
    Closed,
    /// Webhooks at a fixed rate, whatever the answers.
    Open,
}

/// The `gateway` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GatewayArgs {
    /// The gateway binary (build it with `cargo build --release -p sms-gateway`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/sms-gateway"))]
    gateway_bin: std::path::PathBuf,
    /// A URL of the throwaway PostgreSQL cluster whose user may create databases; it must name a
    /// database (`…/postgres`). Each run gets a new database.
    #[arg(long)]
    database_url: String,
    /// How the load is offered.
    #[arg(long, value_enum, default_value = "closed")]
    mode: Mode,
    /// The soul the gateway runs (`pip`: one model call per ordinary turn, no subprocesses).
    #[arg(long, default_value = "pip")]
    soul: String,
    /// Closed: people in the measured phase, all in parallel.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Closed: messages per person.
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// People in the warm-up, one message each (open mode: at `--rate`).
    #[arg(long, default_value_t = 100)]
    warmup_users: usize,
    /// Open: webhooks per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Open: webhooks in all.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Open: distinct people the webhooks come from, in rotation.
    #[arg(long, default_value_t = 1_000)]
    people: usize,
    /// The model server's delay before each completion, in milliseconds.
    #[arg(long, default_value_t = 0)]
    model_delay_ms: u64,
    /// Runs (each with a fresh database and gateway process); the summary gives medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Route the gateway's PostgreSQL connections through the round-trip counting proxy and
    /// report round trips per turn (closed mode; adds latency).
    #[arg(long)]
    count_round_trips: bool,
    /// More environment for the gateway, `KEY=VALUE` (repeatable).
    #[arg(long = "gateway-env", value_name = "KEY=VALUE")]
    gateway_env: Vec<String>,
    /// The gateway's `RUST_LOG`.
    #[arg(long, default_value = "warn")]
    log: String,
}

pub(crate) async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let model = start_model(Duration::from_millis(args.model_delay_ms)).await?;
    let sink = Arc::new(Sink::default());
    let sink_url = start_sink(Arc::clone(&sink)).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2_048)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut results = Vec::new();
    for run in 0..args.runs {
        let database = fresh_database(&args.database_url, run).await?;
        let counter = if args.count_round_trips {
            let options = sqlx::postgres::PgConnectOptions::from_str(&database)?;
            Some(RoundTripCounter::start(&options).await)
        } else {
            None
        };
        let gateway_database = match &counter {
            Some(counter) => through_proxy(&database, counter)?,
            None => database.clone(),
        };
        let gateway = Gateway::start(&args, &gateway_database, &model, &sink_url).await?;
        let figures = match args.mode {
            Mode::Closed => closed(&args, &client, &gateway, &sink, counter.as_ref()).await,
            Mode::Open => open(&args, &client, &gateway, &sink).await,
        };
        let rss = gateway.memory();
        gateway.stop().await;
        drop(counter);
        let (server, name) = database_name(&database)?;
        crate::store::drop_database(&server, &name).await?;
        let mut figures = figures?;
        figures.push(("gateway peak RSS MB", rss.peak_mb));
        let line: Vec<String> = figures
            .iter()
            .map(|(name, value)| format!("{name} {value:.3}"))
            .collect();
        eprintln!("run {run} {:?}: {}", args.mode, line.join(", "));
        results.push(figures);
    }
    let mut setup = format!(
        "{:?}, soul {}, model delay {} ms",
        args.mode, args.soul, args.model_delay_ms
    );
    if args.mode == Mode::Open {
        setup.push_str(&format!(
            ", {} webhooks at {}/s from {} people",
            args.requests, args.rate, args.people
        ));
    }
    if args.count_round_trips {
        setup.push_str(", through the round-trip counting proxy");
    }
    for pair in &args.gateway_env {
        setup.push_str(&format!(", {pair}"));
    }
    let mut out = format!(
        "\n## gateway, {setup}, {} runs (medians; each run's value in brackets)\n\n| figure | median | runs |\n| --- | --- | --- |\n",
        args.runs
    );
    if let Some(first) = results.first() {
        for (index, (name, _)) in first.iter().enumerate() {
            let values: Vec<f64> = results
                .iter()
                .filter_map(|r| r.get(index).map(|(_, v)| *v))
                .collect();
            let each: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
            out.push_str(&format!(
                "| {name} | {:.3} | {} |\n",
                median(&values),
                each.join(", ")
            ));
        }
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{out}");
    }
    Ok(())
}

type Figures = Vec<(&'static str, f64)>;

// ---------------------------------------------------------------------------------------------
// The model server.

async fn start_model(delay: Duration) -> anyhow::Result<String> {
    async fn completion(State(delay): State<Duration>) -> Response {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let body = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_795_543_200,
            "model": "bench-model",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": "Got it, keep going." },
                "finish_reason": "stop",
                "logprobs": null
            }],
            "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 }
        });
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response()
    }
    let router = Router::new()
        .route("/v1/chat/completions", post(completion))
        .with_state(delay);
    let address = serve(router).await?;
    Ok(format!("http://{address}/v1"))
}

// ---------------------------------------------------------------------------------------------
// The Twilio sink.

/// Counts replies and tells the person waiting for one.
#[derive(Debug, Default)]
struct Sink {
    accepted: AtomicU64,
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<Instant>>>,
}

impl Sink {
    fn wait_for(&self, number: &str) -> mpsc::UnboundedReceiver<Instant> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(number.to_owned(), sender);
        receiver
    }

    fn forget_all(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn start_sink(sink: Arc<Sink>) -> anyhow::Result<String> {
    async fn messages(
        State(sink): State<Arc<Sink>>,
        Path(account): Path<String>,
        body: Bytes,
    ) -> Response {
        let now = Instant::now();
        let mut to = String::new();
        let mut text = String::new();
        for (name, value) in form_urlencoded::parse(&body) {
            match name.as_ref() {
                "To" => to = value.into_owned(),
                "Body" => text = value.into_owned(),
                _ => {}
            }
        }
        sink.accepted.fetch_add(1, Ordering::SeqCst);
        if let Some(waiter) = sink
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&to)
        {
            waiter.send(now).ok();
        }
        let sid = format!("SM{:032x}", fastrand_u128());
        let resource = json!({
            "account_sid": account.trim_end_matches(".json"),
            "api_version": "2010-04-01",
            "body": text,
            "date_created": "Tue, 24 Nov 2026 18:00:00 +0000",
            "date_sent": null,
            "date_updated": "Tue, 24 Nov 2026 18:00:00 +0000",
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": OUR_NUMBER,
            "messaging_service_sid": null,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json"),
        });
        (
            StatusCode::CREATED,
            [("content-type", "application/json")],
            resource.to_string(),
        )
            .into_response()
    }
    let router = Router::new()
        .route(
            "/2010-04-01/Accounts/{account}/Messages.json",
            post(messages),
        )
        .with_state(sink);
    let address = serve(router).await?;
    Ok(format!("http://{address}"))
}

/// A process-unique number for message SIDs.
fn fastrand_u128() -> u128 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn serve(router: Router) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        drop(axum::serve(listener, router).await);
    });
    Ok(address)
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL and the gateway process.

/// A new database in the cluster of `url`; its URL.
/// The server (its `postgres` database) and the database a run's URL names.
fn database_name(url: &str) -> anyhow::Result<(sqlx::postgres::PgConnectOptions, String)> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .context("the run's URL names no database")?
        .to_owned();
    Ok((options.database("postgres"), name))
}

async fn fresh_database(url: &str, run: usize) -> anyhow::Result<String> {
    let name = format!("bench_gw_{}_{run}", std::process::id());
    let mut admin = PgConnection::connect(url).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("create database {name}")))
        .await?;
    drop(admin.close().await);
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let base = head
        .rsplit_once('/')
        .map(|(base, _)| base)
        .context("the database URL must name a database (…/postgres)")?;
    Ok(if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    })
}

struct Gateway {
    child: Child,
    webhook_url: String,
}

struct MemoryUse {
    peak_mb: f64,
}

impl Gateway {
    async fn start(
        args: &GatewayArgs,
        database_url: &str,
        model_url: &str,
        sink_url: &str,
    ) -> anyhow::Result<Self> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let public_url = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(&args.gateway_bin);
        command
            .arg("serve")
            .env_clear()
            .env("BIND", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("PUBLIC_URL", &public_url)
            .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
            .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
            .env("TWILIO_FROM", OUR_NUMBER)
            .env("TWILIO_API_BASE", sink_url)
            .env("OPENAI_BASE_URL", model_url)
            .env("OPENAI_API_KEY", "sk-bench")
            .env("DATABASE_URL", database_url)
            .env("SOUL", &args.soul)
            // The reference workload sends each person's turns as fast as they are answered.
            .env("RATE_LIMIT_PER_MINUTE", "off")
            .env("RUST_LOG", &args.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for pair in &args.gateway_env {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--gateway-env {pair:?} is not KEY=VALUE"))?;
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", args.gateway_bin.display()))?;
        let gateway = Gateway {
            child,
            webhook_url: format!("{public_url}/twilio/sms"),
        };
        let ready = format!("{public_url}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(&ready).await
                && response.status().is_success()
            {
                return Ok(gateway);
            }
            if Instant::now() > deadline {
                bail!("the gateway was not ready within a minute");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident set size so far (`VmHWM`).
    fn memory(&self) -> MemoryUse {
        let kb = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|status| {
                status.lines().find_map(|line| {
                    line.strip_prefix("VmHWM:")
                        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                })
            })
            .unwrap_or(0_u64);
        MemoryUse {
            peak_mb: kb as f64 / 1024.0,
        }
    }

    async fn stop(mut self) {
        drop(self.child.kill().await);
    }
}

/// Sends one signed webhook; the acknowledgement's latency.
async fn send(
    client: &reqwest::Client,
    url: &str,
    from: &str,
    body: &str,
) -> anyhow::Result<Duration> {
    let signed = InboundSmsWebhook::new(ACCOUNT_SID, from, OUR_NUMBER, body).sign(url, AUTH_TOKEN);
    let started = Instant::now();
    let response = client
        .post(url)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header("x-twilio-signature", &signed.signature)
        .body(signed.body)
        .send()
        .await?;
    let status = response.status();
    drop(response.bytes().await);
    if !status.is_success() {
        bail!("the gateway answered a webhook with {status}");
    }
    Ok(started.elapsed())
}

fn number(person: usize) -> String {
    format!("+1444{person:07}")
}

// ---------------------------------------------------------------------------------------------
// Closed loop: the reference workload.

async fn closed(
    args: &GatewayArgs,
    client: &reqwest::Client,
    gateway: &Gateway,
    sink: &Arc<Sink>,
    counter: Option<&RoundTripCounter>,
) -> anyhow::Result<Figures> {
    conversations(client, gateway, sink, 1_000_000, args.warmup_users, 1).await?;
    let round_trips = counter.map(RoundTripCounter::count);
    let started = Instant::now();
    let (mut acks, mut turns) =
        conversations(client, gateway, sink, 0, args.users, args.turns).await?;
    let elapsed = started.elapsed();
    let count = args.users * args.turns;
    // The replies are accepted before the turn's last store operation (the delivery update)
    // may have been made: let it land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut figures = vec![
        ("turns/s", count as f64 / elapsed.as_secs_f64()),
        ("turn p50 ms", ms(percentile(&mut turns, 50.0))),
        ("turn p99 ms", ms(percentile(&mut turns, 99.0))),
        ("ack p50 ms", ms(percentile(&mut acks, 50.0))),
        ("ack p99 ms", ms(percentile(&mut acks, 99.0))),
    ];
    if let (Some(counter), Some(before)) = (counter, round_trips) {
        figures.push((
            "store round trips/turn",
            (counter.count() - before) as f64 / count as f64,
        ));
    }
    Ok(figures)
}

/// `url` with its host and port replaced by the proxy's.
fn through_proxy(url: &str, counter: &RoundTripCounter) -> anyhow::Result<String> {
    let port = counter
        .route(sqlx::postgres::PgConnectOptions::new())
        .get_port();
    let (scheme_user, rest) = url.split_once('@').context("the URL has no user@host")?;
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    Ok(format!("{scheme_user}@127.0.0.1:{port}{path}"))
}

/// `users` people from `first`, in parallel, `turns` messages each, each after the previous
/// reply; the acknowledgement and the end-to-end latencies.
async fn conversations(
    client: &reqwest::Client,
    gateway: &Gateway,
    sink: &Arc<Sink>,
    first: usize,
    users: usize,
    turns: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for person in first..first + users {
        let from = number(person);
        let mut replies = sink.wait_for(&from);
        let client = client.clone();
        let url = gateway.webhook_url.clone();
        tasks.spawn(async move {
            let mut acks = Vec::with_capacity(turns);
            let mut ends = Vec::with_capacity(turns);
            for turn in 0..turns {
                let started = Instant::now();
                acks.push(send(&client, &url, &from, &format!("message {turn}")).await?);
                let replied = tokio::time::timeout(REPLY_TIMEOUT, replies.recv())
                    .await
                    .context("no reply within the time limit")?
                    .context("the sink stopped")?;
                ends.push(replied.saturating_duration_since(started));
            }
            anyhow::Ok((acks, ends))
        });
    }
    let mut acks = Vec::new();
    let mut ends = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (a, e) = result??;
        acks.extend(a);
        ends.extend(e);
    }
    sink.forget_all();
    Ok((acks, ends))
}

// ---------------------------------------------------------------------------------------------
// Open loop: a fixed rate.

async fn open(
    args: &GatewayArgs,
    client: &reqwest::Client,
    gateway: &Gateway,
    sink: &Arc<Sink>,
) -> anyhow::Result<Figures> {
    // The warm-up: one webhook from each of `--warmup-users` other people, at the same rate,
    // answered before the measured phase starts.
    let warmup = Offer {
        rate: args.rate,
        requests: args.warmup_users,
        first_person: 1_000_000,
        people: args.warmup_users,
    };
    let warmed = warmup.run(client, gateway, sink).await;
    if warmed.errors > 0 || warmed.replied < args.warmup_users as u64 {
        bail!(
            "the warm-up was not answered: {} errors, {} of {} replies",
            warmed.errors,
            warmed.replied,
            args.warmup_users
        );
    }
    let measured = Offer {
        rate: args.rate,
        requests: args.requests,
        first_person: 0,
        people: args.people,
    };
    let mut outcome = measured.run(client, gateway, sink).await;
    Ok(vec![
        (
            "offered rate/s",
            args.requests as f64 / outcome.offered.as_secs_f64(),
        ),
        ("ack p50 ms", ms(percentile(&mut outcome.acks, 50.0))),
        ("ack p99 ms", ms(percentile(&mut outcome.acks, 99.0))),
        ("ack max ms", ms(percentile(&mut outcome.acks, 100.0))),
        ("webhook errors", outcome.errors as f64),
        ("replies", outcome.replied as f64),
        ("max in flight", outcome.in_flight_max as f64),
        (
            "replies/s overall",
            outcome.replied as f64 / outcome.drained.as_secs_f64(),
        ),
    ])
}

/// Webhooks at a fixed rate, one from each of `people` in rotation from `first_person`.
struct Offer {
    rate: u32,
    requests: usize,
    first_person: usize,
    people: usize,
}

/// What an [`Offer`] got.
struct Offered {
    acks: Vec<Duration>,
    errors: u64,
    replied: u64,
    in_flight_max: u64,
    /// Until the last webhook was sent.
    offered: Duration,
    /// Until the last reply arrived (or the drain timed out).
    drained: Duration,
}

impl Offer {
    /// Sends every webhook at its scheduled time and waits, bounded, for the replies.
    async fn run(&self, client: &reqwest::Client, gateway: &Gateway, sink: &Arc<Sink>) -> Offered {
        let accepted_before = sink.accepted();
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)));
        let (results, mut collected) = mpsc::unbounded_channel::<anyhow::Result<Duration>>();
        let started = tokio::time::Instant::now();
        let mut in_flight_max = 0_u64;
        for index in 0..self.requests {
            let at = started + interval.mul_f64(index as f64);
            tokio::time::sleep_until(at).await;
            let client = client.clone();
            let url = gateway.webhook_url.clone();
            let results = results.clone();
            let from = number(self.first_person + index % self.people.max(1));
            tokio::spawn(async move {
                let result = send(&client, &url, &from, &format!("message {index}")).await;
                // From the scheduled time: a late start counts against the gateway.
                let result = result.map(|_| at.elapsed());
                drop(results.send(result));
            });
            if index % 64 == 0 {
                let replied = sink.accepted() - accepted_before;
                in_flight_max = in_flight_max.max(index as u64 + 1 - replied.min(index as u64 + 1));
            }
        }
        let offered = started.elapsed();
        drop(results);
        let mut acks = Vec::with_capacity(self.requests);
        let mut errors = 0_u64;
        while let Some(result) = collected.recv().await {
            match result {
                Ok(latency) => acks.push(latency),
                Err(_) => errors += 1,
            }
        }
        // Let the replies drain, bounded.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let expected = self.requests as u64;
        while sink.accepted() - accepted_before < expected && Instant::now() < deadline {
            let replied = sink.accepted() - accepted_before;
            in_flight_max = in_flight_max.max(expected - replied);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Offered {
            acks,
            errors,
            replied: sink.accepted() - accepted_before,
            in_flight_max,
            offered,
            drained: started.elapsed(),
        }
    }
}
