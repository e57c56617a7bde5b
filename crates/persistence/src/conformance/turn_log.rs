//! The turn log: the record each commit writes, the subprocesses' part, retention, and a rewind
//! restoring a session's state exactly.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use soul_engine::{Memory, Role, WorkingMemory};

use super::Harness;
use super::fixtures::{
    address, check_in, inbound, minutes, open, reply, set, settings, start, t0, turn,
};
use crate::turn_log::{
    ChangeLog, LoggedTurn, Restore, Rewind, SessionState, StepLog, SubprocessRecord, TurnEnd,
    TurnRecord, rewind,
};
use crate::{
    Changes, DeliveryStatus, InboundKind, MemoryChange, ProcessMemoryChange, ProcessState,
    SessionId, Store, SubprocessCommit, SubprocessOutcome, TurnCommit, TurnContext,
};

fn step(name: &str, answer: &str) -> StepLog {
    StepLog {
        name: name.to_owned(),
        structured: false,
        duration_ms: 12,
        tokens: [100, 7],
        answer: answer.to_owned(),
        full: None,
    }
}

/// The state a commit changes, read as the driver reads it (the whole state, here).
async fn state(store: &dyn Store, session: SessionId) -> SessionState {
    store
        .session_state(session)
        .await
        .expect("session state")
        .expect("a session")
}

/// Commits `changes` (and one reply) for `context`'s turn, with the record the driver would
/// write: the change log against the state before.
async fn commit_logged(
    store: &dyn Store,
    context: &TurnContext,
    changes: Changes,
    end: TurnEnd,
    at: DateTime<Utc>,
) -> TurnCommit {
    let mut before = state(store, context.session.id).await;
    let mut commit = TurnCommit::new(context);
    commit.replies.push(reply("a reply", at));
    commit.record = TurnRecord {
        end,
        steps: vec![step("external_dialog", "a reply")],
        changes: before.apply(&changes, &settings().processes),
        ..TurnRecord::default()
    };
    commit.changes = changes;
    let outcome = store
        .commit_turn(&commit, &settings(), at)
        .await
        .expect("commit");
    assert!(outcome.next.is_none());
    commit
}

async fn log(store: &dyn Store, session: SessionId) -> Vec<LoggedTurn> {
    store.turn_log(session, 0, None).await.expect("turn log")
}

/// What a rewind must restore: the state without its bookkeeping (version, lease, latest turn)
/// and with the events by key and value (a restored event may get a new id).
fn comparable(mut state: SessionState) -> Value {
    state.version = 0;
    state.lease_expires_at = None;
    state.turn = 0;
    let mut events: Vec<Value> = state
        .events
        .iter()
        .map(|e| json!([e.key, serde_json::to_value(&e.value).expect("event")]))
        .collect();
    events.sort_by_key(Value::to_string);
    state.events.clear();
    let mut value = serde_json::to_value(&state).expect("state");
    value["events"] = Value::Array(events);
    value
}

fn memory(role: Role, text: &str, at: DateTime<Utc>) -> Memory {
    Memory::new(role, text, at)
}

/// The state names the soul the conversation was assigned at its first contact: the one a
/// re-run of its turns runs.
pub async fn the_session_state_names_the_conversations_soul(harness: &dyn Harness) {
    let store = open(harness).await;
    let first = start(
        &*store,
        &inbound(&address(1), "hello", Some("SM1"), t0()),
        t0(),
    )
    .await;
    let mut other = inbound(&address(2), "hi", Some("SM2"), t0());
    other.persona = Some("sol".to_owned());
    let second = start(&*store, &other, t0()).await;
    assert_eq!(state(&*store, first.session.id).await.persona, "aria");
    assert_eq!(state(&*store, second.session.id).await.persona, "sol");
}

/// A step's answer that is the text of one of the turn's replies (a step that speaks) is stored
/// once, with the reply, and read back whole; any other answer is stored as it is.
pub async fn a_spoken_answer_is_stored_once_with_its_reply(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let first = start(&*store, &inbound(&alice, "hello", Some("SM1"), t0()), t0()).await;
    let mut commit = TurnCommit::new(&first);
    commit.replies.push(reply("Good morning.", t0()));
    commit.replies.push(reply("I hear you.", t0()));
    commit.record.steps = vec![
        step("decision", "yes"),
        step("external_dialog", "I hear you."),
    ];
    store
        .commit_turn(&commit, &settings(), t0())
        .await
        .expect("commit");

    let turns = log(&*store, first.session.id).await;
    assert_eq!(turns[0].record.steps, commit.record.steps);
    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();
    let stored = &export["inbound_messages"][0]["record"]["s"];
    assert_eq!(stored[0]["a"], "yes", "{stored}");
    assert_eq!(stored[1].get("a"), None, "{stored}");
    assert_eq!(stored[1]["ra"], 1, "{stored}");
}

/// The commit writes the turn's record in the same transaction: numbered from 1, with the
/// record's fields as given, the commit's own reply ids, the message it answered and the
/// replies' delivery read back with it.
pub async fn the_commit_writes_the_turn_record(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let first = start(&*store, &inbound(&alice, "hello", Some("SM1"), t0()), t0()).await;
    let changes = Changes {
        soul_memory: vec![set("name", json!("Alice"))],
        process_state: Some(ProcessState::new("listening", json!({"topic": "work"}))),
        ..Changes::default()
    };
    let commit = commit_logged(&*store, &first, changes, TurnEnd::Ok, t0()).await;
    let second = start(&*store, &inbound(&alice, "again", Some("SM2"), t0()), t0()).await;
    commit_logged(&*store, &second, Changes::default(), TurnEnd::Ok, t0()).await;

    let turns = log(&*store, first.session.id).await;
    assert_eq!(
        turns
            .iter()
            .map(|t| (t.turn, t.rewound))
            .collect::<Vec<_>>(),
        [(1, false), (2, false)]
    );
    let logged = &turns[0];
    assert_eq!(logged.perception.id, first.inbound.id);
    assert_eq!(logged.committed_at, t0());
    assert_eq!(logged.record.steps, [step("external_dialog", "a reply")]);
    assert_eq!(logged.record.replies, [commit.replies[0].id.0]);
    let changes = &logged.record.changes;
    assert_eq!(changes.soul_memory.len(), 1);
    assert_eq!(changes.soul_memory[0].key, "name");
    assert_eq!(changes.soul_memory[0].before, None);
    assert_eq!(changes.soul_memory[0].after, Some(json!("Alice")));
    let process = changes.process.as_ref().expect("a process change");
    assert_eq!(process.before.as_ref().map(|p| p.name.as_str()), None);
    assert_eq!(process.after.name, "listening");
    assert_eq!(process.after.params, json!({"topic": "work"}));
    let perception = &logged.perception;
    assert_eq!(perception.body, "hello");
    assert_eq!(perception.kind, InboundKind::Message);
    assert_eq!(logged.replies.len(), 1);
    assert_eq!(logged.replies[0].body, "a reply");
    assert_eq!(logged.replies[0].status, DeliveryStatus::Pending);
    assert_eq!(
        store
            .turn_log(first.session.id, 2, Some(2))
            .await
            .expect("turn log")
            .iter()
            .map(|t| t.perception.id)
            .collect::<Vec<_>>(),
        [second.inbound.id]
    );
}

/// A failed turn's record says how it ended, and an opted-out person's message too.
pub async fn a_fallback_turn_records_how_it_ended(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let context = start(&*store, &inbound(&alice, "hello", None, t0()), t0()).await;
    let end = TurnEnd::Fallback {
        error: "process".to_owned(),
    };
    commit_logged(&*store, &context, Changes::default(), end.clone(), t0()).await;
    let context = start(&*store, &inbound(&alice, "stop", None, t0()), t0()).await;
    commit_logged(
        &*store,
        &context,
        Changes::default(),
        TurnEnd::OptedOut,
        t0(),
    )
    .await;
    let ends: Vec<TurnEnd> = log(&*store, context.session.id)
        .await
        .into_iter()
        .map(|t| t.record.end)
        .collect();
    assert_eq!(ends, [end, TurnEnd::OptedOut]);
}

/// The subprocesses' commit adds their part to their turn's record; a stale one adds nothing.
pub async fn a_subprocess_commit_adds_its_part_to_the_record(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let context = start(&*store, &inbound(&alice, "hello", None, t0()), t0()).await;
    commit_logged(&*store, &context, Changes::default(), TurnEnd::Ok, t0()).await;
    let changes = Changes {
        soul_memory: vec![set("summary", json!("said hello"))],
        ..Changes::default()
    };
    let record = SubprocessRecord {
        failed: vec!["notes".to_owned()],
        steps: vec![step("summarize", "said hello")],
        changes: state(&*store, context.session.id)
            .await
            .apply(&changes, &settings().processes),
    };
    let subprocess = SubprocessCommit {
        session_id: context.session.id,
        version: context.version(),
        inbound_id: context.inbound.id,
        changes,
        record: record.clone(),
    };
    let applied = store
        .commit_subprocess(&subprocess, &settings(), t0())
        .await
        .expect("subprocess commit");
    assert_eq!(applied, SubprocessOutcome::Applied);
    assert_eq!(
        log(&*store, context.session.id).await[0]
            .record
            .subprocesses,
        Some(record)
    );

    let second = start(&*store, &inbound(&alice, "later", None, t0()), t0()).await;
    commit_logged(&*store, &second, Changes::default(), TurnEnd::Ok, t0()).await;
    let stale = store
        .commit_subprocess(&subprocess, &settings(), t0())
        .await
        .expect("subprocess commit");
    assert_eq!(stale, SubprocessOutcome::Stale);
    assert_eq!(
        log(&*store, context.session.id).await[1]
            .record
            .subprocesses,
        None
    );
}

/// Rewinding to after turn 1 makes the soul memory, process memories, process state, snapshot
/// and scheduled events exactly what they were after it, undoing two turns and a subprocess
/// commit that changed each of them; the later turns stay in the log, marked rewound, and the
/// next turn is turn 2 again, started from the restored state.
pub async fn rewind_restores_the_state_after_a_turn(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let user = |text: &str| memory(Role::User, text, t0());
    let wm1 = WorkingMemory::new("aria")
        .with_memory(memory(Role::System, "persona", t0()))
        .with_memory(user("one"))
        .with_memory(memory(Role::Assistant, "re: one", t0()));
    let first = start(&*store, &inbound(&alice, "one", None, t0()), t0()).await;
    let session = first.session.id;
    let changes = Changes {
        soul_memory: vec![
            set("a", json!(1)),
            set("b", json!({"x": [1, 2]})),
            set("n", Value::Null),
        ],
        process_memory: vec![ProcessMemoryChange {
            process: "initial".to_owned(),
            change: set("k", json!("v")),
        }],
        process_state: Some(ProcessState::new("listening", json!({"p": 1}))),
        snapshot: Some(wm1.clone()),
        schedule: vec![
            check_in("e1", t0() + Duration::days(1)),
            check_in("e2", t0() + Duration::days(2)),
        ],
        ..Changes::default()
    };
    commit_logged(&*store, &first, changes, TurnEnd::Ok, t0()).await;
    let after_first = state(&*store, session).await;

    let at = t0() + minutes(1);
    let second = start(&*store, &inbound(&alice, "two", None, at), at).await;
    // The oldest conversation dropped (the same memories otherwise, by id), two added.
    let wm2 = wm1
        .filter(|m| m.content != "one")
        .with_memory(user("two"))
        .with_memory(memory(Role::Assistant, "re: two", at));
    let changes = Changes {
        soul_memory: vec![
            set("a", json!(2)),
            MemoryChange::Remove {
                key: "b".to_owned(),
            },
            set("n", json!("now set")),
        ],
        process_memory: vec![
            ProcessMemoryChange {
                process: "initial".to_owned(),
                change: MemoryChange::Remove {
                    key: "k".to_owned(),
                },
            },
            ProcessMemoryChange {
                process: "listening".to_owned(),
                change: set("x", json!(true)),
            },
        ],
        process_state: Some(ProcessState {
            invocation_count: 1,
            ..ProcessState::new("listening", json!({"p": 2}))
        }),
        snapshot: Some(wm2.clone()),
        schedule: vec![
            check_in("e1", t0() + Duration::days(3)),
            check_in("e3", t0() + Duration::days(4)),
        ],
        cancel_events: vec!["e2".to_owned()],
        ..Changes::default()
    };
    commit_logged(&*store, &second, changes, TurnEnd::Ok, at).await;
    let changes = Changes {
        soul_memory: vec![set("summary", json!("two turns"))],
        process_memory: vec![ProcessMemoryChange {
            process: "tally".to_owned(),
            change: set("count", json!(2)),
        }],
        process_state: Some(ProcessState::new("closing", json!(null))),
        snapshot: Some(wm2.with_memory(memory(Role::Assistant, "a summary", at))),
        ..Changes::default()
    };
    let subprocess = SubprocessCommit {
        session_id: session,
        version: second.version(),
        inbound_id: second.inbound.id,
        record: SubprocessRecord {
            changes: state(&*store, session)
                .await
                .apply(&changes, &settings().processes),
            ..SubprocessRecord::default()
        },
        changes,
    };
    let applied = store
        .commit_subprocess(&subprocess, &settings(), at)
        .await
        .expect("subprocess commit");
    assert_eq!(applied, SubprocessOutcome::Applied);
    let at = t0() + minutes(2);
    let third = start(&*store, &inbound(&alice, "three", None, at), at).await;
    let changes = Changes {
        soul_memory: vec![set("a", json!(3))],
        snapshot: Some(WorkingMemory::new("aria").with_memory(user("three"))),
        cancel_events: vec!["e1".to_owned()],
        ..Changes::default()
    };
    commit_logged(&*store, &third, changes, TurnEnd::Ok, at).await;
    assert_ne!(
        comparable(state(&*store, session).await),
        comparable(after_first.clone())
    );

    let now = t0() + minutes(3);
    assert_eq!(
        rewind(&*store, session, 1, now).await.expect("rewind"),
        Rewind::Rewound { rewound: 2 }
    );
    let restored = state(&*store, session).await;
    assert_eq!(comparable(restored.clone()), comparable(after_first));
    assert_eq!(restored.turn, 1);
    assert_eq!(
        WorkingMemory::from_json(restored.snapshot.clone().expect("a snapshot")).expect("readable"),
        wm1
    );
    assert_eq!(
        log(&*store, session)
            .await
            .iter()
            .map(|t| (t.turn, t.rewound))
            .collect::<Vec<_>>(),
        [(1, false), (2, true), (3, true)]
    );
    // Rewinding again to where it stands, or to a rewound turn, changes nothing more.
    assert_eq!(
        rewind(&*store, session, 2, now).await.expect("rewind"),
        Rewind::UnknownTurn
    );

    let at = t0() + minutes(4);
    let next = start(&*store, &inbound(&alice, "two again", None, at), at).await;
    assert_eq!(next.process.name, "listening");
    assert_eq!(next.process.params, json!({"p": 1}));
    assert_eq!(next.soul_memories.get("a"), Some(&json!(1)));
    assert_eq!(next.process_memories.get("x"), None);
    assert_eq!(next.snapshot.as_ref(), Some(&wm1));
    assert_eq!(
        next.pending_events
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    commit_logged(&*store, &next, Changes::default(), TurnEnd::Ok, at).await;
    assert_eq!(
        log(&*store, session)
            .await
            .iter()
            .map(|t| (t.turn, t.rewound))
            .collect::<Vec<_>>(),
        [(1, false), (2, true), (3, true), (2, false)]
    );
}

/// No rewind while a turn of the person runs, nor over a state that changed since it was read;
/// neither changes anything.
pub async fn rewind_is_refused_while_a_turn_runs(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let first = start(&*store, &inbound(&alice, "one", None, t0()), t0()).await;
    let changes = Changes {
        soul_memory: vec![set("a", json!(1))],
        ..Changes::default()
    };
    commit_logged(&*store, &first, changes, TurnEnd::Ok, t0()).await;
    let second = start(&*store, &inbound(&alice, "two", None, t0()), t0()).await;
    let changes = Changes {
        soul_memory: vec![set("a", json!(2))],
        ..Changes::default()
    };
    commit_logged(&*store, &second, changes, TurnEnd::Ok, t0()).await;
    let before = state(&*store, first.session.id).await;

    let running = start(&*store, &inbound(&alice, "three", None, t0()), t0()).await;
    let refused = rewind(&*store, first.session.id, 1, t0())
        .await
        .expect("rewind");
    assert_eq!(
        refused,
        Rewind::TurnRunning {
            lease_expires_at: running.lease.expires_at
        }
    );
    // The store refuses it too, when asked directly.
    let restore = Restore {
        session: first.session.id,
        version: before.version,
        after_turn: 1,
        state: before.clone(),
    };
    assert!(matches!(
        store
            .restore_session(&restore, t0())
            .await
            .expect("restore"),
        Rewind::TurnRunning { .. }
    ));
    let mut commit = TurnCommit::new(&running);
    commit.replies.push(reply("re: three", t0()));
    store
        .commit_turn(&commit, &settings(), t0())
        .await
        .expect("commit");
    // Read before the turn ran: the version moved since.
    assert_eq!(
        store
            .restore_session(&restore, t0())
            .await
            .expect("restore"),
        Rewind::Changed
    );
    let after = state(&*store, first.session.id).await;
    assert_eq!(after.soul_memories.get("a"), Some(&json!(2)));
    assert_eq!(
        log(&*store, first.session.id)
            .await
            .iter()
            .filter(|t| t.rewound)
            .count(),
        0
    );
}

/// Retention deletes turn records as old as the messages it deletes, and keeps the newer ones.
pub async fn retention_deletes_old_turn_records(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    for day in 0..3 {
        turn(
            &*store,
            &alice,
            &format!("day {day}"),
            t0() + Duration::days(day),
            Changes::default(),
        )
        .await;
    }
    let session = store
        .session(&alice)
        .await
        .expect("session")
        .expect("a session")
        .id;
    store
        .delete_messages_older_than(Some(&alice), 1, t0() + Duration::days(2))
        .await
        .expect("retention");
    assert_eq!(
        log(&*store, session)
            .await
            .iter()
            .map(|t| t.turn)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    // A record without steps or changes is still a record of the turn.
    assert_eq!(
        log(&*store, session).await[0].record.changes,
        ChangeLog::default()
    );
}
