//! What a process sees of what is pending (OpenSouls' `pendingScheduledEvents` and pending
//! perceptions): the scheduled events not yet due, which it may move or cancel, and what waits
//! behind the perception it answers.
#![allow(clippy::unwrap_used)] // A panic is how a test fails.

use chrono::Duration;
use serde_json::json;
use soul_engine::Clock;
use soul_engine::prelude::*;
use soul_engine::process::EventId;
use soul_testkit::soul::TestSoul;

soul! {
    name: "keeper",
    persona: &["You are Kee."],
    initial_process: CHAT,
    subprocesses: &[WATCH],
}

const CHAT: MentalProcess = mental_process!(soul = "keeper", name = "chat", chat);
const CHECK_IN: MentalProcess = mental_process!(soul = "keeper", name = "check_in", check_in);
const WATCH: Subprocess = subprocess!(soul = "keeper", name = "watch", watch);

const CHECK_IN_AFTER: Duration = Duration::days(1);

fn pending_check_in(cx: &ProcessContext) -> Option<ScheduledEvent> {
    cx.pending_events()
        .into_iter()
        .find(|event| event.process.as_deref() == Some(CHECK_IN.name()))
}

/// Answers briefly while more messages wait, and keeps one check-in a day after the last
/// message: the pending one moved, or a new one. "cancel" cancels it; "both" schedules one and
/// cancels it again in the same run.
async fn chat(cx: ProcessContext) -> ProcessResult {
    let waiting: Vec<&str> = cx
        .pending_perceptions()
        .iter()
        .map(|p| p.content.as_str())
        .collect();
    cx.speak(if waiting.is_empty() {
        "Go on.".to_owned()
    } else {
        format!("Reading on: {}", waiting.join(" / "))
    });
    let at = cx.perception().at + CHECK_IN_AFTER;
    match (cx.perception().content.as_str(), pending_check_in(&cx)) {
        ("cancel", Some(check_in)) => cx.cancel_scheduled(check_in.id),
        ("both", _) => {
            let id = cx.schedule(at, Some(CHECK_IN), "[a day passed]");
            cx.cancel_scheduled(id);
        }
        (_, Some(check_in)) => {
            cx.schedule_event(check_in.rescheduled(at));
        }
        (_, None) => {
            cx.schedule(at, Some(CHECK_IN), "[a day passed]");
        }
    }
    Ok(Next::stay(cx.memory().clone()))
}

/// Says how many events are pending: the one it answers is not among them.
async fn check_in(cx: ProcessContext) -> ProcessResult {
    cx.speak(format!(
        "Checking in ({} pending).",
        cx.pending_events().len()
    ));
    Ok(Next::stay(cx.memory().clone()))
}

/// Remembers the check-ins it sees pending after the main process: what that process
/// scheduled, moved and cancelled is already there.
async fn watch(cx: ProcessContext) -> ProcessResult {
    let seen: Vec<EventId> = cx
        .pending_events()
        .iter()
        .filter(|event| event.process.as_deref() == Some(CHECK_IN.name()))
        .map(|event| event.id)
        .collect();
    cx.soul_memory().set("seen", &seen)?;
    Ok(Next::stay(cx.memory().clone()))
}

#[tokio::test]
async fn a_process_moves_the_pending_check_in_instead_of_adding_one() {
    let start = TestSoul::start("keeper").await;
    let stored = ScheduledEvent::new(start.clock().now() + Duration::hours(2), "[a day passed]")
        .for_process(CHECK_IN);
    let mut kee = start.with_pending_events([stored.clone()]);

    let turn = kee.send("hi").await;
    let moved = stored
        .clone()
        .rescheduled(kee.clock().now() + CHECK_IN_AFTER);
    assert_eq!(
        turn.scheduled,
        std::slice::from_ref(&moved),
        "the same event, a day on"
    );
    assert!(turn.cancelled_events.is_empty());
    assert_eq!(turn.pending_events, [moved]);
    assert_eq!(turn.soul_memory.upserts["seen"], json!([stored.id]));

    let turn = kee.send("still me").await;
    let again = stored
        .clone()
        .rescheduled(kee.clock().now() + CHECK_IN_AFTER);
    assert_eq!(
        turn.pending_events,
        std::slice::from_ref(&again),
        "still one check-in"
    );

    // It comes due: the check-in runs, and does not see itself pending.
    kee.clock().advance(CHECK_IN_AFTER);
    let due = Perception {
        kind: PerceptionKind::Event {
            id: again.id,
            process: again.process.clone(),
            params: again.params.clone(),
        },
        ..Perception::message(again.content.clone(), again.at)
    };
    let turn = kee.perceive(due).await;
    assert_eq!(turn.processes_run, ["check_in"]);
    assert_eq!(turn.replies, ["Checking in (0 pending)."]);
    assert!(turn.pending_events.is_empty());
    assert_eq!(turn.soul_memory.upserts["seen"], json!([]));
}

#[tokio::test]
async fn what_a_turn_scheduled_and_cancelled_is_what_comes_after_it_sees() {
    let mut kee = TestSoul::start("keeper").await;
    let turn = kee.send("hi").await;
    let [scheduled] = turn.scheduled.as_slice() else {
        panic!("one check-in scheduled: {:?}", turn.scheduled);
    };
    assert_eq!(
        turn.soul_memory.upserts["seen"],
        json!([scheduled.id]),
        "the subprocess sees what the main process scheduled"
    );

    let turn = kee.send("cancel").await;
    assert_eq!(turn.cancelled_events, [scheduled.id]);
    assert!(turn.scheduled.is_empty());
    assert_eq!(turn.soul_memory.upserts["seen"], json!([]));
    assert!(kee.state().pending_events.is_empty());

    // Scheduled and cancelled in one run: nothing for a store to do.
    let turn = kee.send("both").await;
    assert!(turn.scheduled.is_empty() && turn.cancelled_events.is_empty());
    assert!(turn.pending_events.is_empty());
}

#[tokio::test]
async fn a_process_sees_the_messages_waiting_behind_its_own() {
    let mut kee = TestSoul::start("keeper").await;
    let later = kee.clock().now() + Duration::minutes(2);
    kee.waiting([
        Perception::message("are you there?", later),
        Perception::message("hello??", later + Duration::seconds(5)),
    ]);
    let turn = kee.send("hi").await;
    assert_eq!(turn.replies, ["Reading on: are you there? / hello??"]);

    let turn = kee.send("are you there?").await;
    assert_eq!(turn.replies, ["Go on."], "the queue was that turn's");
}
