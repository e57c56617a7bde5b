//! Where settings come from: the environment, over an optional TOML file whose tables nest
//! keys under their prefix; and the check of a loaded configuration against this build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::problem::{ConfigError, Problem};
use super::{Config, Level};

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
    // The inspector's listener and login (`InspectorConfig`).
    "INSPECTOR_BIND",
    "INSPECTOR_TOKEN",
    "INSPECTOR_SECURE_COOKIE",
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
    "LINES",
    "HELP_TEXT",
    "LOG_FORMAT",
    "RATE_LIMIT_PER_MINUTE",
    "TURN_CONCURRENCY",
    "SOUL_CRISIS_RESOURCES",
    "OUTBOX_RETRY_AFTER",
    "SWEEP_INTERVAL",
    "SHUTDOWN_TIMEOUT",
    "TURN_LEASE",
    "TURN_MAX_ATTEMPTS",
    "TURN_LOG",
    "FALLBACK_REPLY",
    "MODEL_TIMEOUT",
    "MODEL_RETRY_BUDGET",
    "MAX_REPLY_SEGMENTS",
    "RETENTION_DAYS",
];

/// Loads the configuration for `level` from the TOML file `config_file` (the `--config`
/// argument) or else the one named by `SOUL_CONFIG`, if any, with the environment overriding it,
/// and checks it against what this build can run (`souls`: the registered soul names). Every
/// problem is reported at once, the soul's among them.
pub(crate) fn load(
    level: Level,
    config_file: Option<&Path>,
    souls: &[&str],
) -> Result<Config, ConfigError> {
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
    let config = Config::from_values(&values, level);
    let unknown_souls = unknown_souls(&values, souls);
    match config {
        Ok(config) if problems.is_empty() && unknown_souls.is_empty() => Ok(config),
        Ok(_) => {
            problems.extend(unknown_souls);
            Err(ConfigError { problems })
        }
        Err(error) => {
            problems.extend(error.problems);
            problems.extend(unknown_souls);
            Err(ConfigError { problems })
        }
    }
}

/// The souls `SOUL` and `LINES` name that this build does not have (`souls`), whatever else is
/// wrong; each once.
pub(crate) fn unknown_souls(values: &BTreeMap<String, String>, souls: &[&str]) -> Vec<Problem> {
    let value = |key: &str| {
        values
            .get(key)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    let mut named: Vec<(&'static str, String)> = Vec::new();
    if let Some(rule) = value("SOUL").and_then(super::routing::parse_rule) {
        named.extend(
            rule.souls()
                .into_iter()
                .map(|soul| ("SOUL", soul.to_owned())),
        );
    }
    if let Some(lines) = value("LINES").and_then(super::routing::parse_lines) {
        named.extend(lines.into_values().map(|soul| ("LINES", soul)));
    }
    let mut problems = Vec::new();
    for (key, soul) in named {
        let problem = Problem::UnknownSoul {
            key,
            soul,
            known: souls.join(", "),
        };
        let unknown = matches!(&problem, Problem::UnknownSoul { soul, .. } if !souls.contains(&soul.as_str()));
        if unknown && !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    problems
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
                value: None,
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
        // The error's display quotes the offending line, which may hold a secret: give where
        // it is and the parser's description alone ("invalid basic string, expected `"`",
        // "duplicate key"), which quotes nothing of the file.
        Err(error) => problems.push(Problem::File {
            path: path.to_owned(),
            reason: match error.span() {
                Some(span) => format!(
                    "invalid TOML at line {}: {}",
                    text[..span.start.min(text.len())].lines().count().max(1),
                    error.message()
                ),
                None => format!("invalid TOML: {}", error.message()),
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
                        value: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;
    use crate::config::testing::values;

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
        assert!(
            message.contains("invalid TOML at line 2: invalid basic string, expected `\"`"),
            "{message}"
        );
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
        assert_eq!(
            config.routing.default,
            Some(super::super::Rule::Fixed("file".to_owned()))
        );
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
    fn unknown_souls_are_refused_and_named() {
        let souls = ["sage", "pip"];
        assert_eq!(
            unknown_souls(&values(&[("SOUL", " samantha ")]), &souls),
            vec![Problem::UnknownSoul {
                key: "SOUL",
                soul: "samantha".to_owned(),
                known: "sage, pip".to_owned()
            }]
        );
        assert_eq!(unknown_souls(&values(&[("SOUL", "pip")]), &souls), vec![]);
        assert_eq!(unknown_souls(&values(&[]), &souls), vec![]);
        let split_and_lines = values(&[
            ("SOUL", "sage=9,hal=1"),
            (
                "LINES",
                "+15550001111=pip,+15550002222=hal,+15550003333=eve",
            ),
        ]);
        let unknown: Vec<String> = unknown_souls(&split_and_lines, &souls)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            unknown,
            [
                "SOUL names the soul \"hal\", which this build does not have: it has sage, pip",
                "LINES names the soul \"hal\", which this build does not have: it has sage, pip",
                "LINES names the soul \"eve\", which this build does not have: it has sage, pip",
            ]
        );
    }

    /// An unknown soul is reported with every other problem, not after they are fixed.
    #[test]
    fn an_unknown_soul_is_reported_in_the_same_pass_as_the_rest() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("soul.toml");
        std::fs::write(&path, "soul = \"samantha\"\nport = 99999\n").unwrap();
        let error = load(Level::Migrate, Some(&path), &["sage", "pip"]).unwrap_err();
        assert!(
            error
                .problems
                .iter()
                .any(|problem| matches!(problem, Problem::Malformed { key, .. } if key == "PORT")),
            "{error}"
        );
        assert!(
            error
                .problems
                .iter()
                .any(|problem| matches!(problem, Problem::UnknownSoul { .. })),
            "{error}"
        );
    }
}
