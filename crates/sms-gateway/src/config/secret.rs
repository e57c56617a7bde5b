//! Credentials, which never print, and the settings that hold them.

use std::fmt;

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

/// The settings whose whole value is a credential: never shown, not even in a problem.
const SECRET_KEYS: [&str; 6] = [
    "TWILIO_AUTH_TOKEN",
    "OPENAI_API_KEY",
    "SUPABASE_SERVICE_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "METRICS_TOKEN",
    "INSPECTOR_TOKEN",
];

/// Whether `key`'s value is a credential.
pub(crate) fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// The URL `text` as written, but with its password, if any, replaced by `****`.
pub(crate) fn redacted_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return text.to_owned();
    };
    let Some(password) = url.password().map(str::to_owned) else {
        return text.to_owned();
    };
    let written = format!(":{password}@");
    if text.contains(&written) {
        text.replacen(&written, ":****@", 1)
    } else {
        // Written otherwise than the parser serialises it: shown as serialised, redacted.
        let _ = url.set_password(Some("****"));
        url.to_string()
    }
}
