//! One turn: `state + perception → outcome`, in two parts — the main process (whose replies
//! stream out as they are spoken) and then the subprocesses.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::memory::{Memory, MemoryId};
use crate::model::{LanguageModel, Usage};
use crate::process::context::{
    Actions, EventId, Perception, PerceptionKind, ProcessContext, ProcessError, ScheduledEvent,
    Transition,
};
use crate::process::kv::{KeyValueMemory, MemoryChanges};
use crate::process::registry::{Registered, Soul};
use crate::process::reply::{ReplyLimit, ReplyStream};
use crate::step::{Mind, StepRecord};
use crate::working_memory::WorkingMemory;

/// How many "run now" transitions may follow each other in one turn; the next one is an error.
pub const RUN_NOW_LIMIT: usize = 10;

/// Which process a session is in, as stored between turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessState {
    /// The current process.
    pub name: String,
    /// Its params.
    #[serde(default)]
    pub params: Value,
    /// How many times it has run since it was entered.
    #[serde(default)]
    pub invocation_count: u32,
    /// The process before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// Everything a turn starts from, as loaded by the caller.
#[derive(Debug, Clone)]
pub struct SoulState {
    /// The stored process state; `None` for a new (or timed-out) session.
    pub process: Option<ProcessState>,
    /// Soul memory.
    pub soul_memory: BTreeMap<String, Value>,
    /// Process memories by process name (the current process's and the subprocesses').
    pub process_memories: BTreeMap<String, BTreeMap<String, Value>>,
    /// Working memory from the last turn (snapshot or rebuilt from history).
    pub working_memory: WorkingMemory,
    /// The scheduled events not yet due, as stored ([`ProcessContext::pending_events`]). An
    /// event among them that the turn answers is left out of what its processes see.
    pub pending_events: Vec<ScheduledEvent>,
    /// The perceptions waiting behind the one the turn answers, oldest first
    /// ([`ProcessContext::pending_perceptions`]). The queue is the caller's: the `apply_*`
    /// methods leave this as it is.
    pub pending_perceptions: Vec<Perception>,
}

impl SoulState {
    /// The state of a soul meeting someone for the first time.
    pub fn new(soul_name: &str) -> Self {
        SoulState {
            process: None,
            soul_memory: BTreeMap::new(),
            process_memories: BTreeMap::new(),
            working_memory: WorkingMemory::new(soul_name),
            pending_events: Vec::new(),
            pending_perceptions: Vec::new(),
        }
    }

    /// This state after the main part of a turn, as a store would record it; lets a program
    /// keep a conversation in memory without any store.
    pub fn apply_main(&mut self, outcome: &MainOutcome) {
        outcome.soul_memory.apply_to(&mut self.soul_memory);
        for (process, changes) in &outcome.process_memory {
            changes.apply_to(self.process_memories.entry(process.clone()).or_default());
        }
        self.process_memories.retain(|_, values| !values.is_empty());
        self.process = Some(outcome.process.clone());
        self.working_memory = outcome.working_memory.clone();
        self.pending_events.clone_from(&outcome.pending_events);
    }

    /// This state after the subprocesses of a turn; a cancelled outcome changes nothing.
    pub fn apply_subprocesses(&mut self, outcome: &SubprocessOutcome) {
        if outcome.cancelled {
            return;
        }
        outcome.soul_memory.apply_to(&mut self.soul_memory);
        for (process, changes) in &outcome.process_memory {
            changes.apply_to(self.process_memories.entry(process.clone()).or_default());
        }
        self.process_memories.retain(|_, values| !values.is_empty());
        if let Some(process) = &outcome.process {
            self.process = Some(process.clone());
        }
        if let Some(memory) = &outcome.working_memory {
            self.working_memory = memory.clone();
        }
        self.pending_events.clone_from(&outcome.pending_events);
    }
}

/// Why a turn failed. A failed turn has no outcome: nothing of it is to be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// A process failed.
    #[error("process `{process}` failed: {source}")]
    Process {
        /// The process.
        process: String,
        /// Its error.
        #[source]
        source: ProcessError,
    },
    /// A process transitioned to a process the soul does not have.
    #[error("process `{from}` transitioned to `{to}`, which soul `{soul}` does not have")]
    UnknownProcess {
        /// The soul.
        soul: String,
        /// The process that asked.
        from: String,
        /// The missing process.
        to: String,
    },
    /// More than [`RUN_NOW_LIMIT`] run-now transitions in a row.
    #[error("more than {RUN_NOW_LIMIT} run-now transitions in a row: {}", .chain.join(" → "))]
    RunNowLimit {
        /// The processes run, in order.
        chain: Vec<String>,
    },
}

/// The main part of a turn's outcome: what to store at commit, and what to send.
pub struct MainOutcome {
    /// Replies, in the order spoken.
    pub replies: Vec<String>,
    /// Memories this turn added (besides the perception's), in working-memory order.
    pub appended: Vec<Memory>,
    /// The id of the perception's memory (stored by the caller when the message arrived).
    pub perception_memory: Option<MemoryId>,
    /// Soul memory changes.
    pub soul_memory: MemoryChanges,
    /// Process memory changes by process name; `cleared` marks a process that was left or entered.
    pub process_memory: BTreeMap<String, MemoryChanges>,
    /// The process state to store.
    pub process: ProcessState,
    /// The stored process name that was not registered and was replaced by the initial process.
    pub corrected_from: Option<String>,
    /// The processes that ran, in order.
    pub processes_run: Vec<String>,
    /// Events to schedule.
    pub scheduled: Vec<ScheduledEvent>,
    /// Events to cancel.
    pub cancelled_events: Vec<EventId>,
    /// The events pending once `scheduled` and `cancelled_events` are stored: the state's,
    /// less the one answered (what the subprocesses start from).
    pub pending_events: Vec<ScheduledEvent>,
    /// Working memory after the main process, within the soul's memory budget (the snapshot
    /// to store).
    pub working_memory: WorkingMemory,
    /// Tokens spent.
    pub usage: Usage,
    /// The cognitive steps the main part ran, in the order they finished.
    pub steps: Vec<StepRecord>,
    carry: Carry,
}

/// What the subprocesses continue from; private so callers cannot build a half-turn.
struct Carry {
    session: String,
    generation: u64,
    cancel: CancellationToken,
    perception: Arc<Perception>,
    pending_perceptions: Arc<[Perception]>,
    soul_memory: KeyValueMemory,
    process_memories: BTreeMap<String, BTreeMap<String, Value>>,
}

impl fmt::Debug for MainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MainOutcome")
            .field("replies", &self.replies.len())
            .field("appended", &self.appended.len())
            .field("process", &self.process.name)
            .field("processes_run", &self.processes_run)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

/// The subprocesses' part of a turn's outcome.
#[derive(Debug, Default)]
pub struct SubprocessOutcome {
    /// A newer turn of the same session began; everything below is empty and must not be stored.
    pub cancelled: bool,
    /// Subprocesses that failed (their changes are dropped; the others' are kept).
    pub failed: Vec<String>,
    /// Replies the subprocesses spoke, to send after the main replies.
    pub replies: Vec<String>,
    /// Memories the subprocesses added or replaced, in working-memory order.
    pub appended: Vec<Memory>,
    /// Soul memory changes.
    pub soul_memory: MemoryChanges,
    /// Process memory changes by subprocess name; when a subprocess moved the main process,
    /// also the main processes left and entered, `cleared`.
    pub process_memory: BTreeMap<String, MemoryChanges>,
    /// The main process a subprocess moved the soul to (the last one, if several did): the
    /// process state to store. `None` when the main process stays where the main part left it.
    pub process: Option<ProcessState>,
    /// Events to schedule.
    pub scheduled: Vec<ScheduledEvent>,
    /// Events to cancel.
    pub cancelled_events: Vec<EventId>,
    /// The events pending once the main part's and these events are stored.
    pub pending_events: Vec<ScheduledEvent>,
    /// Working memory after the subprocesses, within the soul's memory budget (the snapshot to
    /// store), if they ran.
    pub working_memory: Option<WorkingMemory>,
    /// Tokens spent.
    pub usage: Usage,
    /// The cognitive steps the subprocesses ran (the failed ones' included), in the order they
    /// finished.
    pub steps: Vec<StepRecord>,
}

/// Runs turns of one soul.
pub struct Runtime {
    soul: Arc<Soul>,
    model: Arc<dyn LanguageModel>,
    clock: Arc<dyn Clock>,
    reply_limit: Option<Arc<dyn ReplyLimit>>,
    /// The latest turn per session, so a newer one can cancel an older one's subprocesses.
    latest: Mutex<HashMap<String, (u64, CancellationToken)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("soul", &self.soul.name())
            .finish_non_exhaustive()
    }
}

struct Current {
    process: Registered,
    params: Value,
    invocation_count: u32,
    previous: Option<String>,
    memory: KeyValueMemory,
}

impl Current {
    /// The same process run; the memory handle is shared, so changes stay visible here.
    fn share(&self) -> Current {
        Current {
            process: self.process,
            params: self.params.clone(),
            invocation_count: self.invocation_count,
            previous: self.previous.clone(),
            memory: self.memory.clone(),
        }
    }
}

fn cleared() -> MemoryChanges {
    MemoryChanges {
        cleared: true,
        ..MemoryChanges::default()
    }
}

impl Runtime {
    /// A runtime for `soul`, thinking with `model` and telling time by `clock`.
    pub fn new(soul: Arc<Soul>, model: Arc<dyn LanguageModel>, clock: Arc<dyn Clock>) -> Self {
        Runtime {
            soul,
            model,
            clock,
            reply_limit: None,
            latest: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The same runtime with replies shortened to what `limit` allows, as they are spoken (see
    /// [`ReplyLimit`]). Without one, replies are as long as the model makes them.
    pub fn with_reply_limit(mut self, limit: Arc<dyn ReplyLimit>) -> Self {
        self.reply_limit = Some(limit);
        self
    }

    /// The soul.
    pub fn soul(&self) -> &Arc<Soul> {
        &self.soul
    }

    fn mind(&self) -> Mind {
        Mind::new(self.model.clone(), self.clock.clone()).with_options(self.soul.chat_options())
    }

    /// Runs the integrator and the main process (with its run-now chain) for `perception`.
    /// Each reply is sent on `replies` the moment it is spoken. Starting a turn cancels the
    /// subprocesses still running for an earlier turn of the same `session`.
    ///
    /// The soul's [memory budget](crate::MemoryBudget) bounds working memory twice: the stored
    /// memory and the perception are trimmed to it before the first process runs, so a model
    /// request carries at most the budget and what this turn added; and the outcome's working
    /// memory is trimmed to it again, so the snapshot stored is bounded too.
    pub async fn run_main(
        &self,
        session: &str,
        state: SoulState,
        perception: Perception,
        replies: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<MainOutcome, TurnError> {
        self.run_main_streaming(session, state, perception, replies, None)
            .await
    }

    /// [`run_main`](Self::run_main), each reply also written to `stream` while the model writes
    /// it (where the model streams) and marked spoken when it is (see [`ReplyStream`]). Without
    /// a stream, exactly `run_main`.
    pub async fn run_main_streaming(
        &self,
        session: &str,
        state: SoulState,
        perception: Perception,
        replies: Option<mpsc::UnboundedSender<String>>,
        stream: Option<Arc<dyn ReplyStream>>,
    ) -> Result<MainOutcome, TurnError> {
        let (generation, cancel) = self.start_generation(session);
        let mind = match stream {
            Some(stream) => self.mind().with_reply_stream(stream),
            None => self.mind(),
        };
        let perception = Arc::new(perception);
        let soul_memory = KeyValueMemory::new(state.soul_memory);
        let actions = Arc::new(Mutex::new(Actions::default()));
        // Soonest first, as a store loads them. A store has completed the event the turn
        // answers; a caller keeping its own list may still hold it (a test perceiving a pending
        // event as due).
        let answered = match &perception.kind {
            PerceptionKind::Event { id, .. } => Some(*id),
            PerceptionKind::Message => None,
        };
        let pending_events: Arc<[ScheduledEvent]> = Actions::default()
            .pending_after(&state.pending_events)
            .into_iter()
            .filter(|event| Some(event.id) != answered)
            .collect();
        let pending_perceptions: Arc<[Perception]> = state.pending_perceptions.into();

        let (stored, corrected_from) = self.validated(state.process);
        let stored_memory = state
            .process_memories
            .get(&stored.name)
            .cloned()
            .unwrap_or_default();
        let mut current = Current {
            process: self
                .soul
                .registered_by_name(&stored.name)
                .unwrap_or_else(|| self.soul.registered_initial()),
            params: stored.params,
            invocation_count: stored.invocation_count,
            previous: stored.previous,
            memory: KeyValueMemory::new(stored_memory),
        };
        // A scheduled event aimed at a process runs that process once; the current one stays
        // current unless that run transitions.
        let mut aimed = self
            .aimed_process(&perception)
            .map(|(process, params)| Current {
                process,
                params,
                invocation_count: 0,
                previous: Some(current.process.name.to_owned()),
                memory: KeyValueMemory::new(
                    state
                        .process_memories
                        .get(process.name)
                        .cloned()
                        .unwrap_or_default(),
                ),
            });

        let budget = self.soul.memory_budget();
        let integrated = budget.trim(&self.soul.integrate(state.working_memory, &perception));
        let perception_memory = integrated.last().map(|m| m.id);
        let mut memory = integrated.clone();
        let mut process_memory: BTreeMap<String, MemoryChanges> = BTreeMap::new();
        let mut processes_run = Vec::new();
        let mut run_now_in_a_row = 0;

        loop {
            let is_aimed = aimed.is_some();
            let running = aimed.take().unwrap_or_else(|| current.share());
            let name = running.process.name;
            processes_run.push(name.to_owned());
            let context = ProcessContext {
                memory: memory.clone(),
                mind: mind.clone(),
                process: name,
                params: running.params.clone(),
                invocation_count: running.invocation_count,
                previous_process: running.previous.clone(),
                perception: perception.clone(),
                pending_events: pending_events.clone(),
                pending_perceptions: pending_perceptions.clone(),
                soul_memory: soul_memory.clone(),
                process_memory: running.memory.clone(),
                actions: actions.clone(),
                replies: replies.clone(),
                reply_limit: self.reply_limit.clone(),
            };
            let next =
                (running.process.run)(context)
                    .await
                    .map_err(|source| TurnError::Process {
                        process: name.to_owned(),
                        source,
                    })?;
            // A cut reply is remembered as sent before the next process runs on this memory.
            memory = with_cut_replies(
                &integrated,
                next.memory,
                &actions.lock().unwrap_or_else(PoisonError::into_inner).cut,
            );

            let Some(transition) = next.transition else {
                process_memory
                    .entry(name.to_owned())
                    .or_default()
                    .merge(running.memory.changes());
                if !is_aimed {
                    current.invocation_count += 1;
                }
                break;
            };
            // A handle names a registered process, but perhaps another soul's.
            let target = self.soul.registered(transition.process).ok_or_else(|| {
                TurnError::UnknownProcess {
                    soul: self.soul.name().to_owned(),
                    from: name.to_owned(),
                    to: transition.process.name().to_owned(),
                }
            })?;
            // Leaving a process drops its memory; so does leaving the current process by way of
            // an aimed one. The entered process starts empty even if old rows linger.
            let mut left = vec![name];
            if is_aimed {
                left.push(current.process.name);
            }
            for left in left.into_iter().chain([target.name]) {
                process_memory
                    .entry(left.to_owned())
                    .or_default()
                    .merge(cleared());
            }
            current = Current {
                process: target,
                params: transition.params,
                invocation_count: 0,
                previous: Some(name.to_owned()),
                memory: KeyValueMemory::cleared(),
            };
            if !transition.run_now {
                break;
            }
            run_now_in_a_row += 1;
            if run_now_in_a_row > RUN_NOW_LIMIT {
                processes_run.push(target.name.to_owned());
                return Err(TurnError::RunNowLimit {
                    chain: processes_run,
                });
            }
        }

        let actions = std::mem::take(&mut *actions.lock().unwrap_or_else(PoisonError::into_inner));
        let memory = budget.trim(&memory);
        let appended = appended_since(&integrated, &memory);
        let pending_events = actions.pending_after(&pending_events);
        Ok(MainOutcome {
            replies: actions.replies,
            appended,
            perception_memory,
            soul_memory: soul_memory.changes(),
            process_memory,
            process: ProcessState {
                name: current.process.name.to_owned(),
                params: current.params,
                invocation_count: current.invocation_count,
                previous: current.previous,
            },
            corrected_from,
            processes_run,
            pending_events,
            scheduled: actions.scheduled,
            cancelled_events: actions.cancelled,
            working_memory: memory,
            usage: mind.usage(),
            steps: mind.take_steps(),
            carry: Carry {
                session: session.to_owned(),
                generation,
                cancel,
                perception,
                pending_perceptions,
                soul_memory: soul_memory.snapshot(),
                process_memories: state.process_memories,
            },
        })
    }

    /// Runs the subprocesses, in the soul's order, on the main part's working memory. One that
    /// fails is logged and its changes dropped; the others go on. If a newer turn of the same
    /// session starts meanwhile, the work stops and the outcome says `cancelled`.
    ///
    /// A subprocess that returns a transition moves the main process, as in OpenSouls: the
    /// outcome's `process` is the state to store, and the next perception is answered there.
    /// It cannot run a process now (the reply is already on its way): a subprocess asking for
    /// that, or naming another soul's process, fails.
    pub async fn run_subprocesses(&self, main: &MainOutcome) -> SubprocessOutcome {
        let carry = &main.carry;
        let mind = self.mind();
        let mut outcome = SubprocessOutcome::default();
        let mut memory = main.working_memory.clone();
        let mut soul_memory = carry.soul_memory.snapshot();
        let mut main_process = main.process.name.clone();
        // The events of the subprocesses that succeeded, as one turn's actions on what the main
        // part left pending.
        let mut events = Actions::default();
        for subprocess in self.soul.registered_subprocesses() {
            let process_memory = KeyValueMemory::new(
                carry
                    .process_memories
                    .get(subprocess.name)
                    .cloned()
                    .unwrap_or_default(),
            );
            // Each subprocess works on copies, so a failure leaves no half-made change behind.
            let attempt_soul_memory = soul_memory.snapshot();
            let actions = Arc::new(Mutex::new(Actions::default()));
            let context = ProcessContext {
                memory: memory.clone(),
                mind: mind.clone(),
                process: subprocess.name,
                params: Value::Null,
                invocation_count: 0,
                previous_process: None,
                perception: carry.perception.clone(),
                pending_events: events.pending_after(&main.pending_events).into(),
                pending_perceptions: carry.pending_perceptions.clone(),
                soul_memory: attempt_soul_memory.clone(),
                process_memory: process_memory.clone(),
                actions: actions.clone(),
                replies: None,
                reply_limit: self.reply_limit.clone(),
            };
            let result = tokio::select! {
                biased;
                () = carry.cancel.cancelled() => {
                    tracing::debug!(subprocess = subprocess.name, "cancelled by a newer turn");
                    return SubprocessOutcome { cancelled: true, ..SubprocessOutcome::default() };
                }
                result = (subprocess.run)(context) => result,
            };
            let next = match result {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(subprocess = subprocess.name, %error, "subprocess failed; its changes are dropped");
                    outcome.failed.push(subprocess.name.to_owned());
                    continue;
                }
            };
            let moved = match &next.transition {
                None => None,
                Some(transition) => match self.subprocess_target(subprocess.name, transition) {
                    Some(target) => Some((target, transition.params.clone())),
                    None => {
                        outcome.failed.push(subprocess.name.to_owned());
                        continue;
                    }
                },
            };
            let cut =
                std::mem::take(&mut actions.lock().unwrap_or_else(PoisonError::into_inner).cut);
            memory = with_cut_replies(&memory, next.memory, &cut);
            outcome.soul_memory.merge(attempt_soul_memory.changes());
            soul_memory = attempt_soul_memory.snapshot();
            let changes = process_memory.changes();
            if !changes.is_empty() {
                outcome
                    .process_memory
                    .insert(subprocess.name.to_owned(), changes);
            }
            let actions =
                std::mem::take(&mut *actions.lock().unwrap_or_else(PoisonError::into_inner));
            outcome.replies.extend(actions.replies);
            for id in actions.cancelled {
                events.cancel(id, &main.pending_events);
            }
            for event in actions.scheduled {
                events.schedule(event);
            }
            if let Some((target, params)) = moved {
                // As a main process's transition: the process left and the one entered start
                // with empty process memory.
                for process in [main_process.as_str(), target.name] {
                    outcome
                        .process_memory
                        .entry(process.to_owned())
                        .or_default()
                        .merge(cleared());
                }
                outcome.process = Some(ProcessState {
                    name: target.name.to_owned(),
                    params,
                    invocation_count: 0,
                    previous: Some(main_process),
                });
                main_process = target.name.to_owned();
            }
        }
        if carry.cancel.is_cancelled() {
            return SubprocessOutcome {
                cancelled: true,
                ..SubprocessOutcome::default()
            };
        }
        self.end_generation(&carry.session, carry.generation);
        outcome.pending_events = events.pending_after(&main.pending_events);
        outcome.scheduled = events.scheduled;
        outcome.cancelled_events = events.cancelled;
        let memory = self.soul.memory_budget().trim(&memory);
        outcome.appended = appended_since(&main.working_memory, &memory);
        outcome.working_memory = Some(memory);
        outcome.usage = mind.usage();
        outcome.steps = mind.take_steps();
        outcome
    }

    /// The main process a subprocess's transition moves to; `None`, with a warning saying why,
    /// when it cannot (the subprocess then fails).
    fn subprocess_target(&self, subprocess: &str, transition: &Transition) -> Option<Registered> {
        let to = transition.process;
        if transition.run_now {
            tracing::warn!(
                subprocess,
                to = to.name(),
                "a subprocess cannot run a process now: the reply is already sent; the \
                 subprocess fails and its changes are dropped (return the transition without \
                 `run_now` to answer the next message there)"
            );
            return None;
        }
        let target = self.soul.registered(to);
        if target.is_none() {
            tracing::warn!(
                subprocess,
                to = to.name(),
                of_soul = to.soul(),
                "a subprocess transitioned to another soul's process; it fails and its changes \
                 are dropped"
            );
        }
        target
    }

    fn start_generation(&self, session: &str) -> (u64, CancellationToken) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, older)) = latest.insert(session.to_owned(), (generation, token.clone())) {
            older.cancel();
        }
        (generation, token)
    }

    fn end_generation(&self, session: &str, generation: u64) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if latest.get(session).is_some_and(|(g, _)| *g == generation) {
            latest.remove(session);
        }
    }

    /// The stored state if its process is registered; otherwise the initial process, and the
    /// name that was replaced (the seed's auto-correction).
    fn validated(&self, stored: Option<ProcessState>) -> (ProcessState, Option<String>) {
        let initial = || ProcessState {
            name: self.soul.initial_process().name().to_owned(),
            params: Value::Null,
            invocation_count: 0,
            previous: None,
        };
        match stored {
            None => (initial(), None),
            Some(state) if self.soul.process(&state.name).is_some() => (state, None),
            Some(state) => {
                tracing::warn!(
                    soul = self.soul.name(),
                    stored = %state.name,
                    "stored process is not registered; starting over in the initial process"
                );
                (initial(), Some(state.name))
            }
        }
    }

    /// The process a scheduled event is aimed at, and the params it carries for it.
    fn aimed_process(&self, perception: &Perception) -> Option<(Registered, Value)> {
        let PerceptionKind::Event {
            process: Some(name),
            params,
            ..
        } = &perception.kind
        else {
            return None;
        };
        let process = self.soul.registered_by_name(name);
        if process.is_none() {
            tracing::warn!(soul = self.soul.name(), process = %name, "event aimed at an unknown process; the current process answers it");
        }
        process.map(|process| (process, params.clone()))
    }
}

/// `after` with the replies the limit cut remembered as sent: in each memory that `before`
/// does not have, a reply quoted whole is replaced by the part of it that was sent.
fn with_cut_replies(
    before: &WorkingMemory,
    after: WorkingMemory,
    cut: &[(String, String)],
) -> WorkingMemory {
    if cut.is_empty() {
        return after;
    }
    let known: std::collections::HashSet<MemoryId> = before.iter().map(|m| m.id).collect();
    after.map(|memory| {
        let mut memory = memory.clone();
        if !known.contains(&memory.id) {
            for (said, kept) in cut {
                if memory.content.contains(said.as_str()) {
                    memory.content = memory.content.replace(said.as_str(), kept);
                }
            }
        }
        memory
    })
}

/// The memories of `after` that `before` does not have, in `after`'s order, each once: a memory
/// a process duplicated (`concat`) is one memory to store, not two rows under one id.
fn appended_since(before: &WorkingMemory, after: &WorkingMemory) -> Vec<Memory> {
    let mut known: std::collections::HashSet<MemoryId> = before.iter().map(|m| m.id).collect();
    after
        .iter()
        .filter(|m| known.insert(m.id))
        .cloned()
        .collect()
}
