//! The conformance suite: every behaviour of the turn contract, written once and run against
//! every backend.
//!
//! A backend's test file implements [`Harness`] (how to open another store on the test's
//! database) and invokes [`conformance_suite!`](crate::conformance_suite), which makes one
//! `#[tokio::test]` per function of this module. The functions panic on a failed expectation.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use soul_engine::{Memory, Region, Role};
use uuid::Uuid;

use crate::{
    Address, BeginOutcome, Changes, DeliveryStatus, DeliveryUpdate, EventOutcome, Inbound,
    InboundKind, MemoryChange, NewEvent, OutboundMessage, OutboundRef, OutboxAtCommit,
    ProcessMemoryChange, ProcessState, Processes, ScheduledEvent, SessionId, Store, StoreError,
    StoreFuture, SubprocessCommit, SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};

/// One test's database, fresh and empty.
pub trait Harness: Send + Sync {
    /// Opens a store on the test's database. Every call opens a new one (its own connections),
    /// as another gateway process would.
    fn open(&self) -> StoreFuture<'_, Arc<dyn Store>>;

    /// Overwrites the stored working-memory snapshot of `address`'s session with `json`, as a
    /// release with another snapshot format would have left it (through a store only readable
    /// snapshots are stored).
    fn overwrite_snapshot<'a>(&'a self, address: &'a Address, json: &'a str)
    -> StoreFuture<'a, ()>;
}

/// Instantiates every conformance test for a backend: `conformance_suite!(harness_expr)`, where
/// the expression evaluates (awaited) to a [`Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_suite!(@tests $harness;
            first_message_creates_session_with_seed_defaults,
            no_row_is_not_an_error,
            invalid_settings_change_nothing,
            soul_memory_upserts_on_session_and_key,
            process_memory_upserts_on_session_process_and_key,
            subprocess_memories_are_loaded_by_every_begin,
            history_is_latest_first_limited_and_regioned,
            history_comes_only_without_a_readable_snapshot,
            timeout_starts_new_session_and_clears_ephemeral_state,
            repeated_external_id_is_a_duplicate,
            busy_session_queues_and_commit_hands_over_next,
            enqueued_message_waits_for_a_resume,
            enqueued_message_keeps_its_place_before_a_later_begin,
            unregistered_process_state_is_corrected,
            expired_lease_is_taken_over,
            turn_attempts_count_the_starts_of_each_message,
            renewed_lease_is_not_taken_over,
            subprocess_commit_is_refused_after_newer_turn,
            delivery_status_only_moves_forward,
            delivery_updates_together_apply_in_order_each_as_alone,
            session_outbox_holds_its_own_pending_replies_and_the_opt_out,
            commit_tells_the_sender_of_earlier_pending_replies_and_the_opt_out,
            a_commit_claims_its_replies_for_their_sender,
            a_claimed_reply_is_not_handed_out_again_until_its_claim_expires,
            concurrent_claims_of_stale_replies_are_disjoint,
            the_session_outbox_claims_earlier_replies_whose_claim_expired,
            opt_out_is_recorded,
            a_keyword_changes_the_opt_out_with_its_message_and_a_replay_changes_nothing,
            due_events_are_claimed_and_completed,
            event_turn_leaves_conversation_count_and_timeout_alone,
            event_waits_its_turn_in_session_order,
            event_fired_twice_runs_one_turn,
            event_for_opted_out_person_runs_no_turn,
            old_messages_are_deleted,
            export_and_erase_one_user,
            concurrent_first_messages_make_one_session,
            many_senders_many_workers_exactly_once_in_order,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness.await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

fn settings() -> TurnSettings {
    TurnSettings {
        subprocesses: vec!["tally".to_owned(), "notes".to_owned()],
        ..TurnSettings::new(
            "aria",
            Processes::new("initial", ["initial", "listening", "closing"]),
        )
    }
}

fn address(n: usize) -> Address {
    Address::new(format!("+1555{n:07}"))
}

fn inbound(from: &Address, body: &str, sid: Option<&str>, at: DateTime<Utc>) -> Inbound {
    Inbound {
        from: from.clone(),
        body: body.to_owned(),
        external_id: sid.map(str::to_owned),
        received_at: at,
        opt_out: None,
    }
}

async fn open(harness: &dyn Harness) -> Arc<dyn Store> {
    harness.open().await.expect("open store")
}

async fn start(store: &dyn Store, message: &Inbound, now: DateTime<Utc>) -> Box<TurnContext> {
    match store
        .begin_turn(message, &settings(), now)
        .await
        .expect("begin")
    {
        BeginOutcome::Started(turn) => turn,
        other => panic!("expected a started turn, got {other:?}"),
    }
}

fn reply(text: &str, at: DateTime<Utc>) -> Memory {
    Memory::new(Role::Assistant, text, at)
}

/// The pending replies whose claim expired by `at`, oldest first, left claimable: a claim that
/// ends when it is taken.
async fn unclaimed(store: &dyn Store, at: DateTime<Utc>) -> Vec<OutboundMessage> {
    store
        .claim_pending_deliveries(at, at, 100)
        .await
        .expect("claim pending replies")
}

/// Commits `commit`, expecting no next turn.
async fn commit(store: &dyn Store, commit: &TurnCommit, now: DateTime<Utc>) {
    let outcome = store
        .commit_turn(commit, &settings(), now)
        .await
        .expect("commit");
    assert!(outcome.next.is_none(), "nothing was queued");
}

/// One full turn with one reply and the given changes.
async fn turn(
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

fn set(key: &str, value: serde_json::Value) -> MemoryChange {
    MemoryChange::Set {
        key: key.to_owned(),
        value,
    }
}

fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn bodies(history: &[Memory]) -> Vec<String> {
    history
        .iter()
        .map(|memory| memory.content.clone())
        .collect()
}

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
    assert!(!store.erase_user(&nobody).await.expect("erase"));
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
        .expect("exists");
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
        .expect("exists");
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
        version: first.version(),
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
        .expect("exists");
    assert_eq!(export["process_memories"], json!([]));
    assert_eq!(export["mental_process_state"], serde_json::Value::Null);
}

/// A repeated external id is answered as a duplicate and changes nothing.
pub async fn repeated_external_id_is_a_duplicate(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let message = inbound(&from, "hello", Some("SM1"), t0());
    let context = start(&*store, &message, t0()).await;
    let again = store
        .begin_turn(&message, &settings(), t0())
        .await
        .expect("begin");
    let BeginOutcome::Duplicate { inbound_id } = again else {
        panic!("expected duplicate: {again:?}")
    };
    assert_eq!(inbound_id, context.inbound.id);
    let mut outcome = TurnCommit::new(&context);
    outcome.replies.push(reply("hi", t0()));
    commit(&*store, &outcome, t0()).await;
    let later = store
        .begin_turn(&message, &settings(), t0() + minutes(5))
        .await
        .expect("begin");
    assert!(matches!(later, BeginOutcome::Duplicate { .. }), "{later:?}");
    // The same id from another number is another message.
    let other = inbound(&address(2), "hello", Some("SM1"), t0());
    start(&*store, &other, t0()).await;
    let history = store.history(&from, None, 0).await.expect("history");
    assert_eq!(bodies(&history), ["hello", "hi"]);
    let session = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert_eq!(session.total_messages, 2);
}

/// `enqueue_turn` stores a message without starting it: no lease, no user message yet, the
/// session stalled until a resume starts it (as new, for a first message); a message enqueued
/// while that turn runs is queued behind it, and a repeated one is a duplicate.
pub async fn enqueued_message_waits_for_a_resume(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let a = inbound(&from, "a", Some("SMa"), t0());
    let waiting = store
        .enqueue_turn(&a, &settings(), t0())
        .await
        .expect("enqueue");
    let BeginOutcome::Waiting {
        inbound_id,
        session,
    } = waiting
    else {
        panic!("expected a waiting message, got {waiting:?}");
    };
    let stored = store
        .session(&from)
        .await
        .expect("session")
        .expect("exists");
    assert_eq!(stored.id, session);
    assert_eq!((stored.version, stored.total_messages), (0, 0));
    assert!(
        store
            .history(&from, None, 0)
            .await
            .expect("history")
            .is_empty()
    );
    assert_eq!(
        store.stalled_sessions(t0(), 10).await.expect("stalled"),
        [session],
        "nobody holds it: a sweeper finds it at once"
    );
    let again = store
        .enqueue_turn(&a, &settings(), t0())
        .await
        .expect("enqueue");
    assert!(
        matches!(again, BeginOutcome::Duplicate { inbound_id: id } if id == inbound_id),
        "{again:?}"
    );

    let first = store
        .resume_turn(session, &settings(), t0())
        .await
        .expect("resume")
        .expect("started");
    assert_eq!(first.inbound.id, inbound_id);
    assert!(first.new_session && !first.resumed);
    assert_eq!(bodies(&first.history), ["a"]);
    assert_eq!(first.session.total_messages, 1);
    assert!(
        store
            .resume_turn(session, &settings(), t0())
            .await
            .expect("resume")
            .is_none(),
        "started once"
    );
    let b = store
        .enqueue_turn(&inbound(&from, "b", Some("SMb"), t0()), &settings(), t0())
        .await
        .expect("enqueue");
    assert!(matches!(b, BeginOutcome::Queued { .. }), "{b:?}");

    let mut outcome = TurnCommit::new(&first);
    outcome.replies.push(reply("re: a", t0()));
    let second = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit")
        .next
        .expect("b is next");
    assert_eq!(second.inbound.body, "b");
    assert!(!second.new_session);
    commit(&*store, &TurnCommit::new(&second), t0()).await;
    assert!(
        store
            .stalled_sessions(t0(), 10)
            .await
            .expect("stalled")
            .is_empty()
    );
}

/// A begin that finds an enqueued message waiting starts that one first: per-session order
/// does not depend on which path stored a message.
pub async fn enqueued_message_keeps_its_place_before_a_later_begin(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let waiting = store
        .enqueue_turn(&inbound(&from, "a", Some("SMa"), t0()), &settings(), t0())
        .await
        .expect("enqueue");
    assert!(
        matches!(waiting, BeginOutcome::Waiting { .. }),
        "{waiting:?}"
    );
    let first = start(
        &*store,
        &inbound(&from, "b", Some("SMb"), t0() + Duration::seconds(1)),
        t0() + Duration::seconds(1),
    )
    .await;
    assert_eq!(first.inbound.body, "a");
    assert!(first.new_session, "the session's first turn");
    let second = store
        .commit_turn(&TurnCommit::new(&first), &settings(), t0())
        .await
        .expect("commit")
        .next
        .expect("b is next");
    assert_eq!(second.inbound.body, "b");
}

/// While a turn runs, later messages queue; the commit starts the next one for the same worker.
pub async fn busy_session_queues_and_commit_hands_over_next(harness: &dyn Harness) {
    let store = open(harness).await;
    let other_worker = open(harness).await;
    let from = address(1);
    let first = start(&*store, &inbound(&from, "a", Some("SMa"), t0()), t0()).await;
    let b = other_worker
        .begin_turn(
            &inbound(&from, "b", Some("SMb"), t0() + Duration::seconds(1)),
            &settings(),
            t0(),
        )
        .await
        .expect("begin");
    assert!(matches!(b, BeginOutcome::Queued { .. }), "{b:?}");
    let c = other_worker
        .begin_turn(
            &inbound(&from, "c", Some("SMc"), t0() + Duration::seconds(2)),
            &settings(),
            t0(),
        )
        .await
        .expect("begin");
    assert!(matches!(c, BeginOutcome::Queued { .. }), "{c:?}");

    let mut outcome = TurnCommit::new(&first);
    outcome.replies.push(reply("re: a", t0()));
    let committed = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit");
    assert_eq!(committed.outbound, [outcome.replies[0].id.0]);
    let second = committed.next.expect("b is next");
    assert_eq!(second.inbound.body, "b");
    assert_ne!(second.lease.token, first.lease.token);
    assert_eq!(bodies(&second.history), ["a", "re: a", "b"]);
    // The old token is spent.
    assert!(matches!(
        store.commit_turn(&outcome, &settings(), t0()).await,
        Err(StoreError::LeaseLost)
    ));
    let mut outcome = TurnCommit::new(&second);
    outcome.replies.push(reply("re: b", t0()));
    let third = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit")
        .next
        .expect("c");
    assert_eq!(third.inbound.body, "c");
    let mut outcome = TurnCommit::new(&third);
    outcome.replies.push(reply("re: c", t0()));
    commit(&*store, &outcome, t0()).await;
    // Released: the next message starts at once.
    let d = start(
        &*other_worker,
        &inbound(&from, "d", None, t0() + minutes(1)),
        t0() + minutes(1),
    )
    .await;
    assert_eq!(
        bodies(&d.history),
        ["a", "re: a", "b", "re: b", "c", "re: c", "d"]
    );
}

/// A stored process name that is no longer registered is corrected to the initial process, in
/// the turn and in the database.
pub async fn unregistered_process_state_is_corrected(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let mut old = settings();
    old.processes = Processes::new("initial", ["initial", "retired"]);
    let context = match store
        .begin_turn(&inbound(&from, "a", None, t0()), &old, t0())
        .await
        .expect("begin")
    {
        BeginOutcome::Started(context) => context,
        other => panic!("{other:?}"),
    };
    let mut outcome = TurnCommit::new(&context);
    outcome.changes.process_state = Some(ProcessState::new("retired", json!({"step": 2})));
    store
        .commit_turn(&outcome, &old, t0())
        .await
        .expect("commit");

    let at = t0() + minutes(1);
    let corrected = start(&*store, &inbound(&from, "b", None, at), at).await;
    assert_eq!(corrected.corrected_from.as_deref(), Some("retired"));
    assert_eq!(
        corrected.process,
        ProcessState::new("initial", json!({"step": 2}))
    );
    // Saving an unregistered name stores the initial process instead.
    let mut outcome = TurnCommit::new(&corrected);
    outcome.changes.process_state = Some(ProcessState::new("bogus", json!({})));
    commit(&*store, &outcome, at).await;
    let at = t0() + minutes(2);
    let again = start(&*store, &inbound(&from, "c", None, at), at).await;
    assert_eq!(again.corrected_from, None);
    assert_eq!(again.process.name, "initial");
}

/// A crashed worker's lease expires; the next begin (or a sweeper) takes the session over and
/// re-runs its turn before the queued messages, and the dead worker's commit is refused.
pub async fn expired_lease_is_taken_over(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let lease = settings().lease_for;
    let crashed = start(&*store, &inbound(&from, "a", Some("SMa"), t0()), t0()).await;
    let queued = store
        .begin_turn(
            &inbound(&from, "b", Some("SMb"), t0()),
            &settings(),
            t0() + Duration::seconds(30),
        )
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }));
    // Not yet expired: nothing to take over.
    assert!(
        store
            .stalled_sessions(t0() + lease - Duration::seconds(1), 10)
            .await
            .expect("stalled")
            .is_empty()
    );

    let later = t0() + lease + Duration::seconds(1);
    let rescued = start(&*store, &inbound(&from, "c", Some("SMc"), later), later).await;
    assert!(rescued.resumed);
    assert_eq!(rescued.inbound.body, "a");
    assert_eq!(rescued.inbound.id, crashed.inbound.id);
    assert_eq!(
        bodies(&rescued.history),
        ["a"],
        "the re-run does not store the message twice"
    );
    let mut stale = TurnCommit::new(&crashed);
    stale.replies.push(reply("late", later));
    assert!(matches!(
        store.commit_turn(&stale, &settings(), later).await,
        Err(StoreError::LeaseLost)
    ));

    let mut outcome = TurnCommit::new(&rescued);
    outcome.replies.push(reply("re: a", later));
    let b = store
        .commit_turn(&outcome, &settings(), later)
        .await
        .expect("commit")
        .next
        .expect("b");
    assert_eq!(b.inbound.body, "b");
    let mut outcome = TurnCommit::new(&b);
    outcome.replies.push(reply("re: b", later));
    let c = store
        .commit_turn(&outcome, &settings(), later)
        .await
        .expect("commit")
        .next
        .expect("c");
    assert_eq!(c.inbound.body, "c");
    let mut outcome = TurnCommit::new(&c);
    outcome.replies.push(reply("re: c", later));
    commit(&*store, &outcome, later).await;
    let history = store.history(&from, None, 0).await.expect("history");
    assert_eq!(bodies(&history), ["a", "re: a", "b", "re: b", "c", "re: c"]);

    // With no new message, a sweeper finds the session and resumes it.
    let quiet = address(2);
    let dead = start(&*store, &inbound(&quiet, "x", None, t0()), t0()).await;
    assert!(
        store
            .resume_turn(dead.session.id, &settings(), t0())
            .await
            .expect("resume")
            .is_none()
    );
    let stalled = store.stalled_sessions(later, 10).await.expect("stalled");
    assert_eq!(stalled, [dead.session.id]);
    let resumed = store
        .resume_turn(dead.session.id, &settings(), later)
        .await
        .expect("resume")
        .expect("turn");
    assert!(resumed.resumed);
    assert_eq!(resumed.inbound.body, "x");
    assert!(
        store
            .stalled_sessions(later, 10)
            .await
            .expect("stalled")
            .is_empty()
    );
    commit(&*store, &TurnCommit::new(&resumed), later).await;
    assert!(
        store
            .resume_turn(dead.session.id, &settings(), later)
            .await
            .expect("resume")
            .is_none()
    );
}

/// A message's turn counts its starts: 1 for a fresh message, for one a commit hands over and for
/// one enqueued and then resumed; one more at each re-start after its worker stopped, by a
/// sweeper's resume or by a begin, whichever store (gateway) takes it over.
pub async fn turn_attempts_count_the_starts_of_each_message(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let expiry = settings().lease_for + Duration::seconds(1);
    let first = start(&*store, &inbound(&from, "a", Some("SMa"), t0()), t0()).await;
    assert_eq!((first.resumed, first.attempt), (false, 1));
    let queued = store
        .begin_turn(&inbound(&from, "b", Some("SMb"), t0()), &settings(), t0())
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");

    // Its worker stops each time; the lease expires and the turn is taken over.
    let mut at = t0() + expiry;
    let second = store
        .resume_turn(first.session.id, &settings(), at)
        .await
        .expect("resume")
        .expect("taken over");
    assert_eq!(
        (second.inbound.id, second.resumed, second.attempt),
        (first.inbound.id, true, 2)
    );
    at += expiry;
    let third = start(&*store, &inbound(&from, "c", Some("SMc"), at), at).await;
    assert_eq!(
        (third.inbound.id, third.resumed, third.attempt),
        (first.inbound.id, true, 3)
    );
    at += expiry;
    let other = open(harness).await;
    let fourth = other
        .resume_turn(first.session.id, &settings(), at)
        .await
        .expect("resume")
        .expect("taken over");
    assert_eq!((fourth.inbound.id, fourth.attempt), (first.inbound.id, 4));

    // The messages that waited behind it start once each.
    let b = other
        .commit_turn(&TurnCommit::new(&fourth), &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("b");
    assert_eq!(
        (b.inbound.body.as_str(), b.resumed, b.attempt),
        ("b", false, 1)
    );
    let c = other
        .commit_turn(&TurnCommit::new(&b), &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("c");
    assert_eq!(
        (c.inbound.body.as_str(), c.resumed, c.attempt),
        ("c", false, 1)
    );
    commit(&*other, &TurnCommit::new(&c), at).await;

    // A message only enqueued, then resumed, starts for the first time.
    let quiet = address(2);
    let waiting = store
        .enqueue_turn(&inbound(&quiet, "x", None, at), &settings(), at)
        .await
        .expect("enqueue");
    let BeginOutcome::Waiting { session, .. } = waiting else {
        panic!("expected a waiting message, got {waiting:?}");
    };
    let x = store
        .resume_turn(session, &settings(), at)
        .await
        .expect("resume")
        .expect("started");
    assert_eq!(
        (x.inbound.body.as_str(), x.resumed, x.attempt),
        ("x", false, 1)
    );
}

/// A renewed lease keeps a long turn from being taken over; a lost one cannot be renewed.
pub async fn renewed_lease_is_not_taken_over(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let lease_for = settings().lease_for;
    let long = start(&*store, &inbound(&from, "a", None, t0()), t0()).await;
    let halfway = t0() + lease_for / 2;
    let renewed = store
        .renew_lease(long.session.id, long.lease, lease_for, halfway)
        .await
        .expect("renew");
    assert_eq!(renewed.token, long.lease.token);
    assert_eq!(renewed.expires_at, halfway + lease_for);
    // Past the first expiry, within the renewed one: the next message queues.
    let later = t0() + lease_for + Duration::seconds(1);
    let queued = store
        .begin_turn(&inbound(&from, "b", None, later), &settings(), later)
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");
    assert!(
        store
            .stalled_sessions(later, 10)
            .await
            .expect("stalled")
            .is_empty()
    );
    // Once it expires, it is taken over and can no longer be renewed.
    let expired = halfway + lease_for + Duration::seconds(1);
    let rescued = store
        .resume_turn(long.session.id, &settings(), expired)
        .await
        .expect("resume")
        .expect("taken over");
    assert!(rescued.resumed);
    let refused = store
        .renew_lease(long.session.id, long.lease, lease_for, expired)
        .await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
}

/// Subprocess changes apply while the session version is the turn's, and are refused once a
/// newer turn has begun.
pub async fn subprocess_commit_is_refused_after_newer_turn(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let first = turn(&*store, &from, "a", t0(), Changes::default()).await;
    let summary = Changes {
        soul_memory: vec![set("summary", json!("talked about a"))],
        ..Changes::default()
    };
    let subprocess = SubprocessCommit {
        session_id: first.session.id,
        version: first.version(),
        changes: summary,
    };
    let applied = store
        .commit_subprocess(&subprocess, &settings(), t0())
        .await
        .expect("subprocess");
    assert_eq!(applied, SubprocessOutcome::Applied);
    let second = start(
        &*store,
        &inbound(&from, "b", None, t0() + minutes(1)),
        t0() + minutes(1),
    )
    .await;
    assert_eq!(
        second.soul_memories.get("summary"),
        Some(&json!("talked about a"))
    );
    let late = SubprocessCommit {
        changes: Changes {
            soul_memory: vec![set("summary", json!("stale"))],
            ..Changes::default()
        },
        ..subprocess
    };
    let refused = store
        .commit_subprocess(&late, &settings(), t0() + minutes(1))
        .await
        .expect("subprocess");
    assert_eq!(refused, SubprocessOutcome::Stale);
    let mut outcome = TurnCommit::new(&second);
    outcome.changes.soul_memory.push(set("other", json!(1)));
    commit(&*store, &outcome, t0() + minutes(1)).await;
    let third = start(
        &*store,
        &inbound(&from, "c", None, t0() + minutes(2)),
        t0() + minutes(2),
    )
    .await;
    assert_eq!(
        third.soul_memories.get("summary"),
        Some(&json!("talked about a"))
    );
}

/// Replies become outbound messages pending delivery; statuses only move forward.
pub async fn delivery_status_only_moves_forward(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let context = start(&*store, &inbound(&from, "a", None, t0()), t0()).await;
    let mut outcome = TurnCommit::new(&context);
    outcome.replies = vec![reply("one", t0()), reply("two", t0())];
    let committed = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit");
    assert_eq!(committed.outbound.len(), 2);
    // Claimed by the commit for its sender until then.
    let pending = unclaimed(&*store, t0() + minutes(1)).await;
    assert_eq!(
        pending.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert!(
        pending
            .iter()
            .all(|m| m.status == DeliveryStatus::Pending && m.address == from)
    );
    assert!(unclaimed(&*store, t0()).await.is_empty());

    let id = committed.outbound[0];
    let update = |target, status, provider_id: Option<&str>| DeliveryUpdate {
        target,
        status,
        provider_id: provider_id.map(str::to_owned),
        error: None,
        at: t0(),
    };
    let accepted = update(
        OutboundRef::Id(id),
        DeliveryStatus::Accepted,
        Some("SMout1"),
    );
    assert!(store.update_delivery(&accepted).await.expect("update"));
    assert!(
        !store.update_delivery(&accepted).await.expect("update"),
        "repeat is a no-op"
    );
    let back = update(OutboundRef::Id(id), DeliveryStatus::Pending, None);
    assert!(!store.update_delivery(&back).await.expect("update"));
    let by_sid = OutboundRef::ProviderId("SMout1".into());
    assert!(
        store
            .update_delivery(&update(by_sid.clone(), DeliveryStatus::Delivered, None))
            .await
            .expect("update")
    );
    assert!(
        !store
            .update_delivery(&update(by_sid.clone(), DeliveryStatus::Sent, None))
            .await
            .expect("update")
    );
    assert!(
        !store
            .update_delivery(&update(by_sid, DeliveryStatus::Failed, None))
            .await
            .expect("update")
    );
    let pending = unclaimed(&*store, t0() + minutes(1)).await;
    assert_eq!(
        pending.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["two"]
    );
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("exists");
    assert_eq!(export["outbound_messages"][0]["status"], json!("delivered"));
    assert_eq!(
        export["outbound_messages"][0]["provider_id"],
        json!("SMout1")
    );
}

/// Delivery updates stored in one call apply in order, each as it would alone: forward only, by
/// our id or the provider's (including one set by an earlier update of the same call), unknown
/// targets refused; one flag per update.
pub async fn delivery_updates_together_apply_in_order_each_as_alone(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let context = start(&*store, &inbound(&from, "a", None, t0()), t0()).await;
    let mut outcome = TurnCommit::new(&context);
    outcome.replies = vec![reply("one", t0()), reply("two", t0()), reply("three", t0())];
    let committed = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit");
    let [one, two, three] = committed.outbound[..] else {
        panic!("three replies stored");
    };
    let update = |target, status, provider_id: Option<&str>, error: Option<&str>| DeliveryUpdate {
        target,
        status,
        provider_id: provider_id.map(str::to_owned),
        error: error.map(str::to_owned),
        at: t0() + minutes(1),
    };
    let updates = [
        update(
            OutboundRef::Id(one),
            DeliveryStatus::Accepted,
            Some("SMone"),
            None,
        ),
        update(
            OutboundRef::Id(one),
            DeliveryStatus::Accepted,
            Some("SMone"),
            None,
        ),
        update(
            OutboundRef::ProviderId("SMone".into()),
            DeliveryStatus::Delivered,
            None,
            None,
        ),
        update(
            OutboundRef::Id(two),
            DeliveryStatus::Failed,
            None,
            Some("refused"),
        ),
        update(
            OutboundRef::Id(two),
            DeliveryStatus::Accepted,
            Some("SMtwo"),
            None,
        ),
        update(
            OutboundRef::ProviderId("SMnobody".into()),
            DeliveryStatus::Sent,
            None,
            None,
        ),
        update(
            OutboundRef::Id(Uuid::new_v4()),
            DeliveryStatus::Accepted,
            Some("SMx"),
            None,
        ),
    ];
    assert_eq!(
        store.update_deliveries(&updates).await.expect("update"),
        [true, false, true, true, false, false, false]
    );
    assert_eq!(
        store
            .update_deliveries(&[])
            .await
            .expect("nothing to update"),
        Vec::<bool>::new()
    );
    let export = store
        .export_user(&from)
        .await
        .expect("export")
        .expect("exists");
    let stored: Vec<(String, Option<String>)> = export["outbound_messages"]
        .as_array()
        .expect("outbound messages")
        .iter()
        .map(|m| {
            (
                m["status"].as_str().unwrap_or_default().to_owned(),
                m["provider_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            ("delivered".to_owned(), Some("SMone".to_owned())),
            ("failed".to_owned(), None),
            ("pending".to_owned(), None),
        ]
    );
    let pending = unclaimed(&*store, t0() + minutes(1)).await;
    assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), [three]);
}

/// The outbox's question: one session's pending replies up to the one asked about, oldest first
/// (no one else's), and whether its person opted out; nothing for an unknown session. Replies
/// whose claim has not expired are not claimed.
pub async fn session_outbox_holds_its_own_pending_replies_and_the_opt_out(harness: &dyn Harness) {
    let store = open(harness).await;
    let (from, other) = (address(1), address(2));
    let context = start(&*store, &inbound(&from, "a", None, t0()), t0()).await;
    let session = context.session.id;
    let mut outcome = TurnCommit::new(&context);
    outcome.replies = vec![reply("one", t0()), reply("two", t0())];
    let committed = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit");
    let elsewhere = start(&*store, &inbound(&other, "b", None, t0()), t0()).await;
    let mut outcome = TurnCommit::new(&elsewhere);
    outcome.replies = vec![reply("not theirs", t0())];
    commit(&*store, &outcome, t0()).await;

    let through = committed.outbound[1];
    let outbox = store
        .claim_session_outbox(session, through, t0(), t0() + minutes(1))
        .await
        .expect("outbox")
        .expect("known session");
    assert!(!outbox.opted_out);
    assert!(outbox.claimed.is_empty(), "claimed by their commit");
    assert_eq!(
        outbox
            .pending
            .iter()
            .map(|m| (m.id, m.body.as_str(), &m.address, m.session_id))
            .collect::<Vec<_>>(),
        [
            (committed.outbound[0], "one", &from, session),
            (committed.outbound[1], "two", &from, session),
        ]
    );

    let accepted = DeliveryUpdate {
        target: OutboundRef::Id(committed.outbound[0]),
        status: DeliveryStatus::Accepted,
        provider_id: Some("SMout1".into()),
        error: None,
        at: t0(),
    };
    assert!(store.update_delivery(&accepted).await.expect("update"));
    assert!(store.set_opt_out(&from, true, t0()).await.expect("opt out"));
    let outbox = store
        .claim_session_outbox(session, through, t0(), t0() + minutes(1))
        .await
        .expect("outbox")
        .expect("known session");
    assert!(outbox.opted_out);
    assert_eq!(
        outbox
            .pending
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        ["two"]
    );
    assert_eq!(
        store
            .claim_session_outbox(SessionId(Uuid::new_v4()), through, t0(), t0())
            .await
            .expect("outbox"),
        None
    );
}

/// A commit answers the outbox's question as it stored its replies: whether replies of the
/// session's earlier commits were still pending (another session's do not count, nor its own),
/// and whether the person had opted out, even while its turn ran.
pub async fn commit_tells_the_sender_of_earlier_pending_replies_and_the_opt_out(
    harness: &dyn Harness,
) {
    let store = open(harness).await;
    let (from, other) = (address(1), address(2));
    let elsewhere = start(&*store, &inbound(&other, "b", None, t0()), t0()).await;
    let mut outcome = TurnCommit::new(&elsewhere);
    outcome.replies = vec![reply("not theirs", t0())];
    commit(&*store, &outcome, t0()).await;

    let committed = |context: &TurnContext, text: &str, at| {
        let mut outcome = TurnCommit::new(context);
        outcome.replies = vec![reply(text, at)];
        let store = store.clone();
        async move {
            store
                .commit_turn(&outcome, &settings(), at)
                .await
                .expect("commit")
        }
    };
    let at = t0() + minutes(1);
    let first = start(&*store, &inbound(&from, "a", None, at), at).await;
    let one = committed(&first, "one", at).await;
    assert_eq!(
        one.outbox,
        OutboxAtCommit {
            opted_out: false,
            earlier_pending: false,
            claimed_until: at + minutes(1),
        }
    );

    let at = t0() + minutes(2);
    let second = start(&*store, &inbound(&from, "b", None, at), at).await;
    let two = committed(&second, "two", at).await;
    assert_eq!(
        two.outbox,
        OutboxAtCommit {
            opted_out: false,
            earlier_pending: true,
            claimed_until: at + minutes(1),
        }
    );

    for (n, id) in one.outbound.iter().chain(&two.outbound).enumerate() {
        let accepted = DeliveryUpdate {
            target: OutboundRef::Id(*id),
            status: DeliveryStatus::Accepted,
            provider_id: Some(format!("SMout{n}")),
            error: None,
            at,
        };
        assert!(store.update_delivery(&accepted).await.expect("update"));
    }
    let at = t0() + minutes(3);
    let third = start(&*store, &inbound(&from, "c", None, at), at).await;
    assert!(store.set_opt_out(&from, true, at).await.expect("opt out"));
    let three = committed(&third, "three", at).await;
    assert_eq!(
        three.outbox,
        OutboxAtCommit {
            opted_out: true,
            earlier_pending: false,
            claimed_until: at + minutes(1),
        }
    );
}

fn ids(replies: &[OutboundMessage]) -> Vec<Uuid> {
    replies.iter().map(|m| m.id).collect()
}

fn texts(replies: &[OutboundMessage]) -> Vec<&str> {
    replies.iter().map(|m| m.body.as_str()).collect()
}

/// A commit stores its replies claimed for its own sender, for the settings' `reply_claim_for`
/// from the commit's time, and says until when: neither a sweeper nor another sender claims
/// them before then; after it, a sweeper does.
pub async fn a_commit_claims_its_replies_for_their_sender(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    let settings = TurnSettings {
        reply_claim_for: minutes(5),
        ..settings()
    };
    let context = match store
        .begin_turn(&inbound(&from, "a", None, t0()), &settings, t0())
        .await
        .expect("begin")
    {
        BeginOutcome::Started(turn) => turn,
        other => panic!("expected a started turn, got {other:?}"),
    };
    let mut outcome = TurnCommit::new(&context);
    outcome.replies = vec![reply("one", t0()), reply("two", t0())];
    let committed = store
        .commit_turn(&outcome, &settings, t0())
        .await
        .expect("commit");
    assert_eq!(committed.outbox.claimed_until, t0() + minutes(5));

    let just_before = t0() + minutes(5) - Duration::milliseconds(1);
    assert!(unclaimed(&*store, just_before).await.is_empty());
    let outbox = store
        .claim_session_outbox(
            context.session.id,
            committed.outbound[1],
            just_before,
            just_before + minutes(1),
        )
        .await
        .expect("outbox")
        .expect("known session");
    assert_eq!(ids(&outbox.pending), committed.outbound);
    assert!(outbox.claimed.is_empty(), "{outbox:?}");
    assert_eq!(
        ids(&unclaimed(&*store, t0() + minutes(5)).await),
        committed.outbound
    );
}

/// The sweeper's claim: pending replies whose claim expired, oldest first (each session's in
/// commit order), up to the limit, claimed until the given time; not handed out again before
/// then, to the same caller or another; after it, again, until they are marked.
pub async fn a_claimed_reply_is_not_handed_out_again_until_its_claim_expires(
    harness: &dyn Harness,
) {
    let (one, two) = (open(harness).await, open(harness).await);
    let (a, b) = (address(1), address(2));
    turn(&*one, &a, "a1", t0(), Changes::default()).await;
    let at = t0() + Duration::seconds(1);
    let context = start(&*one, &inbound(&b, "b", None, at), at).await;
    let mut outcome = TurnCommit::new(&context);
    outcome.replies = vec![reply("re: b1", at), reply("re: b2", at)];
    commit(&*one, &outcome, at).await;
    turn(
        &*one,
        &a,
        "a2",
        t0() + Duration::seconds(2),
        Changes::default(),
    )
    .await;

    let at = t0() + minutes(2);
    let until = at + minutes(1);
    let first = one
        .claim_pending_deliveries(at, until, 2)
        .await
        .expect("claim");
    assert_eq!(texts(&first), ["re: a1", "re: b1"]);
    assert!(first.iter().all(|m| m.status == DeliveryStatus::Pending));
    assert_eq!(
        first.iter().map(|m| &m.address).collect::<Vec<_>>(),
        [&a, &b]
    );
    let second = two
        .claim_pending_deliveries(at, until, 10)
        .await
        .expect("claim");
    assert_eq!(texts(&second), ["re: b2", "re: a2"]);
    for store in [&one, &two] {
        for now in [at, until - Duration::milliseconds(1)] {
            assert!(
                store
                    .claim_pending_deliveries(now, now + minutes(1), 10)
                    .await
                    .expect("claim")
                    .is_empty(),
                "claimed until {until}, asked at {now}"
            );
        }
    }

    let again = two
        .claim_pending_deliveries(until, until + minutes(1), 10)
        .await
        .expect("claim");
    assert_eq!(texts(&again), ["re: a1", "re: b1", "re: b2", "re: a2"]);
    let accepted = DeliveryUpdate {
        target: OutboundRef::Id(again[0].id),
        status: DeliveryStatus::Accepted,
        provider_id: Some("SMa1".into()),
        error: None,
        at: until,
    };
    assert!(two.update_delivery(&accepted).await.expect("update"));
    assert_eq!(
        texts(&unclaimed(&*one, until + minutes(1)).await),
        ["re: b1", "re: b2", "re: a2"]
    );
}

/// Sweepers of several processes claiming at once: every stale reply is claimed by exactly one
/// of them. And two senders claiming one session's earlier replies at once split them too.
pub async fn concurrent_claims_of_stale_replies_are_disjoint(harness: &dyn Harness) {
    const SESSIONS: usize = 8;
    const REPLIES: usize = 5;
    let store = open(harness).await;
    let mut committed = Vec::new();
    let mut sessions = Vec::new();
    for n in 0..SESSIONS {
        let context = start(&*store, &inbound(&address(n), "hi", None, t0()), t0()).await;
        let mut outcome = TurnCommit::new(&context);
        outcome.replies = (0..REPLIES)
            .map(|r| reply(&format!("{n}:{r}"), t0()))
            .collect();
        let outbound = store
            .commit_turn(&outcome, &settings(), t0())
            .await
            .expect("commit")
            .outbound;
        sessions.push((context.session.id, outbound.clone()));
        committed.extend(outbound);
    }

    let at = t0() + minutes(2);
    let sweepers = [open(harness).await, open(harness).await];
    let mut claims = tokio::task::JoinSet::new();
    for n in 0..4 {
        let store = Arc::clone(&sweepers[n % 2]);
        claims.spawn(async move {
            let mut mine = Vec::new();
            // Bounded, so that a claim that hands replies out again fails instead of spinning.
            for _ in 0..SESSIONS * REPLIES {
                let claimed = store
                    .claim_pending_deliveries(at, at + minutes(1), 3)
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    break;
                }
                mine.extend(ids(&claimed));
                tokio::task::yield_now().await;
            }
            mine
        });
    }
    let mut claimed: Vec<Uuid> = claims.join_all().await.into_iter().flatten().collect();
    claimed.sort_unstable();
    committed.sort_unstable();
    assert_eq!(claimed, committed, "each stale reply claimed exactly once");

    let at = at + minutes(1);
    let (session, outbound) = &sessions[0];
    let through = outbound[REPLIES - 1];
    let (x, y) = tokio::join!(
        sweepers[0].claim_session_outbox(*session, through, at, at + minutes(1)),
        sweepers[1].claim_session_outbox(*session, through, at, at + minutes(1)),
    );
    let (x, y) = (
        x.expect("outbox").expect("known"),
        y.expect("outbox").expect("known"),
    );
    let mut both: Vec<Uuid> = x.claimed.iter().chain(&y.claimed).copied().collect();
    both.sort_unstable();
    let mut expected = outbound.clone();
    expected.sort_unstable();
    assert_eq!(both, expected, "claimed once each: {x:?} {y:?}");
}

/// The sender's claim on its session's earlier replies: the session's pending replies up to the
/// one it asks about, oldest first; those whose claim expired are claimed for it and named, not
/// those a commit or a sweeper holds, nor later ones, nor another session's; what it claimed is
/// not handed to a sweeper until that claim expires.
pub async fn the_session_outbox_claims_earlier_replies_whose_claim_expired(harness: &dyn Harness) {
    let store = open(harness).await;
    let (from, other) = (address(1), address(2));
    let first = start(&*store, &inbound(&from, "a", None, t0()), t0()).await;
    let session = first.session.id;
    let mut outcome = TurnCommit::new(&first);
    outcome.replies = vec![reply("one", t0())];
    let one = store
        .commit_turn(&outcome, &settings(), t0())
        .await
        .expect("commit")
        .outbound[0];
    let at = t0() + minutes(2);
    let second = start(&*store, &inbound(&from, "b", None, at), at).await;
    let mut outcome = TurnCommit::new(&second);
    outcome.replies = vec![reply("two", at), reply("three", at)];
    let committed = store
        .commit_turn(&outcome, &settings(), at)
        .await
        .expect("commit");
    assert!(committed.outbox.earlier_pending);
    let [two, three] = committed.outbound[..] else {
        panic!("two replies stored");
    };
    turn(&*store, &other, "c", at, Changes::default()).await;

    // "one"'s commit claim expired a minute ago; "two"'s holds until t0 + 3 min.
    let outbox = store
        .claim_session_outbox(session, two, at, t0() + minutes(4))
        .await
        .expect("outbox")
        .expect("known session");
    assert_eq!(ids(&outbox.pending), [one, two]);
    assert_eq!(outbox.claimed, [one]);
    assert!(!outbox.opted_out);
    let again = store
        .claim_session_outbox(session, two, at, t0() + minutes(4))
        .await
        .expect("outbox")
        .expect("known session");
    assert_eq!(ids(&again.pending), [one, two]);
    assert!(again.claimed.is_empty(), "claimed already: {again:?}");

    assert_eq!(
        texts(&unclaimed(&*store, t0() + minutes(3)).await),
        ["two", "three", "re: c"]
    );
    let at = t0() + minutes(4);
    let outbox = store
        .claim_session_outbox(session, three, at, at + minutes(1))
        .await
        .expect("outbox")
        .expect("known session");
    assert_eq!(ids(&outbox.pending), [one, two, three]);
    assert_eq!(outbox.claimed, [one, two, three]);
    assert!(
        unclaimed(&*store, at)
            .await
            .iter()
            .all(|m| m.address == other)
    );
}

/// The opt-out flag is set and cleared.
pub async fn opt_out_is_recorded(harness: &dyn Harness) {
    let store = open(harness).await;
    let from = address(1);
    turn(&*store, &from, "a", t0(), Changes::default()).await;
    assert!(store.set_opt_out(&from, true, t0()).await.expect("opt out"));
    assert!(
        store
            .session(&from)
            .await
            .expect("session")
            .expect("exists")
            .opted_out
    );
    let context = start(
        &*store,
        &inbound(&from, "b", None, t0() + minutes(1)),
        t0() + minutes(1),
    )
    .await;
    assert!(context.session.opted_out);
    commit(&*store, &TurnCommit::new(&context), t0() + minutes(1)).await;
    assert!(store.set_opt_out(&from, false, t0()).await.expect("opt in"));
    assert!(
        !store
            .session(&from)
            .await
            .expect("session")
            .expect("exists")
            .opted_out
    );
}

/// A message that carries an opt-out change (STOP, START) applies it with the message, after
/// the duplicate check: a replayed keyword changes nothing, a turn started or queued for the
/// message already sees the change, a STOP from an unknown number creates its session opted
/// out, and an enqueued one is recorded at once.
pub async fn a_keyword_changes_the_opt_out_with_its_message_and_a_replay_changes_nothing(
    harness: &dyn Harness,
) {
    let store = open(harness).await;
    let from = address(1);
    let keyword = |body: &str, sid: &str, opt_out: bool, at: DateTime<Utc>| Inbound {
        opt_out: Some(opt_out),
        ..inbound(&from, body, Some(sid), at)
    };
    let opted_out = |store: Arc<dyn Store>, address: Address| async move {
        store
            .session(&address)
            .await
            .expect("session")
            .expect("exists")
            .opted_out
    };
    let context = start(&*store, &inbound(&from, "hi", Some("SM1"), t0()), t0()).await;
    assert!(!context.session.opted_out);
    commit(&*store, &TurnCommit::new(&context), t0()).await;

    // hi → STOP → START → STOP, each seen by its own turn.
    let mut at = t0();
    for (body, sid, opt_out) in [
        ("STOP", "SM2", true),
        ("START", "SM3", false),
        ("STOP", "SM4", true),
    ] {
        at += minutes(1);
        let context = start(&*store, &keyword(body, sid, opt_out, at), at).await;
        assert_eq!(context.session.opted_out, opt_out, "{body} {sid}");
        assert_eq!(context.inbound.body, body);
        commit(&*store, &TurnCommit::new(&context), at).await;
        assert_eq!(opted_out(store.clone(), from.clone()).await, opt_out);
    }
    // The START again, as Twilio retries it: a duplicate, and the number stays opted out.
    at += minutes(1);
    let replay = store
        .begin_turn(&keyword("START", "SM3", false, at), &settings(), at)
        .await
        .expect("begin");
    assert!(
        matches!(replay, BeginOutcome::Duplicate { .. }),
        "{replay:?}"
    );
    let enqueued = store
        .enqueue_turn(&keyword("START", "SM3", false, at), &settings(), at)
        .await
        .expect("enqueue");
    assert!(
        matches!(enqueued, BeginOutcome::Duplicate { .. }),
        "{enqueued:?}"
    );
    assert!(opted_out(store.clone(), from.clone()).await);
    // Opted in for real, then the old STOP replayed: still opted in.
    at += minutes(1);
    let context = start(&*store, &keyword("UNSTOP", "SM5", false, at), at).await;
    commit(&*store, &TurnCommit::new(&context), at).await;
    let replay = store
        .begin_turn(&keyword("STOP", "SM2", true, at), &settings(), at)
        .await
        .expect("begin");
    assert!(
        matches!(replay, BeginOutcome::Duplicate { .. }),
        "{replay:?}"
    );
    assert!(!opted_out(store.clone(), from.clone()).await);
    let history = store.history(&from, None, 0).await.expect("history");
    assert_eq!(bodies(&history), ["hi", "STOP", "START", "STOP", "UNSTOP"]);

    // A STOP behind a running turn is recorded at once, before that turn commits.
    at += minutes(1);
    let running = start(&*store, &inbound(&from, "busy", Some("SM6"), at), at).await;
    let queued = open(harness)
        .await
        .begin_turn(&keyword("stop", "SM7", true, at), &settings(), at)
        .await
        .expect("begin");
    assert!(matches!(queued, BeginOutcome::Queued { .. }), "{queued:?}");
    assert!(opted_out(store.clone(), from.clone()).await);
    let next = store
        .commit_turn(&TurnCommit::new(&running), &settings(), at)
        .await
        .expect("commit")
        .next
        .expect("the STOP is next");
    assert!(next.session.opted_out);
    commit(&*store, &TurnCommit::new(&next), at).await;

    // A first message that is STOP creates its session opted out, and its turn sees it.
    let stranger = address(2);
    let first = Inbound {
        opt_out: Some(true),
        ..inbound(&stranger, "STOP", Some("SM8"), t0())
    };
    let context = start(&*store, &first, t0()).await;
    assert!(context.new_session);
    assert!(context.session.opted_out);
    // An enqueued STOP is recorded with it, before any turn starts.
    let third = address(3);
    let enqueued = store
        .enqueue_turn(
            &Inbound {
                opt_out: Some(true),
                ..inbound(&third, "STOP", Some("SM9"), t0())
            },
            &settings(),
            t0(),
        )
        .await
        .expect("enqueue");
    assert!(
        matches!(enqueued, BeginOutcome::Waiting { .. }),
        "{enqueued:?}"
    );
    assert!(opted_out(store.clone(), third).await);
}

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

/// A check-in as the turn driver schedules it.
fn check_in(key: &str, due_at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        key: key.to_owned(),
        kind: "perception".to_owned(),
        payload: json!({"process": "listening", "content": format!("check in ({key})")}),
        due_at,
    }
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

/// Claims the one due event at `at`.
async fn claim_one(store: &dyn Store, at: DateTime<Utc>) -> ScheduledEvent {
    let mut due = store
        .claim_due_events(at, 10, minutes(5))
        .await
        .expect("claim");
    assert_eq!(due.len(), 1, "{due:?}");
    due.remove(0)
}

async fn begin_event(store: &dyn Store, event: &ScheduledEvent, at: DateTime<Utc>) -> EventOutcome {
    store
        .begin_event_turn(event, &settings(), at)
        .await
        .expect("begin event")
}

async fn start_event(
    store: &dyn Store,
    event: &ScheduledEvent,
    at: DateTime<Utc>,
) -> Box<TurnContext> {
    match begin_event(store, event, at).await {
        EventOutcome::Started(turn) => turn,
        other => panic!("expected a started event turn, got {other:?}"),
    }
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
        .expect("exists");
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
        .expect("exists");
    assert_eq!(export["inbound_messages"].as_array().map(Vec::len), Some(1));
}

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

/// Two first messages from one number at once: one session, one turn, one queued message.
pub async fn concurrent_first_messages_make_one_session(harness: &dyn Harness) {
    let (one, two) = (open(harness).await, open(harness).await);
    let from = address(1);
    let (a, b) = (
        inbound(&from, "a", Some("SMa"), t0()),
        inbound(&from, "b", Some("SMb"), t0()),
    );
    let settings = settings();
    let (x, y) = tokio::join!(
        one.begin_turn(&a, &settings, t0()),
        two.begin_turn(&b, &settings, t0())
    );
    let outcomes = [x.expect("begin"), y.expect("begin")];
    let started: Vec<&TurnContext> = outcomes
        .iter()
        .filter_map(|o| match o {
            BeginOutcome::Started(turn) => Some(&**turn),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1, "{outcomes:?}");
    assert!(started[0].new_session);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, BeginOutcome::Queued { .. }))
            .count(),
        1
    );
    let next = one
        .commit_turn(&TurnCommit::new(started[0]), &settings, t0())
        .await
        .expect("commit");
    let next = next.next.expect("the queued one");
    assert!(!next.new_session);
    assert_eq!(next.session.id, started[0].session.id);
}

/// 50 senders × 20 messages, three workers (stores) on one database: every message is answered
/// exactly once and each conversation is strictly message, reply, message, reply... in the
/// order the messages were accepted.
pub async fn many_senders_many_workers_exactly_once_in_order(harness: &dyn Harness) {
    const SENDERS: usize = 50;
    const MESSAGES: usize = 20;
    let workers = [
        open(harness).await,
        open(harness).await,
        open(harness).await,
    ];
    let settings = Arc::new(settings());
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let workers = workers.clone();
        let settings = Arc::clone(&settings);
        senders.spawn(async move {
            let from = address(sender);
            let mut runs = tokio::task::JoinSet::new();
            for n in 0..MESSAGES {
                // Messages of one sender reach different workers, as webhooks do, and every
                // other one is enqueued and then resumed, as a gateway that is behind does.
                let store = Arc::clone(&workers[(sender + n) % workers.len()]);
                let at = t0() + Duration::milliseconds(i64::try_from(n).unwrap_or(0));
                let message = inbound(
                    &from,
                    &format!("{sender}:{n}"),
                    Some(&format!("SM{sender}-{n}")),
                    at,
                );
                let begun = if n % 2 == 0 {
                    store.begin_turn(&message, &settings, at).await
                } else {
                    store.enqueue_turn(&message, &settings, at).await
                };
                let started = match begun.expect("begin") {
                    BeginOutcome::Started(turn) => Some(turn),
                    BeginOutcome::Waiting { session, .. } => store
                        .resume_turn(session, &settings, at)
                        .await
                        .expect("resume"),
                    BeginOutcome::Queued { .. } => None,
                    BeginOutcome::Duplicate { .. } => panic!("no duplicates were sent"),
                };
                if let Some(turn) = started {
                    let settings = Arc::clone(&settings);
                    runs.spawn(run_turns(store, turn, settings));
                }
                tokio::task::yield_now().await;
            }
            let mut ran = Vec::new();
            while let Some(done) = runs.join_next().await {
                ran.extend(done.expect("turn task"));
            }
            ran
        });
    }
    let mut turns_run: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = senders.join_next().await {
        for body in done.expect("sender task") {
            *turns_run.entry(body).or_default() += 1;
        }
    }
    assert_eq!(turns_run.len(), SENDERS * MESSAGES, "every message ran");
    assert!(turns_run.values().all(|&n| n == 1), "no message ran twice");
    for sender in 0..SENDERS {
        let history = workers[0]
            .history(&address(sender), None, 0)
            .await
            .expect("history");
        let expected: Vec<String> = (0..MESSAGES)
            .flat_map(|n| [format!("{sender}:{n}"), format!("re: {sender}:{n}")])
            .collect();
        assert_eq!(bodies(&history), expected);
        let session = workers[0]
            .session(&address(sender))
            .await
            .expect("session")
            .expect("exists");
        assert_eq!(
            session.total_messages,
            i64::try_from(2 * MESSAGES).unwrap_or(0)
        );
    }
    assert!(
        workers[0]
            .stalled_sessions(t0() + minutes(10), 10)
            .await
            .expect("stalled")
            .is_empty()
    );
}

/// A worker's loop: run the turn (a reply naming the message), commit, and continue with the
/// next message the commit hands over. Returns the bodies of the messages it ran.
async fn run_turns(
    store: Arc<dyn Store>,
    first: Box<TurnContext>,
    settings: Arc<TurnSettings>,
) -> Vec<String> {
    let mut ran = Vec::new();
    let mut current = Some(first);
    while let Some(context) = current {
        tokio::task::yield_now().await;
        let body = context.inbound.body.clone();
        assert_eq!(
            context.history.last().map(|m| m.content.as_str()),
            Some(body.as_str())
        );
        let mut outcome = TurnCommit::new(&context);
        outcome
            .replies
            .push(reply(&format!("re: {body}"), context.inbound.received_at));
        ran.push(body);
        let at = context.inbound.received_at;
        current = store
            .commit_turn(&outcome, &settings, at)
            .await
            .expect("commit")
            .next;
    }
    ran
}
