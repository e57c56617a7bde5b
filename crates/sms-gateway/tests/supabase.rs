//! End to end on the Supabase store: the gateway configured with a project URL and a service key,
//! talking to `postrust-server` (PostgREST-compatible) behind a proxy laid out as Supabase's API
//! gateway is (`/rest/v1`, an `apikey` header required, 502 while PostgREST is down), over a
//! fresh migrated database per test.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, assert_not_logged, eventually, exchange,
    post_as_twilio, stored_exchange, twilio,
};
use soul_persistence::PgStore;
use soul_testkit::postgres::TestDatabase;
use soul_testkit::postrest::{PostgrestServer, RequestCounter, token};
use soul_testkit::twilio::{SignedRequest, TwilioDouble};
use tempfile::TempDir;

/// A migrated database served as a Supabase project, and a gateway's settings for it.
struct Project {
    database: TestDatabase,
    server: PostgrestServer,
    /// The project URL (Supabase's API gateway in front of the server).
    api: RequestCounter,
    service_key: String,
    twilio: TwilioDouble,
    dir: TempDir,
}

impl Project {
    async fn new() -> Self {
        let database = TestDatabase::migrated().await;
        let server = PostgrestServer::start(&database).await;
        let api = RequestCounter::supabase(&server.url()).await;
        Project {
            database,
            server,
            api,
            service_key: token("service_role"),
            twilio: twilio().await,
            dir: TempDir::new().unwrap(),
        }
    }

    fn settings(&self, model: &EchoModel) -> Settings {
        // A Supabase project instead of a database URL.
        Settings::new(self.dir.path(), "", &self.twilio, &model.base_url())
            .unset("DATABASE_URL")
            .set("SUPABASE_URL", &self.api.url())
            .set("SUPABASE_SERVICE_KEY", &self.service_key)
    }

    fn sms(&self, gateway: &Gateway, from: &str, body: &str) -> SignedRequest {
        self.twilio.inbound_sms(from, TWILIO_FROM, body).sign(
            &gateway.webhook_url("/twilio/sms"),
            self.twilio.auth_token(),
        )
    }

    fn replies(&self) -> BTreeMap<String, Vec<String>> {
        let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for message in self.twilio.messages() {
            replies.entry(message.to).or_default().push(message.body);
        }
        replies
    }

    /// The store read directly, bypassing the REST API.
    async fn database_store(&self) -> PgStore {
        PgStore::connect_with(self.database.options(), 1)
            .await
            .unwrap()
    }
}

/// A conversation through the REST API with debug logging on: answered in order, every request
/// through Supabase's `/rest/v1`, and neither the service key nor anything of the person in the
/// logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_on_supabase_is_answered_in_order_and_debug_logs_hold_no_secret() {
    let project = Project::new().await;
    let model = EchoModel::start().await;
    let gateway = Gateway::start(&project.settings(&model).set("RUST_LOG", "debug")).await;
    let http = reqwest::Client::new();
    let from = "+14155550341";
    for i in 1..=3 {
        let request = project.sms(&gateway, from, &format!("my secret worry <<s{i}>>"));
        assert_eq!(post_as_twilio(&http, &request).await, Some(200));
    }
    project.twilio.wait_for_messages(3, PATIENCE).await;
    assert_eq!(
        project.replies()[from],
        ["echo <<s1>>", "echo <<s2>>", "echo <<s3>>"]
    );
    assert!(
        project
            .api
            .requests()
            .iter()
            .any(|request| request == "POST /rest/v1/rpc/soul_commit_turn"),
        "{:?}",
        project.api.requests()
    );
    let logs = gateway.logs();
    assert!(logs.contains("DEBUG"), "debug logging was not on:\n{logs}");
    assert_not_logged(
        &gateway,
        &[
            from,
            "4155550341",
            "secret worry",
            "echo <<",
            &project.service_key,
            project.twilio.auth_token(),
        ],
    );
}

/// PostgREST killed while a turn waits for the model, then started again: the same as a
/// PostgreSQL crash (tests/crash.rs). Webhooks meanwhile are refused at once, the waiting turn
/// stores its answer once the API is back, Twilio's retries are taken, every message is answered
/// exactly once, in order, and the database holds each exchange whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_restarting_mid_turn_refuses_webhooks_at_once_and_loses_nothing() {
    let mut project = Project::new().await;
    let model = EchoModel::start_slow(Duration::from_millis(500)).await;
    let settings = project
        .settings(&model)
        .set("TURN_LEASE", "120s")
        .set("MODEL_TIMEOUT", "2s")
        .set("MODEL_RETRY_BUDGET", "2s");
    let gateway = Gateway::start(&settings).await;
    let http = reqwest::Client::new();
    let (ann, ben, cat) = ("+14155550351", "+14155550352", "+14155550353");

    let a0 = project.sms(&gateway, ann, "a0 <<a0>>");
    assert_eq!(post_as_twilio(&http, &a0).await, Some(200));
    project.twilio.wait_for_messages(1, PATIENCE).await;

    let b0 = project.sms(&gateway, ben, "b0 <<b0>>");
    assert_eq!(post_as_twilio(&http, &b0).await, Some(200));
    eventually("the model asked about b0", || async {
        model
            .answered()
            .contains(&"<<b0>>".to_owned())
            .then_some(())
    })
    .await;
    project.server.kill();

    let a1 = project.sms(&gateway, ann, "a1 <<a1>>");
    let c0 = project.sms(&gateway, cat, "c0 <<c0>>");
    for request in [&a1, &c0] {
        assert_eq!(post_as_twilio(&http, request).await, Some(503));
    }
    assert_eq!(gateway.get("/readyz").await.0, 503);
    eventually("the turn's commit failing", || async {
        gateway
            .logs()
            .contains("storing a turn failed; trying again")
            .then_some(())
    })
    .await;

    project.server.resume().await;
    for request in [&a1, &c0] {
        assert_eq!(post_as_twilio(&http, request).await, Some(200));
    }
    project.twilio.wait_for_messages(4, PATIENCE).await;
    let a2 = project.sms(&gateway, ann, "a2 <<a2>>");
    assert_eq!(post_as_twilio(&http, &a2).await, Some(200));
    project.twilio.wait_for_messages(5, PATIENCE).await;
    // Longer than the outbox's retry-after and several sweeps: a repeat would show.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let replies = project.replies();
    let logs = gateway.logs();
    assert_eq!(
        replies[ann],
        ["echo <<a0>>", "echo <<a1>>", "echo <<a2>>"],
        "{logs}"
    );
    assert_eq!(replies[ben], ["echo <<b0>>"], "{logs}");
    assert_eq!(replies[cat], ["echo <<c0>>"], "{logs}");
    assert_eq!(project.twilio.messages().len(), 5);
    let asked_about_b0 = model.answered().iter().filter(|t| *t == "<<b0>>").count();
    assert_eq!(
        asked_about_b0, 1,
        "the answer given before the crash was kept"
    );

    let store = project.database_store().await;
    assert_eq!(
        stored_exchange(&store, ann).await,
        exchange(&[
            ("a0 <<a0>>", "echo <<a0>>"),
            ("a1 <<a1>>", "echo <<a1>>"),
            ("a2 <<a2>>", "echo <<a2>>"),
        ])
    );
    assert_eq!(
        stored_exchange(&store, ben).await,
        exchange(&[("b0 <<b0>>", "echo <<b0>>")])
    );
    assert_eq!(
        stored_exchange(&store, cat).await,
        exchange(&[("c0 <<c0>>", "echo <<c0>>")])
    );
}
