//! The configuration as a person reads it: what `check-config` prints and what `serve` logs
//! once at start. It names the soul, where the store is (never a password or a key), the model
//! and its endpoint, who replies come from, the webhook URL to paste into Twilio's console and
//! the limits; and warns of what is valid but likely wrong.
//!
//! The service's own sender number is shown and logged: it is the operator's number, printed
//! on the service's own materials, not a person's.

use std::fmt;
use std::time::Duration;

use super::secret::redacted_url;
use super::{Config, Rule, Sender, StoreConfig, sqlite_path};

/// The path Twilio's messaging webhook is served on.
const WEBHOOK_PATH: &str = "/twilio/sms";

/// The configuration, line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The soul (or the split of souls) a first contact on no line gets, and whether it is the
    /// default.
    pub(crate) soul: String,
    /// The lines and their souls; `None` without `LINES`.
    pub(crate) lines: Option<String>,
    /// The store and where it is.
    pub(crate) store: String,
    /// The model and its endpoint.
    pub(crate) model: String,
    /// Who replies come from, and the Twilio account.
    pub(crate) sender: String,
    /// The URL to paste into Twilio's console.
    pub(crate) webhook: String,
    /// Where the gateway listens.
    pub(crate) listen: String,
    /// The limits on what it does at once.
    pub(crate) limits: String,
    /// Its time limits.
    pub(crate) timing: String,
    /// How long messages are kept.
    pub(crate) retention: String,
    /// Who may read the operations endpoints.
    pub(crate) operations: String,
    /// Whether the inspector runs, and where.
    pub(crate) inspector: String,
    /// What is valid but likely wrong.
    pub(crate) warnings: Vec<String>,
}

impl Summary {
    /// The summary of `config`; `default_soul` is the soul run when `SOUL` is not set.
    pub(crate) fn new(config: &Config, default_soul: &str) -> Summary {
        let mut warnings = Vec::new();
        let routing = &config.routing;
        let soul = match &routing.default {
            Some(Rule::Fixed(soul)) if soul == default_soul && routing.lines.is_empty() => {
                format!("{default_soul} (the default)")
            }
            Some(rule) => rule.describe(),
            None => "none: a message to a number on no line is refused (LINES is set, SOUL is not)"
                .to_owned(),
        };
        let lines = (!routing.lines.is_empty()).then(|| {
            let lines: Vec<String> = routing
                .lines
                .iter()
                .map(|(line, soul)| format!("{line} → {soul}"))
                .collect();
            format!(
                "{}; each line's replies come from it, and a person has a conversation per line",
                lines.join(", ")
            )
        });
        let model = match &config.model {
            Some(model) => {
                if let Some(warning) = base_url_warning(&model.base_url) {
                    warnings.push(warning);
                }
                let key = if model.api_key.is_some() {
                    "with an API key"
                } else {
                    "without an API key"
                };
                format!(
                    "{} at {} ({key})",
                    model.model,
                    redacted_url(&model.base_url)
                )
            }
            None => "none".to_owned(),
        };
        let sender = match &config.twilio {
            Some(twilio) => {
                let from = match &twilio.sender {
                    Sender::From(number) => number.clone(),
                    Sender::MessagingService(sid) => format!("messaging service {sid}"),
                };
                format!(
                    "{from}, through Twilio account {} at {}",
                    twilio.account_sid,
                    redacted_url(&twilio.api_base)
                )
            }
            None => "none: Twilio is not configured".to_owned(),
        };
        let webhook = match &config.public_url {
            Some(url) => format!("{}{WEBHOOK_PATH}", url.shown()),
            None => "none: PUBLIC_URL is not set".to_owned(),
        };
        let rate = match config.rate_limit_per_minute {
            Some(rate) => format!("{rate} messages a minute per number"),
            None => "no rate limit".to_owned(),
        };
        let limits = format!(
            "{rate}, {} turns at once, replies of at most {} SMS segments, {} connections",
            config.turn_concurrency, config.max_reply_segments, config.http.max_connections
        );
        let timing = format!(
            "a session ends after {} of silence; a turn's lease lasts {}; the model gets {} a \
             request and {} a call",
            duration(config.session_timeout),
            duration(config.turn_lease),
            duration(config.model_timeout),
            duration(config.model_retry_budget)
        );
        let retention = match config.retention_days {
            Some(days) => format!("messages deleted after {days} days"),
            None => "messages kept until erased (RETENTION_DAYS is not set)".to_owned(),
        };
        let operations = if config.http.metrics_token.is_some() {
            "/metrics and /readyz need METRICS_TOKEN; /healthz is open"
        } else {
            "/metrics, /readyz and /healthz are open to anyone who reaches the port \
             (METRICS_TOKEN is not set)"
        }
        .to_owned();
        let inspector = if config.inspector.token.is_some() {
            let cookie = match (
                config.inspector.secure_cookie,
                config.inspector.secure_cookie_set,
            ) {
                (true, true) => "Secure cookie (INSPECTOR_SECURE_COOKIE)",
                (false, true) => "cookie not Secure (INSPECTOR_SECURE_COOKIE)",
                (true, false) => "Secure cookie (not the loopback)",
                (false, false) => "cookie not Secure (the loopback)",
            };
            format!(
                "on {}, operators log in with INSPECTOR_TOKEN, {cookie}",
                config.inspector.bind
            )
        } else {
            "off (INSPECTOR_TOKEN is not set)".to_owned()
        };
        Summary {
            soul,
            lines,
            store: store(&config.store),
            model,
            sender,
            webhook,
            listen: config.listen_addr().to_string(),
            limits,
            timing,
            retention,
            operations,
            inspector,
            warnings,
        }
    }

    /// Logs the summary once, at info, and its warnings at warn: what `serve` does at start.
    pub(crate) fn log(&self) {
        tracing::info!(
            soul = %self.soul,
            lines = self.lines.as_deref().unwrap_or("none"),
            store = %self.store,
            model = %self.model,
            sender = %self.sender,
            webhook = %self.webhook,
            listen = %self.listen,
            limits = %self.limits,
            timing = %self.timing,
            retention = %self.retention,
            operations = %self.operations,
            inspector = %self.inspector,
            "configuration"
        );
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }

    fn lines(&self) -> Vec<(&'static str, &str)> {
        let lines = self.lines.as_deref().map(|lines| ("lines", lines));
        let mut shown = vec![("soul", self.soul.as_str())];
        shown.extend(lines);
        shown.extend([
            ("store", self.store.as_str()),
            ("model", self.model.as_str()),
            ("replies from", self.sender.as_str()),
            ("webhook", self.webhook.as_str()),
            ("listens on", self.listen.as_str()),
            ("limits", self.limits.as_str()),
            ("timing", self.timing.as_str()),
            ("retention", self.retention.as_str()),
            ("operations", self.operations.as_str()),
            ("inspector", self.inspector.as_str()),
        ]);
        shown
    }
}

/// What `check-config` prints.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "The configuration is valid. `serve` would run:")?;
        writeln!(f)?;
        for (label, value) in self.lines() {
            writeln!(f, "  {label:<13}{value}")?;
            if label == "webhook" && config_has_url(value) {
                writeln!(
                    f,
                    "  {:<13}(in Twilio's console: the number's messaging configuration, \
                     \"A message comes in\", Webhook, HTTP POST)",
                    ""
                )?;
            }
        }
        for warning in &self.warnings {
            writeln!(f)?;
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

/// Whether a summary line's value is a URL (and not "none: …").
fn config_has_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

/// The store and where it is, without a password or a key.
fn store(config: &StoreConfig) -> String {
    match config {
        StoreConfig::Sqlite { url } => {
            format!("SQLite, the file {}", sqlite_path(url).display())
        }
        StoreConfig::Postgres { url } => match url::Url::parse(url.expose()) {
            Ok(url) => {
                let database = url.path().trim_start_matches('/');
                let host = url.host_str().unwrap_or("the local socket");
                let port = url.port().unwrap_or(5432);
                let user = match url.username() {
                    "" => String::new(),
                    user => format!(", as {user}"),
                };
                format!("PostgreSQL, the database {database:?} on {host}:{port}{user}")
            }
            Err(_) => "PostgreSQL, at the URL in DATABASE_URL".to_owned(),
        },
        StoreConfig::Supabase { url, .. } => {
            format!("Supabase, the project {url} over its REST API, with the service key")
        }
    }
}

/// A base URL that does not end in `/v1`, where OpenAI and the servers that copy its API serve
/// `chat/completions`: such a server answers a bare 404.
fn base_url_warning(base_url: &str) -> Option<String> {
    let path = url::Url::parse(base_url)
        .ok()?
        .path()
        .trim_end_matches('/')
        .to_owned();
    (!path.ends_with("/v1")).then(|| {
        format!(
            "OPENAI_BASE_URL is {}, and requests go to {}/chat/completions: OpenAI-compatible \
             servers serve them under /v1 (http://127.0.0.1:11434/v1, https://api.openai.com/v1), \
             so a base URL without /v1 is usually answered 404",
            redacted_url(base_url),
            redacted_url(base_url).trim_end_matches('/')
        )
    })
}

/// `duration` as `1h`, `90s` or `500ms`.
fn duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Level;
    use crate::config::testing::{serve_values, values};

    #[test]
    fn the_summary_names_what_serve_runs_and_no_secret() {
        let mut values = serve_values();
        values.extend(super::tests::values(&[
            (
                "DATABASE_URL",
                "postgres://soul:hunter2@db.example.org:6432/souls",
            ),
            (
                "PUBLIC_URL",
                "https://twilio:open-sesame@sms.example.org/gateway",
            ),
            ("METRICS_TOKEN", "scrape-me"),
            ("RETENTION_DAYS", "90"),
        ]));
        let config = Config::from_values(&values, Level::Serve).unwrap();
        let summary = Summary::new(&config, "sage");
        assert_eq!(summary.soul, "sage (the default)");
        assert_eq!(
            summary.store,
            "PostgreSQL, the database \"souls\" on db.example.org:6432, as soul"
        );
        assert_eq!(
            summary.model,
            "gpt-4o-mini at https://api.openai.com/v1 (with an API key)"
        );
        assert!(
            summary.webhook == "https://twilio:****@sms.example.org/gateway/twilio/sms",
            "{}",
            summary.webhook
        );
        assert!(
            summary
                .sender
                .starts_with("+15005550006, through Twilio account AC")
        );
        assert_eq!(summary.retention, "messages deleted after 90 days");
        assert_eq!(summary.inspector, "off (INSPECTOR_TOKEN is not set)");
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
        assert_eq!(summary.lines, None);
        let text = summary.to_string();
        for secret in [
            "hunter2",
            "open-sesame",
            "scrape-me",
            "sk-secret",
            "token-value",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn the_summary_names_the_lines_and_the_rule_for_other_numbers() {
        let mut values = serve_values();
        values.extend(super::tests::values(&[
            ("LINES", "+15550002222=pip, +15550001111=sage"),
            ("SOUL", "sage=90,pip=10"),
        ]));
        let config = Config::from_values(&values, Level::Serve).unwrap();
        let summary = Summary::new(&config, "sage");
        assert_eq!(
            summary.soul,
            "sage 90/100, pip 10/100 of first contacts, by a hash of their number"
        );
        assert_eq!(
            summary.lines.as_deref(),
            Some(
                "+15550001111 → sage, +15550002222 → pip; each line's replies come from it, and \
                 a person has a conversation per line"
            )
        );
        values.remove("SOUL");
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert!(Summary::new(&config, "sage").soul.contains("is refused"));
    }

    #[test]
    fn a_base_url_without_v1_is_warned_of() {
        let config = Config::from_values(
            &values(&[("OPENAI_BASE_URL", "http://127.0.0.1:11434")]),
            Level::Chat,
        )
        .unwrap();
        let summary = Summary::new(&config, "sage");
        assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
        assert!(summary.warnings[0].contains("under /v1"));
        for good in ["http://127.0.0.1:11434/v1", "https://openrouter.ai/api/v1/"] {
            let config =
                Config::from_values(&values(&[("OPENAI_BASE_URL", good)]), Level::Chat).unwrap();
            assert!(Summary::new(&config, "sage").warnings.is_empty(), "{good}");
        }
    }

    #[test]
    fn the_summary_says_where_the_inspector_runs_and_whether_its_cookie_is_secure() {
        let inspector = |pairs: &[(&str, &str)]| {
            let mut values = serve_values();
            values.extend(super::tests::values(pairs));
            let config = Config::from_values(&values, Level::Serve).unwrap();
            Summary::new(&config, "sage").inspector
        };
        assert_eq!(
            inspector(&[("INSPECTOR_TOKEN", "let-me-in")]),
            "on 127.0.0.1:8081, operators log in with INSPECTOR_TOKEN, cookie not Secure \
             (the loopback)"
        );
        assert_eq!(
            inspector(&[
                ("INSPECTOR_TOKEN", "let-me-in"),
                ("INSPECTOR_BIND", "0.0.0.0:8081")
            ]),
            "on 0.0.0.0:8081, operators log in with INSPECTOR_TOKEN, Secure cookie (not the \
             loopback)"
        );
        assert_eq!(
            inspector(&[
                ("INSPECTOR_TOKEN", "let-me-in"),
                ("INSPECTOR_BIND", "0.0.0.0:8081"),
                ("INSPECTOR_SECURE_COOKIE", "false")
            ]),
            "on 0.0.0.0:8081, operators log in with INSPECTOR_TOKEN, cookie not Secure \
             (INSPECTOR_SECURE_COOKIE)"
        );
    }
}
