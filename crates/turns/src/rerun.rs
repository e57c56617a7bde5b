//! Re-running a logged turn with the current build: the same perception, on the state before the
//! turn (rebuilt from the turn log, as a rewind does), through this driver's runtime of the
//! conversation's soul and its model, with nothing stored; and what it did beside what the turn
//! did.

use soul_engine::WorkingMemory;
use soul_engine::process::{ProcessState as EngineProcessState, Soul, SoulState};
use soul_persistence::turn_log::{
    ChangeLog, EventValue, KeyChange, LoggedTurn, ProcessKeyChange, SessionState, TurnEnd,
    answered_event_of, state_before,
};
use soul_persistence::{PendingEvent, ProcessState, SessionId};

use crate::driver::{DriverError, TurnDriver};
use crate::mapping::{self, Started};
use crate::record::{self, Recorder};

/// What a turn did, as a re-run compares it: what it said and changed, without the ids a run
/// makes up (its memories', its events' keys).
#[derive(Clone, Default, PartialEq)]
pub struct TurnOutcome {
    /// How it ended.
    pub end: TurnEnd,
    /// The replies' texts, in order.
    pub replies: Vec<String>,
    /// The process state it stored last (the subprocesses' when they moved the main process);
    /// `None` when it stored none.
    pub process: Option<ProcessState>,
    /// Soul-memory keys it changed (the subprocesses' after the main part's).
    pub soul_memory: Vec<KeyChange>,
    /// Process-memory keys it changed.
    pub process_memory: Vec<ProcessKeyChange>,
    /// Events it scheduled or moved, as they were then.
    pub scheduled: Vec<EventValue>,
    /// Events it cancelled (or answered), as they were before.
    pub cancelled: Vec<EventValue>,
}

impl std::fmt::Debug for TurnOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The replies quote the soul speaking to the person: their lengths only.
        f.debug_struct("TurnOutcome")
            .field("end", &self.end)
            .field(
                "replies",
                &self.replies.iter().map(String::len).collect::<Vec<_>>(),
            )
            .field("process", &self.process)
            .field("soul_memory", &self.soul_memory)
            .field("process_memory", &self.process_memory)
            .field("scheduled", &self.scheduled)
            .field("cancelled", &self.cancelled)
            .finish()
    }
}

impl TurnOutcome {
    fn add(&mut self, changes: &ChangeLog) {
        self.soul_memory.extend(changes.soul_memory.iter().cloned());
        self.process_memory
            .extend(changes.process_memory.iter().cloned());
        if let Some(process) = &changes.process {
            self.process = Some(process.after.clone());
        }
        for event in &changes.events {
            match (&event.before, &event.after) {
                (_, Some(after)) => self.scheduled.push(after.clone()),
                (Some(before), None) => self.cancelled.push(before.clone()),
                (None, None) => {}
            }
        }
    }

    fn recorded(turn: &LoggedTurn) -> Self {
        let mut outcome = TurnOutcome {
            end: turn.record.end.clone(),
            replies: turn.replies.iter().map(|r| r.body.clone()).collect(),
            ..TurnOutcome::default()
        };
        outcome.add(&turn.record.changes);
        if let Some(subprocesses) = &turn.record.subprocesses {
            outcome.add(&subprocesses.changes);
        }
        outcome
    }
}

/// A logged turn run again: what it did then and what the current build does now.
#[derive(Debug, Clone, PartialEq)]
pub struct Rerun {
    /// The turn's number.
    pub turn: u32,
    /// What the turn did.
    pub recorded: TurnOutcome,
    /// What the re-run did.
    pub rerun: TurnOutcome,
}

impl Rerun {
    /// Whether the re-run did anything otherwise.
    pub fn differs(&self) -> bool {
        self.recorded != self.rerun
    }
}

impl TurnDriver {
    /// Runs turn `turn` of `session` again with this driver's runtime of the conversation's soul
    /// (the one its turns run, [`TurnDriver::with_soul`]) and its model (a cassette, or the
    /// configured one) at its clock's time: the perception the turn answered, on the state
    /// before it (rebuilt from the turn log by undoing it and every later turn), then the
    /// subprocesses. Nothing is stored, and no turn of the session is disturbed. `None` when
    /// there is no such turn (never run, rewound, or deleted by retention with its message), or
    /// a later turn began a new session without recording what that cleared.
    ///
    /// A turn that ran without a snapshot (a session's first turn) is re-run on an empty working
    /// memory.
    pub async fn rerun(&self, session: SessionId, turn: u32) -> Result<Option<Rerun>, DriverError> {
        let store = self.store();
        let Some(current) = store.session_state(session).await? else {
            return Ok(None);
        };
        let later: Vec<LoggedTurn> = store
            .turn_log(session, turn, None)
            .await?
            .into_iter()
            .filter(|logged| !logged.rewound)
            .collect();
        let Some(logged) = later.first().filter(|logged| logged.turn == turn) else {
            return Ok(None);
        };
        let inbound = &logged.perception;
        let Ok(before) = state_before(current, &later)? else {
            return Ok(None);
        };
        // The conversation's own soul, as its turns run it.
        let (runtime, settings) = self.soul_for(&before.persona);
        let soul = runtime.soul();
        let processes = &settings.processes;
        let process = before
            .process
            .as_ref()
            .map_or_else(|| processes.initial.clone(), |p| p.name.clone());
        let empty = serde_json::Map::new();
        let memory = before.process_memories.get(&process).unwrap_or(&empty);
        let started = Started {
            process: &process,
            memory,
        };
        let mut recorder = Recorder::on(before.clone(), answered_event_of(inbound));
        // Its own key: a run under the session's would cancel a running turn's subprocesses.
        let key = format!("rerun:{session}");
        let state = soul_state(soul, &before);
        let main = runtime
            .run_main(&key, state, mapping::perception_of(inbound), None)
            .await;
        let mut rerun = TurnOutcome::default();
        match main {
            Ok(main) => {
                rerun.replies.clone_from(&main.replies);
                let changes = mapping::main_changes_on(&started, &main);
                rerun.add(&recorder.main(&changes, processes));
                let subprocesses = runtime.run_subprocesses(&main).await;
                if !soul.subprocesses().is_empty() && !subprocesses.cancelled {
                    let changes = mapping::subprocess_changes_on(&started, &main, &subprocesses);
                    rerun.add(&recorder.subprocesses(&changes, processes));
                }
            }
            Err(error) => {
                rerun.end = TurnEnd::Fallback {
                    error: record::error_kind(&error).to_owned(),
                };
                rerun.replies.push(self.fallback_reply().to_owned());
                rerun.add(&recorder.replies_only());
            }
        }
        Ok(Some(Rerun {
            turn,
            recorded: TurnOutcome::recorded(logged),
            rerun,
        }))
    }
}

/// What the engine starts from, out of a session's whole state.
fn soul_state(soul: &Soul, state: &SessionState) -> SoulState {
    SoulState {
        process: state.process.as_ref().map(|p| EngineProcessState {
            name: p.name.clone(),
            params: p.params.clone(),
            invocation_count: p.invocation_count,
            previous: p.previous.clone(),
        }),
        soul_memory: mapping::to_btree(&state.soul_memories),
        process_memories: state
            .process_memories
            .iter()
            .map(|(process, memory)| (process.clone(), mapping::to_btree(memory)))
            .collect(),
        working_memory: state
            .snapshot
            .clone()
            .and_then(|snapshot| WorkingMemory::from_json(snapshot).ok())
            .unwrap_or_else(|| WorkingMemory::new(soul.display_name())),
        pending_events: state
            .events
            .iter()
            .filter_map(|event| {
                mapping::scheduled_event(&PendingEvent {
                    id: event.id,
                    key: event.key.clone(),
                    kind: event.value.kind.clone(),
                    payload: event.value.payload.clone(),
                    due_at: event.value.due_at,
                })
            })
            .collect(),
        pending_perceptions: Vec::new(),
    }
}
