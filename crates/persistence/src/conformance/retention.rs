//! A person's data: old messages deleted, one user's data exported and erased.

use chrono::Duration;
use serde_json::json;

use super::Harness;
use super::fixtures::{address, bodies, inbound, minutes, open, set, start, t0, turn, unclaimed};
use crate::{Changes, NewEvent, ProcessMemoryChange, ProcessState};

/// Messages older than N days are deleted and counted, per person or for everyone.
pub async fn old_messages_are_deleted(harness: &dyn Harness) {
    let store = open(harness).await;
    let (alice, bob) = (address(1), address(2));
    for day in 0..4 {
        let at = t0() + Duration::days(day);
        turn(&*store, &alice, &format!("a{day}"), at, Changes::default()).await;
        turn(&*store, &bob, &format!("b{day}"), at, Changes::default()).await;
    }
    let now = t0() + Duration::days(4);
    // Older than 2 days: days 0 and 1, two messages each.
    assert_eq!(
        store
            .delete_messages_older_than(Some(&alice), 2, now)
            .await
            .expect("delete"),
        4
    );
    assert_eq!(
        bodies(&store.history(&alice, None, 0).await.expect("history")),
        ["a2", "re: a2", "a3", "re: a3"]
    );
    assert_eq!(
        store.history(&bob, None, 0).await.expect("history").len(),
        8
    );
    assert_eq!(
        store
            .delete_messages_older_than(None, 1, now)
            .await
            .expect("delete"),
        2 + 6
    );
    assert_eq!(
        store
            .delete_messages_older_than(None, 1, now)
            .await
            .expect("delete"),
        0
    );
}

/// One user's data exports as JSON and erases completely, leaving others alone.
pub async fn export_and_erase_one_user(harness: &dyn Harness) {
    let store = open(harness).await;
    let (alice, bob) = (address(1), address(2));
    let changes = Changes {
        soul_memory: vec![set("name", json!("Alice"))],
        process_memory: vec![ProcessMemoryChange {
            process: "initial".into(),
            change: set("k", json!(1)),
        }],
        process_state: Some(ProcessState::new("listening", json!({"p": 1}))),
        snapshot: Some(soul_engine::WorkingMemory::new("aria")),
        schedule: vec![NewEvent {
            key: "k".into(),
            kind: "check_in".into(),
            payload: json!({}),
            due_at: t0(),
        }],
        ..Changes::default()
    };
    turn(&*store, &alice, "secret", t0(), changes).await;
    turn(&*store, &bob, "other", t0(), Changes::default()).await;
    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("exists");
    assert_eq!(export["session"]["address"], json!(alice.as_str()));
    assert_eq!(export["session"]["total_messages"], json!(2));
    let contents: Vec<&str> = export["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents, ["secret", "re: secret"]);
    assert_eq!(export["soul_memories"][0]["key"], json!("name"));
    assert_eq!(export["soul_memories"][0]["value"], json!("Alice"));
    assert_eq!(export["process_memories"][0]["value"], json!(1));
    assert_eq!(export["mental_process_state"]["name"], json!("listening"));
    assert_eq!(
        export["working_memory_snapshots"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(export["inbound_messages"][0]["body"], json!("secret"));
    assert_eq!(export["outbound_messages"][0]["body"], json!("re: secret"));
    assert_eq!(export["scheduled_events"][0]["kind"], json!("check_in"));
    assert!(
        !export.to_string().contains("other"),
        "nothing of another user"
    );

    assert!(store.erase_user(&alice).await.expect("erase"));
    assert!(store.session(&alice).await.expect("session").is_none());
    assert!(store.export_user(&alice).await.expect("export").is_none());
    assert!(
        store
            .history(&alice, None, 0)
            .await
            .expect("history")
            .is_empty()
    );
    assert!(
        unclaimed(&*store, t0() + minutes(10))
            .await
            .iter()
            .all(|m| m.address == bob)
    );
    assert!(
        store
            .claim_due_events(t0(), 10, minutes(1))
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(
        store.history(&bob, None, 0).await.expect("history").len(),
        2
    );
    // A new message from the erased number is a first contact again.
    let again = start(
        &*store,
        &inbound(&alice, "hi", None, t0() + minutes(1)),
        t0() + minutes(1),
    )
    .await;
    assert!(again.new_session);
    assert!(again.soul_memories.is_empty());
}
