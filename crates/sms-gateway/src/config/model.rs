//! The model server, and how long a model call may take.

use std::time::Duration;

use super::Level;
use super::reader::Reader;
use super::secret::Secret;

const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// One model attempt: an SMS-sized answer takes a few seconds; a stalled server is given up on
/// long before the person does.
pub(super) const DEFAULT_MODEL_TIMEOUT: Duration = Duration::from_secs(20);
/// One model call, retries and their waits included: two full attempts and a backoff, after
/// which the person gets the fallback reply. Well under
/// [`DEFAULT_TURN_LEASE`](super::turns::DEFAULT_TURN_LEASE).
pub(super) const DEFAULT_MODEL_RETRY_BUDGET: Duration = Duration::from_secs(45);

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

impl Reader<'_> {
    pub(super) fn model(&mut self, level: Level) -> Option<ModelConfig> {
        let api_key = self.secret("OPENAI_API_KEY");
        let base_url = self.url("OPENAI_BASE_URL");
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;
    use crate::config::problem::Problem;
    use crate::config::testing::{problems, values};

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
                    value: Some("0s".to_owned()),
                    reason: "not a positive duration such as 1h, 90m or 500ms",
                },
                Problem::Malformed {
                    key: "MODEL_RETRY_BUDGET".to_owned(),
                    value: Some("a while".to_owned()),
                    reason: "not a positive duration such as 1h, 90m or 500ms",
                },
            ]
        );

        // A budget shorter than one attempt, and a lease the default budget outlasts.
        let conflicts: Vec<String> = problems(
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
}
