//! A store that counts the operations its caller makes, delegating each to the real store.
//!
//! Each operation of every backend is one transaction: one round trip for `PgStore`, one
//! `BEGIN IMMEDIATE … COMMIT` for `SqliteStore`. The wire round trips of PostgreSQL are counted
//! separately, by `soul_testkit::postgres::RoundTripCounter`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use soul_engine::Memory;
use soul_persistence::turn_log::{LoggedTurn, Restore, Rewind, SessionState};
use soul_persistence::{
    Address, BeginOutcome, CommitOutcome, DeliveryUpdate, Erasure, EventOutcome, Inbound, Lease,
    Line, OutboundMessage, ScheduledEvent, Session, SessionId, SessionOutbox, Store, StoreFuture,
    SubprocessCommit, SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};
use uuid::Uuid;

/// `future`, adding the time it took to `nanos`.
fn timed<'a, T: Send + 'a>(
    future: StoreFuture<'a, T>,
    nanos: Arc<AtomicU64>,
) -> StoreFuture<'a, T> {
    Box::pin(async move {
        let started = Instant::now();
        let result = future.await;
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        nanos.fetch_add(spent, Ordering::Relaxed);
        result
    })
}

/// The real store and a count of the operations made on it.
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn Store>,
    operations: AtomicU64,
    /// Nanoseconds spent awaiting `begin_turn` and `commit_turn`.
    begin_nanos: Arc<AtomicU64>,
    commit_nanos: Arc<AtomicU64>,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Self {
        CountingStore {
            inner,
            operations: AtomicU64::new(0),
            begin_nanos: Arc::default(),
            commit_nanos: Arc::default(),
        }
    }

    /// Operations so far.
    pub(crate) fn operations(&self) -> u64 {
        self.operations.load(Ordering::Relaxed)
    }

    /// Time spent in `begin_turn` and in `commit_turn` so far.
    pub(crate) fn store_time(&self) -> (std::time::Duration, std::time::Duration) {
        (
            std::time::Duration::from_nanos(self.begin_nanos.load(Ordering::Relaxed)),
            std::time::Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
        )
    }

    fn tick(&self) -> &dyn Store {
        self.operations.fetch_add(1, Ordering::Relaxed);
        self.inner.as_ref()
    }
}

impl Store for CountingStore {
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        timed(
            self.tick().begin_turn(inbound, settings, now),
            Arc::clone(&self.begin_nanos),
        )
    }

    fn enqueue_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        self.tick().enqueue_turn(inbound, settings, now)
    }

    fn begin_event_turn<'a>(
        &'a self,
        event: &'a ScheduledEvent,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, EventOutcome> {
        self.tick().begin_event_turn(event, settings, now)
    }

    fn commit_turn<'a>(
        &'a self,
        commit: &'a TurnCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, CommitOutcome> {
        timed(
            self.tick().commit_turn(commit, settings, now),
            Arc::clone(&self.commit_nanos),
        )
    }

    fn commit_subprocess<'a>(
        &'a self,
        commit: &'a SubprocessCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, SubprocessOutcome> {
        self.tick().commit_subprocess(commit, settings, now)
    }

    fn renew_lease(
        &self,
        session: SessionId,
        lease: Lease,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreFuture<'_, Lease> {
        self.tick().renew_lease(session, lease, lease_for, now)
    }

    fn resume_turn<'a>(
        &'a self,
        session: SessionId,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Option<Box<TurnContext>>> {
        self.tick().resume_turn(session, settings, now)
    }

    fn stalled_sessions(&self, now: DateTime<Utc>, limit: u32) -> StoreFuture<'_, Vec<SessionId>> {
        self.tick().stalled_sessions(now, limit)
    }

    fn session_on_line<'a>(
        &'a self,
        address: &'a Address,
        line: &'a Line,
    ) -> StoreFuture<'a, Option<Session>> {
        self.tick().session_on_line(address, line)
    }

    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Memory>> {
        self.tick().history(address, region, limit)
    }

    fn update_deliveries<'a>(
        &'a self,
        updates: &'a [DeliveryUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        self.tick().update_deliveries(updates)
    }

    fn claim_pending_deliveries(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OutboundMessage>> {
        self.tick()
            .claim_pending_deliveries(now, claim_until, limit)
    }

    fn claim_session_outbox(
        &self,
        session: SessionId,
        through: Uuid,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StoreFuture<'_, Option<SessionOutbox>> {
        self.tick()
            .claim_session_outbox(session, through, now, claim_until)
    }

    fn set_opt_out<'a>(
        &'a self,
        address: &'a Address,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, bool> {
        self.tick().set_opt_out(address, opted_out, now)
    }

    fn claim_due_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claim_for: Duration,
    ) -> StoreFuture<'_, Vec<ScheduledEvent>> {
        self.tick().claim_due_events(now, limit, claim_for)
    }

    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool> {
        self.tick().complete_event(event)
    }

    fn delete_messages_older_than<'a>(
        &'a self,
        address: Option<&'a Address>,
        days: u32,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, u64> {
        self.tick().delete_messages_older_than(address, days, now)
    }

    fn export_user<'a>(
        &'a self,
        address: &'a Address,
    ) -> StoreFuture<'a, Option<serde_json::Value>> {
        self.tick().export_user(address)
    }

    fn erase_user<'a>(
        &'a self,
        address: &'a Address,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Erasure> {
        self.tick().erase_user(address, now)
    }

    fn turn_log(
        &self,
        session: SessionId,
        from: u32,
        to: Option<u32>,
    ) -> StoreFuture<'_, Vec<LoggedTurn>> {
        self.tick().turn_log(session, from, to)
    }

    fn session_state(&self, session: SessionId) -> StoreFuture<'_, Option<SessionState>> {
        self.tick().session_state(session)
    }

    fn restore_session<'a>(
        &'a self,
        restore: &'a Restore,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Rewind> {
        self.tick().restore_session(restore, now)
    }
}
