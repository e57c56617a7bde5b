//! What is pending reaches a process through a real store (a SQLite file): the scheduled events
//! as the soul scheduled them, moved in place, and the messages waiting behind each turn.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use soul_engine::model::openai::{OpenAiConfig, OpenAiModel};
use soul_engine::process::{
    MentalProcess, Next, ProcessContext, ProcessResult, Registry, Runtime, ScheduledEvent,
};
use soul_engine::retry::RetryPolicy;
use soul_engine::{Clock, SystemClock};
use soul_persistence::{Address, BeginOutcome, Inbound, SqliteStore};
use soul_testkit::openai::OpenAiDouble;
use soul_turns::{Handled, NoDelivery, TurnDriver, TurnReport};

soul_engine::soul! {
    name: "ledger",
    persona: &["You are Led."],
    initial_process: LISTEN,
}
const LISTEN: MentalProcess =
    soul_engine::mental_process!(soul = "ledger", name = "listen", listen);
const REMIND: MentalProcess =
    soul_engine::mental_process!(soul = "ledger", name = "remind", remind);

/// What the process sees, as one line: each pending event and each waiting message.
fn seen(cx: &ProcessContext) -> String {
    let events: Vec<String> = cx
        .pending_events()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {} {}",
                e.id.0,
                e.at.to_rfc3339(),
                e.process.as_deref().unwrap_or("-"),
                e.content,
                e.params,
                e.metadata
            )
        })
        .collect();
    let waiting: Vec<&str> = cx
        .pending_perceptions()
        .iter()
        .map(|p| p.content.as_str())
        .collect();
    format!(
        "events: [{}] waiting: [{}]",
        events.join("; "),
        waiting.join("; ")
    )
}

/// Says what it sees; "remind me" schedules a reminder, "later" moves the pending one a day on.
async fn listen(cx: ProcessContext) -> ProcessResult {
    cx.speak(seen(&cx));
    match cx.perception().content.as_str() {
        "remind me" => {
            cx.schedule_event(
                ScheduledEvent::new(cx.now() + Duration::hours(1), "[reminder]")
                    .for_process(REMIND)
                    .with_params(json!({"about": "the plants"}))
                    .with_metadata("why", json!("asked")),
            );
        }
        "later" => {
            for event in cx.pending_events() {
                let at = event.at + Duration::days(1);
                cx.schedule_event(event.rescheduled(at));
            }
        }
        _ => {}
    }
    Ok(Next::stay(cx.memory().clone()))
}

async fn remind(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!("reminding; {}", seen(&cx)));
    Ok(Next::stay(cx.memory().clone()))
}

/// The wall clock, moved forward by a test.
#[derive(Debug, Default)]
struct TestClock {
    ahead: Mutex<Duration>,
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        SystemClock.now() + *self.ahead.lock().unwrap()
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
    let soul = Registry::load_soul("ledger").unwrap();
    let clock = Arc::new(TestClock::default());
    let runtime = Arc::new(Runtime::new(soul, model, clock.clone()));
    Fixture {
        _double: double,
        driver: TurnDriver::new(Arc::new(store), runtime, clock.clone()),
        clock,
        _dir: dir,
    }
}

fn inbound(fixture: &Fixture, body: &str) -> Inbound {
    Inbound {
        from: Address::new("+15550100"),
        line: Default::default(),
        persona: None,
        body: body.to_owned(),
        external_id: None,
        received_at: fixture.clock.now(),
        opt_out: None,
    }
}

async fn say(fixture: &Fixture, body: &str) -> TurnReport {
    match fixture
        .driver
        .handle(&inbound(fixture, body), &NoDelivery)
        .await
        .unwrap()
    {
        Handled::Answered(mut reports) => reports.remove(0),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[tokio::test]
async fn pending_events_and_waiting_messages_reach_the_process_through_the_store() {
    let fixture = sqlite().await;
    let first = say(&fixture, "remind me").await;
    assert_eq!(first.replies, ["events: [] waiting: []"]);

    // The reminder as scheduled: its id, time, process, text, params and metadata.
    let seen = say(&fixture, "what's pending?").await.replies.remove(0);
    let reminder = seen
        .strip_prefix("events: [")
        .and_then(|rest| rest.strip_suffix("] waiting: []"))
        .unwrap_or_else(|| panic!("one event: {seen}"))
        .to_owned();
    let fields: Vec<&str> = reminder.splitn(3, ' ').collect();
    let due: DateTime<Utc> = fields[1].parse().unwrap();
    assert!(
        (due - fixture.clock.now() - Duration::hours(1)).abs() < Duration::minutes(1),
        "{reminder}"
    );
    assert_eq!(
        fields[2],
        r#"remind [reminder] {"about":"the plants"} {"why":"asked"}"#
    );

    // Moved a day on: the same event, at the new time.
    say(&fixture, "later").await;
    let moved = say(&fixture, "and now?").await.replies.remove(0);
    let moved_due = (due + Duration::days(1)).to_rfc3339();
    assert_eq!(
        moved,
        format!(
            "events: [{} {moved_due} {}] waiting: []",
            fields[0], fields[2]
        )
    );

    // Three messages stored while nobody holds the session, then answered in order: each turn
    // sees those behind it.
    let mut session = None;
    for body in ["one", "two", "three"] {
        match fixture
            .driver
            .enqueue(&inbound(&fixture, body))
            .await
            .unwrap()
        {
            BeginOutcome::Waiting { session: id, .. } => session = Some(id),
            other => panic!("nobody holds the session: {other:?}"),
        }
    }
    let reports = fixture
        .driver
        .resume(session.unwrap(), &NoDelivery)
        .await
        .unwrap();
    let waiting: Vec<&str> = reports
        .iter()
        .map(|report| report.replies[0].split(" waiting: ").nth(1).unwrap())
        .collect();
    assert_eq!(waiting, ["[two; three]", "[three]", "[]"]);

    // Due, the reminder's own turn does not see it pending.
    *fixture.clock.ahead.lock().unwrap() = Duration::days(2);
    let fired = fixture
        .driver
        .fire_due_events(10, &NoDelivery)
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].replies, ["reminding; events: [] waiting: []"]);
}
