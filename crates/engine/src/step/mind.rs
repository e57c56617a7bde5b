//! `Mind`: the model, the clock and the default options a process thinks with, and the tokens it
//! has spent and the steps it ran (for a turn's record; the engine only collects them, the caller
//! decides what to keep).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::model::{ChatOptions, ChatRequest, LanguageModel, Usage};
use crate::process::ReplyStream;
use crate::step::{AnswerFormat, CognitiveStep, StepError, StepOutput, Tools, run_step_streaming};
use crate::working_memory::WorkingMemory;

/// One cognitive step as it ran: what a turn's record keeps of it.
#[derive(Clone, PartialEq)]
pub struct StepRecord {
    /// The step's name ([`CognitiveStep::name`]).
    pub name: String,
    /// Whether the answer was asked for as JSON (a structured step) rather than free text.
    pub structured: bool,
    /// When the step started, by the mind's clock.
    pub started_at: DateTime<Utc>,
    /// How long it took, by the mind's clock, in milliseconds.
    pub duration_ms: u64,
    /// Tokens spent, the repair attempt included.
    pub usage: Usage,
    /// The model's answers as the step read them: the first, and the repaired one when the first
    /// was unusable. The last is the one the step's value came from.
    pub answers: Vec<String>,
    /// The last request sent to the model.
    pub request: ChatRequest,
}

impl fmt::Debug for StepRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The answers and the request quote the person.
        f.debug_struct("StepRecord")
            .field("name", &self.name)
            .field("structured", &self.structured)
            .field("duration_ms", &self.duration_ms)
            .field("usage", &self.usage)
            .field("answers", &self.answers.len())
            .finish_non_exhaustive()
    }
}

/// Runs cognitive steps and keeps count of the tokens they spend and of the steps it ran.
/// Clones share the count and the list.
#[derive(Clone)]
pub struct Mind {
    model: Arc<dyn LanguageModel>,
    clock: Arc<dyn Clock>,
    options: ChatOptions,
    usage: Arc<Mutex<Usage>>,
    steps: Arc<Mutex<Vec<StepRecord>>>,
    speech: Option<Arc<dyn ReplyStream>>,
}

impl Mind {
    /// A mind thinking with `model`, telling time by `clock`.
    pub fn new(model: Arc<dyn LanguageModel>, clock: Arc<dyn Clock>) -> Self {
        Mind {
            model,
            clock,
            options: ChatOptions::default(),
            usage: Arc::default(),
            steps: Arc::default(),
            speech: None,
        }
    }

    /// The same mind writing what speaking steps answer to `stream` as the model writes it
    /// (see [`ReplyStream`]); without one, no request asks the model to stream.
    pub fn with_reply_stream(mut self, stream: Arc<dyn ReplyStream>) -> Self {
        self.speech = Some(stream);
        self
    }

    /// Where replies go while they are written, if anywhere.
    pub fn reply_stream(&self) -> Option<&Arc<dyn ReplyStream>> {
        self.speech.as_ref()
    }

    /// The same mind with default options for every step (a step's own options win).
    pub fn with_options(mut self, options: ChatOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs `step` on `memory`: the new working memory and the step's value.
    pub async fn run<S: CognitiveStep>(
        &self,
        step: S,
        memory: &WorkingMemory,
    ) -> Result<(WorkingMemory, S::Value), StepError> {
        self.run_with_tools(step, &Tools::new(), memory).await
    }

    /// Runs `step` on `memory`, the model offered `tools` first (see
    /// [`tools`](crate::step::tools)): the new working memory, with the calls and their results
    /// before the step's own memory, and the step's value.
    pub async fn run_with_tools<S: CognitiveStep>(
        &self,
        step: S,
        tools: &Tools,
        memory: &WorkingMemory,
    ) -> Result<(WorkingMemory, S::Value), StepError> {
        let started_at = self.clock.now();
        let output = run_step_streaming(
            &step,
            &*self.model,
            memory,
            &self.options,
            started_at,
            tools,
            self.speech.as_deref(),
        )
        .await?;
        Ok(self.recorded(&step, started_at, output))
    }

    /// Counts `output`'s tokens and records the step; the new working memory and the value.
    fn recorded<S: CognitiveStep>(
        &self,
        step: &S,
        started_at: DateTime<Utc>,
        output: StepOutput<S::Value>,
    ) -> (WorkingMemory, S::Value) {
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner) += output.usage;
        let elapsed = self.clock.now() - started_at;
        let record = StepRecord {
            name: step.name().to_owned(),
            structured: matches!(step.format(), AnswerFormat::Json(_)),
            started_at,
            duration_ms: u64::try_from(elapsed.num_milliseconds()).unwrap_or(0),
            usage: output.usage,
            answers: output.answers,
            request: output.request,
        };
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        (output.memory, output.value)
    }

    /// Tokens spent so far by this mind and its clones.
    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the records of the steps this mind and its clones ran since the last take, in
    /// the order they finished.
    pub fn take_steps(&self) -> Vec<StepRecord> {
        std::mem::take(&mut *self.steps.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn LanguageModel> {
        &self.model
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

impl fmt::Debug for Mind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mind")
            .field("model", &self.model)
            .field("options", &self.options)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}
