//! What can be wrong with a configuration, and how it is told.

use std::fmt;

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
    #[error("{key} {}: {reason}", shown(.value.as_deref()))]
    Malformed {
        /// The setting.
        key: String,
        /// What may be shown of the value: all of it, but never a secret's, nor a URL's
        /// password (`Reader::shown`); `None` shows none of it.
        value: Option<String>,
        /// What is wrong, and what form was expected.
        reason: &'static str,
    },
    /// Settings that cannot be used together.
    #[error("{keys}: {reason}")]
    Conflict {
        /// The settings, as written in the message: those that are set.
        keys: String,
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
    /// `SOUL` or `LINES` names a soul this build does not have.
    #[error("{key} names the soul {soul:?}, which this build does not have: it has {known}")]
    UnknownSoul {
        /// The setting naming it.
        key: &'static str,
        /// The soul asked for.
        soul: String,
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

/// How a malformed value is shown: quoted, or not at all.
fn shown(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("is {value:?}"),
        None => "is malformed".to_owned(),
    }
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
