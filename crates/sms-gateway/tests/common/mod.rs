//! What the end-to-end tests share: the gateway binary run as a child process, an echoing model
//! server, webhooks posted as Twilio posts them, reading back what a store holds, bounded waits,
//! and (`outage`) the store-outage scenario.
//!
//! Every gateway runs with a cleared environment, configured only by what the test sets, and
//! is killed when its [`Gateway`] is dropped.

#![allow(dead_code, unreachable_pub)]

pub mod data_requests;
pub mod lines;
pub mod outage;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use soul_persistence::{Address, Store};
use soul_testkit::twilio::{SignedRequest, TwilioDouble, new_sid};

/// The number replies come from.
pub const TWILIO_FROM: &str = "+15005550006";
/// The help text configured in every test.
pub const HELP_TEXT: &str = "Sage test line. Reply STOP to stop.";
/// Long enough for anything these tests wait for on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 20 ms until it gives a value, panicking with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound, then released for the gateway to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A fresh Twilio double with a random account.
pub async fn twilio() -> TwilioDouble {
    TwilioDouble::start(&new_sid("AC"), "test-auth-token").await
}

/// An OpenAI-compatible server that answers every request with `Pip said: "echo TOKEN"`, where
/// TOKEN is the newest `<<…>>` token in the user messages: replies name the message they
/// answer, whatever order concurrent requests arrive in.
#[derive(Debug)]
pub struct EchoModel {
    address: SocketAddr,
    state: Arc<EchoState>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct EchoState {
    requests: Mutex<Vec<String>>,
    /// For each request, the token and the soul whose persona the system prompt holds.
    souls: Mutex<Vec<(String, String)>>,
    delay: Duration,
    answering: AtomicUsize,
    most_at_once: AtomicUsize,
    /// Whether answers go out; while not, each waits (see [`EchoModel::hold`]).
    open: tokio::sync::watch::Sender<bool>,
}

impl Default for EchoState {
    fn default() -> Self {
        EchoState {
            requests: Mutex::default(),
            souls: Mutex::default(),
            delay: Duration::ZERO,
            answering: AtomicUsize::default(),
            most_at_once: AtomicUsize::default(),
            open: tokio::sync::watch::Sender::new(true),
        }
    }
}

impl Drop for EchoModel {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The `<<…>>` token in `text`, if any.
pub fn token(text: &str) -> Option<&str> {
    let start = text.rfind("<<")?;
    let end = start + text[start..].find(">>")? + 2;
    Some(&text[start..end])
}

impl EchoModel {
    /// Starts the server on a loopback port.
    pub async fn start() -> Self {
        Self::start_slow(Duration::ZERO).await
    }

    /// Starts a server that takes `delay` over every answer (after recording the request), so
    /// that a test can act while a turn waits for the model.
    pub async fn start_slow(delay: Duration) -> Self {
        let state = Arc::new(EchoState {
            delay,
            ..EchoState::default()
        });
        let router = axum::Router::new()
            .route("/v1/chat/completions", post(echo))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the echo model");
        let address = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("echo model");
        });
        EchoModel {
            address,
            state,
            server,
        }
    }

    /// The base URL (`OPENAI_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The tokens answered so far, in order of arrival.
    pub fn answered(&self) -> Vec<String> {
        self.state.requests.lock().expect("not poisoned").clone()
    }

    /// Holds every answer from now on (each request is recorded, then waits) until
    /// [`release`](Self::release): a turn then runs, holding its lease, for as long as a test
    /// needs.
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Lets the held answers, and every later one, go.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// The souls asked about `token`: the name each request's persona gives ("You are Pip, …"),
    /// in order of arrival.
    pub fn souls_asked(&self, token: &str) -> Vec<String> {
        self.state
            .souls
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(asked, _)| asked == token)
            .map(|(_, soul)| soul.clone())
            .collect()
    }

    /// The most requests it was answering at the same time.
    pub fn most_at_once(&self) -> usize {
        self.state.most_at_once.load(Ordering::SeqCst)
    }
}

async fn echo(State(state): State<Arc<EchoState>>, body: Bytes) -> axum::response::Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let answered = messages
        .iter()
        .rev()
        .filter(|message| message["role"] == "user")
        .find_map(|message| message["content"].as_str().and_then(token))
        .unwrap_or("<<none>>")
        .to_owned();
    state
        .requests
        .lock()
        .expect("not poisoned")
        .push(answered.clone());
    let soul = messages
        .iter()
        .filter(|message| message["role"] == "system")
        .filter_map(|message| message["content"].as_str())
        .find_map(|content| {
            let named = &content[content.find("You are ")? + "You are ".len()..];
            Some(named[..named.find(',')?].to_owned())
        })
        .unwrap_or_default();
    state
        .souls
        .lock()
        .expect("not poisoned")
        .push((answered.clone(), soul));
    let answering = state.answering.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_at_once.fetch_max(answering, Ordering::SeqCst);
    tokio::time::sleep(state.delay).await;
    // The sender lives in the state, so the wait ends only by a release.
    let _ = state.open.subscribe().wait_for(|open| *open).await;
    state.answering.fetch_sub(1, Ordering::SeqCst);
    let answer = json!({
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "echo",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": format!("Pip said: \"echo {answered}\""), "refusal": null },
            "finish_reason": "stop",
            "logprobs": null
        }],
        "usage": { "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10 }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// A gateway's configuration: the environment it runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every variable set; the rest of the environment is cleared.
    pub env: BTreeMap<String, String>,
    /// Where its logs go.
    pub log: PathBuf,
}

impl Settings {
    /// A gateway on `database_url` talking to `twilio` and the model at `model_url`, running
    /// Pip (one model call per ordinary message), with short sweeps.
    pub fn new(dir: &Path, database_url: &str, twilio: &TwilioDouble, model_url: &str) -> Self {
        let mut env = BTreeMap::new();
        for (key, value) in [
            ("BIND", "127.0.0.1"),
            ("TWILIO_FROM", TWILIO_FROM),
            ("OPENAI_API_KEY", "test-key"),
            ("SOUL", "pip"),
            ("HELP_TEXT", HELP_TEXT),
            ("OUTBOX_RETRY_AFTER", "1s"),
            ("SWEEP_INTERVAL", "200ms"),
            ("SHUTDOWN_TIMEOUT", "20s"),
            ("RUST_LOG", "info"),
        ] {
            env.insert(key.to_owned(), value.to_owned());
        }
        env.insert("DATABASE_URL".to_owned(), database_url.to_owned());
        env.insert("OPENAI_BASE_URL".to_owned(), model_url.to_owned());
        env.insert("TWILIO_API_BASE".to_owned(), twilio.base_url());
        env.insert(
            "TWILIO_ACCOUNT_SID".to_owned(),
            twilio.account_sid().to_owned(),
        );
        env.insert(
            "TWILIO_AUTH_TOKEN".to_owned(),
            twilio.auth_token().to_owned(),
        );
        let log = dir.join(format!("gateway-{}.log", free_port()));
        Settings { env, log }
    }

    /// Sets `key`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Leaves `key` unset.
    pub fn unset(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }
}

/// A gateway process, killed on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    /// `http://127.0.0.1:PORT`, also its `PUBLIC_URL`.
    pub url: String,
    /// Its log file.
    pub log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway binary, configured by `env` alone.
pub fn command(env: &BTreeMap<String, String>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sms-gateway"));
    command.env_clear().envs(env);
    command
}

/// The gateway binary, configured by `env` alone, under an open-file limit of `open_files`
/// (soft and hard, as the shell's `ulimit -n` sets both).
pub fn command_with_open_files(env: &BTreeMap<String, String>, open_files: u32) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .args([
            "-c",
            &format!("ulimit -n {open_files} && exec \"$0\""),
            env!("CARGO_BIN_EXE_sms-gateway"),
        ])
        .env_clear()
        .envs(env);
    command
}

impl Gateway {
    /// Starts a gateway with `settings` and waits until it answers `/healthz`.
    pub async fn start(settings: &Settings) -> Gateway {
        Self::start_command(settings, command(&settings.env)).await
    }

    /// [`start`](Self::start) under an open-file limit of `open_files`.
    pub async fn start_with_open_files(settings: &Settings, open_files: u32) -> Gateway {
        Self::start_command(settings, command_with_open_files(&settings.env, open_files)).await
    }

    async fn start_command(settings: &Settings, mut command: Command) -> Gateway {
        // The port is free when chosen but another test may take it before the gateway binds
        // it: a gateway that could not listen is started again on another port.
        for _ in 0..5 {
            let logged_before = std::fs::metadata(&settings.log).map_or(0, |meta| meta.len());
            let mut gateway = Self::spawn(settings, &mut command);
            match gateway.wait_until_healthy().await {
                Ok(()) => return gateway,
                Err(status) => {
                    let logs = gateway.logs();
                    let tail = logs
                        .get(usize::try_from(logged_before).unwrap_or(0)..)
                        .unwrap_or("");
                    if !tail.contains("Address already in use") {
                        panic!("the gateway exited with {status}:\n{logs}");
                    }
                }
            }
        }
        panic!("the gateway found no free port in five tries");
    }

    fn spawn(settings: &Settings, command: &mut Command) -> Gateway {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.log)
            .expect("open the log file");
        let child = command
            .env("PORT", port.to_string())
            .env("PUBLIC_URL", &url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the gateway");
        Gateway {
            child,
            url,
            log: settings.log.clone(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until the gateway answers `/healthz`; its exit status if it exited first.
    async fn wait_until_healthy(&mut self) -> Result<(), std::process::ExitStatus> {
        let health = format!("{}/healthz", self.url);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status);
            }
            if let Ok(response) = self.http.get(&health).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "the gateway did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The URL Twilio calls for `path`.
    pub fn webhook_url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Posts a signed webhook as Twilio does; the status and body.
    pub async fn post(&self, request: &SignedRequest) -> (u16, String) {
        self.post_raw(&request.url, request.body.clone(), Some(&request.signature))
            .await
    }

    /// Posts `body` to `url` with an optional signature header.
    pub async fn post_raw(
        &self,
        url: &str,
        body: String,
        signature: Option<&str>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", signature);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The value of the metric series `series` (e.g. `sms_gateway_turns_total{result="silent"}`).
    pub async fn metric(&self, series: &str) -> u64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the metric series `series` reaches `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: u64) {
        eventually(&format!("{series} >= {at_least}"), || async {
            (self.metric(series).await >= at_least).then_some(())
        })
        .await;
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The texts of the person's messages in a store's `export_user` answer, oldest first.
pub fn user_texts(export: &Value) -> Vec<&str> {
    export["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|message| message["role"] == "user")
        .filter_map(|message| message["content"].as_str())
        .collect()
}

/// Whether `text` was logged by `gateway`'s run anywhere: for privacy checks.
pub fn assert_not_logged(gateway: &Gateway, secrets: &[&str]) {
    let logs = gateway.logs();
    assert!(!logs.is_empty(), "the gateway logged nothing");
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
    }
}

/// How long Twilio waits for a webhook's answer before giving up on it.
pub const TWILIO_WAITS: Duration = Duration::from_secs(15);

/// Posts `request` as Twilio does; the status, or `None` when there was no answer in time.
pub async fn post_as_twilio(http: &reqwest::Client, request: &SignedRequest) -> Option<u16> {
    let response = http
        .post(&request.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", &request.signature)
        .body(request.body.clone())
        .timeout(TWILIO_WAITS)
        .send()
        .await;
    response.ok().map(|response| response.status().as_u16())
}

/// The conversation `store` holds with `number`, as (role, text) in order.
pub async fn stored_exchange(store: &dyn Store, number: &str) -> Vec<(String, String)> {
    let export = store
        .export_user(&Address::new(number))
        .await
        .expect("the store answers")
        .expect("the person is known")[0]
        .clone();
    let messages = export["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .map(|message| {
            let text = |key: &str| message[key].as_str().unwrap_or_default().to_owned();
            (text("role"), text("content"))
        })
        .collect()
}

/// What [`stored_exchange`] gives for a conversation of (message, reply) pairs.
pub fn exchange(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .flat_map(|(said, answered)| {
            [
                ("user".to_owned(), (*said).to_owned()),
                ("assistant".to_owned(), (*answered).to_owned()),
            ]
        })
        .collect()
}
