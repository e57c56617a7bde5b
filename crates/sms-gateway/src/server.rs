//! `sms-gateway serve`: listen, sweep, and shut down gracefully.
//!
//! On SIGTERM (or Ctrl-C) the listener closes and requests in progress finish; then running
//! turns and sends get up to `SHUTDOWN_TIMEOUT` to finish. Sessions still waiting for a turn slot
//! are not started: their messages are stored and unleased, so the next gateway to sweep starts
//! them at once. Whatever is still running after the timeout is recoverable: its messages are
//! stored, its lease expires and another process (or this one, restarted) takes the session
//! over; its committed replies are resent from the outbox.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::{self, App, StartError};
use crate::config::Config;
use crate::{routes, sweeper};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The gateway could not be built.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub(crate) async fn serve(config: Config) -> Result<(), ServeError> {
    app::configure_crisis_resources(&config);
    let address = config.listen_addr();
    let app = App::build(config).await?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    tracing::info!(%address, "listening");

    let stop_sweeping = CancellationToken::new();
    let sweeper = tokio::spawn(sweeper::run(app.clone(), stop_sweeping.clone()));
    let served = axum::serve(listener, routes::router(app.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    stop_sweeping.cancel();
    // The sweeper only reads and queues; its end is not worth an error.
    let _ = sweeper.await;
    drain(&app).await;
    served.map_err(ServeError::Serve)
}

/// Waits for running turns and sends, up to the shutdown timeout.
async fn drain(app: &Arc<App>) {
    app.stop_waiting();
    app.tracker.close();
    let running = app.tracker.len();
    if running == 0 {
        return;
    }
    tracing::info!(running, "waiting for running turns and sends");
    let timeout = app.config.shutdown_timeout;
    if tokio::time::timeout(timeout, app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.tracker.len(),
            "shutdown timeout reached; the rest is resumed from the store after a restart"
        );
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: no new requests");
}
