//! The `config` fuzz target's property, built for the tests and for `cargo fuzz` only.

use std::collections::BTreeMap;

use super::sources::{KEYS, parse_toml};
use super::{Config, Level};

/// The property the `config` fuzz target checks (`docs/fuzzing.md`); the tests replay the
/// corpus in `fuzz/corpus/config` through it.
///
/// `data`'s first byte picks the level; the rest is read twice, as `NAME=value` lines (an
/// environment) and as a TOML file. Neither panics, every key the TOML reading keeps is a
/// setting, and each map of settings passes [`fuzz_check_values`].
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

    #[test]
    fn fuzz_corpus_passes_the_fuzz_checks() {
        crate::replay_fuzz_corpus("config", fuzz_check);
    }
}
