//! An OpenAI-compatible chat-completions server with scripted answers.
//!
//! Each request to `POST /v1/chat/completions` takes the next scripted [`Reply`]; a request with
//! nothing scripted gets HTTP 500 with an explanation, so a test that calls the model more often
//! than it expects fails loudly.

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
    /// The inner reply, after a delay (for time-outs).
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// A successful completion with `content`.
    pub fn content(content: impl Into<String>) -> Self {
        Reply::Content(content.into())
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
            Reply::Delayed(delay, inner) => inner.template().set_delay(*delay),
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
    fn respond(&self, _request: &Request) -> ResponseTemplate {
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
