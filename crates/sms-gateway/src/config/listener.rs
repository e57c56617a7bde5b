//! The HTTP listener: its port, how it bounds its clients, and who may read the operations
//! endpoints.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use super::reader::Reader;
use super::secret::{self, Secret};

pub(super) const DEFAULT_PORT: u16 = 8080;

/// Where the inspector listens by default: the loopback, beside the gateway's port.
pub(crate) const DEFAULT_INSPECTOR_BIND: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// Connections served at once by default; lowered at start to half the open-file limit.
const DEFAULT_MAX_CONNECTIONS: NonZeroU32 = NonZeroU32::new(4096).expect("not zero");
/// Twilio sends a request's headers at once; a client that has not within this time is not
/// Twilio, or has gone.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Twilio waits 15 s for a webhook's answer: past that no answer matters.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

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

/// The inspector (the `soul-inspector` crate) on a listener of its own.
#[derive(Debug, Clone)]
pub(crate) struct InspectorConfig {
    /// Where it listens (`INSPECTOR_BIND`, an address and port; the loopback's 8081 by default).
    pub(crate) bind: SocketAddr,
    /// The token an operator logs in with (`INSPECTOR_TOKEN`). `serve` runs the inspector only
    /// when it is set; `dev` needs none.
    pub(crate) token: Option<Secret>,
    /// Whether the session cookie is `Secure` (sent over HTTPS only): `INSPECTOR_SECURE_COOKIE`,
    /// unless `bind` is a loopback address by default (reached through a TLS proxy or tunnel
    /// otherwise).
    pub(crate) secure_cookie: bool,
    /// Whether `INSPECTOR_SECURE_COOKIE` was set (else `secure_cookie` follows `bind`).
    pub(crate) secure_cookie_set: bool,
}

/// The URL Twilio calls (`PUBLIC_URL`), without a trailing slash. It may carry a user and a
/// password (basic authentication in front of the gateway): `Debug` and [`PublicUrl::shown`]
/// replace the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PublicUrl(String);

impl PublicUrl {
    /// The URL as configured, password included: what webhook signatures are checked against.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with its password, if any, as `****`.
    pub(crate) fn shown(&self) -> String {
        secret::redacted_url(&self.0)
    }
}

impl fmt::Debug for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl Reader<'_> {
    pub(super) fn inspector(&mut self) -> InspectorConfig {
        let bind: SocketAddr = self
            .parsed(
                "INSPECTOR_BIND",
                "not an address and port such as 127.0.0.1:8081",
                |text| text.parse().ok(),
            )
            .unwrap_or(DEFAULT_INSPECTOR_BIND);
        let secure_cookie =
            self.parsed(
                "INSPECTOR_SECURE_COOKIE",
                "not true or false",
                |text| match text {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                },
            );
        InspectorConfig {
            bind,
            token: self.secret("INSPECTOR_TOKEN"),
            secure_cookie: secure_cookie.unwrap_or(!bind.ip().is_loopback()),
            secure_cookie_set: secure_cookie.is_some(),
        }
    }

    pub(super) fn public_url(&mut self) -> Option<PublicUrl> {
        self.url("PUBLIC_URL").map(PublicUrl)
    }

    pub(super) fn http(&mut self) -> HttpLimits {
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::problem::Problem;
    use crate::config::testing::{problems, values};
    use crate::config::{Config, Level};

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
    fn the_inspector_is_off_without_its_token_and_listens_on_the_loopback_by_default() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert!(config.inspector.token.is_none());
        assert_eq!(config.inspector.bind, DEFAULT_INSPECTOR_BIND);
        assert!(config.inspector.bind.ip().is_loopback());

        let config = Config::from_values(
            &values(&[
                ("INSPECTOR_BIND", "127.0.0.1:9000"),
                ("INSPECTOR_TOKEN", " let-me-in "),
            ]),
            Level::Migrate,
        )
        .unwrap();
        assert_eq!(config.inspector.bind.port(), 9000);
        assert_eq!(
            config.inspector.token.as_ref().unwrap().expose(),
            "let-me-in"
        );
        assert!(!format!("{config:?}").contains("let-me-in"));

        let malformed = problems(&values(&[("INSPECTOR_BIND", "localhost")]), Level::Migrate);
        assert!(
            matches!(&malformed[..], [Problem::Malformed { key, .. }] if key == "INSPECTOR_BIND"),
            "{malformed:?}"
        );
    }

    #[test]
    fn the_inspector_cookie_is_secure_unless_on_the_loopback_or_set_otherwise() {
        let secure = |pairs: &[(&str, &str)]| {
            let config = Config::from_values(&values(pairs), Level::Migrate).unwrap();
            (
                config.inspector.secure_cookie,
                config.inspector.secure_cookie_set,
            )
        };
        assert_eq!(secure(&[]), (false, false));
        assert_eq!(secure(&[("INSPECTOR_BIND", "[::1]:8081")]), (false, false));
        assert_eq!(secure(&[("INSPECTOR_BIND", "0.0.0.0:8081")]), (true, false));
        assert_eq!(
            secure(&[("INSPECTOR_BIND", "10.0.0.5:8081")]),
            (true, false)
        );
        assert_eq!(
            secure(&[
                ("INSPECTOR_BIND", "0.0.0.0:8081"),
                ("INSPECTOR_SECURE_COOKIE", "false")
            ]),
            (false, true)
        );
        assert_eq!(secure(&[("INSPECTOR_SECURE_COOKIE", "true")]), (true, true));
        let malformed = problems(
            &values(&[("INSPECTOR_SECURE_COOKIE", "yes")]),
            Level::Migrate,
        );
        assert!(
            matches!(&malformed[..], [Problem::Malformed { key, .. }] if key == "INSPECTOR_SECURE_COOKIE"),
            "{malformed:?}"
        );
    }
}
