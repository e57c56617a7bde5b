//! End to end on the Supabase store: the gateway configured with a project URL and a service key,
//! talking to `postrust-server` (PostgREST-compatible) behind a proxy laid out as Supabase's API
//! gateway is (`/rest/v1`, an `apikey` header required, 502 while PostgREST is down), over a
//! fresh migrated database per test.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

mod common;

use std::collections::BTreeMap;

use common::outage::{self, Outage};
use common::{
    EchoModel, Gateway, PATIENCE, Settings, TWILIO_FROM, assert_not_logged, post_as_twilio, twilio,
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
        PgStore::connect(&self.database.url(), 1).await.unwrap()
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
    let model = EchoModel::start_slow(outage::MODEL_DELAY).await;
    let gateway = Gateway::start(&outage::settings(project.settings(&model))).await;
    let outage = Outage::new(
        &gateway,
        &project.twilio,
        &model,
        ["+14155550351", "+14155550352", "+14155550353"],
    );

    outage.before().await;
    project.server.kill();
    let refused = outage.during().await;
    project.server.resume().await;
    let store = project.database_store().await;
    outage.after(refused, &store).await;
}

/// `export` and `erase` on the Supabase store, over its REST API, while the gateway serves
/// (`common::data_requests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_erase_on_supabase() {
    let project = Project::new().await;
    let model = EchoModel::start().await;
    common::data_requests::export_and_erase(
        &project.settings(&model),
        &model,
        &project.twilio,
        project.dir.path(),
    )
    .await;
}

/// Two numbers, two souls, one person texting both, on the Supabase store
/// (`common::lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lines_two_souls_on_supabase() {
    let project = Project::new().await;
    let model = EchoModel::start().await;
    common::lines::two_lines_two_souls(&project.settings(&model), &model, &project.twilio).await;
}

/// A soul assigned at first contact by a weighted split stays, on the Supabase store
/// (`common::lines`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_assignment_stays_on_supabase() {
    let project = Project::new().await;
    let model = EchoModel::start().await;
    common::lines::first_contact_assignment_stays(
        &project.settings(&model),
        &model,
        &project.twilio,
    )
    .await;
}
