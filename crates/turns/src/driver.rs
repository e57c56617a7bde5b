//! The turn loop.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use soul_engine::Clock;
use soul_engine::model::BoxFuture;
use soul_engine::process::{ReplyStream, Runtime, TurnError};
use soul_engine::retry::{Failure, RetryPolicy, Verdict, retry};
use soul_persistence::turn_log::{SubprocessRecord, TurnEnd, TurnLogLevel, TurnRecord};
use soul_persistence::{
    Address, BeginOutcome, Changes, CommitOutcome, EventOutcome, Inbound, Line, OutboxAtCommit,
    SessionId, SoulProcesses, Store, StoreError, SubprocessCommit, TurnCommit, TurnContext,
    TurnSettings,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::mapping;
use crate::record::{self, Recorder};

/// Replies a commit stored, ready to send.
#[derive(Clone)]
pub struct OutboundBatch {
    /// The session.
    pub session: SessionId,
    /// Where they go.
    pub address: Address,
    /// The line they go out from: the session's, the one the person texted.
    pub line: Line,
    /// The stored outbound messages (their ids and texts), in order.
    pub messages: Vec<(Uuid, String)>,
    /// The session's outbox as the commit that stored them found it; `None` for replies found
    /// pending later (whose sender has to ask the store).
    pub at_commit: Option<OutboxAtCommit>,
}

impl fmt::Debug for OutboundBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundBatch")
            .field("session", &self.session)
            .field("address", &self.address)
            .field("messages", &self.messages.len())
            .finish()
    }
}

/// Where committed replies go (the gateway sends them through Twilio). Called after each commit,
/// before the subprocesses run.
pub trait Delivery: Send + Sync {
    /// Hands the committed replies over for sending. Should not wait for the sending itself:
    /// the subprocesses wait for it.
    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()>;

    /// Where the replies of the turns run for this delivery go while the model writes them,
    /// before any commit (see [`ReplyStream`]): a channel that shows replies as they arrive (the
    /// browser chat) gives one. `None` (the default, and SMS) asks the model for whole answers.
    fn reply_stream(&self) -> Option<Arc<dyn ReplyStream>> {
        None
    }
}

/// A delivery that sends nothing: for callers that read replies from the store or the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelivery;

impl Delivery for NoDelivery {
    fn deliver(&self, _batch: OutboundBatch) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What happened to an inbound message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Handled {
    /// Seen before; nothing was done.
    Duplicate,
    /// Stored; the worker holding the session will answer it.
    Queued,
    /// Answered, together with any messages that queued up meanwhile, in order.
    Answered(Vec<TurnReport>),
}

/// One committed turn.
#[derive(Debug, Clone)]
pub struct TurnReport {
    /// The session.
    pub session: SessionId,
    /// The inbound message answered.
    pub inbound: Uuid,
    /// The replies, in order (the texts, for callers without a delivery).
    pub replies: Vec<String>,
    /// The stored outbound messages, in reply order.
    pub outbound: Vec<Uuid>,
    /// The processes that ran.
    pub processes_run: Vec<String>,
    /// The process the session is in now (where a subprocess moved it, when the subprocesses'
    /// changes were stored).
    pub process: String,
    /// The engine failed, or the store refused what the turn produced, and the fallback reply
    /// was sent instead; nothing else was stored.
    pub fell_back: bool,
    /// The turn had been started its driver's [maximum](TurnDriver::with_max_attempts) number of
    /// times without being stored and was given
    /// up without the model: the fallback reply was sent, or nothing if the store refused even
    /// that. Nothing else was stored, and the messages behind it go on.
    pub given_up: bool,
    /// Whether the subprocesses' changes were stored (`false`: none ran, one was cancelled by a
    /// newer message, or the store refused them as stale).
    pub subprocesses_applied: bool,
}

/// Why a turn could not be run or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The store failed; the message is stored and its turn will be re-run after the lease
    /// expires (and given up once it has been started [`TurnDriver::with_max_attempts`] times).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl DriverError {
    /// What kind of error this is, in words fit for a log line: unlike its `Display`, never a
    /// database's message, which may quote the values it refused.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverError::Store(error) => error.kind(),
        }
    }
}

/// Runs the turns of one soul, or of several, against one store.
pub struct TurnDriver {
    store: Arc<dyn Store>,
    /// The default soul: new conversations get it unless their message names another, and a
    /// conversation whose soul is not deployed here goes on in it.
    runtime: Arc<Runtime>,
    /// The other deployed souls, by name ([`TurnDriver::with_soul`]).
    souls: BTreeMap<String, Arc<Runtime>>,
    clock: Arc<dyn Clock>,
    settings: TurnSettings,
    fallback_reply: String,
    max_attempts: NonZeroU32,
    turn_log: TurnLogLevel,
}

impl fmt::Debug for TurnDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnDriver")
            .field("store", &self.store)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// How a turn keeps trying to store its commit while the store is unreachable: for 15 s, since a
/// database restart takes seconds, and within them the model's answer is kept and sent instead
/// of the turn waiting for its lease to expire and calling the model again; tries 50 ms apart
/// at first, doubling to at most 1 s, each wait drawn at random below that (full jitter) so that
/// the turns an outage stopped together do not all come back at once.
fn commit_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_base_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_budget(Duration::from_secs(15))
}

/// How many times a message's turn is started before it is given up, unless
/// [`TurnDriver::with_max_attempts`] says otherwise: a turn whose worker dies each time (or whose
/// commit the store refuses even as the fallback reply) would otherwise be re-run at each expiry
/// of its lease for good, and the person's next messages never started.
pub const DEFAULT_MAX_TURN_ATTEMPTS: NonZeroU32 = NonZeroU32::new(3).expect("not zero");

/// What the person gets when the engine cannot answer (the model is down past its retries).
pub const DEFAULT_FALLBACK_REPLY: &str =
    "Sorry, I can't reply properly right now. Please try again in a little while.";

impl TurnDriver {
    /// A driver for `runtime`'s soul on `store`, with the seed's default settings.
    pub fn new(store: Arc<dyn Store>, runtime: Arc<Runtime>, clock: Arc<dyn Clock>) -> Self {
        let settings = mapping::turn_settings(runtime.soul());
        TurnDriver {
            store,
            runtime,
            souls: BTreeMap::new(),
            clock,
            settings,
            fallback_reply: DEFAULT_FALLBACK_REPLY.into(),
            max_attempts: DEFAULT_MAX_TURN_ATTEMPTS,
            turn_log: TurnLogLevel::default(),
        }
    }

    /// The same driver keeping turn records at `level` (compact unless set).
    pub fn with_turn_log(mut self, level: TurnLogLevel) -> Self {
        self.turn_log = level;
        self
    }

    /// The same driver with other settings (session timeout, lease, history window); the
    /// souls added by [`with_soul`](Self::with_soul) stay.
    pub fn with_settings(mut self, settings: TurnSettings) -> Self {
        let souls = std::mem::take(&mut self.settings.souls);
        self.settings = settings;
        self.settings.souls.extend(souls);
        self
    }

    /// The same driver running `runtime`'s soul too, for the conversations assigned to it
    /// ([`Inbound::persona`] at their first contact); the first soul stays the default.
    pub fn with_soul(mut self, runtime: Arc<Runtime>) -> Self {
        let soul = mapping::turn_settings(runtime.soul());
        self.settings.souls.insert(
            soul.persona.clone(),
            SoulProcesses {
                processes: soul.processes,
                subprocesses: soul.subprocesses,
            },
        );
        self.souls.insert(soul.persona, runtime);
        self
    }

    /// The runtime and settings of a conversation assigned to `persona`; the default soul's,
    /// with a warning, for a soul not deployed here (the store has started its turn in the
    /// default soul's initial process, as it does for an unknown stored process).
    pub(crate) fn soul_for(&self, persona: &str) -> (&Arc<Runtime>, Cow<'_, TurnSettings>) {
        match self.souls.get(persona) {
            Some(runtime) if persona != self.settings.persona => {
                (runtime, self.settings.for_persona(persona))
            }
            _ => {
                if persona != self.settings.persona {
                    tracing::warn!(
                        persona,
                        default = %self.settings.persona,
                        "the conversation's soul is not deployed; the default soul answers"
                    );
                }
                (&self.runtime, Cow::Borrowed(&self.settings))
            }
        }
    }

    /// The same driver with another fallback reply.
    pub fn with_fallback_reply(mut self, reply: impl Into<String>) -> Self {
        self.fallback_reply = reply.into();
        self
    }

    /// The same driver giving a message's turn up once it has been started `max_attempts` times
    /// without being stored (instead of [`DEFAULT_MAX_TURN_ATTEMPTS`]).
    pub fn with_max_attempts(mut self, max_attempts: NonZeroU32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The settings turns run with.
    pub fn settings(&self) -> &TurnSettings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The reply sent when a turn fails.
    pub fn fallback_reply(&self) -> &str {
        &self.fallback_reply
    }

    /// Stores `inbound` and, unless it is a duplicate or queued behind a running turn, answers it
    /// and every message that queues up for the same person meanwhile.
    pub async fn handle(
        &self,
        inbound: &Inbound,
        delivery: &dyn Delivery,
    ) -> Result<Handled, DriverError> {
        match self.begin(inbound).await? {
            BeginOutcome::Duplicate { .. } => Ok(Handled::Duplicate),
            BeginOutcome::Started(context) => {
                self.run(*context, delivery).await.map(Handled::Answered)
            }
            _ => Ok(Handled::Queued),
        }
    }

    /// Stores `inbound` durably and starts its turn if it can (one store round trip). A webhook
    /// acknowledges after this and runs the started turn with [`run`](Self::run) afterwards.
    pub async fn begin(&self, inbound: &Inbound) -> Result<BeginOutcome, StoreError> {
        self.store
            .begin_turn(inbound, &self.settings, self.clock.now())
            .await
    }

    /// Stores `inbound` durably in its session's queue without starting its turn (one short
    /// store round trip): what a webhook is acknowledged after. [`BeginOutcome::Waiting`] means
    /// nobody holds the session: start it with [`resume`](Self::resume).
    pub async fn enqueue(&self, inbound: &Inbound) -> Result<BeginOutcome, StoreError> {
        self.store
            .enqueue_turn(inbound, &self.settings, self.clock.now())
            .await
    }

    /// Takes over a session nobody holds (its worker died and the lease expired, or its messages
    /// were only enqueued) and answers what waits in it.
    pub async fn resume(
        &self,
        session: SessionId,
        delivery: &dyn Delivery,
    ) -> Result<Vec<TurnReport>, DriverError> {
        match self
            .store
            .resume_turn(session, &self.settings, self.clock.now())
            .await?
        {
            Some(context) => self.run(*context, delivery).await,
            None => Ok(Vec::new()),
        }
    }

    /// Fires up to `limit` due scheduled events: claims them, then one by one begins the
    /// event's turn (one store round trip, which also completes the event) and, if it started
    /// here, runs it with the messages that queue up behind it through [`run`](Self::run).
    /// Returns the reports of the turns run here, in order: each started event's turn, followed
    /// by those of the messages its commit handed over. An event whose person is busy is queued
    /// and run (and reported) by the worker holding the session; duplicates, opted-out people
    /// and events moved or cancelled since their claim run no turn.
    ///
    /// Only events of the kind this driver schedules are fired; any other kind is left to its
    /// claim's expiry, for whichever component handles it. A store error stops the round; the
    /// events not yet begun are handed out again when their claim expires.
    pub async fn fire_due_events(
        &self,
        limit: u32,
        delivery: &dyn Delivery,
    ) -> Result<Vec<TurnReport>, DriverError> {
        // Each turn begins right before it runs, so a started turn never waits out its lease
        // behind the others. A claim that lapses while earlier turns run only lets another
        // worker fire that event first; this worker's begin then answers `Duplicate`.
        let due = self
            .store
            .claim_due_events(self.clock.now(), limit, self.settings.lease_for)
            .await?;
        let mut reports = Vec::new();
        for event in &due {
            if event.kind != mapping::PERCEPTION_EVENT {
                tracing::debug!(
                    session = %event.session_id,
                    kind = %event.kind,
                    "not an engine event; left alone"
                );
                continue;
            }
            match self
                .store
                .begin_event_turn(event, &self.settings, self.clock.now())
                .await?
            {
                EventOutcome::Started(context) => {
                    reports.extend(self.run(*context, delivery).await?);
                }
                outcome => {
                    tracing::debug!(session = %event.session_id, ?outcome, "event turn not run here")
                }
            }
        }
        Ok(reports)
    }

    /// Runs a started turn and then each queued message the commits hand over, in order.
    pub async fn run(
        &self,
        mut context: TurnContext,
        delivery: &dyn Delivery,
    ) -> Result<Vec<TurnReport>, DriverError> {
        let mut reports = Vec::new();
        loop {
            let (report, next) = self.run_one(&context, delivery).await?;
            reports.push(report);
            match next {
                Some(next) => context = next,
                None => return Ok(reports),
            }
        }
    }

    /// Stores `commit`, trying again while the store is unreachable, within [`commit_retry`].
    /// Repeating a commit that did apply (its answer was lost) is safe: the store refuses it as
    /// [`StoreError::LeaseLost`], the replies it stored are sent by the outbox sweeper, and a
    /// queued message it handed over runs once that lease expires.
    async fn commit(
        &self,
        commit: &TurnCommit,
        settings: &TurnSettings,
    ) -> Result<CommitOutcome, StoreError> {
        let policy = commit_retry();
        let attempts = retry(&policy, "storing a turn", |_| async {
            self.store
                .commit_turn(commit, settings, self.clock.now())
                .await
                .map_err(Unstored)
        });
        let span = tracing::info_span!("commit", session = %commit.session_id);
        attempts
            .instrument(span)
            .await
            .map_err(|error| error.into_last().0)
    }

    async fn run_one(
        &self,
        context: &TurnContext,
        delivery: &dyn Delivery,
    ) -> Result<(TurnReport, Option<TurnContext>), DriverError> {
        let (runtime, settings) = self.soul_for(&context.session.persona);
        let settings = &*settings;
        let soul = runtime.soul();
        let session_key = context.session.id.to_string();
        let processes = &settings.processes;
        let mut recorder = Recorder::new(context);
        let mut commit = TurnCommit::new(context);
        commit.record.session_reset = context.session_reset;
        if context.session.opted_out {
            // Stored, never answered, and no model bill: they asked us to stop.
            commit.record.end = TurnEnd::OptedOut;
            commit.record.changes = recorder.replies_only();
            let committed = self.commit(&commit, settings).await?;
            let report = TurnReport {
                session: context.session.id,
                inbound: context.inbound.id,
                replies: Vec::new(),
                outbound: Vec::new(),
                processes_run: Vec::new(),
                process: context.process.name.clone(),
                fell_back: false,
                given_up: false,
                subprocesses_applied: false,
            };
            return Ok((report, committed.next.map(|next| *next)));
        }
        let given_up = context.attempt > self.max_attempts.get();
        let (mut main, mut fell_back) = if given_up {
            // Logged without the message: the session and the count say which turn it was.
            tracing::error!(
                session = %context.session.id,
                attempt = context.attempt,
                "turn given up after {} starts that stored nothing; sending \
                 the fallback reply without the model",
                self.max_attempts
            );
            commit.replies = self.fallback_replies();
            commit.record.end = TurnEnd::GivenUp;
            commit.record.changes = recorder.replies_only();
            (None, false)
        } else {
            let state = mapping::soul_state(soul, context);
            let main = runtime
                .run_main_streaming(
                    &session_key,
                    state,
                    mapping::perception(context),
                    None,
                    delivery.reply_stream(),
                )
                .await;
            match main {
                Ok(mut main) => {
                    commit.replies = mapping::reply_memories(&main.replies, self.clock.now());
                    commit.changes = mapping::main_changes(context, &main);
                    commit.record.changes = recorder.main(&commit.changes, processes);
                    commit.record.steps =
                        record::step_logs(std::mem::take(&mut main.steps), self.turn_log);
                    if main.processes_run != [context.process.name.as_str()] {
                        commit.record.processes_run.clone_from(&main.processes_run);
                    }
                    (Some(main), false)
                }
                Err(error) => {
                    // The person still gets an answer; nothing else of the failed turn is
                    // stored, so the state is exactly as before it.
                    log_turn_error(context.session.id, &error);
                    commit.replies = self.fallback_replies();
                    commit.record.end = TurnEnd::Fallback {
                        error: record::error_kind(&error).to_owned(),
                    };
                    commit.record.changes = recorder.replies_only();
                    (None, true)
                }
            }
        };
        let committed = match self.commit(&commit, settings).await {
            Ok(committed) => committed,
            // Refused, not unreachable: the same commit would be refused again at every re-run.
            // The turn stores less instead: the fallback reply alone, as when the engine fails;
            // a turn given up, not even that.
            Err(error) if is_refused(&error) && (main.is_some() || given_up) => {
                if main.take().is_some() {
                    tracing::warn!(
                        session = %context.session.id,
                        error = error.kind(),
                        "the store refused the turn; sending the fallback reply instead"
                    );
                    commit.replies = self.fallback_replies();
                    commit.changes = Changes::default();
                    commit.record = TurnRecord {
                        end: TurnEnd::Fallback {
                            error: format!("store:{}", error.kind()),
                        },
                        session_reset: context.session_reset,
                        changes: recorder.replies_only(),
                        ..TurnRecord::default()
                    };
                    fell_back = true;
                } else {
                    tracing::error!(
                        session = %context.session.id,
                        error = error.kind(),
                        "the store refused the fallback reply of a turn given up; closing it \
                         without a reply"
                    );
                    commit.replies.clear();
                }
                self.commit(&commit, settings).await?
            }
            Err(error) => return Err(error.into()),
        };
        if !committed.outbound.is_empty() {
            let messages = committed
                .outbound
                .iter()
                .copied()
                .zip(commit.replies.iter().map(|m| m.content.clone()))
                .collect();
            delivery
                .deliver(OutboundBatch {
                    session: context.session.id,
                    address: context.session.address.clone(),
                    line: context.session.line.clone(),
                    messages,
                    at_commit: Some(committed.outbox),
                })
                .await;
        }

        let mut report = TurnReport {
            session: context.session.id,
            inbound: context.inbound.id,
            replies: commit.replies.iter().map(|m| m.content.clone()).collect(),
            outbound: committed.outbound,
            processes_run: main
                .as_ref()
                .map(|m| m.processes_run.clone())
                .unwrap_or_default(),
            process: main
                .as_ref()
                .map_or_else(|| context.process.name.clone(), |m| m.process.name.clone()),
            fell_back,
            given_up,
            subprocesses_applied: false,
        };
        let next = committed.next.map(|next| *next);
        // A queued message already began the next turn: it cancels this turn's subprocesses,
        // as a newer message does in OpenSouls (and their commit would be refused as stale).
        if let (Some(main), None) = (&main, &next)
            && let Some(applied) = self
                .run_subprocesses(runtime, settings, context, main, recorder)
                .await?
        {
            report.subprocesses_applied = true;
            if let Some(moved) = applied.process {
                report.process = moved.name;
            }
        }
        Ok((report, next))
    }

    /// The fallback reply as the turn's one reply.
    fn fallback_replies(&self) -> Vec<soul_engine::Memory> {
        mapping::reply_memories(std::slice::from_ref(&self.fallback_reply), self.clock.now())
    }

    /// Runs the subprocesses and commits their changes; their outcome when the store applied it.
    async fn run_subprocesses(
        &self,
        runtime: &Runtime,
        settings: &TurnSettings,
        context: &TurnContext,
        main: &soul_engine::process::MainOutcome,
        mut recorder: Recorder,
    ) -> Result<Option<soul_engine::process::SubprocessOutcome>, DriverError> {
        if runtime.soul().subprocesses().is_empty() {
            return Ok(None);
        }
        let outcome = runtime.run_subprocesses(main).await;
        if outcome.cancelled {
            return Ok(None);
        }
        if !outcome.replies.is_empty() {
            tracing::warn!(
                session = %context.session.id,
                count = outcome.replies.len(),
                "subprocess replies are not delivered over SMS; speak from the main process"
            );
        }
        let mut outcome = outcome;
        let changes = mapping::subprocess_changes(context, main, &outcome);
        let record = SubprocessRecord {
            failed: outcome.failed.clone(),
            steps: record::step_logs(std::mem::take(&mut outcome.steps), self.turn_log),
            changes: recorder.subprocesses(&changes, &settings.processes),
        };
        let commit = SubprocessCommit {
            session_id: context.session.id,
            version: context.version(),
            inbound_id: context.inbound.id,
            changes,
            record,
        };
        let applied = self
            .store
            .commit_subprocess(&commit, settings, self.clock.now())
            .await?;
        Ok(matches!(applied, soul_persistence::SubprocessOutcome::Applied).then_some(outcome))
    }
}

/// A store error as the commit's retry sees it: worth another try when the store was unreachable
/// ([`StoreError::is_retryable`]), and logged by its kind, never by its text, which can quote the
/// values a database refused.
struct Unstored(StoreError);

impl fmt::Display for Unstored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.kind())
    }
}

impl Failure for Unstored {
    fn verdict(&self) -> Verdict {
        if self.0.is_retryable() {
            Verdict::Retry { after: None }
        } else {
            Verdict::Final
        }
    }
}

/// The store refused the commit (a database error, invalid input): not unreachable, where trying
/// again may succeed, and not taken over, where another worker runs the turn.
fn is_refused(error: &StoreError) -> bool {
    !error.is_retryable() && !matches!(error, StoreError::LeaseLost)
}

fn log_turn_error(session: SessionId, error: &TurnError) {
    // The error names processes and steps, never what the person wrote.
    tracing::warn!(%session, %error, "turn failed; sending the fallback reply");
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use soul_engine::retry::RetryError;
    use tokio::time::Instant;

    use super::*;

    /// What an unreachable store's error is to the retry: worth another try, at no set time.
    struct Unreachable;

    impl fmt::Display for Unreachable {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("store unavailable")
        }
    }

    impl Failure for Unreachable {
        fn verdict(&self) -> Verdict {
            Verdict::Retry { after: None }
        }
    }

    /// The longest wait before retry `retry` (1 for the second try) the commit's policy allows.
    fn ceiling(retry: u32) -> Duration {
        Duration::from_millis(50)
            .saturating_mul(2u32.saturating_pow(retry - 1))
            .min(Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn commit_retries_are_jittered_and_bounded_by_their_policy() {
        let tries = Mutex::new(Vec::new());
        let result: Result<(), _> = retry(&commit_retry(), "storing a turn", |_| {
            tries.lock().expect("not poisoned").push(Instant::now());
            async { Err(Unreachable) }
        })
        .await;
        let tries = tries.into_inner().expect("not poisoned");
        match result {
            Err(RetryError::Exhausted { attempts, .. }) => {
                assert_eq!(attempts as usize, tries.len());
            }
            Err(RetryError::Final { .. }) => panic!("an unreachable store's error is retried"),
            Ok(()) => unreachable!("every try failed"),
        }
        // Paused time moves only by the waits, on tokio's timer, which fires on whole
        // milliseconds: a wait may end up to 1 ms after the delay drawn.
        let tick = Duration::from_millis(1);
        let waits: Vec<(u32, Duration)> = (1..)
            .zip(tries.windows(2).map(|pair| pair[1] - pair[0]))
            .collect();
        for &(retry, wait) in &waits {
            assert!(
                wait <= ceiling(retry) + tick,
                "retry {retry}: waited {wait:?}, more than {:?}",
                ceiling(retry)
            );
        }
        // Drawn below the ceiling, not the ceiling itself: without jitter every wait is it.
        let below = waits
            .iter()
            .filter(|&&(retry, wait)| wait + tick < ceiling(retry))
            .count();
        assert!(
            below * 2 > waits.len(),
            "only {below} of {} waits drawn below their ceiling: {waits:?}",
            waits.len()
        );
        // The tries go on until the next wait would not fit in the 15 s; a wait is at most 1 s.
        let spent = tries[tries.len() - 1] - tries[0];
        assert!(
            spent > Duration::from_secs(14) && spent <= Duration::from_secs(15) + tick,
            "tried for {spent:?}"
        );
    }
}
