//! `sms-gateway dev`: the author's loop. The soul on the configured store (the SQLite file
//! `data/soul.db` by default), the inspector on `INSPECTOR_BIND` without a login (so on the
//! loopback only), and its browser chat at `/chat`: type, see the reply arrive as the model
//! writes it (where the model streams) and then as committed, and open the conversation's turns
//! beside it, to re-run one with this build or rewind.

use std::sync::Arc;

use soul_engine::{Clock, SystemClock};
use soul_inspector::{Access, Inspector};
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::Config;
use crate::inspector::{self, InspectorError, WebChat};
use crate::metrics::Metrics;
use crate::server;

/// `sms-gateway dev`: the inspector and the browser chat on `INSPECTOR_BIND`, without a login,
/// until Ctrl-C or SIGTERM.
pub(crate) async fn run(config: Config) -> Result<(), InspectorError> {
    let address = config.inspector.bind;
    if !address.ip().is_loopback() {
        return Err(InspectorError::NotLoopback(address));
    }
    app::configure_crisis_resources(&config);
    let store = app::open_store(&config.store).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let driver = Arc::new(app::build_driver(
        &config,
        store.clone(),
        &metrics,
        clock.clone(),
    )?);
    let chat = WebChat::new(driver.clone(), store.clone(), clock.clone());
    let inspector = Inspector::new(store, Access::Open, clock)
        .with_chat(Arc::new(chat))
        .with_driver(driver);
    let stop = CancellationToken::new();
    let served = inspector::spawn(
        inspector,
        address,
        &config.http,
        config.shutdown_timeout,
        stop.clone(),
    )
    .await?;
    tracing::info!("dev: chat with the soul at http://{address}/chat (no login: loopback only)");
    server::shutdown_signal().await;
    stop.cancel();
    // A serving task that panicked has nothing left to stop.
    let _ = served.await;
    Ok(())
}
