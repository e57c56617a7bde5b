//! A turn's record for the turn log: built from the state the turn started on and the change
//! sets the driver commits, so that each commit stores what it changed and what undoes it.

use soul_engine::process::TurnError;
use soul_engine::step::StepRecord;
use soul_persistence::turn_log::{
    ChangeLog, ClearedState, EventChange, SessionState, StepDetail, StepLog, TurnLogLevel,
    answered_event,
};
use soul_persistence::{Changes, Processes, TurnContext};

/// The state a turn's commits change, as they are made: what each change log's "before" is read
/// from.
pub(crate) struct Recorder {
    state: SessionState,
    answered: Option<EventChange>,
    cleared: Option<ClearedState>,
}

impl Recorder {
    /// The state `context`'s turn starts on.
    pub(crate) fn new(context: &TurnContext) -> Self {
        Recorder {
            cleared: context.cleared.clone(),
            ..Recorder::on(SessionState::of_turn(context), answered_event(context))
        }
    }

    /// A turn starting on `state`, answering the event `answered` (if it answers one).
    pub(crate) fn on(state: SessionState, answered: Option<EventChange>) -> Self {
        Recorder {
            state,
            answered,
            cleared: None,
        }
    }

    /// The change log of the turn's own commit: `changes`, the event the turn answers (its
    /// begin completed it; undoing the turn schedules it again) and what the session timeout
    /// cleared before it.
    pub(crate) fn main(&mut self, changes: &Changes, processes: &Processes) -> ChangeLog {
        let mut log = self.state.apply(changes, processes);
        log.cleared.clone_from(&self.cleared);
        if let Some(answered) = &self.answered {
            match log.events.iter_mut().find(|e| e.key == answered.key) {
                // The turn scheduled the answered event's key again: before it, the event was
                // the answered one (`apply` saw none, the begin having completed it).
                Some(change) => change.before.clone_from(&answered.before),
                None => log.events.push(answered.clone()),
            }
        }
        log
    }

    /// The change log of a commit that stores nothing but replies (a fallback, a turn given up,
    /// an opted-out person's message): the event the turn answers, if it answers one, and what
    /// the session timeout cleared before it.
    pub(crate) fn replies_only(&self) -> ChangeLog {
        ChangeLog {
            events: self.answered.iter().cloned().collect(),
            cleared: self.cleared.clone(),
            ..ChangeLog::default()
        }
    }

    /// The change log of the subprocesses' commit, after the turn's own.
    pub(crate) fn subprocesses(&mut self, changes: &Changes, processes: &Processes) -> ChangeLog {
        self.state.apply(changes, processes)
    }
}

/// The steps as the record keeps them at `level`.
pub(crate) fn step_logs(steps: Vec<StepRecord>, level: TurnLogLevel) -> Vec<StepLog> {
    steps
        .into_iter()
        .map(|step| StepLog {
            structured: step.structured,
            duration_ms: step.duration_ms,
            tokens: [step.usage.prompt_tokens, step.usage.completion_tokens],
            answer: step.answers.last().cloned().unwrap_or_default(),
            full: (level == TurnLogLevel::Full).then(|| StepDetail {
                request: serde_json::to_value(&step.request).unwrap_or_default(),
                answers: step.answers,
            }),
            name: step.name,
        })
        .collect()
}

/// A failed turn's error, by kind (never its text, which may quote the model or the person).
pub(crate) fn error_kind(error: &TurnError) -> &'static str {
    match error {
        TurnError::Process { .. } => "process",
        TurnError::UnknownProcess { .. } => "unknown_process",
        TurnError::RunNowLimit { .. } => "run_now_limit",
        _ => "other",
    }
}
