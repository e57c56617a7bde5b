//! Sending committed replies through Twilio: the gateway's [`Delivery`].
//!
//! The driver hands over each commit's replies and goes on (to the subprocesses, or the next
//! queued message); sending happens on a task per session that takes that session's batches one
//! after another, so replies reach Twilio in the order they were committed even when several
//! turns commit before the first send is done. Twilio does not order separate messages itself.
//!
//! A reply is sent only by the process that holds its claim in the store, and only while it
//! holds it. The commit stores its replies claimed for the process that committed them, for
//! `OUTBOX_RETRY_AFTER` ([`OutboxAtCommit::claimed_until`]), so a turn's own send asks the store
//! nothing more; the sweeper claims the replies whose claim expired, their sender dead or given
//! up ([`Outbox::recover`]); a claim, once taken, is nobody else's until it expires. A sender
//! makes its Twilio requests for a reply only within its claim, less a margin, and cuts off one
//! still running there, so a claim cannot expire under a live send: whatever was not finished
//! stays pending for the next claim, this process's or another's.
//!
//! Across processes, a turn may commit in one gateway while the previous turn's reply is still
//! being sent by another: before sending, a batch settles every earlier reply of its session
//! that is still pending, claiming those whose claim expired ([`Store::claim_session_outbox`]).
//! One this process holds (claimed so, or waiting in this session's own queue) is sent first,
//! here; one another process holds is waited for until it is sent or its claim expires. Replies
//! thus reach Twilio in commit order across crashes and processes.
//!
//! Exactly once: a reply whose earlier send may have reached Twilio without its answer being
//! recorded (its claim passed on from a process that died or was cut off, or an attempt timed
//! out) is first looked for in Twilio's list of messages sent to the person since it was
//! committed, matched by text; only parts not found there are sent. Twilio has no idempotency
//! key for sending, so its own record is the witness; the claim makes sure nobody else sends
//! while that question is asked. The one confusion left: two replies to one person with
//! word-for-word the same text, the later in doubt, count as one.
//!
//! Each reply is split at sentence boundaries into messages of at most 1,600 characters, sent
//! in order; once every part is accepted, the reply is marked accepted with the last part's SID
//! (whose status callbacks then track it). A reply whose send failed for a retryable reason
//! stays pending, and so do the replies after it in the batch: the sweeper claims them again
//! once their claims expire and sends them, in order, skipping parts Twilio already took. Error
//! 21610 marks the number opted out; other refusals mark the reply failed. Nothing is sent to a
//! number recorded as opted out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use soul_engine::Clock;
use soul_engine::model::BoxFuture;
#[cfg(doc)]
use soul_persistence::OutboxAtCommit;
use soul_persistence::{
    Address, DeliveryStatus, DeliveryUpdate, Line, OutboundMessage, OutboundRef, SessionId, Store,
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

/// The end of a claim its holder leaves unused, at most: a request cut off when the claim runs
/// out may still be taken by Twilio a moment later, and another host's clock may run a little
/// ahead of this one's. A quarter of a shorter claim.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

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
    /// Replies queued or being sent by this process → until when its claim on each lasts.
    in_flight: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// Replies that may have reached Twilio before (sent by a process that died, or whose
    /// attempt got no answer) → the time from which Twilio's list is searched for them.
    in_doubt: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// How long this process claims the replies it takes from the store (`OUTBOX_RETRY_AFTER`).
    claim_for: chrono::Duration,
    /// How much of the end of a claim is left unused ([`CLAIM_MARGIN`]).
    margin: chrono::Duration,
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
    /// recording results in `store`, claiming the replies it takes from the store for
    /// `claim_for`; its tasks run on `tracker`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        twilio: TwilioClient,
        status_callback: Option<String>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        tracker: TaskTracker,
        claim_for: Duration,
    ) -> Self {
        let margin = CLAIM_MARGIN.min(claim_for / 4);
        let duration = |std| chrono::Duration::from_std(std).unwrap_or(chrono::Duration::MAX);
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
                claim_for: duration(claim_for),
                margin: duration(margin),
            }),
        }
    }

    /// Until when a claim taken at `now` lasts: what the sweeper asks the store for.
    pub(crate) fn claim_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.inner.claim_until(now)
    }

    /// Queues a pending reply the sweeper claimed until `claimed_until` (its sender died, or
    /// every retry failed), unless this process has it queued already; `true` if queued. A reply
    /// queued here whose claim had run out is this process's again, until `claimed_until`. Either
    /// way it is looked for at Twilio before being sent: another process may have held it since.
    pub(crate) fn recover(&self, message: OutboundMessage, claimed_until: DateTime<Utc>) -> bool {
        if self.inner.hold(&message, claimed_until) {
            return false;
        }
        self.inner.queue(OutboundBatch {
            session: message.session_id,
            address: message.address,
            line: message.line,
            messages: vec![(message.id, message.body)],
            at_commit: None,
        });
        true
    }

    /// Queues `batch` behind the session's earlier batches; returns at once. Its replies are
    /// this process's to send until their commit's claim runs out.
    pub(crate) fn enqueue(&self, batch: OutboundBatch) {
        // Without the commit's word, the replies are held once claimed before sending.
        let claimed_until = batch
            .at_commit
            .map_or(DateTime::<Utc>::MIN_UTC, |at_commit| {
                at_commit.claimed_until
            });
        {
            let mut in_flight = lock(&self.inner.in_flight);
            for (id, _) in &batch.messages {
                in_flight.insert(*id, claimed_until);
            }
        }
        self.inner.queue(batch);
    }
}

impl Delivery for Outbox {
    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()> {
        self.enqueue(batch);
        Box::pin(async {})
    }
}

impl Inner {
    fn claim_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_add_signed(self.claim_for).unwrap_or(now)
    }

    /// Records that this process holds the claim on `message` until `until` (its claim had
    /// expired, so it is in doubt); whether this process had it queued already.
    fn hold(&self, message: &OutboundMessage, until: DateTime<Utc>) -> bool {
        lock(&self.in_doubt)
            .entry(message.id)
            .or_insert(message.created_at - CLOCK_SKEW);
        let mut in_flight = lock(&self.in_flight);
        match in_flight.get_mut(&message.id) {
            Some(held) => {
                *held = (*held).max(until);
                true
            }
            None => {
                in_flight.insert(message.id, until);
                false
            }
        }
    }

    /// How long this process may still spend on Twilio requests for reply `id`: until its claim
    /// runs out, less the margin; `None` when it does not hold it, or no time is left.
    fn time_left(&self, id: Uuid) -> Option<Duration> {
        let held_until = *lock(&self.in_flight).get(&id)?;
        let left = held_until.signed_duration_since(self.clock.now()) - self.margin;
        left.to_std().ok().filter(|left| !left.is_zero())
    }

    /// `request` for reply `id`, if this process's claim on it leaves time to make it, cut off
    /// where it stands when that time is up; `None` then.
    async fn within_claim<T>(&self, id: Uuid, request: impl Future<Output = T>) -> Option<T> {
        let left = self.time_left(id)?;
        tokio::time::timeout(left, request).await.ok()
    }

    /// Queues `batch`, whose replies are in `in_flight`, behind the session's earlier batches.
    fn queue(self: &Arc<Self>, batch: OutboundBatch) {
        let session = batch.session;
        let mut queues = lock(&self.queues);
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
        let inner = self.clone();
        let span = tracing::info_span!("send", session = %session);
        self.tracker
            .spawn(async move { inner.drain(session, receiver).await }.instrument(span));
    }

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
                .retain(|(id, _)| lock(&self.in_flight).contains_key(id));
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

    /// Settles every reply of the batch's session stored before it and still pending: claims
    /// those whose claim expired, sends those this process holds (claimed so, or queued behind
    /// this batch), oldest first, and waits for the rest, which another process holds. Then says
    /// whether the person opted out, as read after the earlier replies were settled; `None` when
    /// one of them could not be sent: the batch must then stay pending too, so that nothing
    /// overtakes it. No store call when the commit found nothing earlier pending (the usual
    /// case): an earlier reply settled then stays settled.
    async fn settle_earlier_replies(&self, batch: &OutboundBatch) -> Option<bool> {
        if let Some(at_commit) = batch.at_commit
            && !at_commit.earlier_pending
        {
            return Some(at_commit.opted_out);
        }
        let mut claimed_here = Vec::new();
        let settled = self.claim_earlier_replies(batch, &mut claimed_here).await;
        // Earlier replies claimed here and not sent (a reply before them could not be) are let
        // go: whoever claims them once their claim expires sends them, this process included.
        self.settled(&claimed_here);
        settled
    }

    /// [`settle_earlier_replies`](Self::settle_earlier_replies) past the commit's word: adds to
    /// `claimed_here` the earlier replies it claimed that this process did not hold before.
    async fn claim_earlier_replies(
        &self,
        batch: &OutboundBatch,
        claimed_here: &mut Vec<Uuid>,
    ) -> Option<bool> {
        let ours: HashSet<Uuid> = batch.messages.iter().map(|(id, _)| *id).collect();
        let through = batch.messages.last()?.0;
        let mut sent_here = HashSet::new();
        loop {
            let now = self.clock.now();
            let claim_until = self.claim_until(now);
            let outbox = match self
                .store
                .claim_session_outbox(batch.session, through, now, claim_until)
                .await
            {
                Ok(Some(outbox)) => outbox,
                // Better to send than to hold replies on a lookup; Twilio refuses opted-out
                // numbers. An unknown session was erased after its commit. Either way only
                // what this process holds is sent.
                Ok(None) => return Some(false),
                Err(error) => {
                    tracing::warn!(
                        error = error.kind(),
                        "could not look for earlier replies or an opt-out; sending"
                    );
                    return Some(false);
                }
            };
            // Claimed by this call, this batch's own replies included when their commit's
            // claim ran out meanwhile: this process's now, in doubt.
            for message in &outbox.pending {
                if outbox.claimed.contains(&message.id) && !self.hold(message, claim_until) {
                    claimed_here.push(message.id);
                }
            }
            // Oldest first: what comes before our first reply was stored before it. None of
            // ours pending: every one listed is earlier.
            let first_ours = outbox
                .pending
                .iter()
                .position(|m| ours.contains(&m.id))
                .unwrap_or(outbox.pending.len());
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
            let mut held_elsewhere = false;
            for earlier in earlier {
                // Another process holds it, or this one's claim is about to run out: wait
                // until it is sent, or claimable.
                if self.time_left(earlier.id).is_none() {
                    held_elsewhere = true;
                    break;
                }
                let id = earlier.id;
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
                    self.send_reply(&earlier.address, &earlier.line, id, &earlier.body)
                        .await
                };
                self.settled(&[id]);
                sent_here.insert(id);
                if matches!(end, BatchEnd::RetryLater) {
                    return None;
                }
            }
            if held_elsewhere {
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
            match self
                .send_reply(&batch.address, &batch.line, *id, text)
                .await
            {
                BatchEnd::Done => {}
                BatchEnd::RetryLater => {
                    tracing::info!("a reply was not sent; left pending with the rest of its batch");
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
    /// parts Twilio does not have already. Every request is made within this process's claim on
    /// the reply: when that runs out, what is left stays pending for the next claim.
    async fn send_reply(&self, address: &Address, line: &Line, id: Uuid, text: &str) -> BatchEnd {
        let parts = segments::split_reply(text, MAX_BODY_CHARS);
        let mut last_sid = None;
        for part in &parts {
            // Asked again for each part: a claim taken again meanwhile leaves the reply in doubt.
            let in_doubt_since = lock(&self.in_doubt).get(&id).copied();
            if let Some(since) = in_doubt_since {
                let Some(found) = self
                    .within_claim(
                        id,
                        self.twilio.sent_since(address.as_str(), line, part, since),
                    )
                    .await
                else {
                    return self.claim_ran_out();
                };
                match found {
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
                line: line.clone(),
                body: part.clone(),
                status_callback: self.status_callback.clone(),
            };
            let Some(sent) = self.within_claim(id, self.twilio.send(&message)).await else {
                return self.claim_ran_out();
            };
            match sent {
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
                        tracing::warn!(error = error.kind(), "could not record the opt-out");
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

    /// This process's claim on a reply ran out before it was sent: whatever Twilio took of it
    /// is found in its list by the next claim's holder, which sends the rest.
    fn claim_ran_out(&self) -> BatchEnd {
        tracing::info!("the claim on a reply ran out before it was sent; left pending");
        self.metrics.outbound.inc("retry_later");
        BatchEnd::RetryLater
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
