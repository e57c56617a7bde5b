//! The embedded store: one SQLite file in WAL mode. Each operation is one `BEGIN IMMEDIATE`
//! transaction implementing, in Rust, what the SQL functions of `migrations/` do in PostgreSQL;
//! the conformance suite holds the two to the same behaviour.
//!
//! One module per topic: `open` (the file and its schema), `start` (begins, resumes, the start
//! of a turn and its lease), `commit` (a turn's and a subprocess's changes), `outbox` (delivery
//! updates and send claims), `events` (scheduled events and their turns), `sessions` (reads by
//! address, and the opt-out), `data` (export, erasure, retention), `inspect` (the inspector's
//! listing and audit), `turn_log` (the turn log, and a session's state read and restored); `rows`
//! holds how values are kept as text and read back. This file holds the store and its [`Store`] implementation,
//! which runs each operation in its transaction.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use soul_engine::Memory;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::driver::{Result, operation};
use crate::turn_log::{LoggedTurn, Restore, Rewind, SessionState};
use crate::types::{
    Address, BeginOutcome, CommitOutcome, DeliveryUpdate, Erasure, EventOutcome, Inbound, Lease,
    Line, OutboundMessage, ScheduledEvent, Session, SessionId, SessionOutbox, SubprocessCommit,
    SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};
use crate::{Store, StoreFuture};

/// Runs `$body` (a block evaluating to a `Result`) in one `BEGIN IMMEDIATE` transaction: the
/// write lock is taken up front, so two operations never both read and then both write. An
/// error from the body rolls back.
macro_rules! write_tx {
    ($store:ident, $conn:ident => $body:block) => {{
        let _writer = $store.writer.lock().await;
        let mut tx = $store.pool.begin_with("BEGIN IMMEDIATE").await?;
        let $conn: &mut SqliteConnection = &mut tx;
        let value: Result<_> = $body;
        let value = value?;
        tx.commit().await?;
        Ok(value)
    }};
}

mod commit;
mod data;
mod events;
mod inspect;
mod open;
mod outbox;
mod rows;
mod sessions;
mod start;
mod turn_log;

/// The store in one local SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// This process's writers take turns here, first come first served, before they ask SQLite
    /// for the write lock: SQLite's busy handler would make them poll for it with growing sleeps
    /// (milliseconds of idle lock and a long tail). Another process on the same file still meets
    /// the busy handler.
    writer: Arc<Mutex<()>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl Store for SqliteStore {
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        operation(async move {
            write_tx!(self, conn => { start::begin(conn, inbound, settings, now, false).await })
        })
    }

    fn enqueue_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        operation(async move {
            write_tx!(self, conn => { start::begin(conn, inbound, settings, now, true).await })
        })
    }

    fn begin_event_turn<'a>(
        &'a self,
        event: &'a ScheduledEvent,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, EventOutcome> {
        operation(async move {
            write_tx!(self, conn => { events::begin_event(conn, event, settings, now).await })
        })
    }

    fn commit_turn<'a>(
        &'a self,
        turn: &'a TurnCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, CommitOutcome> {
        operation(async move {
            write_tx!(self, conn => { commit::commit(conn, turn, settings, now).await })
        })
    }

    fn commit_subprocess<'a>(
        &'a self,
        commit: &'a SubprocessCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, SubprocessOutcome> {
        operation(async move {
            write_tx!(self, conn => {
                commit::commit_subprocess(conn, commit, settings, now).await
            })
        })
    }

    fn renew_lease(
        &self,
        session: SessionId,
        lease: Lease,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreFuture<'_, Lease> {
        operation(async move {
            write_tx!(self, conn => {
                start::renew_lease(conn, session, lease, lease_for, now).await
            })
        })
    }

    fn resume_turn<'a>(
        &'a self,
        session: SessionId,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Option<Box<TurnContext>>> {
        operation(async move {
            write_tx!(self, conn => { start::resume(conn, session, settings, now).await })
        })
    }

    fn stalled_sessions(&self, now: DateTime<Utc>, limit: u32) -> StoreFuture<'_, Vec<SessionId>> {
        operation(start::stalled_sessions(&self.pool, now, limit))
    }

    fn session_on_line<'a>(
        &'a self,
        address: &'a Address,
        line: &'a Line,
    ) -> StoreFuture<'a, Option<Session>> {
        operation(sessions::session(&self.pool, address, line))
    }

    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Memory>> {
        operation(sessions::history_of(&self.pool, address, region, limit))
    }

    fn update_deliveries<'a>(
        &'a self,
        updates: &'a [DeliveryUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        operation(async move {
            write_tx!(self, conn => { outbox::update_deliveries(conn, updates).await })
        })
    }

    fn claim_pending_deliveries(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OutboundMessage>> {
        operation(async move {
            write_tx!(self, conn => {
                outbox::claim_pending_deliveries(conn, now, claim_until, limit).await
            })
        })
    }

    fn claim_session_outbox(
        &self,
        session: SessionId,
        through: Uuid,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StoreFuture<'_, Option<SessionOutbox>> {
        operation(async move {
            write_tx!(self, conn => {
                outbox::claim_session_outbox(conn, session, through, now, claim_until).await
            })
        })
    }

    fn set_opt_out<'a>(
        &'a self,
        address: &'a Address,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, bool> {
        operation(async move {
            write_tx!(self, conn => { sessions::set_opt_out(conn, address, opted_out, now).await })
        })
    }

    fn claim_due_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claim_for: Duration,
    ) -> StoreFuture<'_, Vec<ScheduledEvent>> {
        operation(async move {
            write_tx!(self, conn => { events::claim_due_events(conn, now, limit, claim_for).await })
        })
    }

    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool> {
        operation(
            async move { write_tx!(self, conn => { events::complete_event(conn, event).await }) },
        )
    }

    fn delete_messages_older_than<'a>(
        &'a self,
        address: Option<&'a Address>,
        days: u32,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, u64> {
        operation(async move {
            write_tx!(self, conn => {
                data::delete_messages_older_than(conn, address, days, now).await
            })
        })
    }

    fn export_user<'a>(
        &'a self,
        address: &'a Address,
    ) -> StoreFuture<'a, Option<serde_json::Value>> {
        // A write transaction for a read: the export must be one consistent picture.
        operation(async move { write_tx!(self, conn => { data::export(conn, address).await }) })
    }

    fn turn_log(
        &self,
        session: SessionId,
        from: u32,
        to: Option<u32>,
    ) -> StoreFuture<'_, Vec<LoggedTurn>> {
        operation(turn_log::turn_log(&self.pool, session, from, to))
    }

    fn session_state(&self, session: SessionId) -> StoreFuture<'_, Option<SessionState>> {
        // A write transaction for a read: the state must be one consistent picture.
        operation(async move {
            write_tx!(self, conn => { turn_log::session_state(conn, session).await })
        })
    }

    fn restore_session<'a>(
        &'a self,
        restore: &'a Restore,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Rewind> {
        operation(async move {
            write_tx!(self, conn => { turn_log::restore(conn, restore, now).await })
        })
    }

    fn erase_user<'a>(
        &'a self,
        address: &'a Address,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Erasure> {
        operation(
            async move { write_tx!(self, conn => { data::erase_user(conn, address, now).await }) },
        )
    }
}

impl crate::Inspect for SqliteStore {
    fn conversations<'a>(
        &'a self,
        query: &'a crate::ConversationQuery,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Vec<crate::Conversation>> {
        operation(inspect::conversations(&self.pool, query, now))
    }

    fn record_audit<'a>(&'a self, entry: &'a crate::AuditEntry) -> StoreFuture<'a, ()> {
        operation(async move {
            let _writer = self.writer.lock().await;
            inspect::record_audit(&self.pool, entry).await
        })
    }

    fn audit_log(&self, limit: u32) -> StoreFuture<'_, Vec<crate::AuditEntry>> {
        operation(inspect::audit_log(&self.pool, limit))
    }
}
