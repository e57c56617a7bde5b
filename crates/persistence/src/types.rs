//! The values that cross the store boundary.
//!
//! `Debug` never prints a phone number or a message body: they identify and describe a person.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use soul_engine::{Memory, WorkingMemory};
use uuid::Uuid;

use crate::turn_log::{SubprocessRecord, TurnRecord};

/// A channel address: for SMS, the person's phone number (E.164).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    /// Wraps an address.
    pub fn new(address: impl Into<String>) -> Self {
        Address(address.into())
    }

    /// The address itself. Never log it at info level or above.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Address(<redacted>)")
    }
}

/// The line a person texted: the gateway's number or messaging service their conversation is on
/// (Twilio's `To`, or its `MessagingServiceSid`), and the one its replies go out from. A person
/// has one conversation per line. The empty line is the gateway's default one (`TWILIO_FROM` or
/// `TWILIO_MESSAGING_SERVICE_SID`): every conversation of a gateway with one number is on it.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Line(String);

impl Line {
    /// The gateway's default line.
    pub const DEFAULT: Line = Line(String::new());

    /// Wraps a number (E.164) or a messaging service SID; empty for the default line.
    pub fn new(line: impl Into<String>) -> Self {
        Line(line.into())
    }

    /// The number or messaging service SID; empty for the default line.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the gateway's default line.
    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The gateway's own number, not a person's; still kept out of logs with the addresses.
        if self.is_default() {
            f.write_str("Line(default)")
        } else {
            f.write_str("Line(<redacted>)")
        }
    }
}

/// A session's identity (`user_sessions.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An inbound message as the channel delivered it.
#[derive(Clone, PartialEq)]
pub struct Inbound {
    /// Who sent it.
    pub from: Address,
    /// The line they texted: with `from`, which conversation the message belongs to.
    pub line: Line,
    /// The persona a first contact on the line is assigned (the caller's routing decides it);
    /// `None` assigns [`TurnSettings::persona`]. A known conversation keeps its persona.
    pub persona: Option<String>,
    /// The text.
    pub body: String,
    /// The channel's id for the message (Twilio's `MessageSid`); a second begin with the same id
    /// for the same address is a [`BeginOutcome::Duplicate`].
    pub external_id: Option<String>,
    /// When the channel received it. The session timeout measures from here.
    pub received_at: DateTime<Utc>,
    /// The change to the person's opt-out the message asks for: `Some(true)` for STOP,
    /// `Some(false)` for START. The begin (or enqueue) that stores the message applies it in the
    /// same transaction, and only when the message is not a duplicate, so that a replayed
    /// keyword changes nothing and a turn started or queued for the message already sees it.
    pub opt_out: Option<bool>,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("from", &self.from)
            .field("line", &self.line)
            .field("persona", &self.persona)
            .field("body_len", &self.body.len())
            .field("external_id", &self.external_id)
            .field("received_at", &self.received_at)
            .field("opt_out", &self.opt_out)
            .finish()
    }
}

/// The soul's process names, for validating stored process state (the registry lives in the
/// engine's caller; the store only needs the names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Processes {
    /// Every registered process name.
    pub known: Vec<String>,
    /// Where a session without (valid) state starts.
    pub initial: String,
}

impl Processes {
    /// The registered names and the initial one (which counts as registered).
    pub fn new(
        initial: impl Into<String>,
        known: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let initial = initial.into();
        let mut known: Vec<String> = known.into_iter().map(Into::into).collect();
        if !known.contains(&initial) {
            known.push(initial.clone());
        }
        Processes { known, initial }
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.known.iter().any(|known| known == name)
    }
}

/// [`TurnSettings::pending_limit`] unless set: a soul schedules a check-in or two, and a person
/// who sends twenty messages while one turn runs is not waiting for an answer to each.
pub const DEFAULT_PENDING_LIMIT: u32 = 20;

/// A soul's process names, for a conversation assigned to it ([`TurnSettings::souls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoulProcesses {
    /// Its registered process names and its initial one.
    pub processes: Processes,
    /// Its subprocess names.
    pub subprocesses: Vec<String>,
}

/// How turns are run: the same for begin and commit (a commit may start the next turn).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSettings {
    /// The persona assigned to a number seen for the first time (unless its message names one,
    /// [`Inbound::persona`]), and the default soul: the one whose processes a conversation of
    /// a persona not in [`souls`](Self::souls) runs.
    pub persona: String,
    /// The registered process names.
    pub processes: Processes,
    /// The soul's subprocess names: a turn loads their process memories too
    /// ([`TurnContext::subprocess_memories`]), since they run after every turn whatever the
    /// current process is. None of them may be a main process name.
    pub subprocesses: Vec<String>,
    /// The seed's inactivity timeout: a user message arriving this long after the previous one
    /// starts a new session (process memories, process state and snapshot are cleared).
    pub session_timeout: Duration,
    /// How long a turn's lease lasts; a worker that has not committed by then is presumed dead.
    pub lease_for: Duration,
    /// How long a commit's replies are claimed for the sender that committed them: nobody else
    /// sends them before then, and after it any process may claim them
    /// ([`crate::Store::claim_pending_deliveries`]). The gateway's `OUTBOX_RETRY_AFTER`.
    pub reply_claim_for: Duration,
    /// How many of the latest history messages a turn loads (when it has no snapshot, see
    /// [`TurnContext::history`]); 0 loads all.
    pub history_limit: u32,
    /// Load only this region's history (`"default"` is the unregioned conversation).
    pub history_region: Option<String>,
    /// At most how many of the session's pending events and of the messages waiting behind the
    /// turn a turn loads ([`TurnContext::pending_events`], [`TurnContext::waiting`]): the soonest
    /// events and the oldest messages; 0 loads none.
    pub pending_limit: u32,
    /// The other deployed souls, by persona: a turn of a conversation assigned to one of them
    /// is started (its process state validated, its subprocesses' memories loaded) with its
    /// processes instead of `processes` and `subprocesses`. Empty for a one-soul deployment.
    pub souls: BTreeMap<String, SoulProcesses>,
}

impl TurnSettings {
    /// The seed's defaults: one-hour timeout, the last 20 messages of every region, and a
    /// two-minute lease; no subprocesses; replies claimed for a minute; at most 20 pending
    /// events and 20 waiting messages.
    pub fn new(persona: impl Into<String>, processes: Processes) -> Self {
        TurnSettings {
            persona: persona.into(),
            processes,
            subprocesses: Vec::new(),
            session_timeout: Duration::hours(1),
            lease_for: Duration::minutes(2),
            reply_claim_for: Duration::minutes(1),
            history_limit: 20,
            history_region: None,
            pending_limit: DEFAULT_PENDING_LIMIT,
            souls: BTreeMap::new(),
        }
    }

    /// The settings of a conversation assigned to `persona`: its soul's processes when it is
    /// one of [`souls`](Self::souls), else these (the default soul's).
    pub fn for_persona(&self, persona: &str) -> std::borrow::Cow<'_, TurnSettings> {
        match self.souls.get(persona) {
            Some(soul) if persona != self.persona => {
                let mut settings = self.clone();
                settings.persona = persona.to_owned();
                settings.processes = soul.processes.clone();
                settings.subprocesses = soul.subprocesses.clone();
                std::borrow::Cow::Owned(settings)
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }
}

impl TurnSettings {
    /// Rejects settings no store can honour.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.lease_for <= Duration::zero()
            || self.session_timeout <= Duration::zero()
            || self.reply_claim_for <= Duration::zero()
        {
            return Err(crate::StoreError::Invalid(
                "lease_for, session_timeout and reply_claim_for must be positive".to_owned(),
            ));
        }
        if self.processes.initial.is_empty() {
            return Err(crate::StoreError::Invalid(
                "the initial process has no name".to_owned(),
            ));
        }
        // A name in both lists would load one process's memories into two places of a turn.
        let souls = std::iter::once((&self.processes, &self.subprocesses)).chain(
            self.souls
                .values()
                .map(|soul| (&soul.processes, &soul.subprocesses)),
        );
        for (processes, subprocesses) in souls {
            if processes.initial.is_empty() {
                return Err(crate::StoreError::Invalid(
                    "the initial process has no name".to_owned(),
                ));
            }
            if let Some(name) = subprocesses.iter().find(|name| processes.contains(name)) {
                return Err(crate::StoreError::Invalid(format!(
                    "{name:?} is named both as a process and as a subprocess"
                )));
            }
        }
        Ok(())
    }
}

/// A person's session (`user_sessions`).
#[derive(Clone, PartialEq, Deserialize)]
pub struct Session {
    /// Identity.
    pub id: SessionId,
    /// The person's address.
    pub address: Address,
    /// The line of the conversation: where the person texted, and where replies come from.
    #[serde(default)]
    pub line: Line,
    /// The persona assigned at first contact.
    pub persona: String,
    /// First message ever.
    pub first_contact_at: DateTime<Utc>,
    /// Last turn started.
    pub last_active_at: DateTime<Utc>,
    /// Messages in the conversation: user messages and replies.
    pub total_messages: i64,
    /// The seed's metadata (`session_number`, `last_session_started_at`, anything else).
    pub metadata: serde_json::Value,
    /// Whether the person opted out of messages.
    pub opted_out: bool,
    /// Bumped whenever a turn starts; see [`SubprocessCommit`].
    pub version: i64,
}

impl Session {
    /// The seed's session number (1 when missing or malformed).
    pub fn session_number(&self) -> i64 {
        session_number(&self.metadata)
    }

    /// When the current session started, if recorded.
    pub fn last_session_started_at(&self) -> Option<DateTime<Utc>> {
        self.metadata
            .get("last_session_started_at")
            .and_then(serde_json::Value::as_str)
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc))
    }
}

/// The seed's `coerceSessionNumber`: a positive number (or digit string), else 1.
pub(crate) fn session_number(metadata: &serde_json::Value) -> i64 {
    match metadata.get("session_number") {
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            // Truncation is the point: 2.7 sessions are session 2, as `floor` in the seed.
            #[allow(clippy::cast_possible_truncation)]
            Some(v) if (1.0..9.0e18).contains(&v) => v.floor() as i64,
            _ => 1,
        },
        Some(serde_json::Value::String(s))
            if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<i64>().map_or(1, |v| v.max(1))
        }
        _ => 1,
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("line", &self.line)
            .field("persona", &self.persona)
            .field("total_messages", &self.total_messages)
            .field("session_number", &self.session_number())
            .field("opted_out", &self.opted_out)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A stored inbound message waiting for, or running, its turn: a person's message or a due
/// scheduled event ([`QueuedInbound::kind`]).
#[derive(Clone, PartialEq, Deserialize)]
pub struct QueuedInbound {
    /// Its id (`inbound_messages.id`).
    pub id: Uuid,
    /// The channel's id; `event:<event id>` for an event.
    pub external_id: Option<String>,
    /// The text (empty for an event: what it says is in its payload).
    pub body: String,
    /// When the channel received it; for an event, when it came due.
    pub received_at: DateTime<Utc>,
    /// A person's message or a scheduled event.
    #[serde(default)]
    pub kind: InboundKind,
}

impl fmt::Debug for QueuedInbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedInbound")
            .field("id", &self.id)
            .field("external_id", &self.external_id)
            .field("body_len", &self.body.len())
            .field("received_at", &self.received_at)
            .field("kind", &self.kind)
            .finish()
    }
}

/// What a turn answers.
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundKind {
    /// A person's message: stored in the conversation as the user message, counted, and
    /// measured by the session timeout.
    #[default]
    Message,
    /// A scheduled event that came due ([`crate::Store::begin_event_turn`]): not stored in the
    /// conversation, not counted, and invisible to the session timeout.
    Event {
        /// The scheduled event's id ([`ScheduledEvent::id`]).
        event_id: Uuid,
        /// Its session-unique key ([`NewEvent::key`]).
        key: String,
        /// Its kind ([`NewEvent::kind`]).
        kind: String,
        /// Its payload ([`NewEvent::payload`]).
        payload: serde_json::Value,
    },
}

impl fmt::Debug for InboundKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundKind::Message => f.write_str("Message"),
            // The payload may quote the person.
            InboundKind::Event {
                event_id,
                key,
                kind,
                ..
            } => f
                .debug_struct("Event")
                .field("event_id", event_id)
                .field("key", key)
                .field("kind", kind)
                .finish_non_exhaustive(),
        }
    }
}

/// The right to run a session's turn, until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Lease {
    /// Proves the holder at commit.
    pub token: Uuid,
    /// After this another worker may take the session over.
    pub expires_at: DateTime<Utc>,
}

/// The current mental process and its parameters (`mental_process_state`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessState {
    /// The process name.
    pub name: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// How many times it has run since it was entered (the engine's count).
    #[serde(default)]
    pub invocation_count: u32,
    /// The process before it.
    #[serde(default)]
    pub previous: Option<String>,
}

impl ProcessState {
    /// A process just entered: no runs yet, no predecessor.
    pub fn new(name: impl Into<String>, params: serde_json::Value) -> Self {
        ProcessState {
            name: name.into(),
            params,
            invocation_count: 0,
            previous: None,
        }
    }
}

impl fmt::Debug for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameters may quote the person; their keys say enough.
        f.debug_struct("ProcessState")
            .field("name", &self.name)
            .field("params", &keys(&self.params))
            .field("invocation_count", &self.invocation_count)
            .field("previous", &self.previous)
            .finish()
    }
}

fn keys(value: &serde_json::Value) -> Vec<&str> {
    value
        .as_object()
        .map(|map| map.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Everything a turn needs, loaded by the round trip that started it.
///
/// `Debug` shows memory keys, not values: they hold what the person told the soul.
#[derive(Clone)]
pub struct TurnContext {
    /// The session, after the timeout was applied and the turn started.
    pub session: Session,
    /// The message this turn answers (already stored: the last user message of `history` when
    /// that is loaded).
    pub inbound: QueuedInbound,
    /// This worker's lease.
    pub lease: Lease,
    /// The session's first turn: none started in it before (it was created by this begin, or
    /// by the [`crate::Store::enqueue_turn`] of the message this turn answers).
    pub new_session: bool,
    /// The timeout elapsed: a new session number began and ephemeral state was cleared.
    pub session_reset: bool,
    /// The turn was started before by a worker whose lease expired; this is a re-run.
    pub resumed: bool,
    /// How many times this message's turn has been started, this start included: 1, and one
    /// more at each re-run ([`resumed`](Self::resumed)). Stored with the message, so the count
    /// survives the workers that died running it; a caller gives a turn up past its bound.
    pub attempt: u32,
    /// The validated process state (the initial process with empty params when none is stored).
    pub process: ProcessState,
    /// The stored process name that was not registered and was corrected to the initial one.
    pub corrected_from: Option<String>,
    /// Every soul memory of the session, by key.
    pub soul_memories: serde_json::Map<String, serde_json::Value>,
    /// The current process's memories, by key.
    pub process_memories: serde_json::Map<String, serde_json::Value>,
    /// The memories of the subprocesses named in [`TurnSettings::subprocesses`], by process and
    /// key; a subprocess with no memory stored is absent.
    pub subprocess_memories: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The latest messages (limit and region per [`TurnSettings`]), oldest first, to rebuild the
    /// working memory from: loaded only when there is no readable `snapshot` (empty otherwise;
    /// [`crate::Store::history`] reads them at any time).
    pub history: Vec<Memory>,
    /// The latest working-memory snapshot, if one is stored and readable.
    pub snapshot: Option<WorkingMemory>,
    /// The session's scheduled events, soonest first (at most [`TurnSettings::pending_limit`]):
    /// what a process may move or cancel. An event this turn answers is not among them (it was
    /// completed when its turn was queued).
    pub pending_events: Vec<PendingEvent>,
    /// The messages (and due events) stored behind the one this turn answers and waiting for
    /// their own turns, oldest first (at most [`TurnSettings::pending_limit`]), as they stood when
    /// the turn started.
    pub waiting: Vec<QueuedInbound>,
    /// A snapshot was stored but did not parse, and the answer came without the history (sent
    /// only without a snapshot): the store loads it before handing the turn out.
    pub(crate) history_missing: bool,
}

impl fmt::Debug for TurnContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnContext")
            .field("session", &self.session)
            .field("inbound", &self.inbound)
            .field("lease", &self.lease)
            .field("new_session", &self.new_session)
            .field("session_reset", &self.session_reset)
            .field("resumed", &self.resumed)
            .field("attempt", &self.attempt)
            .field("process", &self.process)
            .field("corrected_from", &self.corrected_from)
            .field(
                "soul_memories",
                &self.soul_memories.keys().collect::<Vec<_>>(),
            )
            .field(
                "process_memories",
                &self.process_memories.keys().collect::<Vec<_>>(),
            )
            .field(
                "subprocess_memories",
                &self
                    .subprocess_memories
                    .iter()
                    .map(|(process, memory)| (process, memory.keys().collect::<Vec<_>>()))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("history", &self.history)
            .field("snapshot", &self.snapshot)
            .field("pending_events", &self.pending_events)
            .field("waiting", &self.waiting)
            .field("history_missing", &self.history_missing)
            .finish()
    }
}

impl TurnContext {
    /// The session version this turn runs at, for [`SubprocessCommit::version`].
    pub fn version(&self) -> i64 {
        self.session.version
    }
}

/// A scheduled event not yet fired, as a turn sees it ([`TurnContext::pending_events`]).
#[derive(Clone, PartialEq, Deserialize)]
pub struct PendingEvent {
    /// Identity ([`ScheduledEvent::id`]).
    pub id: Uuid,
    /// The session-unique key ([`NewEvent::key`]): scheduling it again moves this event.
    pub key: String,
    /// What kind of event.
    pub kind: String,
    /// Data for the handler, as scheduled.
    pub payload: serde_json::Value,
    /// When it comes due.
    pub due_at: DateTime<Utc>,
}

impl fmt::Debug for PendingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may quote the person.
        f.debug_struct("PendingEvent")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("due_at", &self.due_at)
            .finish_non_exhaustive()
    }
}

/// What [`crate::Store::begin_turn`] decided.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BeginOutcome {
    /// This external id was stored before; nothing changed.
    Duplicate {
        /// The stored inbound message.
        inbound_id: Uuid,
    },
    /// Another worker holds the session's lease; the message is stored and that worker runs
    /// it when it commits (or a takeover does, if it dies).
    Queued {
        /// The stored inbound message.
        inbound_id: Uuid,
    },
    /// This worker holds the lease: run the turn, then commit it.
    Started(Box<TurnContext>),
    /// Stored by [`crate::Store::enqueue_turn`] and no worker holds the session: nobody starts
    /// the message until the caller (or a sweeper) calls [`crate::Store::resume_turn`].
    Waiting {
        /// The stored inbound message.
        inbound_id: Uuid,
        /// Its session, to resume.
        session: SessionId,
    },
}

/// What [`crate::Store::begin_event_turn`] decided.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EventOutcome {
    /// This event was already fired (its turn ran, runs or waits); nothing changed.
    Duplicate {
        /// The stored inbound row of its turn.
        inbound_id: Uuid,
    },
    /// Stored in the session's queue behind the running turn; the event is completed.
    Queued {
        /// The stored inbound row.
        inbound_id: Uuid,
    },
    /// This worker holds the lease: run the turn, then commit it. The event is completed.
    Started(Box<TurnContext>),
    /// The person opted out: the event was completed without a turn.
    OptedOut,
    /// The event is no longer stored as claimed (cancelled, rescheduled to another time, or its
    /// session erased); nothing changed. A rescheduled event fires at its new time.
    Gone,
}

/// What [`crate::Store::erase_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Erasure {
    /// Nothing is stored under the address; nothing changed.
    Unknown,
    /// Everything stored about the person was deleted. When they had opted out,
    /// `opt_out_kept` is true: their session row is kept with nothing in it but the address and
    /// the time they opted out (and a fresh id), so that nothing is sent to them again and a
    /// message from them later is still a first contact, unanswered until they opt back in.
    Erased {
        /// Whether the opt-out record was kept.
        opt_out_kept: bool,
    },
    /// Nothing was deleted: a turn of the person's is running (a worker holds the session's
    /// lease until `lease_expires_at`). Erasing under it would let its commit, its replies and
    /// its subprocesses write again what was erased, or send what was meant to go.
    TurnRunning {
        /// When the lease ends, unless the turn renews it or ends first.
        lease_expires_at: DateTime<Utc>,
    },
}

/// One change to a keyed memory; for one key the last change in a list wins.
#[derive(Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum MemoryChange {
    /// Insert or replace.
    Set {
        /// The key.
        key: String,
        /// The new value.
        value: serde_json::Value,
    },
    /// Delete (a missing key is not an error).
    Remove {
        /// The key.
        key: String,
    },
}

impl MemoryChange {
    pub(crate) fn key(&self) -> &str {
        match self {
            MemoryChange::Set { key, .. } | MemoryChange::Remove { key } => key,
        }
    }
}

impl fmt::Debug for MemoryChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryChange::Set { key, .. } => write!(f, "Set({key:?})"),
            MemoryChange::Remove { key } => write!(f, "Remove({key:?})"),
        }
    }
}

/// A change to one process's memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessMemoryChange {
    /// The process.
    pub process: String,
    /// The change.
    #[serde(flatten)]
    pub change: MemoryChange,
}

/// An event to fire later (a check-in), unique per session by `key`: scheduling a key again
/// replaces it.
#[derive(Clone, PartialEq, Serialize)]
pub struct NewEvent {
    /// The session-unique key.
    pub key: String,
    /// What kind of event.
    pub kind: String,
    /// Free-form data for the handler.
    pub payload: serde_json::Value,
    /// When it becomes due.
    pub due_at: DateTime<Utc>,
}

impl fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEvent")
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("due_at", &self.due_at)
            .finish_non_exhaustive()
    }
}

/// State changes shared by a turn's commit and a subprocess commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changes {
    /// Memories appended to the stored conversation without being sent (a summary, a note).
    pub memories: Vec<Memory>,
    /// Soul memory changes (kept across sessions).
    pub soul_memory: Vec<MemoryChange>,
    /// Process memory changes (cleared by the session timeout).
    pub process_memory: Vec<ProcessMemoryChange>,
    /// The new process state; an unregistered name is stored as the initial process.
    pub process_state: Option<ProcessState>,
    /// The new working-memory snapshot (only the latest is kept).
    #[serde(serialize_with = "serialize_snapshot")]
    pub snapshot: Option<WorkingMemory>,
    /// Events to schedule (or reschedule, by key).
    pub schedule: Vec<NewEvent>,
    /// Keys of events to cancel.
    pub cancel_events: Vec<String>,
}

fn serialize_snapshot<S: serde::Serializer>(
    snapshot: &Option<WorkingMemory>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match snapshot {
        Some(memory) => memory.to_json().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// A turn's outcome, committed with the lease that began it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnCommit {
    /// The session.
    pub session_id: SessionId,
    /// The lease from [`TurnContext::lease`].
    pub lease_token: Uuid,
    /// Replies: stored in the conversation (as assistant memories) and as outbound messages
    /// pending delivery, whose ids are the memories' ids.
    pub replies: Vec<Memory>,
    /// Everything else the turn changed.
    pub changes: Changes,
    /// The turn's record, stored by the commit in the turn log (see [`crate::turn_log`]); its
    /// reply ids are the commit's own, whatever the record says.
    pub record: TurnRecord,
}

impl TurnCommit {
    /// A commit with no changes yet, for `context`'s turn.
    pub fn new(context: &TurnContext) -> Self {
        TurnCommit {
            session_id: context.session.id,
            lease_token: context.lease.token,
            replies: Vec::new(),
            changes: Changes::default(),
            record: TurnRecord::default(),
        }
    }
}

/// What sending a session's replies needs to know when earlier ones may still be pending, read
/// (and claimed) in one call: [`crate::Store::claim_session_outbox`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SessionOutbox {
    /// The person opted out: nothing may be sent.
    pub opted_out: bool,
    /// The session's replies still pending up to the one asked about, oldest first.
    pub pending: Vec<OutboundMessage>,
    /// The ids of those this call claimed (their claim had expired): the caller alone may send
    /// them now. The others are claimed by another sender, or by the caller already.
    pub claimed: Vec<Uuid>,
}

/// A reply to deliver, as stored in the outbox.
#[derive(Clone, PartialEq, Deserialize)]
pub struct OutboundMessage {
    /// Its id (the reply memory's id).
    pub id: Uuid,
    /// The session.
    pub session_id: SessionId,
    /// Where it goes.
    pub address: Address,
    /// The line it goes out from (its conversation's).
    #[serde(default)]
    pub line: Line,
    /// The text.
    pub body: String,
    /// Where delivery stands.
    pub status: DeliveryStatus,
    /// The provider's id (Twilio's `MessageSid`) once accepted.
    pub provider_id: Option<String>,
    /// When the commit stored it.
    pub created_at: DateTime<Utc>,
}

impl fmt::Debug for OutboundMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundMessage")
            .field("id", &self.id)
            .field("session_id", &self.session_id)
            .field("body_len", &self.body.len())
            .field("status", &self.status)
            .field("provider_id", &self.provider_id)
            .finish_non_exhaustive()
    }
}

/// What a commit did.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// The ids of the stored outbound messages, in reply order.
    pub outbound: Vec<Uuid>,
    /// The session's next waiting message, already started under a fresh lease: run it next.
    pub next: Option<Box<TurnContext>>,
    /// The session's outbox as the commit found it, so that sending these replies need not ask.
    pub outbox: OutboxAtCommit,
}

/// What sending a commit's replies needs to know, read by the commit itself under the session's
/// lock: whether the person opted out, and whether replies of earlier commits were still pending
/// (to be sent, or waited for, first); and until when the commit claimed its replies for their
/// sender. An earlier reply settled by then stays settled, so "none pending" holds for as long as
/// the replies wait; an opt-out may come later and is looked for again only where the send has to
/// ask anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxAtCommit {
    /// The person had opted out: nothing may be sent.
    pub opted_out: bool,
    /// Replies stored by earlier commits of the session were still pending.
    pub earlier_pending: bool,
    /// The commit's replies are the caller's to send until then (the commit's `now` plus
    /// [`TurnSettings::reply_claim_for`]); afterwards any process may claim them.
    pub claimed_until: DateTime<Utc>,
}

/// Changes made by subprocesses after the turn's commit, applied only if no newer turn began.
#[derive(Debug, Clone, PartialEq)]
pub struct SubprocessCommit {
    /// The session.
    pub session_id: SessionId,
    /// [`TurnContext::version`] of the turn the subprocesses ran after.
    pub version: i64,
    /// The message that turn answered ([`TurnContext::inbound`]), which holds its record.
    pub inbound_id: Uuid,
    /// The changes.
    pub changes: Changes,
    /// Their part of the turn's record, added to it by the commit when it applies.
    pub record: SubprocessRecord,
}

/// Whether a subprocess commit was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubprocessOutcome {
    /// Applied.
    Applied,
    /// A newer turn began meanwhile (or the session is gone); nothing was changed.
    Stale,
}

/// Delivery status of an outbound message. Statuses only move forward:
/// pending → accepted → sent → one of delivered, undelivered, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Stored by the commit, not yet handed to the provider.
    Pending,
    /// The provider accepted it.
    Accepted,
    /// The provider sent it to the carrier.
    Sent,
    /// The carrier delivered it.
    Delivered,
    /// The carrier could not deliver it.
    Undelivered,
    /// Sending failed.
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Accepted => "accepted",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => DeliveryStatus::Pending,
            "accepted" => DeliveryStatus::Accepted,
            "sent" => DeliveryStatus::Sent,
            "delivered" => DeliveryStatus::Delivered,
            "undelivered" => DeliveryStatus::Undelivered,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }

    /// Position in the forward-only order; the three final statuses share the last place.
    pub fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Pending => 0,
            DeliveryStatus::Accepted => 1,
            DeliveryStatus::Sent => 2,
            DeliveryStatus::Delivered | DeliveryStatus::Undelivered | DeliveryStatus::Failed => 3,
        }
    }
}

/// Which outbound message a delivery update is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboundRef {
    /// By our id (after sending).
    Id(Uuid),
    /// By the provider's id (status callbacks).
    ProviderId(String),
}

/// A delivery status report.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryUpdate {
    /// The message.
    pub target: OutboundRef,
    /// Its new status; ignored unless it is further along than the stored one.
    pub status: DeliveryStatus,
    /// The provider's id, to record (with [`OutboundRef::Id`]).
    pub provider_id: Option<String>,
    /// The provider's error, if any.
    pub error: Option<String>,
    /// When the report came.
    pub at: DateTime<Utc>,
}

/// A due event, claimed for a while by [`crate::Store::claim_due_events`].
#[derive(Clone, PartialEq, Deserialize)]
pub struct ScheduledEvent {
    /// Identity.
    pub id: Uuid,
    /// The session.
    pub session_id: SessionId,
    /// The person's address.
    pub address: Address,
    /// The session-unique key.
    pub key: String,
    /// What kind of event.
    pub kind: String,
    /// Data for the handler.
    pub payload: serde_json::Value,
    /// When it became due.
    pub due_at: DateTime<Utc>,
}

impl fmt::Debug for ScheduledEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledEvent")
            .field("id", &self.id)
            .field("session_id", &self.session_id)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("due_at", &self.due_at)
            .finish_non_exhaustive()
    }
}
