//! The turn log: one record per turn, written by the commit that stores the turn, and the state
//! a rewind restores from it.
//!
//! A record keeps change sets, not states: for every key, process state, scheduled event and
//! working-memory snapshot a turn changed, the value before and (for the memories and events)
//! after. The value before is what undoing the turn writes back, so that the state after any
//! turn can be rebuilt from the current state by undoing the later turns, newest first
//! ([`rewind`]). The working memory is undone by a delta against the snapshot after the turn:
//! the runs of memories the two share, by position, and the memories only the earlier one held.
//!
//! Stored records use short field names (see `docs/persistence.md`): a record is kept per turn,
//! and its size is a cost of every turn.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::types::{
    Changes, DeliveryStatus, MemoryChange, PendingEvent, ProcessState, Processes, QueuedInbound,
    SessionId, TurnContext,
};
use crate::{Result, Store, StoreError};

/// How much a turn's record keeps: the gateway's `TURN_LOG`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TurnLogLevel {
    /// Each step's name, kind, duration, tokens and answer, and the turn's changes: a few hundred
    /// bytes a turn.
    #[default]
    Compact,
    /// Also each step's request to the model and every raw answer (the repaired one's too), for
    /// development: kilobytes a turn.
    Full,
}

impl TurnLogLevel {
    /// Reads `compact` or `full`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "compact" => Some(TurnLogLevel::Compact),
            "full" => Some(TurnLogLevel::Full),
            _ => None,
        }
    }

    /// The setting's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnLogLevel::Compact => "compact",
            TurnLogLevel::Full => "full",
        }
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum TurnEnd {
    /// The engine answered and its changes were stored.
    #[default]
    Ok,
    /// The fallback reply was stored instead of the turn's outcome: the engine failed, or the
    /// store refused the outcome. `error` names the failure's kind, never its text.
    Fallback {
        /// The kind of failure (`process`, `unknown_process`, `run_now_limit`, or `store:` and
        /// the store error's kind).
        #[serde(rename = "e")]
        error: String,
    },
    /// The message's turn had been started too often without being stored: the fallback reply
    /// (or nothing) without the model.
    GivenUp,
    /// The person opted out: the message was stored and not answered.
    OptedOut,
}

/// One cognitive step of a turn.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The step's name.
    #[serde(rename = "n")]
    pub name: String,
    /// Whether the answer was asked for as JSON (a structured step).
    #[serde(rename = "j", default, skip_serializing_if = "is_false")]
    pub structured: bool,
    /// How long it took, in milliseconds.
    #[serde(rename = "ms", default, skip_serializing_if = "is_zero")]
    pub duration_ms: u64,
    /// Tokens: prompt and completion.
    #[serde(rename = "t", default)]
    pub tokens: [u64; 2],
    /// The answer the step's value came from: the text, or the structured answer's JSON. An
    /// answer that is the text of one of the turn's replies is stored once, with the reply
    /// (`ra`, the reply's place in `r`), and read back from it: empty when retention deleted the
    /// reply.
    #[serde(rename = "a", default)]
    pub answer: String,
    /// [`TurnLogLevel::Full`] only: the last request sent to the model and every raw answer.
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub full: Option<StepDetail>,
}

impl fmt::Debug for StepLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The answer may quote the person.
        f.debug_struct("StepLog")
            .field("name", &self.name)
            .field("structured", &self.structured)
            .field("duration_ms", &self.duration_ms)
            .field("tokens", &self.tokens)
            .field("answer_len", &self.answer.len())
            .field("full", &self.full.is_some())
            .finish()
    }
}

/// What [`TurnLogLevel::Full`] adds to a step.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDetail {
    /// The last request sent to the model (the repair prompt included, when there was one), in
    /// the engine's request form.
    pub request: Value,
    /// The model's answers in order: the first, and the repaired one when the first was
    /// unusable.
    pub answers: Vec<String>,
}

impl fmt::Debug for StepDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepDetail")
            .field("answers", &self.answers.len())
            .finish_non_exhaustive()
    }
}

/// A soul-memory key a turn changed: its value before and after (`None`: absent).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    /// The key.
    #[serde(rename = "k")]
    pub key: String,
    /// The value before the turn.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    pub before: Option<Value>,
    /// The value after it.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    pub after: Option<Value>,
}

impl fmt::Debug for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyChange")
            .field("key", &self.key)
            .field("before", &self.before.is_some())
            .field("after", &self.after.is_some())
            .finish()
    }
}

/// A process-memory key a turn changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessKeyChange {
    /// The process.
    #[serde(rename = "p")]
    pub process: String,
    /// The key and its values.
    #[serde(flatten)]
    pub change: KeyChange,
}

/// A scheduled event as a record keeps it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EventValue {
    /// What kind of event.
    #[serde(rename = "k")]
    pub kind: String,
    /// Its payload.
    #[serde(rename = "p")]
    pub payload: Value,
    /// When it comes due.
    #[serde(rename = "d")]
    pub due_at: DateTime<Utc>,
}

impl fmt::Debug for EventValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may quote the person.
        f.debug_struct("EventValue")
            .field("kind", &self.kind)
            .field("due_at", &self.due_at)
            .finish_non_exhaustive()
    }
}

/// A scheduled event a turn scheduled, moved, cancelled or answered, by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "StoredEventChange", try_from = "StoredEventChange")]
pub struct EventChange {
    /// The session-unique key.
    pub key: String,
    /// The event before the turn (`None`: there was none).
    pub before: Option<EventValue>,
    /// The event after it (`None`: cancelled, answered, or never there).
    pub after: Option<EventValue>,
}

/// How an [`EventChange`] is stored: the event before without the kind and payload it shares
/// with the event after (a moved event, the usual change, is then one time more).
#[derive(Serialize, Deserialize)]
struct StoredEventChange {
    #[serde(rename = "k")]
    key: String,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    before: Option<StoredEventBefore>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    after: Option<EventValue>,
}

#[derive(Serialize, Deserialize)]
struct StoredEventBefore {
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "present")]
    payload: Option<Value>,
    #[serde(rename = "d")]
    due_at: DateTime<Utc>,
}

impl From<EventChange> for StoredEventChange {
    fn from(change: EventChange) -> Self {
        let before = change.before.map(|before| {
            let after = change.after.as_ref();
            StoredEventBefore {
                kind: (after.map(|a| &a.kind) != Some(&before.kind)).then_some(before.kind),
                payload: (after.map(|a| &a.payload) != Some(&before.payload))
                    .then_some(before.payload),
                due_at: before.due_at,
            }
        });
        StoredEventChange {
            key: change.key,
            before,
            after: change.after,
        }
    }
}

impl TryFrom<StoredEventChange> for EventChange {
    type Error = String;

    fn try_from(stored: StoredEventChange) -> std::result::Result<Self, String> {
        let before = match stored.before {
            None => None,
            Some(before) => {
                let after = stored.after.as_ref();
                Some(EventValue {
                    kind: before
                        .kind
                        .or_else(|| after.map(|a| a.kind.clone()))
                        .ok_or("an event change without the event's kind")?,
                    payload: before
                        .payload
                        .or_else(|| after.map(|a| a.payload.clone()))
                        .ok_or("an event change without the event's payload")?,
                    due_at: before.due_at,
                })
            }
        };
        Ok(EventChange {
            key: stored.key,
            before,
            after: stored.after,
        })
    }
}

/// The process state before and after a change of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessChange {
    /// Before (`None`: none was stored).
    pub before: Option<ProcessState>,
    /// After.
    pub after: ProcessState,
}

/// A piece of the working memory before a change, rebuilt from the one after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SnapshotPiece {
    /// The later snapshot's memories `[start, end)`, in order.
    Kept(usize, usize),
    /// A memory only the earlier snapshot held, in the snapshot's JSON form.
    Memory(Value),
}

/// How to rebuild the working-memory snapshot before a change from the one after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotUndo {
    /// No snapshot was stored before.
    Absent,
    /// The earlier snapshot: the later one's other fields, except those given here, and its
    /// memories pieced together.
    Delta {
        /// The top-level fields (the soul's name, the region order) that differed, as they were.
        #[serde(rename = "o", default, skip_serializing_if = "Map::is_empty")]
        other: Map<String, Value>,
        /// The memories, in order.
        #[serde(rename = "m")]
        memories: Vec<SnapshotPiece>,
    },
}

/// What one commit changed (a turn's, or its subprocesses'), with what undoes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeLog {
    /// Soul-memory keys.
    #[serde(rename = "sm", default, skip_serializing_if = "Vec::is_empty")]
    pub soul_memory: Vec<KeyChange>,
    /// Process-memory keys.
    #[serde(rename = "pm", default, skip_serializing_if = "Vec::is_empty")]
    pub process_memory: Vec<ProcessKeyChange>,
    /// The process state, when the commit stored one.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    #[serde(with = "compact_process_change")]
    pub process: Option<ProcessChange>,
    /// Scheduled events.
    #[serde(rename = "ev", default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventChange>,
    /// The working-memory snapshot before the commit, when it stored one.
    #[serde(rename = "wm", default, skip_serializing_if = "Option::is_none")]
    pub working_memory: Option<SnapshotUndo>,
    /// What the session timeout cleared before the turn, when the turn began a new session
    /// (the turn's own commit only): undoing the turn restores it.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<ClearedState>,
}

/// What the session timeout clears when a message begins a new session: every process's
/// memory, the process state and the working-memory snapshot, as they were
/// ([`crate::TurnContext::cleared`]).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClearedState {
    /// Every process's memory, by process and key.
    #[serde(rename = "pm", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub process_memories: BTreeMap<String, Map<String, Value>>,
    /// The process state (`None`: none was stored).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessState>,
    /// The working-memory snapshot, in its JSON form (`None`: none was stored).
    #[serde(rename = "wm", default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Value>,
}

impl fmt::Debug for ClearedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClearedState")
            .field(
                "process_memories",
                &self
                    .process_memories
                    .iter()
                    .map(|(p, m)| (p, m.keys().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
            .field("process", &self.process.as_ref().map(|p| &p.name))
            .field("snapshot", &self.snapshot.is_some())
            .finish()
    }
}

/// One turn's record, as the commit stores it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// How the turn ended.
    #[serde(rename = "end", default, skip_serializing_if = "is_ok")]
    pub end: TurnEnd,
    /// The turn began a new session (the session timeout cleared the process state, process
    /// memories and snapshot first): a rewind cannot go back across it.
    #[serde(rename = "reset", default, skip_serializing_if = "is_false")]
    pub session_reset: bool,
    /// The processes that ran, in order, when they were more than the one the turn started in.
    #[serde(rename = "run", default, skip_serializing_if = "Vec::is_empty")]
    pub processes_run: Vec<String>,
    /// The cognitive steps, in the order they finished.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepLog>,
    /// What the commit changed.
    #[serde(rename = "c", default)]
    pub changes: ChangeLog,
    /// The replies' ids (their outbound messages' ids), in order.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<Uuid>,
    /// What the subprocesses did, once their commit applied.
    #[serde(rename = "sub", default, skip_serializing_if = "Option::is_none")]
    pub subprocesses: Option<SubprocessRecord>,
}

/// The subprocesses' part of a turn's record, added by their commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubprocessRecord {
    /// The subprocesses that failed (their changes were dropped).
    #[serde(rename = "failed", default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Their cognitive steps.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepLog>,
    /// What their commit changed.
    #[serde(rename = "c", default)]
    pub changes: ChangeLog,
}

/// A reply of a logged turn and what became of it.
#[derive(Clone, PartialEq, Deserialize)]
pub struct LoggedReply {
    /// Its id.
    pub id: Uuid,
    /// The text.
    pub body: String,
    /// Where delivery stands.
    pub status: DeliveryStatus,
    /// The provider's error, if any.
    pub error: Option<String>,
}

impl fmt::Debug for LoggedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedReply")
            .field("id", &self.id)
            .field("body_len", &self.body.len())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Puts back into a stored record's steps the answers stored once as a reply's text (`ra`, the
/// reply's place in `r`; written by `wire::stored_record`), with `body_of` a reply's id. An
/// answer whose reply is gone stays empty.
pub(crate) fn restore_spoken_answers(record: &mut Value, body_of: impl Fn(&str) -> Option<String>) {
    let ids: Vec<String> = record
        .get("r")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let Some(steps) = record.get_mut("s").and_then(Value::as_array_mut) else {
        return;
    };
    for step in steps.iter_mut().filter_map(Value::as_object_mut) {
        let Some(place) = step.remove("ra").and_then(|place| place.as_u64()) else {
            continue;
        };
        let body = usize::try_from(place)
            .ok()
            .and_then(|place| ids.get(place))
            .and_then(|id| body_of(id));
        if let Some(body) = body {
            step.insert("a".to_owned(), Value::String(body));
        }
    }
}

/// A turn as [`Store::turn_log`] reads it: the record and what it points at.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoggedTurn {
    /// The turn's number in the conversation, from 1. After a rewind to turn N the next turn is
    /// N + 1 again: the rewound one keeps its number and [`rewound`](Self::rewound).
    pub turn: u32,
    /// When the turn was committed.
    pub committed_at: DateTime<Utc>,
    /// A rewind went back to before this turn: it is history, no longer part of the state.
    pub rewound: bool,
    /// The record.
    pub record: TurnRecord,
    /// What the turn perceived: the inbound message (or due event) it answered, which holds the
    /// record.
    pub perception: QueuedInbound,
    /// The replies, in order, with their delivery status (those retention left).
    pub replies: Vec<LoggedReply>,
}

/// A stored scheduled event, as [`SessionState`] holds it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Its id.
    pub id: Uuid,
    /// The session-unique key.
    pub key: String,
    /// The event.
    #[serde(flatten)]
    pub value: EventValue,
}

impl fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEvent")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("value", &self.value)
            .finish()
    }
}

/// A session's whole state between turns (what a rewind restores): [`Store::session_state`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The session's version ([`crate::Session::version`]).
    pub version: i64,
    /// Until when a running turn holds the session, if one does (or did: an expired lease).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The latest turn that is not rewound (0: none).
    pub turn: u32,
    /// The soul the conversation is assigned to ([`crate::Session::persona`]); a restore leaves
    /// it as it is.
    pub persona: String,
    /// Soul memory, by key.
    pub soul_memories: Map<String, Value>,
    /// Every process's memory, by process and key (a process with no key is absent).
    pub process_memories: BTreeMap<String, Map<String, Value>>,
    /// The stored process state.
    pub process: Option<ProcessState>,
    /// The working-memory snapshot, in its JSON form.
    pub snapshot: Option<Value>,
    /// The scheduled events, by key.
    pub events: Vec<StoredEvent>,
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("version", &self.version)
            .field("lease_expires_at", &self.lease_expires_at)
            .field("turn", &self.turn)
            .field("persona", &self.persona)
            .field(
                "soul_memories",
                &self.soul_memories.keys().collect::<Vec<_>>(),
            )
            .field(
                "process_memories",
                &self
                    .process_memories
                    .iter()
                    .map(|(p, m)| (p, m.keys().collect::<Vec<_>>()))
                    .collect::<Vec<_>>(),
            )
            .field("process", &self.process.as_ref().map(|p| &p.name))
            .field("snapshot", &self.snapshot.is_some())
            .field("events", &self.events)
            .finish()
    }
}

impl SessionState {
    /// The state a started turn runs on, as far as its context holds it: the soul memory, the
    /// current process's and the subprocesses' memories, the process state, the snapshot and the
    /// pending events (up to [`crate::TurnSettings::pending_limit`]).
    pub fn of_turn(context: &TurnContext) -> Self {
        let mut process_memories: BTreeMap<String, Map<String, Value>> =
            context.subprocess_memories.clone();
        if !context.process_memories.is_empty() {
            process_memories.insert(
                context.process.name.clone(),
                context.process_memories.clone(),
            );
        }
        SessionState {
            version: context.session.version,
            lease_expires_at: Some(context.lease.expires_at),
            turn: 0,
            persona: context.session.persona.clone(),
            soul_memories: context.soul_memories.clone(),
            process_memories,
            process: Some(context.process.clone()),
            snapshot: context
                .snapshot
                .as_ref()
                .map(soul_engine::WorkingMemory::to_json),
            events: context.pending_events.iter().map(stored_event).collect(),
        }
    }

    /// What committing `changes` makes of this state, and the change log that undoes it.
    /// `processes` corrects an unregistered process name as the store does.
    pub fn apply(&mut self, changes: &Changes, processes: &Processes) -> ChangeLog {
        let mut log = ChangeLog::default();
        for (key, change) in last_per_key(changes.soul_memory.iter().map(|c| (c.key(), c))) {
            let before = self.soul_memories.get(key).cloned();
            let after = set_value(change);
            set_key(&mut self.soul_memories, key, after.clone());
            if before != after {
                log.soul_memory.push(KeyChange {
                    key: key.to_owned(),
                    before,
                    after,
                });
            }
        }
        let process_changes = last_per_key(
            changes
                .process_memory
                .iter()
                .map(|c| ((c.process.as_str(), c.change.key()), &c.change)),
        );
        for ((process, key), change) in process_changes {
            let memory = self.process_memories.entry(process.to_owned()).or_default();
            let before = memory.get(key).cloned();
            let after = set_value(change);
            set_key(memory, key, after.clone());
            if memory.is_empty() {
                self.process_memories.remove(process);
            }
            if before != after {
                log.process_memory.push(ProcessKeyChange {
                    process: process.to_owned(),
                    change: KeyChange {
                        key: key.to_owned(),
                        before,
                        after,
                    },
                });
            }
        }
        if let Some(state) = &changes.process_state {
            let mut after = state.clone();
            if !processes.contains(&after.name) {
                after.name.clone_from(&processes.initial);
            }
            log.process = Some(ProcessChange {
                before: self.process.replace(after.clone()),
                after,
            });
        }
        if let Some(snapshot) = &changes.snapshot {
            let after = snapshot.to_json();
            log.working_memory = Some(match self.snapshot.replace(after.clone()) {
                None => SnapshotUndo::Absent,
                Some(before) => snapshot_undo(&before, &after),
            });
        }
        let mut events: BTreeMap<&str, Option<EventValue>> = BTreeMap::new();
        for event in &changes.schedule {
            events.insert(
                &event.key,
                Some(EventValue {
                    kind: event.kind.clone(),
                    payload: event.payload.clone(),
                    due_at: event.due_at,
                }),
            );
        }
        for key in &changes.cancel_events {
            events.insert(key, None);
        }
        for (key, after) in events {
            let position = self.events.iter().position(|e| e.key == key);
            let before = position.map(|i| self.events[i].value.clone());
            match (&after, position) {
                (Some(value), Some(i)) => self.events[i].value = value.clone(),
                (Some(value), None) => self.events.push(StoredEvent {
                    id: Uuid::new_v4(),
                    key: key.to_owned(),
                    value: value.clone(),
                }),
                (None, Some(i)) => {
                    self.events.remove(i);
                }
                (None, None) => {}
            }
            if before != after {
                log.events.push(EventChange {
                    key: key.to_owned(),
                    before,
                    after,
                });
            }
        }
        log
    }

    /// This state before the commit `log` records: every change undone, and what the session
    /// timeout cleared before it restored.
    pub fn undo(&mut self, log: &ChangeLog) -> Result<()> {
        self.undo_changes(log)?;
        if let Some(cleared) = &log.cleared {
            self.process_memories.clone_from(&cleared.process_memories);
            self.process.clone_from(&cleared.process);
            self.snapshot.clone_from(&cleared.snapshot);
        }
        Ok(())
    }

    /// This state before the commit `log` records, as the turn started on it: every change
    /// undone, what the session timeout cleared left cleared.
    fn undo_changes(&mut self, log: &ChangeLog) -> Result<()> {
        for change in log.soul_memory.iter().rev() {
            set_key(&mut self.soul_memories, &change.key, change.before.clone());
        }
        for ProcessKeyChange { process, change } in log.process_memory.iter().rev() {
            let memory = self.process_memories.entry(process.clone()).or_default();
            set_key(memory, &change.key, change.before.clone());
            if memory.is_empty() {
                self.process_memories.remove(process);
            }
        }
        if let Some(change) = &log.process {
            self.process.clone_from(&change.before);
        }
        for change in log.events.iter().rev() {
            let position = self.events.iter().position(|e| e.key == change.key);
            match (&change.before, position) {
                (Some(value), Some(i)) => self.events[i].value = value.clone(),
                (Some(value), None) => self.events.push(StoredEvent {
                    id: Uuid::new_v4(),
                    key: change.key.clone(),
                    value: value.clone(),
                }),
                (None, Some(i)) => {
                    self.events.remove(i);
                }
                (None, None) => {}
            }
        }
        match &log.working_memory {
            None => {}
            Some(SnapshotUndo::Absent) => self.snapshot = None,
            Some(SnapshotUndo::Delta { other, memories }) => {
                let later = self.snapshot.take().ok_or_else(|| {
                    StoreError::Corrupt("a snapshot delta without a later snapshot".to_owned())
                })?;
                self.snapshot = Some(rebuilt_snapshot(later, other, memories)?);
            }
        }
        Ok(())
    }
}

/// The event a started turn answers, as it was stored before its begin completed it: what
/// undoing that turn schedules again. `None` for a person's message.
pub fn answered_event(context: &TurnContext) -> Option<EventChange> {
    answered_event_of(&context.inbound)
}

/// [`answered_event`] of the message or event `inbound` (as a turn or the log holds it).
pub fn answered_event_of(inbound: &QueuedInbound) -> Option<EventChange> {
    match &inbound.kind {
        crate::InboundKind::Message => None,
        crate::InboundKind::Event {
            key, kind, payload, ..
        } => Some(EventChange {
            key: key.clone(),
            before: Some(EventValue {
                kind: kind.clone(),
                payload: payload.clone(),
                due_at: inbound.received_at,
            }),
            after: None,
        }),
    }
}

/// What [`rewind`] (and [`Store::restore_session`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rewind {
    /// The state is what it was after the turn; `rewound` later turns were marked rewound.
    Rewound {
        /// How many turns were marked.
        rewound: u32,
    },
    /// Nothing changed: a turn of the person runs (a live lease until `lease_expires_at`).
    TurnRunning {
        /// When the lease ends, unless renewed.
        lease_expires_at: DateTime<Utc>,
    },
    /// Nothing changed: the session changed between reading its state and restoring it (a turn
    /// began, or a subprocess commit applied); read and try again.
    Changed,
    /// Nothing changed: no such session, or no such turn in its log (never run, rewound, or
    /// deleted by retention).
    UnknownTurn,
    /// Nothing changed: a later turn began a new session (the session timeout) and its record
    /// does not hold what that cleared (the turn was re-started after its worker stopped).
    AcrossSessionReset {
        /// That turn.
        turn: u32,
    },
}

/// The state to write back, for [`Store::restore_session`].
#[derive(Debug, Clone, PartialEq)]
pub struct Restore {
    /// The session.
    pub session: SessionId,
    /// The version the state was read at: the restore is refused ([`Rewind::Changed`]) if the
    /// session's version moved since.
    pub version: i64,
    /// The turn the state is the state after: later turns are marked rewound.
    pub after_turn: u32,
    /// The state (its `version`, `lease_expires_at` and `turn` are ignored).
    pub state: SessionState,
}

/// The state of `session` after turn `after_turn`, rebuilt from `current` and the records of
/// the turns after it (oldest first): every later commit undone, newest first. `Err` with its
/// number when a later turn began a new session without recording what that cleared (a turn
/// re-started after its worker stopped: the start that cleared it was the stopped worker's).
pub fn state_after(
    mut current: SessionState,
    later: &[LoggedTurn],
) -> Result<std::result::Result<SessionState, u32>> {
    for turn in later.iter().rev() {
        if turn.record.session_reset && turn.record.changes.cleared.is_none() {
            return Ok(Err(turn.turn));
        }
        if let Some(subprocesses) = &turn.record.subprocesses {
            current.undo(&subprocesses.changes)?;
        }
        current.undo(&turn.record.changes)?;
    }
    Ok(Ok(current))
}

/// The state the first of `turns` (oldest first) started on, rebuilt from `current`: the later
/// turns undone as [`state_after`] does, then that turn's own commits, leaving cleared what the
/// session timeout cleared when the turn began a new session and completed the event it answers
/// (its begin completed it).
pub fn state_before(
    current: SessionState,
    turns: &[LoggedTurn],
) -> Result<std::result::Result<SessionState, u32>> {
    let Some((turn, later)) = turns.split_first() else {
        return Ok(Ok(current));
    };
    let mut state = match state_after(current, later)? {
        Ok(state) => state,
        Err(reset) => return Ok(Err(reset)),
    };
    if let Some(subprocesses) = &turn.record.subprocesses {
        state.undo(&subprocesses.changes)?;
    }
    state.undo_changes(&turn.record.changes)?;
    if let Some(answered) = answered_event_of(&turn.perception) {
        state.events.retain(|event| event.key != answered.key);
    }
    Ok(Ok(state))
}

/// Rewinds `session` to after turn `after_turn`: its process state, process memories, soul
/// memory, working-memory snapshot and scheduled events become what they were then, the later
/// turns stay in the log marked rewound, and the next message continues from there. Refused
/// while a turn of the person runs. Two reads and one write, the write refused if anything
/// changed in between.
pub async fn rewind(
    store: &dyn Store,
    session: SessionId,
    after_turn: u32,
    now: DateTime<Utc>,
) -> Result<Rewind> {
    let Some(current) = store.session_state(session).await? else {
        return Ok(Rewind::UnknownTurn);
    };
    if let Some(until) = current.lease_expires_at.filter(|until| *until > now) {
        return Ok(Rewind::TurnRunning {
            lease_expires_at: until,
        });
    }
    if after_turn == 0 || after_turn > current.turn {
        return Ok(Rewind::UnknownTurn);
    }
    let later: Vec<LoggedTurn> = store
        .turn_log(session, after_turn, None)
        .await?
        .into_iter()
        .filter(|turn| !turn.rewound)
        .collect();
    if later.first().map(|turn| turn.turn) != Some(after_turn) {
        return Ok(Rewind::UnknownTurn);
    }
    let version = current.version;
    let state = match state_after(current, &later[1..])? {
        Ok(state) => state,
        Err(turn) => return Ok(Rewind::AcrossSessionReset { turn }),
    };
    store
        .restore_session(
            &Restore {
                session,
                version,
                after_turn,
                state,
            },
            now,
        )
        .await
}

fn stored_event(event: &PendingEvent) -> StoredEvent {
    StoredEvent {
        id: event.id,
        key: event.key.clone(),
        value: EventValue {
            kind: event.kind.clone(),
            payload: event.payload.clone(),
            due_at: event.due_at,
        },
    }
}

/// The undo of replacing snapshot `before` by `after`: the runs of memories `after` still holds
/// unchanged (by id and value, at consecutive positions), and the others whole.
fn snapshot_undo(before: &Value, after: &Value) -> SnapshotUndo {
    let memories = |snapshot: &Value| -> Vec<Value> {
        snapshot
            .get("memories")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let earlier = memories(before);
    let later = memories(after);
    let position: BTreeMap<&str, usize> = later
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.get("id").and_then(Value::as_str).map(|id| (id, i)))
        .collect();
    let mut pieces: Vec<SnapshotPiece> = Vec::new();
    for memory in &earlier {
        let kept = memory
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| position.get(id).copied())
            .filter(|&i| later[i] == *memory);
        let Some(i) = kept else {
            pieces.push(SnapshotPiece::Memory(memory.clone()));
            continue;
        };
        match pieces.last_mut() {
            Some(SnapshotPiece::Kept(_, end)) if *end == i => *end = i + 1,
            _ => pieces.push(SnapshotPiece::Kept(i, i + 1)),
        }
    }
    let mut other = Map::new();
    if let (Some(before), Some(after)) = (before.as_object(), after.as_object()) {
        for (key, value) in before {
            if key != "memories" && after.get(key) != Some(value) {
                other.insert(key.clone(), value.clone());
            }
        }
    }
    SnapshotUndo::Delta {
        other,
        memories: pieces,
    }
}

fn rebuilt_snapshot(
    later: Value,
    other: &Map<String, Value>,
    pieces: &[SnapshotPiece],
) -> Result<Value> {
    let Value::Object(mut snapshot) = later else {
        return Err(StoreError::Corrupt(
            "a snapshot that is not an object".to_owned(),
        ));
    };
    let later_memories = match snapshot.remove("memories") {
        Some(Value::Array(memories)) => memories,
        _ => Vec::new(),
    };
    let mut memories = Vec::new();
    for piece in pieces {
        match piece {
            SnapshotPiece::Kept(start, end) => {
                let run = later_memories.get(*start..*end).ok_or_else(|| {
                    StoreError::Corrupt("a snapshot delta beyond its snapshot".to_owned())
                })?;
                memories.extend_from_slice(run);
            }
            SnapshotPiece::Memory(memory) => memories.push(memory.clone()),
        }
    }
    for (key, value) in other {
        snapshot.insert(key.clone(), value.clone());
    }
    snapshot.insert("memories".to_owned(), Value::Array(memories));
    Ok(Value::Object(snapshot))
}

fn set_value(change: &MemoryChange) -> Option<Value> {
    match change {
        MemoryChange::Set { value, .. } => Some(value.clone()),
        MemoryChange::Remove { .. } => None,
    }
}

fn set_key(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        Some(value) => {
            map.insert(key.to_owned(), value);
        }
        None => {
            map.remove(key);
        }
    }
}

/// The last change per key wins, as the stores apply them.
fn last_per_key<'a, K: Ord>(
    changes: impl IntoIterator<Item = (K, &'a MemoryChange)>,
) -> BTreeMap<K, &'a MemoryChange> {
    changes.into_iter().collect()
}

/// A present JSON value, `null` included (a plain `Option<Value>` reads `null` as absent).
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference.
fn is_false(value: &bool) -> bool {
    !value
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_ok(end: &TurnEnd) -> bool {
    *end == TurnEnd::Ok
}

/// A process change as two arrays, `[name, params, invocation count, previous]` before and
/// after (`null` before: none was stored): a third of the size of the named form.
mod compact_process_change {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use super::ProcessChange;
    use crate::types::ProcessState;

    type Compact = (String, Value, u32, Option<String>);

    fn compact(state: &ProcessState) -> Compact {
        (
            state.name.clone(),
            state.params.clone(),
            state.invocation_count,
            state.previous.clone(),
        )
    }

    fn expanded((name, params, invocation_count, previous): Compact) -> ProcessState {
        ProcessState {
            name,
            params,
            invocation_count,
            previous,
        }
    }

    pub(super) fn serialize<S: Serializer>(
        change: &Option<ProcessChange>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        change
            .as_ref()
            .map(|c| (c.before.as_ref().map(compact), compact(&c.after)))
            .serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<ProcessChange>, D::Error> {
        let compact = Option::<(Option<Compact>, Compact)>::deserialize(deserializer)?;
        Ok(compact.map(|(before, after)| ProcessChange {
            before: before.map(expanded),
            after: expanded(after),
        }))
    }
}
