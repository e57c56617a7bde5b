//! End to end on the embedded SQLite store: the gateway binary over real HTTP, with the Twilio
//! double and a model double.

mod common;

use std::time::Duration;

use common::{
    EchoModel, Gateway, HELP_TEXT, Settings, TWILIO_FROM, assert_not_logged, command, eventually,
    twilio,
};
use serde_json::{Value, json};
use soul_persistence::{Address, BeginOutcome, Inbound, NewEvent, SqliteStore, Store, TurnCommit};
use soul_testkit::openai::{OpenAiDouble, Reply};
use soul_testkit::twilio::{Failure, SignedRequest, TwilioDouble, new_sid};
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
    twilio: TwilioDouble,
    model: EchoModel,
    settings: Settings,
}

impl Fixture {
    /// The fixture's settings with one turn slot and a model that echoes after `delay`, so that
    /// a second person's message waits for the slot; the model lives as long as the double.
    async fn one_slot_slow_model(&self, delay: Duration) -> (Settings, EchoModel) {
        let slow = EchoModel::start_slow(delay).await;
        let settings = self
            .settings
            .clone()
            .set("TURN_CONCURRENCY", "1")
            .set("OPENAI_BASE_URL", &slow.base_url());
        (settings, slow)
    }

    async fn new() -> Fixture {
        let dir = TempDir::new().expect("a temporary directory");
        let twilio = twilio().await;
        let model = EchoModel::start().await;
        let database = format!("sqlite://{}/soul.db", dir.path().display());
        let settings = Settings::new(dir.path(), &database, &twilio, &model.base_url());
        Fixture {
            dir,
            twilio,
            model,
            settings,
        }
    }

    fn sms(&self, gateway: &Gateway, from: &str, body: &str) -> SignedRequest {
        self.twilio.inbound_sms(from, TWILIO_FROM, body).sign(
            &gateway.webhook_url("/twilio/sms"),
            self.twilio.auth_token(),
        )
    }

    async fn store(&self) -> SqliteStore {
        SqliteStore::open(self.dir.path().join("soul.db"))
            .await
            .expect("open the gateway's store")
    }

    /// The stored outbound messages of `from`, oldest first.
    async fn outbound(&self, from: &str) -> Vec<Value> {
        let export = self
            .store()
            .await
            .export_user(&Address::new(from))
            .await
            .expect("export")
            .unwrap_or_default()[0]
            .clone();
        export["outbound_messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn bodies_to(&self, to: &str) -> Vec<String> {
        self.twilio
            .messages()
            .into_iter()
            .filter(|message| message.to == to)
            .map(|message| message.body)
            .collect()
    }
}

fn is_twiml(body: &str) -> bool {
    body.contains("<Response/>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_is_answered_in_order_and_logs_no_personal_data() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550101";
    // Sent back to back: the later ones queue behind the running turn.
    for i in 1..=3 {
        let (status, body) = gateway
            .post(&fx.sms(&gateway, from, &format!("secret words <<m{i}>>")))
            .await;
        assert_eq!(status, 200);
        assert!(is_twiml(&body), "{body}");
    }
    let sent = fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    let bodies: Vec<&str> = sent.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["echo <<m1>>", "echo <<m2>>", "echo <<m3>>"]);
    for message in &sent {
        assert_eq!(message.to, from);
        assert_eq!(message.from.as_deref(), Some(TWILIO_FROM));
        assert_eq!(
            message.status_callback.as_deref(),
            Some(gateway.webhook_url("/twilio/status").as_str())
        );
    }
    assert_eq!(fx.model.answered(), ["<<m1>>", "<<m2>>", "<<m3>>"]);

    // Every reply is marked accepted with Twilio's SID.
    let outbound = eventually("replies marked accepted", || async {
        let outbound = fx.outbound(from).await;
        (outbound.len() == 3 && outbound.iter().all(|m| m["status"] == "accepted"))
            .then_some(outbound)
    })
    .await;
    let sids: Vec<&str> = sent.iter().map(|m| m.sid.as_str()).collect();
    for message in &outbound {
        assert!(sids.contains(&message["provider_id"].as_str().unwrap()));
    }

    // A turn is counted when its run ends, just after its reply was handed over.
    gateway
        .wait_metric("sms_gateway_turns_total{result=\"answered\"}", 3)
        .await;
    let (_, metrics) = gateway.get("/metrics").await;
    assert!(metrics.contains("sms_gateway_inbound_total{outcome=\"started\"}"));
    assert!(metrics.contains("sms_gateway_outbound_total{status=\"accepted\"} 3"));
    assert!(metrics.contains("sms_gateway_model_tokens_total{kind=\"prompt\"} 21"));
    assert!(metrics.contains("sms_gateway_outbound_segments_total{encoding=\"gsm7\"} 3"));
    assert!(metrics.contains("sms_gateway_turn_duration_seconds_count"));
    assert_not_logged(&gateway, &[from, "4155550101", "secret words", "echo <<"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_hold_no_phone_number_body_or_secret() {
    let fx = Fixture::new().await;
    let api_key = "sk-test-0123456789abcdefDEBUG";
    let settings = fx
        .settings
        .clone()
        .set("RUST_LOG", "debug")
        .set("OPENAI_API_KEY", api_key);
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550131";
    let first = fx.sms(&gateway, from, "my private worry <<p1>>");
    assert_eq!(gateway.post(&first).await.0, 200);
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    // A duplicate delivery, HELP, a forged request and a second turn: the paths that log most.
    assert_eq!(gateway.post(&first).await.0, 200);
    gateway.post(&fx.sms(&gateway, from, "HELP")).await;
    let forged = fx
        .twilio
        .inbound_sms(from, TWILIO_FROM, "forged private words")
        .sign(&gateway.webhook_url("/twilio/sms"), "not-the-auth-token");
    assert_eq!(gateway.post(&forged).await.0, 403);
    gateway
        .post(&fx.sms(&gateway, from, "another private worry <<p2>>"))
        .await;
    fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    gateway
        .wait_metric("sms_gateway_outbound_total{status=\"accepted\"}", 3)
        .await;
    let logs = gateway.logs();
    assert!(
        logs.contains("DEBUG"),
        "debug logging was not on, so this test shows nothing:\n{logs}"
    );
    assert_not_logged(
        &gateway,
        &[
            from,
            "4155550131",
            "private worry",
            "private words",
            "echo <<",
            HELP_TEXT,
            fx.twilio.auth_token(),
            api_key,
        ],
    );
}

/// `TURN_CONCURRENCY` bounds the turns running at once: with one slot, three people texting
/// together are answered one after the other, never two model calls at a time, and all are
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_beyond_the_concurrency_wait_for_a_slot_and_are_all_answered() {
    let fx = Fixture::new().await;
    let (settings, slow) = fx.one_slot_slow_model(Duration::from_millis(300)).await;
    let gateway = Gateway::start(&settings).await;
    let people = ["+14155550161", "+14155550162", "+14155550163"];
    for (i, from) in people.iter().enumerate() {
        let (status, _) = gateway
            .post(&fx.sms(&gateway, from, &format!("hello <<c{i}>>")))
            .await;
        assert_eq!(status, 200);
    }
    fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    for (i, from) in people.iter().enumerate() {
        assert_eq!(fx.bodies_to(from), [format!("echo <<c{i}>>")]);
    }
    assert_eq!(slow.most_at_once(), 1);
}

/// Regression: a HELP arriving while an earlier message of the same number waits for a turn
/// slot begins the session's oldest waiting message, the earlier one, and that turn was closed
/// with the help text: the message never reached the soul.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_behind_a_waiting_message_leaves_that_message_to_the_soul() {
    let fx = Fixture::new().await;
    let (settings, _slow) = fx.one_slot_slow_model(Duration::from_millis(500)).await;
    let gateway = Gateway::start(&settings).await;
    let (busy, person) = ("+14155550171", "+14155550172");
    // The first turn holds the only slot for the model's half second.
    gateway.post(&fx.sms(&gateway, busy, "first <<x1>>")).await;
    gateway
        .post(&fx.sms(&gateway, person, "hello <<h1>>"))
        .await;
    let (status, _) = gateway.post(&fx.sms(&gateway, person, "HELP")).await;
    assert_eq!(status, 200);
    fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    // The HELP is answered through the soul, behind the message it found waiting.
    assert_eq!(fx.bodies_to(person), ["echo <<h1>>", "echo <<h1>>"]);
    assert_eq!(fx.bodies_to(busy), ["echo <<x1>>"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_over_the_rate_limit_is_counted_and_not_answered_and_stop_still_works() {
    let fx = Fixture::new().await;
    let settings = fx.settings.clone().set("RATE_LIMIT_PER_MINUTE", "2");
    let gateway = Gateway::start(&settings).await;
    let flood = "+14155550132";
    let other = "+14155550133";
    // A burst of 2, then one more every 30 s: the five posts take far less than that.
    for i in 1..=5 {
        let (status, body) = gateway
            .post(&fx.sms(&gateway, flood, &format!("again <<r{i}>>")))
            .await;
        assert_eq!(status, 200, "over the limit is still acknowledged");
        assert!(is_twiml(&body), "{body}");
    }
    gateway
        .post(&fx.sms(&gateway, other, "unaffected <<o1>>"))
        .await;
    // The answers are awaited before STOP, which would otherwise leave a still-queued turn
    // unanswered (as it should).
    fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    assert_eq!(
        gateway
            .metric("sms_gateway_inbound_total{outcome=\"rate_limited\"}")
            .await,
        3
    );
    // STOP is never limited.
    gateway.post(&fx.sms(&gateway, flood, "STOP")).await;
    gateway
        .wait_metric("sms_gateway_inbound_total{outcome=\"opt_out\"}", 1)
        .await;
    assert_eq!(fx.bodies_to(flood), ["echo <<r1>>", "echo <<r2>>"]);
    assert_eq!(fx.bodies_to(other), ["echo <<o1>>"]);
    let store = fx.store().await;
    let session = store.session(&Address::new(flood)).await.unwrap().unwrap();
    assert!(session.opted_out);
    let export = store
        .export_user(&Address::new(flood))
        .await
        .unwrap()
        .unwrap()[0]
        .clone();
    let stored = common::user_texts(&export);
    assert_eq!(stored, ["again <<r1>>", "again <<r2>>", "STOP"]);
}

/// Twilio delivering one message again (same MessageSid) does not use up the sender's
/// rate-limit tokens: the retries are duplicates, and the next new message is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_deliveries_use_no_rate_limit_tokens() {
    let fx = Fixture::new().await;
    let settings = fx.settings.clone().set("RATE_LIMIT_PER_MINUTE", "2");
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550134";
    let first = fx.sms(&gateway, from, "once <<t1>>");
    assert_eq!(gateway.post(&first).await.0, 200);
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    for _ in 0..3 {
        assert_eq!(gateway.post(&first).await.0, 200);
    }
    let outcome = |label: &str| format!("sms_gateway_inbound_total{{outcome=\"{label}\"}}");
    assert_eq!(gateway.metric(&outcome("duplicate")).await, 3);
    assert_eq!(gateway.metric(&outcome("rate_limited")).await, 0);
    assert_eq!(
        gateway
            .post(&fx.sms(&gateway, from, "twice <<t2>>"))
            .await
            .0,
        200
    );
    fx.twilio.wait_for_messages(2, common::PATIENCE).await;
    assert_eq!(fx.bodies_to(from), ["echo <<t1>>", "echo <<t2>>"]);
    // The limit still holds for new messages: the burst of 2 is spent.
    gateway.post(&fx.sms(&gateway, from, "thrice <<t3>>")).await;
    assert_eq!(gateway.metric(&outcome("rate_limited")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    assert_eq!(gateway.get("/healthz").await.0, 200);
    assert_eq!(gateway.get("/readyz").await, (200, "ready\n".to_owned()));
    let (status, metrics) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE sms_gateway_inbound_total counter"));
}

/// With `METRICS_TOKEN` set, `/metrics` and `/readyz` need `Authorization: Bearer` with it:
/// refused without it or with anything else, served with it; `/healthz` stays open for liveness
/// probes. Without the setting they are open (`health_readiness_and_metrics_answer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_need_the_token_when_one_is_set() {
    let fx = Fixture::new().await;
    let token = "s3cret-scrape";
    let gateway = Gateway::start(&fx.settings.clone().set("METRICS_TOKEN", token)).await;
    let http = reqwest::Client::new();
    for path in ["/metrics", "/readyz"] {
        let url = format!("{}{path}", gateway.url);
        let without = http.get(&url).send().await.unwrap();
        assert_eq!(without.status(), 401, "{path}");
        assert_eq!(without.headers()["www-authenticate"], "Bearer");
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-scrape-",
            "Bearer ",
            "Basic s3cret-scrape",
            "s3cret-scrape",
        ] {
            let refused = http
                .get(&url)
                .header("authorization", wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 401, "{path} with {wrong:?}");
        }
        let served = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(served.status(), 200, "{path}");
    }
    assert_eq!(gateway.get("/healthz").await.0, 200);
    assert_not_logged(&gateway, &[token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_when_asked() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings.clone().set("LOG_FORMAT", "json")).await;
    gateway
        .post(&fx.sms(&gateway, "+14155550109", "hi <<j>>"))
        .await;
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    let logs = gateway.logs();
    let turn_line = eventually("a JSON log line of the turn", || async {
        gateway
            .logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["message"] == "turn committed")
    })
    .await;
    assert!(
        turn_line["span"]["session"].as_str().is_some()
            && turn_line["span"]["session"] == turn_line["fields"]["session"],
        "the turn's span names its session: {turn_line}\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_is_acknowledged_and_not_processed_again() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550102";
    let first = fx.sms(&gateway, from, "hello <<d1>>");
    assert_eq!(gateway.post(&first).await.0, 200);
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    let (status, body) = gateway.post(&first).await;
    assert_eq!(status, 200);
    assert!(is_twiml(&body));
    // Turns of one number run in order: once the next message is answered, a second run of
    // the duplicate would have been answered before it.
    gateway.post(&fx.sms(&gateway, from, "again <<d2>>")).await;
    fx.twilio.wait_for_messages(2, common::PATIENCE).await;
    assert_eq!(fx.bodies_to(from), ["echo <<d1>>", "echo <<d2>>"]);
    assert_eq!(fx.model.answered(), ["<<d1>>", "<<d2>>"]);
    assert_eq!(
        gateway
            .metric("sms_gateway_inbound_total{outcome=\"duplicate\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_oversize_and_malformed_webhooks_are_refused_and_not_stored() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550103";
    let url = gateway.webhook_url("/twilio/sms");
    let good = fx.sms(&gateway, from, "hello <<s1>>");

    let (status, _) = gateway.post_raw(&url, good.body.clone(), None).await;
    assert_eq!(status, 401, "missing signature");
    let forged = fx
        .twilio
        .inbound_sms(from, TWILIO_FROM, "hello <<s1>>")
        .sign(&url, "not-the-auth-token");
    assert_eq!(gateway.post(&forged).await.0, 403, "wrong signature");
    let tampered = good.body.replace("hello", "goodbye");
    let (status, _) = gateway
        .post_raw(&url, tampered, Some(&good.signature))
        .await;
    assert_eq!(status, 403, "body changed after signing");
    let (status, _) = gateway
        .post_raw(&url, good.body.clone(), Some("not base64!"))
        .await;
    assert_eq!(status, 403, "malformed signature");

    let huge = "x".repeat(70 * 1024);
    let oversize = fx.sms(&gateway, from, &huge);
    assert_eq!(gateway.post(&oversize).await.0, 413, "body over 64 KiB");

    for missing in ["From", "Body", "MessageSid"] {
        let request = fx
            .twilio
            .inbound_sms(from, TWILIO_FROM, "hello <<bad>>")
            .without_param(missing)
            .sign(&url, fx.twilio.auth_token());
        let (status, body) = gateway.post(&request).await;
        assert_eq!(status, 400, "without {missing}: {body}");
    }
    let (status, _) = gateway
        .post_raw(&url, "%%%&&&=".to_owned(), Some(&good.signature))
        .await;
    assert_eq!(status, 403, "garbage under a signature for something else");

    // Nothing was stored or answered: the number has no session, and the first valid message
    // is the first the model sees.
    let store = fx.store().await;
    assert!(store.session(&Address::new(from)).await.unwrap().is_none());
    assert_eq!(gateway.post(&good).await.0, 200);
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(fx.model.answered(), ["<<s1>>"]);
    assert_eq!(fx.bodies_to(from), ["echo <<s1>>"]);
    assert_eq!(
        gateway
            .metric("sms_gateway_inbound_total{outcome=\"rejected\"}")
            .await,
        // The oversize body is refused before the handler runs.
        8
    );
}

/// A `From` that cannot be a sender this gateway answers (empty, letters, 5,000 digits, a NUL,
/// another channel's address) is refused with 400, signed or not: nothing is stored, nothing
/// reaches the model, nothing is sent; Twilio does not retry a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_that_are_not_phone_numbers_are_refused_and_not_stored() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let digits = "4".repeat(5_000);
    let senders = [
        "",
        "letters",
        digits.as_str(),
        "+1415555\u{0}0112",
        "whatsapp:+14155550112",
    ];
    for from in senders {
        let (status, body) = gateway.post(&fx.sms(&gateway, from, "hi <<f1>>")).await;
        assert_eq!(status, 400, "{from:?}: {body}");
        assert!(body.contains("From"), "{body}");
    }
    let store = fx.store().await;
    for from in senders {
        assert!(
            store.session(&Address::new(from)).await.unwrap().is_none(),
            "{from:?} was stored"
        );
    }
    // A phone number is answered, and is the first message the model sees.
    let (status, _) = gateway
        .post(&fx.sms(&gateway, "+14155550112", "hi <<f2>>"))
        .await;
    assert_eq!(status, 200);
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(fx.model.answered(), ["<<f2>>"]);
    assert_eq!(fx.twilio.messages().len(), 1);
    assert_eq!(
        gateway
            .metric("sms_gateway_inbound_total{outcome=\"rejected\"}")
            .await,
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_and_help_are_handled_without_the_model() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550104";
    let silent = "sms_gateway_turns_total{result=\"silent\"}";

    // HELP as a first message: the help text, no model call.
    gateway.post(&fx.sms(&gateway, from, "help")).await;
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(fx.bodies_to(from), [HELP_TEXT]);

    gateway.post(&fx.sms(&gateway, from, "hi <<h1>>")).await;
    fx.twilio.wait_for_messages(2, common::PATIENCE).await;

    // STOP: recorded, not answered; later messages are stored and not answered either.
    gateway.post(&fx.sms(&gateway, from, " Stop ")).await;
    gateway.wait_metric(silent, 1).await;
    gateway
        .post(&fx.sms(&gateway, from, "are you there <<h2>>"))
        .await;
    gateway.wait_metric(silent, 2).await;
    gateway.post(&fx.sms(&gateway, from, "INFO")).await;
    gateway.wait_metric(silent, 3).await;
    let store = fx.store().await;
    let session = store.session(&Address::new(from)).await.unwrap().unwrap();
    assert!(session.opted_out);

    // START: opted back in, not answered (Twilio confirms); then conversation resumes.
    gateway.post(&fx.sms(&gateway, from, "START")).await;
    gateway.wait_metric(silent, 4).await;
    gateway.post(&fx.sms(&gateway, from, "back <<h3>>")).await;
    fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    assert_eq!(
        fx.bodies_to(from),
        [HELP_TEXT, "echo <<h1>>", "echo <<h3>>"]
    );
    assert_eq!(fx.model.answered(), ["<<h1>>", "<<h3>>"]);

    // A STOP from a number never seen opts it out too.
    let stranger = "+14155550105";
    gateway
        .post(&fx.sms(&gateway, stranger, "unsubscribe"))
        .await;
    gateway.wait_metric(silent, 5).await;
    let session = store
        .session(&Address::new(stranger))
        .await
        .unwrap()
        .unwrap();
    assert!(session.opted_out);
    assert_eq!(
        gateway
            .metric("sms_gateway_inbound_total{outcome=\"opt_out\"}")
            .await,
        2
    );
}

/// hi → STOP → START → STOP, then Twilio delivers the START again (same MessageSid, same
/// signature): a duplicate changes nothing, so the number stays opted out and its next message
/// is stored unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_start_does_not_opt_a_stopped_number_back_in() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550107";
    let silent = "sms_gateway_turns_total{result=\"silent\"}";

    gateway.post(&fx.sms(&gateway, from, "hi <<k1>>")).await;
    fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    let start = fx.sms(&gateway, from, "START");
    for (request, keyword_turns) in [
        (fx.sms(&gateway, from, "STOP"), 1),
        (start.clone(), 2),
        (fx.sms(&gateway, from, "STOP"), 3),
    ] {
        assert_eq!(gateway.post(&request).await.0, 200);
        gateway.wait_metric(silent, keyword_turns).await;
    }
    let (status, body) = gateway.post(&start).await;
    assert_eq!(status, 200);
    assert!(is_twiml(&body), "{body}");
    gateway
        .wait_metric("sms_gateway_inbound_total{outcome=\"duplicate\"}", 1)
        .await;
    let store = fx.store().await;
    let session = store.session(&Address::new(from)).await.unwrap().unwrap();
    assert!(session.opted_out, "the replayed START opted the number in");

    gateway
        .post(&fx.sms(&gateway, from, "hello again <<k2>>"))
        .await;
    gateway.wait_metric(silent, 4).await;
    assert_eq!(fx.bodies_to(from), ["echo <<k1>>"]);
    assert_eq!(fx.model.answered(), ["<<k1>>"]);
    let export = store
        .export_user(&Address::new(from))
        .await
        .unwrap()
        .unwrap()[0]
        .clone();
    assert_eq!(
        common::user_texts(&export),
        ["hi <<k1>>", "STOP", "START", "STOP", "hello again <<k2>>"]
    );
}

/// The reply of a turn that was waiting for the model when STOP came is committed and never
/// sent: its commit read the opt-out, and the sender does not ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_turn_waits_for_the_model_leaves_its_reply_unsent() {
    let fx = Fixture::new().await;
    let (settings, slow) = fx.one_slot_slow_model(Duration::from_secs(2)).await;
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550106";
    gateway.post(&fx.sms(&gateway, from, "hi <<s1>>")).await;
    eventually("the turn at the model", || async {
        (!slow.answered().is_empty()).then_some(())
    })
    .await;
    gateway.post(&fx.sms(&gateway, from, "STOP")).await;

    gateway
        .wait_metric("sms_gateway_outbound_total{status=\"suppressed\"}", 1)
        .await;
    let outbound = eventually("the reply marked failed", || async {
        let outbound = fx.outbound(from).await;
        (outbound.len() == 1 && outbound[0]["status"] == "failed").then_some(outbound)
    })
    .await;
    assert_eq!(outbound[0]["body"], "echo <<s1>>");
    assert_eq!(slow.answered(), ["<<s1>>"]);
    assert_eq!(fx.twilio.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_is_split_at_sentences_and_sent_in_order() {
    // The soul's replies are cut to MAX_REPLY_SEGMENTS (at most ten, one message); the
    // operator's own texts are sent as written, split into messages Twilio takes.
    let fx = Fixture::new().await;
    let sentence = "This sentence is one of many that make a very long reply indeed. ";
    let long = sentence.repeat(60);
    let settings = fx.settings.clone().set("HELP_TEXT", long.trim());
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550106";
    gateway.post(&fx.sms(&gateway, from, "HELP")).await;
    let sent = fx.twilio.wait_for_messages(3, common::PATIENCE).await;
    assert_eq!(sent.len(), 3, "{} characters in 3 parts", long.len());
    for part in &sent {
        assert!(part.body.chars().count() <= 1600);
        assert!(
            part.body.ends_with('.'),
            "split at a sentence: {:?}",
            part.body
        );
    }
    let joined: Vec<&str> = sent.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(joined.join(" "), long.trim());
    // One reply, accepted once all its parts were.
    let outbound = eventually("the reply marked accepted", || async {
        let outbound = fx.outbound(from).await;
        (outbound.len() == 1 && outbound[0]["status"] == "accepted").then_some(outbound)
    })
    .await;
    assert_eq!(outbound[0]["provider_id"], sent[2].sid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_is_retried() {
    let fx = Fixture::new().await;
    fx.twilio
        .push_failure(Failure::RateLimited { retry_after: None })
        .push_failure(Failure::Status(503));
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550107";
    gateway.post(&fx.sms(&gateway, from, "hi <<r1>>")).await;
    let sent = fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(sent[0].body, "echo <<r1>>");
    assert_eq!(fx.twilio.request_count(), 3);
    eventually("the reply marked accepted", || async {
        let outbound = fx.outbound(from).await;
        (outbound.len() == 1 && outbound[0]["status"] == "accepted").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_21610_opts_the_number_out_and_other_refusals_fail_the_reply() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    // Twilio's test number for a recipient who replied STOP.
    let opted_out = "+15005550004";
    gateway
        .post(&fx.sms(&gateway, opted_out, "hi <<o1>>"))
        .await;
    gateway
        .wait_metric("sms_gateway_outbound_total{status=\"opted_out\"}", 1)
        .await;
    let store = fx.store().await;
    eventually("the number marked opted out", || async {
        let session = store.session(&Address::new(opted_out)).await.unwrap()?;
        session.opted_out.then_some(())
    })
    .await;
    eventually("the reply marked failed", || async {
        (fx.outbound(opted_out).await.first()?["status"] == "failed").then_some(())
    })
    .await;
    // Nothing more is sent, and the model is not asked.
    gateway
        .post(&fx.sms(&gateway, opted_out, "hello? <<o2>>"))
        .await;
    gateway
        .wait_metric("sms_gateway_turns_total{result=\"silent\"}", 1)
        .await;
    assert_eq!(fx.model.answered(), ["<<o1>>"]);
    assert_eq!(fx.twilio.request_count(), 1);

    // Twilio's invalid test number: a permanent refusal marks the reply failed, no retry.
    let invalid = "+15005550001";
    gateway.post(&fx.sms(&gateway, invalid, "hi <<o3>>")).await;
    gateway
        .wait_metric("sms_gateway_outbound_total{status=\"failed\"}", 1)
        .await;
    let outbound = eventually("the reply marked failed", || async {
        let outbound = fx.outbound(invalid).await;
        (outbound.len() == 1 && outbound[0]["status"] == "failed").then_some(outbound)
    })
    .await;
    assert_eq!(outbound[0]["provider_id"], Value::Null);
    assert_eq!(fx.twilio.request_count(), 2);
    assert!(fx.twilio.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_are_checked_and_only_move_forward() {
    let fx = Fixture::new().await;
    let gateway = Gateway::start(&fx.settings).await;
    let from = "+14155550108";
    gateway.post(&fx.sms(&gateway, from, "hi <<c1>>")).await;
    let sent = fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    let status_url = gateway.webhook_url("/twilio/status");
    eventually("the reply marked accepted", || async {
        let outbound = fx.outbound(from).await;
        (outbound.first()?["status"] == "accepted").then_some(())
    })
    .await;

    let delivered = fx
        .twilio
        .status_callback(&sent[0], "delivered")
        .sign(&status_url, fx.twilio.auth_token());
    let unsigned = gateway
        .post_raw(&status_url, delivered.body.clone(), None)
        .await;
    assert_eq!(unsigned.0, 401);
    let forged = fx
        .twilio
        .status_callback(&sent[0], "failed")
        .sign(&status_url, "wrong-token");
    assert_eq!(gateway.post(&forged).await.0, 403);
    assert_eq!(fx.outbound(from).await[0]["status"], "accepted");

    let sent_callback = fx
        .twilio
        .status_callback(&sent[0], "sent")
        .sign(&status_url, fx.twilio.auth_token());
    assert_eq!(gateway.post(&sent_callback).await.0, 204);
    assert_eq!(fx.outbound(from).await[0]["status"], "sent");
    assert_eq!(gateway.post(&delivered).await.0, 204);
    assert_eq!(fx.outbound(from).await[0]["status"], "delivered");
    // Late and duplicated callbacks never move it back.
    assert_eq!(gateway.post(&sent_callback).await.0, 204);
    assert_eq!(gateway.post(&delivered).await.0, 204);
    assert_eq!(fx.outbound(from).await[0]["status"], "delivered");

    let malformed = soul_testkit::twilio::StatusCallbackWebhook::new(
        fx.twilio.account_sid(),
        &sent[0].sid,
        "teleported",
    )
    .sign(&status_url, fx.twilio.auth_token());
    assert_eq!(gateway.post(&malformed).await.0, 400);
    assert_eq!(
        gateway
            .metric("sms_gateway_delivery_status_total{status=\"delivered\"}")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sends_committed_replies_twilio_never_took() {
    let fx = Fixture::new().await;
    // The first send hangs: the gateway dies while Twilio has not answered.
    fx.twilio
        .push_failure(Failure::Hang(Duration::from_secs(120)));
    let mut first = Gateway::start(&fx.settings).await;
    let from = "+14155550110";
    first.post(&fx.sms(&first, from, "hi <<p1>>")).await;
    eventually("the send to reach Twilio", || async {
        (fx.twilio.request_count() >= 1).then_some(())
    })
    .await;
    first.crash();
    assert!(fx.twilio.messages().is_empty());
    assert_eq!(fx.outbound(from).await[0]["status"], "pending");

    let second = Gateway::start(&fx.settings).await;
    let sent = fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(sent[0].body, "echo <<p1>>");
    assert_eq!(sent[0].to, from);
    eventually("the resent reply marked accepted", || async {
        (fx.outbound(from).await[0]["status"] == "accepted").then_some(())
    })
    .await;
    // Answered once: the model was not asked again.
    assert_eq!(fx.model.answered(), ["<<p1>>"]);
    drop(second);
}

/// A reply Twilio took from a gateway that died before hearing so is found in Twilio's list by
/// the next gateway once the dead one's claim on it expires: marked accepted with Twilio's SID,
/// not sent again, and counted as found, not as an opt-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_finds_a_reply_twilio_took_and_counts_it_as_found() {
    let fx = Fixture::new().await;
    // Taken at once, answered never: the gateway dies waiting.
    fx.twilio
        .push_failure(Failure::AcceptSlowly(Duration::from_secs(120)));
    let mut first = Gateway::start(&fx.settings).await;
    let from = "+14155550112";
    first.post(&fx.sms(&first, from, "hi <<f1>>")).await;
    let sent = fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    first.crash();
    assert_eq!(fx.outbound(from).await[0]["status"], "pending");

    let second = Gateway::start(&fx.settings).await;
    second
        .wait_metric("sms_gateway_outbound_total{status=\"found_sent\"}", 1)
        .await;
    eventually("the reply marked accepted with Twilio's SID", || async {
        let outbound = fx.outbound(from).await;
        (outbound[0]["status"] == "accepted" && outbound[0]["provider_id"] == sent[0].sid.as_str())
            .then_some(())
    })
    .await;
    assert_eq!(
        second
            .metric("sms_gateway_outbound_total{status=\"suppressed\"}")
            .await,
        0
    );
    assert_eq!(fx.twilio.request_count(), 1, "sent once");
    assert_eq!(fx.twilio.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_running_turn_before_exiting() {
    let fx = Fixture::new().await;
    let slow = OpenAiDouble::start().await;
    slow.push(Reply::Delayed(
        Duration::from_secs(2),
        Box::new(Reply::content("Pip said: \"finished\"")),
    ));
    let settings = fx.settings.clone().set("OPENAI_BASE_URL", &slow.base_url());
    let mut gateway = Gateway::start(&settings).await;
    let from = "+14155550111";
    let (status, _) = gateway.post(&fx.sms(&gateway, from, "slow one")).await;
    assert_eq!(status, 200);
    let status = gateway.terminate();
    assert!(status.success(), "exit status {status}");
    assert_eq!(fx.bodies_to(from), ["finished"]);
}

/// On SIGTERM a message still waiting for a turn slot is left stored, not started: nothing of its
/// session is leased, so the next gateway's first sweep answers it, and the shutdown does not
/// wait for turns that have not begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_a_waiting_message_to_the_next_gateway() {
    let fx = Fixture::new().await;
    let (settings, _slow) = fx.one_slot_slow_model(Duration::from_secs(2)).await;
    let mut gateway = Gateway::start(&settings).await;
    let (running, waiting) = ("+14155550181", "+14155550182");
    gateway
        .post(&fx.sms(&gateway, running, "first <<r1>>"))
        .await;
    let (status, _) = gateway
        .post(&fx.sms(&gateway, waiting, "second <<w1>>"))
        .await;
    assert_eq!(status, 200);
    for (outcome, count) in [("started", 1), ("waiting", 1)] {
        let series = format!("sms_gateway_inbound_total{{outcome=\"{outcome}\"}}");
        assert_eq!(gateway.metric(&series).await, count, "{series}");
    }
    let status = gateway.terminate();
    assert!(status.success(), "exit status {status}");
    assert_eq!(fx.bodies_to(running), ["echo <<r1>>"]);
    assert!(fx.bodies_to(waiting).is_empty());

    let _next = Gateway::start(&fx.settings).await;
    fx.twilio.wait_for_messages(2, common::PATIENCE).await;
    assert_eq!(fx.bodies_to(waiting), ["echo <<w1>>"]);
}

fn env(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_lists_every_problem_and_exits_before_listening() {
    let output = command(&env(&[("PORT", "eighty")]))
        .output()
        .expect("run the gateway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "PORT",
        "PUBLIC_URL",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "OPENAI_API_KEY",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }

    let output = command(&env(&[
        ("SOUL", "nobody"),
        ("SUPABASE_URL", "https://p.supabase.co"),
        ("SUPABASE_SERVICE_KEY", "k"),
    ]))
    .arg("migrate")
    .output()
    .expect("run the gateway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SOUL names the soul \"nobody\", which this build does not have"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sage") && stderr.contains("pip"),
        "{stderr}"
    );

    // A valid Supabase configuration: `migrate` cannot apply a schema over REST, and says how to.
    let output = command(&env(&[
        ("SUPABASE_URL", "https://p.supabase.co"),
        ("SUPABASE_SERVICE_KEY", "k"),
    ]))
    .arg("migrate")
    .output()
    .expect("run the gateway");
    assert!(!output.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("supabase db push"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_chat_use_the_same_store() {
    let fx = Fixture::new().await;
    let output = command(&fx.settings.env)
        .arg("migrate")
        .output()
        .expect("run migrate");
    assert!(output.status.success(), "{output:?}");
    assert!(fx.dir.path().join("soul.db").exists());

    let mut chat = command(&fx.settings.env)
        .args(["chat", "--from", "tester"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run chat");
    {
        use std::io::Write as _;
        let mut stdin = chat.stdin.take().unwrap();
        stdin.write_all(b"hello <<t1>>\nagain <<t2>>\n").unwrap();
    }
    // Waiting blocks: off the runtime, which serves the model.
    let output = tokio::task::spawn_blocking(move || chat.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout, "pip> echo <<t1>>\npip> echo <<t2>>\n");
    // Stored like SMS, and marked delivered so that `serve` never texts them.
    let outbound = fx.outbound("tester").await;
    assert_eq!(outbound.len(), 2);
    assert!(outbound.iter().all(|m| m["status"] == "delivered"));
    assert!(fx.twilio.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_event_makes_the_soul_text_first() {
    use soul_processes as _;
    let fx = Fixture::new().await;
    let from = "+14155550112";
    // A check-in an earlier turn scheduled, due now, stored the way the driver stores the
    // engine's scheduled perceptions.
    {
        let registry = soul_engine::process::Registry::load().unwrap();
        let settings = soul_turns::turn_settings(&registry.soul("pip").unwrap());
        let store = fx.store().await;
        let now = chrono::Utc::now();
        let inbound = Inbound {
            from: Address::new(from),
            line: Default::default(),
            persona: None,
            body: "hello".to_owned(),
            external_id: Some(new_sid("SM")),
            received_at: now,
            opt_out: None,
        };
        let BeginOutcome::Started(context) =
            store.begin_turn(&inbound, &settings, now).await.unwrap()
        else {
            panic!("the first message starts a turn");
        };
        let mut commit = TurnCommit::new(&context);
        commit.changes.schedule.push(NewEvent {
            key: "check-in".to_owned(),
            kind: "perception".to_owned(),
            payload: json!({
                "process": null,
                "content": "it has been a while <<e1>>",
                "metadata": null,
            }),
            due_at: now,
        });
        store.commit_turn(&commit, &settings, now).await.unwrap();
    }
    let gateway = Gateway::start(&fx.settings).await;
    let sent = fx.twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(sent[0].to, from);
    assert!(sent[0].body.starts_with("echo"), "{:?}", sent[0].body);
    gateway
        .wait_metric("sms_gateway_turns_total{result=\"answered\"}", 1)
        .await;
}

/// `export` and `erase` on the SQLite store, while the gateway serves (`common::data_requests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_erase_on_sqlite() {
    let fixture = Fixture::new().await;
    common::data_requests::export_and_erase(
        &fixture.settings,
        &fixture.model,
        &fixture.twilio,
        fixture.dir.path(),
    )
    .await;
}

/// At a terminal (`script` gives the binary one), `erase` says what is stored and erases only
/// once the number is typed again: anything else erases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_at_a_terminal_asks_for_the_number_again() {
    let fixture = Fixture::new().await;
    let number = "+14155550410";
    let store = fixture.store().await;
    let settings = soul_persistence::TurnSettings::new(
        "pip",
        soul_persistence::Processes::new("initial", ["initial"]),
    );
    let now = chrono::Utc::now();
    let inbound = Inbound {
        from: Address::new(number),
        line: Default::default(),
        persona: None,
        body: "hello".to_owned(),
        external_id: None,
        received_at: now,
        opt_out: None,
    };
    let BeginOutcome::Started(context) = store.begin_turn(&inbound, &settings, now).await.unwrap()
    else {
        panic!("a first message starts its turn");
    };
    store
        .commit_turn(&TurnCommit::new(&context), &settings, now)
        .await
        .unwrap();
    let at_a_terminal = |typed: &str| {
        let mut child = std::process::Command::new("script")
            .args([
                "-qec",
                &format!("{} erase {number}", env!("CARGO_BIN_EXE_sms-gateway")),
                "/dev/null",
            ])
            .env_clear()
            .envs(&fixture.settings.env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("script runs the binary at a terminal of its own");
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{typed}\n").as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), text)
    };

    let (status, said) = at_a_terminal("+14155550411");
    assert_eq!(status, Some(1), "{said}");
    assert!(
        said.contains("Stored about this number: 1 conversation messages"),
        "{said}"
    );
    assert!(said.contains("Type the number again"), "{said}");
    assert!(said.contains("what was typed is not the number"), "{said}");
    assert!(
        store
            .session(&Address::new(number))
            .await
            .unwrap()
            .is_some()
    );

    let (status, said) = at_a_terminal(number);
    assert_eq!(status, Some(0), "{said}");
    assert!(said.contains("erased"), "{said}");
    assert!(
        store
            .session(&Address::new(number))
            .await
            .unwrap()
            .is_none()
    );
}

/// With RETENTION_DAYS set, the gateway deletes what is older at its first sweep: an old
/// conversation's messages, its inbound message and its sent reply go, a recent one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_messages_at_the_first_sweep() {
    let fixture = Fixture::new().await;
    let (old, recent) = ("+14155550420", "+14155550421");
    let store = fixture.store().await;
    let settings = soul_persistence::TurnSettings::new(
        "pip",
        soul_persistence::Processes::new("initial", ["initial"]),
    );
    let then = chrono::Utc::now() - chrono::Duration::days(3);
    let inbound = Inbound {
        from: Address::new(old),
        line: Default::default(),
        persona: None,
        body: "three days ago".to_owned(),
        external_id: Some(new_sid("SM")),
        received_at: then,
        opt_out: None,
    };
    let BeginOutcome::Started(context) = store.begin_turn(&inbound, &settings, then).await.unwrap()
    else {
        panic!("a first message starts its turn");
    };
    let mut commit = TurnCommit::new(&context);
    commit.replies.push(soul_engine::Memory::new(
        soul_engine::Role::Assistant,
        "old reply",
        then,
    ));
    let committed = store.commit_turn(&commit, &settings, then).await.unwrap();
    let sent = soul_persistence::DeliveryUpdate {
        target: soul_persistence::OutboundRef::Id(committed.outbound[0]),
        status: soul_persistence::DeliveryStatus::Delivered,
        provider_id: Some(new_sid("SM")),
        error: None,
        at: then,
    };
    assert!(store.update_delivery(&sent).await.unwrap());

    let gateway = Gateway::start(&fixture.settings.clone().set("RETENTION_DAYS", "1")).await;
    let (status, _) = gateway
        .post(&fixture.sms(&gateway, recent, "today <<r1>>"))
        .await;
    assert_eq!(status, 200);
    fixture.twilio.wait_for_messages(1, common::PATIENCE).await;
    let export = |number: &'static str| {
        let store = store.clone();
        async move {
            store
                .export_user(&Address::new(number))
                .await
                .unwrap()
                .unwrap()[0]
                .clone()
        }
    };
    eventually("the old messages deleted", || async {
        let old = export(old).await;
        (old["messages"] == json!([])).then_some(())
    })
    .await;
    let old = export(old).await;
    assert_eq!(old["inbound_messages"], json!([]));
    assert_eq!(old["outbound_messages"], json!([]));
    let recent = export(recent).await;
    assert_eq!(common::user_texts(&recent), ["today <<r1>>"]);
    assert!(
        gateway.logs().contains("retention: old messages deleted"),
        "{}",
        gateway.logs()
    );
}

/// A base URL without `/v1` is answered 404 by the model server: the person gets the fallback
/// reply, and the log says where the request went and what the base URL usually looks like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_404_is_explained_in_the_log() {
    let fixture = Fixture::new().await;
    let without_v1 = fixture.model.base_url().trim_end_matches("/v1").to_owned();
    let settings = fixture.settings.clone().set("OPENAI_BASE_URL", &without_v1);
    let gateway = Gateway::start(&settings).await;
    let (status, _) = gateway
        .post(&fixture.sms(&gateway, "+14155550430", "hello"))
        .await;
    assert_eq!(status, 200);
    fixture.twilio.wait_for_messages(1, common::PATIENCE).await;
    let logs = gateway.logs();
    assert!(
        logs.contains(&format!(
            "the model server answered 404 to {without_v1}/chat/completions"
        )) && logs.contains("usually ends in /v1"),
        "{logs}"
    );
}

/// `serve` logs what it runs once at start, as `check-config` prints it, and no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_its_configuration_once_at_start() {
    let fixture = Fixture::new().await;
    let gateway = Gateway::start(&fixture.settings).await;
    let logs = gateway.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(" configuration "))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let line = lines[0];
    for expected in [
        "INFO",
        "soul=pip",
        "store=SQLite, the file",
        &format!("webhook={}/twilio/sms", gateway.url),
        &format!("sender={TWILIO_FROM}, through Twilio account"),
        "retention=messages kept until erased",
    ] {
        assert!(line.contains(expected), "{expected:?} not in {line}");
    }
    assert_not_logged(&gateway, &[fixture.twilio.auth_token(), "test-key"]);
}

/// Two numbers, two souls, one person texting both, on SQLite (`common::lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lines_two_souls_on_sqlite() {
    let fixture = Fixture::new().await;
    common::lines::two_lines_two_souls(&fixture.settings, &fixture.model, &fixture.twilio).await;
}

/// A soul assigned at first contact by a weighted split stays, on SQLite (`common::lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_assignment_stays_on_sqlite() {
    let fixture = Fixture::new().await;
    common::lines::first_contact_assignment_stays(
        &fixture.settings,
        &fixture.model,
        &fixture.twilio,
    )
    .await;
}
