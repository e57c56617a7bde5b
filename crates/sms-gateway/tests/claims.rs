//! Two gateway processes on one database, Twilio answering slowly (100–300 ms, as its API does),
//! and one gateway SIGKILLed while its replies are pending, round after round: the survivor and
//! the restarted process both sweep the dead one's replies once their claims expire, and the
//! people's next messages, to either process, find those replies still pending before their own.
//! Every reply reaches Twilio exactly once, in order.
//!
//! Without a claim on each reply this is the race of two sweepers: both pick up the same stale
//! reply, both ask Twilio's list whether it was sent while neither send has arrived, and both
//! send it.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, eventually, twilio};
use soul_persistence::{Address, PgStore, SqliteStore, Store};
use soul_testkit::postgres::TestDatabase;
use soul_testkit::twilio::TwilioDouble;
use tempfile::TempDir;

/// The people texting.
const NUMBERS: [&str; 6] = [
    "+14155550401",
    "+14155550402",
    "+14155550403",
    "+14155550404",
    "+14155550405",
    "+14155550406",
];
/// Messages each person sends to the gateway about to be killed, per round: their replies are
/// sent one after another, so most are still pending when it dies.
const BURST: usize = 3;
/// Kills, each followed by a restart.
const ROUNDS: usize = 3;

fn body(number: &str, index: usize) -> String {
    format!("m {index} <<{}-{index}>>", &number[number.len() - 3..])
}

fn reply(number: &str, index: usize) -> String {
    format!("echo <<{}-{index}>>", &number[number.len() - 3..])
}

/// Posts `number`'s message `index` to `gateway`, until acknowledged.
async fn send(gateway: &Gateway, twilio: &TwilioDouble, number: &str, index: usize) {
    let request = twilio
        .inbound_sms(number, TWILIO_FROM, &body(number, index))
        .sign(&gateway.webhook_url("/twilio/sms"), twilio.auth_token());
    let (status, answer) = gateway.post(&request).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_resend_a_dead_ones_replies_exactly_once_on_postgres() {
    let dir = TempDir::new().unwrap();
    let database = TestDatabase::empty().await;
    let server = std::env::var(soul_testkit::postgres::URL_VARIABLE)
        .expect("TEST_DATABASE_URL names the test server (run scripts/test)");
    let mut url = url::Url::parse(&server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(database.name());
    race(&dir, url.as_str()).await;
    let store = PgStore::connect(&database.url(), 1).await.unwrap();
    assert_none_pending(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_resend_a_dead_ones_replies_exactly_once_on_sqlite() {
    let dir = TempDir::new().unwrap();
    let database = format!("sqlite://{}/soul.db", dir.path().display());
    race(&dir, &database).await;
    let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
    assert_none_pending(&store).await;
}

/// Runs [`ROUNDS`] kills of one of two gateways on `database` and checks what Twilio was asked
/// to send.
async fn race(dir: &TempDir, database: &str) {
    let twilio = twilio().await;
    twilio.answer_within(Duration::from_millis(100)..Duration::from_millis(300));
    let model = EchoModel::start().await;
    // Claims of a second and sweeps every 100 ms: both processes sweep each dead reply as soon
    // as its claim expires.
    let settings = Settings::new(dir.path(), database, &twilio, &model.base_url())
        .set("OUTBOX_RETRY_AFTER", "1s")
        .set("SWEEP_INTERVAL", "100ms")
        .set("TURN_LEASE", "2s")
        .set("MODEL_TIMEOUT", "500ms")
        .set("MODEL_RETRY_BUDGET", "1s")
        .set("RATE_LIMIT_PER_MINUTE", "1000");
    let first = Gateway::start(&settings).await;
    let mut gateways = [first, Gateway::start(&settings).await];
    let mut sent = vec![0; NUMBERS.len()];

    for round in 0..ROUNDS {
        let doomed = round % 2;
        let before = twilio.messages().len();
        for (person, number) in NUMBERS.iter().enumerate() {
            for _ in 0..BURST {
                send(&gateways[doomed], &twilio, number, sent[person]).await;
                sent[person] += 1;
            }
        }
        eventually("the doomed gateway's first replies at Twilio", || async {
            (twilio.messages().len() > before).then_some(())
        })
        .await;
        gateways[doomed].crash();
        gateways[doomed] = Gateway::start(&settings).await;
        // The next message of each person, to either process, while the dead one's replies are
        // pending before it.
        for (person, number) in NUMBERS.iter().enumerate() {
            send(&gateways[person % 2], &twilio, number, sent[person]).await;
            sent[person] += 1;
        }
    }

    let total: usize = sent.iter().sum();
    twilio.wait_for_messages(total, PATIENCE).await;
    // Longer than a claim and many sweeps: a second send of any reply would have come by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Every process logs to the same file.
    let logs = gateways[0].logs();
    eprintln!(
        "{} sweeps resending, {} earlier replies sent first, {} Twilio list requests",
        logs.matches("resending pending replies").count(),
        logs.matches("sending an earlier pending reply first")
            .count(),
        twilio.list_count(),
    );
    let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in twilio.messages() {
        replies.entry(message.to).or_default().push(message.body);
    }
    let duplicates = twilio.messages().len() - total;
    for (person, number) in NUMBERS.iter().enumerate() {
        let expected: Vec<String> = (0..sent[person]).map(|i| reply(number, i)).collect();
        assert_eq!(
            replies.get(*number),
            Some(&expected),
            "{number}: every reply sent once, in order ({duplicates} duplicates in all)\n{logs}"
        );
    }
    assert_eq!(twilio.messages().len(), total);
}

/// Every stored reply is marked accepted in the end: nothing is left for a sweeper to send.
async fn assert_none_pending(store: &dyn Store) {
    for number in NUMBERS {
        eventually("every reply marked accepted", || async {
            let export = store
                .export_user(&Address::new(number))
                .await
                .unwrap()
                .unwrap()[0]
                .clone();
            let outbound = export["outbound_messages"].as_array()?.clone();
            outbound
                .iter()
                .all(|reply| reply["status"] == "accepted")
                .then_some(())
        })
        .await;
    }
}
