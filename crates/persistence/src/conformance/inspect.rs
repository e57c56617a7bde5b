//! The inspector's reads: conversations listed with what needs an operator's attention, each
//! filter, and the audit of reveals, exports, erasures and rewinds.

use std::sync::Arc;

use super::Harness;
use super::fixtures::{address, check_in, inbound, minutes, start, t0, turn};
use crate::{
    Address, AuditAction, AuditEntry, Changes, Conversation, ConversationQuery, DeliveryStatus,
    DeliveryUpdate, Erasure, Inspect, Line, OutboundRef, ProcessState, SessionId,
};

async fn open_inspect(harness: &dyn Harness) -> Arc<dyn Inspect> {
    harness.open_inspect().await.expect("open store")
}

async fn list(store: &dyn Inspect, query: ConversationQuery) -> Vec<Conversation> {
    store
        .conversations(&query, t0() + minutes(60))
        .await
        .expect("conversations")
}

fn addresses(conversations: &[Conversation]) -> Vec<Address> {
    conversations
        .iter()
        .map(|conversation| conversation.address.clone())
        .collect()
}

/// Three people: Alice (first, a failed reply, in `listening`, opted out), Bob (a check-in due
/// at minute 30 and one the next day) and Carol (last, a pending reply).
async fn three_people(store: &dyn Inspect) -> [SessionId; 3] {
    let (alice, bob, carol) = (address(1), address(2), address(3));
    let first = turn(
        store,
        &alice,
        "the weather is lovely",
        t0(),
        Changes {
            process_state: Some(ProcessState::new("listening", serde_json::json!({}))),
            ..Changes::default()
        },
    )
    .await;
    let second = turn(
        store,
        &bob,
        "hello there",
        t0() + minutes(1),
        Changes {
            schedule: vec![
                check_in("soon", t0() + minutes(30)),
                check_in("later", t0() + minutes(60 * 24)),
            ],
            ..Changes::default()
        },
    )
    .await;
    let third = turn(
        store,
        &carol,
        "good night",
        t0() + minutes(2),
        Changes::default(),
    )
    .await;
    // Every reply is pending after its commit: Alice's fails, Bob's is accepted.
    for (who, status) in [
        (&alice, DeliveryStatus::Failed),
        (&bob, DeliveryStatus::Accepted),
    ] {
        let export = store
            .export_user(who)
            .await
            .expect("export")
            .expect("known");
        // One entry per conversation of the person's: theirs is on the default line.
        let id = export[0]["outbound_messages"][0]["id"]
            .as_str()
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .expect("a reply id");
        let update = DeliveryUpdate {
            target: OutboundRef::Id(id),
            status,
            provider_id: None,
            error: None,
            at: t0() + minutes(3),
        };
        assert!(store.update_delivery(&update).await.expect("update"));
    }
    assert!(
        store
            .set_opt_out(&alice, true, t0() + minutes(4))
            .await
            .expect("opt out")
    );
    [first.session.id, second.session.id, third.session.id]
}

/// The list comes latest first, each conversation with its counts of undelivered replies and
/// due events, its process and its opt-out.
pub async fn conversations_are_listed_latest_first_with_what_needs_attention(
    harness: &dyn Harness,
) {
    let store = open_inspect(harness).await;
    let [alice, bob, carol] = three_people(&*store).await;
    let all = list(&*store, ConversationQuery::default()).await;
    let ids: Vec<SessionId> = all.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![carol, bob, alice]);
    let (c, b, a) = (&all[0], &all[1], &all[2]);
    assert_eq!(a.address, address(1));
    assert_eq!(a.persona, "aria");
    assert!(a.opted_out && !b.opted_out && !c.opted_out);
    assert_eq!(a.process.as_deref(), Some("listening"));
    assert_eq!(c.process, None);
    assert_eq!((a.failed_replies, a.pending_replies), (1, 0));
    assert_eq!((b.failed_replies, b.pending_replies), (0, 0));
    assert_eq!((c.failed_replies, c.pending_replies), (0, 1));
    assert_eq!((b.due_events, a.due_events), (1, 0));
    assert_eq!(b.next_event_at, Some(t0() + minutes(30)));
    assert_eq!(a.next_event_at, None);
    assert_eq!(a.total_messages, 2);
    assert_eq!(a.first_contact_at, t0());
    assert_eq!(c.last_active_at, t0() + minutes(2));

    let two = list(
        &*store,
        ConversationQuery {
            limit: 2,
            ..ConversationQuery::default()
        },
    )
    .await;
    assert_eq!(addresses(&two), vec![address(3), address(2)]);

    // Each conversation says its line.
    assert_eq!(a.line, Line::DEFAULT);
    let mut on_line = inbound(&address(5), "hi", None, t0() + minutes(5));
    on_line.line = Line::new("+15550000000");
    let context = start(&*store, &on_line, t0() + minutes(5)).await;
    let listed = list(
        &*store,
        ConversationQuery {
            session: Some(context.session.id),
            ..ConversationQuery::default()
        },
    )
    .await;
    assert_eq!(listed[0].line, Line::new("+15550000000"));
}

/// Each filter selects what it says, and filters together must all hold.
pub async fn each_conversation_filter_selects_its_conversations(harness: &dyn Harness) {
    let store = open_inspect(harness).await;
    let [_, bob, _] = three_people(&*store).await;
    let query = |edit: fn(&mut ConversationQuery)| {
        let mut query = ConversationQuery::default();
        edit(&mut query);
        query
    };
    let cases: Vec<(ConversationQuery, Vec<Address>)> = vec![
        (
            query(|q| q.search = Some("0000002".into())),
            vec![address(2)],
        ),
        (
            query(|q| q.search = Some("LOVELY".into())),
            vec![address(1)],
        ),
        // Replies are messages of the conversation too.
        (
            query(|q| q.search = Some("re: good".into())),
            vec![address(3)],
        ),
        (query(|q| q.search = Some("nowhere".into())), vec![]),
        (
            query(|q| q.process = Some("listening".into())),
            vec![address(1)],
        ),
        (query(|q| q.opted_out = true), vec![address(1)]),
        (
            query(|q| q.undelivered = true),
            vec![address(3), address(1)],
        ),
        (query(|q| q.due_events = true), vec![address(2)]),
        (
            query(|q| {
                q.undelivered = true;
                q.opted_out = true;
            }),
            vec![address(1)],
        ),
        (
            query(|q| {
                q.due_events = true;
                q.opted_out = true;
            }),
            vec![],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(
            addresses(&list(&*store, query.clone()).await),
            expected,
            "{query:?}"
        );
    }
    let one = list(
        &*store,
        ConversationQuery {
            session: Some(bob),
            ..ConversationQuery::default()
        },
    )
    .await;
    assert_eq!(addresses(&one), vec![address(2)]);
    // Before Bob's first check-in is due, none is.
    let early = store
        .conversations(
            &ConversationQuery {
                due_events: true,
                ..ConversationQuery::default()
            },
            t0() + minutes(29),
        )
        .await
        .expect("conversations");
    assert!(early.is_empty(), "{early:?}");
}

/// The audit keeps every entry, newest first, and an erasure does not take its entries along.
pub async fn audit_entries_are_kept_newest_first_and_outlive_an_erasure(harness: &dyn Harness) {
    let store = open_inspect(harness).await;
    let [alice, bob, _] = three_people(&*store).await;
    assert!(store.audit_log(10).await.expect("audit log").is_empty());
    let entry = |minute, action, session| AuditEntry {
        at: t0() + minutes(minute),
        actor: "login 1".into(),
        action,
        session,
    };
    let entries = [
        entry(10, AuditAction::Reveal, bob),
        entry(11, AuditAction::Export, bob),
        entry(12, AuditAction::Erase, bob),
        entry(13, AuditAction::Reveal, alice),
        entry(14, AuditAction::Rewind, alice),
        entry(15, AuditAction::Rerun, alice),
    ];
    for (i, entry) in entries.iter().enumerate() {
        store.record_audit(entry).await.expect("record");
        if i == 2 {
            let erased = store
                .erase_user(&address(2), t0() + minutes(12))
                .await
                .expect("erase");
            assert_eq!(
                erased,
                Erasure::Erased {
                    opt_out_kept: false
                }
            );
        }
    }
    let log = store.audit_log(10).await.expect("audit log");
    let newest_first: Vec<AuditEntry> = entries.iter().rev().cloned().collect();
    assert_eq!(log, newest_first);
    assert_eq!(
        store.audit_log(1).await.expect("audit log"),
        newest_first[..1]
    );
    // Another store on the same database reads the same audit.
    let other = open_inspect(harness).await;
    assert_eq!(other.audit_log(10).await.expect("audit log").len(), 6);
}
