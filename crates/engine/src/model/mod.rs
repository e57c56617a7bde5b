//! The one door between the engine and a language model.
//!
//! The engine depends on [`LanguageModel`] only. Implementations: [`openai::OpenAiModel`] (any
//! OpenAI-compatible server), and [`cassette`]'s recording and replaying models for offline runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::memory::{Memory, Role};
use crate::retry::{Failure, RetryError, Verdict};

pub mod cassette;
#[cfg(feature = "openai")]
pub mod openai;

/// A boxed, sendable future; what dyn-compatible async traits in this crate return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A chat-completion model.
///
/// Dyn-compatible on purpose: souls hold an `Arc<dyn LanguageModel>` chosen at run time.
pub trait LanguageModel: Send + Sync + fmt::Debug {
    /// Completes `request`. Implementations retry what is worth retrying themselves and report the
    /// final failure as a [`ModelError`].
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>>;

    /// Completes `request` as [`complete`](Self::complete) does, handing the answer's text to
    /// `sink` as it arrives where the model streams (an OpenAI-compatible server with
    /// `stream: true`). The completion returned is the same whole answer, with the same bounds,
    /// retries and usage; when an attempt that already gave text fails, `sink` is
    /// [reset](AnswerSink::reset) before the next. By default the model does not stream: the
    /// answer arrives whole and `sink` hears nothing.
    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        let _ = sink;
        self.complete(request)
    }
}

/// Where a streamed answer's text goes as the model writes it (see
/// [`LanguageModel::complete_streaming`]). The engine supplies one only for text that is about
/// to be spoken; what it does with the text is the caller's.
pub trait AnswerSink: Send + Sync {
    /// More of the answer: `delta` follows the text given since the last reset.
    fn text(&self, delta: &str);
    /// The text given so far is void (its attempt failed; another may follow).
    fn reset(&self);
}

/// `model`'s answer to `request`, streamed into `sink` when there is one, asked for whole
/// (exactly as [`LanguageModel::complete`]) when there is none.
pub fn complete_with<'a>(
    model: &'a (impl LanguageModel + ?Sized),
    request: &'a ChatRequest,
    sink: Option<&'a dyn AnswerSink>,
) -> BoxFuture<'a, Result<Completion, ModelError>> {
    match sink {
        Some(sink) => model.complete_streaming(request, sink),
        None => model.complete(request),
    }
}

impl<M: LanguageModel + ?Sized> LanguageModel for Arc<M> {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        (**self).complete(request)
    }

    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        (**self).complete_streaming(request, sink)
    }
}

impl<M: LanguageModel + ?Sized> LanguageModel for &M {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        (**self).complete(request)
    }

    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        (**self).complete_streaming(request, sink)
    }
}

/// Who speaks in a chat request: the roles of memories, and `tool` for a tool's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions and persona.
    System,
    /// The person, or a perception from outside the soul.
    User,
    /// The soul (and the model's own tool calls).
    Assistant,
    /// A tool's result, answering one of the model's tool calls.
    Tool,
}

impl From<Role> for ChatRole {
    fn from(role: Role) -> Self {
        match role {
            Role::System => ChatRole::System,
            Role::User => ChatRole::User,
            Role::Assistant => ChatRole::Assistant,
        }
    }
}

impl PartialEq<Role> for ChatRole {
    fn eq(&self, other: &Role) -> bool {
        *self == ChatRole::from(*other)
    }
}

/// One message as the model sees it. `Debug` redacts the content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: ChatRole,
    /// The text (empty for an assistant message that only calls tools).
    pub content: String,
    /// Optional speaker name, as people read it; implementations make it what their API
    /// accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tools an assistant message called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message without a name.
    pub fn new(role: impl Into<ChatRole>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The model's turn that called `calls` (with whatever text came with them).
    pub fn tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        ChatMessage {
            tool_calls: calls,
            ..ChatMessage::new(ChatRole::Assistant, content)
        }
    }

    /// A tool's result, answering the call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            tool_call_id: Some(call_id.into()),
            ..ChatMessage::new(ChatRole::Tool, content)
        }
    }
}

impl From<&Memory> for ChatMessage {
    fn from(memory: &Memory) -> Self {
        ChatMessage {
            name: memory.name.clone(),
            ..ChatMessage::new(memory.role, memory.content.clone())
        }
    }
}

impl fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatMessage")
            .field("role", &self.role)
            .field(
                "content",
                &format_args!("<{} chars redacted>", self.content.chars().count()),
            )
            .field("tool_calls", &self.tool_calls)
            .finish_non_exhaustive()
    }
}

/// One tool call the model asked for. `Debug` redacts the arguments.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which its result names.
    pub id: String,
    /// The tool (function) called.
    pub name: String,
    /// The arguments, as the JSON text the model wrote (which may not be valid JSON).
    pub arguments: String,
}

impl fmt::Debug for ToolCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCall")
            .field("id", &self.id)
            .field("name", &self.name)
            .field(
                "arguments",
                &format_args!("<{} chars redacted>", self.arguments.chars().count()),
            )
            .finish()
    }
}

/// A tool (function) the model may call, as the request describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does, for the model to decide when to call it.
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// A JSON Schema the answer must follow (OpenAI's `response_format: json_schema`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSchema {
    /// A short identifier (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// The schema itself.
    pub schema: serde_json::Value,
    /// Ask the server to enforce the schema strictly.
    pub strict: bool,
}

/// How to ask: everything but the messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatOptions {
    /// A model name or an alias the implementation resolves (`fast`, `quality`); `None` uses the
    /// implementation's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Upper bound on the answer's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Structured output: the answer must be JSON following this schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<ResponseSchema>,
    /// Tools the model may call instead of answering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Per-attempt time limit; `None` uses the implementation's default. Not part of what a
    /// cassette matches on.
    #[serde(skip)]
    pub timeout: Option<Duration>,
}

/// A chat-completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation, in order.
    pub messages: Vec<ChatMessage>,
    /// How to ask.
    #[serde(flatten)]
    pub options: ChatOptions,
}

/// Tokens spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens in the answer.
    pub completion_tokens: u64,
}

impl Usage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, rhs: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens + rhs.prompt_tokens,
            completion_tokens: self.completion_tokens + rhs.completion_tokens,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

/// A model's answer. `Debug` redacts the content.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The answer's text (JSON text when a schema was asked for; possibly empty when the model
    /// called tools).
    pub content: String,
    /// Tokens spent on this request, retries included.
    pub usage: Usage,
    /// The model that answered, as the server named it.
    pub model: String,
    /// The tools the model called instead of (or besides) answering, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field(
                "content",
                &format_args!("<{} chars redacted>", self.content.chars().count()),
            )
            .field("usage", &self.usage)
            .field("model", &self.model)
            .field("tool_calls", &self.tool_calls)
            .finish()
    }
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The server answered with an error status. Only the status and the server's error code
    /// are kept: an error body's message can quote the request, and so what a person wrote.
    #[error("model server answered HTTP {status}{}", code_suffix(.code.as_deref()))]
    Http {
        /// The HTTP status.
        status: u16,
        /// The server's error code or type (OpenAI's `error.code`, else `error.type`:
        /// `rate_limit_exceeded`, `invalid_request_error`), when it is a short identifier.
        code: Option<String>,
        /// How long the server asked us to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The server's answer was longer than the client reads; the rest was not read. Not
    /// retried: a server that ignored the answer's token limit once will likely do so again,
    /// and the person is better served by the fallback now.
    #[error("model server sent more than {limit} bytes; the answer was not read")]
    TooLarge {
        /// The most bytes of an answer that are read.
        limit: usize,
    },
    /// No answer within the time limit.
    #[error("model call timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed before an answer arrived.
    #[error("could not reach the model server: {0}")]
    Transport(String),
    /// The server answered 2xx with something that is not a usable completion: a body that is
    /// not a chat completion, no choices, an empty answer.
    #[error("model server sent an unusable answer: {0}")]
    InvalidResponse(String),
    /// The model declined to answer (OpenAI's `refusal`); its words are not kept, as they may
    /// repeat the conversation.
    #[error("the model refused to answer")]
    Refused,
    /// The configuration cannot work (unknown alias, bad base URL, ...).
    #[error("model configuration: {0}")]
    Config(String),
    /// Every attempt the retry policy allowed failed: the attempts or the time budget ran out.
    #[error("model call failed after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<ModelError>,
    },
    /// A replaying model has no recorded answer for this request.
    #[error("no recorded answer for this request\n{diff}")]
    NotRecorded {
        /// How the request differs from the closest recorded one.
        diff: String,
    },
    /// A cassette could not be read or written.
    #[error("cassette {path}: {reason}")]
    Cassette {
        /// The cassette's path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn code_suffix(code: Option<&str>) -> String {
    code.map(|code| format!(" ({code})")).unwrap_or_default()
}

impl ModelError {
    /// Whether trying the same request again may succeed: 429, 5xx, time-outs, broken
    /// connections and unusable answers (a body cut short, no choices, an empty answer: the
    /// next answer is a new draw). Not a refusal, a client error or a configuration problem.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Http { status, .. } => *status == 429 || (500..=599).contains(status),
            ModelError::Timeout(_) | ModelError::Transport(_) | ModelError::InvalidResponse(_) => {
                true
            }
            _ => false,
        }
    }
}

impl Failure for ModelError {
    /// [`ModelError::is_retryable`] errors are retried, after the server's `Retry-After` when
    /// it sent one.
    fn verdict(&self) -> Verdict {
        match self {
            _ if !self.is_retryable() => Verdict::Final,
            ModelError::Http { retry_after, .. } => Verdict::Retry {
                after: *retry_after,
            },
            _ => Verdict::Retry { after: None },
        }
    }
}

impl From<RetryError<ModelError>> for ModelError {
    /// An error not worth retrying as it came; retries that ran out as
    /// [`ModelError::RetriesExhausted`].
    fn from(error: RetryError<ModelError>) -> Self {
        match error {
            RetryError::Final { error, .. } => error,
            RetryError::Exhausted { last, attempts } => ModelError::RetriesExhausted {
                attempts,
                last: Box::new(last),
            },
        }
    }
}
