//! Sending committed replies through Twilio: the gateway's [`Delivery`].
//!
//! The driver hands over each commit's replies and goes on (to the subprocesses, or the next
//! queued message); sending happens on a task per session that takes that session's batches one
//! after another, so replies reach Twilio in the order they were committed even when several
//! turns commit before the first send is done. Twilio does not order separate messages itself.
//! Across processes, a turn may commit in one gateway while the previous turn's reply is still
//! being sent by another: before sending, a batch waits (for at most one send's retry budget)
//! until no earlier reply of its session is pending.
//!
//! Each reply is split at sentence boundaries into messages of at most 1,600 characters, sent
//! in order; once every part is accepted, the reply is marked accepted with the last part's SID
//! (whose status callbacks then track it). A reply whose send failed for a retryable reason
//! stays pending, and so do the replies after it in the batch: the sweeper sends them again
//! later, in order. Resending repeats any parts already accepted; a duplicate is judged better
//! than a lost reply. Error 21610 marks the number opted out; other refusals mark the reply
//! failed. Nothing is sent to a number recorded as opted out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use soul_engine::Clock;
use soul_engine::model::BoxFuture;
use soul_persistence::{Address, DeliveryStatus, DeliveryUpdate, OutboundRef, SessionId, Store};
use soul_turns::{Delivery, OutboundBatch};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::segments::{self, Encoding, MAX_BODY_CHARS};
use crate::twilio::client::{OutboundSms, SendError, TwilioClient};

/// The longest a batch waits for an earlier reply of its session that another process is
/// sending: that process's retry budget ends by then, and a reply stuck longer (its sender
/// died) is left to the sweeper rather than holding every later one.
const EARLIER_REPLIES_WAIT: Duration = Duration::from_secs(30);
/// How often the wait looks again.
const EARLIER_REPLIES_POLL: Duration = Duration::from_millis(25);
/// Pending replies read when looking for earlier ones; a batch beyond them does not wait.
const PENDING_SCAN: u32 = 500;

/// Sends committed replies; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    twilio: TwilioClient,
    status_callback: Option<String>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
    /// The queue of each session whose sending task is running.
    queues: Mutex<HashMap<SessionId, mpsc::UnboundedSender<OutboundBatch>>>,
    /// Replies queued or being sent by this process, which the sweeper must not send again.
    in_flight: Mutex<HashSet<Uuid>>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("twilio", &self.inner.twilio)
            .field("status_callback", &self.inner.status_callback)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is a plain map or set, consistent after any panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of one batch.
enum BatchEnd {
    /// Every reply was accepted or failed for good.
    Done,
    /// Sending stopped at a retryable failure; the rest stays pending.
    RetryLater,
    /// The number opted out; the rest was marked failed.
    OptedOut,
}

impl Outbox {
    /// An outbox sending through `twilio`, asking for status callbacks at `status_callback`,
    /// recording results in `store`; its tasks run on `tracker`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        twilio: TwilioClient,
        status_callback: Option<String>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        tracker: TaskTracker,
    ) -> Self {
        Outbox {
            inner: Arc::new(Inner {
                store,
                twilio,
                status_callback,
                metrics,
                clock,
                tracker,
                queues: Mutex::default(),
                in_flight: Mutex::default(),
            }),
        }
    }

    /// Whether this process is sending (or about to send) the reply `id`.
    pub(crate) fn is_in_flight(&self, id: Uuid) -> bool {
        lock(&self.inner.in_flight).contains(&id)
    }

    /// Queues `batch` behind the session's earlier batches; returns at once.
    pub(crate) fn enqueue(&self, batch: OutboundBatch) {
        {
            let mut in_flight = lock(&self.inner.in_flight);
            in_flight.extend(batch.messages.iter().map(|(id, _)| *id));
        }
        let session = batch.session;
        let mut queues = lock(&self.inner.queues);
        // The worker removes its queue under this lock once it is empty, so a queue found here
        // is still drained.
        let batch = match queues.get(&session) {
            Some(queue) => match queue.send(batch) {
                Ok(()) => return,
                Err(mpsc::error::SendError(batch)) => batch,
            },
            None => batch,
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        // The receiver is alive: this cannot fail.
        let _ = queue.send(batch);
        queues.insert(session, queue);
        let inner = self.inner.clone();
        let span = tracing::info_span!("send", session = %session);
        self.inner
            .tracker
            .spawn(async move { inner.drain(session, receiver).await }.instrument(span));
    }
}

impl Delivery for Outbox {
    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()> {
        self.enqueue(batch);
        Box::pin(async {})
    }
}

impl Inner {
    /// Sends the session's batches until its queue is empty.
    async fn drain(
        &self,
        session: SessionId,
        mut receiver: mpsc::UnboundedReceiver<OutboundBatch>,
    ) {
        loop {
            let batch = {
                let mut queues = lock(&self.queues);
                match receiver.try_recv() {
                    Ok(batch) => batch,
                    Err(_) => {
                        queues.remove(&session);
                        return;
                    }
                }
            };
            let ids: Vec<Uuid> = batch.messages.iter().map(|(id, _)| *id).collect();
            self.send_batch(batch).await;
            let mut in_flight = lock(&self.in_flight);
            for id in ids {
                in_flight.remove(&id);
            }
        }
    }

    /// Waits, up to [`EARLIER_REPLIES_WAIT`], until no reply of the batch's session stored
    /// before it is pending: the previous turn may have committed in another process, which may
    /// still be sending its reply.
    async fn wait_for_earlier_replies(&self, batch: &OutboundBatch) {
        let ours: HashSet<Uuid> = batch.messages.iter().map(|(id, _)| *id).collect();
        let deadline = Instant::now() + EARLIER_REPLIES_WAIT;
        loop {
            let pending = match self
                .store
                .pending_deliveries(self.clock.now(), PENDING_SCAN)
                .await
            {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(
                        error = crate::app::store_error_kind(&error),
                        "could not look for earlier replies; sending"
                    );
                    return;
                }
            };
            // Oldest first: what comes before our first reply was stored before it.
            let Some(first_ours) = pending.iter().position(|m| ours.contains(&m.id)) else {
                return;
            };
            let earlier = pending[..first_ours]
                .iter()
                .any(|m| m.session_id == batch.session);
            if !earlier {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!("an earlier reply is still pending; sending this one anyway");
                return;
            }
            tokio::time::sleep(EARLIER_REPLIES_POLL).await;
        }
    }

    async fn send_batch(&self, batch: OutboundBatch) {
        self.wait_for_earlier_replies(&batch).await;
        match self.store.session(&batch.address).await {
            Ok(Some(session)) if session.opted_out => {
                for (id, _) in &batch.messages {
                    self.metrics.outbound.inc("suppressed");
                    self.mark(*id, DeliveryStatus::Failed, None, Some("opted out"))
                        .await;
                }
                tracing::info!(
                    replies = batch.messages.len(),
                    "not sent: the person opted out"
                );
                return;
            }
            Ok(_) => {}
            // Better to send than to hold replies on a lookup; Twilio refuses opted-out numbers.
            Err(error) => tracing::warn!(
                error = crate::app::store_error_kind(&error),
                "could not check the opt-out before sending"
            ),
        }
        let mut replies = batch.messages.iter();
        for (id, text) in replies.by_ref() {
            match self.send_reply(&batch.address, *id, text).await {
                BatchEnd::Done => {}
                BatchEnd::RetryLater => {
                    tracing::info!("send failed; left pending for the outbox sweeper");
                    return;
                }
                BatchEnd::OptedOut => break,
            }
        }
        // Only after 21610: the remaining replies go to nobody.
        for (id, _) in replies {
            self.metrics.outbound.inc("suppressed");
            self.mark(*id, DeliveryStatus::Failed, None, Some("opted out"))
                .await;
        }
    }

    /// Sends one reply, in as many messages as its length needs.
    async fn send_reply(&self, address: &Address, id: Uuid, text: &str) -> BatchEnd {
        let parts = segments::split_reply(text, MAX_BODY_CHARS);
        let mut last_sid = None;
        for part in &parts {
            let message = OutboundSms {
                to: address.as_str().to_owned(),
                body: part.clone(),
                status_callback: self.status_callback.clone(),
            };
            match self.twilio.send(&message).await {
                Ok(accepted) => {
                    let encoding = match segments::encoding(part) {
                        Encoding::Gsm7 => "gsm7",
                        Encoding::Ucs2 => "ucs2",
                    };
                    let count = u64::try_from(segments::segment_count(part)).unwrap_or(u64::MAX);
                    self.metrics.segments.add(encoding, count);
                    last_sid = Some(accepted.sid);
                }
                Err(SendError::OptedOut) => {
                    self.metrics.outbound.inc("opted_out");
                    tracing::info!("Twilio says the person opted out (21610); recording it");
                    let now = self.clock.now();
                    if let Err(error) = self.store.set_opt_out(address, true, now).await {
                        tracing::warn!(
                            error = crate::app::store_error_kind(&error),
                            "could not record the opt-out"
                        );
                    }
                    self.mark(id, DeliveryStatus::Failed, None, Some("twilio error 21610"))
                        .await;
                    return BatchEnd::OptedOut;
                }
                Err(error) if error.is_retryable() => {
                    self.metrics.outbound.inc("retry_later");
                    return BatchEnd::RetryLater;
                }
                Err(error) => {
                    self.metrics.outbound.inc("failed");
                    tracing::warn!(%error, "Twilio refused a reply; marking it failed");
                    let reason = match &error {
                        SendError::Permanent {
                            code: Some(code), ..
                        } => format!("twilio error {code}"),
                        SendError::Permanent { status, .. }
                        | SendError::InvalidResponse { status } => format!("HTTP {status}"),
                        SendError::Retryable { .. } | SendError::OptedOut => error.to_string(),
                    };
                    self.mark(id, DeliveryStatus::Failed, None, Some(&reason))
                        .await;
                    return BatchEnd::Done;
                }
            }
        }
        if last_sid.is_some() {
            self.metrics.outbound.inc("accepted");
            self.mark(id, DeliveryStatus::Accepted, last_sid, None)
                .await;
        } else {
            // A blank reply: nothing to send, and nothing to send again.
            self.mark(id, DeliveryStatus::Failed, None, Some("blank reply"))
                .await;
        }
        BatchEnd::Done
    }

    async fn mark(
        &self,
        id: Uuid,
        status: DeliveryStatus,
        provider_id: Option<String>,
        error: Option<&str>,
    ) {
        let update = DeliveryUpdate {
            target: OutboundRef::Id(id),
            status,
            provider_id,
            error: error.map(str::to_owned),
            at: self.clock.now(),
        };
        if let Err(error) = self.store.update_delivery(&update).await {
            // An accepted reply left pending may be sent again after a restart.
            tracing::warn!(
                %id,
                status = status.as_str(),
                error = crate::app::store_error_kind(&error),
                "could not record a delivery status"
            );
        }
    }
}
