//! The PostgreSQL store: each operation is one statement calling one SQL function from
//! `migrations/`, so a turn's begin and commit are one round trip each.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use soul_engine::Memory;
use std::sync::Mutex;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{AcquireError, Semaphore, SemaphorePermit};
use uuid::Uuid;

use crate::types::{
    Address, BeginOutcome, CommitOutcome, DeliveryUpdate, EventOutcome, Inbound, Lease,
    OutboundMessage, ScheduledEvent, Session, SessionId, SessionOutbox, SubprocessCommit,
    SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};
use crate::{Result, Store, StoreError, StoreFuture, migrations, wire};

/// How long one operation (connecting included) may take before it is given up on, unless
/// [`PgStore::with_operation_timeout`] says otherwise: a server that accepts connections but no
/// longer answers must not hold a webhook past Twilio's 15 s, nor a turn for ever.
pub const DEFAULT_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections reserved for [`Store::enqueue_turn`], beyond the `max_connections` every other
/// operation shares: a webhook's acknowledgement waits for its insert, and must not queue behind
/// turns when they have taken every other connection.
pub const INTAKE_CONNECTIONS: usize = 4;

/// The store on PostgreSQL (including Supabase's database, through its connection string).
///
/// It keeps its own small set of connections rather than a `sqlx` pool: the pool pings every
/// connection when it is returned, an extra round trip per operation that would also delay the
/// connection's next use. A connection whose call failed on the wire, or was cancelled, is
/// dropped instead of reused, and so are the idle ones: they lead to the same server, which has
/// most likely restarted, so the next calls open fresh connections instead of failing in turn.
pub struct PgStore {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    permits: Semaphore,
    intake_permits: Semaphore,
    operation_timeout: std::time::Duration,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The options hold the password.
        f.debug_struct("PgStore")
            .field("available", &self.permits.available_permits())
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects with up to `max_connections` connections, and [`INTAKE_CONNECTIONS`] more for
    /// [`Store::enqueue_turn`]. Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?, max_connections).await
    }

    /// Connects with explicit options. One connection is opened now, to fail early on a wrong
    /// address or password.
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let first = within(
            DEFAULT_OPERATION_TIMEOUT,
            PgConnection::connect_with(&options),
        )
        .await?;
        let max = usize::try_from(max_connections.max(1)).unwrap_or(1);
        Ok(PgStore {
            options,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(max),
            intake_permits: Semaphore::new(INTAKE_CONNECTIONS),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        })
    }

    /// Gives up on an operation after `timeout` instead of [`DEFAULT_OPERATION_TIMEOUT`]. The
    /// error is [`StoreError::Unavailable`]: the operation was applied as a whole or not at all,
    /// and it is unknown which.
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Applies the migrations the database does not have yet (see [`migrations::apply`]).
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = within(
            self.operation_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await?;
        let result = migrations::apply(&mut conn).await;
        drop(conn.close().await);
        result
    }

    fn take_idle(&self) -> Option<PgConnection> {
        self.idle.lock().map_or(None, |mut idle| idle.pop())
    }

    fn give_back(&self, conn: PgConnection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    fn forget_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Calls one SQL function with one jsonb argument: one statement, one round trip (once the
    /// connection has prepared it).
    async fn call(&self, sql: &'static str, request: Value) -> Result<Value> {
        let permit = self.permits.acquire().await;
        self.call_under(permit, sql, request).await
    }

    /// [`call`](Self::call) on a reserved intake connection or a shared one, whichever is free
    /// first: the reserve is a floor for the acknowledgements, not a ceiling.
    async fn call_intake(&self, sql: &'static str, request: Value) -> Result<Value> {
        let permit = tokio::select! {
            biased;
            permit = self.intake_permits.acquire() => permit,
            permit = self.permits.acquire() => permit,
        };
        self.call_under(permit, sql, request).await
    }

    /// [`call`](Self::call) once a permit is granted.
    async fn call_under(
        &self,
        permit: Result<SemaphorePermit<'_>, AcquireError>,
        sql: &'static str,
        request: Value,
    ) -> Result<Value> {
        let _permit = permit.map_err(|_| StoreError::Invalid("the store is closed".to_owned()))?;
        // A timed-out call drops its connection with the future: its state is unknown.
        let answer = within(self.operation_timeout, async {
            let mut conn = match self.take_idle() {
                Some(conn) => conn,
                None => PgConnection::connect_with(&self.options).await?,
            };
            let answer = sqlx::query_scalar::<_, Option<Value>>(sql)
                .bind(request)
                .fetch_one(&mut conn)
                .await;
            if !breaks_connections(&answer) {
                // The server answered: the connection is in a known state and stays.
                self.give_back(conn);
            }
            answer
        })
        .await;
        if breaks_connections(&answer) {
            self.forget_idle();
        }
        Ok(answer?.unwrap_or(Value::Null))
    }
}

/// Whether `answer` says the connection is gone or unusable: no answer on the wire (or none in
/// time), or the server shutting down or dropping it (SQLSTATE classes 57P and 08).
fn breaks_connections<T>(answer: &Result<T, sqlx::Error>) -> bool {
    match answer {
        Ok(_) => false,
        Err(sqlx::Error::Database(error)) => error
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        Err(_) => true,
    }
}

/// `operation`, or an I/O time-out error once `timeout` has passed.
async fn within<T>(
    timeout: std::time::Duration,
    operation: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("PostgreSQL did not answer within {timeout:?}"),
            )))
        })
}

fn list<T: serde::de::DeserializeOwned>(value: Value) -> Result<Vec<T>> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_value(value)?)
}

impl Store for PgStore {
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        Box::pin(async move {
            let request = wire::begin_request(inbound, settings, now)?;
            let mut outcome = wire::begin_outcome(
                self.call("select public.soul_begin_turn($1)", request)
                    .await?,
            )?;
            wire::load_missing_history(self, wire::begun(&mut outcome), settings).await?;
            Ok(outcome)
        })
    }

    fn enqueue_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        Box::pin(async move {
            let request = wire::enqueue_request(inbound, settings, now)?;
            let mut outcome = wire::begin_outcome(
                self.call_intake("select public.soul_begin_turn($1)", request)
                    .await?,
            )?;
            wire::load_missing_history(self, wire::begun(&mut outcome), settings).await?;
            Ok(outcome)
        })
    }

    fn begin_event_turn<'a>(
        &'a self,
        event: &'a ScheduledEvent,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, EventOutcome> {
        Box::pin(async move {
            let request = wire::begin_event_request(event, settings, now)?;
            let mut outcome = wire::event_outcome(
                self.call("select public.soul_begin_event_turn($1)", request)
                    .await?,
            )?;
            wire::load_missing_history(self, wire::event_begun(&mut outcome), settings).await?;
            Ok(outcome)
        })
    }

    fn commit_turn<'a>(
        &'a self,
        commit: &'a TurnCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, CommitOutcome> {
        Box::pin(async move {
            let request = wire::commit_request(commit, settings, now)?;
            let answer = self
                .call("select public.soul_commit_turn($1)", request)
                .await?;
            let mut outcome = wire::commit_outcome(answer, commit, settings, now)?;
            wire::load_next_turns_history(self, &mut outcome, settings).await;
            Ok(outcome)
        })
    }

    fn commit_subprocess<'a>(
        &'a self,
        commit: &'a SubprocessCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, SubprocessOutcome> {
        Box::pin(async move {
            let request = wire::subprocess_request(commit, settings, now)?;
            let answer = self
                .call("select public.soul_commit_subprocess($1)", request)
                .await?;
            wire::subprocess_outcome(&answer)
        })
    }

    fn renew_lease(
        &self,
        session: SessionId,
        lease: Lease,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreFuture<'_, Lease> {
        Box::pin(async move {
            let request = wire::renew_request(session, lease, lease_for, now);
            wire::renew_outcome(
                self.call("select public.soul_renew_lease($1)", request)
                    .await?,
                lease,
            )
        })
    }

    fn resume_turn<'a>(
        &'a self,
        session: SessionId,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Option<Box<TurnContext>>> {
        Box::pin(async move {
            let request = wire::resume_request(session, settings, now)?;
            let mut outcome = wire::resume_outcome(
                self.call("select public.soul_resume_turn($1)", request)
                    .await?,
            )?;
            wire::load_missing_history(self, outcome.as_deref_mut(), settings).await?;
            Ok(outcome)
        })
    }

    fn stalled_sessions(&self, now: DateTime<Utc>, max: u32) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(async move {
            let request = wire::stalled_request(now, max);
            list(
                self.call("select public.soul_stalled_sessions($1)", request)
                    .await?,
            )
        })
    }

    fn session<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let answer = self
                .call(
                    "select public.soul_session($1)",
                    wire::address_request(address),
                )
                .await?;
            if answer.is_null() {
                return Ok(None);
            }
            Ok(Some(serde_json::from_value(answer)?))
        })
    }

    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        max: u32,
    ) -> StoreFuture<'a, Vec<Memory>> {
        Box::pin(async move {
            let request = json!({ "address": address.as_str(), "region": region, "limit": max });
            list(self.call("select public.soul_history($1)", request).await?)
        })
    }

    fn update_deliveries<'a>(
        &'a self,
        updates: &'a [DeliveryUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let answer = self
                .call(
                    "select public.soul_update_deliveries($1)",
                    wire::deliveries_request(updates),
                )
                .await?;
            wire::applied_flags(&answer, updates.len())
        })
    }

    fn claim_pending_deliveries(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        max: u32,
    ) -> StoreFuture<'_, Vec<OutboundMessage>> {
        Box::pin(async move {
            let request = wire::claim_pending_request(now, claim_until, max);
            list(
                self.call("select public.soul_claim_pending_deliveries($1)", request)
                    .await?,
            )
        })
    }

    fn claim_session_outbox(
        &self,
        session: SessionId,
        through: Uuid,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StoreFuture<'_, Option<SessionOutbox>> {
        Box::pin(async move {
            let request = wire::claim_session_outbox_request(session, through, now, claim_until);
            let answer = self
                .call("select public.soul_claim_session_outbox($1)", request)
                .await?;
            Ok(serde_json::from_value(answer)?)
        })
    }

    fn set_opt_out<'a>(
        &'a self,
        address: &'a Address,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let request = wire::opt_out_request(address, opted_out, now);
            let answer = self
                .call("select public.soul_set_opt_out($1)", request)
                .await?;
            wire::flag(&answer, "found")
        })
    }

    fn claim_due_events(
        &self,
        now: DateTime<Utc>,
        max: u32,
        claim_for: Duration,
    ) -> StoreFuture<'_, Vec<ScheduledEvent>> {
        Box::pin(async move {
            let request = wire::claim_request(now, max, claim_for);
            list(
                self.call("select public.soul_claim_due_events($1)", request)
                    .await?,
            )
        })
    }

    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let request = wire::complete_event_request(event);
            let answer = self
                .call("select public.soul_complete_event($1)", request)
                .await?;
            wire::flag(&answer, "found")
        })
    }

    fn delete_messages_older_than<'a>(
        &'a self,
        address: Option<&'a Address>,
        days: u32,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let request = wire::delete_old_request(address, days, now);
            let answer = self
                .call("select public.soul_delete_old_messages($1)", request)
                .await?;
            wire::deleted_count(&answer)
        })
    }

    fn export_user<'a>(
        &'a self,
        address: &'a Address,
    ) -> StoreFuture<'a, Option<serde_json::Value>> {
        Box::pin(async move {
            let answer = self
                .call(
                    "select public.soul_export_user($1)",
                    wire::address_request(address),
                )
                .await?;
            Ok((!answer.is_null()).then_some(answer))
        })
    }

    fn erase_user<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let answer = self
                .call(
                    "select public.soul_erase_user($1)",
                    wire::address_request(address),
                )
                .await?;
            wire::flag(&answer, "found")
        })
    }
}
