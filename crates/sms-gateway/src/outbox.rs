//! Sending committed replies through Twilio: the gateway's [`Delivery`].
//!
//! The driver hands over each commit's replies and goes on (to the subprocesses, or the next
//! queued message); sending happens on a task per session that takes that session's batches one
//! after another, so replies reach Twilio in the order they were committed even when several
//! turns commit before the first send is done. Twilio does not order separate messages itself.
//! Across processes, a turn may commit in one gateway while the previous turn's reply is still
//! being sent by another: before sending, a batch settles every earlier reply of its session
//! that is still pending. One that nobody is sending any more (stale: pending for longer than
//! `OUTBOX_RETRY_AFTER`, so its sender died or gave up) or that waits in this session's own
//! queue is sent first, here; one another process may still be sending is waited for until it
//! is sent or stale. Replies thus reach Twilio in commit order across crashes and processes.
//!
//! Exactly once: a reply whose earlier send may have reached Twilio without its answer being
//! recorded (the process died, or the attempt timed out) is first looked for in Twilio's list
//! of messages sent to the person since it was committed, matched by text; only parts not
//! found there are sent. Twilio has no idempotency key for sending, so its own record is the
//! witness. The one confusion left: two replies to one person with word-for-word the same text,
//! the later in doubt, count as one.
//!
//! Each reply is split at sentence boundaries into messages of at most 1,600 characters, sent
//! in order; once every part is accepted, the reply is marked accepted with the last part's SID
//! (whose status callbacks then track it). A reply whose send failed for a retryable reason
//! stays pending, and so do the replies after it in the batch: the sweeper sends them again
//! later, in order, skipping parts Twilio already took. Error 21610 marks the number opted out;
//! other refusals mark the reply failed. Nothing is sent to a number recorded as opted out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use soul_engine::Clock;
use soul_engine::model::BoxFuture;
use soul_persistence::{
    Address, DeliveryStatus, DeliveryUpdate, OutboundMessage, OutboundRef, SessionId, Store,
};
use soul_turns::{Delivery, OutboundBatch};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::marks::Marks;
use crate::metrics::Metrics;
use crate::segments::{self, Encoding, MAX_BODY_CHARS};
use crate::twilio::client::{CLOCK_SKEW, OutboundSms, SendError, TwilioClient};

/// How often a batch looks again at an earlier reply another process may be sending.
const EARLIER_REPLIES_POLL: Duration = Duration::from_millis(25);

/// Sends committed replies; cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// Where this process's delivery marks are stored, together when they come together.
    marks: Marks,
    twilio: TwilioClient,
    status_callback: Option<String>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
    /// The queue of each session whose sending task is running.
    queues: Mutex<HashMap<SessionId, mpsc::UnboundedSender<OutboundBatch>>>,
    /// Replies queued or being sent by this process, which the sweeper must not send again.
    in_flight: Mutex<HashSet<Uuid>>,
    /// Replies that may have reached Twilio before (sent by a process that died, or whose
    /// attempt got no answer) → the time from which Twilio's list is searched for them.
    in_doubt: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// How long a reply stays pending before anyone may send it again.
    retry_after: Duration,
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
        retry_after: Duration,
    ) -> Self {
        Outbox {
            inner: Arc::new(Inner {
                marks: Marks::new(store.clone(), tracker.clone()),
                store,
                twilio,
                status_callback,
                metrics,
                clock,
                tracker,
                queues: Mutex::default(),
                in_flight: Mutex::default(),
                in_doubt: Mutex::default(),
                retry_after,
            }),
        }
    }

    /// Queues a pending reply found in the store (left by a process that died, or whose every
    /// retry failed), unless this process is sending it already; `true` if queued. It is
    /// looked for at Twilio before being sent.
    pub(crate) fn recover(&self, message: OutboundMessage) -> bool {
        if lock(&self.inner.in_flight).contains(&message.id) {
            return false;
        }
        lock(&self.inner.in_doubt).insert(message.id, message.created_at - CLOCK_SKEW);
        self.enqueue(OutboundBatch {
            session: message.session_id,
            address: message.address,
            messages: vec![(message.id, message.body)],
            at_commit: None,
        });
        true
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
            let mut batch = batch;
            // Replies sent meanwhile, ahead of an earlier batch, are done.
            batch
                .messages
                .retain(|(id, _)| lock(&self.in_flight).contains(id));
            if batch.messages.is_empty() {
                continue;
            }
            let ids: Vec<Uuid> = batch.messages.iter().map(|(id, _)| *id).collect();
            self.send_batch(batch).await;
            self.settled(&ids);
        }
    }

    /// Forgets replies this process is done with, sent or left pending.
    fn settled(&self, ids: &[Uuid]) {
        let mut in_flight = lock(&self.in_flight);
        let mut in_doubt = lock(&self.in_doubt);
        for id in ids {
            in_flight.remove(id);
            in_doubt.remove(id);
        }
    }

    /// Settles every reply of the batch's session stored before it and still pending: sends
    /// those nobody else is sending (stale ones, and ones queued behind this batch by the
    /// sweeper), oldest first, and waits for the rest, which another process is sending. Then
    /// says whether the person opted out, as read after the earlier replies were settled;
    /// `None` when one of them could not be sent: the batch must then stay pending too, so that
    /// nothing overtakes it. No store call when the commit found nothing earlier pending (the
    /// usual case): an earlier reply settled then stays settled.
    async fn settle_earlier_replies(&self, batch: &OutboundBatch) -> Option<bool> {
        if let Some(at_commit) = batch.at_commit
            && !at_commit.earlier_pending
        {
            return Some(at_commit.opted_out);
        }
        let ours: HashSet<Uuid> = batch.messages.iter().map(|(id, _)| *id).collect();
        let retry_after =
            chrono::Duration::from_std(self.retry_after).unwrap_or(chrono::Duration::MAX);
        let mut sent_here = HashSet::new();
        loop {
            let now = self.clock.now();
            let outbox = match self.store.session_outbox(batch.session).await {
                Ok(Some(outbox)) => outbox,
                // Better to send than to hold replies on a lookup; Twilio refuses opted-out
                // numbers. An unknown session was erased after its commit.
                Ok(None) => return Some(false),
                Err(error) => {
                    tracing::warn!(
                        error = crate::app::store_error_kind(&error),
                        "could not look for earlier replies or an opt-out; sending"
                    );
                    return Some(false);
                }
            };
            // Oldest first: what comes before our first reply was stored before it.
            let first_ours = outbox
                .pending
                .iter()
                .position(|m| ours.contains(&m.id))
                .unwrap_or(0);
            let earlier: Vec<OutboundMessage> = outbox
                .pending
                .into_iter()
                .take(first_ours)
                // One sent here that is still pending could not be marked: not again.
                .filter(|m| !sent_here.contains(&m.id))
                .collect();
            if earlier.is_empty() {
                return Some(outbox.opted_out);
            }
            let stale_before = now.checked_sub_signed(retry_after).unwrap_or(now);
            let mut sent_by_another = false;
            for earlier in earlier {
                // Only this session's queue can hold one of its replies in this process, and it
                // is behind this batch.
                let queued_here = lock(&self.in_flight).contains(&earlier.id);
                if !queued_here && earlier.created_at > stale_before {
                    sent_by_another = true;
                    break;
                }
                let id = earlier.id;
                lock(&self.in_flight).insert(id);
                lock(&self.in_doubt)
                    .entry(id)
                    .or_insert(earlier.created_at - CLOCK_SKEW);
                tracing::info!("sending an earlier pending reply first");
                let end = if outbox.opted_out {
                    self.metrics.outbound.inc("suppressed");
                    self.mark(id, DeliveryStatus::Failed, None, Some("opted out"))
                        .await;
                    BatchEnd::Done
                } else {
                    self.send_reply(&earlier.address, id, &earlier.body).await
                };
                self.settled(&[id]);
                sent_here.insert(id);
                if matches!(end, BatchEnd::RetryLater) {
                    return None;
                }
            }
            if sent_by_another {
                tokio::time::sleep(EARLIER_REPLIES_POLL).await;
            }
        }
    }

    async fn send_batch(&self, batch: OutboundBatch) {
        let Some(opted_out) = self.settle_earlier_replies(&batch).await else {
            tracing::info!("an earlier reply could not be sent; left pending behind it");
            return;
        };
        if opted_out {
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

    /// Sends one reply, in as many messages as its length needs; a reply in doubt only in the
    /// parts Twilio does not have already.
    async fn send_reply(&self, address: &Address, id: Uuid, text: &str) -> BatchEnd {
        let parts = segments::split_reply(text, MAX_BODY_CHARS);
        let in_doubt_since = lock(&self.in_doubt).get(&id).copied();
        let mut last_sid = None;
        for part in &parts {
            if let Some(since) = in_doubt_since {
                match self.twilio.sent_since(address.as_str(), part, since).await {
                    Ok(Some(sid)) => {
                        self.metrics.outbound.inc("found_sent");
                        last_sid = Some(sid);
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        // Sending blind could repeat the message; the sweeper asks again later.
                        tracing::warn!(%error, "could not check whether a reply was sent");
                        self.metrics.outbound.inc("retry_later");
                        return BatchEnd::RetryLater;
                    }
                }
            }
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
        if let Err(error) = self.marks.store(update).await {
            // An accepted reply left pending may be sent again after a restart.
            tracing::warn!(
                %id,
                status = status.as_str(),
                error,
                "could not record a delivery status"
            );
        }
    }
}
