//! The outbox: delivery statuses, what a commit tells its sender, and the claims that let one
//! process at a time send a reply.

use std::sync::Arc;

use chrono::Duration;
use serde_json::json;
use uuid::Uuid;

use super::Harness;
use super::fixtures::{
    address, commit, inbound, minutes, open, reply, settings, start, t0, turn, unclaimed,
};
use crate::{
    BeginOutcome, Changes, DeliveryStatus, DeliveryUpdate, OutboundMessage, OutboundRef,
    OutboxAtCommit, SessionId, TurnCommit, TurnContext, TurnSettings,
};

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
        .expect("exists")[0]
        .clone();
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
        .expect("exists")[0]
        .clone();
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
