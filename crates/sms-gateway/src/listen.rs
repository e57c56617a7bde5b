//! Serving a listener within bounds: HTTP/1 connections with a header read timeout (a timer set,
//! which `axum::serve` does not set) and at most as many at once as a semaphore allows, each
//! watched for a graceful shutdown. The gateway's webhooks (`server.rs`) and the inspector
//! (`inspector.rs`) both listen through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::HttpLimits;

/// How long accepting pauses after an error that is not one client's (out of descriptors):
/// retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves connections from `listener` with `builder` until `stop` resolves, each watched by
/// `graceful`, at most as many at once as `slots` has permits; `service_for` gives the service of
/// a connection from a client's address. The gateway's listener and the inspector's both serve
/// through it.
pub(crate) async fn accept(
    listener: TcpListener,
    builder: &hyper::server::conn::http1::Builder,
    slots: &Arc<Semaphore>,
    graceful: &GracefulShutdown,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
    service_for: impl Fn(SocketAddr) -> TowerToHyperService<axum::Router>,
) {
    loop {
        // Taken before accepting: beyond the cap, clients wait in the accept queue, holding none
        // of this process's descriptors.
        let slot = tokio::select! {
            () = stop.as_mut() => return,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            // Never closed.
            return;
        };
        let (stream, client) = tokio::select! {
            () = stop.as_mut() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_connection_error(&error) {
                        tracing::warn!(%error, "cannot accept a connection; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
        };
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service_for(client)));
        tokio::spawn(async move {
            // A client that went away, or was cut by a timeout: nothing to do but close.
            let _ = connection.await;
            drop(slot);
        });
    }
}

/// HTTP/1 connections with a timer, so that hyper's header read timeout applies.
pub(crate) fn connection_builder(limits: &HttpLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// An error of one client's connection (it went away before it was accepted), not of the
/// listener's.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
