//! Reading settings out of a name → value map, collecting every problem as it goes: the
//! parsers of values every topic uses (numbers, durations, URLs, secrets).

use std::collections::BTreeMap;
use std::time::Duration;

use super::problem::Problem;
use super::secret::Secret;

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

    pub(super) fn malformed(&mut self, key: &str, reason: &'static str) {
        self.problems.push(Problem::Malformed {
            key: key.to_owned(),
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
        self.parsed(key, "not a positive duration such as 1h or 90m", |text| {
            humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
        })
    }

    pub(super) fn secret(&self, key: &str) -> Option<Secret> {
        self.get(key).map(Secret::new)
    }

    /// An absolute http(s) URL, trailing slash removed; `with_query` allows a query string.
    pub(super) fn url(&mut self, key: &str, with_query: bool) -> Option<String> {
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
