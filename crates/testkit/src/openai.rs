//! An OpenAI-compatible chat-completions server with scripted answers.
//!
//! Each request to `POST /v1/chat/completions` takes the next scripted [`Reply`]; a request with
//! nothing scripted gets HTTP 500 with an explanation, so a test that calls the model more often
//! than it expects fails loudly.
//!
//! Like OpenAI, the double refuses (HTTP 400 `invalid_request_error`, without taking a scripted
//! reply) a request OpenAI would refuse for what the engine controls: a message `name` outside
//! `^[a-zA-Z0-9_-]{1,64}$`, a `tool` message that does not answer a call of the assistant
//! message before it, and a call left unanswered.
//!
//! A request with `stream: true` is answered as OpenAI streams: `text/event-stream`, one
//! `data: {chunk}` event per piece (`chat.completion.chunk` objects, the first naming the role,
//! the last giving the finish reason), then, when `stream_options.include_usage` is set, a chunk
//! with empty `choices` and the usage, then `data: [DONE]`. A scripted content is streamed a
//! word at a time; [`Reply::Streamed`] scripts the pieces, a stream that breaks off, or a last
//! piece held until the test opens a [`Gate`]. Errors are answered as without streaming (a
//! status and a JSON body), as OpenAI answers them before any event.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A successful completion with this content.
    Content(String),
    /// A successful completion with this content and token usage (prompt, completion).
    ContentWithUsage(String, u64, u64),
    /// An error status with an OpenAI-style error body.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After` header, in seconds.
        retry_after: Option<u64>,
    },
    /// A 200 whose body is exactly this text (for malformed answers).
    RawBody(String),
    /// Exactly this status, these headers and this body (an error body that quotes the
    /// request, a `Retry-After` given as an HTTP date).
    Raw {
        /// HTTP status.
        status: u16,
        /// Header names and values.
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
    /// A well-formed completion whose message content is `null`, without a refusal.
    NullContent,
    /// A well-formed completion with an empty `choices` list.
    NoChoices,
    /// A well-formed completion whose message is a refusal (content `null`).
    Refusal(String),
    /// A completion that calls tools (content `null`, `finish_reason` `tool_calls`).
    ToolCalls(Vec<ScriptedToolCall>),
    /// The inner reply, after a delay (for time-outs).
    Delayed(Duration, Box<Reply>),
    /// An answer in these pieces: streamed one event each to a streaming request, whole
    /// (the pieces joined, after the gate if any) to any other.
    Streamed(Pieces),
}

/// A scripted streamed answer (see [`Reply::Streamed`]).
#[derive(Debug, Clone)]
pub struct Pieces {
    /// The content's pieces, one chunk each.
    pub pieces: Vec<String>,
    /// How the stream ends.
    pub end: StreamEnd,
}

/// How a [`Pieces`] stream ends.
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// A finish reason, the usage when asked for, `[DONE]`.
    Finished,
    /// The connection breaks after the pieces: no finish reason, no `[DONE]`.
    Cut,
    /// As [`StreamEnd::Finished`], but the last piece is sent only once the gate is opened.
    Held(Gate),
    /// As [`StreamEnd::Cut`], the connection broken only once the gate is opened.
    CutWhenOpened(Gate),
}

/// Holds a streamed answer's last piece until [`open`](Gate::open)ed. Clones share the gate.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<Notify>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate::default()
    }

    /// Lets the held piece go (now, or as soon as it is reached).
    pub fn open(&self) {
        self.0.notify_one();
    }

    async fn passed(&self) {
        self.0.notified().await;
    }
}

impl Reply {
    /// A successful completion with `content`.
    pub fn content(content: impl Into<String>) -> Self {
        Reply::Content(content.into())
    }

    /// A completion calling one tool, `name`, with `arguments` (JSON text), under the call id
    /// `id`.
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Self {
        Reply::ToolCalls(vec![ScriptedToolCall::new(id, name, arguments)])
    }

    /// An error status without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Reply::Status {
            status,
            retry_after: None,
        }
    }

    /// An answer streamed in `pieces`.
    pub fn pieces<S: Into<String>>(pieces: impl IntoIterator<Item = S>) -> Self {
        Reply::Streamed(Pieces {
            pieces: pieces.into_iter().map(Into::into).collect(),
            end: StreamEnd::Finished,
        })
    }

    /// A stream that sends `pieces` and then breaks off.
    pub fn cut<S: Into<String>>(pieces: impl IntoIterator<Item = S>) -> Self {
        Reply::Streamed(Pieces {
            pieces: pieces.into_iter().map(Into::into).collect(),
            end: StreamEnd::Cut,
        })
    }

    /// A stream that sends `pieces` and breaks off once `gate` is opened.
    pub fn cut_when_opened<S: Into<String>>(
        pieces: impl IntoIterator<Item = S>,
        gate: &Gate,
    ) -> Self {
        Reply::Streamed(Pieces {
            pieces: pieces.into_iter().map(Into::into).collect(),
            end: StreamEnd::CutWhenOpened(gate.clone()),
        })
    }

    /// An answer streamed in `pieces`, the last held until `gate` is opened.
    pub fn held<S: Into<String>>(pieces: impl IntoIterator<Item = S>, gate: &Gate) -> Self {
        Reply::Streamed(Pieces {
            pieces: pieces.into_iter().map(Into::into).collect(),
            end: StreamEnd::Held(gate.clone()),
        })
    }

    fn template(&self) -> ResponseTemplate {
        match self {
            Reply::Content(content) => completion(content, 10, 5),
            Reply::ContentWithUsage(content, prompt, done) => completion(content, *prompt, *done),
            Reply::Status {
                status,
                retry_after,
            } => {
                let mut template = ResponseTemplate::new(*status).set_body_json(json!({
                    "error": {
                        "message": format!("scripted status {status}"),
                        "type": if *status == 429 { "rate_limit_error" } else { "server_error" },
                        "param": null,
                        "code": null
                    }
                }));
                if let Some(seconds) = retry_after {
                    template = template.insert_header("retry-after", seconds.to_string().as_str());
                }
                template
            }
            Reply::RawBody(body) => ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string(body.clone()),
            Reply::Raw {
                status,
                headers,
                body,
            } => headers.iter().fold(
                ResponseTemplate::new(*status)
                    .insert_header("content-type", "application/json")
                    .set_body_string(body.clone()),
                |template, (name, value)| template.insert_header(name.as_str(), value.as_str()),
            ),
            Reply::NullContent => {
                completion_with_choices(json!([choice(Value::Null, Value::Null)]))
            }
            Reply::NoChoices => completion_with_choices(json!([])),
            Reply::Refusal(refusal) => {
                completion_with_choices(json!([choice(Value::Null, json!(refusal))]))
            }
            Reply::ToolCalls(calls) => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": call.arguments }
                        })
                    })
                    .collect();
                completion_body(
                    json!([{
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": null,
                            "refusal": null,
                            "tool_calls": calls
                        },
                        "finish_reason": "tool_calls",
                        "logprobs": null
                    }]),
                    10,
                    5,
                )
            }
            Reply::Delayed(delay, inner) => inner.template().set_delay(*delay),
            Reply::Streamed(streamed) => completion(&streamed.pieces.concat(), 10, 5),
        }
    }

    /// The events of this reply streamed, or `None` for a reply answered as without streaming.
    fn events(&self, usage_asked: bool) -> Option<Vec<Event>> {
        let mut events = vec![Event::Chunk(chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ))];
        let (prompt, done) = match self {
            Reply::ContentWithUsage(_, prompt, done) => (*prompt, *done),
            _ => (10, 5),
        };
        let finish = match self {
            Reply::Content(content) | Reply::ContentWithUsage(content, ..) => {
                events.extend(
                    content
                        .split_inclusive(' ')
                        .map(|word| Event::Chunk(chunk(json!({"content": word}), None))),
                );
                "stop"
            }
            Reply::Refusal(refusal) => {
                events.push(Event::Chunk(chunk(json!({"refusal": refusal}), None)));
                "stop"
            }
            Reply::NullContent => "stop",
            Reply::NoChoices => {
                return Some(vec![Event::Data(
                    json!({
                        "id": "chatcmpl-double", "object": "chat.completion.chunk",
                        "created": 1_700_000_000, "model": "double-model", "choices": []
                    })
                    .to_string(),
                )]);
            }
            Reply::ToolCalls(calls) => {
                for (index, call) in calls.iter().enumerate() {
                    // The arguments in two pieces, as servers send them.
                    let half = call.arguments.len() / 2;
                    let half = (half..=call.arguments.len())
                        .find(|at| call.arguments.is_char_boundary(*at))
                        .unwrap_or(0);
                    let (first, second) = call.arguments.split_at(half);
                    events.push(Event::Chunk(chunk(
                        json!({"tool_calls": [{
                            "index": index, "id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": first}
                        }]}),
                        None,
                    )));
                    events.push(Event::Chunk(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": second}}]}),
                        None,
                    )));
                }
                "tool_calls"
            }
            Reply::Streamed(streamed) => {
                let last = streamed.pieces.len().saturating_sub(1);
                for (i, piece) in streamed.pieces.iter().enumerate() {
                    if let (true, StreamEnd::Held(gate)) = (i == last, &streamed.end) {
                        events.push(Event::Wait(gate.clone()));
                    }
                    events.push(Event::Chunk(chunk(json!({"content": piece}), None)));
                }
                match &streamed.end {
                    StreamEnd::Cut => {
                        events.push(Event::Break);
                        return Some(events);
                    }
                    StreamEnd::CutWhenOpened(gate) => {
                        events.push(Event::Wait(gate.clone()));
                        events.push(Event::Break);
                        return Some(events);
                    }
                    StreamEnd::Finished | StreamEnd::Held(_) => {}
                }
                "stop"
            }
            Reply::Status { .. } | Reply::RawBody(_) | Reply::Raw { .. } | Reply::Delayed(..) => {
                return None;
            }
        };
        events.push(Event::Chunk(chunk(json!({}), Some(finish))));
        if usage_asked {
            events.push(Event::Data(
                json!({
                    "id": "chatcmpl-double", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "double-model", "choices": [],
                    "usage": {
                        "prompt_tokens": prompt, "completion_tokens": done,
                        "total_tokens": prompt + done
                    }
                })
                .to_string(),
            ));
        }
        events.push(Event::Data("[DONE]".into()));
        Some(events)
    }
}

/// One step of a streamed answer.
enum Event {
    /// `data: {chunk}`.
    Chunk(Value),
    /// `data: ` this text.
    Data(String),
    /// Waits for the gate.
    Wait(Gate),
    /// Breaks the connection.
    Break,
}

/// A `chat.completion.chunk` with this delta for the first choice.
fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-double",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "double-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]
    })
}

/// What the double answers without streaming: a status, headers, a body, after a delay.
#[derive(Debug, Clone)]
struct ResponseTemplate {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Option<Duration>,
}

impl ResponseTemplate {
    fn new(status: u16) -> Self {
        ResponseTemplate {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: None,
        }
    }

    fn set_body_json(self, body: Value) -> Self {
        self.insert_header("content-type", "application/json")
            .set_body_string(body.to_string())
    }

    fn set_body_string(mut self, body: String) -> Self {
        self.body = body;
        self
    }

    fn insert_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .retain(|(known, _)| !known.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn set_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    async fn into_response(self) -> Response {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                header::HeaderName::from_bytes(name.as_bytes()),
                header::HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// The events as a `text/event-stream` body.
fn event_stream(events: Vec<Event>) -> Response {
    let body = futures_util::stream::unfold(VecDeque::from(events), |mut events| async move {
        loop {
            match events.pop_front()? {
                Event::Chunk(chunk) => {
                    return Some((Ok(Bytes::from(format!("data: {chunk}\n\n"))), events));
                }
                Event::Data(data) => {
                    return Some((Ok(Bytes::from(format!("data: {data}\n\n"))), events));
                }
                Event::Wait(gate) => gate.passed().await,
                Event::Break => {
                    // Once, so that the pieces before are written out before the connection
                    // breaks (the server flushes while the body has nothing ready).
                    tokio::task::yield_now().await;
                    return Some((
                        Err(std::io::Error::other("the double breaks the stream off")),
                        VecDeque::new(),
                    ));
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// One tool call of a scripted [`Reply::ToolCalls`].
#[derive(Debug, Clone)]
pub struct ScriptedToolCall {
    /// The call's id.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as JSON text (or not: models get it wrong too).
    pub arguments: String,
}

impl ScriptedToolCall {
    /// A call of `name` with `arguments`, under the id `id`.
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        ScriptedToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        }
    }
}

fn completion(content: &str, prompt_tokens: u64, completion_tokens: u64) -> ResponseTemplate {
    completion_body(
        json!([choice(json!(content), Value::Null)]),
        prompt_tokens,
        completion_tokens,
    )
}

/// A completion with `choices` and a token of usage each way.
fn completion_with_choices(choices: Value) -> ResponseTemplate {
    completion_body(choices, 1, 1)
}

/// The first choice, with this content and refusal (each a string or `null`).
fn choice(content: Value, refusal: Value) -> Value {
    json!({
        "index": 0,
        "message": { "role": "assistant", "content": content, "refusal": refusal },
        "finish_reason": "stop",
        "logprobs": null
    })
}

fn completion_body(choices: Value, prompt_tokens: u64, completion_tokens: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "double-model",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
}

type Script = Arc<Mutex<VecDeque<Reply>>>;

/// A request as received: its headers (lowercased names) and body.
type Received = (Vec<(String, String)>, Bytes);

#[derive(Default)]
struct Double {
    script: Script,
    received: Mutex<Vec<Received>>,
}

async fn respond(State(double): State<Arc<Double>>, headers: HeaderMap, body: Bytes) -> Response {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    double
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((headers, body.clone()));
    let json = serde_json::from_slice::<Value>(&body).ok();
    if let Some(problem) = json.as_ref().and_then(refused) {
        return ResponseTemplate::new(400)
            .set_body_json(json!({
                "error": {
                    "message": problem,
                    "type": "invalid_request_error",
                    "param": null,
                    "code": null
                }
            }))
            .into_response()
            .await;
    }
    let next = double
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front();
    let Some(reply) = next else {
        return ResponseTemplate::new(500)
            .set_body_json(json!({
                "error": {
                    "message": "the OpenAI double has no scripted reply left for this request",
                    "type": "double_script_exhausted",
                    "param": null,
                    "code": null
                }
            }))
            .into_response()
            .await;
    };
    let streams = json
        .as_ref()
        .and_then(|json| json.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let usage_asked = json
        .as_ref()
        .and_then(|json| json.pointer("/stream_options/include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut reply = reply;
    if streams {
        // A delay comes before the answer, streamed or not.
        while let Reply::Delayed(delay, inner) = reply {
            tokio::time::sleep(delay).await;
            reply = *inner;
        }
        if let Some(events) = reply.events(usage_asked) {
            return event_stream(events);
        }
    }
    if let Reply::Streamed(Pieces {
        end: StreamEnd::Held(gate),
        ..
    }) = &reply
    {
        gate.passed().await;
    }
    reply.template().into_response().await
}

/// Why OpenAI would refuse `body`, for the rules the double checks (see the module docs).
fn refused(body: &Value) -> Option<String> {
    let messages = body.get("messages")?.as_array()?;
    let mut answerable: Vec<&str> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !valid {
                return Some(format!(
                    "'{name}' does not match '^[a-zA-Z0-9_-]{{1,64}}$' - 'messages.{i}.name'"
                ));
            }
        }
        match message.get("role").and_then(Value::as_str) {
            Some("tool") => {
                let id = message.get("tool_call_id").and_then(Value::as_str);
                match answerable.iter().position(|call| Some(*call) == id) {
                    Some(at) => {
                        answerable.remove(at);
                    }
                    None => {
                        return Some(format!(
                            "messages with role 'tool' must be a response to a preceding message \
                             with 'tool_calls' - 'messages.{i}'"
                        ));
                    }
                }
            }
            _ if !answerable.is_empty() => {
                return Some(format!(
                    "an assistant message with 'tool_calls' must be followed by tool messages \
                     responding to each 'tool_call_id' - 'messages.{i}'"
                ));
            }
            _ => {
                answerable = message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(|calls| {
                        calls
                            .iter()
                            .filter_map(|call| call.get("id").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
            }
        }
    }
    (!answerable.is_empty()).then(|| {
        "an assistant message with 'tool_calls' must be followed by tool messages responding \
         to each 'tool_call_id'"
            .to_owned()
    })
}

/// A running OpenAI-compatible double on a loopback port; it stops when dropped.
#[derive(Debug)]
pub struct OpenAiDouble {
    address: SocketAddr,
    double: Arc<Double>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Double {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Double").finish_non_exhaustive()
    }
}

impl Drop for OpenAiDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl OpenAiDouble {
    /// Starts the double with an empty script.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound (a test fails there).
    pub async fn start() -> Self {
        #[allow(clippy::expect_used)] // A double that cannot listen fails its test.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the OpenAI double binds a loopback port");
        #[allow(clippy::expect_used)]
        let address = listener
            .local_addr()
            .expect("the OpenAI double's port is known");
        let double = Arc::new(Double::default());
        let router = Router::new()
            .route("/v1/chat/completions", post(respond))
            .with_state(double.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        OpenAiDouble {
            address,
            double,
            server,
        }
    }

    /// The base URL to configure a client with (ends in `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Scripts the next answer.
    pub fn push(&self, reply: Reply) -> &Self {
        self.script().push_back(reply);
        self
    }

    /// Scripts the next answer as a successful completion with `content`.
    pub fn push_content(&self, content: impl Into<String>) -> &Self {
        self.push(Reply::content(content))
    }

    fn script(&self) -> std::sync::MutexGuard<'_, VecDeque<Reply>> {
        self.double
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the scripted answers not yet served; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut script = self.script();
        let left = script.len();
        script.clear();
        left
    }

    /// Scripted answers not yet served.
    pub fn remaining(&self) -> usize {
        self.script().len()
    }

    fn received(&self) -> Vec<Received> {
        self.double
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The JSON bodies of every chat-completion request received so far, in order.
    pub async fn requests(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter_map(|(_, body)| serde_json::from_slice(body).ok())
            .collect()
    }

    /// The headers of every request received so far, lowercased names, in order.
    pub async fn request_headers(&self) -> Vec<Vec<(String, String)>> {
        self.received()
            .into_iter()
            .map(|(headers, _)| headers)
            .collect()
    }
}
