//! The Supabase store: the same SQL functions as [`crate::PgStore`], reached over Supabase's
//! REST API (PostgREST) with the `postgrest` crate instead of a database connection.
//!
//! Every operation that must be atomic — begin, commit, and everything else that reads and
//! writes together — is one `POST /rpc/soul_*` call, so a turn still costs one request to begin
//! and one to commit. Plain lookups and single-table writes use the table endpoints. The service
//! key is sent as `apikey` (for Supabase's gateway) and as the bearer token (for PostgREST, which
//! takes its role from it: `service_role` bypasses row-level security).

mod error;

use std::fmt;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use postgrest::{Builder, Postgrest};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use soul_engine::Memory;
use soul_engine::memory::UNREGIONED;
use uuid::Uuid;

use self::error::Idempotency;
pub use self::error::{RestError, RestProblem, TransportError};
use crate::types::{
    Address, BeginOutcome, CommitOutcome, DeliveryUpdate, EventOutcome, Inbound, Lease,
    OutboundMessage, ScheduledEvent, Session, SessionId, SessionOutbox, SubprocessCommit,
    SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};
use crate::{Result, Store, StoreError, StoreFuture, wire};

/// The project's URL (`https://<ref>.supabase.co`); the REST API is under `/rest/v1`.
pub const URL_VARIABLE: &str = "SUPABASE_URL";
/// The service role's key.
pub const KEY_VARIABLE: &str = "SUPABASE_SERVICE_KEY";
/// The name Supabase's own tooling gives the service role's key, accepted as well.
pub const KEY_VARIABLE_ALIAS: &str = "SUPABASE_SERVICE_ROLE_KEY";

/// A key that never leaves this module except in the request headers.
#[derive(Clone)]
struct ServiceKey(String);

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the REST API is and how to authenticate to it.
#[derive(Clone)]
pub struct SupabaseConfig {
    rest_url: String,
    key: ServiceKey,
    timeout: StdDuration,
}

impl fmt::Debug for SupabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseConfig")
            .field("rest_url", &self.rest_url)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SupabaseConfig {
    /// How long one request may take unless [`SupabaseConfig::with_timeout`] says otherwise.
    pub const DEFAULT_TIMEOUT: StdDuration = StdDuration::from_secs(30);

    /// The REST API at `rest_url` exactly (a PostgREST server, or `https://<ref>.supabase.co/
    /// rest/v1`), authenticated with `service_key`.
    pub fn new(rest_url: impl Into<String>, service_key: impl Into<String>) -> Result<Self> {
        let rest_url = rest_url.into().trim_end_matches('/').to_owned();
        if !(rest_url.starts_with("http://") || rest_url.starts_with("https://")) {
            return Err(StoreError::Invalid(
                "the Supabase REST URL must start with http:// or https://".to_owned(),
            ));
        }
        let key = service_key.into();
        // `postgrest` panics on a header value it cannot encode; refuse such a key here instead.
        // The message does not quote it.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StoreError::Invalid(
                "the Supabase service key is empty or not a printable ASCII token".to_owned(),
            ));
        }
        Ok(SupabaseConfig {
            rest_url,
            key: ServiceKey(key),
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// The project at `project_url` (`https://<ref>.supabase.co`): its REST API is at
    /// `/rest/v1`.
    pub fn from_project_url(
        project_url: impl Into<String>,
        service_key: impl Into<String>,
    ) -> Result<Self> {
        let project_url = project_url.into();
        Self::new(
            format!("{}/rest/v1", project_url.trim_end_matches('/')),
            service_key,
        )
    }

    /// From [`URL_VARIABLE`] and [`KEY_VARIABLE`] (or [`KEY_VARIABLE_ALIAS`]).
    pub fn from_env() -> Result<Self> {
        let url = std::env::var(URL_VARIABLE)
            .map_err(|_| StoreError::Invalid(format!("{URL_VARIABLE} is not set")))?;
        let key = std::env::var(KEY_VARIABLE)
            .or_else(|_| std::env::var(KEY_VARIABLE_ALIAS))
            .map_err(|_| {
                StoreError::Invalid(format!(
                    "neither {KEY_VARIABLE} nor {KEY_VARIABLE_ALIAS} is set"
                ))
            })?;
        Self::from_project_url(url, key)
    }

    /// Gives up on a request after `timeout` (its outcome is then unknown: see
    /// [`StoreError::is_retryable`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: StdDuration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The REST API's URL.
    pub fn rest_url(&self) -> &str {
        &self.rest_url
    }
}

/// The store on Supabase, over its REST API. See the module documentation.
#[derive(Clone)]
pub struct SupabaseStore {
    client: Postgrest,
    config: SupabaseConfig,
}

impl fmt::Debug for SupabaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Postgrest` holds the key in its default headers; only the config (redacted) is shown.
        f.debug_struct("SupabaseStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A session's id, as `select=id` on `user_sessions` returns it.
#[derive(Deserialize)]
struct IdRow {
    id: SessionId,
}

#[derive(Deserialize)]
struct SessionRow {
    id: SessionId,
    address: Address,
    persona: String,
    first_contact_at: DateTime<Utc>,
    last_active_at: DateTime<Utc>,
    total_messages: i64,
    metadata: Value,
    opted_out_at: Option<DateTime<Utc>>,
    version: i64,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        Session {
            id: row.id,
            address: row.address,
            persona: row.persona,
            first_contact_at: row.first_contact_at,
            last_active_at: row.last_active_at,
            total_messages: row.total_messages,
            metadata: row.metadata,
            opted_out: row.opted_out_at.is_some(),
            version: row.version,
        }
    }
}

/// `user_sessions` columns under the names [`Session`] uses.
const SESSION_COLUMNS: &str = "id,address:phone_number,persona:assigned_persona,\
    first_contact_at,last_active_at,total_messages,metadata,opted_out_at,version";
/// `messages` columns under the names [`Memory`] uses (`region` is mapped afterwards).
const MESSAGE_COLUMNS: &str = "id,role,content,name,region,metadata,timestamp:created_at";

impl SupabaseStore {
    /// A store for `config`. Nothing is sent until the first operation.
    pub fn new(config: SupabaseConfig) -> Self {
        let client = Postgrest::new(config.rest_url.clone())
            .insert_header("apikey", &config.key.0)
            .insert_header("Authorization", format!("Bearer {}", config.key.0));
        SupabaseStore { client, config }
    }

    /// A store from the environment ([`SupabaseConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(SupabaseConfig::from_env()?))
    }

    /// Sends one request and returns the body of a successful answer. `what` names the call in
    /// the log line of a failure (never the key, never the payload).
    async fn send(
        &self,
        builder: Builder,
        idempotency: Idempotency,
        what: &'static str,
    ) -> Result<Answer> {
        let response = match builder.build().timeout(self.config.timeout).send().await {
            Ok(response) => response,
            Err(error) => {
                let timed_out = error.is_timeout();
                tracing::warn!(call = what, timeout = timed_out, "Supabase request failed");
                // The URL carries the filters (an address, say): it stays out of the error.
                return Err(TransportError::into_store_error(
                    error.without_url(),
                    timed_out,
                    idempotency,
                ));
            }
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                let timed_out = error.is_timeout();
                tracing::warn!(
                    call = what,
                    timeout = timed_out,
                    "Supabase answer cut short"
                );
                return Err(TransportError::into_store_error(
                    error.without_url(),
                    timed_out,
                    idempotency,
                ));
            }
        };
        if (200..300).contains(&status) {
            return Ok(Answer(body.to_vec()));
        }
        let api = RestError::parse(status, &body);
        let code = api.code.as_deref().unwrap_or("");
        // "No such row" is an answer to a lookup, not something to warn about.
        if api.problem() == RestProblem::NotSingular {
            tracing::debug!(call = what, status, code, "Supabase found no single row");
        } else {
            tracing::warn!(call = what, status, code, problem = ?api.problem(), "Supabase refused a request");
        }
        Err(api.into_store_error(idempotency))
    }

    /// Calls `public.<function>(request jsonb)`: its one argument is named, which PostgREST
    /// matches to the function's parameter (no `Prefer: params=single-object` needed).
    async fn rpc(
        &self,
        function: &'static str,
        request: Value,
        idempotency: Idempotency,
    ) -> Result<Value> {
        let body = json!({ "request": request }).to_string();
        let answer = self
            .send(self.client.rpc(function, body), idempotency, function)
            .await?;
        answer.json()
    }

    /// Rows of a read or of a write returning its representation.
    async fn rows<T: DeserializeOwned>(
        &self,
        builder: Builder,
        idempotency: Idempotency,
        what: &'static str,
    ) -> Result<Vec<T>> {
        let value = self.send(builder, idempotency, what).await?.json()?;
        if value.is_null() {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The session id of an address, if it has one.
    async fn session_id(&self, address: &Address) -> Result<Option<SessionId>> {
        let rows: Vec<IdRow> = self
            .rows(
                self.client
                    .from("user_sessions")
                    .select("id")
                    .eq("phone_number", address.as_str()),
                Idempotency::Idempotent,
                "user_sessions",
            )
            .await?;
        Ok(rows.into_iter().next().map(|row| row.id))
    }
}

/// The body of a successful answer.
struct Answer(Vec<u8>);

impl Answer {
    /// The JSON answer; an empty body (204, or a function returning nothing) is `null`.
    fn json(self) -> Result<Value> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&self.0)?)
    }
}

fn list<T: DeserializeOwned>(value: Value) -> Result<Vec<T>> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_value(value)?)
}

/// A `limit` for the Range header: `postgrest` 1.6's `limit(0)` computes `0 - 1` and underflows,
/// so 0 ("all", where the contract allows it) never reaches it.
fn range_limit(limit: u32) -> Option<usize> {
    usize::try_from(limit).ok().filter(|&n| n > 0)
}

impl Store for SupabaseStore {
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        Box::pin(async move {
            let request = wire::begin_request(inbound, settings, now)?;
            // Not idempotent: a message without an external id would be stored twice.
            let mut outcome = wire::begin_outcome(
                self.rpc("soul_begin_turn", request, Idempotency::NotIdempotent)
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
            // Not idempotent, as a begin.
            let mut outcome = wire::begin_outcome(
                self.rpc("soul_begin_turn", request, Idempotency::NotIdempotent)
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
                self.rpc("soul_begin_event_turn", request, Idempotency::NotIdempotent)
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
            // Repeatable: a repeat of a commit that did apply finds its lease gone and changes
            // nothing (`lease_lost`).
            let answer = self
                .rpc("soul_commit_turn", request, Idempotency::Idempotent)
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
                .rpc(
                    "soul_commit_subprocess",
                    request,
                    Idempotency::NotIdempotent,
                )
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
            // Setting the same expiry twice is the same as once.
            wire::renew_outcome(
                self.rpc("soul_renew_lease", request, Idempotency::Idempotent)
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
                self.rpc("soul_resume_turn", request, Idempotency::NotIdempotent)
                    .await?,
            )?;
            wire::load_missing_history(self, outcome.as_deref_mut(), settings).await?;
            Ok(outcome)
        })
    }

    fn stalled_sessions(&self, now: DateTime<Utc>, max: u32) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(async move {
            // A correlated `exists` on the queue: not expressible as a table filter.
            let request = wire::stalled_request(now, max);
            list(
                self.rpc("soul_stalled_sessions", request, Idempotency::Idempotent)
                    .await?,
            )
        })
    }

    fn session<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let request = self
                .client
                .from("user_sessions")
                .select(SESSION_COLUMNS)
                .eq("phone_number", address.as_str())
                .single();
            match self
                .send(request, Idempotency::Idempotent, "user_sessions")
                .await
            {
                Ok(body) => {
                    let row: SessionRow = serde_json::from_value(body.json()?)?;
                    Ok(Some(row.into()))
                }
                Err(StoreError::Rest { source, .. }) if source.is_no_row() => Ok(None),
                Err(error) => Err(error),
            }
        })
    }

    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        max: u32,
    ) -> StoreFuture<'a, Vec<Memory>> {
        Box::pin(async move {
            let Some(session) = self.session_id(address).await? else {
                return Ok(Vec::new());
            };
            let mut request = self
                .client
                .from("messages")
                .select(MESSAGE_COLUMNS)
                .eq("session_id", session.to_string())
                .order("seq.desc");
            if let Some(region) = region {
                request = request.eq("region", region);
            }
            if let Some(limit) = range_limit(max) {
                request = request.limit(limit);
            }
            let mut rows: Vec<Value> = self
                .rows(request, Idempotency::Idempotent, "messages")
                .await?;
            rows.reverse();
            rows.into_iter()
                .map(|mut row| {
                    // The conversation is stored as the region "default" and read as no region.
                    if row.get("region").and_then(Value::as_str) == Some(UNREGIONED) {
                        row["region"] = Value::Null;
                    }
                    Ok(serde_json::from_value(row)?)
                })
                .collect()
        })
    }

    fn update_deliveries<'a>(
        &'a self,
        updates: &'a [DeliveryUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            // Repeating it finds the statuses already moved: the same state either way.
            let answer = self
                .rpc(
                    "soul_update_deliveries",
                    wire::deliveries_request(updates),
                    Idempotency::Idempotent,
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
            // A claim with `skip locked`, joined with each row's address: one statement. Not
            // repeated: a claim whose answer was lost holds its replies until it expires.
            let request = wire::claim_pending_request(now, claim_until, max);
            list(
                self.rpc(
                    "soul_claim_pending_deliveries",
                    request,
                    Idempotency::NotIdempotent,
                )
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
                .rpc(
                    "soul_claim_session_outbox",
                    request,
                    Idempotency::NotIdempotent,
                )
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
            // Keeps the first opt-out time (`coalesce` on the stored value): a read-modify-write
            // that belongs in one statement.
            let request = wire::opt_out_request(address, opted_out, now);
            let answer = self
                .rpc("soul_set_opt_out", request, Idempotency::Idempotent)
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
            // `for update skip locked`: two claimers never get the same event.
            let request = wire::claim_request(now, max, claim_for);
            list(
                self.rpc("soul_claim_due_events", request, Idempotency::NotIdempotent)
                    .await?,
            )
        })
    }

    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // Matching `due_at` too: a turn that rescheduled the key meanwhile keeps its event.
            // A table `DELETE` filtered on `due_at=eq.<time>` would do on PostgREST, which sends
            // filter values untyped; the PostgREST-compatible server the tests run sends them as
            // text and PostgreSQL has no `timestamptz = text`, so the function does it.
            let request = wire::complete_event_request(event);
            let answer = self
                .rpc("soul_complete_event", request, Idempotency::Idempotent)
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
            // A join on the sessions and a count in one statement.
            let request = wire::delete_old_request(address, days, now);
            let answer = self
                .rpc("soul_delete_old_messages", request, Idempotency::Idempotent)
                .await?;
            wire::deleted_count(&answer)
        })
    }

    fn export_user<'a>(
        &'a self,
        address: &'a Address,
    ) -> StoreFuture<'a, Option<serde_json::Value>> {
        Box::pin(async move {
            // Nine tables read in one snapshot.
            let answer = self
                .rpc(
                    "soul_export_user",
                    wire::address_request(address),
                    Idempotency::Idempotent,
                )
                .await?;
            Ok((!answer.is_null()).then_some(answer))
        })
    }

    fn erase_user<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // Every other table cascades from the session.
            let request = self
                .client
                .from("user_sessions")
                .eq("phone_number", address.as_str())
                .delete()
                .select("id");
            let rows: Vec<serde::de::IgnoredAny> = self
                .rows(request, Idempotency::Idempotent, "user_sessions")
                .await?;
            Ok(!rows.is_empty())
        })
    }
}
