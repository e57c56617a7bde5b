//! End to end on PostgreSQL: one gateway, and two gateway processes sharing a database. The
//! server comes from `TEST_DATABASE_URL` (`scripts/test` starts one); each test gets a fresh,
//! empty database, which the gateway migrates itself.

mod common;

use std::collections::BTreeMap;

use common::{EchoModel, Gateway, Settings, TWILIO_FROM, eventually, twilio};
use soul_persistence::{Address, PgStore, Store};
use soul_testkit::openai::OpenAiDouble;
use soul_testkit::postgres::TestDatabase;
use soul_testkit::twilio::TwilioDouble;
use tempfile::TempDir;

/// The URL of `database` on the test server.
fn database_url(database: &TestDatabase) -> String {
    let server = std::env::var(soul_testkit::postgres::URL_VARIABLE)
        .expect("TEST_DATABASE_URL names the test server (run scripts/test)");
    let mut url = url::Url::parse(&server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(database.name());
    url.to_string()
}

async fn send(gateway: &Gateway, twilio: &TwilioDouble, from: &str, body: &str) {
    let request = twilio
        .inbound_sms(from, TWILIO_FROM, body)
        .sign(&gateway.webhook_url("/twilio/sms"), twilio.auth_token());
    let (status, answer) = gateway.post(&request).await;
    assert_eq!(status, 200, "{answer}");
}

/// The bodies sent to each number, in order.
fn by_number(twilio: &TwilioDouble) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in twilio.messages() {
        map.entry(message.to).or_default().push(message.body);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_is_answered_in_order_on_postgres() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(
        dir.path(),
        &database_url(&database),
        &twilio,
        &model.base_url(),
    );
    let migrate = common::command(&settings.env)
        .arg("migrate")
        .output()
        .expect("run migrate");
    assert!(migrate.status.success(), "{migrate:?}");
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550201";
    for i in 1..=4 {
        send(&gateway, &twilio, from, &format!("message <<m{i}>>")).await;
    }
    twilio.wait_for_messages(4, common::PATIENCE).await;
    assert_eq!(
        by_number(&twilio)[from],
        ["echo <<m1>>", "echo <<m2>>", "echo <<m3>>", "echo <<m4>>"]
    );
    assert_eq!(gateway.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_answer_interleaved_messages_exactly_once_in_order() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(
        dir.path(),
        &database_url(&database),
        &twilio,
        &model.base_url(),
    );
    // Started together: both migrate the empty database, one after the other.
    let (first, second) = tokio::join!(Gateway::start(&settings), Gateway::start(&settings));
    let gateways = [first, second];
    let numbers = ["+14155550211", "+14155550212", "+14155550213"];
    const PER_NUMBER: usize = 5;
    // Round robin over numbers and gateways, without waiting for replies: each number's
    // messages alternate between the two processes while earlier turns are still running.
    let mut turn = 0;
    for i in 1..=PER_NUMBER {
        for (n, number) in numbers.iter().enumerate() {
            let gateway = &gateways[turn % 2];
            turn += 1;
            send(gateway, &twilio, number, &format!("hi <<{n}-{i}>>")).await;
        }
    }
    let total = numbers.len() * PER_NUMBER;
    twilio.wait_for_messages(total, common::PATIENCE).await;
    // Nothing more arrives: every turn has committed, so no stray resend is still on its way.
    eventually("every turn counted", || async {
        let mut turns = 0;
        for gateway in &gateways {
            turns += gateway
                .metric("sms_gateway_turns_total{result=\"answered\"}")
                .await;
        }
        (turns == u64::try_from(total).unwrap()).then_some(())
    })
    .await;
    let sent = by_number(&twilio);
    for (n, number) in numbers.iter().enumerate() {
        let expected: Vec<String> = (1..=PER_NUMBER)
            .map(|i| format!("echo <<{n}-{i}>>"))
            .collect();
        assert_eq!(sent[*number], expected, "replies to {number}");
    }
    assert_eq!(twilio.messages().len(), total, "each message answered once");
    assert_eq!(
        model.answered().len(),
        total,
        "each message sent to the model once"
    );
    // Both processes did part of the work.
    for gateway in &gateways {
        let mut stored = 0;
        for outcome in ["started", "waiting", "queued"] {
            stored += gateway
                .metric(&format!(
                    "sms_gateway_inbound_total{{outcome=\"{outcome}\"}}"
                ))
                .await;
        }
        assert!(stored > 0);
    }
}

/// Bodies of every shape, on the store that refuses the most (U+0000 in `text` and `jsonb`):
/// each is stored and answered, in order, as the text `inbound_text` defines for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_message_is_stored_and_answered_on_postgres() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let url = database_url(&database);
    let settings = Settings::new(dir.path(), &url, &twilio, &model.base_url());
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550221";
    let long = format!("{}<<long>>", "I have a lot to say. ".repeat(80));
    assert!(long.chars().count() > 1_600);
    // (body, media type, what is stored, what is answered). The echo model answers the newest
    // `<<token>>` it can see, so the two messages without one are answered with the long
    // message's token: what matters there is that each got an answer and was stored as defined.
    let cases: [(&str, Option<&str>, &str, &str); 5] = [
        (
            "👩‍👩‍👧‍👦 مرحبا e\u{301} 中文 <<unicode>>",
            None,
            "👩‍👩‍👧‍👦 مرحبا e\u{301} 中文 <<unicode>>",
            "echo <<unicode>>",
        ),
        (
            "a nul\u{0} and a bell\u{7} <<controls>>",
            None,
            "a nul and a bell <<controls>>",
            "echo <<controls>>",
        ),
        (&long, None, &long, "echo <<long>>"),
        ("", None, "[an empty message]", "echo <<long>>"),
        (
            "",
            Some("image/jpeg"),
            "[sent an attachment: image/jpeg]",
            "echo <<long>>",
        ),
    ];
    for (n, (body, media, _, _)) in cases.iter().enumerate() {
        let mut message = twilio.inbound_sms(from, TWILIO_FROM, body);
        if let Some(kind) = media {
            message = message.with_media("https://api.twilio.com/media/ME0001", kind);
        }
        let request = message.sign(&gateway.webhook_url("/twilio/sms"), twilio.auth_token());
        let (status, answer) = gateway.post(&request).await;
        assert_eq!(status, 200, "case {n}: {answer}");
        twilio.wait_for_messages(n + 1, common::PATIENCE).await;
    }
    let answered: Vec<&str> = cases.iter().map(|case| case.3).collect();
    assert_eq!(by_number(&twilio)[from], answered);

    let store = PgStore::connect(&url, 2).await.unwrap();
    let export = store
        .export_user(&Address::new(from))
        .await
        .unwrap()
        .unwrap()[0]
        .clone();
    let stored = common::user_texts(&export);
    let expected: Vec<&str> = cases.iter().map(|case| case.2).collect();
    assert_eq!(stored, expected);
    assert!(
        !export.to_string().contains("api.twilio.com/media"),
        "a media URL was stored"
    );
}

/// A model answer holding U+0000, which PostgreSQL refuses in `text` and `jsonb`, is stored and
/// sent without it, and the person's next message is answered. With a short lease, a turn left
/// unstored would be run again (the model asked again) while the test waits for its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_answer_holding_a_nul_is_sent_without_it_and_the_next_message_answered() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = OpenAiDouble::start().await;
    let url = database_url(&database);
    let settings = Settings::new(dir.path(), &url, &twilio, &model.base_url())
        .set("TURN_LEASE", "2s")
        .set("MODEL_TIMEOUT", "500ms")
        .set("MODEL_RETRY_BUDGET", "1s");
    let gateway = Gateway::start(&settings).await;
    let from = "+14155550231";
    model
        .push_content("Pip said: \"Hello\u{0} there,\u{1b} friend.\"")
        .push_content("Pip said: \"Glad you asked.\"");

    send(&gateway, &twilio, from, "hi <<1>>").await;
    twilio.wait_for_messages(1, common::PATIENCE).await;
    assert_eq!(by_number(&twilio)[from], ["Hello there, friend."]);
    send(&gateway, &twilio, from, "and then? <<2>>").await;
    twilio.wait_for_messages(2, common::PATIENCE).await;
    assert_eq!(
        by_number(&twilio)[from],
        ["Hello there, friend.", "Glad you asked."]
    );
    gateway
        .wait_metric("sms_gateway_turns_total{result=\"answered\"}", 2)
        .await;

    assert_eq!(model.requests().await.len(), 2, "each message asked once");
    let store = PgStore::connect(&url, 2).await.unwrap();
    assert_eq!(
        common::stored_exchange(&store, from).await,
        common::exchange(&[
            ("hi <<1>>", "Hello there, friend."),
            ("and then? <<2>>", "Glad you asked."),
        ])
    );
    for result in ["fallback", "given_up", "failed"] {
        let series = format!("sms_gateway_turns_total{{result=\"{result}\"}}");
        assert_eq!(gateway.metric(&series).await, 0, "{series}");
    }
}

/// `export` and `erase` on PostgreSQL, while the gateway serves (`common::data_requests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_erase_on_postgres() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(
        dir.path(),
        &database_url(&database),
        &twilio,
        &model.base_url(),
    );
    common::data_requests::export_and_erase(&settings, &model, &twilio, dir.path()).await;
}

/// Two numbers, two souls, one person texting both, on PostgreSQL (`common::lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lines_two_souls_on_postgres() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(
        dir.path(),
        &database_url(&database),
        &twilio,
        &model.base_url(),
    );
    common::lines::two_lines_two_souls(&settings, &model, &twilio).await;
}

/// A soul assigned at first contact by a weighted split stays, on PostgreSQL (`common::lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_assignment_stays_on_postgres() {
    let database = TestDatabase::empty().await;
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(
        dir.path(),
        &database_url(&database),
        &twilio,
        &model.base_url(),
    );
    common::lines::first_contact_assignment_stays(&settings, &model, &twilio).await;
}
