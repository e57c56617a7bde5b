//! Turns end to end: a real store (an SQLite file; a fresh PostgreSQL database), the engine, and
//! the model behind the OpenAI double over HTTP.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use soul_engine::model::BoxFuture;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MentalProcess, Next, ProcessContext, ProcessResult, Registry, Runtime, Subprocess,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::step::external_dialog;
use soul_engine::{Clock, Memory, MemoryId, Region, Role};
use soul_persistence::turn_log::{ChangeLog, Rewind, TurnEnd, TurnLogLevel, rewind};
use soul_persistence::{
    Address, BeginOutcome, Inbound, InboundKind, PgStore, SqliteStore, Store, SupabaseConfig,
    SupabaseStore,
};
use soul_testkit::openai::{OpenAiDouble, Reply};
use soul_testkit::postgres::TestDatabase;
use soul_testkit::postrest::{PostgrestServer, token};
use soul_turns::{
    DEFAULT_FALLBACK_REPLY, DEFAULT_MAX_TURN_ATTEMPTS, Delivery, Handled, NoDelivery,
    OutboundBatch, TurnDriver, TurnReport,
};
use tokio::sync::Notify;

soul_engine::soul! {
    name: "driven",
    display_name: "Dee",
    persona: &["You are Dee."],
    initial_process: LISTEN,
    subprocesses: &[TALLY],
}
const LISTEN: MentalProcess =
    soul_engine::mental_process!(soul = "driven", name = "listen", listen);
const FOCUS: MentalProcess = soul_engine::mental_process!(soul = "driven", name = "focus", focus);
const CHECK_IN: MentalProcess =
    soul_engine::mental_process!(soul = "driven", name = "check_in", check_in);
const TALLY: Subprocess = soul_engine::subprocess!(soul = "driven", name = "tally", tally);

// A second soul for the same driver, answering without the model.
soul_engine::soul! {
    name: "second",
    display_name: "Sec",
    persona: &["You are Sec."],
    initial_process: MUSE,
}
const MUSE: MentalProcess = soul_engine::mental_process!(soul = "second", name = "muse", muse);

/// Says which soul answered, and keeps it in soul memory.
async fn muse(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("second soul: {}", cx.perception().content));
    cx.soul_memory().set("soul", "second")?;
    Ok(Next::stay(cx.memory().clone()))
}

async fn listen(cx: ProcessContext) -> ProcessResult {
    let body = cx.perception().content.clone();
    if let Some(gate_name) = body.strip_prefix("gated ") {
        let gate = gate(gate_name);
        gate.entered.notify_one();
        gate.release.notified().await;
    }
    let (memory, said) = cx
        .mind()
        .run(external_dialog("Answer."), cx.memory())
        .await?;
    cx.speak(said);
    let heard: u32 = cx.soul_memory().get("heard")?.unwrap_or(0);
    cx.soul_memory().set("heard", &(heard + 1))?;
    cx.process_memory()
        .set("last_invocation", &cx.invocation_count())?;
    // What a store refuses: a note under the id of the stored message it answers (every store
    // keeps one message per id), and a value holding U+0000 (PostgreSQL's `jsonb` refuses it).
    let memory = match body.as_str() {
        "refused note" => {
            let mut note = Memory::new(Role::Assistant, "a note", cx.now())
                .in_region(Region::new("notes").unwrap());
            let answered = cx.perception().metadata["inbound_id"].as_str().unwrap();
            note.id = MemoryId(answered.parse().unwrap());
            memory.with_memory(note)
        }
        "nul memory" => {
            cx.soul_memory().set("raw", "a\u{0}b")?;
            memory
        }
        _ => memory,
    };
    if rebuilt().lock().unwrap().contains(&body) {
        // What this soul's next build does differently, for the messages a test names.
        cx.soul_memory().set("build", &2)?;
    }
    if body == "remind me" {
        cx.schedule(
            cx.now() + Duration::hours(1),
            Some(CHECK_IN),
            "see how the interview went",
        );
    }
    Ok(if body == "focus" {
        Next::to(FOCUS, memory).with_params(json!({"why": "asked"}))
    } else {
        Next::stay(memory)
    })
}

async fn focus(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("focused because {}", cx.params_json()["why"]));
    Ok(Next::stay(cx.memory().clone()))
}

/// Speaks without the model, so a test can tell it answered.
async fn check_in(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("checking in: {}", cx.perception().content));
    Ok(Next::stay(cx.memory().clone()))
}

/// Counts the turns of a session in its own process memory, which only carries over if the
/// store loads a subprocess's memory back; the count is copied to soul memory for the tests.
async fn tally(cx: ProcessContext) -> ProcessResult {
    let turns: u32 = cx.process_memory().get("turns")?.unwrap_or(0) + 1;
    cx.process_memory().set("turns", &turns)?;
    cx.soul_memory().set("tally", &turns)?;
    let memory = cx.memory().clone();
    Ok(if cx.perception().content == "over to focus" {
        // A subprocess moves the main process: `focus` answers the next message.
        Next::to(FOCUS, memory).with_params(json!({"why": "tallied"}))
    } else {
        Next::stay(memory)
    })
}

/// The messages the "next build" of `listen` answers: a re-run of their turn differs.
fn rebuilt() -> &'static Mutex<std::collections::HashSet<String>> {
    static REBUILT: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    REBUILT.get_or_init(Mutex::default)
}

struct Gate {
    entered: Notify,
    release: Notify,
}

fn gate(name: &str) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    let mut gates = GATES.get_or_init(Mutex::default).lock().unwrap();
    gates
        .entry(name.to_owned())
        .or_insert_with(|| {
            Arc::new(Gate {
                entered: Notify::new(),
                release: Notify::new(),
            })
        })
        .clone()
}

/// The wall clock, moved forward by a test: the driver and the processes read the same one.
#[derive(Debug, Default)]
struct TestClock {
    ahead: Mutex<Duration>,
}

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.ahead.lock().unwrap() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.ahead.lock().unwrap()
    }
}

/// Keeps what the driver hands over for sending.
#[derive(Default)]
struct Recorded {
    sent: Mutex<Vec<String>>,
}

impl Delivery for Recorded {
    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()> {
        self.sent
            .lock()
            .unwrap()
            .extend(batch.messages.into_iter().map(|(_, text)| text));
        Box::pin(async {})
    }
}

struct Fixture {
    double: OpenAiDouble,
    driver: Arc<TurnDriver>,
    clock: Arc<TestClock>,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

async fn driver_on(store: Arc<dyn Store>, keep: Box<dyn std::any::Any + Send + Sync>) -> Fixture {
    driver_with(store, keep, |driver| driver).await
}

/// [`driver_on`], the driver changed by `configure`.
async fn driver_with(
    store: Arc<dyn Store>,
    keep: Box<dyn std::any::Any + Send + Sync>,
    configure: impl FnOnce(TurnDriver) -> TurnDriver,
) -> Fixture {
    let double = OpenAiDouble::start().await;
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = Arc::new(OpenAiModel::new(config).unwrap());
    let soul = Registry::load().unwrap().soul("driven").unwrap();
    let clock = Arc::new(TestClock::default());
    let runtime = Arc::new(Runtime::new(soul, model, clock.clone()));
    let driver = Arc::new(configure(TurnDriver::new(store, runtime, clock.clone())));
    Fixture {
        double,
        driver,
        clock,
        _keep: keep,
    }
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
    driver_on(Arc::new(store), Box::new(dir)).await
}

/// The driven soul, and the second one for the conversations assigned to it.
fn with_second_soul(driver: TurnDriver) -> TurnDriver {
    let soul = Registry::load().unwrap().soul("second").unwrap();
    let model = Arc::new(
        OpenAiModel::new(OpenAiConfig::new(
            "http://127.0.0.1:9",
            "sk-test",
            "unused-model",
        ))
        .unwrap(),
    );
    let runtime = Runtime::new(soul, model, Arc::new(TestClock::default()));
    driver.with_soul(Arc::new(runtime))
}

async fn sqlite_two_souls() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
    driver_with(Arc::new(store), Box::new(dir), with_second_soul).await
}

async fn postgres_two_souls() -> Fixture {
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 4).await.unwrap();
    driver_with(Arc::new(store), Box::new(database), with_second_soul).await
}

/// The Supabase store through a PostgREST-compatible server; the server stops before the
/// database is dropped.
async fn supabase_two_souls() -> Fixture {
    let database = TestDatabase::migrated().await;
    let server = PostgrestServer::start(&database).await;
    let config = SupabaseConfig::new(server.url(), token("service_role")).unwrap();
    let store = SupabaseStore::new(config);
    driver_with(
        Arc::new(store),
        Box::new((server, database)),
        with_second_soul,
    )
    .await
}

#[tokio::test]
async fn a_rerun_runs_the_conversations_own_soul_on_sqlite() {
    a_rerun_runs_the_conversations_own_soul(sqlite_two_souls().await).await;
}

#[tokio::test]
async fn a_rerun_runs_the_conversations_own_soul_on_postgres() {
    a_rerun_runs_the_conversations_own_soul(postgres_two_souls().await).await;
}

#[tokio::test]
async fn a_rerun_runs_the_conversations_own_soul_on_supabase() {
    a_rerun_runs_the_conversations_own_soul(supabase_two_souls().await).await;
}

async fn postgres() -> Fixture {
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 4).await.unwrap();
    driver_on(Arc::new(store), Box::new(database)).await
}

fn inbound(from: &str, body: &str, sid: &str, at: DateTime<Utc>) -> Inbound {
    Inbound {
        from: Address::new(from),
        line: Default::default(),
        persona: None,
        body: body.to_owned(),
        external_id: Some(sid.to_owned()),
        received_at: at,
        opt_out: None,
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

async fn answered(driver: &TurnDriver, message: Inbound) -> Vec<TurnReport> {
    match driver.handle(&message, &NoDelivery).await.unwrap() {
        Handled::Answered(reports) => reports,
        other => panic!("expected an answer, got {other:?}"),
    }
}

async fn a_conversation_keeps_its_state_across_turns(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    double.push_content("Dee said: \"Hello.\"");
    double.push_content("Dee said: \"Tell me more.\"");
    double.push_content("Dee said: \"Okay, let's focus.\"");

    let first = answered(&driver, inbound("+15550001", "hi", "SM1", now())).await;
    let second = answered(&driver, inbound("+15550001", "more", "SM2", now())).await;
    let third = answered(&driver, inbound("+15550001", "focus", "SM3", now())).await;
    let fourth = answered(&driver, inbound("+15550001", "now?", "SM4", now())).await;

    assert_eq!(first[0].replies, ["Hello."]);
    assert_eq!(second[0].replies, ["Tell me more."]);
    assert_eq!(third[0].replies, ["Okay, let's focus."]);
    assert_eq!(third[0].process, "focus");
    assert_eq!(
        fourth[0].replies,
        ["focused because \"asked\""],
        "params were stored with the transition"
    );
    assert!(first[0].subprocesses_applied);

    let store = driver.store();
    let session = store
        .session(&Address::new("+15550001"))
        .await
        .unwrap()
        .unwrap();
    let exported = store
        .export_user(&Address::new("+15550001"))
        .await
        .unwrap()
        .unwrap()[0]
        .clone();
    let text = exported.to_string();
    assert!(text.contains("\"heard\""), "{text}");
    assert_eq!(session.total_messages, 8, "four messages and four replies");

    // What the person and the soul said, in order, as the conversation table holds it.
    let history = store
        .history(&Address::new("+15550001"), None, 0)
        .await
        .unwrap();
    let said: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        said,
        [
            "hi",
            "Hello.",
            "more",
            "Tell me more.",
            "focus",
            "Okay, let's focus.",
            "now?",
            "focused because \"asked\""
        ]
    );
}

async fn a_redelivered_message_is_not_answered_twice(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    double.push_content("once");
    let message = inbound("+15550002", "hi", "SM-dup", now());
    answered(&driver, message.clone()).await;
    assert!(matches!(
        driver.handle(&message, &NoDelivery).await.unwrap(),
        Handled::Duplicate
    ));
    assert_eq!(double.requests().await.len(), 1);
}

async fn a_failed_turn_sends_the_fallback_and_changes_nothing(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    double.push_content("first");
    answered(&driver, inbound("+15550003", "hi", "SMa", now())).await;
    let address = Address::new("+15550003");
    let before = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();

    double.push(Reply::status(500));
    let failed = answered(&driver, inbound("+15550003", "again", "SMb", now())).await;
    assert!(failed[0].fell_back);
    assert_eq!(failed[0].replies, [soul_turns::DEFAULT_FALLBACK_REPLY]);
    let after = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();
    for key in ["soul_memories", "process_memories", "mental_process_state"] {
        assert_eq!(
            before.get(key),
            after.get(key),
            "{key} unchanged by the failed turn"
        );
    }

    double.push_content("back");
    let recovered = answered(&driver, inbound("+15550003", "still there?", "SMc", now())).await;
    assert_eq!(recovered[0].replies, ["back"]);
}

async fn a_message_arriving_mid_turn_is_answered_next_by_the_same_worker(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let gate_name = format!("mid-turn-{}", uuid_like());
    double.push_content("to the first");
    double.push_content("to the second");
    let first = tokio::spawn({
        let driver = driver.clone();
        let message = inbound("+15550004", &format!("gated {gate_name}"), "SMx", now());
        async move { answered(&driver, message).await }
    });
    gate(&gate_name).entered.notified().await;
    let second = driver
        .handle(&inbound("+15550004", "second", "SMy", now()), &NoDelivery)
        .await
        .unwrap();
    assert!(matches!(second, Handled::Queued));
    gate(&gate_name).release.notify_one();

    let reports = first.await.unwrap();
    let replies: Vec<&str> = reports.iter().map(|r| r.replies[0].as_str()).collect();
    assert_eq!(replies, ["to the first", "to the second"]);
    assert!(
        !reports[0].subprocesses_applied,
        "the queued message cancelled the first turn's subprocesses"
    );
    assert!(reports[1].subprocesses_applied);
}

async fn a_session_timeout_resets_process_state_but_not_soul_memory(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let start = Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap();
    double.push_content("hello");
    double.push_content("hello again");
    answered(&driver, inbound("+15550005", "focus", "SMt1", start)).await;
    let later = answered(
        &driver,
        inbound("+15550005", "I'm back", "SMt2", start + Duration::hours(3)),
    )
    .await;
    assert_eq!(
        later[0].processes_run,
        ["listen"],
        "back in the initial process"
    );
    let session = driver
        .store()
        .session(&Address::new("+15550005"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.session_number(), 2);
    let exported = driver
        .store()
        .export_user(&Address::new("+15550005"))
        .await
        .unwrap()
        .unwrap()[0]
        .clone();
    assert!(
        exported.to_string().contains("\"heard\""),
        "soul memory survived the timeout"
    );
}

async fn a_scheduled_check_in_makes_the_aimed_process_speak_once(fixture: Fixture) {
    let Fixture {
        double,
        driver,
        clock,
        ..
    } = fixture;
    double.push_content("Dee said: \"I will.\"");
    let address = Address::new("+15550006");
    let asked = answered(
        &driver,
        inbound("+15550006", "remind me", "SMe1", clock.now()),
    )
    .await;
    assert_eq!(asked[0].replies, ["I will."]);
    let delivery = Recorded::default();
    assert!(
        driver
            .fire_due_events(10, &delivery)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );

    clock.advance(Duration::minutes(61));
    let fired = driver.fire_due_events(10, &delivery).await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].processes_run, ["check_in"]);
    assert_eq!(fired[0].process, "listen");
    assert_eq!(
        fired[0].replies,
        ["checking in: see how the interview went"]
    );
    assert_eq!(
        *delivery.sent.lock().unwrap(),
        ["checking in: see how the interview went"]
    );
    assert!(
        driver
            .fire_due_events(10, &delivery)
            .await
            .unwrap()
            .is_empty(),
        "fired once"
    );
    assert_eq!(delivery.sent.lock().unwrap().len(), 1);
    assert_eq!(
        double.requests().await.len(),
        1,
        "the check-in needed no model"
    );

    let store = driver.store();
    let history = store.history(&address, None, 0).await.unwrap();
    let said: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        said,
        [
            "remind me",
            "I will.",
            "checking in: see how the interview went"
        ],
        "the event itself is not part of the conversation"
    );
    let session = store.session(&address).await.unwrap().unwrap();
    assert_eq!(session.total_messages, 3);
    assert_eq!(session.session_number(), 1);
    let exported = store.export_user(&address).await.unwrap().unwrap()[0].clone();
    assert_eq!(
        exported["mental_process_state"]["name"],
        json!("listen"),
        "the aimed process ran once; the current one stays"
    );
    assert_eq!(exported["scheduled_events"], json!([]));
}

/// The `tally` subprocess's count, as it copied it to soul memory.
async fn tally_of(driver: &TurnDriver, address: &Address) -> serde_json::Value {
    let exported = driver.store().export_user(address).await.unwrap().unwrap()[0].clone();
    exported["soul_memories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == "tally")
        .map(|row| row["value"].clone())
        .unwrap_or_default()
}

async fn a_subprocess_counts_in_its_own_memory_across_turns(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let address = Address::new("+15550007");
    let start = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
    for n in 1..=3 {
        double.push_content("Dee said: \"Mm.\"");
        let at = start + Duration::minutes(n);
        let reports = answered(&driver, inbound("+15550007", "hi", &format!("SMc{n}"), at)).await;
        assert!(reports[0].subprocesses_applied);
        assert_eq!(tally_of(&driver, &address).await, json!(n), "turn {n}");
    }
    let exported = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();
    let tally: Vec<_> = exported["process_memories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["process"] == "tally")
        .map(|row| (row["key"].clone(), row["value"].clone()))
        .collect();
    assert_eq!(tally, [(json!("turns"), json!(3))]);

    // The session timeout clears process memories, the subprocesses' included.
    double.push_content("Dee said: \"Welcome back.\"");
    let later = start + Duration::hours(3);
    answered(&driver, inbound("+15550007", "back", "SMc4", later)).await;
    assert_eq!(tally_of(&driver, &address).await, json!(1));
}

async fn a_subprocess_moves_the_main_process_through_the_store(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let address = Address::new("+15550017");
    let start = Utc.with_ymd_and_hms(2026, 11, 3, 9, 0, 0).unwrap();
    double.push_content("Dee said: \"Sure.\"");
    // `listen` stores its process memory in this very commit; the subprocess commit removes it.
    let moved = answered(
        &driver,
        inbound("+15550017", "over to focus", "SMm1", start),
    )
    .await;
    assert_eq!(moved[0].processes_run, ["listen"]);
    assert!(moved[0].subprocesses_applied);
    assert_eq!(
        moved[0].process, "focus",
        "the report says where the session is"
    );

    let exported = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();
    let state = &exported["mental_process_state"];
    assert_eq!(state["name"], json!("focus"));
    assert_eq!(state["params"], json!({"why": "tallied"}));
    assert_eq!(state["invocation_count"], json!(0));
    assert_eq!(state["previous"], json!("listen"));
    let main_memory: Vec<_> = exported["process_memories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["process"] != "tally")
        .collect();
    assert!(main_memory.is_empty(), "`listen` was left: {main_memory:?}");

    let next = answered(
        &driver,
        inbound(
            "+15550017",
            "and now?",
            "SMm2",
            start + Duration::minutes(1),
        ),
    )
    .await;
    assert_eq!(next[0].processes_run, ["focus"]);
    assert_eq!(next[0].replies, ["focused because \"tallied\""]);
}

/// The parts of a person's export a fallen-back turn leaves as they were.
const UNTOUCHED_BY_A_FALLBACK: [&str; 5] = [
    "soul_memories",
    "process_memories",
    "mental_process_state",
    "working_memory_snapshots",
    "scheduled_events",
];

async fn a_commit_the_store_refuses_sends_the_fallback_and_stores_nothing_else(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let address = Address::new("+15550008");
    double.push_content("Dee said: \"Hello.\"");
    answered(&driver, inbound("+15550008", "hi", "SMr1", now())).await;
    let before = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();

    double.push_content("Dee said: \"Noted.\"");
    let refused = answered(&driver, inbound("+15550008", "refused note", "SMr2", now())).await;
    assert_eq!(refused.len(), 1);
    assert!(refused[0].fell_back && !refused[0].given_up);
    assert_eq!(refused[0].replies, [DEFAULT_FALLBACK_REPLY]);
    assert_eq!(refused[0].outbound.len(), 1, "the fallback reply is stored");
    assert!(!refused[0].subprocesses_applied);
    let after = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();
    for key in UNTOUCHED_BY_A_FALLBACK {
        assert_eq!(before[key], after[key], "{key} changed by the refused turn");
    }

    double.push_content("Dee said: \"Back.\"");
    let next = answered(&driver, inbound("+15550008", "still there?", "SMr3", now())).await;
    assert_eq!(next[0].replies, ["Back."]);
    let history = driver.store().history(&address, None, 0).await.unwrap();
    let said: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        said,
        [
            "hi",
            "Hello.",
            "refused note",
            DEFAULT_FALLBACK_REPLY,
            "still there?",
            "Back."
        ]
    );
    assert_eq!(double.requests().await.len(), 3);
}

/// Lets the lease of the turn running for `session` expire and starts it again through the store,
/// as the sweeper of a gateway that then dies does; the attempt number of that start.
async fn restart_and_die(
    driver: &TurnDriver,
    clock: &TestClock,
    session: soul_persistence::SessionId,
) -> u32 {
    clock.advance(driver.settings().lease_for + Duration::seconds(1));
    let turn = driver
        .store()
        .resume_turn(session, driver.settings(), clock.now())
        .await
        .unwrap()
        .expect("the turn is taken over");
    assert!(turn.resumed);
    turn.attempt
}

async fn a_turn_whose_worker_keeps_dying_is_given_up_and_the_next_message_runs(fixture: Fixture) {
    let Fixture {
        double,
        driver,
        clock,
        ..
    } = fixture;
    let address = Address::new("+15550009");
    let store = driver.store();
    // Started by a worker that dies before it commits, with the person's next message behind it.
    let started = store
        .begin_turn(
            &inbound("+15550009", "lost", "SMg1", clock.now()),
            driver.settings(),
            clock.now(),
        )
        .await
        .unwrap();
    let BeginOutcome::Started(first) = started else {
        panic!("expected a started turn, got {started:?}");
    };
    assert_eq!(first.attempt, 1);
    let queued = store
        .begin_turn(
            &inbound("+15550009", "next", "SMg2", clock.now()),
            driver.settings(),
            clock.now(),
        )
        .await
        .unwrap();
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");
    for attempt in 2..=DEFAULT_MAX_TURN_ATTEMPTS.get() {
        assert_eq!(
            restart_and_die(&driver, &clock, first.session.id).await,
            attempt
        );
    }

    // The next start gives it up: the fallback reply without the model, then the next message.
    clock.advance(driver.settings().lease_for + Duration::seconds(1));
    double.push_content("Dee said: \"Answering next.\"");
    let delivery = Recorded::default();
    let reports = driver.resume(first.session.id, &delivery).await.unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[0].inbound, first.inbound.id);
    assert!(reports[0].given_up && !reports[0].fell_back);
    assert_eq!(reports[0].replies, [DEFAULT_FALLBACK_REPLY]);
    assert!(reports[0].processes_run.is_empty());
    assert!(!reports[1].given_up);
    assert_eq!(reports[1].replies, ["Answering next."]);
    assert_eq!(
        *delivery.sent.lock().unwrap(),
        [DEFAULT_FALLBACK_REPLY, "Answering next."]
    );
    assert_eq!(
        double.requests().await.len(),
        1,
        "only the next message asked the model"
    );
    let history = store.history(&address, None, 0).await.unwrap();
    let said: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        said,
        ["lost", DEFAULT_FALLBACK_REPLY, "next", "Answering next."]
    );
    assert!(
        store
            .stalled_sessions(clock.now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// On PostgreSQL, which refuses U+0000: a turn storing one in a memory, with a fallback reply
/// holding one too (a configuration mistake), fails at each start until the bound; then it is
/// closed without a reply and the next message is answered.
#[tokio::test]
async fn a_turn_refused_even_as_its_fallback_is_closed_without_a_reply_after_the_bound() {
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 4).await.unwrap();
    let fixture = driver_with(Arc::new(store), Box::new(database), |driver| {
        driver.with_fallback_reply("Sorry\u{0}")
    })
    .await;
    let Fixture {
        double,
        driver,
        clock,
        ..
    } = fixture;
    let address = Address::new("+15550010");
    double.push_content("Dee said: \"Noted.\"");
    let message = inbound("+15550010", "nul memory", "SMn1", clock.now());
    assert!(driver.handle(&message, &NoDelivery).await.is_err());
    let next = inbound("+15550010", "next", "SMn2", clock.now());
    assert!(matches!(
        driver.handle(&next, &NoDelivery).await.unwrap(),
        Handled::Queued
    ));
    let session = driver.store().session(&address).await.unwrap().unwrap().id;
    for _ in 2..=DEFAULT_MAX_TURN_ATTEMPTS.get() {
        clock.advance(driver.settings().lease_for + Duration::seconds(1));
        double.push_content("Dee said: \"Noted.\"");
        assert!(driver.resume(session, &NoDelivery).await.is_err());
    }

    clock.advance(driver.settings().lease_for + Duration::seconds(1));
    double.push_content("Dee said: \"Answering next.\"");
    let reports = driver.resume(session, &NoDelivery).await.unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports[0].given_up);
    assert!(reports[0].replies.is_empty() && reports[0].outbound.is_empty());
    assert_eq!(reports[1].replies, ["Answering next."]);
    let requests = usize::try_from(DEFAULT_MAX_TURN_ATTEMPTS.get()).unwrap() + 1;
    assert_eq!(double.requests().await.len(), requests);
    let history = driver.store().history(&address, None, 0).await.unwrap();
    let said: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(said, ["nul memory", "next", "Answering next."]);
    let exported = driver.store().export_user(&address).await.unwrap().unwrap()[0].clone();
    let soul_memories: Vec<_> = exported["soul_memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["key"].clone(), row["value"].clone()))
        .collect();
    assert_eq!(
        soul_memories,
        [(json!("heard"), json!(1)), (json!("tally"), json!(1))],
        "nothing of the refused turns"
    );
}

fn uuid_like() -> String {
    format!("{:x}", Utc::now().timestamp_nanos_opt().unwrap_or_default())
}

/// The working memory stored for `from`'s session.
async fn stored_snapshot(driver: &TurnDriver, from: &str) -> soul_engine::WorkingMemory {
    let export = driver
        .store()
        .export_user(&Address::new(from))
        .await
        .unwrap()
        .unwrap()[0]
        .clone();
    match &export["working_memory_snapshots"][0]["snapshot"] {
        serde_json::Value::String(text) => soul_engine::WorkingMemory::from_json_str(text),
        value => soul_engine::WorkingMemory::from_json(value.clone()),
    }
    .unwrap()
}

async fn a_long_conversation_stores_a_bounded_snapshot(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let from = "+15550077";
    let mut stored = Vec::new();
    for turn in 0..200 {
        double.push_content(format!(
            "Dee said: \"Answer number {turn}, of the usual length.\""
        ));
        let message = inbound(
            from,
            &format!("message {turn}"),
            &format!("SM-{turn}"),
            now(),
        );
        answered(&driver, message).await;
        if turn == 49 || turn == 199 {
            let snapshot = stored_snapshot(&driver, from).await;
            stored.push((snapshot.len(), snapshot.to_json().to_string().len()));
        }
    }

    // The persona and the default budget's 24 memories, at turn 50 as at turn 200.
    let (at_50, at_200) = (stored[0], stored[1]);
    assert_eq!(at_50.0, 25);
    assert_eq!(at_200.0, 25);
    assert!(
        at_200.1 <= at_50.1 + at_50.1 / 20,
        "the stored snapshot grew from {} to {} bytes",
        at_50.1,
        at_200.1
    );
    // And what each model request carries stops growing: the persona, the memories and the
    // step's command.
    let sizes: Vec<usize> = double
        .requests()
        .await
        .iter()
        .map(|body| body["messages"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.len(), 200);
    assert!(sizes.iter().all(|&size| size <= 26), "{sizes:?}");
    assert_eq!(sizes[199], 26);
}

/// Every turn leaves a record in the turn log: its step (name, answer; no request at the compact
/// level), what it changed (a soul-memory key with its value before and after, the process state
/// with its invocation count), its reply and its delivery, the subprocess's part, and how it
/// ended; a failed turn's record says the fallback went out and why.
async fn every_turn_leaves_a_record_of_its_steps_changes_and_end(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    double.push_content("first answer");
    let reports = answered(&driver, inbound("+15550030", "hi", "SMlog1", now())).await;
    double.push(Reply::status(500));
    let failed = answered(&driver, inbound("+15550030", "again", "SMlog2", now())).await;
    assert!(failed[0].fell_back);
    let log = driver
        .store()
        .turn_log(reports[0].session, 0, None)
        .await
        .unwrap();
    assert_eq!(log.iter().map(|t| t.turn).collect::<Vec<_>>(), [1, 2]);
    let first = &log[0].record;
    assert_eq!(first.end, TurnEnd::Ok);
    assert_eq!(first.steps.len(), 1);
    assert_eq!(first.steps[0].name, "external_dialog");
    assert_eq!(first.steps[0].answer, "first answer");
    assert!(first.steps[0].full.is_none());
    let heard = first
        .changes
        .soul_memory
        .iter()
        .find(|change| change.key == "heard")
        .unwrap();
    assert_eq!(
        (heard.before.clone(), heard.after.clone()),
        (None, Some(json!(1)))
    );
    let process = first.changes.process.as_ref().unwrap();
    assert_eq!(process.after.name, "listen");
    assert_eq!(process.after.invocation_count, 1);
    assert_eq!(log[0].replies[0].body, "first answer");
    let subprocesses = first.subprocesses.as_ref().unwrap();
    assert!(
        subprocesses
            .changes
            .soul_memory
            .iter()
            .any(|c| c.key == "tally")
    );
    let second = &log[1].record;
    assert_eq!(
        second.end,
        TurnEnd::Fallback {
            error: "process".to_owned()
        }
    );
    assert!(second.steps.is_empty());
    assert_eq!(second.changes, ChangeLog::default());
    assert_eq!(log[1].replies[0].body, DEFAULT_FALLBACK_REPLY);
}

/// At the full level a step's record keeps the request sent to the model and its raw answers.
async fn the_full_turn_log_keeps_each_request_and_raw_answer(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    double.push_content("a full answer");
    let reports = answered(&driver, inbound("+15550031", "hello", "SMfull1", now())).await;
    let log = driver
        .store()
        .turn_log(reports[0].session, 1, Some(1))
        .await
        .unwrap();
    let full = log[0].record.steps[0].full.as_ref().unwrap();
    assert_eq!(full.answers, ["a full answer"]);
    let messages = full.request["messages"].as_array().unwrap();
    assert!(
        messages.iter().any(|m| m["content"] == "hello"),
        "{messages:?}"
    );
}

/// A re-run of a logged turn by the same build does what the turn did and stores nothing; by a
/// build that behaves otherwise, it shows the difference.
async fn a_rerun_shows_what_a_changed_build_does_otherwise(fixture: Fixture) {
    let Fixture { double, driver, .. } = fixture;
    let body = format!("rebuilt {}", uuid_like());
    double.push_content("the answer");
    let reports = answered(&driver, inbound("+15550032", &body, "SMre1", now())).await;
    let session = reports[0].session;
    let stored = driver.store().session_state(session).await.unwrap();

    double.push_content("the answer");
    let same = driver.rerun(session, 1).await.unwrap().unwrap();
    assert!(!same.differs(), "{same:#?}");
    assert_eq!(same.rerun.replies, ["the answer"]);

    rebuilt().lock().unwrap().insert(body);
    double.push_content("the answer");
    let changed = driver.rerun(session, 1).await.unwrap().unwrap();
    assert!(changed.differs());
    assert!(changed.rerun.soul_memory.iter().any(|c| c.key == "build"));
    assert!(
        !changed
            .recorded
            .soul_memory
            .iter()
            .any(|c| c.key == "build")
    );
    assert_eq!(changed.rerun.replies, changed.recorded.replies);

    assert_eq!(driver.store().session_state(session).await.unwrap(), stored);
    assert_eq!(
        driver
            .store()
            .turn_log(session, 0, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(driver.rerun(session, 2).await.unwrap().is_none());
}

/// A turn of a conversation assigned to the driver's second soul is re-run with that soul (its
/// processes, its runtime), as the turn ran, not with the default soul.
async fn a_rerun_runs_the_conversations_own_soul(fixture: Fixture) {
    let Fixture { driver, .. } = fixture;
    let mut message = inbound("+15550034", "hi", "SMsoul1", now());
    message.persona = Some("second".to_owned());
    let reports = answered(&driver, message).await;
    assert_eq!(reports[0].replies, ["second soul: hi"]);
    let session = reports[0].session;
    let state = driver
        .store()
        .session_state(session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.persona, "second");

    // No model answer is queued: the default soul would call the model and fall back.
    let rerun = driver.rerun(session, 1).await.unwrap().unwrap();
    assert!(!rerun.differs(), "{rerun:#?}");
    assert_eq!(rerun.rerun.replies, ["second soul: hi"]);
    assert_eq!(rerun.rerun.end, TurnEnd::Ok);
    assert!(rerun.rerun.soul_memory.iter().any(|c| c.key == "soul"));
    // The turn's record names the second soul's process, as the store keeps it.
    assert_eq!(
        rerun.recorded.process.as_ref().map(|p| p.name.as_str()),
        Some("muse")
    );
}

/// Rewinding to before an event's turn schedules the event again as it was (its begin completed
/// it; the turn's record keeps the event it answered).
async fn a_rewind_to_before_an_event_turn_schedules_the_event_again(fixture: Fixture) {
    let Fixture {
        double,
        driver,
        clock,
        ..
    } = fixture;
    double.push_content("Dee said: \"I will.\"");
    let asked = answered(
        &driver,
        inbound("+15550033", "remind me", "SMev1", clock.now()),
    )
    .await;
    let session = asked[0].session;
    let store = driver.store();
    let events = |state: soul_persistence::turn_log::SessionState| {
        state
            .events
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect::<Vec<_>>()
    };
    let pending = events(store.session_state(session).await.unwrap().unwrap());
    assert_eq!(pending.len(), 1);

    clock.advance(Duration::minutes(61));
    assert_eq!(
        driver.fire_due_events(10, &NoDelivery).await.unwrap().len(),
        1
    );
    assert!(events(store.session_state(session).await.unwrap().unwrap()).is_empty());
    let log = store.turn_log(session, 0, None).await.unwrap();
    assert!(matches!(log[1].perception.kind, InboundKind::Event { .. }));
    // The event's turn started with its event completed: what a re-run of it starts from too.
    let current = store.session_state(session).await.unwrap().unwrap();
    let started_on = soul_persistence::turn_log::state_before(current, &log[1..])
        .unwrap()
        .unwrap();
    assert!(events(started_on).is_empty());

    assert_eq!(
        rewind(&**store, session, 1, clock.now()).await.unwrap(),
        Rewind::Rewound { rewound: 1 }
    );
    assert_eq!(
        events(store.session_state(session).await.unwrap().unwrap()),
        pending
    );
}

/// A rewind to before a turn that began a new session brings back what the session timeout
/// cleared (the process with its params, every process memory, the working memory); a re-run
/// of that turn runs on the cleared state, as the turn did.
async fn a_rewind_across_a_session_timeout_restores_what_it_cleared(fixture: Fixture) {
    let Fixture {
        double,
        driver,
        clock,
        ..
    } = fixture;
    let start = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
    let from = "+15550034";
    double.push_content("hello");
    let first = answered(&driver, inbound(from, "hi", "SMreset1", start)).await;
    let session = first[0].session;
    double.push_content("sure");
    answered(
        &driver,
        inbound(from, "focus", "SMreset2", start + Duration::minutes(1)),
    )
    .await;
    let store = driver.store();
    let kept = |state: soul_persistence::turn_log::SessionState| {
        (
            state.soul_memories,
            state.process_memories,
            state.process,
            state.snapshot,
        )
    };
    let after_two = store.session_state(session).await.unwrap().unwrap();
    assert_eq!(after_two.process.as_ref().unwrap().name, "focus");

    double.push_content("welcome back");
    let back = answered(
        &driver,
        inbound(from, "I'm back", "SMreset3", start + Duration::hours(3)),
    )
    .await;
    assert_eq!(
        back[0].processes_run,
        ["listen"],
        "the timeout cleared focus"
    );

    double.push_content("welcome back");
    let rerun = driver.rerun(session, 3).await.unwrap().unwrap();
    assert!(!rerun.differs(), "{rerun:#?}");

    assert_eq!(
        rewind(&**store, session, 2, clock.now()).await.unwrap(),
        Rewind::Rewound { rewound: 1 }
    );
    let rewound = store.session_state(session).await.unwrap().unwrap();
    assert_eq!(rewound.turn, 2);
    assert_eq!(kept(rewound), kept(after_two));
}

async fn sqlite_full_turn_log() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
    driver_with(Arc::new(store), Box::new(dir), |driver| {
        driver.with_turn_log(TurnLogLevel::Full)
    })
    .await
}

#[tokio::test]
async fn the_full_turn_log_keeps_each_request_and_raw_answer_on_sqlite() {
    the_full_turn_log_keeps_each_request_and_raw_answer(sqlite_full_turn_log().await).await;
}

macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[tokio::test] async fn $test() { super::$test(super::sqlite().await).await; })*
        }
        mod postgres_store {
            $(#[tokio::test] async fn $test() { super::$test(super::postgres().await).await; })*
        }
    };
}

on_every_store!(
    a_conversation_keeps_its_state_across_turns,
    a_redelivered_message_is_not_answered_twice,
    a_failed_turn_sends_the_fallback_and_changes_nothing,
    a_message_arriving_mid_turn_is_answered_next_by_the_same_worker,
    a_session_timeout_resets_process_state_but_not_soul_memory,
    a_scheduled_check_in_makes_the_aimed_process_speak_once,
    a_subprocess_counts_in_its_own_memory_across_turns,
    a_subprocess_moves_the_main_process_through_the_store,
    a_commit_the_store_refuses_sends_the_fallback_and_stores_nothing_else,
    a_turn_whose_worker_keeps_dying_is_given_up_and_the_next_message_runs,
    a_long_conversation_stores_a_bounded_snapshot,
    every_turn_leaves_a_record_of_its_steps_changes_and_end,
    a_rerun_shows_what_a_changed_build_does_otherwise,
    a_rewind_to_before_an_event_turn_schedules_the_event_again,
    a_rewind_across_a_session_timeout_restores_what_it_cleared,
);
