//! The background sweep, at start-up and then every `SWEEP_INTERVAL`: replies left pending
//! (by a process that stopped before Twilio took them, or whose every retry failed) are sent
//! again, sessions whose worker died with messages waiting are taken over, and due scheduled
//! events are fired, so that a soul can text first (a check-in after a silence). With
//! `RETENTION_DAYS` set, the first sweep and then one sweep an hour also delete the messages
//! older than that (`Store::delete_messages_older_than`, with every other copy of their text).
//!
//! A reply is sent again only once its claim has expired: the claim its commit took for its
//! sender, or the one an earlier sweep took, each for `OUTBOX_RETRY_AFTER`. The sweep claims
//! such replies in the store for this process, so two processes sweeping at the same instant
//! get disjoint sets and nobody else sends what this one claimed until its claim expires (a live
//! sender stops short of its claim's end, see `outbox.rs`). Before resending, the outbox asks
//! Twilio whether an earlier attempt was taken.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Replies claimed and resent per sweep; the rest wait for the next.
const RESEND_BATCH: u32 = 100;
/// Stalled sessions taken over per sweep.
const RESUME_BATCH: u32 = 20;
/// Due events claimed per round.
const EVENT_BATCH: u32 = 20;

/// How often retention runs at most. Its unit is the day: an hour keeps "older than N days"
/// true to the hour, while a sweep every few seconds would spend a delete on each table for
/// almost nothing. Every gateway sharing a store runs it; the deletes are the same.
const RETENTION_EVERY: Duration = Duration::from_secs(60 * 60);

/// When retention is due: at the first sweep, then once [`RETENTION_EVERY`] has passed since
/// the last run.
#[derive(Debug, Default)]
struct RetentionSchedule {
    last: Option<Instant>,
}

impl RetentionSchedule {
    /// Whether a run is due at `now`; a due run is taken to happen then.
    fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= RETENTION_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Sweeps until `stop` is cancelled.
pub(crate) async fn run(app: Arc<App>, stop: CancellationToken) {
    let mut retention = RetentionSchedule::default();
    loop {
        sweep(&app).await;
        if let Some(days) = app.config.retention_days
            && retention.due(Instant::now())
        {
            retain(&app, days).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(app.config.sweep_interval) => {}
        }
    }
}

/// One sweep.
pub(crate) async fn sweep(app: &Arc<App>) {
    let now = app.clock.now();
    let claim_until = app.outbox.claim_until(now);
    match app
        .store
        .claim_pending_deliveries(now, claim_until, RESEND_BATCH)
        .await
    {
        Ok(claimed) if claimed.is_empty() => {}
        Ok(claimed) => {
            let queued = app.resend(claimed, claim_until);
            if queued > 0 {
                tracing::info!(replies = queued, "resending pending replies");
            }
        }
        Err(error) => tracing::warn!(error = error.kind(), "could not claim pending replies"),
    }
    match app.store.stalled_sessions(now, RESUME_BATCH).await {
        Ok(sessions) => {
            for session in sessions {
                // Sessions this process enqueued and is about to start are listed too.
                if app.spawn_resume(session) {
                    tracing::info!(%session, "taking over a stalled session");
                }
            }
        }
        Err(error) => tracing::warn!(error = error.kind(), "could not list stalled sessions"),
    }
    app.spawn_due_events(EVENT_BATCH);
}

/// Deletes the messages older than `days` days, of everyone.
async fn retain(app: &App, days: NonZeroU32) {
    match app
        .store
        .delete_messages_older_than(None, days.get(), app.clock.now())
        .await
    {
        Ok(deleted) => tracing::info!(deleted, days, "retention: old messages deleted"),
        Err(error) => tracing::warn!(
            error = error.kind(),
            "retention failed; it is tried again in an hour"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_runs_at_the_first_sweep_then_at_most_once_an_hour() {
        let start = Instant::now();
        let mut schedule = RetentionSchedule::default();
        assert!(schedule.due(start));
        assert!(!schedule.due(start + Duration::from_secs(15)));
        assert!(!schedule.due(start + RETENTION_EVERY - Duration::from_millis(1)));
        assert!(schedule.due(start + RETENTION_EVERY));
        assert!(!schedule.due(start + RETENTION_EVERY + Duration::from_secs(15)));
        assert!(schedule.due(start + RETENTION_EVERY * 3));
    }
}
