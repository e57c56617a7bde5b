//! Crashes: the gateway binary killed with SIGKILL at random points, again and again, while
//! several people keep texting; after the last restart every message has been answered exactly
//! once, in order. And PostgreSQL crashing under a running gateway: webhooks are refused at once
//! while it is down, and once it is back nothing is lost, repeated or half-written.
//!
//! Twilio retries a webhook that got no answer with the same MessageSid, and so does this
//! driver: a person's next message goes out only once the gateway acknowledged the one before.
//! The kills land anywhere: while a webhook is stored, while the model answers, between commit
//! and send, between Twilio taking a reply and the store marking it accepted. Short leases and
//! sweeps let a restarted gateway take over what the killed one left within a second or two.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::outage::{self, Outage};
use common::{EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, post_as_twilio, twilio};
use soul_persistence::PgStore;
use soul_testkit::cluster::Cluster;
use soul_testkit::postgres::TestDatabase;
use soul_testkit::twilio::{InboundSmsWebhook, TwilioDouble};
use tempfile::TempDir;
use tokio::sync::Mutex;

/// The people texting.
const NUMBERS: [&str; 4] = [
    "+14155550201",
    "+14155550202",
    "+14155550203",
    "+14155550204",
];
/// Messages each person sends.
const MESSAGES_EACH: usize = 30;
/// New messages each person sends per gateway run: the sending lasts through every crash.
const MESSAGES_PER_RUN: usize = 2;
/// Kills before the last start.
const CRASHES: usize = 20;

/// One person's conversation: the messages in order, and how many the gateway acknowledged.
struct Person {
    messages: Vec<InboundSmsWebhook>,
    acknowledged: usize,
}

fn expected_reply(number: &str, index: usize) -> String {
    format!("echo <<{}-{index}>>", &number[number.len() - 3..])
}

impl Person {
    fn new(twilio: &TwilioDouble, number: &'static str) -> Self {
        let messages = (0..MESSAGES_EACH)
            .map(|index| {
                let token = &number[number.len() - 3..];
                twilio.inbound_sms(
                    number,
                    TWILIO_FROM,
                    &format!("m {index} <<{token}-{index}>>"),
                )
            })
            .collect();
        Person {
            messages,
            acknowledged: 0,
        }
    }
}

/// Sends up to `limit` of `person`'s next messages to the gateway at `url` in order, a short
/// random pause between them, each until acknowledged (the same MessageSid every time); stops
/// at the first one the gateway does not acknowledge: a crash, or a gateway not answering yet.
async fn text(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    person: &Mutex<Person>,
    limit: usize,
) {
    let mut person = person.lock().await;
    let last = (person.acknowledged + limit).min(person.messages.len());
    while person.acknowledged < last {
        let request = person.messages[person.acknowledged].sign(url, token);
        let response = http
            .post(&request.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", &request.signature)
            .body(request.body.clone())
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => person.acknowledged += 1,
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateways_lose_and_repeat_nothing_on_sqlite() {
    let dir = TempDir::new().unwrap();
    let database = format!("sqlite://{}/soul.db", dir.path().display());
    kill_and_restart(&dir, &database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateways_lose_and_repeat_nothing_on_postgres() {
    let dir = TempDir::new().unwrap();
    let database = TestDatabase::empty().await;
    let server = std::env::var(soul_testkit::postgres::URL_VARIABLE)
        .expect("TEST_DATABASE_URL names the test server (run scripts/test)");
    let mut url = url::Url::parse(&server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(database.name());
    kill_and_restart(&dir, url.as_str()).await;
}

/// Runs the people's conversations through [`CRASHES`] killed gateways on `database` and one
/// that lives, and checks what Twilio was asked to send.
async fn kill_and_restart(dir: &TempDir, database: &str) {
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(dir.path(), database, &twilio, &model.base_url())
        .set("TURN_LEASE", "2s")
        .set("MODEL_TIMEOUT", "500ms")
        .set("MODEL_RETRY_BUDGET", "1s")
        .set("RATE_LIMIT_PER_MINUTE", "1000")
        // Kills every quarter second land on one message's turn more than three times when the
        // machine is slow; what is checked here is exactly-once across kills, not giving up.
        .set("TURN_MAX_ATTEMPTS", "1000");
    let people: Vec<Arc<Mutex<Person>>> = NUMBERS
        .iter()
        .map(|number| Arc::new(Mutex::new(Person::new(&twilio, number))))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let webhook_path = "/twilio/sms";

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for crash in 0..CRASHES {
        let mut gateway = Gateway::start(&settings).await;
        let url = gateway.webhook_url(webhook_path);
        let senders: Vec<_> = people
            .iter()
            .map(|person| {
                let (http, url, token, person) = (
                    http.clone(),
                    url.clone(),
                    twilio.auth_token().to_owned(),
                    person.clone(),
                );
                tokio::spawn(async move {
                    text(&http, &url, &token, &person, MESSAGES_PER_RUN).await;
                })
            })
            .collect();
        // Anywhere from mid-startup work to well after the replies went out.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..250))).await;
        gateway.crash();
        for sender in senders {
            sender.await.unwrap();
        }
        let acknowledged = acknowledged(&people).await;
        eprintln!("crash {crash}: {acknowledged} messages acknowledged");
    }

    // The last start: everything not yet acknowledged is sent again, and all is answered.
    let gateway = Gateway::start(&settings).await;
    let url = gateway.webhook_url(webhook_path);
    for person in &people {
        text(&http, &url, twilio.auth_token(), person, MESSAGES_EACH).await;
    }
    assert_eq!(acknowledged(&people).await, NUMBERS.len() * MESSAGES_EACH);
    let total = NUMBERS.len() * MESSAGES_EACH;
    twilio.wait_for_messages(total, PATIENCE).await;
    // Longer than the outbox's retry-after and several sweeps: a duplicate would be sent now.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in twilio.messages() {
        assert_eq!(message.from.as_deref(), Some(TWILIO_FROM));
        replies.entry(message.to).or_default().push(message.body);
    }
    for number in NUMBERS {
        let expected: Vec<String> = (0..MESSAGES_EACH)
            .map(|index| expected_reply(number, index))
            .collect();
        assert_eq!(
            replies.get(number),
            Some(&expected),
            "{number}: every message answered once, in order\n{}",
            gateway.logs()
        );
    }
    assert_eq!(twilio.messages().len(), total);
}

async fn acknowledged(people: &[Arc<Mutex<Person>>]) -> usize {
    let mut total = 0;
    for person in people {
        total += person.lock().await.acknowledged;
    }
    total
}

/// PostgreSQL stopped at once (as a crash or power cut would) while a turn waits for the model,
/// on a cluster of the test's own: the webhooks that come while it is down are refused at once
/// (Twilio moves on to its fallback URL instead of waiting out its 15 s), readiness says so, the
/// waiting turn stores its answer once the database is back, Twilio's retries are taken, every
/// message is answered exactly once, in order, and the store holds each exchange whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_mid_turn_refuses_webhooks_at_once_and_loses_nothing() {
    let cluster = Cluster::start();
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start_slow(outage::MODEL_DELAY).await;
    let settings = outage::settings(Settings::new(
        dir.path(),
        &cluster.url(),
        &twilio,
        &model.base_url(),
    ));
    let gateway = Gateway::start(&settings).await;
    let outage = Outage::new(
        &gateway,
        &twilio,
        &model,
        ["+14155550301", "+14155550302", "+14155550303"],
    );

    outage.before().await;
    cluster.kill();
    let refused = outage.during().await;
    cluster.resume();
    let store = PgStore::connect(&cluster.url(), 1).await.unwrap();
    outage.after(refused, &store).await;
}

/// PostgreSQL hung rather than down (every server process stopped, as a frozen host or a
/// network partition leaves it): a webhook still gets its 503 before Twilio's 15 s are up, and
/// once the server answers again so does the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgres_gets_webhooks_refused_before_twilio_gives_up() {
    let cluster = Cluster::start();
    let dir = TempDir::new().unwrap();
    let twilio = twilio().await;
    let model = EchoModel::start().await;
    let settings = Settings::new(dir.path(), &cluster.url(), &twilio, &model.base_url());
    let gateway = Gateway::start(&settings).await;
    let http = reqwest::Client::new();
    let from = "+14155550311";
    let sms = |body: &str| {
        twilio
            .inbound_sms(from, TWILIO_FROM, body)
            .sign(&gateway.webhook_url("/twilio/sms"), twilio.auth_token())
    };

    cluster.freeze();
    let hung = sms("h0 <<h0>>");
    assert_eq!(
        post_as_twilio(&http, &hung).await,
        Some(503),
        "refused in time"
    );
    cluster.thaw();
    assert_eq!(
        post_as_twilio(&http, &hung).await,
        Some(200),
        "Twilio's retry is taken"
    );
    twilio.wait_for_messages(1, PATIENCE).await;
    assert_eq!(twilio.messages()[0].body, "echo <<h0>>");
}
