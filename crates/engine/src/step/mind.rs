//! `Mind`: the model, the clock and the default options a process thinks with, and the tokens it
//! has spent.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::Clock;
use crate::model::{ChatOptions, LanguageModel, Usage};
use crate::step::{CognitiveStep, StepError, Tools, run_step, run_step_with_tools};
use crate::working_memory::WorkingMemory;

/// Runs cognitive steps and keeps count of the tokens they spend. Clones share the count.
#[derive(Clone)]
pub struct Mind {
    model: Arc<dyn LanguageModel>,
    clock: Arc<dyn Clock>,
    options: ChatOptions,
    usage: Arc<Mutex<Usage>>,
}

impl Mind {
    /// A mind thinking with `model`, telling time by `clock`.
    pub fn new(model: Arc<dyn LanguageModel>, clock: Arc<dyn Clock>) -> Self {
        Mind {
            model,
            clock,
            options: ChatOptions::default(),
            usage: Arc::default(),
        }
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
        let output = run_step(&step, &*self.model, memory, &self.options, self.clock.now()).await?;
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner) += output.usage;
        Ok(output.into_parts())
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
        let output = run_step_with_tools(
            &step,
            &*self.model,
            memory,
            &self.options,
            self.clock.now(),
            tools,
        )
        .await?;
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner) += output.usage;
        Ok(output.into_parts())
    }

    /// Tokens spent so far by this mind and its clones.
    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner)
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
