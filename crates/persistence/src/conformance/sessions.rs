//! Sessions and what a turn loads: a new session's seed defaults, reads of what is not there,
//! settings refused, soul and process memories, subprocess memories, history, snapshots and the
//! session timeout.

use std::collections::BTreeMap;

use chrono::Duration;
use serde_json::json;
use soul_engine::{Memory, Region, Role};
use uuid::Uuid;

use super::Harness;
use super::fixtures::{
    address, bodies, check_in, claim_one, commit, inbound, minutes, object, open, reply, set,
    settings, start, start_event, t0, turn, unclaimed,
};
use crate::{
    BeginOutcome, Changes, DeliveryStatus, DeliveryUpdate, MemoryChange, OutboundRef,
    ProcessMemoryChange, ProcessState, SessionId, StoreError, SubprocessCommit, SubprocessOutcome,
    TurnCommit,
};

/// A first message creates the session as the seed does and starts its turn.
pub async fn first_message_creates_session_with_seed_defaults(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let context = start(&*store, &inbound(&from, "hello", Some("SM1"), t0()), t0()).await;
    assert!(context.new_session);
    assert!(!context.session_reset && !context.resumed);
    assert_eq!(context.session.address, from);
    assert_eq!(context.session.persona, "aria");
    assert_eq!(context.session.session_number(), 1);
    assert_eq!(context.session.last_session_started_at(), Some(t0()));
    assert_eq!(context.session.first_contact_at, t0());
    assert_eq!(context.session.total_messages, 1);
    assert_eq!(context.process, ProcessState::new("initial", json!({})));
    assert_eq!(context.corrected_from, None);
    assert!(context.soul_memories.is_empty() && context.process_memories.is_empty());
    assert!(context.subprocess_memories.is_empty());
    assert!(context.snapshot.is_none());
    assert_eq!(context.inbound.body, "hello");
    assert_eq!(context.inbound.external_id.as_deref(), Some("SM1"));
    assert_eq!(bodies(&context.history), ["hello"]);
    let first = context.history.first().expect("one message");
    assert_eq!(
        (
            first.role,
            first.region.as_ref(),
            first.timestamp,
            first.id.0
        ),
        (Role::User, None, t0(), context.inbound.id),
    );
    assert!(context.lease.expires_at > t0());

    let mut outcome = TurnCommit::new(&context);
    outcome.replies.push(reply("hi there", t0()));
    commit(&*store, &outcome, t0()).await;
    let session = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert_eq!(session.total_messages, 2);
    assert_eq!(session.id, context.session.id);
    let later = start(
        &*store,
        &inbound(&from, "again", None, t0() + minutes(1)),
        t0() + minutes(1),
    )
    .await;
    assert!(!later.new_session);
    assert!(later.version() > context.version());
    assert_eq!(bodies(&later.history), ["hello", "hi there", "again"]);
}

/// Reading what is not there answers "nothing", never an error.
pub async fn no_row_is_not_an_error(harness: &dyn Harness) {
    let store = open(harness).await;
    let nobody = address(404);
    assert!(store.session(&nobody).await.expect("session").is_none());
    assert!(
        store
            .history(&nobody, None, 20)
            .await
            .expect("history")
            .is_empty()
    );
    assert!(store.export_user(&nobody).await.expect("export").is_none());
    assert_eq!(
        store.erase_user(&nobody, t0()).await.expect("erase"),
        crate::Erasure::Unknown
    );
    assert!(
        !store
            .set_opt_out(&nobody, true, t0())
            .await
            .expect("opt out")
    );
    assert_eq!(
        store
            .delete_messages_older_than(Some(&nobody), 1, t0())
            .await
            .expect("delete"),
        0
    );
    assert!(
        store
            .stalled_sessions(t0(), 10)
            .await
            .expect("stalled")
            .is_empty()
    );
    assert!(unclaimed(&*store, t0()).await.is_empty());
    assert_eq!(
        store
            .claim_session_outbox(SessionId(Uuid::new_v4()), Uuid::new_v4(), t0(), t0())
            .await
            .expect("outbox"),
        None
    );
    assert!(
        store
            .claim_due_events(t0(), 10, minutes(1))
            .await
            .expect("due")
            .is_empty()
    );
    let update = DeliveryUpdate {
        target: OutboundRef::ProviderId("SMnothing".into()),
        status: DeliveryStatus::Delivered,
        provider_id: None,
        error: None,
        at: t0(),
    };
    assert!(!store.update_delivery(&update).await.expect("delivery"));
    // Removing a key that does not exist is fine too.
    let from = address(1);
    let changes = Changes {
        soul_memory: vec![MemoryChange::Remove {
            key: "missing".into(),
        }],
        ..Changes::default()
    };
    turn(&*store, &from, "hi", t0(), changes).await;
}

/// Settings no store can honour are refused before anything is stored.
pub async fn invalid_settings_change_nothing(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let mut broken = settings();
    broken.lease_for = Duration::zero();
    let refused = store
        .begin_turn(&inbound(&from, "a", None, t0()), &broken, t0())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    assert!(!refused.is_err_and(|error| error.is_retryable()));
    let mut unclaimed_replies = settings();
    unclaimed_replies.reply_claim_for = Duration::zero();
    let refused = store
        .begin_turn(&inbound(&from, "a", None, t0()), &unclaimed_replies, t0())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let mut ambiguous = settings();
    ambiguous.subprocesses.push("listening".to_owned());
    let refused = store
        .begin_turn(&inbound(&from, "a", None, t0()), &ambiguous, t0())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    assert!(store.session(&from).await.expect("session").is_none());
    let context = start(&*store, &inbound(&from, "a", None, t0()), t0()).await;
    let mut outcome = TurnCommit::new(&context);
    outcome.replies.push(reply("re: a", t0()));
    let refused = store.commit_turn(&outcome, &broken, t0()).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    commit(&*store, &outcome, t0()).await;
    assert_eq!(
        bodies(&store.history(&from, None, 0).await.expect("history")),
        ["a", "re: a"]
    );
}

/// `soul_memories` is unique on (session, key): a later set replaces, the last change in one
/// commit wins, a removal deletes, and other sessions are untouched.
pub async fn soul_memory_upserts_on_session_and_key(harness: &dyn Harness) {
    let store = open(harness).await;
    let (alice, bob) = (address(1), address(2));
    let changes = Changes {
        soul_memory: vec![
            set("name", json!("Al")),
            set("name", json!("Alice")),
            set("mood", json!(3)),
        ],
        ..Changes::default()
    };
    turn(&*store, &alice, "one", t0(), changes).await;
    turn(
        &*store,
        &bob,
        "one",
        t0(),
        Changes {
            soul_memory: vec![set("name", json!("Bob"))],
            ..Changes::default()
        },
    )
    .await;
    let changes = Changes {
        soul_memory: vec![
            set("mood", json!({"level": 4})),
            MemoryChange::Remove { key: "name".into() },
            set("pets", json!(["cat"])),
        ],
        ..Changes::default()
    };
    let second = turn(&*store, &alice, "two", t0() + minutes(1), changes).await;
    assert_eq!(second.soul_memories.get("name"), Some(&json!("Alice")));
    assert_eq!(second.soul_memories.get("mood"), Some(&json!(3)));
    let third = start(
        &*store,
        &inbound(&alice, "three", None, t0() + minutes(2)),
        t0() + minutes(2),
    )
    .await;
    let expected: serde_json::Map<_, _> = [
        ("mood".to_owned(), json!({"level": 4})),
        ("pets".to_owned(), json!(["cat"])),
    ]
    .into_iter()
    .collect();
    assert_eq!(third.soul_memories, expected);
    let bob_turn = start(
        &*store,
        &inbound(&bob, "two", None, t0() + minutes(2)),
        t0() + minutes(2),
    )
    .await;
    assert_eq!(bob_turn.soul_memories.get("name"), Some(&json!("Bob")));
    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();
    assert_eq!(export["soul_memories"].as_array().map(Vec::len), Some(2));
}

/// `process_memories` is unique on (session, process, key); a turn loads only its process's.
pub async fn process_memory_upserts_on_session_process_and_key(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let memory = |process: &str, key: &str, value| ProcessMemoryChange {
        process: process.into(),
        change: set(key, value),
    };
    let changes = Changes {
        process_memory: vec![
            memory("initial", "topic", json!("sleep")),
            memory("listening", "topic", json!("work")),
            memory("initial", "topic", json!("dreams")),
        ],
        ..Changes::default()
    };
    turn(&*store, &from, "one", t0(), changes).await;
    let changes = Changes {
        process_memory: vec![memory("initial", "turns", json!(2))],
        process_state: Some(ProcessState {
            invocation_count: 3,
            previous: Some("initial".into()),
            ..ProcessState::new("listening", json!({"depth": 1}))
        }),
        ..Changes::default()
    };
    let second = turn(&*store, &from, "two", t0() + minutes(1), changes).await;
    assert_eq!(second.process.name, "initial");
    assert_eq!(second.process_memories.get("topic"), Some(&json!("dreams")));
    assert_eq!(second.process_memories.len(), 1);
    let third = start(
        &*store,
        &inbound(&from, "three", None, t0() + minutes(2)),
        t0() + minutes(2),
    )
    .await;
    let stored = ProcessState {
        invocation_count: 3,
        previous: Some("initial".into()),
        ..ProcessState::new("listening", json!({"depth": 1}))
    };
    assert_eq!(third.process, stored);
    let expected: serde_json::Map<_, _> =
        [("topic".to_owned(), json!("work"))].into_iter().collect();
    assert_eq!(third.process_memories, expected);
    let mut outcome = TurnCommit::new(&third);
    outcome.changes.process_memory = vec![ProcessMemoryChange {
        process: "listening".into(),
        change: MemoryChange::Remove {
            key: "topic".into(),
        },
    }];
    commit(&*store, &outcome, t0() + minutes(2)).await;
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();
    let rows = export["process_memories"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let keys: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row["process"].to_string(), row["key"].to_string()))
        .collect();
    assert_eq!(
        keys,
        [
            ("\"initial\"".to_owned(), "\"topic\"".to_owned()),
            ("\"initial\"".to_owned(), "\"turns\"".to_owned())
        ]
    );
}

/// A turn also loads the memories of the subprocesses named in the settings, however it
/// begins (a message, a commit handing over the next one, a due event): subprocesses run after
/// every turn, whatever the current process. Other processes' memories stay out, a subprocess
/// without memory is absent, and other sessions' memories are not seen.
pub async fn subprocess_memories_are_loaded_by_every_begin(harness: &dyn Harness) {
    let store = open(harness).await;
    let other_worker = open(harness).await;
    let from = address(1);
    let memory = |process: &str, change: MemoryChange| ProcessMemoryChange {
        process: process.into(),
        change,
    };
    let changes = Changes {
        process_memory: vec![memory("initial", set("mood", json!("calm")))],
        ..Changes::default()
    };
    let first = turn(&*store, &from, "one", t0(), changes).await;
    assert!(first.subprocess_memories.is_empty());
    // As the driver stores a turn's subprocesses: after its commit, at its version.
    let subprocesses = SubprocessCommit {
        session_id: first.session.id,
        record: Default::default(),
        version: first.version(),
        inbound_id: first.inbound.id,
        changes: Changes {
            process_memory: vec![
                memory("tally", set("turns", json!(1))),
                memory("notes", set("seen", json!(["one"]))),
                memory("listening", set("topic", json!("work"))),
                memory("stranger", set("x", json!(1))),
            ],
            schedule: vec![check_in("nudge", t0() + minutes(30))],
            ..Changes::default()
        },
    };
    let applied = store
        .commit_subprocess(&subprocesses, &settings(), t0())
        .await
        .expect("subprocess");
    assert_eq!(applied, SubprocessOutcome::Applied);

    let at = t0() + minutes(1);
    let second = start(&*store, &inbound(&from, "two", None, at), at).await;
    let both: BTreeMap<_, _> = [
        ("notes".to_owned(), object(json!({"seen": ["one"]}))),
        ("tally".to_owned(), object(json!({"turns": 1}))),
    ]
    .into_iter()
    .collect();
    assert_eq!(second.subprocess_memories, both);
    assert_eq!(second.process_memories, object(json!({"mood": "calm"})));

    // The commit that hands over a queued message loads them for it, as changed by the commit.
    let queued = other_worker
        .begin_turn(&inbound(&from, "three", None, at), &settings(), at)
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");
    let mut outcome = TurnCommit::new(&second);
    outcome.changes.process_memory = vec![
        memory("tally", set("turns", json!(2))),
        memory(
            "notes",
            MemoryChange::Remove {
                key: "seen".to_owned(),
            },
        ),
    ];
    let third = store
        .commit_turn(&outcome, &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("three is next");
    let tally: BTreeMap<_, _> = [("tally".to_owned(), object(json!({"turns": 2})))]
        .into_iter()
        .collect();
    assert_eq!(third.subprocess_memories, tally);
    commit(&*store, &TurnCommit::new(&third), at).await;

    // A due event's turn loads them too.
    let due = t0() + minutes(30);
    let event = claim_one(&*store, due).await;
    let event_turn = start_event(&*store, &event, due).await;
    assert_eq!(event_turn.subprocess_memories, tally);
    commit(&*store, &TurnCommit::new(&event_turn), due).await;

    let stranger = turn(&*store, &address(2), "hello", due, Changes::default()).await;
    assert!(stranger.subprocess_memories.is_empty());
    assert!(stranger.process_memories.is_empty());
}

/// History: the latest `limit` messages, oldest first, optionally of one region.
pub async fn history_is_latest_first_limited_and_regioned(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let summary = Region::summary();
    for i in 0..12 {
        let at = t0() + minutes(i);
        let changes = if i % 4 == 3 {
            Changes {
                memories: vec![
                    Memory::new(Role::System, format!("summary {i}"), at)
                        .in_region(summary.clone()),
                ],
                ..Changes::default()
            }
        } else {
            Changes::default()
        };
        turn(&*store, &from, &format!("m{i}"), at, changes).await;
    }
    // 12 user messages, 12 replies, 3 summaries = 27, in commit order.
    let all = store.history(&from, None, 0).await.expect("history");
    assert_eq!(all.len(), 27);
    assert_eq!(bodies(&all[..5]), ["m0", "re: m0", "m1", "re: m1", "m2"]);
    assert_eq!(bodies(&all[6..9]), ["m3", "summary 3", "re: m3"]);
    let latest = store.history(&from, None, 4).await.expect("history");
    assert_eq!(bodies(&latest), ["re: m10", "m11", "summary 11", "re: m11"]);
    let summaries = store
        .history(&from, Some("summary"), 0)
        .await
        .expect("history");
    assert_eq!(bodies(&summaries), ["summary 3", "summary 7", "summary 11"]);
    assert!(
        summaries
            .iter()
            .all(|m| m.region.as_ref() == Some(&summary) && m.role == Role::System)
    );
    let conversation = store
        .history(&from, Some("default"), 3)
        .await
        .expect("history");
    assert_eq!(bodies(&conversation), ["re: m10", "m11", "re: m11"]);
    assert!(conversation.iter().all(|m| m.region.is_none()));

    // The turn's own history follows the settings (the seed's default: 20 of every region).
    let at = t0() + minutes(30);
    let context = start(&*store, &inbound(&from, "m12", None, at), at).await;
    assert_eq!(context.history.len(), 20);
    assert_eq!(
        context.history.last().map(|m| m.content.as_str()),
        Some("m12")
    );
    let mut outcome = TurnCommit::new(&context);
    outcome.replies.push(reply("re: m12", at));
    commit(&*store, &outcome, at).await;
    let mut only_summaries = settings();
    only_summaries.history_region = Some("summary".into());
    only_summaries.history_limit = 2;
    let at = t0() + minutes(31);
    let outcome = store
        .begin_turn(&inbound(&from, "m13", None, at), &only_summaries, at)
        .await
        .expect("begin");
    let BeginOutcome::Started(context) = outcome else {
        panic!("expected a started turn")
    };
    assert_eq!(bodies(&context.history), ["summary 7", "summary 11"]);
}

/// A turn gets the history only when it has no snapshot to start from (with one, the working
/// memory already holds the conversation); a stored snapshot that no longer parses is ignored
/// and the history loaded instead, so the turn still sees the whole conversation.
pub async fn history_comes_only_without_a_readable_snapshot(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let snapshot =
        soul_engine::WorkingMemory::new("aria").with_memory(Memory::new(Role::User, "one", t0()));
    let changes = Changes {
        snapshot: Some(snapshot),
        ..Changes::default()
    };
    let first = turn(&*store, &from, "one", t0(), changes).await;
    assert!(first.snapshot.is_none());
    assert_eq!(bodies(&first.history), ["one"]);

    let second = turn(&*store, &from, "two", t0() + minutes(1), Changes::default()).await;
    assert_eq!(
        second
            .snapshot
            .as_ref()
            .map(soul_engine::WorkingMemory::len),
        Some(1)
    );
    assert!(second.history.is_empty(), "{:?}", second.history);

    harness
        .overwrite_snapshot(
            &from,
            r#"{"version": 99, "soul_name": "aria", "region_order": [], "memories": []}"#,
        )
        .await
        .expect("overwrite the snapshot");
    let at = t0() + minutes(2);
    let third = start(&*store, &inbound(&from, "three", None, at), at).await;
    assert!(third.snapshot.is_none());
    assert_eq!(
        bodies(&third.history),
        ["one", "re: one", "two", "re: two", "three"]
    );

    // The same for the queued turn a commit hands over.
    let queued = store
        .begin_turn(&inbound(&from, "four", None, at), &settings(), at)
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");
    let mut outcome = TurnCommit::new(&third);
    outcome.replies.push(reply("re: three", at));
    let committed = store
        .commit_turn(&outcome, &settings(), at)
        .await
        .expect("commit");
    let fourth = committed.next.expect("four is next");
    assert!(fourth.snapshot.is_none());
    assert_eq!(
        bodies(&fourth.history),
        [
            "one",
            "re: one",
            "two",
            "re: two",
            "three",
            "re: three",
            "four"
        ]
    );
}

/// The seed's timeout: a user message an hour or more after the previous one starts a new
/// session number and clears process memories, process state and snapshot; soul memories stay.
pub async fn timeout_starts_new_session_and_clears_ephemeral_state(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let snapshot =
        soul_engine::WorkingMemory::new("aria").with_memory(Memory::new(Role::User, "hello", t0()));
    let changes = Changes {
        soul_memory: vec![set("name", json!("Sam"))],
        process_memory: vec![
            ProcessMemoryChange {
                process: "listening".into(),
                change: set("topic", json!("x")),
            },
            ProcessMemoryChange {
                process: "tally".into(),
                change: set("turns", json!(1)),
            },
        ],
        process_state: Some(ProcessState::new("listening", json!({}))),
        snapshot: Some(snapshot),
        ..Changes::default()
    };
    turn(&*store, &from, "one", t0(), changes).await;

    let within = t0() + minutes(59);
    let second = turn(&*store, &from, "two", within, Changes::default()).await;
    assert!(!second.session_reset);
    assert_eq!(second.session.session_number(), 1);
    assert_eq!(second.process.name, "listening");
    assert_eq!(second.process_memories.get("topic"), Some(&json!("x")));
    assert_eq!(
        second.subprocess_memories.get("tally"),
        Some(&object(json!({"turns": 1})))
    );
    assert_eq!(
        second
            .snapshot
            .as_ref()
            .map(soul_engine::WorkingMemory::len),
        Some(1)
    );

    // Measured from the last *user* message (59 min), not from the reply.
    let after = within + minutes(60);
    let third = start(&*store, &inbound(&from, "three", None, after), after).await;
    assert!(third.session_reset);
    assert_eq!(third.session.session_number(), 2);
    assert_eq!(third.session.last_session_started_at(), Some(after));
    assert_eq!(third.process, ProcessState::new("initial", json!({})));
    assert!(third.process_memories.is_empty());
    assert!(third.subprocess_memories.is_empty());
    assert!(third.snapshot.is_none());
    assert_eq!(third.soul_memories.get("name"), Some(&json!("Sam")));
    // The conversation itself is kept.
    assert_eq!(third.history.len(), 5);
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();
    assert_eq!(export["process_memories"], json!([]));
    assert_eq!(export["mental_process_state"], serde_json::Value::Null);
}
