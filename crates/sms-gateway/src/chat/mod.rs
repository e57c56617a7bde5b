//! `sms-gateway chat`: talk to the soul in a terminal, through the same engine, driver and store
//! as SMS, without Twilio. Each line read is one message; the soul's replies are printed as they
//! are committed and marked delivered, so that a later `serve` on the same store does not send
//! them by SMS. Lines starting with `/` are commands (`/help`).
//!
//! On a terminal the line is edited with `rustyline`, its history kept in the data directory,
//! and names are coloured; over a pipe lines are read plainly and nothing but text is written.
//! Logs never reach the conversation: `main` sends them to [`log_path`].

mod input;
mod look;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use soul_engine::model::BoxFuture;
use soul_engine::{Clock, SystemClock};
use soul_persistence::{Address, DeliveryStatus, DeliveryUpdate, Inbound, OutboundRef, Store};
use soul_turns::{Delivery, Handled, OutboundBatch};
use tokio::io::{AsyncWrite, AsyncWriteExt as _, Stderr, Stdout};

use self::input::{Input, Line};
use self::look::Look;
use crate::app::{self, StartError};
use crate::config::sqlite_path;
use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;

/// What `/help` prints.
const HELP: &str = "\
Each line is a message to the soul, answered as an SMS would be. Commands:
  /state   the process the soul is in, what it remembers, its working memory
  /help    this list
  /quit    leave (as does Ctrl-D, or the end of input)
";

/// Where `chat` keeps its history and its log: beside the SQLite store, or in `data/` when the
/// store is a server.
pub(crate) fn data_dir(config: &Config) -> PathBuf {
    match &config.store {
        StoreConfig::Sqlite { url } => sqlite_path(url)
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        StoreConfig::Postgres { .. } | StoreConfig::Supabase { .. } => PathBuf::from("data"),
    }
}

/// The log file of `chat`, in the data directory.
pub(crate) fn log_path(config: &Config) -> PathBuf {
    data_dir(config).join("chat.log")
}

/// Prints replies and marks them delivered.
struct Terminal {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    soul: String,
    look: Look,
}

impl Delivery for Terminal {
    fn deliver(&self, batch: OutboundBatch) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut out = tokio::io::stdout();
            for (id, text) in batch.messages {
                // A closed terminal ends the chat at the next read; nothing to do here.
                let _ = out
                    .write_all(self.look.reply(&self.soul, &text).as_bytes())
                    .await;
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

/// Writes `text` to `stream`; a closed stream ends the chat at the next read.
async fn show(stream: &mut (impl AsyncWrite + Unpin), text: &str) {
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.flush().await;
}

/// Reads messages from standard input as `from` until end of input or `/quit`.
pub(crate) async fn run(config: &Config, from: &str) -> Result<(), StartError> {
    app::configure_crisis_resources(config);
    let store = app::open_store(&config.store).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::new());
    let driver = app::build_driver(config, store.clone(), &metrics, clock.clone())?;
    let look = Look::for_stdout();
    let terminal = Terminal {
        store: store.clone(),
        clock: clock.clone(),
        soul: driver.settings().persona.clone(),
        look,
    };
    let dir = data_dir(config);
    let history = dir.join("chat_history");
    let mut input = Input::open(history, "you> ");
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    let banner = format!(
        "Talking to {} as {from}. One message per line; /help for commands, /quit to leave. \
         Logs go to {}.",
        terminal.soul,
        log_path(config).display()
    );
    show(&mut err, &look.note(&banner)).await;
    let address = Address::new(from);
    loop {
        let line = match input.next().await {
            Line::Text(line) => line,
            Line::Interrupted => {
                show(&mut err, &look.note("/quit or Ctrl-D to leave")).await;
                continue;
            }
            Line::End => break,
        };
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        if let Some(command) = body.strip_prefix('/') {
            match command {
                "quit" => break,
                "help" => show(&mut out, HELP).await,
                "state" => state(store.as_ref(), &address, &mut out, &mut err, look).await,
                _ => {
                    let note = format!("no command /{command}: /help lists them");
                    show(&mut err, &look.note(&note)).await;
                }
            }
            continue;
        }
        let inbound = Inbound {
            from: address.clone(),
            line: Default::default(),
            persona: None,
            // Made storable as an SMS is (a pasted control character would fail its begin).
            body: soul_engine::text::storable(body).into_owned(),
            external_id: None,
            received_at: clock.now(),
            opt_out: None,
        };
        let note = match driver.handle(&inbound, &terminal).await {
            Ok(Handled::Queued) => {
                Some("another process is answering this address; its reply goes there")
            }
            Ok(Handled::Answered(reports)) if reports.iter().any(|r| r.fell_back) => {
                Some("the soul could not answer: that was the fallback reply; the log says why")
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "turn failed");
                Some("the turn failed; the message is stored and will be retried")
            }
        };
        if let Some(note) = note {
            show(&mut err, &look.note(note)).await;
        }
    }
    Ok(())
}

/// `/state`: what the store holds for `address`.
async fn state(
    store: &dyn Store,
    address: &Address,
    out: &mut Stdout,
    err: &mut Stderr,
    look: Look,
) {
    match store.export_user(address).await {
        Ok(export) => {
            // The terminal talks on the default line: its conversation is the one shown.
            let conversation = export.as_ref().and_then(Value::as_array).and_then(|all| {
                all.iter()
                    .find(|conversation| conversation["session"]["line"] == "")
            });
            show(out, &state::describe(conversation)).await;
        }
        Err(error) => {
            tracing::warn!(error = error.kind(), "could not read the state");
            show(
                err,
                &look.note("the store could not be read; the log says why"),
            )
            .await;
        }
    }
}
