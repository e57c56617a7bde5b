//! The background sweep, at start-up and then every `SWEEP_INTERVAL`: replies left pending
//! (by a process that stopped before Twilio took them, or whose every retry failed) are sent
//! again, sessions whose worker died with messages waiting are taken over, and due scheduled
//! events are fired, so that a soul can text first (a check-in after a silence).
//!
//! A reply is resent only once it has been pending for `OUTBOX_RETRY_AFTER`, longer than one
//! send's retry budget, so a send still under way in another process is normally not repeated;
//! within this process, replies being sent are skipped; and before resending, the outbox asks
//! Twilio whether an earlier attempt was taken. The store has no claim on outbox rows, so two
//! processes sweeping at the same instant can still both send the same stale reply, when
//! neither has finished before the other asks Twilio: a rare duplicate, judged better than a
//! lost reply.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::{App, store_error_kind};

/// Replies resent per sweep; the rest wait for the next.
const RESEND_BATCH: u32 = 100;
/// Stalled sessions taken over per sweep.
const RESUME_BATCH: u32 = 20;
/// Due events claimed per round.
const EVENT_BATCH: u32 = 20;

/// Sweeps until `stop` is cancelled.
pub(crate) async fn run(app: Arc<App>, stop: CancellationToken) {
    loop {
        sweep(&app).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(app.config.sweep_interval) => {}
        }
    }
}

/// One sweep.
pub(crate) async fn sweep(app: &Arc<App>) {
    let now = app.clock.now();
    let retry_after =
        chrono::Duration::from_std(app.config.outbox_retry_after).unwrap_or(chrono::Duration::MAX);
    let older_than = now.checked_sub_signed(retry_after).unwrap_or(now);
    match app.store.pending_deliveries(older_than, RESEND_BATCH).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => {
            let queued = app.resend(pending);
            if queued > 0 {
                tracing::info!(replies = queued, "resending pending replies");
            }
        }
        Err(error) => tracing::warn!(
            error = store_error_kind(&error),
            "could not list pending replies"
        ),
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
        Err(error) => tracing::warn!(
            error = store_error_kind(&error),
            "could not list stalled sessions"
        ),
    }
    app.spawn_due_events(EVENT_BATCH);
}
