//! The [`LanguageModel`] for OpenAI and any OpenAI-compatible chat-completions server, built on
//! `async-openai`.
//!
//! Calls go through `async-openai`'s `Client::chat().create()`, but the HTTP exchange itself runs
//! in this module's own tower service, installed with `Client::with_http_service`. That service
//! exists for three reasons:
//!
//! * `async-openai` 0.43 wraps its default executor in its own retry layer (three retries on 429,
//!   5xx and connect errors); installing a service replaces that executor, so [`RetryPolicy`] is
//!   the only retrying there is. (The `reqwest` client's own retrying of protocol NACKs is turned
//!   off too.)
//! * The service sees the response headers, so it reads `Retry-After` (and OpenAI's finer
//!   `retry-after-ms`) into [`ModelError::Http::retry_after`], which the retry policy honours.
//! * It turns error statuses and unusable bodies into [`ModelError`]s itself. `async-openai`
//!   would log such bodies at `warn`/`error`, and a body can quote the conversation: of an
//!   error body only the status and the error's code are kept.
//! * It reads the body through a limit ([`OpenAiConfig::with_max_response_bytes`]), chunk by
//!   chunk, so a server that sends megabytes is cut off rather than held in memory and passed on
//!   as a reply.
//!
//! [`LanguageModel::complete_streaming`] asks with `stream: true` (and
//! `stream_options.include_usage`, so the last chunk carries the usage) through
//! `Client::chat().create_stream()`. The same service hands `async-openai` the body as a guarded
//! stream: the same byte limit and time limit, each server-sent event checked to be a chunk
//! before `async-openai` reads it (it would log an event it cannot parse at `error`, and a chunk
//! quotes the answer), and the failure kept as a [`ModelError`] for this module to report. A
//! stream is an answer only once a chunk gives its finish reason: one that breaks off before is a
//! retryable failure, like a body cut short.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig as ClientConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestToolMessage,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CreateChatCompletionRequest, CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse, FunctionCall, FunctionObject, ResponseFormat,
    ResponseFormatJsonSchema,
};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use super::{
    AnswerSink, BoxFuture, ChatMessage, ChatRequest, ChatRole, Completion, LanguageModel,
    ModelError, ResponseSchema, ToolCall, ToolSpec, Usage,
};
use crate::clock::{Clock, SystemClock};
use crate::retry::{RetryPolicy, parse_retry_after, retry};

/// The most bytes of a successful answer read by default: a chat completion of a few thousand
/// tokens is tens of kilobytes, even with every character escaped.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The most bytes of an error body read, for its code; a longer one is not looked into.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The longest error code kept; OpenAI's are a few words joined by underscores.
const MAX_ERROR_CODE_CHARS: usize = 64;

/// Where and how to reach an OpenAI-compatible server. `Debug` redacts the API key.
#[derive(Clone)]
pub struct OpenAiConfig {
    base_url: String,
    api_key: String,
    default_model: String,
    aliases: BTreeMap<String, String>,
    request_timeout: Duration,
    retry: RetryPolicy,
    max_response_bytes: usize,
}

impl OpenAiConfig {
    /// A configuration for the server at `base_url` (up to and including the version,
    /// `https://api.openai.com/v1`), authenticating with `api_key` (empty for servers that need
    /// none) and using `default_model` when a request names none. Requests time out after 60 s
    /// per attempt and are retried by [`RetryPolicy::default`]; answers are read up to
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn new(
        base_url: impl Into<String>,
        api_key: impl Into<String>,
        default_model: impl Into<String>,
    ) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            default_model: default_model.into(),
            aliases: BTreeMap::new(),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Lets requests say `alias` (`fast`, `quality`) for `model` (`gpt-4o-mini`, `gpt-4o`), so
    /// souls name a kind of model and deployment picks the actual one.
    pub fn with_alias(mut self, alias: impl Into<String>, model: impl Into<String>) -> Self {
        self.aliases.insert(alias.into(), model.into());
        self
    }

    /// The time limit for one attempt, answer body included; [`super::ChatOptions::timeout`]
    /// overrides it per request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How failed attempts are retried.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The most bytes of an answer's body that are read; a longer answer fails the call with
    /// [`ModelError::TooLarge`] as soon as the limit is passed, without reading the rest.
    pub fn with_max_response_bytes(mut self, max_response_bytes: usize) -> Self {
        self.max_response_bytes = max_response_bytes;
        self
    }

    /// The model a request for `requested` goes to: the default for `None`, the aliased model
    /// for an alias, and any other name unchanged (it is taken to be a model name).
    pub fn resolve_model<'a>(&'a self, requested: Option<&'a str>) -> &'a str {
        match requested {
            None => &self.default_model,
            Some(name) => self.aliases.get(name).map_or(name, String::as_str),
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("default_model", &self.default_model)
            .field("aliases", &self.aliases)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

/// A [`LanguageModel`] speaking the OpenAI chat-completions protocol.
///
/// Each attempt is bounded by the per-attempt timeout and by what is left of the retry budget;
/// failed attempts are retried by the configured [`RetryPolicy`]. An answer without choices or
/// with empty content is a retryable [`ModelError::InvalidResponse`], so a [`Completion`] from
/// this model always has content. [`Completion::usage`] is the successful attempt's usage: failed
/// attempts report none (an attempt that timed out may still have cost tokens on the server,
/// which no answer tells us).
pub struct OpenAiModel {
    config: OpenAiConfig,
    /// The `async-openai` configuration, built once from `config`.
    client_config: ClientConfig,
    http: reqwest::Client,
}

impl OpenAiModel {
    /// A model for `config`. Fails with [`ModelError::Config`] when the base URL is not an
    /// `http(s)` URL, the default model, the timeout, the retry budget or the answer size limit
    /// is empty, or the API key cannot be sent in an HTTP header (a stray newline, say).
    pub fn new(config: OpenAiConfig) -> Result<Self, ModelError> {
        let url = reqwest::Url::parse(&config.base_url)
            .map_err(|e| ModelError::Config(format!("the base URL is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ModelError::Config(format!(
                "the base URL must be http or https, not {}",
                url.scheme()
            )));
        }
        if config.default_model.trim().is_empty() {
            return Err(ModelError::Config("the default model is empty".into()));
        }
        if config.request_timeout.is_zero() {
            return Err(ModelError::Config("the request timeout is zero".into()));
        }
        if config.retry.budget().is_zero() {
            return Err(ModelError::Config("the retry budget is zero".into()));
        }
        if config.max_response_bytes == 0 {
            return Err(ModelError::Config("the answer size limit is zero".into()));
        }
        // async-openai builds this header with `unwrap`; check it here instead of panicking there.
        if HeaderValue::from_str(&format!("Bearer {}", config.api_key)).is_err() {
            return Err(ModelError::Config(
                "the API key contains characters an HTTP header cannot carry".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .retry(reqwest::retry::never())
            .build()
            .map_err(|e| ModelError::Config(format!("could not create the HTTP client: {e}")))?;
        // Organisation and project are set empty so that nothing comes from the environment
        // (async-openai reads OPENAI_ORG_ID and OPENAI_PROJECT_ID otherwise).
        let client_config = ClientConfig::new()
            .with_api_base(config.base_url.trim_end_matches('/'))
            .with_api_key(config.api_key.clone())
            .with_org_id("")
            .with_project_id("");
        Ok(OpenAiModel {
            config,
            client_config,
            http,
        })
    }

    fn to_request(&self, request: &ChatRequest) -> CreateChatCompletionRequest {
        let options = &request.options;
        CreateChatCompletionRequest {
            messages: request.messages.iter().map(to_message).collect(),
            model: self
                .config
                .resolve_model(options.model.as_deref())
                .to_owned(),
            temperature: options.temperature,
            // `max_completion_tokens` only: it is the field OpenAI documents now, and its
            // reasoning models reject the deprecated `max_tokens` (so sending both fails there).
            // A compatible server that only knows `max_tokens` ignores the field and answers
            // unbounded, which costs tokens but does not fail the call.
            max_completion_tokens: options.max_tokens,
            response_format: options.response_schema.as_ref().map(to_response_format),
            tools: (!options.tools.is_empty()).then(|| options.tools.iter().map(to_tool).collect()),
            ..CreateChatCompletionRequest::default()
        }
    }

    /// One exchange, its answer read into a completion, so that an unusable answer is retried
    /// like any other retryable failure.
    async fn attempt(
        &self,
        request: CreateChatCompletionRequest,
        timeout: Duration,
    ) -> Result<Completion, ModelError> {
        // A client per attempt, because the service carries the attempt's timeout; building one
        // clones two handles and the configuration, no connections.
        let client = Client::build(self.http.clone(), self.client_config.clone())
            .with_http_service(HttpService {
                http: self.http.clone(),
                timeout,
                max_response_bytes: self.config.max_response_bytes,
                streamed: None,
            });
        let response = client
            .chat()
            .create(request)
            .await
            .map_err(|e| from_openai_error(e, timeout))?;
        to_completion(response)
    }

    /// One streamed exchange: each piece of the answer's text handed to `sink` as its chunk
    /// arrives, the chunks assembled into a completion.
    async fn attempt_streaming(
        &self,
        mut request: CreateChatCompletionRequest,
        timeout: Duration,
        sink: &dyn AnswerSink,
    ) -> Result<Completion, ModelError> {
        let failure: Failed = Arc::default();
        let client = Client::build(self.http.clone(), self.client_config.clone())
            .with_http_service(HttpService {
                http: self.http.clone(),
                timeout,
                max_response_bytes: self.config.max_response_bytes,
                streamed: Some(failure.clone()),
            });
        request.stream = Some(true);
        request.stream_options = Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
        // The guarded body's failure, when it recorded one, says what went wrong better than
        // what `async-openai` made of the broken stream.
        let failed = |error: OpenAIError| {
            take(&failure).unwrap_or_else(|| match error {
                OpenAIError::StreamError(_) => {
                    ModelError::Transport("the answer's stream broke off".into())
                }
                other => from_openai_error(other, timeout),
            })
        };
        let mut chunks = client.chat().create_stream(request).await.map_err(failed)?;
        let mut answer = StreamedAnswer::default();
        while let Some(chunk) = chunks.next().await {
            answer.add(chunk.map_err(failed)?, sink);
        }
        if let Some(error) = take(&failure) {
            return Err(error);
        }
        answer.into_completion()
    }
}

/// Where a guarded stream records why it stopped.
type Failed = Arc<Mutex<Option<ModelError>>>;

fn take(failure: &Failed) -> Option<ModelError> {
    failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

/// A streamed answer as its chunks arrive (the first choice only: only one is asked for).
#[derive(Default)]
struct StreamedAnswer {
    content: String,
    refused: bool,
    finished: bool,
    model: String,
    usage: Usage,
    /// Tool calls by their index in the answer; each chunk adds to their name and arguments.
    tool_calls: BTreeMap<u32, ToolCall>,
}

impl StreamedAnswer {
    fn add(&mut self, chunk: CreateChatCompletionStreamResponse, sink: &dyn AnswerSink) {
        if self.model.is_empty() {
            self.model = chunk.model;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Usage {
                prompt_tokens: usage.prompt_tokens.into(),
                completion_tokens: usage.completion_tokens.into(),
            };
        }
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            let delta = choice.delta;
            if let Some(text) = delta.content.filter(|text| !text.is_empty()) {
                sink.text(&text);
                self.content.push_str(&text);
            }
            self.refused |= delta.refusal.is_some();
            for call in delta.tool_calls.unwrap_or_default() {
                let entry = self
                    .tool_calls
                    .entry(call.index)
                    .or_insert_with(|| ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                if let Some(id) = call.id {
                    entry.id = id;
                }
                if let Some(function) = call.function {
                    entry.name.push_str(&function.name.unwrap_or_default());
                    entry
                        .arguments
                        .push_str(&function.arguments.unwrap_or_default());
                }
            }
            self.finished |= choice.finish_reason.is_some();
        }
    }

    /// The completion, as [`to_completion`] makes one of a whole answer.
    fn into_completion(self) -> Result<Completion, ModelError> {
        if !self.finished {
            return Err(ModelError::InvalidResponse(
                "the answer's stream ended before the answer did".into(),
            ));
        }
        let tool_calls: Vec<ToolCall> = self.tool_calls.into_values().collect();
        let content = match self.content {
            content if !content.trim().is_empty() => content,
            _ if self.refused => return Err(ModelError::Refused),
            content if !tool_calls.is_empty() => content,
            _ => return Err(ModelError::InvalidResponse("the answer is empty".into())),
        };
        Ok(Completion {
            content,
            usage: self.usage,
            model: self.model,
            tool_calls,
        })
    }
}

/// A sink that remembers whether it was given any text.
struct Tracked<'a> {
    sink: &'a dyn AnswerSink,
    wrote: AtomicBool,
}

impl AnswerSink for Tracked<'_> {
    fn text(&self, delta: &str) {
        self.wrote.store(true, Ordering::Relaxed);
        self.sink.text(delta);
    }

    fn reset(&self) {
        self.wrote.store(false, Ordering::Relaxed);
        self.sink.reset();
    }
}

impl fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LanguageModel for OpenAiModel {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let body = self.to_request(request);
            let timeout = request
                .options
                .timeout
                .unwrap_or(self.config.request_timeout);
            tracing::debug!(
                model = %body.model,
                messages = body.messages.len(),
                "chat completion request"
            );
            // No attempt outlasts what is left of the budget.
            retry(&self.config.retry, "model call", |left| {
                self.attempt(body.clone(), timeout.min(left))
            })
            .await
            .map_err(ModelError::from)
        })
    }

    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let body = self.to_request(request);
            let timeout = request
                .options
                .timeout
                .unwrap_or(self.config.request_timeout);
            tracing::debug!(
                model = %body.model,
                messages = body.messages.len(),
                "streamed chat completion request"
            );
            let tracked = Tracked {
                sink,
                wrote: AtomicBool::new(false),
            };
            retry(&self.config.retry, "model call", |left| {
                let body = body.clone();
                let tracked = &tracked;
                async move {
                    let result = self
                        .attempt_streaming(body, timeout.min(left), tracked)
                        .await;
                    // What a failed attempt wrote is void, whether another attempt follows or not.
                    if result.is_err() && tracked.wrote.load(Ordering::Relaxed) {
                        tracked.reset();
                    }
                    result
                }
            })
            .await
            .map_err(ModelError::from)
        })
    }
}

fn to_message(message: &ChatMessage) -> ChatCompletionRequestMessage {
    let content = message.content.clone();
    let name = message.name.as_deref().and_then(api_name);
    match message.role {
        ChatRole::System => {
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                content: content.into(),
                name,
            })
        }
        ChatRole::User => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
            content: content.into(),
            name,
        }),
        ChatRole::Assistant => {
            let calls = &message.tool_calls;
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                // Content is optional only beside tool calls; a call without text sends none.
                content: (calls.is_empty() || !content.is_empty()).then(|| content.into()),
                name,
                tool_calls: (!calls.is_empty()).then(|| calls.iter().map(to_tool_call).collect()),
                ..ChatCompletionRequestAssistantMessage::default()
            })
        }
        ChatRole::Tool => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: content.into(),
            tool_call_id: message.tool_call_id.clone().unwrap_or_default(),
        }),
    }
}

/// A speaker's name as OpenAI's `name` field takes it: `^[a-zA-Z0-9_-]{1,64}$`, every other
/// character replaced by `_` (as OpenSouls' `safeName` does), `None` when nothing is left. The
/// name as people read it stays in the memory's content (`Bob Smith said: "..."`).
fn api_name(name: &str) -> Option<String> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    (!safe.is_empty()).then_some(safe)
}

fn to_tool_call(call: &ToolCall) -> ChatCompletionMessageToolCalls {
    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
        id: call.id.clone(),
        function: FunctionCall {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        },
    })
}

fn to_tool(tool: &ToolSpec) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: tool.name.clone(),
            description: Some(tool.description.clone()),
            parameters: Some(tool.parameters.clone()),
            strict: None,
        },
    })
}

fn to_response_format(schema: &ResponseSchema) -> ResponseFormat {
    ResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            description: None,
            name: schema.name.clone(),
            schema: schema.schema.clone(),
            strict: Some(schema.strict),
        },
    }
}

fn to_completion(response: CreateChatCompletionResponse) -> Result<Completion, ModelError> {
    let usage = response
        .usage
        .map(|usage| Usage {
            prompt_tokens: usage.prompt_tokens.into(),
            completion_tokens: usage.completion_tokens.into(),
        })
        .unwrap_or_default();
    let choice = response
        .choices
        .into_iter()
        .min_by_key(|choice| choice.index)
        .ok_or_else(|| ModelError::InvalidResponse("the answer has no choices".into()))?;
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .filter_map(|call| match call {
            ChatCompletionMessageToolCalls::Function(call) => Some(ToolCall {
                id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
            }),
            // Only function tools are ever offered.
            ChatCompletionMessageToolCalls::Custom(_) => None,
        })
        .collect();
    // An empty answer is a fault, not a reply: no step can use it, and sent on it would be an
    // empty text message. Tool calls are an answer of their own, with or without text.
    let content = match (choice.message.content, choice.message.refusal) {
        (Some(content), _) if !content.trim().is_empty() => content,
        (_, Some(_)) => return Err(ModelError::Refused),
        (content, None) if !tool_calls.is_empty() => content.unwrap_or_default(),
        (_, None) => {
            return Err(ModelError::InvalidResponse("the answer is empty".into()));
        }
    };
    Ok(Completion {
        content,
        usage,
        model: response.model,
        tool_calls,
    })
}

/// Turns what `async-openai` reports into a [`ModelError`]. [`HttpService`] answers every status
/// and body itself, so only its boxed errors arrive in practice; the other arms keep a future
/// `async-openai` that reports differently from leaking a body into an error message.
fn from_openai_error(error: OpenAIError, timeout: Duration) -> ModelError {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<ModelError>() {
            Ok(error) => *error,
            Err(other) => ModelError::Transport(other.to_string()),
        },
        OpenAIError::Reqwest(error) => from_reqwest_error(error, timeout),
        OpenAIError::ApiError(api) => ModelError::Http {
            status: api.status_code.as_u16(),
            code: api
                .api_error
                .code
                .or(api.api_error.r#type)
                .and_then(|code| identifier(&code)),
            retry_after: None,
        },
        OpenAIError::JSONDeserialize(error, _body) => {
            ModelError::InvalidResponse(describe_json_error(&error))
        }
        OpenAIError::InvalidArgument(reason) => ModelError::Config(reason),
        other => ModelError::Transport(other.to_string()),
    }
}

fn from_reqwest_error(error: reqwest::Error, timeout: Duration) -> ModelError {
    if error.is_timeout() {
        return ModelError::Timeout(timeout);
    }
    // Without the URL: a proxy's URL can carry credentials. The causes say what failed.
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ModelError::Transport(text)
}

/// Where a body failed to parse, not serde's message: that quotes the offending value, which
/// may be the model's answer.
fn describe_json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let problem = match error.classify() {
        Category::Syntax | Category::Eof => "is not valid JSON",
        Category::Data => "is JSON but not a chat completion",
        Category::Io => "could not be read",
    };
    format!(
        "the body {problem} (line {}, column {})",
        error.line(),
        error.column()
    )
}

/// The tower service `async-openai` sends each request through: one HTTP exchange within
/// `timeout`, its body read up to `max_response_bytes`, with error statuses and unusable bodies
/// turned into [`ModelError`]s (boxed, as `async-openai` wants) and `Retry-After` read from the
/// headers.
#[derive(Debug, Clone)]
struct HttpService {
    http: reqwest::Client,
    timeout: Duration,
    max_response_bytes: usize,
    /// For a streamed request: where the guarded body records its failure. The body is then
    /// handed on as it arrives instead of read whole.
    streamed: Option<Failed>,
}

impl tower::Service<HttpRequestFactory> for HttpService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            service
                .exchange(factory)
                .await
                .map_err(|e| OpenAIError::Boxed(Box::new(e)))
        })
    }
}

impl HttpService {
    async fn exchange(self, factory: HttpRequestFactory) -> Result<reqwest::Response, ModelError> {
        let mut request = factory
            .build()
            .await
            .map_err(|e| ModelError::Config(format!("could not build the request: {e}")))?;
        // reqwest's per-request timeout covers connecting, waiting and reading the body.
        *request.timeout_mut() = Some(self.timeout);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| from_reqwest_error(e, self.timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            let body = read_at_most(response, MAX_ERROR_BODY_BYTES)
                .await
                .map_err(|e| from_reqwest_error(e, self.timeout))?;
            tracing::debug!(status = status.as_u16(), "model server answered an error");
            return Err(ModelError::Http {
                status: status.as_u16(),
                code: body.as_deref().and_then(error_code),
                retry_after: retry_after(&headers),
            });
        }
        if let Some(failure) = self.streamed {
            tracing::debug!(status = status.as_u16(), "model server streams its answer");
            let guard = StreamGuard {
                limit: self.max_response_bytes,
                timeout: self.timeout,
                read: 0,
                pending: Vec::new(),
                failure,
            };
            let body = futures_util::stream::unfold(
                (response.bytes_stream(), guard),
                |(mut bytes, mut guard)| async move {
                    let next = bytes.next().await?;
                    let passed = guard.pass(next);
                    Some((passed, (bytes, guard)))
                },
            );
            let mut rebuilt = http::Response::new(reqwest::Body::wrap_stream(body));
            *rebuilt.status_mut() = status;
            *rebuilt.headers_mut() = headers;
            return Ok(reqwest::Response::from(rebuilt));
        }
        let Some(body) = read_at_most(response, self.max_response_bytes)
            .await
            .map_err(|e| from_reqwest_error(e, self.timeout))?
        else {
            tracing::warn!(
                limit = self.max_response_bytes,
                "model server sent an answer over the limit; not read"
            );
            return Err(ModelError::TooLarge {
                limit: self.max_response_bytes,
            });
        };
        tracing::debug!(
            status = status.as_u16(),
            bytes = body.len(),
            "model server answered"
        );
        if let Err(error) = serde_json::from_slice::<CreateChatCompletionResponse>(&body) {
            return Err(ModelError::InvalidResponse(describe_json_error(&error)));
        }
        // async-openai reads the response again; hand it the same status, headers and body.
        let mut rebuilt = http::Response::new(reqwest::Body::from(body));
        *rebuilt.status_mut() = status;
        *rebuilt.headers_mut() = headers;
        Ok(reqwest::Response::from(rebuilt))
    }
}

/// What a streamed body passes through on its way to `async-openai`: at most `limit` bytes,
/// every server-sent event's data a chunk (or `[DONE]`). A failure is recorded, and the body
/// ends in an error without the offending bytes.
struct StreamGuard {
    limit: usize,
    timeout: Duration,
    read: usize,
    /// The bytes of an event not yet complete.
    pending: Vec<u8>,
    failure: Failed,
}

impl StreamGuard {
    fn pass<B: AsRef<[u8]>>(
        &mut self,
        bytes: Result<B, reqwest::Error>,
    ) -> Result<B, std::io::Error> {
        let checked = bytes
            .map_err(|e| from_reqwest_error(e, self.timeout))
            .and_then(|bytes| self.check(bytes.as_ref()).map(|()| bytes));
        checked.map_err(|error| {
            tracing::debug!(%error, "a streamed answer was stopped");
            let message = error.to_string();
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            std::io::Error::other(message)
        })
    }

    fn check(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        if bytes.len() > self.limit - self.read {
            tracing::warn!(
                limit = self.limit,
                "model server streamed an answer over the limit; not read further"
            );
            return Err(ModelError::TooLarge { limit: self.limit });
        }
        self.read += bytes.len();
        self.pending.extend_from_slice(bytes);
        while let Some((end, blank)) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + blank).take(end).collect();
            check_event(&event)?;
        }
        Ok(())
    }
}

/// Where the first complete event of `bytes` ends, and the length of the blank line that ends it
/// (line ends may be CRLF, LF or CR).
fn event_end(bytes: &[u8]) -> Option<(usize, usize)> {
    (0..bytes.len()).find_map(|at| {
        let rest = &bytes[at..];
        [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
            .into_iter()
            .find(|blank| rest.starts_with(blank))
            .map(|blank| (at, blank.len()))
    })
}

/// Whether a server-sent event's data is a chat-completion chunk (or `[DONE]`, or none).
fn check_event(event: &[u8]) -> Result<(), ModelError> {
    let event = std::str::from_utf8(event)
        .map_err(|_| ModelError::InvalidResponse("the stream is not UTF-8".into()))?;
    let data: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect();
    let data = data.join("\n");
    if data.is_empty() || data == "[DONE]" {
        return Ok(());
    }
    serde_json::from_str::<CreateChatCompletionStreamResponse>(&data)
        .map(|_| ())
        .map_err(|error| ModelError::InvalidResponse(describe_json_error(&error)))
}

/// The body, read chunk by chunk; `None` as soon as it passes `limit` bytes (the rest is not
/// read, and the connection is dropped with it).
async fn read_at_most(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - body.len() {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The error's code from an error body (OpenAI's `error.code`, else `error.type`, or the
/// shapes compatible servers use), when it is a short identifier. Never the error's message:
/// servers quote the request in it ("... 'I feel low' is not valid ...").
fn error_code(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    ["/error/code", "/error/type", "/code", "/type"]
        .iter()
        .filter_map(|pointer| json.pointer(pointer))
        .find_map(|value| match value {
            Value::String(code) => identifier(code),
            Value::Number(code) => Some(code.to_string()),
            _ => None,
        })
}

/// `code` if it looks like an identifier (`rate_limit_exceeded`, `invalid_request_error`,
/// `model-not-found`): short ASCII letters, digits and `_ - .`, so that no free text from the
/// server reaches an error message.
fn identifier(code: &str) -> Option<String> {
    let valid = (1..=MAX_ERROR_CODE_CHARS).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    valid.then(|| code.to_owned())
}

/// How long the server asked us to wait: OpenAI's `retry-after-ms` when present (it is finer
/// than the standard header), else `Retry-After` in seconds or as an HTTP-date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok());
    header("retry-after-ms")
        .and_then(|millis| millis.trim().parse::<f64>().ok())
        .and_then(|millis| Duration::try_from_secs_f64(millis / 1000.0).ok())
        .or_else(|| {
            header(RETRY_AFTER.as_str())
                .and_then(|value| parse_retry_after(value, SystemClock.now()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let map = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(retry_after(&map), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn unusable_retry_after_values_are_ignored() {
        let map = headers(&[("retry-after-ms", "-3"), ("retry-after", "later")]);
        assert_eq!(retry_after(&map), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn error_codes_come_from_the_body_and_never_its_message() {
        let openai = br#"{"error":{"message":"Rate limit reached","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#;
        assert_eq!(error_code(openai).as_deref(), Some("rate_limit_exceeded"));
        let without_code =
            br#"{"error":{"message":"'I feel low' is too long","type":"invalid_request_error","code":null}}"#;
        assert_eq!(
            error_code(without_code).as_deref(),
            Some("invalid_request_error")
        );
        assert_eq!(
            error_code(br#"{"code": 400, "message": "x"}"#).as_deref(),
            Some("400")
        );
        // Free text where a code belongs is not kept.
        let prose = br#"{"error":{"code":"you said: I feel low","type":"I feel low"}}"#;
        assert_eq!(error_code(prose), None);
        assert_eq!(error_code(br#"{"detail":"bad model"}"#), None);
        assert_eq!(error_code(b"<html>proxy</html>"), None);
        let long = format!(r#"{{"error":{{"code":"{}"}}}}"#, "x".repeat(65));
        assert_eq!(error_code(long.as_bytes()), None);
    }

    #[test]
    fn json_errors_do_not_quote_the_body() {
        let error =
            serde_json::from_str::<CreateChatCompletionResponse>(r#"{"choices": "secret words"}"#)
                .unwrap_err();
        let described = describe_json_error(&error);
        assert!(!described.contains("secret"), "{described}");
    }

    #[test]
    fn speaker_names_are_made_what_the_api_accepts() {
        assert_eq!(api_name("Bob Smith").as_deref(), Some("Bob_Smith"));
        assert_eq!(api_name("ann-2_b").as_deref(), Some("ann-2_b"));
        assert_eq!(api_name("Zoë <3").as_deref(), Some("Zo___3"));
        assert_eq!(api_name(&"x".repeat(80)).map(|n| n.len()), Some(64));
        assert_eq!(api_name(""), None);
    }

    #[test]
    fn aliases_resolve_and_other_names_pass_through() {
        let config = OpenAiConfig::new("http://localhost/v1", "key", "base-model")
            .with_alias("fast", "gpt-4o-mini");
        assert_eq!(config.resolve_model(None), "base-model");
        assert_eq!(config.resolve_model(Some("fast")), "gpt-4o-mini");
        assert_eq!(config.resolve_model(Some("quality")), "quality");
    }
}
