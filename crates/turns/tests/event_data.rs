//! What a soul hands the store comes back as the soul left it, on a real SQLite file: a
//! scheduled event's params and metadata reach the process it fires, and a working memory that
//! holds one memory twice is committed and read back whole.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MentalProcess, Next, ProcessContext, ProcessResult, Registry, Runtime, ScheduledEvent,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::{Clock, Memory, Region};
use soul_persistence::{Address, Inbound, SqliteStore};
use soul_testkit::openai::OpenAiDouble;
use soul_turns::{Handled, NoDelivery, TurnDriver, TurnReport};

soul_engine::soul! {
    name: "carrier",
    display_name: "Cary",
    persona: &["You are Cary."],
    initial_process: LISTEN,
}
const LISTEN: MentalProcess =
    soul_engine::mental_process!(soul = "carrier", name = "listen", listen);
const FOLLOW_UP: MentalProcess =
    soul_engine::mental_process!(soul = "carrier", name = "follow_up", follow_up);

const TWICE: &str = "remember this twice";

async fn listen(cx: ProcessContext) -> ProcessResult {
    let seen = cx.memory().iter().filter(|m| m.content == TWICE).count();
    cx.speak(format!("I remember it {seen} times"));
    let memory = match cx.perception().content.as_str() {
        "remind me" => {
            cx.schedule_event(
                ScheduledEvent::new(cx.now() + Duration::hours(1), "time to follow up")
                    .for_process(FOLLOW_UP)
                    .with_params(json!({"topic": "the interview"}))
                    .with_metadata("reason", json!("they asked")),
            );
            cx.memory().clone()
        }
        "double" => {
            // A note, then the same note again (one memory, one id, twice).
            let note = Memory::system(TWICE).in_region(Region::new("notes").unwrap());
            cx.memory().with_memory(note.clone()).concat([note])
        }
        _ => cx.memory().clone(),
    };
    Ok(Next::stay(memory))
}

async fn follow_up(cx: ProcessContext) -> ProcessResult {
    let params: serde_json::Value = cx.params()?;
    let topic = params["topic"].as_str().unwrap_or("nothing");
    let reason = &cx.perception().metadata["reason"];
    let remembered = cx.memory().last().unwrap();
    cx.speak(format!(
        "following up on {topic} because {reason}; remembered as {:?} with {}",
        remembered.role, remembered.metadata["reason"]
    ));
    Ok(Next::stay(cx.memory().clone()))
}

/// The wall clock, moved forward by a test.
#[derive(Debug, Default)]
struct TestClock {
    ahead: Mutex<Duration>,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.ahead.lock().unwrap()
    }
}

struct Fixture {
    _double: OpenAiDouble,
    driver: TurnDriver,
    clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("soul.db")).await.unwrap();
    let double = OpenAiDouble::start().await;
    let config = OpenAiConfig::new(double.base_url(), "sk-test", "double-model")
        .with_retry(RetryPolicy::no_retries());
    let model = Arc::new(OpenAiModel::new(config).unwrap());
    let soul = Registry::load_soul("carrier").unwrap();
    let clock = Arc::new(TestClock::default());
    let runtime = Arc::new(Runtime::new(soul, model, clock.clone()));
    Fixture {
        _double: double,
        driver: TurnDriver::new(Arc::new(store), runtime, clock.clone()),
        clock,
        _dir: dir,
    }
}

async fn say(fixture: &Fixture, body: &str, sid: &str) -> TurnReport {
    let inbound = Inbound {
        from: Address::new("+15550100"),
        line: Default::default(),
        persona: None,
        body: body.to_owned(),
        external_id: Some(sid.to_owned()),
        received_at: fixture.clock.now(),
        opt_out: None,
    };
    match fixture.driver.handle(&inbound, &NoDelivery).await.unwrap() {
        Handled::Answered(mut reports) => reports.remove(0),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_scheduled_events_params_and_metadata_reach_the_process_it_fires() {
    let fixture = sqlite().await;
    let asked = say(&fixture, "remind me", "SM1").await;
    assert!(!asked.fell_back);

    *fixture.clock.ahead.lock().unwrap() = Duration::minutes(61);
    let fired = fixture
        .driver
        .fire_due_events(10, &NoDelivery)
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].processes_run, ["follow_up"]);
    assert_eq!(
        fired[0].replies,
        [
            "following up on the interview because \"they asked\"; remembered as Assistant \
             with \"they asked\""
        ]
    );
}

#[tokio::test]
async fn a_memory_held_twice_is_committed_and_read_back_twice() {
    let fixture = sqlite().await;
    let doubled = say(&fixture, "double", "SM1").await;
    assert!(!doubled.fell_back, "the store took the turn");
    let next = say(&fixture, "and now?", "SM2").await;
    assert_eq!(
        next.replies,
        ["I remember it 2 times"],
        "the snapshot was read back, not rebuilt from the conversation"
    );

    let history = fixture
        .driver
        .store()
        .history(&Address::new("+15550100"), None, 0)
        .await
        .unwrap();
    assert_eq!(
        history.iter().filter(|m| m.content == TWICE).count(),
        1,
        "one memory, stored once"
    );
}
