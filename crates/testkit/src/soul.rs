//! A soul under test, in a few lines: [`TestSoul`] loads one soul (and checks only that soul, so
//! a mistake in another soul of the same test binary does not break its tests), puts it in a
//! given process with given memories, sends it messages with the model's answers scripted on the
//! OpenAI double, and shows what each message did ([`Turn`]): the replies, the process the soul
//! is in afterwards, and what it remembered.
//!
//! ```
//! # soul_engine::soul! { name: "pebble", persona: &["You are Pebble."], initial_process: CHAT }
//! # const CHAT: soul_engine::process::MentalProcess =
//! #     soul_engine::mental_process!(soul = "pebble", name = "chat", chat);
//! # async fn chat(cx: soul_engine::process::ProcessContext) -> soul_engine::process::ProcessResult {
//! #     let (memory, said) = cx.mind().run(soul_engine::step::external_dialog("Answer."), cx.memory()).await?;
//! #     cx.speak(said);
//! #     Ok(soul_engine::process::Next::stay(memory))
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use soul_testkit::soul::TestSoul;
//!
//! let mut pebble = TestSoul::start("pebble").await;
//! pebble.answers(["Pebble said: \"Hello there.\""]);
//! let turn = pebble.send("hi").await;
//! assert_eq!(turn.replies, ["Hello there."]);
//! assert_eq!(turn.process, "chat");
//! # }
//! ```
//!
//! The model is the real OpenAI client talking HTTP to [`OpenAiDouble`], without retries: a
//! step the test did not script an answer for fails at once.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    EventId, MainOutcome, MemoryChanges, MentalProcess, Perception, ProcessState, Registry,
    Runtime, ScheduledEvent, SoulState, SubprocessOutcome, TurnError,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::{Clock, Memory, WorkingMemory};

use crate::openai::OpenAiDouble;

/// How far the clock moves between two messages.
const BETWEEN_MESSAGES: Duration = Duration::minutes(1);

/// A clock the test sets: it starts at noon UTC on 5 January 2026 and moves only when told.
#[derive(Debug)]
pub struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    /// A clock standing at `now`.
    pub fn at(now: DateTime<Utc>) -> Self {
        TestClock(Mutex::new(now))
    }

    fn start() -> Self {
        // A fixed, valid date: `single` cannot fail for UTC.
        let noon = Utc.with_ymd_and_hms(2026, 1, 5, 12, 0, 0).single();
        TestClock::at(noon.unwrap_or(DateTime::UNIX_EPOCH))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One soul under test, and what a store would keep of it between messages.
pub struct TestSoul {
    double: OpenAiDouble,
    runtime: Runtime,
    clock: Arc<TestClock>,
    state: SoulState,
}

impl fmt::Debug for TestSoul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSoul")
            .field("soul", &self.runtime.soul().name())
            .field("process", &self.state.process)
            .finish_non_exhaustive()
    }
}

impl TestSoul {
    /// Soul `name` meeting someone for the first time, in its initial process.
    ///
    /// # Panics
    /// When no soul of that name is registered, or it is inconsistent (the message lists every
    /// problem, as `Registry::load` would at start-up).
    pub async fn start(name: &str) -> TestSoul {
        let soul = Registry::load_soul(name).unwrap_or_else(|error| panic!("{error}"));
        let double = OpenAiDouble::start().await;
        let config = OpenAiConfig::new(double.base_url(), "sk-test", "test-model")
            .with_retry(RetryPolicy::no_retries());
        let model =
            OpenAiModel::new(config).unwrap_or_else(|error| panic!("the OpenAI client: {error}"));
        let clock = Arc::new(TestClock::start());
        let state = soul.new_state();
        TestSoul {
            double,
            runtime: Runtime::new(soul, Arc::new(model), clock.clone()),
            clock,
            state,
        }
    }

    /// The soul in `process` (its first run there: invocation count 0, no params), as if an
    /// earlier message had moved it there.
    pub fn in_process(mut self, process: MentalProcess) -> Self {
        self.state.process = Some(ProcessState {
            name: process.name().to_owned(),
            params: Value::Null,
            invocation_count: 0,
            previous: None,
        });
        self
    }

    /// The current process entered with `params` (what `cx.params()` reads).
    pub fn with_params(mut self, params: Value) -> Self {
        let initial = self.runtime.soul().initial_process();
        let process = self.state.process.get_or_insert_with(|| ProcessState {
            name: initial.name().to_owned(),
            params: Value::Null,
            invocation_count: 0,
            previous: None,
        });
        process.params = params;
        self
    }

    /// `memories` in working memory, after what is there, as earlier messages left them (the
    /// persona is added by the integrator, as in every turn).
    pub fn with_memories(mut self, memories: impl IntoIterator<Item = Memory>) -> Self {
        self.state.working_memory = memories
            .into_iter()
            .fold(self.state.working_memory, |memory, m| memory.with_memory(m));
        self
    }

    /// Soul memory `key` holding `value`.
    ///
    /// # Panics
    /// When `value` cannot be represented as JSON.
    pub fn with_soul_memory(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value)
            .unwrap_or_else(|error| panic!("soul memory `{key}`: {error}"));
        self.state.soul_memory.insert(key.to_owned(), value);
        self
    }

    /// `events` scheduled by earlier turns and not yet due: what `cx.pending_events()` lists.
    /// Each turn then moves, cancels and adds to them as a store would, and drops the one a
    /// turn answers ([`Turn::pending_events`]).
    pub fn with_pending_events(mut self, events: impl IntoIterator<Item = ScheduledEvent>) -> Self {
        self.state.pending_events.extend(events);
        self
    }

    /// `perceptions` waiting behind the next one the soul perceives, oldest first: what
    /// `cx.pending_perceptions()` shows that turn. Only that turn: each turn's queue is the
    /// test's to say (send the waiting messages afterwards to answer them).
    pub fn waiting(&mut self, perceptions: impl IntoIterator<Item = Perception>) -> &mut Self {
        self.state.pending_perceptions = perceptions.into_iter().collect();
        self
    }

    /// Scripts the model's next answers, in the order the soul will ask (the main process's
    /// steps, then the subprocesses'). A structured step's answer is its JSON text.
    pub fn answers<A: Into<String>>(&self, answers: impl IntoIterator<Item = A>) -> &Self {
        for answer in answers {
            self.double.push_content(answer);
        }
        self
    }

    /// The person sends `text`, a minute after the previous message: the whole turn runs, main
    /// process then subprocesses, and its outcome is kept for the next message.
    ///
    /// # Panics
    /// When the turn fails or a subprocess fails (both would be silent in production: a
    /// fallback reply, a warning), so that a test sees them; [`try_perceive`](Self::try_perceive)
    /// returns them instead.
    pub async fn send(&mut self, text: &str) -> Turn {
        self.clock.advance(BETWEEN_MESSAGES);
        self.perceive(Perception::message(text, self.clock.now()))
            .await
    }

    /// The soul perceives `perception` (a message, a scheduled event coming due), as
    /// [`send`](Self::send) does.
    ///
    /// # Panics
    /// As [`send`](Self::send).
    pub async fn perceive(&mut self, perception: Perception) -> Turn {
        let turn = self
            .try_perceive(perception)
            .await
            .unwrap_or_else(|error| panic!("the turn failed: {error}"));
        assert!(
            turn.failed_subprocesses.is_empty(),
            "subprocesses failed (their changes were dropped; the log says why): {:?}",
            turn.failed_subprocesses
        );
        turn
    }

    /// The soul perceives `perception`; the turn's outcome is kept for the next one unless the
    /// turn failed, and returned whatever became of the subprocesses.
    pub async fn try_perceive(&mut self, perception: Perception) -> Result<Turn, TurnError> {
        let state = self.state.clone();
        self.state.pending_perceptions.clear();
        let main = self
            .runtime
            .run_main("test-session", state, perception, None)
            .await?;
        self.state.apply_main(&main);
        let subprocesses = self.runtime.run_subprocesses(&main).await;
        self.state.apply_subprocesses(&subprocesses);
        Ok(Turn::new(main, subprocesses))
    }

    /// What a store would hold now: process, soul and process memory, working memory, pending
    /// events.
    pub fn state(&self) -> &SoulState {
        &self.state
    }

    /// The model double: requests it received, errors to script.
    pub fn model(&self) -> &OpenAiDouble {
        &self.double
    }

    /// The clock every turn reads.
    pub fn clock(&self) -> &TestClock {
        &self.clock
    }
}

/// What one perception did, main process and subprocesses together.
#[derive(Debug)]
#[non_exhaustive]
pub struct Turn {
    /// The replies the main process spoke, in order.
    pub replies: Vec<String>,
    /// The process the soul is in afterwards (where a subprocess moved it, if one did).
    pub process: String,
    /// The main processes that ran, in order.
    pub processes_run: Vec<String>,
    /// The memories the turn added to working memory (besides the perception's), main process
    /// first.
    pub memories: Vec<Memory>,
    /// Soul memory changes.
    pub soul_memory: MemoryChanges,
    /// Process memory changes by process name.
    pub process_memory: BTreeMap<String, MemoryChanges>,
    /// Events scheduled.
    pub scheduled: Vec<ScheduledEvent>,
    /// Events cancelled.
    pub cancelled_events: Vec<EventId>,
    /// The events pending after the turn (scheduled, moved and cancelled as a store would),
    /// soonest first.
    pub pending_events: Vec<ScheduledEvent>,
    /// Subprocesses that failed (their changes are dropped).
    pub failed_subprocesses: Vec<String>,
    /// Working memory after the turn.
    pub working_memory: WorkingMemory,
    /// The main part's outcome, whole.
    pub main: MainOutcome,
    /// The subprocesses' outcome, whole.
    pub subprocesses: SubprocessOutcome,
}

impl Turn {
    fn new(main: MainOutcome, subprocesses: SubprocessOutcome) -> Turn {
        let mut soul_memory = main.soul_memory.clone();
        soul_memory.merge(subprocesses.soul_memory.clone());
        let mut process_memory = main.process_memory.clone();
        for (process, changes) in &subprocesses.process_memory {
            process_memory
                .entry(process.clone())
                .or_default()
                .merge(changes.clone());
        }
        let process = subprocesses
            .process
            .as_ref()
            .unwrap_or(&main.process)
            .name
            .clone();
        Turn {
            replies: main.replies.clone(),
            process,
            processes_run: main.processes_run.clone(),
            memories: main
                .appended
                .iter()
                .chain(&subprocesses.appended)
                .cloned()
                .collect(),
            soul_memory,
            process_memory,
            scheduled: main
                .scheduled
                .iter()
                .chain(&subprocesses.scheduled)
                .cloned()
                .collect(),
            cancelled_events: main
                .cancelled_events
                .iter()
                .chain(&subprocesses.cancelled_events)
                .copied()
                .collect(),
            pending_events: if subprocesses.cancelled {
                main.pending_events.clone()
            } else {
                subprocesses.pending_events.clone()
            },
            failed_subprocesses: subprocesses.failed.clone(),
            working_memory: subprocesses
                .working_memory
                .clone()
                .unwrap_or_else(|| main.working_memory.clone()),
            main,
            subprocesses,
        }
    }
}
