//! What the configuration's tests share: settings maps and the problems they make.

use std::collections::BTreeMap;

use super::problem::Problem;
use super::{Config, Level};

pub(super) const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
pub(super) const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";

pub(super) fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(super) fn serve_values() -> BTreeMap<String, String> {
    values(&[
        ("PUBLIC_URL", "https://soul.example.org/"),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", "token-value"),
        ("TWILIO_FROM", "+15005550006"),
        ("OPENAI_API_KEY", "sk-secret"),
    ])
}

pub(super) fn problems(values: &BTreeMap<String, String>, level: Level) -> Vec<Problem> {
    match Config::from_values(values, level) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(error) => error.problems,
    }
}
