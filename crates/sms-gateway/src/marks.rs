//! Delivery marks stored together.
//!
//! Every reply Twilio takes (or refuses for good) is marked in the store before its sender
//! forgets it. Marked one by one, that is a round trip and a transaction per reply, a third of a
//! busy gateway's round trips. Here the marks that arrive while earlier ones are being stored
//! wait and go together in the next call (`Store::update_deliveries`): a quiet gateway still
//! stores each mark at once, and a busy one pays one call for many. Each sender waits until its
//! own mark is stored, as it waited for its own call before, so a reply is never forgotten
//! while its mark is still on the way.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use soul_persistence::{DeliveryUpdate, Store};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// The most marks one call stores: a bound on one statement's size and duration.
const MOST_PER_CALL: usize = 256;

/// What became of one mark: whether it moved the status, or the kind of the store's error.
pub(crate) type Marked = Result<bool, &'static str>;

/// Stores delivery marks, together when they arrive together; cheap to clone.
#[derive(Clone)]
pub(crate) struct Marks {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    tracker: TaskTracker,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(DeliveryUpdate, oneshot::Sender<Marked>)>,
    /// A task is storing marks, and takes the waiting ones before it stops.
    storing: bool,
}

impl Marks {
    /// Marks stored in `store` by tasks on `tracker`.
    pub(crate) fn new(store: Arc<dyn Store>, tracker: TaskTracker) -> Self {
        Marks {
            inner: Arc::new(Inner {
                store,
                tracker,
                queue: Mutex::default(),
            }),
        }
    }

    /// Stores `update`, with whatever other marks wait; returns once it is stored.
    pub(crate) async fn store(&self, update: DeliveryUpdate) -> Marked {
        let (sender, receiver) = oneshot::channel();
        let start = {
            let mut queue = self.inner.lock();
            queue.waiting.push((update, sender));
            !std::mem::replace(&mut queue.storing, true)
        };
        if start {
            // A task of its own, not this caller's future: a caller that is dropped must not
            // strand the marks queued behind its own.
            let inner = self.inner.clone();
            self.inner
                .tracker
                .spawn(async move { inner.store_waiting().await });
        }
        receiver.await.unwrap_or(Err("mark not stored"))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is a plain list and a flag, consistent after any panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the waiting marks, a call at a time, until none waits.
    async fn store_waiting(&self) {
        loop {
            let batch: Vec<_> = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.storing = false;
                    return;
                }
                let take = queue.waiting.len().min(MOST_PER_CALL);
                queue.waiting.drain(..take).collect()
            };
            let (updates, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match self.store.update_deliveries(&updates).await {
                Ok(applied) => {
                    for (sender, applied) in senders.into_iter().zip(applied) {
                        // A sender that stopped waiting needs no answer.
                        let _ = sender.send(Ok(applied));
                    }
                }
                Err(error) => {
                    let kind = error.kind();
                    for sender in senders {
                        let _ = sender.send(Err(kind));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use soul_engine::{Memory, Role};
    use soul_persistence::{
        Address, BeginOutcome, DeliveryStatus, Inbound, OutboundRef, Processes, SqliteStore,
        TurnCommit, TurnSettings,
    };
    use uuid::Uuid;

    use super::*;

    fn accepted(id: Uuid, sid: &str) -> DeliveryUpdate {
        DeliveryUpdate {
            target: OutboundRef::Id(id),
            status: DeliveryStatus::Accepted,
            provider_id: Some(sid.to_owned()),
            error: None,
            at: Utc::now(),
        }
    }

    /// Many senders marking at once: every mark is stored, and each sender hears its own flag
    /// (a mark of a reply nobody stored moves nothing), however the marks were grouped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn marks_sent_at_once_are_all_stored_each_with_its_own_answer() {
        let dir = tempfile::TempDir::new().expect("a temporary directory");
        let store = Arc::new(
            SqliteStore::open(dir.path().join("soul.db"))
                .await
                .expect("open the store"),
        );
        let settings = TurnSettings::new("pip", Processes::new("initial", ["initial"]));
        let now = Utc::now();
        let inbound = Inbound {
            from: Address::new("+15550000001"),
            line: Default::default(),
            persona: None,
            body: "hi".to_owned(),
            external_id: None,
            received_at: now,
            opt_out: None,
        };
        let BeginOutcome::Started(context) = store
            .begin_turn(&inbound, &settings, now)
            .await
            .expect("begin")
        else {
            panic!("expected a started turn");
        };
        let mut commit = TurnCommit::new(&context);
        commit.replies = (0..60)
            .map(|n| Memory::new(Role::Assistant, format!("reply {n}"), now))
            .collect();
        let stored = store
            .commit_turn(&commit, &settings, now)
            .await
            .expect("commit")
            .outbound;

        let tracker = TaskTracker::new();
        let marks = Marks::new(store.clone(), tracker.clone());
        let mut senders = tokio::task::JoinSet::new();
        // Stored replies and unknown ones alternate, so that a group holds both.
        let targets = stored
            .iter()
            .flat_map(|id| [(*id, true), (Uuid::new_v4(), false)]);
        for (n, (id, known)) in targets.enumerate() {
            let marks = marks.clone();
            let update = accepted(id, &format!("SM{n}"));
            senders.spawn(async move { (marks.store(update).await, known) });
        }
        let answers = senders.join_all().await;
        assert_eq!(answers.len(), 120);
        for (answer, known) in answers {
            assert_eq!(answer, Ok(known));
        }
        // Long after the commit's claim: any reply still pending would be handed out.
        let later = now + chrono::Duration::days(1);
        assert!(
            store
                .claim_pending_deliveries(later, later, 100)
                .await
                .expect("pending")
                .is_empty(),
            "every stored reply marked"
        );
        tracker.close();
        tracker.wait().await;
    }
}
