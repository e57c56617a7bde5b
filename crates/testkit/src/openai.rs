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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

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
        }
    }
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

struct Scripted(Script);

impl Respond for Scripted {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(problem) = serde_json::from_slice::<Value>(&request.body)
            .ok()
            .and_then(|body| refused(&body))
        {
            return ResponseTemplate::new(400).set_body_json(json!({
                "error": {
                    "message": problem,
                    "type": "invalid_request_error",
                    "param": null,
                    "code": null
                }
            }));
        }
        let next = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        match next {
            Some(reply) => reply.template(),
            None => ResponseTemplate::new(500).set_body_json(json!({
                "error": {
                    "message": "the OpenAI double has no scripted reply left for this request",
                    "type": "double_script_exhausted",
                    "param": null,
                    "code": null
                }
            })),
        }
    }
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

/// A running OpenAI-compatible double on a loopback port.
#[derive(Debug)]
pub struct OpenAiDouble {
    server: MockServer,
    script: Script,
}

impl OpenAiDouble {
    /// Starts the double with an empty script.
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let script: Script = Arc::default();
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(Scripted(script.clone()))
            .mount(&server)
            .await;
        OpenAiDouble { server, script }
    }

    /// The base URL to configure a client with (ends in `/v1`).
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.uri())
    }

    /// Scripts the next answer.
    pub fn push(&self, reply: Reply) -> &Self {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(reply);
        self
    }

    /// Scripts the next answer as a successful completion with `content`.
    pub fn push_content(&self, content: impl Into<String>) -> &Self {
        self.push(Reply::content(content))
    }

    /// Drops the scripted answers not yet served; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut script = self.script.lock().unwrap_or_else(PoisonError::into_inner);
        let left = script.len();
        script.clear();
        left
    }

    /// Scripted answers not yet served.
    pub fn remaining(&self) -> usize {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The JSON bodies of every chat-completion request received so far, in order.
    pub async fn requests(&self) -> Vec<Value> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }

    /// The headers of every request received so far, lowercased names, in order.
    pub async fn request_headers(&self) -> Vec<Vec<(String, String)>> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| {
                r.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect()
            })
            .collect()
    }
}
