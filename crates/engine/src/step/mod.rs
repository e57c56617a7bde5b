//! Cognitive steps: one model call that reads working memory and yields a typed value and the
//! memory it leaves behind.
//!
//! A step says three things (see [`CognitiveStep`]): the *command* appended after working memory,
//! the *format* of the answer (free text, or JSON following a schema), and how to *interpret* the
//! answer into a value and an optional memory. [`run_step`] (or [`Mind::run`]) sends the request,
//! interprets the answer, gives the model **one** chance to repair an answer it could not use,
//! and returns a typed [`StepError`] after that — never a panic.
//!
//! Built-in steps live in [`builtins`]; [`typed`] builds an author's step around any
//! `serde` + `schemars` type. Any step can be run with [`Tools`] the model may call first
//! ([`Mind::run_with_tools`]; see [`tools`]).

pub mod builtins;
mod mind;
pub mod tools;
mod typed;

use std::fmt;

use serde::de::DeserializeOwned;

use crate::memory::{Memory, Role};
use std::sync::{Mutex, PoisonError};

use crate::model::{
    AnswerSink, ChatMessage, ChatOptions, ChatRequest, Completion, LanguageModel, ModelError,
    ResponseSchema, Usage, complete_with,
};
use crate::process::ReplyStream;
use crate::text;
use crate::working_memory::WorkingMemory;

pub use builtins::{
    brainstorm, decision, external_dialog, instruction, internal_monologue, mental_query, summarize,
};
pub use mind::{Mind, StepRecord};
pub use tools::{DEFAULT_MAX_TOOL_ROUNDS, ToolError, Tools};
pub use typed::{TypedStep, typed};

/// What shape the model's answer must have.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerFormat {
    /// Free text.
    Text,
    /// JSON following the schema (sent as structured-output `response_format`).
    Json(ResponseSchema),
}

/// Why an answer could not be used; shown to the model in the repair attempt, so it must not
/// contain anything the model should not see (it never does: it describes the answer's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAnswer(pub String);

impl fmt::Display for InvalidAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One kind of thinking the soul can do.
pub trait CognitiveStep: Send + Sync {
    /// What the step yields.
    type Value: Send;

    /// A short name for logs and metrics (`external_dialog`, `assess_mood`, ...).
    fn name(&self) -> &str;

    /// The instruction sent after working memory, as a system message.
    fn command(&self, memory: &WorkingMemory) -> String;

    /// The answer's format; free text unless overridden.
    fn format(&self) -> AnswerFormat {
        AnswerFormat::Text
    }

    /// Options this step asks for (a temperature, say); the caller's options fill the rest.
    fn options(&self) -> ChatOptions {
        ChatOptions::default()
    }

    /// Whether the step's answer is said to the person as it stands (`external_dialog`): only
    /// such an answer is streamed to a [`ReplyStream`] while the model writes it.
    fn speaks(&self) -> bool {
        false
    }

    /// What of `partial`, an answer still being written, is to be said: by default the text
    /// itself. A speaking step whose answer wraps the words (`Name said: "..."`) unwraps them.
    fn said_so_far(&self, memory: &WorkingMemory, partial: &str) -> String {
        let _ = memory;
        partial.trim_start().to_owned()
    }

    /// Checks the step's own arguments before any model call (a decision needs choices, ...).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Turns the model's answer into the value and the memory to append (if any). The runner
    /// stamps that memory with the clock's time.
    fn interpret(
        &self,
        memory: &WorkingMemory,
        answer: &str,
    ) -> Result<(Self::Value, Option<Memory>), InvalidAnswer>;
}

/// What a step produced.
#[derive(Debug, Clone)]
pub struct StepOutput<V> {
    /// Working memory after the step.
    pub memory: WorkingMemory,
    /// The step's value.
    pub value: V,
    /// Tokens spent, the repair attempt included.
    pub usage: Usage,
    /// The model's answers as the step read them (storable), in order: the first, and the
    /// repaired one when the first was unusable; the last is the one the value came from.
    pub answers: Vec<String>,
    /// The last request sent (with the repair prompt, when there was one).
    pub request: ChatRequest,
}

impl<V> StepOutput<V> {
    /// The new working memory and the value.
    pub fn into_parts(self) -> (WorkingMemory, V) {
        (self.memory, self.value)
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The model call failed (after the model's own retries).
    #[error("step `{step}`: {source}")]
    Model {
        /// The step's name.
        step: String,
        /// The model's error.
        #[source]
        source: ModelError,
    },
    /// The model's answer was unusable twice in a row (the first answer and the repair).
    #[error("step `{step}`: the model's answer was unusable after one repair attempt: {reason}")]
    InvalidAnswer {
        /// The step's name.
        step: String,
        /// Why the last answer was unusable.
        reason: String,
    },
    /// The model still called tools after the most rounds of calls the step allows.
    #[error("step `{step}`: the model still called tools after {rounds} rounds of calls")]
    ToolRounds {
        /// The step's name.
        step: String,
        /// The rounds run.
        rounds: u32,
    },
    /// The step's own arguments (or its tools) cannot work; no model call was made.
    #[error("step `{step}` is misconfigured: {reason}")]
    Misconfigured {
        /// The step's name.
        step: String,
        /// What is wrong.
        reason: String,
    },
}

/// Runs `step` once against `model` on `memory`; `options` are the caller's defaults, under the
/// step's own. The appended memory is stamped `now`.
pub async fn run_step<S: CognitiveStep + ?Sized>(
    step: &S,
    model: &dyn LanguageModel,
    memory: &WorkingMemory,
    options: &ChatOptions,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StepOutput<S::Value>, StepError> {
    run_step_with_tools(step, model, memory, options, now, &Tools::new()).await
}

/// [`run_step`], the model offered `tools`: each round of calls it makes is run and answered
/// before it is asked again (see [`tools`]). The calls and their results are appended before the
/// step's own memory, stamped `now` too.
pub async fn run_step_with_tools<S: CognitiveStep + ?Sized>(
    step: &S,
    model: &dyn LanguageModel,
    memory: &WorkingMemory,
    options: &ChatOptions,
    now: chrono::DateTime<chrono::Utc>,
    tools: &Tools,
) -> Result<StepOutput<S::Value>, StepError> {
    run_step_streaming(step, model, memory, options, now, tools, None).await
}

/// [`run_step_with_tools`], the answer written to `stream` as the model writes it when the step
/// [speaks](CognitiveStep::speaks) and the model streams; an answer that is not used as it is
/// (tool calls, an unusable answer, a failed call) is discarded from it. Without a stream, or
/// for a step that does not speak, the request is exactly [`run_step_with_tools`]'s.
pub async fn run_step_streaming<S: CognitiveStep + ?Sized>(
    step: &S,
    model: &dyn LanguageModel,
    memory: &WorkingMemory,
    options: &ChatOptions,
    now: chrono::DateTime<chrono::Utc>,
    tools: &Tools,
    stream: Option<&dyn ReplyStream>,
) -> Result<StepOutput<S::Value>, StepError> {
    let writing = stream
        .filter(|_| step.speaks())
        .map(|stream| Writing::new(step, memory, stream));
    let result = run_step_inner(step, model, memory, options, now, tools, writing.as_ref()).await;
    if let (Err(_), Some(writing)) = (&result, &writing) {
        writing.discard();
    }
    result
}

async fn run_step_inner<S: CognitiveStep + ?Sized>(
    step: &S,
    model: &dyn LanguageModel,
    memory: &WorkingMemory,
    options: &ChatOptions,
    now: chrono::DateTime<chrono::Utc>,
    tools: &Tools,
    writing: Option<&Writing<'_, S>>,
) -> Result<StepOutput<S::Value>, StepError> {
    step.validate()
        .and_then(|()| tools.validate())
        .map_err(|reason| StepError::Misconfigured {
            step: step.name().to_owned(),
            reason,
        })?;
    let mut request = ChatRequest {
        messages: memory.to_messages(),
        options: merged(options, step.options()),
    };
    request
        .messages
        .push(ChatMessage::new(Role::System, step.command(memory)));
    if let AnswerFormat::Json(schema) = step.format() {
        request.options.response_schema = Some(schema);
    }
    request.options.tools = tools.specs();

    let mut exchange = Exchange {
        step: step.name(),
        soul: memory.soul_name(),
        model,
        tools,
        rounds: 0,
        remembered: Vec::new(),
        usage: Usage::default(),
        sink: writing.map(|writing| writing as &dyn AnswerSink),
    };
    let first = exchange.answer(&mut request).await?;
    let mut answers = vec![first.clone()];
    let (value, appended) = match step.interpret(memory, &first) {
        Ok(interpreted) => interpreted,
        Err(reason) => {
            tracing::debug!(
                step = step.name(),
                "unusable answer; asking the model to repair it"
            );
            if let Some(writing) = writing {
                writing.discard();
            }
            request
                .messages
                .push(ChatMessage::new(Role::Assistant, first));
            request
                .messages
                .push(ChatMessage::new(Role::System, repair_prompt(step, &reason)));
            let second = exchange.answer(&mut request).await?;
            answers.push(second.clone());
            step.interpret(memory, &second)
                .map_err(|reason| StepError::InvalidAnswer {
                    step: step.name().to_owned(),
                    reason: reason.0,
                })?
        }
    };
    let usage = exchange.usage;
    let memory = exchange.remembered.into_iter().chain(appended).fold(
        memory.clone(),
        |memory, mut remembered| {
            remembered.timestamp = now;
            memory.with_memory(remembered)
        },
    );
    Ok(StepOutput {
        memory,
        value,
        usage,
        answers,
        request,
    })
}

/// One step's traffic with the model: the answers, the tool rounds run for them, the memories
/// of those rounds and the tokens spent.
struct Exchange<'a> {
    step: &'a str,
    soul: &'a str,
    model: &'a dyn LanguageModel,
    tools: &'a Tools,
    rounds: u32,
    remembered: Vec<Memory>,
    usage: Usage,
    /// Where the answer's text goes as it arrives, for a speaking step with a stream.
    sink: Option<&'a dyn AnswerSink>,
}

impl Exchange<'_> {
    /// The model's next answer to `request`, storable: every round of tool calls before it is
    /// run, and the calls and results added to `request` and remembered.
    async fn answer(&mut self, request: &mut ChatRequest) -> Result<String, StepError> {
        loop {
            let Completion {
                mut content,
                usage,
                tool_calls,
                ..
            } = complete_with(self.model, request, self.sink)
                .await
                .map_err(|source| StepError::Model {
                    step: self.step.to_owned(),
                    source,
                })?;
            self.usage += usage;
            // Whatever the answer becomes (a reply, a memory, a value a process stores) is
            // stored by the turn's commit, which a control character would make the store refuse.
            text::make_storable(&mut content);
            if tool_calls.is_empty() || self.tools.is_empty() {
                return Ok(content);
            }
            if self.rounds == self.tools.max_rounds() {
                return Err(StepError::ToolRounds {
                    step: self.step.to_owned(),
                    rounds: self.rounds,
                });
            }
            self.rounds += 1;
            if let Some(sink) = self.sink {
                // Text beside tool calls is not the reply; the reply comes after the calls.
                sink.reset();
            }
            request
                .messages
                .push(ChatMessage::tool_calls(content, tool_calls.clone()));
            for call in &tool_calls {
                let result = self.tools.call(call).await;
                if let Err(error) = &result {
                    // The message may quote the model's arguments, so not at info.
                    tracing::debug!(step = self.step, tool = %call.name, %error, "tool call failed");
                }
                let (memory, sent) = tools::result_memory(self.step, call, &result);
                request
                    .messages
                    .push(ChatMessage::tool_result(call.id.clone(), sent));
                self.remembered
                    .push(tools::call_memory(self.soul, self.step, call));
                self.remembered.push(memory);
            }
        }
    }
}

/// How much of an answer is written to a [`ReplyStream`] as it arrives (a reply is far shorter;
/// this bounds the work of an answer that runs on).
const MAX_WRITTEN_BYTES: usize = 16 * 1024;

/// A speaking step's answer on its way to a [`ReplyStream`]: the pieces the model writes,
/// and what of them is to be said so far, written whenever it changes.
struct Writing<'a, S: ?Sized> {
    step: &'a S,
    memory: &'a WorkingMemory,
    stream: &'a dyn ReplyStream,
    /// The answer so far, and what of it was last written.
    state: Mutex<(String, String)>,
}

impl<'a, S: CognitiveStep + ?Sized> Writing<'a, S> {
    fn new(step: &'a S, memory: &'a WorkingMemory, stream: &'a dyn ReplyStream) -> Self {
        Writing {
            step,
            memory,
            stream,
            state: Mutex::default(),
        }
    }

    /// Voids what was written, if anything was.
    fn discard(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let wrote = !state.1.is_empty();
        *state = Default::default();
        drop(state);
        if wrote {
            self.stream.discard();
        }
    }
}

impl<S: CognitiveStep + ?Sized> AnswerSink for Writing<'_, S> {
    fn text(&self, delta: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0.len() >= MAX_WRITTEN_BYTES {
            // Each write is the whole text so far: past this, the rest shows when spoken.
            return;
        }
        state.0.push_str(delta);
        let said = self
            .step
            .said_so_far(self.memory, &text::storable(&state.0));
        if said != state.1 {
            self.stream.writing(&said);
            state.1 = said;
        }
    }

    fn reset(&self) {
        self.discard();
    }
}

fn merged(caller: &ChatOptions, step: ChatOptions) -> ChatOptions {
    ChatOptions {
        model: step.model.or_else(|| caller.model.clone()),
        temperature: step.temperature.or(caller.temperature),
        max_tokens: step.max_tokens.or(caller.max_tokens),
        response_schema: step
            .response_schema
            .or_else(|| caller.response_schema.clone()),
        tools: if step.tools.is_empty() {
            caller.tools.clone()
        } else {
            step.tools
        },
        timeout: step.timeout.or(caller.timeout),
    }
}

fn repair_prompt<S: CognitiveStep + ?Sized>(step: &S, reason: &InvalidAnswer) -> String {
    match step.format() {
        AnswerFormat::Json(_) => format!(
            "Your last answer could not be used: {reason}. Answer again with only a JSON object \
             that follows the requested schema, and nothing else."
        ),
        AnswerFormat::Text => format!(
            "Your last answer could not be used: {reason}. Answer again, following the \
             instructions exactly."
        ),
    }
}

/// Parses a JSON answer strictly into `T`, its strings made [`storable`](text::storable) (an
/// escaped `\u0000` is a character only once decoded). The only leniency: surrounding white space
/// and one Markdown code fence, which OpenAI-compatible servers without structured output often
/// add.
pub fn parse_json<T: DeserializeOwned>(answer: &str) -> Result<T, InvalidAnswer> {
    let trimmed = answer.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed)
        .trim();
    let mut value: serde_json::Value =
        serde_json::from_str(unfenced).map_err(|e| unusable_json("not valid JSON", Some(&e)))?;
    text::make_json_storable(&mut value);
    serde_json::from_value(value).map_err(|_| {
        // The position in the answer as the model wrote it, which only parsing that text gives.
        let parsed = serde_json::from_str::<T>(unfenced);
        unusable_json("JSON, but not of the expected shape", parsed.err().as_ref())
    })
}

/// The position, not serde's message: the message quotes the answer, which may quote a person.
fn unusable_json(problem: &str, error: Option<&serde_json::Error>) -> InvalidAnswer {
    InvalidAnswer(match error {
        Some(e) => format!("it is {problem} (line {}, column {})", e.line(), e.column()),
        None => format!("it is {problem}"),
    })
}
