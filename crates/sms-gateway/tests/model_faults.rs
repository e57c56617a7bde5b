//! Model faults end to end: the gateway binary on SQLite, its model a scripted double, with a
//! configured fallback reply.
//!
//! Each test takes one fault through three messages from one person: the fault once and then a
//! good answer (the person gets the real reply; the model was asked once more), the fault until
//! the retry budget is spent (the person gets the fallback reply, once, and nothing but the
//! message and that reply is stored), and a healthy model again (answered normally). Retry
//! budgets are short here, so that spending one takes a second or two.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::time::Duration;

use common::{Gateway, PATIENCE, Settings, TWILIO_FROM, assert_not_logged, eventually, twilio};
use serde_json::Value;
use soul_persistence::{Address, SqliteStore, Store};
use soul_testkit::openai::{OpenAiDouble, Reply};
use soul_testkit::twilio::{SignedRequest, TwilioDouble};
use tempfile::TempDir;

/// The configured fallback reply.
const FALLBACK: &str = "Pip is offline for a moment. Try again soon.";

/// How a fault ends a turn in the fallback reply.
#[derive(Debug, Clone, Copy)]
enum Exhausting {
    /// The model client retries it until the budget is spent: at least this many requests (the
    /// backoffs are random, so the count is not fixed).
    AtLeast(usize),
    /// The step gives up after exactly this many answers (they are not the client's to retry).
    Exactly(usize),
}

/// A gateway running Pip (one model call per ordinary message) against the scripted model.
struct Fixture {
    _dir: TempDir,
    /// The gateway's store, opened on the same file.
    store: SqliteStore,
    twilio: TwilioDouble,
    model: OpenAiDouble,
    gateway: Gateway,
    from: &'static str,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("gateway log:\n{}", self.gateway.logs());
        }
    }
}

impl Fixture {
    /// Starts a gateway with the fallback reply, a 2 s model retry budget and `env` set.
    async fn start(env: &[(&str, &str)]) -> Fixture {
        let dir = TempDir::new().unwrap();
        let twilio = twilio().await;
        let model = OpenAiDouble::start().await;
        let database = format!("sqlite://{}/soul.db", dir.path().display());
        let mut settings = Settings::new(dir.path(), &database, &twilio, &model.base_url())
            .set("FALLBACK_REPLY", FALLBACK)
            .set("MODEL_TIMEOUT", "1s")
            .set("MODEL_RETRY_BUDGET", "2s");
        for (key, value) in env {
            settings = settings.set(key, value);
        }
        let gateway = Gateway::start(&settings).await;
        let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
        Fixture {
            _dir: dir,
            store,
            twilio,
            model,
            gateway,
            from: "+14155550170",
        }
    }

    fn sms(&self, body: &str) -> SignedRequest {
        self.twilio.inbound_sms(self.from, TWILIO_FROM, body).sign(
            &self.gateway.webhook_url("/twilio/sms"),
            self.twilio.auth_token(),
        )
    }

    /// Texts `body` and waits until the person has been sent `replies` messages in all, each
    /// marked accepted in the store; returns the texts sent to them, in order.
    async fn text(&self, body: &str, replies: usize) -> Vec<String> {
        let (status, _) = self.gateway.post(&self.sms(body)).await;
        assert_eq!(status, 200);
        self.twilio.wait_for_messages(replies, PATIENCE).await;
        eventually("the replies marked accepted", || async {
            let outbound = self.export().await["outbound_messages"].clone();
            let outbound = outbound.as_array()?;
            (outbound.len() == replies && outbound.iter().all(|m| m["status"] == "accepted"))
                .then_some(())
        })
        .await;
        self.twilio
            .messages()
            .into_iter()
            .map(|message| {
                assert_eq!(message.to, self.from);
                message.body
            })
            .collect()
    }

    /// Everything stored about the person.
    async fn export(&self) -> Value {
        self.store
            .export_user(&Address::new(self.from))
            .await
            .unwrap()
            .unwrap_or_default()[0]
            .clone()
    }

    async fn requests(&self) -> usize {
        self.model.requests().await.len()
    }

    /// Takes the fault through the three messages. `fault` is what the model answers instead of
    /// a completion; `exhausting` is how answering it ends the turn in the fallback reply.
    async fn run(&self, fault: impl Fn() -> Reply, exhausting: Exhausting) {
        // Once, then a good answer: retried, and the person never knows.
        self.model
            .push(fault())
            .push_content("Pip said: \"Osmosis moves water.\"");
        let sent = self.text("what is osmosis <<1>>", 1).await;
        assert_eq!(sent, ["Osmosis moves water."]);
        assert_eq!(self.requests().await, 2, "one retry");

        // Until the budget is spent: the fallback reply, and nothing else of the turn stored.
        let before = self.export().await;
        for _ in 0..100 {
            self.model.push(fault());
        }
        let sent = self.text("and diffusion <<2>>", 2).await;
        assert_eq!(sent, ["Osmosis moves water.", FALLBACK]);
        let unused = self.model.clear();
        let asked = self.requests().await - 2;
        assert_eq!(asked, 100 - unused);
        match exhausting {
            Exhausting::AtLeast(least) => assert!(asked >= least, "only {asked} requests"),
            Exhausting::Exactly(count) => assert_eq!(asked, count),
        }
        self.gateway
            .wait_metric("sms_gateway_turns_total{result=\"fallback\"}", 1)
            .await;
        let after = self.export().await;
        assert_only_the_exchange_was_added(&before, &after, "and diffusion <<2>>", FALLBACK);

        // Healthy again: answered normally, and the fallback was sent once.
        self.model
            .push_content("Pip said: \"Diffusion spreads things out.\"");
        let sent = self.text("and diffusion? <<3>>", 3).await;
        assert_eq!(
            sent,
            [
                "Osmosis moves water.",
                FALLBACK,
                "Diffusion spreads things out."
            ]
        );
        assert_eq!(self.requests().await, 3 + asked);
        assert_eq!(
            self.gateway
                .metric("sms_gateway_turns_total{result=\"answered\"}")
                .await,
            2
        );
        assert_eq!(
            self.gateway
                .metric("sms_gateway_turns_total{result=\"fallback\"}")
                .await,
            1
        );
    }
}

/// `after` is `before` plus one answered message: the message `body` and the reply `reply` in
/// the conversation, the inbound and outbound rows, and the session's message count (both). Soul memory,
/// process memory, the current process, working-memory snapshots and scheduled events are
/// exactly as they were.
fn assert_only_the_exchange_was_added(before: &Value, after: &Value, body: &str, reply: &str) {
    for unchanged in [
        "soul_memories",
        "process_memories",
        "mental_process_state",
        "working_memory_snapshots",
        "scheduled_events",
    ] {
        assert_eq!(
            before[unchanged], after[unchanged],
            "{unchanged} changed in a turn that fell back"
        );
    }
    // Something to compare: the turn before stored a process state and a snapshot.
    assert!(before["mental_process_state"].is_object(), "{before:#}");
    assert!(
        !before["working_memory_snapshots"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{before:#}"
    );

    let mut session_before = before["session"].clone();
    let mut session_after = after["session"].clone();
    assert_eq!(
        session_after["total_messages"].as_i64().unwrap(),
        session_before["total_messages"].as_i64().unwrap() + 2,
        "the message and the fallback reply"
    );
    for moved in ["total_messages", "last_active_at", "version"] {
        session_before[moved] = Value::Null;
        session_after[moved] = Value::Null;
    }
    assert_eq!(session_before, session_after);

    let added = |key: &str| -> Vec<Value> {
        let before = before[key].as_array().unwrap();
        let after = after[key].as_array().unwrap();
        assert_eq!(&after[..before.len()], &before[..], "{key} before the turn");
        after[before.len()..].to_vec()
    };
    let messages = added("messages");
    let said: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(said, [("user", body), ("assistant", reply)]);
    let inbound = added("inbound_messages");
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0]["body"], body);
    let outbound = added("outbound_messages");
    assert_eq!(outbound.len(), 1);
    assert_eq!(outbound[0]["body"], reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_answer_in_time() {
    // Attempts end after MODEL_TIMEOUT; the budget holds at least two.
    let fx = Fixture::start(&[("MODEL_RETRY_BUDGET", "3s")]).await;
    fx.run(
        || {
            Reply::Delayed(
                Duration::from_secs(60),
                Box::new(Reply::content("Pip said: \"Too late.\"")),
            )
        },
        Exhausting::AtLeast(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_without_retry_after() {
    let fx = Fixture::start(&[]).await;
    fx.run(|| Reply::status(429), Exhausting::AtLeast(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_with_retry_after_and_past_the_cap() {
    // A one-second Retry-After is waited out. Two minutes are more than the 30 s a Retry-After
    // is granted: the call gives up after the first answer, although the 40 s budget could hold
    // a 30 s wait, rather than wait 30 s for a server that said it would not be ready.
    let fx = Fixture::start(&[("MODEL_TIMEOUT", "5s"), ("MODEL_RETRY_BUDGET", "40s")]).await;
    fx.model.push(Reply::Status {
        status: 429,
        retry_after: Some(1),
    });
    fx.model.push_content("Pip said: \"Osmosis moves water.\"");
    let sent = fx.text("what is osmosis <<1>>", 1).await;
    assert_eq!(sent, ["Osmosis moves water."]);
    assert_eq!(fx.requests().await, 2);

    let before = fx.export().await;
    fx.model.push(Reply::Status {
        status: 429,
        retry_after: Some(120),
    });
    let sent = fx.text("and diffusion <<2>>", 2).await;
    assert_eq!(sent, ["Osmosis moves water.", FALLBACK]);
    assert_eq!(fx.requests().await, 3, "no retry after a wait past the cap");
    assert_only_the_exchange_was_added(
        &before,
        &fx.export().await,
        "and diffusion <<2>>",
        FALLBACK,
    );

    fx.model.push_content("Pip said: \"Back.\"");
    let sent = fx.text("hello? <<3>>", 3).await;
    assert_eq!(sent, ["Osmosis moves water.", FALLBACK, "Back."]);
    assert_eq!(fx.requests().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors() {
    let fx = Fixture::start(&[]).await;
    let statuses = std::sync::Mutex::new([500, 502, 503].into_iter().cycle());
    fx.run(
        || Reply::status(statuses.lock().unwrap().next().unwrap()),
        Exhausting::AtLeast(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_json_and_is_not_logged() {
    let fx = Fixture::start(&[]).await;
    fx.run(
        || Reply::RawBody(r#"{"id":"x","choices":[{"message":{"content":"secret answ"#.into()),
        Exhausting::AtLeast(3),
    )
    .await;
    assert_not_logged(
        &fx.gateway,
        &[fx.from, "secret answ", "osmosis", "diffusion"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer() {
    let fx = Fixture::start(&[]).await;
    fx.run(|| Reply::content(""), Exhausting::AtLeast(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_null_content() {
    let fx = Fixture::start(&[]).await;
    fx.run(|| Reply::NullContent, Exhausting::AtLeast(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_choices() {
    let fx = Fixture::start(&[]).await;
    fx.run(|| Reply::NoChoices, Exhausting::AtLeast(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_utterance_is_repaired_once() {
    // A well-formed answer that says nothing: not the client's to retry but the step's to
    // repair, once; a second empty one ends the turn.
    let fx = Fixture::start(&[]).await;
    fx.run(|| Reply::content("Pip said: \"\""), Exhausting::Exactly(2))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_that_quotes_the_message_is_not_logged() {
    // Some servers repeat the request in a 400's message; only the status and the error's
    // code may reach the logs.
    let fx = Fixture::start(&[]).await;
    fx.model.push(Reply::Raw {
        status: 400,
        headers: Vec::new(),
        body: serde_json::json!({
            "error": {
                "message": "Invalid content in messages[1]: 'my secret plan <<1>>'",
                "type": "invalid_request_error",
                "code": "invalid_content"
            }
        })
        .to_string(),
    });

    let sent = fx.text("my secret plan <<1>>", 1).await;

    assert_eq!(sent, [FALLBACK]);
    assert_eq!(fx.requests().await, 1, "a 400 is not retried");
    let logs = fx.gateway.logs();
    assert!(logs.contains("HTTP 400 (invalid_content)"), "{logs}");
    assert_not_logged(&fx.gateway, &[fx.from, "secret plan", "Invalid content"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_answer_is_cut_before_it_is_stored_sent_or_remembered() {
    // 160 KB of answer: without a limit, a hundred Twilio messages and a next model request
    // carrying all of it.
    let sentence = "Osmosis is the movement of water across a membrane. ";
    let runaway = sentence.repeat(3000);
    let fx = Fixture::start(&[("MAX_REPLY_SEGMENTS", "3")]).await;
    fx.model
        .push_content(format!("Pip said: \"{}\"", runaway.trim_end()));

    let sent = fx.text("what is osmosis <<1>>", 1).await;

    // Three GSM-7 segments hold 459 characters: eight whole sentences.
    let cut = sentence.repeat(8).trim_end().to_owned();
    assert_eq!(sent, [cut.as_str()]);
    assert_eq!(fx.twilio.messages().len(), 1);
    let export = fx.export().await;
    assert_eq!(export["outbound_messages"][0]["body"], cut.as_str());
    let said: Vec<&str> = export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(said, [cut.as_str()]);
    let snapshot = export["working_memory_snapshots"].to_string();
    assert!(snapshot.len() < 10_000, "{} bytes", snapshot.len());
    fx.gateway
        .wait_metric("sms_gateway_replies_cut_total", 1)
        .await;
    assert!(
        fx.gateway
            .metric("sms_gateway_reply_segments_cut_total")
            .await
            > 300
    );

    // What the soul remembers saying is the cut reply: the next request is small.
    fx.model.push_content("Pip said: \"Water moves.\"");
    fx.text("in short? <<2>>", 2).await;
    let requests = fx.model.requests().await;
    let next = requests[1].to_string();
    assert!(next.contains(&cut), "the cut reply is remembered");
    // An SMS turn asks for whole answers: no request streams.
    for request in &requests {
        assert!(request.get("stream").is_none(), "{request}");
        assert!(request.get("stream_options").is_none(), "{request}");
    }
    assert!(next.len() < 10_000, "{} bytes", next.len());
    assert_not_logged(&fx.gateway, &[fx.from, "membrane"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_size_limit_is_not_read_and_gets_the_fallback() {
    // Past the 256 KiB the client reads: refused unread, not retried.
    let fx = Fixture::start(&[]).await;
    fx.model
        .push_content(format!("Pip said: \"{}\"", "Water moves. ".repeat(30_000)));

    let sent = fx.text("what is osmosis <<1>>", 1).await;

    assert_eq!(sent, [FALLBACK]);
    assert_eq!(fx.requests().await, 1);
    assert_not_logged(&fx.gateway, &[fx.from, "Water moves"]);
}
