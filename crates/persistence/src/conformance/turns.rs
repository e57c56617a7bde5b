//! A turn's course: duplicates, the per-session queue and its hand-over by a commit, enqueued
//! messages and their resume, leases and their takeover, attempt counts, the correction of an
//! unregistered process, and subprocess commits refused after a newer turn.

use chrono::Duration;
use serde_json::json;

use super::Harness;
use super::fixtures::{
    address, bodies, commit, inbound, minutes, open, reply, set, settings, start, t0, turn,
};
use crate::{
    BeginOutcome, Changes, ProcessState, Processes, StoreError, SubprocessCommit,
    SubprocessOutcome, TurnCommit,
};

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
        record: Default::default(),
        version: first.version(),
        inbound_id: first.inbound.id,
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
