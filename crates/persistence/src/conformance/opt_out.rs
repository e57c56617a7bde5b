//! Opting out: the flag, and the keywords (STOP, START) that change it with their message.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Harness;
use super::fixtures::{address, bodies, commit, inbound, minutes, open, settings, start, t0, turn};
use crate::{Address, BeginOutcome, Changes, Inbound, Store, TurnCommit};

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
