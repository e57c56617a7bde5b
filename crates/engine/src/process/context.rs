//! What a mental process receives ([`ProcessContext`]) and returns ([`Next`]).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::memory::{Memory, Role};
use crate::process::kv::{KeyValueMemory, MemoryError};
use crate::process::registry::MentalProcess;
use crate::process::reply::ReplyLimit;
use crate::step::{Mind, StepError};
use crate::working_memory::WorkingMemory;

/// Something the soul perceives: a person's message, or a scheduled event coming due.
///
/// The default integrator remembers it as OpenSouls does: `Bob Smith said: "…"` (the name, the
/// action, the text in quotes) when it has a name, the bare text when it has none (an SMS: no one
/// to name). A message has the user role; a scheduled event is the soul's own, internal
/// perception and has the assistant role. See [`to_memory`](Self::to_memory).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Perception {
    /// What kind of perception.
    pub kind: PerceptionKind,
    /// The text (a message body, or the event's content).
    pub content: String,
    /// Optional speaker name, as people read it (`Bob Smith`); what the model's `name` field
    /// gets is derived from it where the request is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the speaker did: `said` unless told otherwise (`wrote`, `poked`, ...).
    #[serde(default = "said")]
    pub action: String,
    /// Data that travels with it into working memory (an SMS's sid, ...).
    #[serde(default)]
    pub metadata: Value,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// The kinds of perception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PerceptionKind {
    /// A message from the person.
    Message,
    /// A scheduled event came due; `process`, if set, runs for this perception instead of the
    /// current process (once; the current process stays unless that run transitions), and reads
    /// `params` with [`ProcessContext::params`].
    Event {
        /// The event's id.
        id: EventId,
        /// The process to run for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<String>,
        /// What the event carries for that process (`null` when nothing).
        #[serde(default, skip_serializing_if = "Value::is_null")]
        params: Value,
    },
}

fn said() -> String {
    "said".to_owned()
}

impl Perception {
    /// A message perceived at `at`.
    pub fn message(content: impl Into<String>, at: DateTime<Utc>) -> Self {
        Perception {
            kind: PerceptionKind::Message,
            content: content.into(),
            name: None,
            action: said(),
            metadata: Value::Object(serde_json::Map::new()),
            at,
        }
    }

    /// The same perception, from `name` (`Bob Smith`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The same perception with another action than `said`.
    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = action.into();
        self
    }

    /// The memory the default integrator appends for this perception: `Name action: "text"`
    /// when it has a name, the text alone when not; the user role for a message, the assistant
    /// role for a scheduled event (as OpenSouls does for its internal perceptions: the soul
    /// prompted itself, the person said nothing); its metadata, and an event's id.
    pub fn to_memory(&self) -> Memory {
        let role = match self.kind {
            PerceptionKind::Message => Role::User,
            PerceptionKind::Event { .. } => Role::Assistant,
        };
        let content = match &self.name {
            Some(name) => format!("{name} {}: \"{}\"", self.action, self.content),
            None => self.content.clone(),
        };
        let mut memory = Memory::new(role, content, self.at);
        memory.name = self.name.clone();
        if self.metadata.is_object() {
            memory.metadata = self.metadata.clone();
        }
        if let PerceptionKind::Event { id, .. } = &self.kind {
            memory = memory.with_metadata("event_id", serde_json::json!(id));
        }
        memory
    }
}

impl fmt::Debug for Perception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Perception")
            .field("kind", &self.kind)
            .field(
                "content",
                &format_args!("<{} chars redacted>", self.content.chars().count()),
            )
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// A scheduled event's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

/// A perception to deliver later ("check in tomorrow at 9"), built with [`ScheduledEvent::new`]
/// and handed to [`ProcessContext::schedule_event`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    /// Its id, for cancelling.
    pub id: EventId,
    /// When it comes due.
    pub at: DateTime<Utc>,
    /// The process to run for it, or `None` for whichever is current then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The perception's text.
    pub content: String,
    /// Data for the perception: it becomes the perception's metadata, and so its memory's.
    #[serde(default)]
    pub metadata: Value,
    /// Params for `process`, which reads them with [`ProcessContext::params`] when the event
    /// fires (`null` when none).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

impl ScheduledEvent {
    /// An event perceived at `at` as `content`, by whichever process is current then; with a
    /// fresh id.
    pub fn new(at: DateTime<Utc>, content: impl Into<String>) -> Self {
        ScheduledEvent {
            id: EventId(Uuid::now_v7()),
            at,
            process: None,
            content: content.into(),
            metadata: Value::Object(serde_json::Map::new()),
            params: Value::Null,
        }
    }

    /// The same event, answered by `process` (once; see [`PerceptionKind::Event`]).
    pub fn for_process(mut self, process: MentalProcess) -> Self {
        self.process = Some(process.name().to_owned());
        self
    }

    /// The same event with `params` for its process.
    pub fn with_params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    /// The same event (the same id) due at `at` instead: scheduling it moves a pending event
    /// rather than adding one (see [`ProcessContext::pending_events`]).
    pub fn rescheduled(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    /// The same event with `key` set in its metadata.
    pub fn with_metadata(mut self, key: &str, value: Value) -> Self {
        if !self.metadata.is_object() {
            self.metadata = Value::Object(serde_json::Map::new());
        }
        if let Some(map) = self.metadata.as_object_mut() {
            map.insert(key.to_owned(), value);
        }
        self
    }
}

impl fmt::Debug for ScheduledEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledEvent")
            .field("id", &self.id)
            .field("at", &self.at)
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

/// What a process did besides thinking: replies, scheduled and cancelled events.
///
/// `scheduled` holds one event per id and never an id of `cancelled`, so that a store can apply
/// the two lists in either order: what the turn did last to an id is what stands.
#[derive(Debug, Default)]
pub(crate) struct Actions {
    pub(crate) replies: Vec<String>,
    /// Replies the limit shortened: what the process said, and what was kept of it.
    pub(crate) cut: Vec<(String, String)>,
    pub(crate) scheduled: Vec<ScheduledEvent>,
    pub(crate) cancelled: Vec<EventId>,
}

impl Actions {
    /// Schedules `event`, replacing (moving) one of the same id.
    pub(crate) fn schedule(&mut self, event: ScheduledEvent) {
        self.cancelled.retain(|id| *id != event.id);
        match self.scheduled.iter_mut().find(|e| e.id == event.id) {
            Some(slot) => *slot = event,
            None => self.scheduled.push(event),
        }
    }

    /// Cancels `id`, given the events that were pending before these actions: an event these
    /// actions scheduled and nothing stored is only dropped, anything else is cancelled.
    pub(crate) fn cancel(&mut self, id: EventId, pending_before: &[ScheduledEvent]) {
        let before = self.scheduled.len();
        self.scheduled.retain(|e| e.id != id);
        let only_scheduled_here =
            self.scheduled.len() < before && !pending_before.iter().any(|e| e.id == id);
        if !only_scheduled_here && !self.cancelled.contains(&id) {
            self.cancelled.push(id);
        }
    }

    /// The events pending once these actions are stored, given those pending before: soonest
    /// first (then by id, as the stores order them).
    pub(crate) fn pending_after(&self, pending_before: &[ScheduledEvent]) -> Vec<ScheduledEvent> {
        let mut pending: Vec<ScheduledEvent> = pending_before
            .iter()
            .filter(|e| {
                !self.cancelled.contains(&e.id) && !self.scheduled.iter().any(|s| s.id == e.id)
            })
            .chain(&self.scheduled)
            .cloned()
            .collect();
        pending.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        pending
    }
}

/// Everything a process can see and do during one run. Cheap to clone; clones share the turn.
#[derive(Clone)]
pub struct ProcessContext {
    pub(crate) memory: WorkingMemory,
    pub(crate) mind: Mind,
    pub(crate) process: &'static str,
    pub(crate) params: Value,
    pub(crate) invocation_count: u32,
    pub(crate) previous_process: Option<String>,
    pub(crate) perception: Arc<Perception>,
    /// The events pending as this run started (before its own actions).
    pub(crate) pending_events: Arc<[ScheduledEvent]>,
    pub(crate) pending_perceptions: Arc<[Perception]>,
    pub(crate) soul_memory: KeyValueMemory,
    pub(crate) process_memory: KeyValueMemory,
    pub(crate) actions: Arc<Mutex<Actions>>,
    pub(crate) replies: Option<mpsc::UnboundedSender<String>>,
    pub(crate) reply_limit: Option<Arc<dyn ReplyLimit>>,
}

impl ProcessContext {
    /// Working memory as this process starts.
    pub fn memory(&self) -> &WorkingMemory {
        &self.memory
    }

    /// The mind to run cognitive steps with.
    pub fn mind(&self) -> &Mind {
        &self.mind
    }

    /// The name of the running process.
    pub fn process_name(&self) -> &'static str {
        self.process
    }

    /// The params the process was entered with (or, for a run a scheduled event aimed at it,
    /// the event's params), as a `T`.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ProcessError> {
        serde_json::from_value(self.params.clone()).map_err(ProcessError::Params)
    }

    /// The raw params (`null` when none were given).
    pub fn params_json(&self) -> &Value {
        &self.params
    }

    /// How many times this process ran before in a row (0 on its first run).
    pub fn invocation_count(&self) -> u32 {
        self.invocation_count
    }

    /// The process that ran before the current one took over, if any.
    pub fn previous_process(&self) -> Option<&str> {
        self.previous_process.as_deref()
    }

    /// What the soul is responding to.
    pub fn perception(&self) -> &Perception {
        &self.perception
    }

    /// The scheduled events not yet due (OpenSouls' `pendingScheduledEvents`), soonest first,
    /// with what this turn scheduled and cancelled so far: what a process moves (schedule
    /// [`rescheduled`](ScheduledEvent::rescheduled) — the same id — at another time) or
    /// [cancels](Self::cancel_scheduled). The event being answered is not among them. A store
    /// loads them with the turn, at most a bound of them (the soonest; `soul-persistence`'s
    /// `TurnSettings::pending_limit`, 20 by default).
    pub fn pending_events(&self) -> Vec<ScheduledEvent> {
        self.actions().pending_after(&self.pending_events)
    }

    /// What the person sent (and the due events) waiting behind the perception being answered,
    /// oldest first, as they stood when the turn started: a process may answer briefly, or skip a
    /// check-in, when more is already waiting. Each gets its own turn afterwards. A store loads
    /// at most a bound of them (the oldest; `TurnSettings::pending_limit`, 20 by default).
    pub fn pending_perceptions(&self) -> &[Perception] {
        &self.pending_perceptions
    }

    /// Memory that lives across processes and sessions.
    pub fn soul_memory(&self) -> &KeyValueMemory {
        &self.soul_memory
    }

    /// Memory of this process, dropped when the process changes or the session times out.
    pub fn process_memory(&self) -> &KeyValueMemory {
        &self.process_memory
    }

    /// The time now, by the engine's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.mind.clock().now()
    }

    fn actions(&self) -> MutexGuard<'_, Actions> {
        self.actions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Says `text` to the person. The reply reaches the caller's channel at once, before the turn
    /// ends, and is part of the outcome. Returns what was said: `text`, or, when it is longer
    /// than the caller's [`ReplyLimit`] allows, the part of it that is sent. The memory of a cut
    /// reply is cut too: memories this turn added that quote `text` whole quote the sent part
    /// instead.
    pub fn speak(&self, text: impl Into<String>) -> String {
        self.speak_with_ending(text, "")
    }

    /// Says `body` followed by `ending`, as [`speak`](Self::speak) does; when the reply is too
    /// long, `body` is cut and `ending` kept (unless it is too long alone). For text that must
    /// reach the person whole, such as crisis resources after the model's words.
    pub fn speak_with_ending(&self, body: impl Into<String>, ending: &str) -> String {
        let body = body.into();
        let limited = self
            .reply_limit
            .as_ref()
            .and_then(|limit| limit.limit(&body, ending));
        let said = format!("{body}{ending}");
        let text = match limited {
            Some(kept) => {
                tracing::debug!(
                    process = self.process,
                    said_bytes = said.len(),
                    kept_bytes = kept.len(),
                    "a reply over the limit was cut"
                );
                self.actions().cut.push((said, kept.clone()));
                kept
            }
            None => said,
        };
        if let Some(stream) = self.mind.reply_stream() {
            stream.spoken(&text);
        }
        if let Some(replies) = &self.replies {
            // The caller may have stopped listening; the reply is still in the outcome.
            let _ = replies.send(text.clone());
        }
        self.actions().replies.push(text.clone());
        text
    }

    /// A debug line from the author's process (never at `info`: it may quote the person).
    pub fn log(&self, message: impl fmt::Display) {
        tracing::debug!(process = self.process, "{message}");
    }

    /// Schedules `content` to be perceived at `at`, by `process` (or the current process then).
    pub fn schedule(
        &self,
        at: DateTime<Utc>,
        process: Option<MentalProcess>,
        content: impl Into<String>,
    ) -> EventId {
        let mut event = ScheduledEvent::new(at, content);
        event.process = process.map(|p| p.name().to_owned());
        self.schedule_event(event)
    }

    /// Schedules `event`, with whatever params and metadata it carries; returns its id. An event
    /// with the id of a pending one replaces it (moves it: see
    /// [`ScheduledEvent::rescheduled`]).
    pub fn schedule_event(&self, event: ScheduledEvent) -> EventId {
        let id = event.id;
        self.actions().schedule(event);
        id
    }

    /// Cancels a scheduled event (one scheduled earlier in this turn, or in an earlier turn).
    pub fn cancel_scheduled(&self, id: EventId) {
        self.actions().cancel(id, &self.pending_events);
    }
}

impl fmt::Debug for ProcessContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessContext")
            .field("process", &self.process)
            .field("invocation_count", &self.invocation_count)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

/// Where to go after a process run.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The next process.
    pub process: MentalProcess,
    /// Its params.
    pub params: Value,
    /// Run it at once on the same perception instead of waiting for the next one.
    pub run_now: bool,
}

/// What a process returns: the new working memory and, optionally, a transition.
///
/// A transition is explicit, and always has the same effect — even to the current process: the
/// invocation count restarts at 0, process memory starts empty, and the params are replaced.
/// `Next::stay` keeps all three. Returned by a subprocess, a transition moves the main process
/// from the next perception on; a subprocess cannot `run_now` (it fails).
#[derive(Debug, Clone)]
pub struct Next {
    pub(crate) memory: WorkingMemory,
    pub(crate) transition: Option<Transition>,
}

impl Next {
    /// Stay in the current process.
    pub fn stay(memory: WorkingMemory) -> Self {
        Next {
            memory,
            transition: None,
        }
    }

    /// Go to `process` with no params, from the next perception on.
    pub fn to(process: MentalProcess, memory: WorkingMemory) -> Self {
        Next {
            memory,
            transition: Some(Transition {
                process,
                params: Value::Null,
                run_now: false,
            }),
        }
    }

    /// The same transition with `params` (ignored by `stay`).
    pub fn with_params(mut self, params: Value) -> Self {
        if let Some(transition) = &mut self.transition {
            transition.params = params;
        }
        self
    }

    /// The same transition, run at once on the same perception (ignored by `stay`). At most
    /// [`RUN_NOW_LIMIT`](crate::process::RUN_NOW_LIMIT) in a row.
    pub fn run_now(mut self) -> Self {
        if let Some(transition) = &mut self.transition {
            transition.run_now = true;
        }
        self
    }

    /// The working memory.
    pub fn memory(&self) -> &WorkingMemory {
        &self.memory
    }

    /// The transition, if any.
    pub fn transition(&self) -> Option<&Transition> {
        self.transition.as_ref()
    }
}

/// What a process returns.
pub type ProcessResult = Result<Next, ProcessError>;

/// Why a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A cognitive step failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// Soul or process memory could not be read or written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The params are not of the expected type. The message leaves serde's reason out (it
    /// quotes the value); it is the `source`.
    #[error("the process params are not of the expected type")]
    Params(#[source] serde_json::Error),
    /// Anything else the author wants to fail with.
    #[error("{0}")]
    Failed(String),
}

impl ProcessError {
    /// A failure with the author's message.
    pub fn failed(message: impl Into<String>) -> Self {
        ProcessError::Failed(message.into())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    fn event(hours: i64) -> ScheduledEvent {
        let noon = Utc.with_ymd_and_hms(2026, 1, 5, 12, 0, 0).unwrap();
        ScheduledEvent::new(noon + Duration::hours(hours), "[later]")
    }

    #[test]
    fn an_event_moved_then_cancelled_is_cancelled_where_it_is_stored() {
        let stored = event(1);
        let mut actions = Actions::default();
        actions.schedule(stored.clone().rescheduled(stored.at + Duration::hours(5)));
        actions.cancel(stored.id, std::slice::from_ref(&stored));
        assert!(actions.scheduled.is_empty());
        assert_eq!(actions.cancelled, [stored.id]);
        assert!(actions.pending_after(&[stored]).is_empty());
    }

    #[test]
    fn the_last_of_a_schedule_and_a_cancel_stands_and_one_id_is_scheduled_once() {
        let (stored, fresh) = (event(1), event(2));
        let mut actions = Actions::default();
        actions.cancel(stored.id, std::slice::from_ref(&stored));
        let moved = stored.clone().rescheduled(stored.at + Duration::hours(9));
        actions.schedule(stored.clone());
        actions.schedule(moved.clone());
        assert!(actions.cancelled.is_empty());
        assert_eq!(actions.scheduled, std::slice::from_ref(&moved));

        // Scheduled and cancelled in the same turn, never stored: nothing is left to do.
        actions.schedule(fresh.clone());
        actions.cancel(fresh.id, std::slice::from_ref(&stored));
        assert_eq!(actions.scheduled, std::slice::from_ref(&moved));
        assert!(actions.cancelled.is_empty());

        let other = event(3);
        assert_eq!(
            actions.pending_after(&[stored, other.clone()]),
            [other, moved]
        );
    }
}
