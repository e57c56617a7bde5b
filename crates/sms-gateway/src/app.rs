//! The gateway's state and what it does with an inbound message: the store, the turn driver,
//! the outbox, the metrics, and the tasks running turns.
//!
//! A webhook is acknowledged once its message is durably stored in its session's queue
//! ([`TurnDriver::enqueue`], one short insert that never waits for a turn); the turn then starts
//! ([`TurnDriver::resume`]) and runs on a task of the [`TaskTracker`] once one of the
//! `TURN_CONCURRENCY` slots is free, so that a burst is acknowledged at once and answered as
//! fast as turns run, and SIGTERM can wait for running turns. Keywords (STOP, START, HELP and
//! their synonyms) never reach the model: they begin their turn at once
//! ([`TurnDriver::begin`]), which is closed here with no reply, or with the help text. One case
//! escapes: a HELP (or a START after an opt-out) arriving while a message of the same number
//! is running or waiting is queued behind it, and the driver answers queued messages through
//! the soul.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use soul_engine::model::{LanguageModel, ModelError};
use soul_engine::process::{Registry, Runtime};
use soul_engine::{Clock, Memory, Role, SystemClock};
use soul_persistence::{
    Address, BeginOutcome, Inbound, Inspect, OutboundMessage, PgStore, SessionId, SqliteStore,
    Store, StoreError, SupabaseConfig, SupabaseStore, TurnCommit, TurnContext,
};
use soul_turns::{DriverError, OutboundBatch, TurnDriver, TurnReport};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::{Config, ModelConfig, Route, Secret, StoreConfig};
use crate::inbound_text;
use crate::keywords::{self, Keyword};
use crate::metrics::{MeteredModel, Metrics};
use crate::model_hint::HintedModel;
use crate::outbox::Outbox;
use crate::ratelimit::RateLimiter;
use crate::reply_limit::SegmentLimit;
use crate::twilio::client::{self, TwilioClient};
use crate::twilio::signature;
use crate::twilio::webhook::InboundSms;

pub(crate) use crate::config::DEFAULT_SOUL;

/// The answer to HELP when `HELP_TEXT` is not set.
pub(crate) const DEFAULT_HELP_TEXT: &str = "This is an automated companion you can text any \
     time. Reply STOP to stop messages, START to resume. If you are in danger, call your local \
     emergency number.";

/// PostgreSQL connections per gateway process: turns hold one only for a round trip.
const PG_CONNECTIONS: u32 = 16;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The store could not be opened or migrated.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The model client could not be built.
    #[error("cannot use the model: {0}")]
    Model(#[from] ModelError),
    /// The Twilio client could not be built.
    #[error(transparent)]
    Twilio(#[from] client::BuildError),
    /// The registered souls are inconsistent, or the configured one is missing.
    #[error("{0}")]
    Souls(String),
    /// Migrations need a database connection; Supabase's REST API cannot apply them.
    #[error(
        "migrations cannot be applied over Supabase's REST API: run `supabase db push` (the files \
         in migrations/ follow its naming), or set DATABASE_URL to the project's database URL"
    )]
    MigrateOverRest,
    /// The configuration lacks what the command needs (a bug: the level checks it).
    #[error("the configuration has no {0}")]
    Incomplete(&'static str),
}

/// Opens the configured store and brings its schema up to date (both stores migrate
/// idempotently, and concurrent migrations wait for each other).
pub(crate) async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Inspect>, StartError> {
    match config {
        StoreConfig::Sqlite { url } => {
            let path = crate::config::sqlite_path(url);
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StartError::Directory {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            Ok(Arc::new(SqliteStore::open(&path).await?))
        }
        StoreConfig::Postgres { url } => {
            let store = PgStore::connect(url.expose(), PG_CONNECTIONS).await?;
            store.migrate().await?;
            Ok(Arc::new(store))
        }
        // The schema cannot be applied over the REST API: `migrate` says so (see `migrate`), and
        // a missing schema shows as a typed error on the first request.
        StoreConfig::Supabase { url, service_key } => Ok(Arc::new(SupabaseStore::new(
            SupabaseConfig::from_project_url(url, service_key.expose())?,
        ))),
    }
}

/// Brings the configured store's schema up to date: what `migrate` does.
pub(crate) async fn migrate(config: &StoreConfig) -> Result<(), StartError> {
    if matches!(config, StoreConfig::Supabase { .. }) {
        return Err(StartError::MigrateOverRest);
    }
    open_store(config).await.map(|_| ())
}

/// The registered soul names, for checking `SOUL`.
pub(crate) fn soul_names() -> Vec<&'static str> {
    Registry::load()
        .map(|registry| registry.soul_names().collect())
        .unwrap_or_default()
}

/// Configures the crisis resources text, once, before any turn runs.
pub(crate) fn configure_crisis_resources(config: &Config) {
    use soul_processes::companion::crisis::{CrisisResources, configure_crisis_resources};
    if let Some(text) = &config.crisis_resources
        && let Ok(resources) = CrisisResources::new(text.as_str())
        && configure_crisis_resources(resources).is_err()
    {
        tracing::warn!("the crisis resources were configured before; keeping the first text");
    }
}

/// Builds the driver for the configured souls on `store` (the default soul first, then every
/// other soul the routing names), their model metered into `metrics` and their replies cut to
/// `MAX_REPLY_SEGMENTS`.
pub(crate) fn build_driver(
    config: &Config,
    store: Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    clock: Arc<dyn Clock>,
) -> Result<TurnDriver, StartError> {
    let registry = Registry::load().map_err(|error| StartError::Souls(error.to_string()))?;
    let mut souls = Vec::new();
    for name in config.routing.souls(DEFAULT_SOUL) {
        let soul = registry
            .soul(name)
            .ok_or_else(|| StartError::Souls(format!("this build has no soul named {name:?}")))?;
        souls.push(soul);
    }
    let model_config = config
        .model
        .as_ref()
        .ok_or(StartError::Incomplete("model"))?;
    let model = Arc::new(MeteredModel::new(
        Arc::new(HintedModel::new(
            open_model(model_config, config)?,
            &model_config.base_url,
        )),
        metrics.clone(),
    ));
    let limit = Arc::new(SegmentLimit::new(
        config.max_reply_segments,
        metrics.clone(),
    ));
    let runtimes: Vec<Arc<Runtime>> = souls
        .into_iter()
        .map(|soul| {
            let model: Arc<dyn LanguageModel> = model.clone();
            Arc::new(Runtime::new(soul, model, clock.clone()).with_reply_limit(limit.clone()))
        })
        .collect();
    let (runtime, others) = runtimes
        .split_first()
        .ok_or(StartError::Incomplete("default soul"))?;
    let mut settings = soul_turns::turn_settings(runtime.soul());
    settings.session_timeout =
        chrono::Duration::from_std(config.session_timeout).unwrap_or(settings.session_timeout);
    settings.lease_for =
        chrono::Duration::from_std(config.turn_lease).unwrap_or(settings.lease_for);
    // A commit claims its replies for their sender as long as a sweep claims one for.
    settings.reply_claim_for =
        chrono::Duration::from_std(config.outbox_retry_after).unwrap_or(settings.reply_claim_for);
    let mut driver = TurnDriver::new(store, runtime.clone(), clock)
        .with_settings(settings)
        .with_turn_log(config.turn_log);
    for other in others {
        driver = driver.with_soul(other.clone());
    }
    if let Some(max_attempts) = config.turn_max_attempts {
        driver = driver.with_max_attempts(max_attempts);
    }
    Ok(match &config.fallback_reply {
        Some(reply) => driver.with_fallback_reply(reply.as_str()),
        None => driver,
    })
}

/// The model `config` describes, its attempts and retries bounded by `limits`' model timeout
/// and retry budget.
fn open_model(config: &ModelConfig, limits: &Config) -> Result<Arc<dyn LanguageModel>, ModelError> {
    let key = config.api_key.as_ref().map_or("", |key| key.expose());
    let openai = soul_engine::model::openai::OpenAiConfig::new(
        config.base_url.as_str(),
        key,
        config.model.as_str(),
    )
    .with_request_timeout(limits.model_timeout)
    .with_retry(soul_engine::retry::RetryPolicy::default().with_budget(limits.model_retry_budget));
    Ok(Arc::new(soul_engine::model::openai::OpenAiModel::new(
        openai,
    )?))
}

/// A committed turn's label in `sms_gateway_turns_total`.
fn turn_result(report: &TurnReport) -> &'static str {
    if report.given_up {
        "given_up"
    } else if report.fell_back {
        "fallback"
    } else if report.replies.is_empty() {
        "silent"
    } else {
        "answered"
    }
}

/// Whether `context` is the turn of `inbound` (a begin starts the session's oldest waiting
/// message, which may be an earlier one).
fn answers(context: &TurnContext, inbound: &Inbound) -> bool {
    context.inbound.external_id == inbound.external_id
}

/// What the gateway did with an inbound message; every one is acknowledged to Twilio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboundOutcome {
    /// Stored, and its turn started in a free turn slot.
    Started,
    /// Stored while every turn slot was taken (the gateway is behind): its turn starts once one
    /// is free.
    Waiting,
    /// Stored behind a running turn of the same person.
    Queued,
    /// Seen before.
    Duplicate,
    /// STOP or a synonym: recorded, no reply.
    OptOut,
    /// START or a synonym from an opted-out number: recorded, no reply.
    OptIn,
    /// HELP or INFO: answered with the help text.
    Help,
    /// Over the per-number rate limit: acknowledged, not stored.
    RateLimited,
}

impl InboundOutcome {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            InboundOutcome::Started => "started",
            InboundOutcome::Waiting => "waiting",
            InboundOutcome::Queued => "queued",
            InboundOutcome::Duplicate => "duplicate",
            InboundOutcome::OptOut => "opt_out",
            InboundOutcome::OptIn => "opt_in",
            InboundOutcome::Help => "help",
            InboundOutcome::RateLimited => "rate_limited",
        }
    }
}

/// The running gateway; shared by the HTTP handlers and the sweeper.
pub(crate) struct App {
    /// The configuration.
    pub(crate) config: Config,
    /// The store.
    pub(crate) store: Arc<dyn Store>,
    /// The same store, as the inspector reads it.
    pub(crate) inspect: Arc<dyn Inspect>,
    /// Runs turns (shared with the inspector, which re-runs logged turns with it).
    pub(crate) driver: Arc<TurnDriver>,
    /// Sends replies.
    pub(crate) outbox: Outbox,
    /// The exported metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Running turns and sends, awaited on shutdown.
    pub(crate) tracker: TaskTracker,
    /// "Now" for the store.
    pub(crate) clock: Arc<dyn Clock>,
    /// The URL Twilio calls, for checking signatures.
    pub(crate) public_url: String,
    /// Signs Twilio's webhooks.
    pub(crate) auth_token: Secret,
    limiter: Option<RateLimiter>,
    /// Slots for running turns (`TURN_CONCURRENCY`): a turn waits here for its start, its
    /// message stored, so that thousands arriving together do not all hold a model request and
    /// its buffers at once.
    turn_slots: Arc<Semaphore>,
    /// Sessions with a task waiting for a slot to resume them: one task per session is enough,
    /// as the turn it starts runs every message the session has waiting.
    waiting: Mutex<HashSet<SessionId>>,
    /// Cancelled on shutdown: sessions still waiting for a slot are left to the next gateway.
    stopping: CancellationToken,
    help_text: String,
    /// A round of due events is running: the next sweep does not start another.
    firing_events: AtomicBool,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the gateway for a `serve` configuration: opens the store, the model and Twilio.
    pub(crate) async fn build(config: Config) -> Result<Arc<App>, StartError> {
        let twilio_config = config
            .twilio
            .as_ref()
            .ok_or(StartError::Incomplete("Twilio account"))?;
        let public_url = config
            .public_url
            .as_ref()
            .map(|url| url.as_str().to_owned())
            .ok_or(StartError::Incomplete("public URL"))?;
        let store = open_store(&config.store).await?;
        let metrics = Arc::new(Metrics::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let driver = Arc::new(build_driver(
            &config,
            store.clone(),
            &metrics,
            clock.clone(),
        )?);
        let tracker = TaskTracker::new();
        let outbox = Outbox::new(
            store.clone(),
            TwilioClient::new(twilio_config)?,
            Some(signature::request_url(&public_url, "/twilio/status")),
            metrics.clone(),
            clock.clone(),
            tracker.clone(),
            config.outbox_retry_after,
        );
        Ok(Arc::new(App {
            auth_token: twilio_config.auth_token.clone(),
            public_url,
            limiter: config.rate_limit_per_minute.map(RateLimiter::new),
            turn_slots: Arc::new(Semaphore::new(
                usize::try_from(config.turn_concurrency.get()).unwrap_or(usize::MAX),
            )),
            help_text: config
                .help_text
                .clone()
                .unwrap_or_else(|| DEFAULT_HELP_TEXT.to_owned()),
            firing_events: AtomicBool::new(false),
            waiting: Mutex::new(HashSet::new()),
            stopping: CancellationToken::new(),
            config,
            store: store.clone(),
            inspect: store,
            driver,
            outbox,
            metrics,
            tracker,
            clock,
        }))
    }

    /// Stores `sms`, sent to `route`'s line, and starts what it asks for; returns once the
    /// message is durable.
    pub(crate) async fn receive(
        self: &Arc<Self>,
        sms: InboundSms,
        route: Route,
    ) -> Result<InboundOutcome, StoreError> {
        let now = self.clock.now();
        let body = inbound_text::perceived(&sms);
        let address = Address::new(sms.from);
        let keyword = keywords::classify(&sms.body);
        // Keywords are never limited: STOP must always work.
        let limiter = self.limiter.as_ref().filter(|_| keyword.is_none());
        if let Some(limiter) = limiter
            && !limiter.allow(address.as_str(), now)
        {
            // Dropped by policy, never silently: logged (without the number) and counted.
            tracing::warn!("a number is over the per-number rate limit; message dropped");
            return Ok(InboundOutcome::RateLimited);
        }
        let inbound = Inbound {
            from: address.clone(),
            line: route.line,
            persona: Some(route.soul),
            body,
            external_id: Some(sms.message_sid),
            received_at: now,
            opt_out: (keyword == Some(Keyword::OptOut)).then_some(true),
        };
        let outcome = match keyword {
            Some(Keyword::OptOut) => self.opt_out(&inbound).await,
            Some(Keyword::OptIn) => self.opt_in(inbound).await,
            Some(Keyword::Help) => self.help(&inbound).await,
            None => self.converse(&inbound).await,
        };
        // A message counts once, when it is stored: Twilio's retries of one the store already
        // has, or of one it could not store, give the token back.
        if let Some(limiter) = limiter
            && matches!(outcome, Ok(InboundOutcome::Duplicate) | Err(_))
        {
            limiter.refund(address.as_str(), now);
        }
        outcome
    }

    /// An ordinary message. With a turn slot free, its begin stores it and starts the turn in one
    /// round trip, and the turn runs in that slot. With every slot taken, only the message is
    /// stored (one short insert, so Twilio hears back at once whatever the backlog) and the
    /// session waits for a slot holding nothing but its id; starting it then costs a round trip
    /// more, which only a gateway that is behind pays.
    async fn converse(self: &Arc<Self>, inbound: &Inbound) -> Result<InboundOutcome, StoreError> {
        let free_slot = self.turn_slots.clone().try_acquire_owned().ok();
        let outcome = match free_slot {
            Some(_) => self.begin(inbound).await?,
            None => self.driver.enqueue(inbound).await?,
        };
        Ok(match outcome {
            BeginOutcome::Started(context) => {
                match free_slot {
                    Some(slot) => self.spawn_run_in(slot, *context),
                    // Not an answer `enqueue` gives; run it rather than leave it to its lease.
                    None => self.spawn_run(*context),
                }
                InboundOutcome::Started
            }
            BeginOutcome::Waiting { session, .. } => {
                self.spawn_resume(session);
                InboundOutcome::Waiting
            }
            BeginOutcome::Duplicate { .. } => InboundOutcome::Duplicate,
            _ => InboundOutcome::Queued,
        })
    }

    /// STOP: the opt-out travels with the message, and the store's begin records it in the
    /// transaction that stores the message, after its duplicate check: a replayed STOP changes
    /// nothing, and a turn started or queued for the message (or behind it) already sees the
    /// opt-out, so that the driver stores it unanswered; a reply already committed is not sent,
    /// as the outbox reads the opt-out right before each send. One round trip.
    async fn opt_out(self: &Arc<Self>, inbound: &Inbound) -> Result<InboundOutcome, StoreError> {
        match self.begin(inbound).await? {
            BeginOutcome::Started(context) if answers(&context, inbound) => {
                self.spawn_close(*context, None);
            }
            // An earlier message was waiting: its turn comes first, stored unanswered as the
            // person has opted out, and the STOP's after it.
            BeginOutcome::Started(context) => self.spawn_run(*context),
            BeginOutcome::Duplicate { .. } => return Ok(InboundOutcome::Duplicate),
            _ => {}
        }
        tracing::info!("opted out");
        Ok(InboundOutcome::OptOut)
    }

    /// START from an opted-out number: the opt-in travels with the message, applied by the
    /// store's begin after its duplicate check (a replayed START changes nothing); stored, not
    /// answered (Twilio confirms it). From anyone else it is an ordinary message: "yes" usually
    /// answers a question.
    async fn opt_in(self: &Arc<Self>, mut inbound: Inbound) -> Result<InboundOutcome, StoreError> {
        let opted_out = self
            .store
            .session_on_line(&inbound.from, &inbound.line)
            .await?
            .is_some_and(|session| session.opted_out);
        if !opted_out {
            return self.converse(&inbound).await;
        }
        inbound.opt_out = Some(false);
        match self.begin(&inbound).await? {
            BeginOutcome::Started(context) if answers(&context, &inbound) => {
                self.spawn_close(*context, None);
            }
            // An earlier message was waiting: its turn comes first, through the soul, and the
            // START is queued behind it.
            BeginOutcome::Started(context) => self.spawn_run(*context),
            BeginOutcome::Duplicate { .. } => return Ok(InboundOutcome::Duplicate),
            _ => {}
        }
        tracing::info!("opted back in");
        Ok(InboundOutcome::OptIn)
    }

    /// HELP: the configured help text, without a model call (nothing to an opted-out number).
    async fn help(self: &Arc<Self>, inbound: &Inbound) -> Result<InboundOutcome, StoreError> {
        match self.begin(inbound).await? {
            BeginOutcome::Started(context) if answers(&context, inbound) => {
                let reply = (!context.session.opted_out).then(|| self.help_text.clone());
                self.spawn_close(*context, reply);
            }
            // An earlier message was waiting: its turn comes first, through the soul, and the
            // HELP is queued behind it.
            BeginOutcome::Started(context) => self.spawn_run(*context),
            BeginOutcome::Duplicate { .. } => return Ok(InboundOutcome::Duplicate),
            _ => {}
        }
        Ok(InboundOutcome::Help)
    }

    async fn begin(&self, inbound: &Inbound) -> Result<BeginOutcome, StoreError> {
        self.driver.begin(inbound).await
    }

    /// Runs a started turn, and the messages queued behind it, on a tracked task once a turn
    /// slot is free.
    pub(crate) fn spawn_run(self: &Arc<Self>, context: TurnContext) {
        let app = self.clone();
        let span = tracing::info_span!("turn", session = %context.session.id);
        self.tracker.spawn(
            async move {
                // Never closed: the slot is always granted in the end.
                let Ok(slot) = app.turn_slots.clone().acquire_owned().await else {
                    return;
                };
                app.run(slot, context).await;
            }
            .instrument(span),
        );
    }

    /// [`spawn_run`](Self::spawn_run) in a slot already taken.
    fn spawn_run_in(self: &Arc<Self>, slot: OwnedSemaphorePermit, context: TurnContext) {
        let app = self.clone();
        let span = tracing::info_span!("turn", session = %context.session.id);
        self.tracker
            .spawn(async move { app.run(slot, context).await }.instrument(span));
    }

    /// The turn's duration is counted from its slot, as before the bound existed.
    async fn run(&self, _slot: OwnedSemaphorePermit, context: TurnContext) {
        let started = Instant::now();
        let result = self.driver.run(context, &self.outbox).await;
        self.record(result, started);
    }

    /// Starts and runs what waits in a session nobody holds (enqueued messages, or those a dead
    /// worker left) on a tracked task, once a turn slot is free. Returns `false` when a task
    /// of this process is already waiting for that session.
    pub(crate) fn spawn_resume(self: &Arc<Self>, session: SessionId) -> bool {
        if !self.lock_waiting().insert(session) {
            return false;
        }
        let app = self.clone();
        let span = tracing::info_span!("turn", session = %session);
        self.tracker.spawn(
            async move {
                let slot = tokio::select! {
                    biased;
                    // Nothing of the session is started or leased yet: whichever gateway sweeps
                    // next takes it at once, so the shutdown need not run it.
                    () = app.stopping.cancelled() => return,
                    slot = app.turn_slots.clone().acquire_owned() => slot,
                };
                // From here a message arriving for the session needs a task of its own: this
                // one may already have found the queue empty.
                app.lock_waiting().remove(&session);
                let Ok(_slot) = slot else {
                    return;
                };
                let started = Instant::now();
                let result = app.driver.resume(session, &app.outbox).await;
                app.record(result, started);
            }
            .instrument(span),
        );
        true
    }

    /// Leaves the sessions waiting for a turn slot to the next gateway (see `spawn_resume`);
    /// started turns still run.
    pub(crate) fn stop_waiting(&self) {
        self.stopping.cancel();
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashSet<SessionId>> {
        // The set is only inserted into and removed from: still whole after a panic elsewhere.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fires the due scheduled events (check-ins: the soul texting first) on a tracked task,
    /// unless the previous round is still running.
    pub(crate) fn spawn_due_events(self: &Arc<Self>, limit: u32) {
        if self.firing_events.swap(true, Ordering::AcqRel) {
            return;
        }
        let app = self.clone();
        self.tracker.spawn(
            async move {
                let started = Instant::now();
                let result = app.driver.fire_due_events(limit, &app.outbox).await;
                app.record(result, started);
                app.firing_events.store(false, Ordering::Release);
            }
            .instrument(tracing::info_span!("events")),
        );
    }

    fn record(&self, result: Result<Vec<TurnReport>, DriverError>, started: Instant) {
        match result {
            Ok(reports) if reports.is_empty() => return,
            Ok(reports) => {
                for report in &reports {
                    let label = turn_result(report);
                    self.metrics.turns.inc(label);
                    tracing::info!(
                        session = %report.session,
                        result = label,
                        replies = report.replies.len(),
                        process = report.process,
                        "turn committed"
                    );
                }
            }
            Err(error) => {
                self.metrics.turns.inc("failed");
                tracing::warn!(
                    error = error.kind(),
                    "turn failed; its message is retried once the lease expires"
                );
            }
        }
        self.metrics.turn_seconds.observe(started.elapsed());
    }

    /// Commits a keyword's turn without the model, with `reply` if any, sends the reply and
    /// runs whatever queued behind it.
    fn spawn_close(self: &Arc<Self>, context: TurnContext, reply: Option<String>) {
        let app = self.clone();
        let span = tracing::info_span!("turn", session = %context.session.id, keyword = true);
        self.tracker.spawn(
            async move {
                let now = app.clock.now();
                let mut commit = TurnCommit::new(&context);
                commit.replies = reply
                    .into_iter()
                    .map(|text| Memory::new(Role::Assistant, text, now))
                    .collect();
                let committed = match app
                    .store
                    .commit_turn(&commit, app.driver.settings(), now)
                    .await
                {
                    Ok(committed) => committed,
                    Err(error) => {
                        app.metrics.turns.inc("failed");
                        tracing::warn!(
                            error = error.kind(),
                            "keyword turn not committed; it is retried once the lease expires"
                        );
                        return;
                    }
                };
                app.metrics.turns.inc(if commit.replies.is_empty() {
                    "silent"
                } else {
                    "answered"
                });
                if !committed.outbound.is_empty() {
                    app.outbox.enqueue(OutboundBatch {
                        session: context.session.id,
                        address: context.session.address.clone(),
                        line: context.session.line.clone(),
                        messages: committed
                            .outbound
                            .iter()
                            .copied()
                            .zip(commit.replies.iter().map(|m| m.content.clone()))
                            .collect(),
                        at_commit: Some(committed.outbox),
                    });
                }
                if let Some(next) = committed.next {
                    app.spawn_run(*next);
                }
            }
            .instrument(span),
        );
    }

    /// Queues the pending replies the sweeper claimed until `claimed_until` for sending, in
    /// order, unless this process has them queued already.
    pub(crate) fn resend(
        &self,
        claimed: Vec<OutboundMessage>,
        claimed_until: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        claimed
            .into_iter()
            .map(|message| self.outbox.recover(message, claimed_until))
            .filter(|queued| *queued)
            .count()
    }

    /// Whether the store answers: one cheap lookup of an address no person has.
    pub(crate) async fn store_reachable(&self) -> bool {
        self.store
            .session(&Address::new("readiness-probe"))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrate_refuses_supabase_and_says_what_to_do_instead() {
        let supabase = StoreConfig::Supabase {
            url: "https://project.supabase.co".to_owned(),
            service_key: crate::config::Secret::new("service-key"),
        };
        let error = migrate(&supabase).await.unwrap_err();
        assert!(matches!(error, StartError::MigrateOverRest));
        assert!(error.to_string().contains("supabase db push"));
        assert!(
            open_store(&supabase).await.is_ok(),
            "serving needs no migration step"
        );
    }

    #[test]
    fn each_kind_of_committed_turn_has_its_label() {
        let report = |replies: &[&str], fell_back, given_up| TurnReport {
            session: SessionId(uuid::Uuid::nil()),
            inbound: uuid::Uuid::nil(),
            replies: replies.iter().map(|reply| (*reply).to_owned()).collect(),
            outbound: Vec::new(),
            processes_run: Vec::new(),
            process: "initial".to_owned(),
            fell_back,
            given_up,
            subprocesses_applied: false,
        };
        assert_eq!(turn_result(&report(&["hi"], false, false)), "answered");
        assert_eq!(turn_result(&report(&[], false, false)), "silent");
        assert_eq!(turn_result(&report(&["sorry"], true, false)), "fallback");
        assert_eq!(turn_result(&report(&["sorry"], false, true)), "given_up");
        assert_eq!(turn_result(&report(&[], false, true)), "given_up");
        assert_eq!(Metrics::new().turns.get("given_up"), 0);
    }
}
