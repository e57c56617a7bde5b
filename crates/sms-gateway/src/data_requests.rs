//! `export` and `erase`: what the operator runs when a person asks for the data stored about
//! them, or for it to be deleted.
//!
//! Both take the person's number as Twilio gives it (E.164, `+15551234567`) and work on the
//! configured store, whichever it is. Neither logs or prints the number: it is the operator's
//! own argument, and these commands' standard error often ends up in a log.
//!
//! `export` writes the store's export (`Store::export_user`: every column stored about the
//! person) as indented JSON to standard output, or to a new file readable by its owner only.
//! `erase` deletes it all, after the operator types the number again at a terminal (`--yes`
//! instead, for scripts; without either it refuses). It refuses, deleting nothing, while a turn
//! of the person's runs, and keeps the opt-out record of a person who opted out
//! (`Erasure::Erased`).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use soul_engine::{Clock as _, SystemClock};
use soul_persistence::{Address, Erasure, StoreError};

use crate::app::{self, StartError};
use crate::config::StoreConfig;

/// The exit status for "try again later" (sysexits' `EX_TEMPFAIL`): a turn of the person's runs.
pub(crate) const EXIT_TURN_RUNNING: u8 = 75;

/// Why a data request did not complete; each says what was done (nothing) and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// The store could not be opened.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The store failed the request.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// Nothing is stored under the number.
    #[error(
        "nothing is stored under that number (numbers are stored as Twilio gives them, in E.164 \
         form: a + and the country code, such as +15551234567)"
    )]
    Unknown,
    /// A turn of the person's is running.
    #[error(
        "nothing was erased: a turn of this person's is running (its lease ends at {until}); \
         erase again once it has ended, usually within seconds"
    )]
    TurnRunning {
        /// When the running turn's lease ends at the latest.
        until: String,
    },
    /// `erase` without a terminal to confirm at, and without `--yes`.
    #[error(
        "nothing was erased: erase asks for the number to be typed again at a terminal; in a \
         script, pass --yes"
    )]
    NoTerminal,
    /// The operator typed something other than the number.
    #[error("nothing was erased: what was typed is not the number")]
    NotConfirmed,
    /// The confirmation could not be read.
    #[error("nothing was erased: cannot read the confirmation: {0}")]
    Confirmation(#[source] std::io::Error),
    /// The export could not be written.
    #[error("cannot write the export to {path}: {source}")]
    Write {
        /// Where it was to go (`-` for standard output).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RequestError {
    /// The process's exit status: 75 when a turn runs (try again), 2 for a usage error (no
    /// confirmation possible), 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            RequestError::TurnRunning { .. } => EXIT_TURN_RUNNING,
            RequestError::NoTerminal => 2,
            _ => 1,
        }
    }
}

/// `export NUMBER [--out FILE]`.
pub(crate) async fn export(
    store: &StoreConfig,
    number: &str,
    out: Option<&Path>,
) -> Result<(), RequestError> {
    let store = app::open_store(store).await?;
    let export = store
        .export_user(&Address::new(number.trim()))
        .await?
        .ok_or(RequestError::Unknown)?;
    let mut text = serde_json::to_string_pretty(&export).map_err(StoreError::from)?;
    text.push('\n');
    match out {
        Some(path) => {
            write_new_private_file(path, text.as_bytes()).map_err(|source| {
                RequestError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| RequestError::Write {
                    path: PathBuf::from("-"),
                    source,
                })?;
        }
    }
    Ok(())
}

/// A new file holding `bytes`, readable and writable by its owner only: an export is the
/// person's whole conversation. An existing file is left alone (an error), not overwritten.
fn write_new_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `erase NUMBER [--yes]`.
pub(crate) async fn erase(
    store: &StoreConfig,
    number: &str,
    yes: bool,
) -> Result<(), RequestError> {
    let confirm_at_terminal = !yes;
    if confirm_at_terminal && !std::io::stdin().is_terminal() {
        return Err(RequestError::NoTerminal);
    }
    let address = Address::new(number.trim());
    let store = app::open_store(store).await?;
    if confirm_at_terminal {
        let export = store
            .export_user(&address)
            .await?
            .ok_or(RequestError::Unknown)?;
        eprintln!("Stored about this number: {}.", describe(&export));
        eprint!("Type the number again to erase all of it: ");
        let mut typed = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut typed)
            .map_err(RequestError::Confirmation)?;
        if typed.trim() != address.as_str() {
            return Err(RequestError::NotConfirmed);
        }
    }
    match store.erase_user(&address, SystemClock.now()).await? {
        Erasure::Erased { opt_out_kept } => {
            tracing::info!(opt_out_kept, "a person's data was erased");
            if opt_out_kept {
                eprintln!(
                    "erased; kept: the number and the time it opted out, so that nothing is \
                     sent to it again (a message from it is stored, unanswered, until it texts \
                     START)"
                );
            } else {
                eprintln!("erased");
            }
            Ok(())
        }
        Erasure::TurnRunning { lease_expires_at } => Err(RequestError::TurnRunning {
            until: lease_expires_at.to_rfc3339(),
        }),
        Erasure::Unknown => Err(RequestError::Unknown),
        // `Erasure` may grow: an outcome this build does not know is not taken for success.
        _ => Err(RequestError::Store(StoreError::Corrupt(
            "an erasure outcome this build does not know".to_owned(),
        ))),
    }
}

/// What an export holds, counted, for the confirmation: "12 messages, 2 soul memories, …".
fn describe(export: &serde_json::Value) -> String {
    // One entry per conversation: a person has one per line they texted.
    let conversations = export.as_array().map_or(&[][..], Vec::as_slice);
    let count = |key: &str| -> usize {
        conversations
            .iter()
            .map(|conversation| conversation[key].as_array().map_or(0, Vec::len))
            .sum()
    };
    let mut parts: Vec<String> = Vec::new();
    if conversations.len() > 1 {
        parts.push(format!(
            "{} conversations (one per line texted)",
            conversations.len()
        ));
    }
    parts.extend(
        [
            ("messages", "conversation messages"),
            ("inbound_messages", "inbound messages"),
            ("outbound_messages", "replies"),
            ("soul_memories", "soul memories"),
            ("process_memories", "process memories"),
            ("working_memory_snapshots", "working-memory snapshots"),
            ("scheduled_events", "scheduled events"),
        ]
        .into_iter()
        .map(|(key, name)| format!("{} {name}", count(key))),
    );
    let states = conversations
        .iter()
        .filter(|conversation| conversation["mental_process_state"].is_object())
        .count();
    match states {
        0 => {}
        1 => parts.push("a process state".to_owned()),
        states => parts.push(format!("{states} process states")),
    }
    let opted_out = conversations
        .iter()
        .any(|conversation| conversation["session"]["opted_out"] == serde_json::Value::Bool(true));
    if opted_out {
        parts.push("an opt-out (kept)".to_owned());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_confirmation_counts_what_is_stored() {
        let export = json!([{
            "session": {"opted_out": true},
            "messages": [{}, {}],
            "inbound_messages": [{}],
            "outbound_messages": [{}],
            "soul_memories": [],
            "process_memories": [],
            "working_memory_snapshots": [{}],
            "scheduled_events": [],
            "mental_process_state": {"name": "listening"},
        }]);
        assert_eq!(
            describe(&export),
            "2 conversation messages, 1 inbound messages, 1 replies, 0 soul memories, 0 process \
             memories, 1 working-memory snapshots, 0 scheduled events, a process state, an \
             opt-out (kept)"
        );
        let two_lines = json!([
            {"session": {"opted_out": false}, "messages": [{}], "mental_process_state": {}},
            {"session": {"opted_out": false}, "messages": [{}, {}], "mental_process_state": {}},
        ]);
        assert_eq!(
            describe(&two_lines),
            "2 conversations (one per line texted), 3 conversation messages, 0 inbound messages, \
             0 replies, 0 soul memories, 0 process memories, 0 working-memory snapshots, 0 \
             scheduled events, 2 process states"
        );
    }

    #[test]
    fn exit_codes_say_what_to_do() {
        assert_eq!(
            RequestError::TurnRunning {
                until: String::new()
            }
            .exit_code(),
            EXIT_TURN_RUNNING
        );
        assert_eq!(RequestError::NoTerminal.exit_code(), 2);
        assert_eq!(RequestError::Unknown.exit_code(), 1);
    }
}
