//! The store that runs the turn contract as calls of the `soul_*` SQL functions in
//! `migrations/`, written once over a [`Transport`]: PostgreSQL connections of its own
//! ([`PgStore`]) or PostgREST's RPC ([`SupabaseStore`]).
//!
//! Every operation is one call: `wire.rs` builds the function's one `jsonb` argument and reads
//! its answer, and [`Call`] says, for each function, whether a call may be repeated and whether
//! it takes the intake path. So a turn's begin and commit are one round trip (one request) each.

mod calls;
mod postgres;
mod postgrest;

use std::fmt;
use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use soul_engine::Memory;
use uuid::Uuid;

use self::calls::Call;
pub use self::postgres::{DEFAULT_OPERATION_TIMEOUT, INTAKE_CONNECTIONS, PgConnections, PgStore};
pub use self::postgrest::{PostgrestRpc, SupabaseConfig, SupabaseStore};
use crate::turn_log::{LoggedTurn, Restore, Rewind, SessionState};
use crate::types::{
    Address, BeginOutcome, CommitOutcome, DeliveryUpdate, Erasure, EventOutcome, Inbound, Lease,
    Line, OutboundMessage, ScheduledEvent, Session, SessionId, SessionOutbox, SubprocessCommit,
    SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};
use crate::{Result, Store, StoreFuture, wire};

/// How a [`SqlFunctionStore`] reaches the SQL functions.
pub(crate) trait Transport: Send + Sync + fmt::Debug {
    /// Calls `call`'s function with `request`; its answer, `null` when it returned none.
    fn call(&self, call: Call, request: Value) -> impl Future<Output = Result<Value>> + Send;
}

/// The store whose every operation is one call of a SQL function of `migrations/`, over the
/// transport `T`: [`PgStore`] or [`SupabaseStore`], which are built by their own constructors.
#[derive(Debug, Clone)]
pub struct SqlFunctionStore<T> {
    transport: T,
}

/// A begin of a message (started at once, or only stored), with the history a started turn came
/// without.
async fn begin<T: Transport>(
    store: &SqlFunctionStore<T>,
    call: Call,
    request: Value,
    settings: &TurnSettings,
) -> Result<BeginOutcome> {
    let mut outcome = wire::begin_outcome(store.transport.call(call, request).await?)?;
    wire::load_missing_history(store, wire::begun(&mut outcome), settings).await?;
    Ok(outcome)
}

impl<T: Transport> Store for SqlFunctionStore<T> {
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        Box::pin(async move {
            let request = wire::begin_request(inbound, settings, now)?;
            begin(self, Call::BeginTurn, request, settings).await
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
            begin(self, Call::EnqueueTurn, request, settings).await
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
            let mut outcome =
                wire::event_outcome(self.transport.call(Call::BeginEventTurn, request).await?)?;
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
            let answer = self.transport.call(Call::CommitTurn, request).await?;
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
            wire::subprocess_outcome(&self.transport.call(Call::CommitSubprocess, request).await?)
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
            wire::renew_outcome(self.transport.call(Call::RenewLease, request).await?, lease)
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
            let mut outcome =
                wire::resume_outcome(self.transport.call(Call::ResumeTurn, request).await?)?;
            wire::load_missing_history(self, outcome.as_deref_mut(), settings).await?;
            Ok(outcome)
        })
    }

    fn stalled_sessions(&self, now: DateTime<Utc>, limit: u32) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(async move {
            let request = wire::stalled_request(now, limit);
            wire::list(self.transport.call(Call::StalledSessions, request).await?)
        })
    }

    fn session_on_line<'a>(
        &'a self,
        address: &'a Address,
        line: &'a Line,
    ) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let request = wire::session_request(address, line);
            Ok(serde_json::from_value(
                self.transport.call(Call::Session, request).await?,
            )?)
        })
    }

    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Memory>> {
        Box::pin(async move {
            let request = wire::history_request(address, region, limit);
            wire::list(self.transport.call(Call::History, request).await?)
        })
    }

    fn update_deliveries<'a>(
        &'a self,
        updates: &'a [DeliveryUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let request = wire::deliveries_request(updates);
            wire::applied_flags(
                &self.transport.call(Call::UpdateDeliveries, request).await?,
                updates.len(),
            )
        })
    }

    fn claim_pending_deliveries(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OutboundMessage>> {
        Box::pin(async move {
            let request = wire::claim_pending_request(now, claim_until, limit);
            wire::list(
                self.transport
                    .call(Call::ClaimPendingDeliveries, request)
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
            Ok(serde_json::from_value(
                self.transport
                    .call(Call::ClaimSessionOutbox, request)
                    .await?,
            )?)
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
            wire::flag(
                &self.transport.call(Call::SetOptOut, request).await?,
                "found",
            )
        })
    }

    fn claim_due_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claim_for: Duration,
    ) -> StoreFuture<'_, Vec<ScheduledEvent>> {
        Box::pin(async move {
            let request = wire::claim_request(now, limit, claim_for);
            wire::list(self.transport.call(Call::ClaimDueEvents, request).await?)
        })
    }

    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let request = wire::complete_event_request(event);
            wire::flag(
                &self.transport.call(Call::CompleteEvent, request).await?,
                "found",
            )
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
            wire::deleted_count(
                &self
                    .transport
                    .call(Call::DeleteOldMessages, request)
                    .await?,
            )
        })
    }

    fn export_user<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, Option<Value>> {
        Box::pin(async move {
            let request = wire::address_request(address);
            let answer = self.transport.call(Call::ExportUser, request).await?;
            Ok((!answer.is_null()).then_some(answer))
        })
    }

    fn erase_user<'a>(
        &'a self,
        address: &'a Address,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Erasure> {
        Box::pin(async move {
            let request = wire::erase_request(address, now);
            wire::erasure(&self.transport.call(Call::EraseUser, request).await?)
        })
    }

    fn turn_log(
        &self,
        session: SessionId,
        from: u32,
        to: Option<u32>,
    ) -> StoreFuture<'_, Vec<LoggedTurn>> {
        Box::pin(async move {
            let request = wire::turn_log_request(session, from, to);
            let mut answer = self.transport.call(Call::TurnLog, request).await?;
            for turn in answer.as_array_mut().into_iter().flatten() {
                let replies = turn.get("replies").cloned().unwrap_or_default();
                let body_of = |id: &str| {
                    replies.as_array()?.iter().find_map(|reply| {
                        (reply.get("id")?.as_str()? == id)
                            .then(|| reply.get("body")?.as_str().map(str::to_owned))?
                    })
                };
                if let Some(record) = turn.get_mut("record") {
                    crate::turn_log::restore_spoken_answers(record, body_of);
                }
            }
            Ok(serde_json::from_value(answer)?)
        })
    }

    fn session_state(&self, session: SessionId) -> StoreFuture<'_, Option<SessionState>> {
        Box::pin(async move {
            let request = serde_json::json!({ "session_id": session });
            let answer = self.transport.call(Call::SessionState, request).await?;
            Ok(serde_json::from_value(answer)?)
        })
    }

    fn restore_session<'a>(
        &'a self,
        restore: &'a Restore,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Rewind> {
        Box::pin(async move {
            let request = wire::restore_request(restore, now)?;
            wire::rewind(&self.transport.call(Call::RestoreSession, request).await?)
        })
    }
}

impl<T: Transport> crate::Inspect for SqlFunctionStore<T> {
    fn conversations<'a>(
        &'a self,
        query: &'a crate::ConversationQuery,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Vec<crate::Conversation>> {
        Box::pin(async move {
            let request = serde_json::json!({
                "now": now,
                "session": query.session,
                "search": query.search,
                "process": query.process,
                "opted_out": query.opted_out,
                "undelivered": query.undelivered,
                "due_events": query.due_events,
                "limit": query.effective_limit(),
            });
            wire::list(
                self.transport
                    .call(Call::InspectConversations, request)
                    .await?,
            )
        })
    }

    fn record_audit<'a>(&'a self, entry: &'a crate::AuditEntry) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let request = serde_json::to_value(entry)?;
            self.transport.call(Call::RecordAudit, request).await?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: u32) -> StoreFuture<'_, Vec<crate::AuditEntry>> {
        Box::pin(async move {
            let request = serde_json::json!({ "limit": limit });
            wire::list(self.transport.call(Call::AuditLog, request).await?)
        })
    }
}
