//! Several workers on one database at once: exactly once and in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;

use super::Harness;
use super::fixtures::{address, bodies, inbound, minutes, open, reply, settings, t0};
use crate::{BeginOutcome, Store, TurnCommit, TurnContext, TurnSettings};

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
