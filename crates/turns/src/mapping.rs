//! Translations between the engine's turn outcome and the store's turn contract.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use soul_engine::process::{
    EventId, MainOutcome, MemoryChanges, Perception, PerceptionKind,
    ProcessState as EngineProcessState, ScheduledEvent, Soul, SoulState, SubprocessOutcome,
};
use soul_engine::{Memory, Role, WorkingMemory};
use soul_persistence::{
    Changes, InboundKind, MemoryChange, NewEvent, PendingEvent, ProcessMemoryChange, ProcessState,
    Processes, QueuedInbound, TurnContext, TurnSettings,
};
use uuid::Uuid;

/// The event kind the driver stores for the engine's scheduled perceptions (and the only kind
/// [`crate::TurnDriver::fire_due_events`] fires).
pub(crate) const PERCEPTION_EVENT: &str = "perception";

/// Turn settings for `soul`: its process and subprocess names and initial process, the seed's
/// defaults.
pub fn turn_settings(soul: &Soul) -> TurnSettings {
    let processes = Processes::new(
        soul.initial_process().name(),
        soul.processes().map(|p| p.name()),
    );
    TurnSettings {
        subprocesses: soul
            .subprocesses()
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        ..TurnSettings::new(soul.name(), processes)
    }
}

/// What the engine starts from, out of what `begin` loaded.
pub(crate) fn soul_state(soul: &Soul, context: &TurnContext) -> SoulState {
    let working_memory = match &context.snapshot {
        Some(snapshot) => snapshot.clone(),
        // No snapshot (a new or timed-out session): rebuild from the stored conversation, less
        // the message being answered, which the integrator appends itself.
        None => context
            .history
            .iter()
            .filter(|m| m.id.0 != context.inbound.id)
            .fold(WorkingMemory::new(soul.display_name()), |wm, m| {
                wm.with_memory(m.clone())
            }),
    };
    let process = &context.process;
    // The engine reads each process's memory by name; the store refuses settings naming one
    // process both ways, so the current process and the subprocesses never share an entry.
    let mut process_memories: BTreeMap<String, BTreeMap<String, Value>> = context
        .subprocess_memories
        .iter()
        .map(|(name, memory)| (name.clone(), to_btree(memory)))
        .collect();
    process_memories.insert(process.name.clone(), to_btree(&context.process_memories));
    SoulState {
        process: Some(EngineProcessState {
            name: process.name.clone(),
            params: process.params.clone(),
            invocation_count: process.invocation_count,
            previous: process.previous.clone(),
        }),
        soul_memory: to_btree(&context.soul_memories),
        process_memories,
        working_memory,
        pending_events: context
            .pending_events
            .iter()
            .filter_map(scheduled_event)
            .collect(),
        pending_perceptions: context.waiting.iter().map(perception_of).collect(),
    }
}

/// A stored event as the engine scheduled it (see [`new_event`]); `None` for events of other
/// kinds, which are not the engine's.
pub(crate) fn scheduled_event(event: &PendingEvent) -> Option<ScheduledEvent> {
    if event.kind != PERCEPTION_EVENT {
        return None;
    }
    let payload = &event.payload;
    let mut scheduled = ScheduledEvent::new(event.due_at, content(payload));
    scheduled.id = engine_event_id(&event.key, event.id);
    scheduled.process = payload
        .get("process")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(metadata) = payload.get("metadata").filter(|m| m.is_object()) {
        scheduled.metadata = metadata.clone();
    }
    scheduled.params = payload.get("params").cloned().unwrap_or(Value::Null);
    Some(scheduled)
}

/// The text a stored event is perceived as.
fn content(payload: &Value) -> &str {
    payload
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The key is the id `cx.schedule` returned (see [`new_event`]), so a process can tell which of
/// its events this is; the store's own id only for an event stored under another key.
fn engine_event_id(key: &str, stored: Uuid) -> EventId {
    EventId(Uuid::parse_str(key).unwrap_or(stored))
}

/// The perception of what the turn was started for: the person's message, or a scheduled
/// event (stored by [`new_event`]) perceived at the time it came due.
pub(crate) fn perception(context: &TurnContext) -> Perception {
    perception_of(&context.inbound)
}

/// How the engine perceives a message or an event of the session's queue.
pub(crate) fn perception_of(inbound: &QueuedInbound) -> Perception {
    match &inbound.kind {
        InboundKind::Message => {
            let mut perception = Perception::message(inbound.body.clone(), inbound.received_at);
            perception.metadata = json!({ "inbound_id": inbound.id });
            perception
        }
        InboundKind::Event {
            event_id,
            key,
            payload,
            ..
        } => {
            let mut perception = Perception::message(content(payload), inbound.received_at);
            perception.kind = PerceptionKind::Event {
                id: engine_event_id(key, *event_id),
                process: payload
                    .get("process")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                // Events stored before events carried params have none.
                params: payload.get("params").cloned().unwrap_or(Value::Null),
            };
            if let Some(metadata) = payload.get("metadata").filter(|m| m.is_object()) {
                perception.metadata = metadata.clone();
            }
            perception
        }
    }
}

/// The store's change set for the main part of a turn.
pub(crate) fn main_changes(context: &TurnContext, outcome: &MainOutcome) -> Changes {
    main_changes_on(&Started::of(context), outcome)
}

/// What a turn started on, as far as its change sets depend on it: the current process and the
/// keys of its memory the store holds.
pub(crate) struct Started<'a> {
    pub(crate) process: &'a str,
    pub(crate) memory: &'a serde_json::Map<String, Value>,
}

impl<'a> Started<'a> {
    pub(crate) fn of(context: &'a TurnContext) -> Self {
        Started {
            process: &context.process.name,
            memory: &context.process_memories,
        }
    }
}

/// [`main_changes`] for a turn that started on `started`.
pub(crate) fn main_changes_on(started: &Started<'_>, outcome: &MainOutcome) -> Changes {
    Changes {
        memories: stored_memories(&outcome.appended),
        soul_memory: memory_changes(&outcome.soul_memory),
        process_memory: process_memory_changes(&outcome.process_memory, |process| {
            // Of the main processes, the store keeps keys for the current one only.
            if process == started.process {
                started.memory.keys().cloned().collect()
            } else {
                BTreeSet::new()
            }
        }),
        process_state: Some(stored_process_state(&outcome.process)),
        snapshot: Some(outcome.working_memory.clone()),
        schedule: outcome.scheduled.iter().map(new_event).collect(),
        cancel_events: outcome
            .cancelled_events
            .iter()
            .map(|id| id.0.to_string())
            .collect(),
    }
}

/// The store's change set for a turn's subprocesses, committed after `main`'s: a subprocess
/// that moved the main process changes the process state, and clears what the main commit left
/// in the process memory of the process it left.
pub(crate) fn subprocess_changes(
    context: &TurnContext,
    main: &MainOutcome,
    outcome: &SubprocessOutcome,
) -> Changes {
    subprocess_changes_on(&Started::of(context), main, outcome)
}

/// [`subprocess_changes`] for a turn that started on `started`.
pub(crate) fn subprocess_changes_on(
    started: &Started<'_>,
    main: &MainOutcome,
    outcome: &SubprocessOutcome,
) -> Changes {
    Changes {
        memories: stored_memories(&outcome.appended),
        soul_memory: memory_changes(&outcome.soul_memory),
        process_memory: process_memory_changes(&outcome.process_memory, |process| {
            let mut stored = if process == started.process {
                to_btree(started.memory)
            } else {
                BTreeMap::new()
            };
            if let Some(changes) = main.process_memory.get(process) {
                changes.apply_to(&mut stored);
            }
            stored.into_keys().collect()
        }),
        process_state: outcome.process.as_ref().map(stored_process_state),
        snapshot: outcome.working_memory.clone(),
        schedule: outcome.scheduled.iter().map(new_event).collect(),
        cancel_events: outcome
            .cancelled_events
            .iter()
            .map(|id| id.0.to_string())
            .collect(),
    }
}

/// The reply texts as the assistant memories the store keeps in the conversation.
pub(crate) fn reply_memories(replies: &[String], at: chrono::DateTime<chrono::Utc>) -> Vec<Memory> {
    replies
        .iter()
        .map(|text| Memory::new(Role::Assistant, text.clone(), at))
        .collect()
}

/// The conversation table keeps what was said (the message and the replies, stored by begin
/// and commit) and the regions (summary, notes); a process's inner steps ("X thought: ...") live in
/// the working-memory snapshot only, so a history rebuilt without a snapshot reads as an SMS thread.
fn stored_memories(appended: &[Memory]) -> Vec<Memory> {
    appended
        .iter()
        .filter(|m| m.region.is_some())
        .cloned()
        .collect()
}

fn memory_changes(changes: &MemoryChanges) -> Vec<MemoryChange> {
    let removals = changes
        .removals
        .iter()
        .map(|key| MemoryChange::Remove { key: key.clone() });
    let upserts = changes
        .upserts
        .iter()
        .map(|(key, value)| MemoryChange::Set {
            key: key.clone(),
            value: value.clone(),
        });
    removals.chain(upserts).collect()
}

fn stored_process_state(state: &EngineProcessState) -> ProcessState {
    ProcessState {
        name: state.name.clone(),
        params: state.params.clone(),
        invocation_count: state.invocation_count,
        previous: state.previous.clone(),
    }
}

/// A cleared process memory becomes removals of the keys `stored` says the store holds for it.
/// Only main processes are cleared (the engine clears the processes a turn leaves or enters;
/// subprocesses are never left), and of those the store holds keys for the current one only:
/// every other main process's keys were removed when it was left.
fn process_memory_changes(
    changes: &BTreeMap<String, MemoryChanges>,
    stored: impl Fn(&str) -> BTreeSet<String>,
) -> Vec<ProcessMemoryChange> {
    let mut out = Vec::new();
    for (process, changes) in changes {
        let mut flat = MemoryChanges::default();
        if changes.cleared {
            flat.removals.extend(stored(process));
        }
        flat.merge(MemoryChanges {
            cleared: false,
            ..changes.clone()
        });
        out.extend(
            memory_changes(&flat)
                .into_iter()
                .map(|change| ProcessMemoryChange {
                    process: process.clone(),
                    change,
                }),
        );
    }
    out
}

/// The stored form of a scheduled event: its payload carries the process it is aimed at, its
/// content, its metadata and, when it has any, the params for its process.
fn new_event(event: &ScheduledEvent) -> NewEvent {
    let mut payload = json!({
        "process": event.process,
        "content": event.content,
        "metadata": event.metadata,
    });
    if !event.params.is_null() {
        payload["params"] = event.params.clone();
    }
    NewEvent {
        key: event.id.0.to_string(),
        kind: PERCEPTION_EVENT.to_owned(),
        payload,
        due_at: event.at,
    }
}

pub(crate) fn to_btree(map: &serde_json::Map<String, Value>) -> BTreeMap<String, Value> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
