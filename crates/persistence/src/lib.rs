//! Persistence for souls: the turn contract and its stores.
//!
//! A turn costs two round trips to the database: [`Store::begin_turn`] stores the inbound
//! message and either starts the turn (loading everything it needs under a lease) or reports it
//! as a duplicate or queued behind the running turn; [`Store::commit_turn`] applies the turn's
//! changes atomically, stores its replies for delivery (claimed for their sender), releases the
//! lease and starts the session's next waiting message, if any. Both are atomic. A due scheduled event enters the
//! same queue through [`Store::begin_event_turn`], as a turn that is not the person talking.
//!
//! Backends: [`PgStore`] (PostgreSQL or Supabase's database, through SQL functions defined in
//! `migrations/`) and [`SupabaseStore`] (the same functions over Supabase's REST API), one
//! [`SqlFunctionStore`] over two transports, and [`SqliteStore`] (one local file, no server). All pass the same conformance suite (the
//! `conformance` feature). The design is in `docs/persistence.md`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Duration, Utc};
use soul_engine::Memory;
use uuid::Uuid;

use crate::turn_log::{LoggedTurn, Restore, Rewind, SessionState};

#[cfg(feature = "conformance")]
pub mod conformance;
mod driver;
mod error;
mod inspect;
pub mod migrations;
mod sql_functions;
mod sqlite;
pub mod turn_log;
mod types;
mod wire;

pub use error::{DatabaseError, RestError, RestProblem, Result, StoreError, TransportError};
pub use inspect::{AuditAction, AuditEntry, Conversation, ConversationQuery, Inspect};
pub use sql_functions::{
    DEFAULT_OPERATION_TIMEOUT, INTAKE_CONNECTIONS, PgConnections, PgStore, PostgrestRpc,
    SqlFunctionStore, SupabaseConfig, SupabaseStore,
};
pub use sqlite::SqliteStore;
pub use types::{
    Address, BeginOutcome, Changes, CommitOutcome, DEFAULT_PENDING_LIMIT, DeliveryStatus,
    DeliveryUpdate, Erasure, EventOutcome, Inbound, InboundKind, Lease, Line, MemoryChange,
    NewEvent, OutboundMessage, OutboundRef, OutboxAtCommit, PendingEvent, ProcessMemoryChange,
    ProcessState, Processes, QueuedInbound, ScheduledEvent, Session, SessionId, SessionOutbox,
    SoulProcesses, SubprocessCommit, SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};

/// The future every store operation returns: boxed, so that `Arc<dyn Store>` works.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Where souls live between messages.
///
/// Every operation takes the time it should consider "now" from the caller, so that leases,
/// timeouts and retention are decided by one clock (the gateway's) and tests are deterministic.
pub trait Store: Send + Sync + fmt::Debug {
    /// Stores an inbound message and, unless it is a duplicate or another worker holds the
    /// session, starts its turn: load or create the session, apply the session timeout, take the
    /// lease, bump the version, validate the process state and load memories, history and the
    /// latest snapshot. When a dead worker left older messages waiting, the turn started is for
    /// the oldest of them (per-session order); this message then comes from a later commit.
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome>;

    /// Stores an inbound message in its session's queue exactly as [`Store::begin_turn`] does
    /// (the session loaded or created, a repeated external id refused) but starts nothing: the
    /// short, durable step a webhook is acknowledged after when turns are backed up. Answers
    /// [`BeginOutcome::Queued`] when a worker holds the session (it runs the message when it
    /// commits) and [`BeginOutcome::Waiting`] when none does: then the caller starts it with
    /// [`Store::resume_turn`], and should the caller die first, the session shows in
    /// [`Store::stalled_sessions`] at once (there is no lease to expire).
    fn enqueue_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome>;

    /// Begins the turn for a due event (from [`Store::claim_due_events`]) exactly as
    /// [`Store::begin_turn`] does for a message — the same queue, lease and per-session order —
    /// except that the event is not a message from the person: it is not stored in the
    /// conversation, not counted in `total_messages` and does not move (or trigger) the session
    /// timeout. In the same transaction the event is completed (deleted), so a crash re-runs its
    /// turn through lease takeover, never fires it again. Firing it a second time answers
    /// [`EventOutcome::Duplicate`] (its inbound row has the external id `event:<event id>`); an
    /// event rescheduled or cancelled since it was claimed is [`EventOutcome::Gone`]; for an
    /// opted-out person the event is completed without a turn ([`EventOutcome::OptedOut`]).
    fn begin_event_turn<'a>(
        &'a self,
        event: &'a ScheduledEvent,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, EventOutcome>;

    /// Commits a turn begun under `commit.lease_token`: applies the changes, stores the replies
    /// as outbound messages pending delivery, marks the inbound message done, and starts the
    /// session's next waiting message (returned in [`CommitOutcome::next`]) or releases the
    /// lease; reads, under the same lock, what sending the replies needs to know
    /// ([`CommitOutcome::outbox`]). Fails with [`StoreError::LeaseLost`] when another worker
    /// took the session over.
    fn commit_turn<'a>(
        &'a self,
        commit: &'a TurnCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, CommitOutcome>;

    /// Applies subprocess changes if the session's version is still `commit.version`, that is,
    /// no newer turn began meanwhile.
    fn commit_subprocess<'a>(
        &'a self,
        commit: &'a SubprocessCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, SubprocessOutcome>;

    /// Extends a running turn's lease to `now + lease_for` (for a turn that may outlast it).
    /// Fails with [`StoreError::LeaseLost`] once another worker has taken the session over.
    fn renew_lease(
        &self,
        session: SessionId,
        lease: Lease,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreFuture<'_, Lease>;

    /// Takes over a session whose lease is free or expired and starts its oldest waiting
    /// message (re-running a turn whose worker died, or starting one [`Store::enqueue_turn`]
    /// stored). `None` when the lease is live or nothing waits. The turn is
    /// [`TurnContext::new_session`] when no turn of the session has started before.
    fn resume_turn<'a>(
        &'a self,
        session: SessionId,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Option<Box<TurnContext>>>;

    /// Sessions with waiting messages and no live lease (for a sweeper calling
    /// [`Store::resume_turn`]).
    fn stalled_sessions(&self, now: DateTime<Utc>, limit: u32) -> StoreFuture<'_, Vec<SessionId>>;

    /// The session of an address on the default line; `None` (not an error) when there is none.
    fn session<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, Option<Session>> {
        static DEFAULT_LINE: Line = Line::DEFAULT;
        self.session_on_line(address, &DEFAULT_LINE)
    }

    /// The session of an address on `line` (a person has one per line they texted); `None`
    /// (not an error) when there is none.
    fn session_on_line<'a>(
        &'a self,
        address: &'a Address,
        line: &'a Line,
    ) -> StoreFuture<'a, Option<Session>>;

    /// The latest `limit` messages (0: all), oldest first, of one region (`"default"` is the
    /// unregioned conversation) or of all, of the address's conversation on the default line.
    /// Empty when the address is unknown.
    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Memory>>;

    /// Moves an outbound message's delivery status forward; `false` when the message is unknown
    /// or already at or past that status. One update of [`Store::update_deliveries`].
    fn update_delivery<'a>(&'a self, update: &'a DeliveryUpdate) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let applied = self.update_deliveries(std::slice::from_ref(update)).await?;
            applied
                .first()
                .copied()
                .ok_or_else(|| StoreError::Corrupt("no flag for a delivery update".to_owned()))
        })
    }

    /// Applies `updates` in order, each as it would be applied alone (forward only, by our id
    /// or the provider's), in one round trip; one flag per update, in the same order.
    fn update_deliveries<'a>(&'a self, updates: &'a [DeliveryUpdate])
    -> StoreFuture<'a, Vec<bool>>;

    /// Claims for the caller, until `claim_until`, up to `limit` pending replies whose claim
    /// expired by `now` (their sender died, or gave up), oldest first: replies that may or may
    /// not have been sent, for a sweeper to send again. Two callers at once get disjoint sets,
    /// and a reply claimed here is not handed out again before `claim_until`. A commit claims its
    /// own replies ([`OutboxAtCommit::claimed_until`]).
    fn claim_pending_deliveries(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OutboundMessage>>;

    /// Whether `session`'s person opted out and the session's pending replies stored up to and
    /// including `through`, oldest first, in one call; in it, those of them whose claim expired
    /// by `now` are claimed for the caller until `claim_until` ([`SessionOutbox::claimed`]).
    /// What a sender asks before sending `through` when earlier replies of the session may still
    /// be pending: it sends those it holds, and waits for the others. `None` for an unknown
    /// session.
    fn claim_session_outbox(
        &self,
        session: SessionId,
        through: Uuid,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StoreFuture<'_, Option<SessionOutbox>>;

    /// Records that a person opted out of (or back into) messages; `false` when unknown.
    fn set_opt_out<'a>(
        &'a self,
        address: &'a Address,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, bool>;

    /// Claims up to `limit` due events for `claim_for`; an event not completed by then is
    /// claimed again later.
    fn claim_due_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claim_for: Duration,
    ) -> StoreFuture<'_, Vec<ScheduledEvent>>;

    /// Removes a handled event; `false` if it is gone or was rescheduled meanwhile.
    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool>;

    /// Retention: deletes what people wrote and were answered more than `days` days before
    /// `now` (of one person, or of everyone) and returns how many conversation messages went.
    /// With them go the other copies of their text: inbound messages whose turn is done, replies
    /// no longer pending, and the working-memory snapshot, process state and process memories
    /// of a session with no turn since then (the session timeout would have cleared those at
    /// the person's next message, had it still seen their messages). Soul memories (what the
    /// soul keeps of a person across sessions), the session and its opt-out, waiting messages,
    /// pending replies and scheduled events stay.
    fn delete_messages_older_than<'a>(
        &'a self,
        address: Option<&'a Address>,
        days: u32,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, u64>;

    /// Everything stored about one person, as JSON, read in one consistent picture: every
    /// column of every table but the keys that tie the rows together (`session_id`, `seq`, the
    /// surrogate `id`s of keyed rows) and a running turn's lease; `None` when unknown.
    fn export_user<'a>(
        &'a self,
        address: &'a Address,
    ) -> StoreFuture<'a, Option<serde_json::Value>>;

    /// The turn log of a session, in commit order: the records of turns `from` to `to`
    /// (inclusive; `None`: the latest), rewound ones included, each with the message it
    /// answered and its replies' delivery. Empty for an unknown session.
    fn turn_log(
        &self,
        session: SessionId,
        from: u32,
        to: Option<u32>,
    ) -> StoreFuture<'_, Vec<LoggedTurn>>;

    /// A session's whole state between turns, read at once: every soul and process memory,
    /// the process state, the snapshot, the scheduled events, the version, the lease's expiry
    /// and the latest turn. `None` for an unknown session.
    fn session_state(&self, session: SessionId) -> StoreFuture<'_, Option<SessionState>>;

    /// Replaces a session's state by `restore.state` and marks the turns after
    /// `restore.after_turn` rewound, in one transaction; refused while a turn runs at `now`
    /// ([`Rewind::TurnRunning`]) or when the session's version moved since `restore.version`
    /// ([`Rewind::Changed`]). Bumps the version, so that the subprocesses of a turn before the
    /// rewind cannot commit over it. [`turn_log::rewind`] computes the state.
    fn restore_session<'a>(
        &'a self,
        restore: &'a Restore,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Rewind>;

    /// Deletes everything stored about one person, unless a turn of theirs runs at `now`
    /// ([`Erasure::TurnRunning`], nothing deleted). A person who opted out keeps an opt-out
    /// record ([`Erasure::Erased`]), so that a STOP stays honoured.
    fn erase_user<'a>(
        &'a self,
        address: &'a Address,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Erasure>;
}
