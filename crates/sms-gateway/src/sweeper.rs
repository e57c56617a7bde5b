//! The background sweep, at start-up and then every `SWEEP_INTERVAL`: replies left pending
//! (by a process that stopped before Twilio took them, or whose every retry failed) are sent
//! again, sessions whose worker died with messages waiting are taken over, and due scheduled
//! events are fired, so that a soul can text first (a check-in after a silence).
//!
//! A reply is sent again only once its claim has expired: the claim its commit took for its
//! sender, or the one an earlier sweep took, each for `OUTBOX_RETRY_AFTER`. The sweep claims
//! such replies in the store for this process, so two processes sweeping at the same instant
//! get disjoint sets and nobody else sends what this one claimed until its claim expires (a live
//! sender stops short of its claim's end, see `outbox.rs`). Before resending, the outbox asks
//! Twilio whether an earlier attempt was taken.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Replies claimed and resent per sweep; the rest wait for the next.
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
