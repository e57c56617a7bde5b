//! Reading settings out of a name → value map, collecting every problem as it goes: the
//! parsers of values every topic uses (numbers, durations, URLs, secrets).

use std::collections::BTreeMap;
use std::time::Duration;

use super::problem::Problem;
use super::secret::{self, Secret};

/// Reads settings out of the map, collecting problems as it goes.
pub(super) struct Reader<'a> {
    pub(super) values: &'a BTreeMap<String, String>,
    pub(super) problems: Vec<Problem>,
}

impl Reader<'_> {
    /// The trimmed value of `key`; empty counts as unset.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    pub(super) fn missing(&mut self, key: &'static str, why: &'static str) {
        self.problems.push(Problem::Missing { key, why });
    }

    /// `key`'s value is malformed for `reason`; the problem shows what of it may be shown.
    pub(super) fn malformed(&mut self, key: &str, reason: &'static str) {
        let value = self.get(key).and_then(|text| shown(key, text));
        self.problems.push(Problem::Malformed {
            key: key.to_owned(),
            value,
            reason,
        });
    }

    /// `key` parsed by `parse`; a value it refuses is reported as `reason`.
    pub(super) fn parsed<T>(
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

    /// A positive duration such as `90s`, `1h` or `500ms`.
    pub(super) fn duration(&mut self, key: &str) -> Option<Duration> {
        self.parsed(
            key,
            "not a positive duration such as 1h, 90m or 500ms",
            |text| {
                humantime::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero())
            },
        )
    }

    pub(super) fn secret(&self, key: &str) -> Option<Secret> {
        self.get(key).map(Secret::new)
    }

    /// An absolute http(s) URL without a query or a fragment, trailing slash removed.
    pub(super) fn url(&mut self, key: &str) -> Option<String> {
        let text = self.get(key)?;
        match url_problem(text) {
            // The text, not the parsed URL: Twilio signs the URL exactly as configured.
            None => Some(text.trim_end_matches('/').to_owned()),
            Some(reason) => {
                self.malformed(key, reason);
                None
            }
        }
    }
}

/// What is wrong with `text` as a base URL, if anything.
fn url_problem(text: &str) -> Option<&'static str> {
    let Ok(url) = url::Url::parse(text) else {
        return Some("not an absolute URL such as https://sms.example.org");
    };
    if !matches!(url.scheme(), "http" | "https") {
        Some("not an http:// or https:// URL")
    } else if url.host_str().is_none_or(str::is_empty) {
        Some("a URL without a host")
    } else if url.query().is_some() {
        Some(
            "a URL with a query string (?…): give it without one, as the paths the gateway \
             adds go after it",
        )
    } else if url.fragment().is_some() {
        Some("a URL with a fragment (#…): give it without one")
    } else {
        None
    }
}

/// What a problem may show of `key`'s value `text`: nothing of a secret (or of a text that
/// may be long and personal), a URL without its password, a database URL's scheme alone (it
/// may hold a password where a URL parser would not find it), anything else cut to 60
/// characters.
fn shown(key: &str, text: &str) -> Option<String> {
    const URLS: [&str; 4] = [
        "PUBLIC_URL",
        "SUPABASE_URL",
        "OPENAI_BASE_URL",
        "TWILIO_API_BASE",
    ];
    if secret::is_secret(key) {
        None
    } else if key == "DATABASE_URL" {
        text.split_once(':')
            .map(|(scheme, _)| format!("{scheme}:…"))
    } else if URLS.contains(&key) {
        match url::Url::parse(text) {
            Ok(_) => Some(cut(&secret::redacted_url(text))),
            // Unparsed, a password cannot be told apart: shown only without any `@`.
            Err(_) => (!text.contains('@')).then(|| cut(text)),
        }
    } else {
        Some(cut(text))
    }
}

/// `text`, cut to 60 characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::values;
    use crate::config::{Config, Level, StoreConfig};

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
}
