//! What a started turn carries for its processes besides its own message: the session's pending
//! scheduled events and the messages (and due events) waiting behind it, however it started.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;

use super::Harness;
use super::fixtures::{
    address, begin_event, check_in, claim_one, inbound, minutes, open, reply, settings, start,
    start_event, t0, turn,
};
use crate::{
    BeginOutcome, Changes, EventOutcome, InboundKind, NewEvent, PendingEvent, QueuedInbound, Store,
    TurnCommit, TurnContext, TurnSettings,
};

fn keys(context: &TurnContext) -> Vec<&str> {
    context
        .pending_events
        .iter()
        .map(|event| event.key.as_str())
        .collect()
}

fn bodies(waiting: &[QueuedInbound]) -> Vec<&str> {
    waiting
        .iter()
        .map(|inbound| inbound.body.as_str())
        .collect()
}

fn event(context: &TurnContext, key: &str) -> PendingEvent {
    context
        .pending_events
        .iter()
        .find(|event| event.key == key)
        .cloned()
        .unwrap_or_else(|| panic!("{key} is not pending: {:?}", context.pending_events))
}

async fn queued(store: &dyn Store, from: &crate::Address, body: &str, at: DateTime<Utc>) -> Uuid {
    match store
        .begin_turn(&inbound(from, body, None, at), &settings(), at)
        .await
        .expect("begin")
    {
        BeginOutcome::Queued { inbound_id } => inbound_id,
        other => panic!("expected a queued message, got {other:?}"),
    }
}

/// A begin lists the session's events soonest first, whatever their kind, and nothing of another
/// session; a commit's hand-over lists the messages waiting behind the one it starts (not that
/// one), and the events as the committing turn left them: one moved keeps its id.
pub async fn a_started_turn_lists_pending_events_and_the_messages_behind_it(harness: &dyn Harness) {
    let store = open(harness).await;
    let (a, b) = (address(1), address(2));
    let reminder = NewEvent {
        key: "reminder".into(),
        kind: "reminder".into(),
        payload: json!({"what": "water the plants"}),
        due_at: t0() + minutes(120),
    };
    let changes = Changes {
        schedule: vec![
            check_in("late", t0() + minutes(3 * 24 * 60)),
            check_in("soon", t0() + minutes(60)),
            reminder.clone(),
        ],
        ..Changes::default()
    };
    turn(&*store, &a, "a1", t0(), changes).await;
    let other = Changes {
        schedule: vec![check_in("theirs", t0() + minutes(30))],
        ..Changes::default()
    };
    turn(&*store, &b, "b1", t0(), other).await;
    // The other session has a turn running and a message waiting behind it.
    start(&*store, &inbound(&b, "b2", None, t0()), t0()).await;
    queued(&*store, &b, "b3", t0()).await;

    let at = t0() + minutes(1);
    let first = start(&*store, &inbound(&a, "a2", None, at), at).await;
    assert_eq!(keys(&first), ["soon", "reminder", "late"]);
    let stored = event(&first, "reminder");
    assert_eq!(
        (stored.kind.as_str(), &stored.payload, stored.due_at),
        ("reminder", &reminder.payload, reminder.due_at)
    );
    assert_eq!(
        event(&first, "soon").payload,
        check_in("soon", t0()).payload
    );
    assert!(first.waiting.is_empty(), "{:?}", first.waiting);

    // Within the lease of a2's turn (two minutes).
    let (a3_at, a4_at) = (at + Duration::seconds(20), at + Duration::seconds(40));
    let a3 = queued(&*store, &a, "a3", a3_at).await;
    let a4 = queued(&*store, &a, "a4", a4_at).await;
    let mut commit = TurnCommit::new(&first);
    commit.replies.push(reply("re: a2", at));
    commit.changes.schedule = vec![check_in("late", t0() + minutes(30))];
    commit.changes.cancel_events = vec!["reminder".into()];
    let next = store
        .commit_turn(&commit, &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("a3 is handed over");
    assert_eq!(next.inbound.id, a3);
    assert_eq!(bodies(&next.waiting), ["a4"], "not a3, which it answers");
    let waiting = &next.waiting[0];
    assert_eq!(
        (waiting.id, waiting.received_at, &waiting.kind),
        (a4, a4_at, &InboundKind::Message)
    );
    assert_eq!(keys(&next), ["late", "soon"]);
    assert_eq!(event(&next, "late").id, event(&first, "late").id, "moved");
    assert_eq!(event(&next, "late").due_at, t0() + minutes(30));
}

/// An event's turn lists the session's other pending events, not its own (completed when its
/// turn was queued); a due event waiting in the queue is listed with the messages, as what it
/// is, and no longer as pending.
pub async fn an_event_turn_lists_the_other_events_and_an_event_waits_with_the_messages(
    harness: &dyn Harness,
) {
    let store = open(harness).await;
    let from = address(1);
    let changes = Changes {
        schedule: vec![
            check_in("first", t0() + minutes(10)),
            check_in("second", t0() + minutes(11)),
            check_in("third", t0() + minutes(600)),
        ],
        ..Changes::default()
    };
    turn(&*store, &from, "a", t0(), changes).await;

    let at = t0() + minutes(10);
    let first = claim_one(&*store, at).await;
    let running = start_event(&*store, &first, at).await;
    assert_eq!(keys(&running), ["second", "third"]);
    assert!(running.waiting.is_empty());

    // While the event's turn runs (its lease lasts two minutes), the person writes and the
    // second event comes due.
    let message = queued(&*store, &from, "are you there?", at).await;
    let later = at + minutes(1);
    let second = claim_one(&*store, later).await;
    let EventOutcome::Queued { inbound_id } = begin_event(&*store, &second, later).await else {
        panic!("the second event waits behind the running turn");
    };
    let mut commit = TurnCommit::new(&running);
    commit.replies.push(reply("how are you?", at));
    let next = store
        .commit_turn(&commit, &settings(), later)
        .await
        .expect("commit")
        .next
        .expect("the message is handed over");
    assert_eq!(next.inbound.id, message);
    assert_eq!(keys(&next), ["third"]);
    let [waiting] = next.waiting.as_slice() else {
        panic!("one waits behind: {:?}", next.waiting);
    };
    assert_eq!(waiting.id, inbound_id);
    assert_eq!(waiting.received_at, second.due_at);
    assert_eq!(
        waiting.kind,
        InboundKind::Event {
            event_id: second.id,
            key: second.key.clone(),
            kind: second.kind.clone(),
            payload: second.payload.clone(),
        }
    );
}

/// A resume starts a turn with the same lists, each bounded by `pending_limit`: the soonest
/// events and the oldest waiting messages.
pub async fn a_turn_lists_at_most_pending_limit_of_each(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let changes = Changes {
        schedule: (1..=3)
            .rev()
            .map(|n| check_in(&format!("e{n}"), t0() + minutes(60 * n)))
            .collect(),
        ..Changes::default()
    };
    turn(&*store, &from, "a", t0(), changes).await;
    let mut session = None;
    for (n, body) in (1..).zip(["b", "c", "d", "e"]) {
        let at = t0() + minutes(n);
        match store
            .enqueue_turn(&inbound(&from, body, None, at), &settings(), at)
            .await
            .expect("enqueue")
        {
            BeginOutcome::Waiting { session: id, .. } => session = Some(id),
            other => panic!("nobody holds the session: {other:?}"),
        }
    }
    let limited = TurnSettings {
        pending_limit: 2,
        ..settings()
    };
    let at = t0() + minutes(5);
    let started = store
        .resume_turn(session.expect("enqueued"), &limited, at)
        .await
        .expect("resume")
        .expect("started");
    assert_eq!(started.inbound.body, "b");
    assert_eq!(keys(&started), ["e1", "e2"]);
    assert_eq!(bodies(&started.waiting), ["c", "d"]);

    let mut commit = TurnCommit::new(&started);
    commit.replies.push(reply("re: b", at));
    let none = TurnSettings {
        pending_limit: 0,
        ..settings()
    };
    let next = store
        .commit_turn(&commit, &none, at)
        .await
        .expect("commit")
        .next
        .expect("c is handed over");
    assert!(next.pending_events.is_empty() && next.waiting.is_empty());
}
