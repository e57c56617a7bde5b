//! What the cases share: a fixed clock, settings, addresses and the steps of a turn.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use soul_engine::{Memory, Role};

use super::Harness;
use crate::{
    Address, BeginOutcome, Changes, EventOutcome, Inbound, MemoryChange, NewEvent, OutboundMessage,
    Processes, ScheduledEvent, Store, TurnCommit, TurnContext, TurnSettings,
};

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

pub(super) fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

pub(super) fn settings() -> TurnSettings {
    TurnSettings {
        subprocesses: vec!["tally".to_owned(), "notes".to_owned()],
        ..TurnSettings::new(
            "aria",
            Processes::new("initial", ["initial", "listening", "closing"]),
        )
    }
}

pub(super) fn address(n: usize) -> Address {
    Address::new(format!("+1555{n:07}"))
}

pub(super) fn inbound(from: &Address, body: &str, sid: Option<&str>, at: DateTime<Utc>) -> Inbound {
    Inbound {
        from: from.clone(),
        line: Default::default(),
        persona: None,
        body: body.to_owned(),
        external_id: sid.map(str::to_owned),
        received_at: at,
        opt_out: None,
    }
}

pub(super) async fn open(harness: &dyn Harness) -> Arc<dyn Store> {
    harness.open().await.expect("open store")
}

pub(super) async fn start(
    store: &dyn Store,
    message: &Inbound,
    now: DateTime<Utc>,
) -> Box<TurnContext> {
    match store
        .begin_turn(message, &settings(), now)
        .await
        .expect("begin")
    {
        BeginOutcome::Started(turn) => turn,
        other => panic!("expected a started turn, got {other:?}"),
    }
}

pub(super) fn reply(text: &str, at: DateTime<Utc>) -> Memory {
    Memory::new(Role::Assistant, text, at)
}

/// The pending replies whose claim expired by `at`, oldest first, left claimable: a claim that
/// ends when it is taken.
pub(super) async fn unclaimed(store: &dyn Store, at: DateTime<Utc>) -> Vec<OutboundMessage> {
    store
        .claim_pending_deliveries(at, at, 100)
        .await
        .expect("claim pending replies")
}

/// Commits `commit`, expecting no next turn.
pub(super) async fn commit(store: &dyn Store, commit: &TurnCommit, now: DateTime<Utc>) {
    let outcome = store
        .commit_turn(commit, &settings(), now)
        .await
        .expect("commit");
    assert!(outcome.next.is_none(), "nothing was queued");
}

/// One full turn with one reply and the given changes.
pub(super) async fn turn(
    store: &dyn Store,
    from: &Address,
    body: &str,
    at: DateTime<Utc>,
    changes: Changes,
) -> Box<TurnContext> {
    let context = start(store, &inbound(from, body, None, at), at).await;
    let mut outcome = TurnCommit::new(&context);
    outcome.replies.push(reply(&format!("re: {body}"), at));
    outcome.changes = changes;
    commit(store, &outcome, at).await;
    context
}

pub(super) fn set(key: &str, value: serde_json::Value) -> MemoryChange {
    MemoryChange::Set {
        key: key.to_owned(),
        value,
    }
}

pub(super) fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

pub(super) fn bodies(history: &[Memory]) -> Vec<String> {
    history
        .iter()
        .map(|memory| memory.content.clone())
        .collect()
}

/// A check-in as the turn driver schedules it.
pub(super) fn check_in(key: &str, due_at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        key: key.to_owned(),
        kind: "perception".to_owned(),
        payload: json!({"process": "listening", "content": format!("check in ({key})")}),
        due_at,
    }
}

/// Claims the one due event at `at`.
pub(super) async fn claim_one(store: &dyn Store, at: DateTime<Utc>) -> ScheduledEvent {
    let mut due = store
        .claim_due_events(at, 10, minutes(5))
        .await
        .expect("claim");
    assert_eq!(due.len(), 1, "{due:?}");
    due.remove(0)
}

pub(super) async fn begin_event(
    store: &dyn Store,
    event: &ScheduledEvent,
    at: DateTime<Utc>,
) -> EventOutcome {
    store
        .begin_event_turn(event, &settings(), at)
        .await
        .expect("begin event")
}

pub(super) async fn start_event(
    store: &dyn Store,
    event: &ScheduledEvent,
    at: DateTime<Utc>,
) -> Box<TurnContext> {
    match begin_event(store, event, at).await {
        EventOutcome::Started(turn) => turn,
        other => panic!("expected a started event turn, got {other:?}"),
    }
}
