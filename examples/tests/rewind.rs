//! The turn log's proof, on SQLite, PostgreSQL and the Supabase store (`postrust`): a recorded
//! conversation of ten turns (`05-long-conversation`, Sage with its subprocesses, from its
//! cassette) rewound to turn 5, and its messages 6–10 sent again with the same cassette, ends in
//! a state identical to the original run's — process, process memories, soul memory, working
//! memory and pending events, the ids each run makes up aside. A re-run of a logged turn with the
//! same cassette does what the turn did; with another model it shows the difference.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use chrono::Duration;
use serde_json::Value;
use soul_engine::model::cassette::ReplayingModel;
use soul_engine::model::{BoxFuture, ChatRequest, Completion, LanguageModel, ModelError, Usage};
use soul_engine::process::{Registry, Runtime};
use soul_examples::replay::{Action, CASSETTE_FILE, Conversation, Step, StepClock};
use soul_persistence::turn_log::{Rewind, SessionState, TurnEnd, rewind};
use soul_persistence::{
    Address, Inbound, PgStore, SessionId, SqliteStore, Store, SupabaseConfig, SupabaseStore,
};
use soul_testkit::postgres::TestDatabase;
use soul_testkit::postrest::{PostgrestServer, token};
use soul_turns::{Handled, NoDelivery, TurnDriver, TurnReport};
// Linking the shipped souls registers them.
use soul_processes as _;

const CONVERSATION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/conversations/05-long-conversation"
);
const TURNS: usize = 10;
const REWIND_TO: u32 = 5;

/// A store and what keeps it alive (its directory, database or server).
struct Backend {
    store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send + Sync>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
    Backend {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

async fn postgres() -> Backend {
    let database = TestDatabase::migrated().await;
    let store = PgStore::connect(&database.url(), 4).await.unwrap();
    Backend {
        store: Arc::new(store),
        _keep: Box::new(database),
    }
}

async fn supabase() -> Backend {
    let database = TestDatabase::migrated().await;
    let server = PostgrestServer::start(&database).await;
    let config = SupabaseConfig::new(server.url(), token("service_role")).unwrap();
    Backend {
        store: Arc::new(SupabaseStore::new(config)),
        // The server stops before the database is dropped.
        _keep: Box::new((server, database)),
    }
}

/// A driver for Sage on `store`, thinking with `model`.
fn driver(
    store: &Arc<dyn Store>,
    clock: &Arc<StepClock>,
    model: Arc<dyn LanguageModel>,
) -> TurnDriver {
    let registry = Registry::load().unwrap();
    let soul = registry.soul("sage").unwrap();
    let runtime = Arc::new(Runtime::new(soul, model, clock.clone()));
    TurnDriver::new(store.clone(), runtime, clock.clone())
}

/// The conversation's cassette, from its first interaction.
fn cassette() -> Arc<dyn LanguageModel> {
    Arc::new(ReplayingModel::open(Path::new(CONVERSATION).join(CASSETTE_FILE)).unwrap())
}

/// Sends `step`'s message at its time, under the channel id `sid`; its turn's reports.
async fn send(driver: &TurnDriver, clock: &StepClock, step: &Step, sid: &str) -> Vec<TurnReport> {
    clock.set(step.at);
    let Action::Say { from, text } = step.action().unwrap() else {
        panic!("the conversation's first ten steps are messages")
    };
    let inbound = Inbound {
        from: Address::new(from),
        line: Default::default(),
        persona: None,
        body: text.to_owned(),
        external_id: Some(sid.to_owned()),
        received_at: step.at,
        opt_out: None,
    };
    match driver.handle(&inbound, &NoDelivery).await.unwrap() {
        Handled::Answered(reports) => reports,
        other => panic!("{sid} was not answered: {other:?}"),
    }
}

/// `step`'s message answered as recorded: the recorded replies, not the fallback.
fn answered_as_recorded(step: &Step, reports: &[TurnReport]) {
    let replies: Vec<String> = reports.iter().flat_map(|r| r.replies.clone()).collect();
    assert_eq!(replies, step.expect.replies);
    assert!(reports.iter().all(|r| !r.fell_back));
}

async fn state(store: &dyn Store, session: SessionId) -> SessionState {
    store.session_state(session).await.unwrap().unwrap()
}

/// The state as the proof compares it: without the session's bookkeeping (version, lease, latest
/// turn), every id a run makes up (memories', events' keys and ids, and any id a soul keeps in
/// its memories) masked, and the events in a fixed order.
fn comparable(mut state: SessionState) -> Value {
    state.version = 0;
    state.lease_expires_at = None;
    state.turn = 0;
    let mut value = serde_json::to_value(&state).unwrap();
    mask_ids(&mut value);
    if let Some(Value::Array(events)) = value.get_mut("events") {
        events.sort_by_key(Value::to_string);
    }
    value
}

fn mask_ids(value: &mut Value) {
    match value {
        Value::String(text) if uuid::Uuid::parse_str(text).is_ok() => *text = "<id>".to_owned(),
        Value::Array(items) => items.iter_mut().for_each(mask_ids),
        Value::Object(fields) => fields.values_mut().for_each(mask_ids),
        _ => {}
    }
}

async fn ten_turns_rewound_to_five_and_sent_again_end_in_the_same_state(backend: Backend) {
    let store = &backend.store;
    let conversation = Conversation::load(Path::new(CONVERSATION)).unwrap();
    let steps = &conversation.steps[..TURNS];
    let clock = Arc::new(StepClock::default());

    let original = driver(store, &clock, cassette());
    let mut session = None;
    let mut after_five = None;
    for (i, step) in steps.iter().enumerate() {
        let reports = send(&original, &clock, step, &format!("SM{i:02}")).await;
        answered_as_recorded(step, &reports);
        let id = reports[0].session;
        session = Some(id);
        if i + 1 == REWIND_TO as usize {
            after_five = Some(state(&**store, id).await);
        }
    }
    let session = session.unwrap();
    let after_ten = state(&**store, session).await;
    let logged = store.turn_log(session, 0, None).await.unwrap();
    assert_eq!(
        logged
            .iter()
            .map(|t| (t.turn, t.rewound))
            .collect::<Vec<_>>(),
        (1..=10).map(|n| (n, false)).collect::<Vec<_>>()
    );
    assert!(
        logged
            .iter()
            .all(|t| t.record.end == TurnEnd::Ok && !t.record.steps.is_empty())
    );

    let now = steps[TURNS - 1].at + Duration::minutes(1);
    assert_eq!(
        rewind(&**store, session, REWIND_TO, now).await.unwrap(),
        Rewind::Rewound { rewound: 5 }
    );
    assert_eq!(
        comparable(state(&**store, session).await),
        comparable(after_five.unwrap())
    );

    // Each resent message asks the model exactly what it asked the first time (a cassette holds
    // nothing else): a fresh cassette, whose answers for turns 6–10 are unused.
    let again = driver(store, &clock, cassette());
    for (i, step) in steps.iter().enumerate().skip(REWIND_TO as usize) {
        let reports = send(&again, &clock, step, &format!("SMagain{i:02}")).await;
        answered_as_recorded(step, &reports);
    }
    assert_eq!(
        comparable(state(&**store, session).await),
        comparable(after_ten)
    );
    let logged = store.turn_log(session, 0, None).await.unwrap();
    let expected: Vec<(u32, bool)> = (1..=10)
        .map(|n| (n, n > REWIND_TO))
        .chain((REWIND_TO + 1..=10).map(|n| (n, false)))
        .collect();
    assert_eq!(
        logged
            .iter()
            .map(|t| (t.turn, t.rewound))
            .collect::<Vec<_>>(),
        expected
    );
}

/// A model that answers everything the same way: a build of the soul that thinks otherwise.
#[derive(Debug)]
struct Stubborn;

impl LanguageModel for Stubborn {
    fn complete<'a>(
        &'a self,
        _request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async {
            Ok(Completion {
                content: "Tell me more.".to_owned(),
                usage: Usage::default(),
                model: "stubborn".to_owned(),
                tool_calls: Vec::new(),
            })
        })
    }
}

async fn a_rerun_shows_what_the_current_build_does_otherwise(backend: Backend) {
    let store = &backend.store;
    let conversation = Conversation::load(Path::new(CONVERSATION)).unwrap();
    let steps = &conversation.steps[..TURNS];
    let clock = Arc::new(StepClock::default());
    let original = driver(store, &clock, cassette());
    let mut session = None;
    for (i, step) in steps.iter().enumerate().take(7) {
        session = Some(send(&original, &clock, step, &format!("SM{i:02}")).await[0].session);
    }
    let session = session.unwrap();
    let before = comparable(state(&**store, session).await);
    let log_before = store.turn_log(session, 0, None).await.unwrap().len();

    // The same build and answers: turn 6 again does what it did.
    clock.set(steps[5].at);
    let same = driver(store, &clock, cassette())
        .rerun(session, 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.turn, 6);
    assert_eq!(same.recorded.replies, steps[5].expect.replies);
    assert!(!same.differs(), "{same:#?}");

    // A build that answers otherwise: the difference shows, in the replies.
    let other = driver(store, &clock, Arc::new(Stubborn))
        .rerun(session, 6)
        .await
        .unwrap()
        .unwrap();
    assert!(other.differs());
    assert_eq!(other.recorded.replies, steps[5].expect.replies);
    assert_ne!(other.rerun.replies, other.recorded.replies);

    // Nothing was stored.
    assert_eq!(comparable(state(&**store, session).await), before);
    assert_eq!(
        store.turn_log(session, 0, None).await.unwrap().len(),
        log_before
    );
    // No such turn.
    let none = driver(store, &clock, cassette())
        .rerun(session, 8)
        .await
        .unwrap();
    assert!(none.is_none());
}

macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::sqlite().await).await; })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::postgres().await).await; })*
        }
        mod on_supabase {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::supabase().await).await; })*
        }
    };
}

on_every_store!(
    ten_turns_rewound_to_five_and_sent_again_end_in_the_same_state,
    a_rerun_shows_what_the_current_build_does_otherwise,
);
