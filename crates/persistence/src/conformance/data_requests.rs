//! What a person asks of their data: an export that holds every column stored about them, and
//! an erasure that keeps a STOP honoured and waits for a running turn.

use chrono::Duration;
use serde_json::{Value, json};

use super::Harness;
use super::fixtures::{address, inbound, minutes, open, reply, set, start, t0, turn};
use crate::{
    Changes, DeliveryStatus, DeliveryUpdate, Erasure, NewEvent, OutboundRef, ProcessMemoryChange,
    ProcessState, StoreError, TurnCommit,
};

/// The PostgreSQL schema the migrations make (kept in step with them by
/// `tests/schema.rs`), whose tables and columns an export is checked against.
const SCHEMA: &str = include_str!("../../schema/postgres.sql");

/// Where each table's rows are in an export: a list, or (`mental_process_state`, one row per
/// session, and the session itself) an object.
const EXPORTED_AS: &[(&str, &str)] = &[
    ("user_sessions", "session"),
    ("messages", "messages"),
    ("soul_memories", "soul_memories"),
    ("process_memories", "process_memories"),
    ("mental_process_state", "mental_process_state"),
    ("working_memory_snapshots", "working_memory_snapshots"),
    ("inbound_messages", "inbound_messages"),
    ("outbound_messages", "outbound_messages"),
    ("scheduled_events", "scheduled_events"),
];

/// Tables that hold nothing about a person, and why an export leaves them out.
const NOT_A_PERSONS: &[(&str, &str)] = &[(
    "inspector_audit",
    "what operators did: no number or text of the person's, and it outlives their erasure",
)];

/// Columns an export names otherwise: the names the store's readers use.
const RENAMED: &[(&str, &str, &str)] = &[
    ("user_sessions", "phone_number", "address"),
    ("user_sessions", "assigned_persona", "persona"),
    ("messages", "created_at", "timestamp"),
    ("process_memories", "process_name", "process"),
    ("mental_process_state", "process_name", "name"),
    ("mental_process_state", "previous_process", "previous"),
];

/// Columns an export leaves out (`*`: of every table), and why: none is about the person.
const LEFT_OUT: &[(&str, &str, &str)] = &[
    ("*", "session_id", "every row of an export is the person's"),
    (
        "*",
        "seq",
        "insertion order, which is the order of the export's lists",
    ),
    (
        "user_sessions",
        "lease_token",
        "a worker's hold while a turn runs",
    ),
    (
        "user_sessions",
        "lease_expires_at",
        "a worker's hold while a turn runs",
    ),
    (
        "user_sessions",
        "lease_inbound_id",
        "a worker's hold while a turn runs",
    ),
    (
        "soul_memories",
        "id",
        "a surrogate key: the row is its key's",
    ),
    (
        "process_memories",
        "id",
        "a surrogate key: the row is its process's and key's",
    ),
    (
        "mental_process_state",
        "id",
        "a surrogate key: one row per session",
    ),
    (
        "working_memory_snapshots",
        "id",
        "a surrogate key: one row per session",
    ),
    (
        "inbound_messages",
        "waiting",
        "mirrors `status = 'queued'`, which is exported",
    ),
    (
        "user_sessions",
        "turns",
        "the latest turn's number, which the exported messages' turns say",
    ),
];

/// `(table, columns)` of every table in [`SCHEMA`].
fn schema_tables() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut tables = Vec::new();
    let mut lines = SCHEMA.lines();
    while let Some(line) = lines.next() {
        let Some(table) = line
            .strip_prefix("create table public.")
            .and_then(|rest| rest.strip_suffix(" ("))
        else {
            continue;
        };
        let columns = lines
            .by_ref()
            .take_while(|line| line.starts_with("  ") && !line.starts_with("  constraint "))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        tables.push((table, columns));
    }
    tables
}

/// An export holds every column of every table of the schema, but those [`LEFT_OUT`] says why
/// not: a column added to the schema and forgotten by an export fails here, on every backend.
pub async fn export_holds_every_column_of_the_schema(harness: &dyn Harness) {
    let store = open(harness).await;
    let alice = address(1);
    let context = start(&*store, &inbound(&alice, "hello", Some("SM1"), t0()), t0()).await;
    let mut commit = TurnCommit::new(&context);
    commit.replies.push(reply("hi", t0()));
    commit.changes = Changes {
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
            due_at: t0() + Duration::days(1),
        }],
        ..Changes::default()
    };
    let committed = store
        .commit_turn(&commit, &super::fixtures::settings(), t0())
        .await
        .expect("commit");
    let failed = DeliveryUpdate {
        target: OutboundRef::Id(committed.outbound[0]),
        status: DeliveryStatus::Failed,
        provider_id: None,
        error: Some("30003".into()),
        at: t0(),
    };
    assert!(store.update_delivery(&failed).await.expect("update"));
    assert!(
        store
            .set_opt_out(&alice, true, t0())
            .await
            .expect("opt out")
    );
    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("exists")[0]
        .clone();

    let tables = schema_tables();
    assert!(tables.len() >= EXPORTED_AS.len(), "{tables:?}");
    let mut missing = Vec::new();
    for (table, columns) in &tables {
        if NOT_A_PERSONS.iter().any(|(name, _)| name == table) {
            continue;
        }
        let Some((_, key)) = EXPORTED_AS.iter().find(|(name, _)| name == table) else {
            missing.push(format!("the table {table}"));
            continue;
        };
        let row = match &export[*key] {
            Value::Array(rows) => rows.first().cloned().unwrap_or(Value::Null),
            other => other.clone(),
        };
        assert!(row.is_object(), "no {key} row to check in {export:#}");
        for column in columns {
            let left_out = LEFT_OUT
                .iter()
                .any(|(name, left, _)| (*name == "*" || name == table) && left == column);
            let name = RENAMED
                .iter()
                .find(|(name, renamed, _)| name == table && renamed == column)
                .map_or(*column, |(_, _, to)| *to);
            if !left_out && row.get(name).is_none() {
                missing.push(format!("{table}.{column} (as {key}.{name})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the export lacks {missing:?}: export it, or list it in LEFT_OUT with the reason"
    );
    for (table, column, _) in LEFT_OUT {
        assert!(
            tables
                .iter()
                .any(|(name, columns)| (*table == "*" || name == table) && columns.contains(column)),
            "LEFT_OUT names {table}.{column}, which the schema no longer has"
        );
    }

    // The columns an export lacked before, with what they hold.
    assert_eq!(export["messages"][0]["message_sid"], json!("SM1"));
    assert!(export["session"]["opted_out_at"].is_string());
    let inbound = &export["inbound_messages"][0];
    assert_eq!(inbound["id"], json!(context.inbound.id));
    assert_eq!(inbound["attempts"], json!(1));
    assert!(inbound["started_at"].is_string() && inbound["finished_at"].is_string());
    let outbound = &export["outbound_messages"][0];
    assert_eq!(outbound["status"], json!("failed"));
    assert_eq!(outbound["error"], json!("30003"));
    assert!(outbound["claimed_until"].is_string() && outbound["updated_at"].is_string());
    let event = &export["scheduled_events"][0];
    assert!(event["id"].is_string() && event["created_at"].is_string());
    assert_eq!(event["claimed_until"], Value::Null);
}

/// Erasing someone who opted out leaves their number and the time they opted out, nothing
/// else: a message from them later is a first contact, stored as opted out (so nothing is sent
/// to them), and the record is all an export then finds.
pub async fn erasing_someone_who_opted_out_keeps_only_their_opt_out(harness: &dyn Harness) {
    let store = open(harness).await;
    let (alice, bob) = (address(1), address(2));
    let changes = Changes {
        soul_memory: vec![set("name", json!("Alice"))],
        process_state: Some(ProcessState::new("listening", json!({}))),
        snapshot: Some(soul_engine::WorkingMemory::new("aria")),
        ..Changes::default()
    };
    turn(&*store, &alice, "my secret", t0(), changes).await;
    turn(&*store, &bob, "other", t0(), Changes::default()).await;
    assert!(
        store
            .set_opt_out(&alice, true, t0() + minutes(1))
            .await
            .expect("opt out")
    );
    let before = store
        .session(&alice)
        .await
        .expect("session")
        .expect("known");

    assert_eq!(
        store
            .erase_user(&alice, t0() + minutes(2))
            .await
            .expect("erase"),
        Erasure::Erased { opt_out_kept: true }
    );
    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("the opt-out record")[0]
        .clone();
    let session = &export["session"];
    assert_eq!(session["opted_out"], json!(true));
    assert_ne!(session["id"], json!(before.id), "a new id");
    assert_eq!(session["version"], json!(0));
    assert_eq!(session["total_messages"], json!(0));
    assert_eq!(session["metadata"], json!({}));
    assert!(session["opted_out_at"].is_string());
    assert_eq!(session["first_contact_at"], session["opted_out_at"]);
    assert_eq!(session["last_active_at"], session["opted_out_at"]);
    for list in [
        "messages",
        "soul_memories",
        "process_memories",
        "working_memory_snapshots",
        "inbound_messages",
        "outbound_messages",
        "scheduled_events",
    ] {
        assert_eq!(export[list], json!([]), "{list}");
    }
    assert_eq!(export["mental_process_state"], Value::Null);
    assert!(!export.to_string().contains("secret"));
    assert_eq!(
        store.history(&bob, None, 0).await.expect("history").len(),
        2,
        "nothing of anyone else"
    );

    let again = start(
        &*store,
        &inbound(&alice, "hi again", None, t0() + minutes(3)),
        t0() + minutes(3),
    )
    .await;
    assert!(again.new_session, "a first contact again");
    assert!(again.session.opted_out, "still opted out");
    assert!(again.soul_memories.is_empty());
    assert_eq!(again.process.name, "initial");
    let done = store
        .commit_turn(
            &TurnCommit::new(&again),
            &super::fixtures::settings(),
            t0() + minutes(3),
        )
        .await
        .expect("commit");
    assert!(done.outbox.opted_out, "a reply would not be sent");

    // Erasing again leaves the same record; someone who never opted out leaves nothing.
    assert_eq!(
        store
            .erase_user(&alice, t0() + minutes(4))
            .await
            .expect("erase"),
        Erasure::Erased { opt_out_kept: true }
    );
    assert_eq!(
        store
            .erase_user(&bob, t0() + minutes(4))
            .await
            .expect("erase"),
        Erasure::Erased {
            opt_out_kept: false
        }
    );
    assert!(store.session(&bob).await.expect("session").is_none());
    assert_eq!(
        store
            .erase_user(&bob, t0() + minutes(5))
            .await
            .expect("erase"),
        Erasure::Unknown
    );
}

/// A person's turn holds their erasure off until it ends: nothing is deleted meanwhile, and the
/// turn's commit still lands. A lease whose worker died (expired) holds nothing off, and that
/// worker's commit is refused afterwards.
pub async fn erasure_waits_for_a_running_turn(harness: &dyn Harness) {
    let store = open(harness).await;
    let (alice, bob) = (address(1), address(2));
    let running = start(&*store, &inbound(&alice, "hello", None, t0()), t0()).await;
    assert_eq!(
        store
            .erase_user(&alice, t0() + minutes(1))
            .await
            .expect("erase"),
        Erasure::TurnRunning {
            lease_expires_at: running.lease.expires_at
        }
    );
    let export = store
        .export_user(&alice)
        .await
        .expect("export")
        .expect("nothing deleted")[0]
        .clone();
    assert_eq!(export["inbound_messages"].as_array().map(Vec::len), Some(1));
    let mut commit = TurnCommit::new(&running);
    commit.replies.push(reply("hi", t0() + minutes(1)));
    store
        .commit_turn(&commit, &super::fixtures::settings(), t0() + minutes(1))
        .await
        .expect("the running turn commits");
    assert_eq!(
        store
            .erase_user(&alice, t0() + minutes(2))
            .await
            .expect("erase"),
        Erasure::Erased {
            opt_out_kept: false
        }
    );

    let stalled = start(&*store, &inbound(&bob, "hello", None, t0()), t0()).await;
    assert_eq!(
        store
            .erase_user(&bob, stalled.lease.expires_at)
            .await
            .expect("erase"),
        Erasure::Erased {
            opt_out_kept: false
        }
    );
    let late = store
        .commit_turn(
            &TurnCommit::new(&stalled),
            &super::fixtures::settings(),
            stalled.lease.expires_at,
        )
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert!(store.session(&bob).await.expect("session").is_none());
}
