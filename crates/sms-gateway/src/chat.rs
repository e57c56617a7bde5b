//! `sms-gateway chat`: talk to the soul in a terminal, through the same engine, driver and store
//! as SMS, without Twilio. Each line read is one message; the soul's replies are printed as they
//! are committed and marked delivered, so that a later `serve` on the same store does not send
//! them by SMS.

use std::sync::Arc;

use soul_engine::model::BoxFuture;
use soul_engine::{Clock, SystemClock};
use soul_persistence::{Address, DeliveryStatus, DeliveryUpdate, Inbound, OutboundRef, Store};
use soul_turns::{Delivery, Handled, OutboundBatch};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::app::{self, StartError};
use crate::config::Config;
use crate::metrics::Metrics;

/// Prints replies and marks them delivered.
struct Terminal {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    soul: String,
}

impl Delivery for Terminal {
    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut out = tokio::io::stdout();
            for (id, text) in batch.messages {
                let line = format!("{}> {text}\n", self.soul);
                // A closed terminal ends the chat at the next read; nothing to do here.
                let _ = out.write_all(line.as_bytes()).await;
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
            let _ = out.flush().await;
        })
    }
}

/// Reads messages from standard input as `from` until end of input or `/quit`.
pub(crate) async fn run(config: &Config, from: &str) -> Result<(), StartError> {
    app::configure_crisis_resources(config);
    let store = app::open_store(&config.store).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let driver = app::build_driver(config, store.clone(), &metrics, clock.clone())?;
    let terminal = Terminal {
        store,
        clock: clock.clone(),
        soul: driver.settings().persona.clone(),
    };
    let mut err = tokio::io::stderr();
    let banner = format!(
        "Talking to {} as {from}. One message per line; /quit or end of input to stop.\n",
        terminal.soul
    );
    let _ = err.write_all(banner.as_bytes()).await;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        if body == "/quit" {
            break;
        }
        let inbound = Inbound {
            from: Address::new(from),
            // Made storable as an SMS is (a pasted control character would fail its begin).
            body: soul_engine::text::storable(body).into_owned(),
            external_id: None,
            received_at: clock.now(),
            opt_out: None,
        };
        let note = match driver.handle(&inbound, &terminal).await {
            Ok(Handled::Queued) => {
                Some("(another process is answering this address; its reply goes there)\n")
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "turn failed");
                Some("(the turn failed; the message is stored and will be retried)\n")
            }
        };
        if let Some(note) = note {
            let _ = err.write_all(note.as_bytes()).await;
        }
    }
    Ok(())
}
