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

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::segments;

/// The environment variable naming the TOML file (overridden by `--config`).
pub(crate) const CONFIG_FILE_VARIABLE: &str = "SOUL_CONFIG";

/// Every setting's name.
pub(crate) const KEYS: &[&str] = &[
    "BIND",
    "PORT",
    // The HTTP listener's bounds and the operations endpoints' token (`HttpLimits`).
    "MAX_CONNECTIONS",
    "HEADER_READ_TIMEOUT",
    "REQUEST_TIMEOUT",
    "METRICS_TOKEN",
    "PUBLIC_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_FROM",
    "TWILIO_MESSAGING_SERVICE_SID",
    "TWILIO_API_BASE",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "SOUL_MODEL",
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SESSION_TIMEOUT",
    "SOUL",
    "HELP_TEXT",
    "LOG_FORMAT",
    "RATE_LIMIT_PER_MINUTE",
    "TURN_CONCURRENCY",
    "SOUL_CRISIS_RESOURCES",
    "OUTBOX_RETRY_AFTER",
    "SWEEP_INTERVAL",
    "SHUTDOWN_TIMEOUT",
    "TURN_LEASE",
    "FALLBACK_REPLY",
    "MODEL_TIMEOUT",
    "MODEL_RETRY_BUDGET",
    "MAX_REPLY_SEGMENTS",
];

const DEFAULT_DATABASE_URL: &str = "sqlite://data/soul.db";
const DEFAULT_TWILIO_API_BASE: &str = "https://api.twilio.com";
const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_MODEL: &str = "gpt-4o-mini";
const DEFAULT_PORT: u16 = 8080;
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long a reply's sender holds its claim on it: longer than one send's retry budget (30 s,
/// and a last attempt of 10 s), so that a send retried to the end is not cut off by its claim.
const DEFAULT_OUTBOX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The shortest claim on a reply: its sender needs time for Twilio's answers within it.
const MIN_OUTBOX_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A person texts in bursts of a few short messages; a script sends dozens. Each answered
/// message is a model call, so the default keeps a runaway sender's bill small.
const DEFAULT_RATE_LIMIT_PER_MINUTE: NonZeroU32 = NonZeroU32::new(6).expect("not zero");
/// Turns a gateway runs at once; the rest wait, stored, for a slot. Each running turn holds a
/// model request and its buffers: the bound keeps memory flat when thousands of conversations
/// arrive together, and at a few seconds per model call it still allows hundreds of turns a second.
const DEFAULT_TURN_CONCURRENCY: NonZeroU32 = NonZeroU32::new(500).expect("not zero");
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(15);
/// Under the 30 s most process managers wait after SIGTERM before SIGKILL.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longer than a model call's whole retry budget (and than two calls failing fast), so a slow
/// turn is not taken over while it runs; a turn whose model calls all crawl near the budget can
/// still outlast it, and is then re-run by whichever worker takes the session over.
const DEFAULT_TURN_LEASE: Duration = Duration::from_secs(120);
/// One model attempt: an SMS-sized answer takes a few seconds; a stalled server is given up on
/// long before the person does.
const DEFAULT_MODEL_TIMEOUT: Duration = Duration::from_secs(20);
/// One model call, retries and their waits included: two full attempts and a backoff, after
/// which the person gets the fallback reply. Well under [`DEFAULT_TURN_LEASE`].
const DEFAULT_MODEL_RETRY_BUDGET: Duration = Duration::from_secs(45);
/// A few segments: Sage's longest in-character reply (320 characters, and an emoji or a curly
/// apostrophe makes it UCS-2 at 67 a segment) fits, a model that runs on is cut to about 4 US
/// cents a reply.
const DEFAULT_MAX_REPLY_SEGMENTS: u8 = 5;

/// Connections served at once by default; lowered at start to half the open-file limit.
const DEFAULT_MAX_CONNECTIONS: NonZeroU32 = NonZeroU32::new(4096).expect("not zero");
/// Twilio sends a request's headers at once; a client that has not within this time is not
/// Twilio, or has gone.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Twilio waits 15 s for a webhook's answer: past that no answer matters.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

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

/// A credential: printed as `<redacted>` by both `Debug` and `Display`.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who outbound messages are sent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sender {
    /// A phone number (E.164) or short code: the `From` field.
    From(String),
    /// A messaging service, which picks the number: the `MessagingServiceSid` field.
    MessagingService(String),
}

/// Twilio's account and how to send.
#[derive(Debug, Clone)]
pub(crate) struct TwilioConfig {
    /// `AC…`.
    pub(crate) account_sid: String,
    /// Signs webhooks and authenticates API calls.
    pub(crate) auth_token: Secret,
    /// Who replies come from.
    pub(crate) sender: Sender,
    /// The REST API's base URL, without a trailing slash.
    pub(crate) api_base: String,
}

/// The OpenAI-compatible model server.
#[derive(Debug, Clone)]
pub(crate) struct ModelConfig {
    /// The API key; `None` for a server that needs none.
    pub(crate) api_key: Option<Secret>,
    /// The base URL (ends in `/v1` for OpenAI).
    pub(crate) base_url: String,
    /// The model used when a soul names none.
    pub(crate) model: String,
}

/// Where sessions and messages are kept.
#[derive(Debug, Clone)]
pub(crate) enum StoreConfig {
    /// A SQLite file, e.g. `sqlite://data/soul.db`.
    Sqlite {
        /// The `sqlite:` URL.
        url: String,
    },
    /// PostgreSQL; the URL may hold a password, so it is a secret.
    Postgres {
        /// The `postgres://` or `postgresql://` URL.
        url: Secret,
    },
    /// Supabase over its REST API, with its service-role key.
    Supabase {
        /// The project URL.
        url: String,
        /// The service-role key.
        service_key: Secret,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the HTTP listener bounds its clients, and who may read the operations endpoints.
#[derive(Debug, Clone)]
pub(crate) struct HttpLimits {
    /// Connections served at once (`MAX_CONNECTIONS`); more wait in the kernel's accept queue.
    /// Lowered at start to half the open-file limit, so that the store, the model and Twilio
    /// always have descriptors left.
    pub(crate) max_connections: NonZeroU32,
    /// How long a client has to send a request's headers, from the connection's opening or from
    /// its previous answer (`HEADER_READ_TIMEOUT`): also how long an idle connection is kept.
    pub(crate) header_read_timeout: Duration,
    /// How long a request may take from its headers to its answer, its body and its handling
    /// (`REQUEST_TIMEOUT`); answered 408 past it.
    pub(crate) request_timeout: Duration,
    /// When set (`METRICS_TOKEN`), `/metrics` and `/readyz` require `Authorization: Bearer` with
    /// it; `/healthz` stays open for liveness probes.
    pub(crate) metrics_token: Option<Secret>,
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
    pub(crate) public_url: Option<String>,
    /// Twilio; always present for `serve`.
    pub(crate) twilio: Option<TwilioConfig>,
    /// The model; always present for `chat` and `serve`.
    pub(crate) model: Option<ModelConfig>,
    /// The store.
    pub(crate) store: StoreConfig,
    /// Silence after which a conversation starts a new session.
    pub(crate) session_timeout: Duration,
    /// The soul to run; `None` means the companion, `sage`.
    pub(crate) soul: Option<String>,
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
    /// What the person gets when the model cannot answer; `None` means the driver's default.
    pub(crate) fallback_reply: Option<String>,
    /// The time limit of one model attempt.
    pub(crate) model_timeout: Duration,
    /// The time one model call may take in all, retries and their waits included; shorter than
    /// `turn_lease`.
    pub(crate) model_retry_budget: Duration,
    /// The HTTP listener's bounds and the operations endpoints' token.
    pub(crate) http: HttpLimits,
    /// The most SMS segments a reply may take; a longer one is cut where a sentence ends.
    pub(crate) max_reply_segments: u8,
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
            .parsed("BIND", "not an IP address", |text| text.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let port = reader
            .parsed("PORT", "not a port number (0-65535)", |text| {
                text.parse().ok()
            })
            .unwrap_or(DEFAULT_PORT);
        let http = reader.http();
        let public_url = reader.url("PUBLIC_URL", false);
        if reader.get("PUBLIC_URL").is_none() && level >= Level::Serve {
            reader.missing("PUBLIC_URL", "to check Twilio's webhook signatures");
        }
        let twilio = reader.twilio(level);
        let model = reader.model(level);
        let store = reader.store();
        let session_timeout = reader
            .duration("SESSION_TIMEOUT")
            .unwrap_or(DEFAULT_SESSION_TIMEOUT);
        let soul = reader.get("SOUL").map(str::to_owned);
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
            reader.problems.push(Problem::Malformed {
                key: "OUTBOX_RETRY_AFTER".to_owned(),
                reason: "shorter than 1s: a reply's sender holds its claim on it this long, and \
                         needs that long at least for Twilio to answer",
            });
        }
        let sweep_interval = reader
            .duration("SWEEP_INTERVAL")
            .unwrap_or(DEFAULT_SWEEP_INTERVAL);
        let shutdown_timeout = reader
            .duration("SHUTDOWN_TIMEOUT")
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        let turn_lease = reader.duration("TURN_LEASE").unwrap_or(DEFAULT_TURN_LEASE);
        let fallback_reply = reader.get("FALLBACK_REPLY").map(str::to_owned);
        let model_timeout = reader
            .duration("MODEL_TIMEOUT")
            .unwrap_or(DEFAULT_MODEL_TIMEOUT);
        let model_retry_budget = reader
            .duration("MODEL_RETRY_BUDGET")
            .unwrap_or(DEFAULT_MODEL_RETRY_BUDGET);
        if model_retry_budget < model_timeout {
            reader.problems.push(Problem::Conflict {
                keys: "MODEL_RETRY_BUDGET and MODEL_TIMEOUT",
                reason: "the budget covers every attempt of a model call, so it must be at least \
                         one attempt's time limit",
            });
        }
        let max_reply_segments = reader.max_reply_segments();
        if turn_lease <= model_retry_budget {
            reader.problems.push(Problem::Conflict {
                keys: "TURN_LEASE and MODEL_RETRY_BUDGET",
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
                soul,
                help_text,
                log_format,
                rate_limit_per_minute,
                turn_concurrency,
                crisis_resources,
                outbox_retry_after,
                sweep_interval,
                shutdown_timeout,
                turn_lease,
                fallback_reply,
                model_timeout,
                model_retry_budget,
                http,
                max_reply_segments,
            }),
            _ => Err(ConfigError {
                problems: reader.problems,
            }),
        }
    }
}

/// One thing wrong with the configuration. Messages name settings, never their values, which
/// may be secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Problem {
    /// A required setting is absent.
    #[error("{key} is required {why}")]
    Missing {
        /// The setting.
        key: &'static str,
        /// What needs it.
        why: &'static str,
    },
    /// A setting's value is not of the expected form.
    #[error("{key} is malformed: {reason}")]
    Malformed {
        /// The setting.
        key: String,
        /// What form was expected.
        reason: &'static str,
    },
    /// Settings that cannot be used together.
    #[error("{keys}: {reason}")]
    Conflict {
        /// The settings, as written in the message.
        keys: &'static str,
        /// Why they conflict.
        reason: &'static str,
    },
    /// A key in the configuration file that names no setting.
    #[error("{path}: {key} is not a setting")]
    UnknownKey {
        /// The file.
        path: String,
        /// The key, as flattened (`[twilio] frm` is `TWILIO_FRM`).
        key: String,
    },
    /// `SOUL` names a soul this build does not have.
    #[error("SOUL names no soul of this build ({known})")]
    UnknownSoul {
        /// The souls this build has, comma-separated.
        known: String,
    },
    /// The configuration file cannot be read or parsed.
    #[error("cannot use the configuration file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Everything wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The problems, in the order settings are read.
    pub(crate) problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads the configuration for `level` from the TOML file `config_file` (the `--config`
/// argument) or else the one named by `SOUL_CONFIG`, if any, with the environment overriding it,
/// and checks it against what this build can run (`souls`: the registered soul names).
pub(crate) fn load(
    level: Level,
    config_file: Option<&Path>,
    souls: &[&str],
) -> Result<Config, ConfigError> {
    match load_values(level, config_file) {
        Ok(config) => {
            let problems = check_supported(&config, souls);
            if problems.is_empty() {
                Ok(config)
            } else {
                Err(ConfigError { problems })
            }
        }
        Err(error) => Err(error),
    }
}

/// What a valid configuration asks for that this build cannot do: a soul it does not have.
pub(crate) fn check_supported(config: &Config, souls: &[&str]) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(soul) = &config.soul
        && !souls.contains(&soul.as_str())
    {
        problems.push(Problem::UnknownSoul {
            known: souls.join(", "),
        });
    }
    problems
}

fn load_values(level: Level, config_file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let env = environment(&mut problems);
    let path = config_file.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(CONFIG_FILE_VARIABLE)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    let mut values = match path {
        Some(path) => read_file(&path, &mut problems),
        None => BTreeMap::new(),
    };
    values.extend(env);
    match Config::from_values(&values, level) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError { problems }),
        Err(error) => {
            problems.extend(error.problems);
            Err(ConfigError { problems })
        }
    }
}

/// The settings present in the process environment.
fn environment(problems: &mut Vec<Problem>) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    for key in KEYS {
        let Some(value) = std::env::var_os(key) else {
            continue;
        };
        match value.into_string() {
            Ok(value) => {
                values.insert((*key).to_owned(), value);
            }
            Err(_) => problems.push(Problem::Malformed {
                key: (*key).to_owned(),
                reason: "not valid UTF-8",
            }),
        }
    }
    values
}

fn read_file(path: &Path, problems: &mut Vec<Problem>) -> BTreeMap<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_toml(&text, &path.display().to_string(), problems),
        Err(error) => {
            problems.push(Problem::File {
                path: path.display().to_string(),
                reason: error.to_string(),
            });
            BTreeMap::new()
        }
    }
}

/// The settings in a TOML document, tables flattened into their keys' prefixes; problems
/// (unknown keys, values that are not scalars, bad syntax) are added to `problems`.
pub(crate) fn parse_toml(
    text: &str,
    path: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    match text.parse::<toml::Table>() {
        Ok(table) => flatten(&table, "", path, &mut values, problems),
        // The parser's message quotes the offending line, which may hold a secret: give only
        // where it is.
        Err(error) => problems.push(Problem::File {
            path: path.to_owned(),
            reason: match error.span() {
                Some(span) => format!(
                    "invalid TOML at line {}",
                    text[..span.start.min(text.len())].lines().count().max(1)
                ),
                None => "invalid TOML".to_owned(),
            },
        }),
    }
    values
}

fn flatten(
    table: &toml::Table,
    prefix: &str,
    path: &str,
    values: &mut BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) {
    for (name, value) in table {
        let key = format!("{prefix}{}", name.to_ascii_uppercase());
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(inner, &format!("{key}_"), path, values, problems);
                continue;
            }
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Datetime(_) | toml::Value::Array(_) => {
                if KEYS.contains(&key.as_str()) {
                    problems.push(Problem::Malformed {
                        key,
                        reason: "not a string or number",
                    });
                } else {
                    problems.push(Problem::UnknownKey {
                        path: path.to_owned(),
                        key,
                    });
                }
                continue;
            }
        };
        if KEYS.contains(&key.as_str()) {
            values.insert(key, text);
        } else {
            problems.push(Problem::UnknownKey {
                path: path.to_owned(),
                key,
            });
        }
    }
}

/// Reads settings out of the map, collecting problems as it goes.
struct Reader<'a> {
    values: &'a BTreeMap<String, String>,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// The trimmed value of `key`; empty counts as unset.
    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    fn missing(&mut self, key: &'static str, why: &'static str) {
        self.problems.push(Problem::Missing { key, why });
    }

    fn malformed(&mut self, key: &str, reason: &'static str) {
        self.problems.push(Problem::Malformed {
            key: key.to_owned(),
            reason,
        });
    }

    /// `key` parsed by `parse`; a value it refuses is reported as `reason`.
    fn parsed<T>(
        &mut self,
        key: &str,
        reason: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let text = self.get(key)?;
        let parsed = parse(text);
        if parsed.is_none() {
            self.malformed(key, reason);
        }
        parsed
    }

    /// `MAX_REPLY_SEGMENTS`, and whether the crisis resources fit in it: they are never cut, so
    /// a reply too short for them would have to be longer than the limit.
    fn max_reply_segments(&mut self) -> u8 {
        let max = self
            .parsed(
                "MAX_REPLY_SEGMENTS",
                "not a whole number from 1 to 10",
                |text| {
                    text.parse::<u8>()
                        .ok()
                        .filter(|n| (1..=segments::MAX_REPLY_SEGMENTS_CEILING).contains(n))
                },
            )
            .unwrap_or(DEFAULT_MAX_REPLY_SEGMENTS);
        if let Some(resources) = self.get("SOUL_CRISIS_RESOURCES")
            && segments::segment_count(resources) > usize::from(max)
        {
            self.problems.push(Problem::Conflict {
                keys: "SOUL_CRISIS_RESOURCES and MAX_REPLY_SEGMENTS",
                reason: "the crisis resources take more SMS segments than a reply may, and they \
                         are never cut: shorten them or allow more segments",
            });
        }
        max
    }

    /// A positive duration such as `90s`, `1h` or `500ms`.
    fn duration(&mut self, key: &str) -> Option<Duration> {
        self.parsed(key, "not a positive duration such as 1h or 90m", |text| {
            humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
        })
    }

    fn secret(&self, key: &str) -> Option<Secret> {
        self.get(key).map(Secret::new)
    }

    /// An absolute http(s) URL, trailing slash removed; `with_query` allows a query string.
    fn url(&mut self, key: &str, with_query: bool) -> Option<String> {
        self.parsed(
            key,
            "not an absolute http(s) URL without a fragment",
            |text| {
                let url = url::Url::parse(text).ok()?;
                let fits = matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some_and(|host| !host.is_empty())
                    && url.fragment().is_none()
                    && (with_query || url.query().is_none());
                // The text, not the parsed URL: Twilio signs the URL exactly as configured.
                fits.then(|| text.trim_end_matches('/').to_owned())
            },
        )
    }

    fn http(&mut self) -> HttpLimits {
        HttpLimits {
            max_connections: self
                .parsed("MAX_CONNECTIONS", "not a positive integer", |text| {
                    text.parse().ok()
                })
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            header_read_timeout: self
                .duration("HEADER_READ_TIMEOUT")
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            request_timeout: self
                .duration("REQUEST_TIMEOUT")
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            metrics_token: self.secret("METRICS_TOKEN"),
        }
    }

    fn twilio(&mut self, level: Level) -> Option<TwilioConfig> {
        let needed = level >= Level::Serve;
        let account_sid = self.parsed(
            "TWILIO_ACCOUNT_SID",
            "not AC followed by 32 hex digits",
            |text| is_sid(text, "AC").then(|| text.to_owned()),
        );
        let auth_token = self.secret("TWILIO_AUTH_TOKEN");
        let from = self.parsed(
            "TWILIO_FROM",
            "not an E.164 number (+ and 8 to 15 digits) or a short code",
            |text| is_sender_number(text).then(|| text.to_owned()),
        );
        let service = self.parsed(
            "TWILIO_MESSAGING_SERVICE_SID",
            "not MG followed by 32 hex digits",
            |text| is_sid(text, "MG").then(|| text.to_owned()),
        );
        let api_base = self
            .url("TWILIO_API_BASE", false)
            .unwrap_or_else(|| DEFAULT_TWILIO_API_BASE.to_owned());

        let both_senders =
            self.get("TWILIO_FROM").is_some() && self.get("TWILIO_MESSAGING_SERVICE_SID").is_some();
        if both_senders {
            self.problems.push(Problem::Conflict {
                keys: "TWILIO_FROM and TWILIO_MESSAGING_SERVICE_SID",
                reason: "set exactly one: replies come from a number or a messaging service",
            });
        }
        if needed {
            const WHY: &str = "to receive and send SMS";
            if self.get("TWILIO_ACCOUNT_SID").is_none() {
                self.missing("TWILIO_ACCOUNT_SID", WHY);
            }
            if auth_token.is_none() {
                self.missing("TWILIO_AUTH_TOKEN", WHY);
            }
            if self.get("TWILIO_FROM").is_none()
                && self.get("TWILIO_MESSAGING_SERVICE_SID").is_none()
            {
                self.missing(
                    "TWILIO_FROM",
                    "(or TWILIO_MESSAGING_SERVICE_SID) to send replies",
                );
            }
        }
        let sender = match (from, service) {
            (Some(number), None) if !both_senders => Sender::From(number),
            (None, Some(sid)) if !both_senders => Sender::MessagingService(sid),
            _ => return None,
        };
        Some(TwilioConfig {
            account_sid: account_sid?,
            auth_token: auth_token?,
            sender,
            api_base,
        })
    }

    fn model(&mut self, level: Level) -> Option<ModelConfig> {
        let api_key = self.secret("OPENAI_API_KEY");
        let base_url = self.url("OPENAI_BASE_URL", false);
        let model = self.get("SOUL_MODEL").unwrap_or(DEFAULT_MODEL).to_owned();
        if api_key.is_none() && self.get("OPENAI_BASE_URL").is_none() {
            if level >= Level::Chat {
                self.missing(
                    "OPENAI_API_KEY",
                    "(or OPENAI_BASE_URL for a server that needs no key) to run a soul",
                );
            }
            return None;
        }
        // A malformed OPENAI_BASE_URL is already reported; no model is built from it.
        if base_url.is_none() && self.get("OPENAI_BASE_URL").is_some() {
            return None;
        }
        Some(ModelConfig {
            api_key,
            base_url: base_url.unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_owned()),
            model,
        })
    }

    fn store(&mut self) -> Option<StoreConfig> {
        let service_key = self.supabase_key();
        let supabase_url = self.url("SUPABASE_URL", false);
        let key_set = self.get("SUPABASE_SERVICE_KEY").is_some()
            || self.get("SUPABASE_SERVICE_ROLE_KEY").is_some();
        let supabase_set = self.get("SUPABASE_URL").is_some() || key_set;
        let database_url = self.get("DATABASE_URL").map(str::to_owned);

        if supabase_set {
            if database_url.is_some() {
                self.problems.push(Problem::Conflict {
                    keys: "DATABASE_URL and SUPABASE_URL",
                    reason: "set one store: a database URL or a Supabase project",
                });
                return None;
            }
            const WHY: &str = "to use Supabase";
            if self.get("SUPABASE_URL").is_none() {
                self.missing("SUPABASE_URL", WHY);
            }
            if !key_set {
                self.missing(
                    "SUPABASE_SERVICE_KEY",
                    "(or SUPABASE_SERVICE_ROLE_KEY) to use Supabase",
                );
            }
            return Some(StoreConfig::Supabase {
                url: supabase_url?,
                service_key: service_key?,
            });
        }

        let url = database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if url.starts_with("sqlite:") {
            Some(StoreConfig::Sqlite { url })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(StoreConfig::Postgres {
                url: Secret::new(url),
            })
        } else {
            self.malformed(
                "DATABASE_URL",
                "neither a sqlite: nor a postgres:// or postgresql:// URL",
            );
            None
        }
    }

    /// `SUPABASE_SERVICE_KEY`, or its other name `SUPABASE_SERVICE_ROLE_KEY`; both may be set
    /// only to the same value.
    fn supabase_key(&mut self) -> Option<Secret> {
        let key = self.get("SUPABASE_SERVICE_KEY");
        let role_key = self.get("SUPABASE_SERVICE_ROLE_KEY");
        match (key, role_key) {
            (Some(key), Some(role_key)) if key != role_key => {
                self.problems.push(Problem::Conflict {
                    keys: "SUPABASE_SERVICE_KEY and SUPABASE_SERVICE_ROLE_KEY",
                    reason: "both are set, to different values",
                });
                None
            }
            (Some(key), _) | (None, Some(key)) => Some(Secret::new(key)),
            (None, None) => None,
        }
    }
}

/// Whether `text` is `prefix` followed by 32 hex digits, the shape of every Twilio SID.
fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == prefix.len() + 32
        && text.starts_with(prefix)
        && text
            .bytes()
            .skip(prefix.len())
            .all(|b| b.is_ascii_hexdigit())
}

/// An E.164 number (`+`, 8 to 15 digits, no leading zero) or a short code (3 to 8 digits).
fn is_sender_number(text: &str) -> bool {
    let all_digits = |digits: &str| digits.bytes().all(|b| b.is_ascii_digit());
    match text.strip_prefix('+') {
        Some(digits) => {
            (8..=15).contains(&digits.len()) && all_digits(digits) && !digits.starts_with('0')
        }
        None => (3..=8).contains(&text.len()) && all_digits(text),
    }
}

/// The property the `config` fuzz target checks (`docs/fuzzing.md`); the tests replay the
/// corpus in `fuzz/corpus/config` through it.
///
/// `data`'s first byte picks the level; the rest is read twice, as `NAME=value` lines (an
/// environment) and as a TOML file. Neither panics, every key the TOML reading keeps is a
/// setting, and each map of settings passes [`fuzz_check_values`].
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz_check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let level = [Level::Migrate, Level::Chat, Level::Serve][usize::from(selector % 3)];
    let text = String::from_utf8_lossy(rest);
    let environment: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    fuzz_check_values(&environment, level);
    let mut problems = Vec::new();
    let from_file = parse_toml(&text, "fuzz.toml", &mut problems);
    assert!(from_file.keys().all(|key| KEYS.contains(&key.as_str())));
    fuzz_check_values(&from_file, level);
}

/// A configuration that loads has what `level` needs, and what a result shows (an error's
/// `Display` and `Debug`, a configuration's `Debug`) is the same whatever the secrets' values
/// are. Comparing with stand-ins, rather than searching the text for each secret, holds for
/// secrets as short as `a`, which any message contains.
#[cfg(any(test, fuzzing))]
fn fuzz_check_values(values: &BTreeMap<String, String>, level: Level) {
    let shown = |values: &BTreeMap<String, String>| match Config::from_values(values, level) {
        Ok(config) => {
            assert!(level < Level::Chat || config.model.is_some());
            assert!(level < Level::Serve || config.twilio.is_some());
            assert!(level < Level::Serve || config.public_url.is_some());
            format!("{config:?}")
        }
        Err(error) => {
            assert!(!error.problems.is_empty());
            format!("{error}\n{error:?}")
        }
    };
    let set = |key: &str| {
        values
            .get(key)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    // The reader only asks whether a secret is set, whether the two names of the Supabase key
    // agree, and which scheme a database URL has: the stand-ins keep exactly that.
    let mut masked = values.clone();
    for (key, stand_in) in [
        ("TWILIO_AUTH_TOKEN", "twilio-token"),
        ("OPENAI_API_KEY", "openai-key"),
        ("SUPABASE_SERVICE_KEY", "supabase-key"),
        ("METRICS_TOKEN", "metrics-token"),
    ] {
        if set(key).is_some() {
            masked.insert(key.to_owned(), stand_in.to_owned());
        }
    }
    if let Some(role_key) = set("SUPABASE_SERVICE_ROLE_KEY") {
        let stand_in = if set("SUPABASE_SERVICE_KEY") == Some(role_key) {
            "supabase-key"
        } else {
            "supabase-role-key"
        };
        masked.insert("SUPABASE_SERVICE_ROLE_KEY".to_owned(), stand_in.to_owned());
    }
    if let Some(url) = set("DATABASE_URL")
        && let Some(scheme) = ["postgres://", "postgresql://"]
            .into_iter()
            .find(|scheme| url.starts_with(scheme))
    {
        masked.insert("DATABASE_URL".to_owned(), format!("{scheme}stand-in"));
    }
    assert_eq!(
        shown(values),
        shown(&masked),
        "a secret's value changed what is shown"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn serve_values() -> BTreeMap<String, String> {
        values(&[
            ("PUBLIC_URL", "https://soul.example.org/"),
            ("TWILIO_ACCOUNT_SID", ACCOUNT),
            ("TWILIO_AUTH_TOKEN", "token-value"),
            ("TWILIO_FROM", "+15005550006"),
            ("OPENAI_API_KEY", "sk-secret"),
        ])
    }

    fn problems(values: &BTreeMap<String, String>, level: Level) -> Vec<Problem> {
        match Config::from_values(values, level) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(error) => error.problems,
        }
    }

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
        assert!(config.soul.is_none() && config.help_text.is_none());
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
            config.public_url.as_deref(),
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
        assert_eq!(config.soul.as_deref(), Some("samantha"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.rate_limit_per_minute, NonZeroU32::new(12));
    }

    #[test]
    fn turn_concurrency_defaults_and_must_be_positive() {
        let config = Config::from_values(&serve_values(), Level::Serve).unwrap();
        assert_eq!(config.turn_concurrency, DEFAULT_TURN_CONCURRENCY);
        let mut values = serve_values();
        values.insert("TURN_CONCURRENCY".into(), "8".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.turn_concurrency, NonZeroU32::new(8).unwrap());
        for bad in ["0", "-1", "many"] {
            values.insert("TURN_CONCURRENCY".into(), bad.into());
            assert!(
                problems(&values, Level::Serve).iter().any(
                    |p| matches!(p, Problem::Malformed { key, .. } if key == "TURN_CONCURRENCY")
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_rate_limit_can_be_turned_off() {
        let mut values = serve_values();
        values.insert("RATE_LIMIT_PER_MINUTE".into(), "off".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.rate_limit_per_minute, None);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut values = serve_values();
        values.insert("DATABASE_URL".into(), "postgres://u:hunter2@db/soul".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        let debug = format!("{config:?}");
        for secret in ["token-value", "sk-secret", "hunter2"] {
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
        let message = ConfigError { problems: found }.to_string();
        for value in ["localhost:80", "ACnope", "555-1234", "mysql"] {
            assert!(!message.contains(value), "{value} in {message}");
        }
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

    #[test]
    fn supabase_selection() {
        for key_name in ["SUPABASE_SERVICE_KEY", "SUPABASE_SERVICE_ROLE_KEY"] {
            let values = values(&[("SUPABASE_URL", "https://p.supabase.co/"), (key_name, "k")]);
            let config = Config::from_values(&values, Level::Migrate).unwrap();
            assert!(
                matches!(&config.store, StoreConfig::Supabase { url, service_key }
                    if url == "https://p.supabase.co" && service_key.expose() == "k"),
                "{key_name}"
            );
        }
        let same = values(&[
            ("SUPABASE_URL", "https://p.supabase.co"),
            ("SUPABASE_SERVICE_KEY", "k"),
            ("SUPABASE_SERVICE_ROLE_KEY", "k"),
        ]);
        assert!(Config::from_values(&same, Level::Migrate).is_ok());
        let no_key = values(&[("SUPABASE_URL", "https://p.supabase.co")]);
        assert!(matches!(
            problems(&no_key, Level::Migrate).as_slice(),
            [Problem::Missing {
                key: "SUPABASE_SERVICE_KEY",
                ..
            }]
        ));
        let no_url = values(&[("SUPABASE_SERVICE_ROLE_KEY", "k")]);
        assert!(matches!(
            problems(&no_url, Level::Migrate).as_slice(),
            [Problem::Missing {
                key: "SUPABASE_URL",
                ..
            }]
        ));
    }

    #[test]
    fn database_url_schemes() {
        for (url, postgres) in [
            ("sqlite://data/soul.db", false),
            ("sqlite::memory:", false),
            ("postgres://db/soul", true),
            ("postgresql://db/soul", true),
        ] {
            let config =
                Config::from_values(&values(&[("DATABASE_URL", url)]), Level::Migrate).unwrap();
            assert_eq!(
                matches!(config.store, StoreConfig::Postgres { .. }),
                postgres,
                "{url}"
            );
        }
    }

    #[test]
    fn empty_values_count_as_unset_and_values_are_trimmed() {
        let values = values(&[
            ("PORT", ""),
            ("DATABASE_URL", "  "),
            ("OPENAI_API_KEY", " sk-x \n"),
        ]);
        let config = Config::from_values(&values, Level::Chat).unwrap();
        assert_eq!(config.port, 8080);
        assert!(matches!(config.store, StoreConfig::Sqlite { .. }));
        assert_eq!(config.model.unwrap().api_key.unwrap().expose(), "sk-x");
    }

    #[test]
    fn sender_numbers() {
        for good in ["+15005550006", "+447700900123", "12345", "898211"] {
            assert!(is_sender_number(good), "{good}");
        }
        for bad in [
            "",
            "+",
            "+0123456789",
            "+1234567",
            "5005550006a",
            "+1 500 555",
            "123456789",
        ] {
            assert!(!is_sender_number(bad), "{bad}");
        }
    }

    #[test]
    fn toml_file_flattens_tables_and_rejects_unknown_keys() {
        let text = r#"
port = 9000
public_url = "https://soul.example.org"
LOG_FORMAT = "json"

[twilio]
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "from-file"
from = "+15005550006"
frm = "+1"

[openai]
api_key = "sk-file"
"#;
        let mut found = Vec::new();
        let values = parse_toml(text, "soul.toml", &mut found);
        assert_eq!(
            found,
            [Problem::UnknownKey {
                path: "soul.toml".into(),
                key: "TWILIO_FRM".into()
            }]
        );
        assert_eq!(values.get("PORT").map(String::as_str), Some("9000"));
        assert_eq!(
            values.get("TWILIO_FROM").map(String::as_str),
            Some("+15005550006")
        );
        assert_eq!(
            values.get("OPENAI_API_KEY").map(String::as_str),
            Some("sk-file")
        );
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn toml_errors_do_not_quote_the_file() {
        let mut found = Vec::new();
        parse_toml(
            "ok = 1\nsecret = \"sk-unterminated\n",
            "soul.toml",
            &mut found,
        );
        let message = found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(message.contains("invalid TOML at line 2"), "{message}");
        assert!(!message.contains("sk-unterminated"), "{message}");

        found.clear();
        parse_toml("port = [1, 2]\nwhen = 1979-05-27", "f", &mut found);
        assert!(matches!(&found[0], Problem::Malformed { key, .. } if key == "PORT"));
        assert!(matches!(&found[1], Problem::UnknownKey { key, .. } if key == "WHEN"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut found = Vec::new();
        let mut merged = parse_toml("port = 9000\nsoul = \"file\"", "f", &mut found);
        merged.extend(values(&[("PORT", "9001")]));
        let config = Config::from_values(&merged, Level::Migrate).unwrap();
        assert_eq!(config.port, 9001);
        assert_eq!(config.soul.as_deref(), Some("file"));
    }

    #[test]
    fn load_reports_an_unreadable_file() {
        let error = load(
            Level::Migrate,
            Some(Path::new("/nonexistent/soul.toml")),
            &[],
        )
        .unwrap_err();
        assert!(
            error
                .problems
                .iter()
                .any(|problem| matches!(problem, Problem::File { .. })),
            "{error}"
        );
    }

    #[test]
    fn gateway_timings_and_crisis_text() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.outbox_retry_after, Duration::from_secs(60));
        assert_eq!(config.sweep_interval, Duration::from_secs(15));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(20));
        assert!(config.crisis_resources.is_none());

        let config = Config::from_values(
            &values(&[
                ("OUTBOX_RETRY_AFTER", "2m"),
                ("SWEEP_INTERVAL", "500ms"),
                ("SHUTDOWN_TIMEOUT", "5s"),
                ("SOUL_CRISIS_RESOURCES", " Call 999. "),
            ]),
            Level::Migrate,
        )
        .unwrap();
        assert_eq!(config.outbox_retry_after, Duration::from_secs(120));
        assert_eq!(config.sweep_interval, Duration::from_millis(500));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.crisis_resources.as_deref(), Some("Call 999."));

        let problems = problems(
            &values(&[("SWEEP_INTERVAL", "0s"), ("SHUTDOWN_TIMEOUT", "soon")]),
            Level::Migrate,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    /// A reply's claim must leave its sender time for Twilio's answers.
    #[test]
    fn outbox_retry_after_is_at_least_a_second() {
        let problems = problems(&values(&[("OUTBOX_RETRY_AFTER", "500ms")]), Level::Migrate);
        assert_eq!(
            problems,
            [Problem::Malformed {
                key: "OUTBOX_RETRY_AFTER".to_owned(),
                reason: "shorter than 1s: a reply's sender holds its claim on it this long, and \
                         needs that long at least for Twilio to answer",
            }]
        );
        let config =
            Config::from_values(&values(&[("OUTBOX_RETRY_AFTER", "1s")]), Level::Migrate).unwrap();
        assert_eq!(config.outbox_retry_after, Duration::from_secs(1));
    }

    #[test]
    fn unsupported_stores_and_unknown_souls_are_refused() {
        let souls = ["sage", "pip"];
        let config = Config::from_values(
            &values(&[
                ("SUPABASE_URL", "https://p.supabase.co"),
                ("SUPABASE_SERVICE_KEY", "k"),
                ("SOUL", "samantha"),
            ]),
            Level::Migrate,
        )
        .unwrap();
        let problems = check_supported(&config, &souls);
        assert_eq!(
            problems,
            [Problem::UnknownSoul {
                known: "sage, pip".to_owned()
            },]
        );
        let config = Config::from_values(&values(&[("SOUL", "pip")]), Level::Migrate).unwrap();
        assert!(check_supported(&config, &souls).is_empty());
    }

    #[test]
    fn model_timeout_and_retry_budget() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.model_timeout, Duration::from_secs(20));
        assert_eq!(config.model_retry_budget, Duration::from_secs(45));
        assert!(config.turn_lease > config.model_retry_budget);

        let config = Config::from_values(
            &values(&[
                ("MODEL_TIMEOUT", "500ms"),
                ("MODEL_RETRY_BUDGET", "3s"),
                ("TURN_LEASE", "10s"),
            ]),
            Level::Migrate,
        )
        .unwrap();
        assert_eq!(config.model_timeout, Duration::from_millis(500));
        assert_eq!(config.model_retry_budget, Duration::from_secs(3));

        let malformed = problems(
            &values(&[("MODEL_TIMEOUT", "0s"), ("MODEL_RETRY_BUDGET", "a while")]),
            Level::Migrate,
        );
        assert_eq!(
            malformed,
            [
                Problem::Malformed {
                    key: "MODEL_TIMEOUT".to_owned(),
                    reason: "not a positive duration such as 1h or 90m",
                },
                Problem::Malformed {
                    key: "MODEL_RETRY_BUDGET".to_owned(),
                    reason: "not a positive duration such as 1h or 90m",
                },
            ]
        );

        // A budget shorter than one attempt, and a lease the default budget outlasts.
        let conflicts: Vec<&str> = problems(
            &values(&[("MODEL_RETRY_BUDGET", "10s"), ("TURN_LEASE", "5s")]),
            Level::Migrate,
        )
        .into_iter()
        .map(|problem| match problem {
            Problem::Conflict { keys, .. } => keys,
            other => panic!("expected conflicts only, got {other:?}"),
        })
        .collect();
        assert_eq!(
            conflicts,
            [
                "MODEL_RETRY_BUDGET and MODEL_TIMEOUT",
                "TURN_LEASE and MODEL_RETRY_BUDGET"
            ]
        );
    }

    #[test]
    fn http_limits_and_the_metrics_token() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.http.max_connections.get(), 4096);
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.http.request_timeout, Duration::from_secs(15));
        assert!(config.http.metrics_token.is_none());

        let config = Config::from_values(
            &values(&[
                ("MAX_CONNECTIONS", "100"),
                ("HEADER_READ_TIMEOUT", "2s"),
                ("REQUEST_TIMEOUT", "30s"),
                ("METRICS_TOKEN", " scrape-me "),
            ]),
            Level::Migrate,
        )
        .unwrap();
        assert_eq!(config.http.max_connections.get(), 100);
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.http.request_timeout, Duration::from_secs(30));
        let token = config.http.metrics_token.as_ref().unwrap();
        assert_eq!(token.expose(), "scrape-me");
        assert!(!format!("{config:?}").contains("scrape-me"));

        let malformed: Vec<String> = problems(
            &values(&[
                ("MAX_CONNECTIONS", "0"),
                ("HEADER_READ_TIMEOUT", "never"),
                ("REQUEST_TIMEOUT", "0s"),
            ]),
            Level::Migrate,
        )
        .into_iter()
        .map(|problem| match problem {
            Problem::Malformed { key, .. } => key,
            other => panic!("expected malformed values only, got {other:?}"),
        })
        .collect();
        assert_eq!(
            malformed,
            ["MAX_CONNECTIONS", "HEADER_READ_TIMEOUT", "REQUEST_TIMEOUT"]
        );
    }

    #[test]
    fn max_reply_segments() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.max_reply_segments, 5);
        let config =
            Config::from_values(&values(&[("MAX_REPLY_SEGMENTS", "10")]), Level::Migrate).unwrap();
        assert_eq!(config.max_reply_segments, 10);
        for bad in ["0", "11", "three", "-1", "2.5"] {
            assert_eq!(
                problems(&values(&[("MAX_REPLY_SEGMENTS", bad)]), Level::Migrate),
                [Problem::Malformed {
                    key: "MAX_REPLY_SEGMENTS".to_owned(),
                    reason: "not a whole number from 1 to 10",
                }],
                "{bad}"
            );
        }
    }

    #[test]
    fn crisis_resources_must_fit_in_a_reply() {
        let resources = "Call 988, text HOME to 741741, or your local emergency number. ".repeat(3);
        let problems = problems(
            &values(&[
                ("SOUL_CRISIS_RESOURCES", resources.as_str()),
                ("MAX_REPLY_SEGMENTS", "1"),
            ]),
            Level::Migrate,
        );
        assert!(
            matches!(
                problems.as_slice(),
                [Problem::Conflict {
                    keys: "SOUL_CRISIS_RESOURCES and MAX_REPLY_SEGMENTS",
                    ..
                }]
            ),
            "{problems:?}"
        );
        let config = Config::from_values(
            &values(&[("SOUL_CRISIS_RESOURCES", resources.as_str())]),
            Level::Migrate,
        );
        assert!(config.is_ok());
    }

    #[test]
    fn fuzz_corpus_passes_the_fuzz_checks() {
        crate::replay_fuzz_corpus("config", fuzz_check);
    }
}
