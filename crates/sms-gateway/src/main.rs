//! `sms-gateway`: people text a Twilio number, a soul answers and remembers them.
//!
//! ```text
//! cargo run -p sms-gateway                 # serve (the default): the gateway on data/soul.db
//! cargo run -p sms-gateway -- migrate      # apply the store's migrations and exit
//! cargo run -p sms-gateway -- chat         # talk to the soul in this terminal, no Twilio
//! cargo run -p sms-gateway -- dev          # the inspector and a browser chat on 127.0.0.1:8081
//! cargo run -p sms-gateway -- check-config # validate the configuration and exit
//! cargo run -p sms-gateway -- export +1555… # everything stored about a person, as JSON
//! cargo run -p sms-gateway -- erase +1555…  # delete it, after a confirmation
//! cargo run -p sms-gateway -- health        # does the gateway on BIND:PORT answer /healthz?
//! ```
//!
//! Configuration comes from the environment, optionally over a TOML file (`--config FILE` or
//! `SOUL_CONFIG`): `serve` needs `PUBLIC_URL`, `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`,
//! `TWILIO_FROM` (or `TWILIO_MESSAGING_SERVICE_SID`) and a model (`OPENAI_API_KEY`, or
//! `OPENAI_BASE_URL` for a server that needs no key); the store defaults to the SQLite file
//! `data/soul.db` (`DATABASE_URL` takes `sqlite:` or `postgres://` URLs). Every setting is
//! described in `config/`. Logs go to standard error, filtered by `RUST_LOG` (default `info`),
//! as JSON with `LOG_FORMAT=json` (`chat` logs to `chat.log` in its data directory instead, so
//! that warnings stay out of the conversation).
//!
//! Twilio's messaging webhook is `POST {PUBLIC_URL}/twilio/sms`; status callbacks come to
//! `/twilio/status`; `/healthz`, `/readyz` and `/metrics` are for operations.

mod app;
mod chat;
mod config;
mod data_requests;
mod dev;
mod health;
mod inbound_text;
mod inspector;
mod keywords;
mod listen;
mod marks;
mod metrics;
mod model_hint;
mod outbox;
mod ratelimit;
mod reply_limit;
mod routes;
mod segments;
mod server;
mod sweeper;
mod twilio;

/// Replays `fuzz/corpus/<target>` through `check`: CI cannot run libFuzzer, so the kept corpus
/// passes the fuzz targets' checks in the unit tests too.
#[cfg(test)]
fn replay_fuzz_corpus(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        eprintln!("replaying {}", path.display());
        check(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "{} holds no inputs", dir.display());
}

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

// Linking the shipped souls registers them with the engine.
use soul_processes as _;

use crate::config::{Config, Level, LogFormat, Summary};

/// The SMS gateway of the soul engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file; the environment overrides it (default: `$SOUL_CONFIG`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: Twilio webhooks in, replies out.
    Serve,
    /// Apply the store's migrations and exit.
    Migrate,
    /// Talk to the soul in this terminal through the same engine and store, without Twilio.
    Chat {
        /// The address the messages come from (a phone number, or any name).
        #[arg(long, default_value = "terminal")]
        from: String,
    },
    /// The author's loop: the inspector and a browser chat with the soul on INSPECTOR_BIND
    /// (the loopback's port 8081 by default), without a login and without Twilio.
    Dev,
    /// Check the configuration `serve` would use, print a summary and exit.
    CheckConfig,
    /// Ask the gateway this configuration listens as for /healthz: exit 0 when it answers 200,
    /// 1 otherwise (a container's health check).
    Health,
    /// Write everything stored about one person as JSON (a data request).
    Export {
        /// The person's number, as Twilio gives it: E.164, such as +15551234567.
        number: String,
        /// Write to this new file (readable by its owner only) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Delete everything stored about one person, after typing the number again; someone who
    /// opted out keeps only that. Exits 75 while their turn runs (nothing erased).
    Erase {
        /// The person's number, as Twilio gives it: E.164, such as +15551234567.
        number: String,
        /// Do not ask for a confirmation (for scripts).
        #[arg(long)]
        yes: bool,
    },
}

impl Command {
    fn level(&self) -> Level {
        match self {
            Command::Serve | Command::CheckConfig => Level::Serve,
            Command::Migrate | Command::Health | Command::Export { .. } | Command::Erase { .. } => {
                Level::Migrate
            }
            Command::Chat { .. } | Command::Dev => Level::Chat,
        }
    }
}

/// Where logs go: standard error, or, for `chat`, whose conversation is on the terminal, the
/// file `chat::log_path` names. Colour codes only on a terminal.
fn init_tracing(config: &Config, command: &Command) -> std::io::Result<()> {
    let (writer, ansi) = match command {
        Command::Chat { .. } => {
            let path = chat::log_path(config);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            (BoxMakeWriter::new(Mutex::new(file)), false)
        }
        _ => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let souls = app::soul_names();
    let config = match config::load(command.level(), cli.config.as_deref(), &souls) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = init_tracing(&config, &command) {
        eprintln!("cannot open the log file: {error}");
        return ExitCode::from(2);
    }
    match command {
        Command::Serve => logged(server::serve(config).await),
        Command::Migrate => logged(
            app::migrate(&config.store)
                .await
                .map(|()| tracing::info!("the store's schema is up to date")),
        ),
        Command::Chat { from } => logged(chat::run(&config, &from).await),
        Command::Dev => logged(dev::run(config).await),
        Command::CheckConfig => {
            let summary = Summary::new(&config, app::DEFAULT_SOUL).to_string();
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(summary.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("cannot write the summary: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Health => match health::check(&config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("unhealthy: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Export { number, out } => {
            printed(data_requests::export(&config.store, &number, out.as_deref()).await)
        }
        Command::Erase { number, yes } => {
            printed(data_requests::erase(&config.store, &number, yes).await)
        }
    }
}

/// A command's end, its error logged.
fn logged<E: Into<anyhow::Error>>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{:#}", error.into());
            ExitCode::FAILURE
        }
    }
}

/// A data request's end, its error printed for the operator at the terminal (not logged: the
/// request's outcome is theirs to read), with the exit status it calls for.
fn printed(result: Result<(), data_requests::RequestError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(error.exit_code())
        }
    }
}
