//! The inspector (`soul-inspector`) on a listener of its own: beside `serve` when
//! `INSPECTOR_TOKEN` is set (off otherwise), and for `dev` (`dev.rs`) with the browser chat,
//! whose messages run turns through the same driver as SMS. Both give the inspector their turn
//! driver, to re-run logged turns with.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use soul_engine::model::BoxFuture;
use soul_engine::process::ReplyStream;
use soul_engine::{Clock, SystemClock};
use soul_inspector::{Access, Chat, Inspector};
use soul_persistence::{
    Address, DeliveryStatus, DeliveryUpdate, Inbound, Inspect, OutboundRef, Store,
};
use soul_turns::{Delivery, OutboundBatch, TurnDriver};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::StartError;
use crate::config::{Config, HttpLimits};
use crate::listen;

/// Why the inspector could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InspectorError {
    /// The soul, model or store could not be opened.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The address could not be bound.
    #[error("the inspector cannot listen on {address}: {source}")]
    Bind {
        /// `INSPECTOR_BIND`.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `dev` serves without a login, so only on the loopback.
    #[error(
        "dev serves the inspector without a login, so only on the loopback: INSPECTOR_BIND \
         {0} is not a loopback address"
    )]
    NotLoopback(SocketAddr),
}

/// How many connections the inspector serves at once: it answers a few operators (and, in
/// `dev`, one author's browser), so a small cap keeps any client from holding the process.
const MAX_CONNECTIONS: usize = 64;

/// Serves `inspector` on `address` until `stop` is cancelled, through the gateway's own bounded
/// accept loop (`listen::accept`: a header read timeout and a connection cap), then waits up to
/// `limits`' shutdown time for open connections (a browser chat's stream) to end. Binding
/// happens before this returns, so that a taken address fails the start.
pub(crate) async fn spawn(
    inspector: Inspector,
    address: SocketAddr,
    limits: &HttpLimits,
    shutdown_timeout: Duration,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, InspectorError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| InspectorError::Bind { address, source })?;
    let router = soul_inspector::router(inspector);
    let builder = listen::connection_builder(limits);
    tracing::info!(%address, "the inspector is listening");
    Ok(tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let graceful = GracefulShutdown::new();
        // Each request carries the client's address: failed logins are limited per address.
        listen::accept(
            listener,
            &builder,
            &slots,
            &graceful,
            std::pin::pin!(stop.cancelled()),
            |client| TowerToHyperService::new(router.clone().layer(Extension(ConnectInfo(client)))),
        )
        .await;
        if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the inspector stopped with connections still open");
        }
    }))
}

/// The inspector `serve` runs beside the gateway, when `INSPECTOR_TOKEN` is set; it re-runs
/// logged turns with the gateway's `driver`.
pub(crate) fn for_serve(
    config: &Config,
    store: Arc<dyn Inspect>,
    driver: Arc<TurnDriver>,
) -> Option<Inspector> {
    let token = config.inspector.token.as_ref()?;
    Some(
        Inspector::new(
            store,
            Access::Token(token.expose().to_owned()),
            Arc::new(SystemClock),
        )
        .with_driver(driver)
        .with_secure_cookie(config.inspector.secure_cookie),
    )
}

/// Shows the browser chat's replies by marking them delivered (the page reads them from the
/// store), so that a later `serve` on the same store does not send them by SMS; while the model
/// writes them, they go to the page's reply stream.
struct WebDelivery {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    stream: Option<Arc<dyn ReplyStream>>,
}

impl Delivery for WebDelivery {
    fn reply_stream(&self) -> Option<Arc<dyn ReplyStream>> {
        self.stream.clone()
    }

    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for (id, _) in batch.messages {
                let update = DeliveryUpdate {
                    target: OutboundRef::Id(id),
                    status: DeliveryStatus::Delivered,
                    provider_id: None,
                    error: None,
                    at: self.clock.now(),
                };
                if let Err(error) = self.store.update_delivery(&update).await {
                    tracing::warn!(error = error.kind(), "could not mark a reply delivered");
                }
            }
        })
    }
}

/// The browser chat: each message a turn of the driver, as an SMS is.
pub(crate) struct WebChat {
    driver: Arc<TurnDriver>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl WebChat {
    /// The chat whose messages `driver` runs, its replies marked delivered in `store`.
    pub(crate) fn new(
        driver: Arc<TurnDriver>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        WebChat {
            driver,
            store,
            clock,
        }
    }
}

impl std::fmt::Debug for WebChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebChat").finish_non_exhaustive()
    }
}

impl Chat for WebChat {
    fn send(
        &self,
        from: Address,
        text: String,
        stream: Arc<dyn ReplyStream>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let driver = self.driver.clone();
        let delivery = WebDelivery {
            store: self.store.clone(),
            clock: self.clock.clone(),
            stream: Some(stream),
        };
        Box::pin(async move {
            let inbound = Inbound {
                from,
                line: Default::default(),
                persona: None,
                // Made storable as an SMS is (a pasted control character would fail its begin).
                body: soul_engine::text::storable(&text).into_owned(),
                external_id: None,
                received_at: delivery.clock.now(),
                opt_out: None,
            };
            if let Err(error) = driver.handle(&inbound, &delivery).await {
                tracing::warn!(%error, "a browser chat turn failed");
            }
        })
    }
}
