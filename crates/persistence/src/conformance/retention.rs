//! A person's data: old messages deleted with every copy of their text, one user's data exported
//! and erased.

use chrono::Duration;
use serde_json::{Value, json};

use super::Harness;
use super::fixtures::{
    address, bodies, inbound, minutes, open, reply, set, start, t0, turn, unclaimed,
};
use crate::{
    BeginOutcome, Changes, DeliveryStatus, DeliveryUpdate, Erasure, NewEvent, OutboundRef,
    ProcessMemoryChange, ProcessState, TurnCommit,
};

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

/// Retention deletes every copy of an old message's text — the conversation, the inbound
/// message once its turn is done, the reply once it is no longer pending — and, of a session
/// with no turn since, the snapshot, process state and process memories; it keeps what waits
/// (a message not yet answered, a reply not yet sent), soul memories, scheduled events, and
/// everything newer.
pub async fn retention_deletes_every_copy_of_an_old_message(harness: &dyn Harness) {
    let store = open(harness).await;
    let (alice, bob, carol) = (address(1), address(2), address(3));
    let changes = || Changes {
        soul_memory: vec![set("name", json!("kept"))],
        process_memory: vec![ProcessMemoryChange {
            process: "initial".into(),
            change: set("k", json!(1)),
        }],
        process_state: Some(ProcessState::new("listening", json!({}))),
        snapshot: Some(soul_engine::WorkingMemory::new("aria")),
        schedule: vec![NewEvent {
            key: "k".into(),
            kind: "check_in".into(),
            payload: json!({}),
            due_at: t0() + Duration::days(30),
        }],
        ..Changes::default()
    };
    // Alice's first reply was sent, her second is still pending; both are old.
    let first = start(&*store, &inbound(&alice, "old one", None, t0()), t0()).await;
    let mut commit = TurnCommit::new(&first);
    commit.replies.push(reply("re: old one", t0()));
    commit.changes = changes();
    let committed = store
        .commit_turn(&commit, &super::fixtures::settings(), t0())
        .await
        .expect("commit");
    let sent = DeliveryUpdate {
        target: OutboundRef::Id(committed.outbound[0]),
        status: DeliveryStatus::Delivered,
        provider_id: Some("SMold".into()),
        error: None,
        at: t0(),
    };
    assert!(store.update_delivery(&sent).await.expect("update"));
    turn(
        &*store,
        &alice,
        "old two",
        t0() + minutes(5),
        Changes::default(),
    )
    .await;
    // Carol's message waits for its turn; Bob talked recently.
    let waiting = inbound(&carol, "waiting", Some("SMwait"), t0());
    assert!(matches!(
        store
            .enqueue_turn(&waiting, &super::fixtures::settings(), t0())
            .await
            .expect("enqueue"),
        BeginOutcome::Waiting { .. }
    ));
    let now = t0() + Duration::days(2);
    turn(&*store, &bob, "recent", now - minutes(10), changes()).await;

    assert_eq!(
        store
            .delete_messages_older_than(None, 1, now)
            .await
            .expect("delete"),
        4,
        "Alice's two messages and their replies"
    );
    let export = |address| {
        let store = store.clone();
        async move {
            store
                .export_user(&address)
                .await
                .expect("export")
                .expect("the session stays")[0]
                .clone()
        }
    };
    let alice_now = export(alice.clone()).await;
    for gone in [
        "messages",
        "process_memories",
        "working_memory_snapshots",
        "inbound_messages",
    ] {
        assert_eq!(alice_now[gone], json!([]), "{gone}");
    }
    assert_eq!(alice_now["mental_process_state"], Value::Null);
    let replies: Vec<&str> = alice_now["outbound_messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|reply| reply["body"].as_str())
        .collect();
    assert_eq!(replies, ["re: old two"], "the pending reply stays");
    assert_eq!(alice_now["soul_memories"][0]["value"], json!("kept"));
    assert_eq!(alice_now["scheduled_events"][0]["key"], json!("k"));
    assert_eq!(
        alice_now["session"]["total_messages"],
        json!(4),
        "counts stay"
    );

    let carol_now = export(carol.clone()).await;
    assert_eq!(carol_now["inbound_messages"][0]["body"], json!("waiting"));
    let bob_now = export(bob.clone()).await;
    for kept in [
        "messages",
        "process_memories",
        "working_memory_snapshots",
        "inbound_messages",
        "outbound_messages",
    ] {
        assert!(
            bob_now[kept]
                .as_array()
                .is_some_and(|rows| !rows.is_empty()),
            "{kept}"
        );
    }
    assert_eq!(bob_now["mental_process_state"]["name"], json!("listening"));

    // Alice's next message starts from the initial process, her soul memories intact.
    let next = start(&*store, &inbound(&alice, "back", None, now), now).await;
    assert_eq!(next.process.name, "initial");
    assert!(next.snapshot.is_none());
    assert_eq!(next.soul_memories.get("name"), Some(&json!("kept")));
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
        .expect("exists")[0]
        .clone();
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

    assert_eq!(
        store.erase_user(&alice, t0()).await.expect("erase"),
        Erasure::Erased {
            opt_out_kept: false
        }
    );
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
