//! `sms-gateway serve`: listen within bounds, sweep, and shut down within `SHUTDOWN_TIMEOUT`.
//!
//! Connections are served by hyper directly (`listen.rs`: `axum::serve` sets no timer, so no
//! header timeout, and has no connection cap), bounded so that no client, signed or not, can
//! hold the gateway:
//! - at most `MAX_CONNECTIONS` are served at once, and never more than half the open-file limit
//!   (raised to its hard limit at start), so that the store, the model and Twilio always have
//!   descriptors left; further clients wait in the kernel's accept queue until one closes;
//! - a request's headers must arrive within `HEADER_READ_TIMEOUT` of the connection's opening or
//!   of its previous answer (hyper's header read timeout, which so also closes idle keep-alive
//!   connections), however slowly they trickle in;
//! - a request must be answered within `REQUEST_TIMEOUT` of its headers, its body included
//!   (`routes::router`).
//!
//! On SIGTERM (or Ctrl-C) the listener closes and idle connections with it; requests in
//! progress may finish; then running turns and sends. All of it within `SHUTDOWN_TIMEOUT` of
//! the signal. Sessions still waiting for a turn slot are not started: their messages are stored
//! and unleased, so the next gateway to sweep starts them at once. Whatever the timeout leaves
//! open or running is recoverable (an unanswered request is retried by Twilio; a turn's messages
//! are stored, its lease expires and another process takes the session over; committed replies
//! are resent from the outbox), and the process then exits non-zero, saying what it left.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{self, App, StartError};
use crate::config::{Config, Summary};
use crate::inspector::{self, InspectorError};
use crate::{listen, routes, sweeper};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The gateway could not be built.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The inspector could not listen.
    #[error(transparent)]
    Inspector(#[from] InspectorError),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shutdown timeout ended the shutdown with work left.
    #[error(
        "SHUTDOWN_TIMEOUT was reached with {connections} connection(s) still open and {tasks} \
         turn(s) or send(s) still running; unanswered webhooks are retried by Twilio, and stored \
         messages and replies are taken over from the store once their leases expire"
    )]
    LeftWork {
        /// Connections still open.
        connections: usize,
        /// Turns and sends still running.
        tasks: usize,
    },
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub(crate) async fn serve(config: Config) -> Result<(), ServeError> {
    Summary::new(&config, app::DEFAULT_SOUL).log();
    app::configure_crisis_resources(&config);
    let address = config.listen_addr();
    let max_connections = connection_cap(config.http.max_connections, open_file_limit());
    let app = App::build(config).await?;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })?;
    tracing::info!(%address, max_connections, "listening");

    let stop_sweeping = CancellationToken::new();
    let inspector = match inspector::for_serve(&app.config, app.inspect.clone(), app.driver.clone())
    {
        Some(inspector) => Some(
            inspector::spawn(
                inspector,
                app.config.inspector.bind,
                &app.config.http,
                app.config.shutdown_timeout,
                stop_sweeping.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let sweeper = tokio::spawn(sweeper::run(app.clone(), stop_sweeping.clone()));
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(routes::router(app.clone()));
    listen::accept(
        listener,
        &listen::connection_builder(&app.config.http),
        &slots,
        &graceful,
        std::pin::pin!(shutdown_signal()),
        |_| service.clone(),
    )
    .await;
    let deadline = Instant::now() + app.config.shutdown_timeout;
    stop_sweeping.cancel();

    // Idle connections close at once; those with a request in progress when it is answered.
    let connections = match tokio::time::timeout_at(deadline, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => max_connections - slots.available_permits(),
    };
    // The sweeper only reads and queues, the inspector only answers operators: their ends are
    // not worth an error.
    let _ = tokio::time::timeout_at(deadline, sweeper).await;
    if let Some(inspector) = inspector {
        let _ = tokio::time::timeout_at(deadline, inspector).await;
    }
    let tasks = drain(&app, deadline).await;
    if connections == 0 && tasks == 0 {
        tracing::info!("shut down");
        Ok(())
    } else {
        Err(ServeError::LeftWork { connections, tasks })
    }
}

/// The process's open-file limit, raised first to the hard limit; `None` when that failed.
fn open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
        .inspect_err(|error| tracing::warn!(%error, "cannot raise the open-file limit"))
        .ok()
}

/// How many connections are served at once: `configured`, but at most half of `open_files`,
/// so that the store, the model, Twilio and the log always have descriptors left.
fn connection_cap(configured: NonZeroU32, open_files: Option<u64>) -> usize {
    let configured = usize::try_from(configured.get()).unwrap_or(usize::MAX);
    let Some(open_files) = open_files else {
        return configured;
    };
    let half = usize::try_from(open_files / 2).unwrap_or(usize::MAX).max(1);
    if configured > half {
        tracing::warn!(
            configured,
            open_files,
            serving = half,
            "MAX_CONNECTIONS lowered to half the open-file limit"
        );
    }
    configured.min(half)
}

/// Waits for running turns and sends until `deadline`; how many are left then.
async fn drain(app: &Arc<App>, deadline: Instant) -> usize {
    app.stop_waiting();
    app.tracker.close();
    let running = app.tracker.len();
    if running == 0 {
        return 0;
    }
    tracing::info!(running, "waiting for running turns and sends");
    match tokio::time::timeout_at(deadline, app.tracker.wait()).await {
        Ok(()) => 0,
        Err(_) => app.tracker.len(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
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
    tracing::info!("shutting down: no new connections");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_half_the_open_files_to_the_rest() {
        let cap = |configured: u32, open_files| {
            connection_cap(NonZeroU32::new(configured).unwrap(), open_files)
        };
        assert_eq!(cap(4096, Some(1_048_576)), 4096);
        assert_eq!(cap(4096, Some(1024)), 512);
        assert_eq!(cap(100, Some(1024)), 100);
        assert_eq!(cap(4096, None), 4096);
        assert_eq!(cap(4096, Some(1)), 1);
    }
}
