//! The gateway's configuration: environment variables, optionally over a TOML file.
//!
//! [`Config::from_values`] is a pure function of a name → value map, so tests never touch the
//! process environment; [`load`] gathers that map from the file named by `--config` or
//! `SOUL_CONFIG` and the environment, which wins. Every problem is reported at once in one
//! [`ConfigError`], and secrets are [`Secret`]s that never print.
//!
//! In the TOML file, keys are the variable names in any case, or nested under a table named by
//! their prefix: `twilio_from = "+1…"` and `[twilio]` / `from = "+1…"` both set `TWILIO_FROM`.
//! A key that names no setting is an error, so a typo does not silently fall back to a default.
//!
//! Empty values count as unset (so `FOO=` in a compose file means "not set"), and values are
//! trimmed.
//!
//! Each topic's file holds its settings' types, defaults and checks (`store`, `model`, `twilio`,
//! `listener`, `turns`); [`Config::from_values`] reads them in the order it reports problems.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use soul_persistence::turn_log::TurnLogLevel;

use listener::DEFAULT_PORT;
use model::{DEFAULT_MODEL_RETRY_BUDGET, DEFAULT_MODEL_TIMEOUT};
use problem::{ConfigError, Problem};
use reader::Reader;
use turns::{
    DEFAULT_OUTBOX_RETRY_AFTER, DEFAULT_RATE_LIMIT_PER_MINUTE, DEFAULT_SESSION_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_SWEEP_INTERVAL, DEFAULT_TURN_CONCURRENCY, DEFAULT_TURN_LEASE,
    MIN_OUTBOX_RETRY_AFTER,
};

#[cfg(any(test, fuzzing))]
mod fuzz;
mod listener;
mod model;
mod problem;
mod reader;
mod routing;
mod secret;
mod sources;
mod store;
mod summary;
#[cfg(test)]
mod testing;
mod turns;
mod twilio;

#[cfg(fuzzing)]
pub(crate) use fuzz::fuzz_check;
pub(crate) use listener::{HttpLimits, InspectorConfig, PublicUrl};
pub(crate) use model::ModelConfig;
pub(crate) use routing::{Route, Routing, Rule};
pub(crate) use secret::{Secret, redacted_url};
pub(crate) use sources::load;
pub(crate) use store::{StoreConfig, sqlite_path};
pub(crate) use summary::Summary;
pub(crate) use twilio::{Sender, TwilioConfig};

/// The soul run when `SOUL` and `LINES` are not set: the companion this gateway exists for.
pub(crate) const DEFAULT_SOUL: &str = soul_processes::companion::SOUL;

/// What the command being run needs; each level needs everything the one before it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// `migrate`: the store only.
    Migrate,
    /// `chat`: the store and a model.
    Chat,
    /// `serve`: the store, a model, Twilio and the public URL.
    Serve,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The address to listen on.
    pub(crate) bind: IpAddr,
    /// The port to listen on.
    pub(crate) port: u16,
    /// The URL Twilio calls, without a trailing slash: webhook signatures are checked against
    /// it plus the request path, never against `Host`. Required for `serve`.
    pub(crate) public_url: Option<PublicUrl>,
    /// Twilio; always present for `serve`.
    pub(crate) twilio: Option<TwilioConfig>,
    /// The model; always present for `chat` and `serve`.
    pub(crate) model: Option<ModelConfig>,
    /// The store.
    pub(crate) store: StoreConfig,
    /// Silence after which a conversation starts a new session.
    pub(crate) session_timeout: Duration,
    /// Which soul a conversation gets at its first contact (`SOUL`, `LINES`).
    pub(crate) routing: Routing,
    /// The answer to HELP; `None` means the gateway's default.
    pub(crate) help_text: Option<String>,
    /// How logs are written.
    pub(crate) log_format: LogFormat,
    /// Inbound messages accepted per number per minute; `None` (`off`) means no limit.
    pub(crate) rate_limit_per_minute: Option<NonZeroU32>,
    /// Turns run at once; the others wait for a slot.
    pub(crate) turn_concurrency: NonZeroU32,
    /// The crisis resources text the souls append in careful mode; `None` keeps theirs.
    pub(crate) crisis_resources: Option<String>,
    /// How long a reply's sender holds its claim on it (the commit's for its own replies, a
    /// sweep's for the replies it takes): nobody else sends it before then, and it is sent
    /// again by whoever claims it after, when it is still pending (its sender died, or every
    /// retry failed).
    pub(crate) outbox_retry_after: Duration,
    /// How often the sweeper looks for pending replies and stalled sessions.
    pub(crate) sweep_interval: Duration,
    /// How long SIGTERM waits for running turns and sends before exiting.
    pub(crate) shutdown_timeout: Duration,
    /// How long a turn may run before another worker presumes its gateway dead and takes the
    /// session over.
    pub(crate) turn_lease: Duration,
    /// How many times a message's turn is started before it is given up (the fallback reply,
    /// without the model); `None` means the driver's default.
    pub(crate) turn_max_attempts: Option<NonZeroU32>,
    /// How much each turn's record keeps (`TURN_LOG`).
    pub(crate) turn_log: TurnLogLevel,
    /// What the person gets when the model cannot answer; `None` means the driver's default.
    pub(crate) fallback_reply: Option<String>,
    /// The time limit of one model attempt.
    pub(crate) model_timeout: Duration,
    /// The time one model call may take in all, retries and their waits included; shorter than
    /// `turn_lease`.
    pub(crate) model_retry_budget: Duration,
    /// The HTTP listener's bounds and the operations endpoints' token.
    pub(crate) http: HttpLimits,
    /// The inspector's listener and login.
    pub(crate) inspector: InspectorConfig,
    /// The most SMS segments a reply may take; a longer one is cut where a sentence ends.
    pub(crate) max_reply_segments: u8,
    /// How many days messages are kept (`RETENTION_DAYS`); `None` keeps them until erased.
    pub(crate) retention_days: Option<NonZeroU32>,
}

impl Config {
    /// The socket address to listen on.
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// Builds the configuration from `values` (setting name → value) for a command needing
    /// `level`, reporting every missing, malformed and conflicting setting at once.
    ///
    /// Present values are always checked, whatever the level; completeness only where the
    /// level needs it (`chat` ignores a half-configured Twilio, `serve` reports it).
    pub(crate) fn from_values(
        values: &BTreeMap<String, String>,
        level: Level,
    ) -> Result<Config, ConfigError> {
        let mut reader = Reader {
            values,
            problems: Vec::new(),
        };
        let bind = reader
            .parsed(
                "BIND",
                "not an IP address such as 127.0.0.1 or 0.0.0.0",
                |text| text.parse().ok(),
            )
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let port = reader
            .parsed("PORT", "not a port number from 0 to 65535", |text| {
                text.parse().ok()
            })
            .unwrap_or(DEFAULT_PORT);
        let http = reader.http();
        let inspector = reader.inspector();
        let public_url = reader.public_url();
        if reader.get("PUBLIC_URL").is_none() && level >= Level::Serve {
            reader.missing("PUBLIC_URL", "to check Twilio's webhook signatures");
        }
        let twilio = reader.twilio(level);
        let model = reader.model(level);
        let store = reader.store();
        let session_timeout = reader
            .duration("SESSION_TIMEOUT")
            .unwrap_or(DEFAULT_SESSION_TIMEOUT);
        let retention_days = reader.retention_days(session_timeout);
        let routing = reader.routing(DEFAULT_SOUL);
        let help_text = reader.get("HELP_TEXT").map(str::to_owned);
        let log_format = reader
            .parsed("LOG_FORMAT", "neither text nor json", |text| {
                match text.to_ascii_lowercase().as_str() {
                    "text" => Some(LogFormat::Text),
                    "json" => Some(LogFormat::Json),
                    _ => None,
                }
            })
            .unwrap_or(LogFormat::Text);
        let rate_limit_per_minute = reader
            .parsed(
                "RATE_LIMIT_PER_MINUTE",
                "not a positive integer or `off`",
                |text| match text {
                    "off" => Some(None),
                    _ => text.parse().ok().map(Some),
                },
            )
            .unwrap_or(Some(DEFAULT_RATE_LIMIT_PER_MINUTE));
        let turn_concurrency = reader
            .parsed("TURN_CONCURRENCY", "not a positive integer", |text| {
                text.parse().ok()
            })
            .unwrap_or(DEFAULT_TURN_CONCURRENCY);
        let crisis_resources = reader.get("SOUL_CRISIS_RESOURCES").map(str::to_owned);
        let outbox_retry_after = reader
            .duration("OUTBOX_RETRY_AFTER")
            .unwrap_or(DEFAULT_OUTBOX_RETRY_AFTER);
        if outbox_retry_after < MIN_OUTBOX_RETRY_AFTER {
            reader.malformed(
                "OUTBOX_RETRY_AFTER",
                "shorter than 1s: a reply's sender holds its claim on it this long, and needs \
                 that long at least for Twilio to answer",
            );
        }
        let sweep_interval = reader
            .duration("SWEEP_INTERVAL")
            .unwrap_or(DEFAULT_SWEEP_INTERVAL);
        let shutdown_timeout = reader
            .duration("SHUTDOWN_TIMEOUT")
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let turn_lease = reader.duration("TURN_LEASE").unwrap_or(DEFAULT_TURN_LEASE);
        let turn_max_attempts =
            reader.parsed("TURN_MAX_ATTEMPTS", "not a positive integer", |text| {
                text.parse().ok()
            });
        let turn_log = reader
            .parsed("TURN_LOG", "compact or full", TurnLogLevel::parse)
            .unwrap_or_default();
        let fallback_reply = reader.get("FALLBACK_REPLY").map(str::to_owned);
        let model_timeout = reader
            .duration("MODEL_TIMEOUT")
            .unwrap_or(DEFAULT_MODEL_TIMEOUT);
        let model_retry_budget = reader
            .duration("MODEL_RETRY_BUDGET")
            .unwrap_or(DEFAULT_MODEL_RETRY_BUDGET);
        if model_retry_budget < model_timeout {
            reader.problems.push(Problem::Conflict {
                keys: "MODEL_RETRY_BUDGET and MODEL_TIMEOUT".to_owned(),
                reason: "the budget covers every attempt of a model call, so it must be at least \
                         one attempt's time limit",
            });
        }
        let max_reply_segments = reader.max_reply_segments();
        if turn_lease <= model_retry_budget {
            reader.problems.push(Problem::Conflict {
                keys: "TURN_LEASE and MODEL_RETRY_BUDGET".to_owned(),
                reason: "the lease must outlast a model call's whole retry budget, or a slow turn \
                         is taken over while it runs",
            });
        }

        match (reader.problems.is_empty(), store) {
            (true, Some(store)) => Ok(Config {
                bind,
                port,
                public_url,
                twilio,
                model,
                store,
                session_timeout,
                routing,
                help_text,
                log_format,
                rate_limit_per_minute,
                turn_concurrency,
                crisis_resources,
                outbox_retry_after,
                sweep_interval,
                shutdown_timeout,
                turn_lease,
                turn_max_attempts,
                turn_log,
                fallback_reply,
                model_timeout,
                model_retry_budget,
                http,
                inspector,
                max_reply_segments,
                retention_days,
            }),
            _ => Err(ConfigError {
                problems: reader.problems,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{ACCOUNT, SERVICE, problems, serve_values, values};

    #[test]
    fn defaults_for_migrate_with_nothing_set() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.listen_addr(), "127.0.0.1:8080".parse().unwrap());
        assert!(matches!(
            &config.store,
            StoreConfig::Sqlite { url } if url == "sqlite://data/soul.db"
        ));
        assert_eq!(config.session_timeout, Duration::from_secs(3600));
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.twilio.is_none() && config.model.is_none() && config.public_url.is_none());
        assert_eq!(
            config.routing.default,
            Some(Rule::Fixed(DEFAULT_SOUL.to_owned()))
        );
        assert!(config.routing.lines.is_empty() && config.help_text.is_none());
        assert_eq!(
            config.rate_limit_per_minute,
            Some(DEFAULT_RATE_LIMIT_PER_MINUTE)
        );
    }

    #[test]
    fn a_complete_serve_configuration() {
        let mut values = serve_values();
        values.extend(super::tests::values(&[
            ("BIND", "0.0.0.0"),
            ("PORT", "3000"),
            ("SESSION_TIMEOUT", "90m"),
            ("SOUL", "samantha"),
            ("HELP_TEXT", "Text STOP to stop."),
            ("LOG_FORMAT", "JSON"),
            ("RATE_LIMIT_PER_MINUTE", "12"),
            ("SOUL_MODEL", "gpt-4.1-mini"),
            ("DATABASE_URL", "postgresql://u:pw@db/soul"),
        ]));
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.listen_addr(), "0.0.0.0:3000".parse().unwrap());
        assert_eq!(
            config.public_url.as_ref().map(PublicUrl::as_str),
            Some("https://soul.example.org")
        );
        let twilio = config.twilio.as_ref().unwrap();
        assert_eq!(twilio.account_sid, ACCOUNT);
        assert_eq!(twilio.auth_token.expose(), "token-value");
        assert_eq!(twilio.sender, Sender::From("+15005550006".to_owned()));
        assert_eq!(twilio.api_base, "https://api.twilio.com");
        let model = config.model.as_ref().unwrap();
        assert_eq!(model.api_key.as_ref().unwrap().expose(), "sk-secret");
        assert_eq!(model.base_url, "https://api.openai.com/v1");
        assert_eq!(model.model, "gpt-4.1-mini");
        assert!(matches!(
            &config.store,
            StoreConfig::Postgres { url } if url.expose() == "postgresql://u:pw@db/soul"
        ));
        assert_eq!(config.session_timeout, Duration::from_secs(90 * 60));
        assert_eq!(
            config.routing.default,
            Some(Rule::Fixed("samantha".to_owned()))
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.rate_limit_per_minute, NonZeroU32::new(12));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut values = serve_values();
        values.insert("DATABASE_URL".into(), "postgres://u:hunter2@db/soul".into());
        values.insert(
            "PUBLIC_URL".into(),
            "https://twilio:open-sesame@soul.example.org".into(),
        );
        let config = Config::from_values(&values, Level::Serve).unwrap();
        let debug = format!("{config:?}");
        assert!(
            debug.contains("https://twilio:****@soul.example.org"),
            "{debug}"
        );
        for secret in ["token-value", "sk-secret", "hunter2", "open-sesame"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert_eq!(Secret::new("x").to_string(), "<redacted>");
    }

    #[test]
    fn serve_reports_everything_missing_at_once() {
        let found = problems(&BTreeMap::new(), Level::Serve);
        let missing: Vec<&str> = found
            .iter()
            .map(|problem| match problem {
                Problem::Missing { key, .. } => *key,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            missing,
            [
                "PUBLIC_URL",
                "TWILIO_ACCOUNT_SID",
                "TWILIO_AUTH_TOKEN",
                "TWILIO_FROM",
                "OPENAI_API_KEY"
            ]
        );
        let message = ConfigError { problems: found }.to_string();
        assert!(message.contains("PUBLIC_URL is required"), "{message}");
        assert_eq!(message.lines().count(), 6, "{message}");
    }

    #[test]
    fn each_level_needs_only_its_own() {
        assert!(Config::from_values(&BTreeMap::new(), Level::Migrate).is_ok());
        let chat = problems(&BTreeMap::new(), Level::Chat);
        assert!(
            matches!(
                chat.as_slice(),
                [Problem::Missing {
                    key: "OPENAI_API_KEY",
                    ..
                }]
            ),
            "{chat:?}"
        );
        // A local model server needs no key.
        let local = values(&[("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")]);
        let config = Config::from_values(&local, Level::Chat).unwrap();
        let model = config.model.unwrap();
        assert!(model.api_key.is_none());
        assert_eq!(model.base_url, "http://127.0.0.1:11434/v1");
        // Half a Twilio configuration is no matter for chat.
        let mut partial = values(&[("OPENAI_API_KEY", "k"), ("TWILIO_ACCOUNT_SID", ACCOUNT)]);
        assert!(
            Config::from_values(&partial, Level::Chat)
                .unwrap()
                .twilio
                .is_none()
        );
        partial.insert("TWILIO_AUTH_TOKEN".into(), "t".into());
        partial.insert("TWILIO_MESSAGING_SERVICE_SID".into(), SERVICE.into());
        let twilio = Config::from_values(&partial, Level::Chat)
            .unwrap()
            .twilio
            .unwrap();
        assert_eq!(twilio.sender, Sender::MessagingService(SERVICE.to_owned()));
    }

    #[test]
    fn malformed_values_are_all_reported_without_their_values() {
        let mut values = serve_values();
        values.extend(super::tests::values(&[
            ("BIND", "localhost:80"),
            ("PORT", "70000"),
            ("PUBLIC_URL", "soul.example.org"),
            ("TWILIO_ACCOUNT_SID", "ACnope"),
            ("TWILIO_FROM", "555-1234"),
            ("TWILIO_API_BASE", "ftp://api.twilio.com"),
            ("OPENAI_BASE_URL", "not a url"),
            ("SESSION_TIMEOUT", "forever"),
            ("LOG_FORMAT", "xml"),
            ("RATE_LIMIT_PER_MINUTE", "0"),
            ("DATABASE_URL", "mysql://db/soul"),
        ]));
        let found = problems(&values, Level::Serve);
        let malformed: Vec<&str> = found
            .iter()
            .filter_map(|problem| match problem {
                Problem::Malformed { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            malformed,
            [
                "BIND",
                "PORT",
                "PUBLIC_URL",
                "TWILIO_ACCOUNT_SID",
                "TWILIO_FROM",
                "TWILIO_API_BASE",
                "OPENAI_BASE_URL",
                "DATABASE_URL",
                "SESSION_TIMEOUT",
                "LOG_FORMAT",
                "RATE_LIMIT_PER_MINUTE",
            ]
        );
        // Only malformed problems: a present-but-bad value is not also "missing".
        assert_eq!(found.len(), malformed.len(), "{found:?}");
        // What was given is shown with what is expected, but nothing after a database URL's
        // scheme, which may hold a password.
        let message = ConfigError { problems: found }.to_string();
        for shown in [
            "BIND is \"localhost:80\": not an IP address",
            "PORT is \"70000\": not a port number from 0 to 65535",
            "TWILIO_ACCOUNT_SID is \"ACnope\"",
            "TWILIO_FROM is \"555-1234\"",
            "TWILIO_API_BASE is \"ftp://api.twilio.com\": not an http:// or https:// URL",
            "DATABASE_URL is \"mysql:…\"",
            "LOG_FORMAT is \"xml\"",
        ] {
            assert!(message.contains(shown), "{shown:?} not in {message}");
        }
        assert!(!message.contains("db/soul"), "{message}");
    }

    /// Each malformed URL says what is wrong with it, and a password in it is not shown.
    #[test]
    fn url_problems_name_their_cause_and_hide_passwords() {
        let problem = |url: &str| {
            let found = problems(&values(&[("PUBLIC_URL", url)]), Level::Migrate);
            ConfigError { problems: found }.to_string()
        };
        let query = problem("https://sms.example.org/hook?x=1");
        assert!(query.contains("a URL with a query string"), "{query}");
        assert!(!query.contains("fragment"), "{query}");
        let fragment = problem("https://sms.example.org/#top");
        assert!(fragment.contains("a URL with a fragment"), "{fragment}");
        let password = problem("https://twilio:open-sesame@sms.example.org/?x=1");
        assert!(
            password.contains("\"https://twilio:****@sms.example.org/?x=1\""),
            "{password}"
        );
        assert!(!password.contains("open-sesame"), "{password}");
    }

    /// A conflict names the settings that are set, not one that is missing.
    #[test]
    fn a_store_conflict_names_what_is_set() {
        let found = problems(
            &values(&[
                ("DATABASE_URL", "postgres://db/soul"),
                ("SUPABASE_SERVICE_KEY", "k"),
            ]),
            Level::Migrate,
        );
        assert!(
            matches!(found.as_slice(), [Problem::Conflict { keys, .. }]
                if keys == "DATABASE_URL and SUPABASE_SERVICE_KEY"),
            "{found:?}"
        );
    }

    #[test]
    fn conflicting_settings() {
        let mut values = serve_values();
        values.insert("TWILIO_MESSAGING_SERVICE_SID".into(), SERVICE.into());
        let found = problems(&values, Level::Serve);
        assert!(
            matches!(found.as_slice(), [Problem::Conflict { keys, .. }] if keys.contains("TWILIO_FROM")),
            "{found:?}"
        );

        let both_stores = super::tests::values(&[
            ("DATABASE_URL", "sqlite://x.db"),
            ("SUPABASE_URL", "https://p.supabase.co"),
            ("SUPABASE_SERVICE_KEY", "k"),
        ]);
        let found = problems(&both_stores, Level::Migrate);
        assert!(
            matches!(found.as_slice(), [Problem::Conflict { keys, .. }] if keys.contains("DATABASE_URL")),
            "{found:?}"
        );

        let two_keys = super::tests::values(&[
            ("SUPABASE_URL", "https://p.supabase.co"),
            ("SUPABASE_SERVICE_KEY", "k1"),
            ("SUPABASE_SERVICE_ROLE_KEY", "k2"),
        ]);
        let found = problems(&two_keys, Level::Migrate);
        assert!(
            matches!(found.as_slice(), [Problem::Conflict { .. }]),
            "{found:?}"
        );
    }
}
