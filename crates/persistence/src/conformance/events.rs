//! Scheduled events: claimed when due, completed, and run as turns in their session's order.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Harness;
use super::fixtures::{
    address, begin_event, bodies, check_in, claim_one, commit, inbound, minutes, open, reply, set,
    settings, start, start_event, t0, turn,
};
use crate::{
    Address, BeginOutcome, Changes, EventOutcome, InboundKind, NewEvent, ProcessState,
    ScheduledEvent, Store, TurnCommit, TurnContext,
};

/// Scheduled events become due, are claimed for a while, and are completed.
pub async fn due_events_are_claimed_and_completed(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let event = |key: &str, due_at| NewEvent {
        key: key.into(),
        kind: "check_in".into(),
        payload: json!({"key": key}),
        due_at,
    };
    let changes = Changes {
        schedule: vec![
            event("morning", t0() + minutes(60)),
            event("evening", t0() + minutes(120)),
            event("never", t0()),
        ],
        cancel_events: vec!["never".into()],
        ..Changes::default()
    };
    // Cancelling in the same change set as scheduling: the cancel comes after.
    turn(&*store, &from, "a", t0(), changes).await;
    assert!(
        store
            .claim_due_events(t0() + minutes(59), 10, minutes(5))
            .await
            .expect("due")
            .is_empty()
    );
    let at = t0() + minutes(61);
    let due = store
        .claim_due_events(at, 10, minutes(5))
        .await
        .expect("due");
    assert_eq!(
        due.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["morning"]
    );
    let morning = &due[0];
    assert_eq!(
        (morning.address.clone(), morning.kind.as_str()),
        (from.clone(), "check_in")
    );
    assert_eq!(morning.payload, json!({"key": "morning"}));
    assert!(
        store
            .claim_due_events(at, 10, minutes(5))
            .await
            .expect("due")
            .is_empty(),
        "claimed"
    );
    let reclaimed = store
        .claim_due_events(at + minutes(5), 10, minutes(5))
        .await
        .expect("due");
    assert_eq!(
        reclaimed.len(),
        1,
        "an unfinished claim is handed out again"
    );
    assert!(store.complete_event(morning).await.expect("complete"));
    assert!(!store.complete_event(morning).await.expect("complete"));
    let at = t0() + minutes(200);
    let evening = store
        .claim_due_events(at, 10, minutes(5))
        .await
        .expect("due");
    assert_eq!(evening.len(), 1);
    // Rescheduled by a turn meanwhile: completing the old occurrence leaves the new one.
    let context = start(&*store, &inbound(&from, "b", None, at), at).await;
    let mut outcome = TurnCommit::new(&context);
    outcome
        .changes
        .schedule
        .push(event("evening", at + minutes(60)));
    commit(&*store, &outcome, at).await;
    assert!(!store.complete_event(&evening[0]).await.expect("complete"));
    let next = store
        .claim_due_events(at + minutes(61), 10, minutes(5))
        .await
        .expect("due");
    assert_eq!(
        next.iter().map(|e| e.due_at).collect::<Vec<_>>(),
        [at + minutes(60)]
    );
}

/// One message turn that schedules `events`.
async fn turn_scheduling(
    store: &dyn Store,
    from: &Address,
    body: &str,
    at: DateTime<Utc>,
    events: Vec<NewEvent>,
) -> Box<TurnContext> {
    let changes = Changes {
        schedule: events,
        ..Changes::default()
    };
    turn(store, from, body, at, changes).await
}

/// The turn's inbound is the event, with everything the driver needs to perceive it.
fn assert_is_event(context: &TurnContext, event: &ScheduledEvent) {
    assert_eq!(
        context.inbound.kind,
        InboundKind::Event {
            event_id: event.id,
            key: event.key.clone(),
            kind: event.kind.clone(),
            payload: event.payload.clone(),
        }
    );
    assert_eq!(
        context.inbound.external_id,
        Some(format!("event:{}", event.id))
    );
    assert_eq!(context.inbound.received_at, event.due_at);
}

/// A due event begins a turn like a message does (lease, version, loaded state), but it is not
/// the person talking: nothing enters the conversation, `total_messages` does not count it, and
/// the session timeout neither fires for it nor restarts from it. Its event is completed.
pub async fn event_turn_leaves_conversation_count_and_timeout_alone(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let changes = Changes {
        soul_memory: vec![set("name", json!("Alice"))],
        process_state: Some(ProcessState::new("closing", json!({"p": 1}))),
        schedule: vec![check_in("later", t0() + minutes(90))],
        ..Changes::default()
    };
    let first = turn(&*store, &from, "a", t0(), changes).await;

    // 90 minutes after the last message (the timeout is 60): an event does not time out.
    let at = t0() + minutes(90);
    let event = claim_one(&*store, at).await;
    assert_eq!(event.kind, "perception");
    let context = start_event(&*store, &event, at).await;
    assert_is_event(&context, &event);
    assert!(!context.new_session && !context.session_reset && !context.resumed);
    assert!(context.version() > first.version());
    assert_eq!(context.session.total_messages, 2);
    assert_eq!(context.session.session_number(), 1);
    assert_eq!(
        context.process,
        ProcessState::new("closing", json!({"p": 1}))
    );
    assert_eq!(context.soul_memories.get("name"), Some(&json!("Alice")));
    assert_eq!(
        bodies(&context.history),
        ["a", "re: a"],
        "the event is not said"
    );
    assert!(context.inbound.body.is_empty());
    assert!(
        !store.complete_event(&event).await.expect("complete"),
        "completed when its turn began"
    );
    assert!(
        store
            .claim_due_events(at + minutes(10), 10, minutes(5))
            .await
            .expect("claim")
            .is_empty()
    );

    let mut outcome = TurnCommit::new(&context);
    outcome.replies.push(reply("how did it go?", at));
    commit(&*store, &outcome, at).await;
    let session = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert_eq!(
        session.total_messages, 3,
        "the reply counts, the event does not"
    );
    assert_eq!(
        bodies(&store.history(&from, None, 0).await.expect("history")),
        ["a", "re: a", "how did it go?"]
    );

    // The person answers: 95 minutes after their last message, so the timeout fires now (the
    // event did not restart the clock) and the new session begins at their message.
    let answer = start(
        &*store,
        &inbound(&from, "great", None, t0() + minutes(95)),
        t0() + minutes(95),
    )
    .await;
    assert!(answer.session_reset);
    assert_eq!(answer.session.session_number(), 2);
    assert_eq!(answer.session.total_messages, 4);
    assert_eq!(answer.inbound.kind, InboundKind::Message);
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();
    let kinds: Vec<&str> = export["inbound_messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["message", "event", "message"]);
    assert_eq!(
        export["inbound_messages"][1]["event"]["key"],
        json!("later")
    );
}

/// An event that comes due while a turn runs is queued; the commit hands it over in arrival
/// order, with its kind; a message arriving during the event's turn waits behind it.
pub async fn event_waits_its_turn_in_session_order(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    turn_scheduling(
        &*store,
        &from,
        "a",
        t0(),
        vec![check_in("soon", t0() + minutes(10))],
    )
    .await;
    let at = t0() + minutes(10);
    let running = start(&*store, &inbound(&from, "b", None, at), at).await;
    let event = claim_one(&*store, at).await;
    assert!(matches!(
        begin_event(&*store, &event, at).await,
        EventOutcome::Queued { .. }
    ));
    let queued = store
        .begin_turn(&inbound(&from, "c", None, at), &settings(), at)
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }));

    let mut outcome = TurnCommit::new(&running);
    outcome.replies.push(reply("re: b", at));
    let handed = store
        .commit_turn(&outcome, &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("the event's turn");
    assert_is_event(&handed, &event);
    assert_eq!(handed.session.total_messages, 4);
    let during = store
        .begin_turn(&inbound(&from, "d", None, at), &settings(), at)
        .await
        .expect("begin");
    assert!(
        matches!(during, BeginOutcome::Queued { .. }),
        "the event's turn holds the lease"
    );

    let mut outcome = TurnCommit::new(&handed);
    outcome.replies.push(reply("ping", at));
    let third = store
        .commit_turn(&outcome, &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("the message queued before the event ran");
    assert_eq!(third.inbound.body, "c");
    assert_eq!(
        bodies(&third.history),
        ["a", "re: a", "b", "re: b", "ping", "c"]
    );
    let fourth = store
        .commit_turn(&TurnCommit::new(&third), &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("the message sent during the event's turn");
    assert_eq!(fourth.inbound.body, "d");
    commit(&*store, &TurnCommit::new(&fourth), at).await;
    let session = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert_eq!(session.total_messages, 7, "four messages, three replies");
}

/// Firing one claimed event twice (two workers at once, or again later) runs one turn; an event
/// rescheduled since its claim is not fired early; a crashed event turn is re-run by takeover,
/// not by firing the event again.
pub async fn event_fired_twice_runs_one_turn(harness: &dyn Harness) {
    let (one, two) = (open(harness).await, open(harness).await);
    let from = address(1);
    turn_scheduling(
        &*one,
        &from,
        "a",
        t0(),
        vec![
            check_in("once", t0() + minutes(10)),
            check_in("moved", t0() + minutes(20)),
        ],
    )
    .await;
    let at = t0() + minutes(10);
    let event = claim_one(&*one, at).await;
    let settings = settings();
    let (x, y) = tokio::join!(
        one.begin_event_turn(&event, &settings, at),
        two.begin_event_turn(&event, &settings, at)
    );
    let outcomes = [x.expect("begin event"), y.expect("begin event")];
    let started: Vec<&TurnContext> = outcomes
        .iter()
        .filter_map(|o| match o {
            EventOutcome::Started(turn) => Some(&**turn),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1, "{outcomes:?}");
    let context = started[0];
    assert!(
        outcomes.iter().any(|o| matches!(
            o,
            EventOutcome::Duplicate { inbound_id } if *inbound_id == context.inbound.id
        )),
        "{outcomes:?}"
    );

    // The worker dies: the event is not handed out again; takeover re-runs its turn.
    let later = context.lease.expires_at + minutes(1);
    assert!(
        one.claim_due_events(later, 10, minutes(5))
            .await
            .expect("claim")
            .iter()
            .all(|e| e.key != "once")
    );
    let resumed = two
        .resume_turn(context.session.id, &settings, later)
        .await
        .expect("resume")
        .expect("taken over");
    assert!(resumed.resumed);
    assert_is_event(&resumed, &event);
    let mut outcome = TurnCommit::new(&resumed);
    outcome.replies.push(reply("checking in", later));
    commit(&*two, &outcome, later).await;
    assert!(matches!(
        begin_event(&*one, &event, later).await,
        EventOutcome::Duplicate { .. }
    ));
    let session = one.session(&from).await.expect("session").expect("exists");
    assert_eq!(session.total_messages, 3);
    assert_eq!(
        bodies(&one.history(&from, None, 0).await.expect("history")),
        ["a", "re: a", "checking in"]
    );

    // Claimed, then moved by a turn before it fired: the old claim is gone, the new time fires.
    let at = t0() + minutes(20);
    let moved = claim_one(&*one, at).await;
    let context = start(&*one, &inbound(&from, "b", None, at), at).await;
    let mut outcome = TurnCommit::new(&context);
    outcome
        .changes
        .schedule
        .push(check_in("moved", at + minutes(30)));
    commit(&*one, &outcome, at).await;
    assert!(matches!(
        begin_event(&*one, &moved, at).await,
        EventOutcome::Gone
    ));
    let again = claim_one(&*one, at + minutes(30)).await;
    assert_eq!(again.due_at, at + minutes(30));
    let context = start_event(&*one, &again, at + minutes(30)).await;
    assert_is_event(&context, &again);
    commit(&*one, &TurnCommit::new(&context), at + minutes(30)).await;
}

/// An opted-out person's event is completed without a turn: nothing stored, nothing counted.
pub async fn event_for_opted_out_person_runs_no_turn(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    turn_scheduling(
        &*store,
        &from,
        "a",
        t0(),
        vec![check_in("k", t0() + minutes(10))],
    )
    .await;
    assert!(store.set_opt_out(&from, true, t0()).await.expect("opt out"));
    let at = t0() + minutes(10);
    let event = claim_one(&*store, at).await;
    let before = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert!(matches!(
        begin_event(&*store, &event, at).await,
        EventOutcome::OptedOut
    ));
    let after = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert_eq!(after, before, "no turn began");
    assert!(
        store
            .claim_due_events(at + minutes(10), 10, minutes(5))
            .await
            .expect("claim")
            .is_empty(),
        "the event is completed"
    );
    assert!(matches!(
        begin_event(&*store, &event, at).await,
        EventOutcome::Gone
    ));
    assert!(
        store
            .stalled_sessions(at + minutes(10), 10)
            .await
            .expect("stalled")
            .is_empty()
    );
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();
    assert_eq!(export["inbound_messages"].as_array().map(Vec::len), Some(1));
}
