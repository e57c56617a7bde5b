//! Twilio: the account, and who replies come from.

use super::Level;
use super::problem::Problem;
use super::reader::Reader;
use super::secret::Secret;

const DEFAULT_TWILIO_API_BASE: &str = "https://api.twilio.com";

/// Who outbound messages are sent as (`T`: owned in the configuration, borrowed for a send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sender<T = String> {
    /// A phone number (E.164) or short code: the `From` field.
    From(T),
    /// A messaging service, which picks the number: the `MessagingServiceSid` field.
    MessagingService(T),
}

/// Twilio's account and how to send.
#[derive(Debug, Clone)]
pub(crate) struct TwilioConfig {
    /// `AC…`.
    pub(crate) account_sid: String,
    /// Signs webhooks and authenticates API calls.
    pub(crate) auth_token: Secret,
    /// Who replies come from.
    pub(crate) sender: Sender,
    /// The REST API's base URL, without a trailing slash.
    pub(crate) api_base: String,
}

impl Reader<'_> {
    pub(super) fn twilio(&mut self, level: Level) -> Option<TwilioConfig> {
        let needed = level >= Level::Serve;
        let account_sid = self.parsed(
            "TWILIO_ACCOUNT_SID",
            "not AC followed by 32 hex digits",
            |text| is_sid(text, "AC").then(|| text.to_owned()),
        );
        let auth_token = self.secret("TWILIO_AUTH_TOKEN");
        let from = self.parsed(
            "TWILIO_FROM",
            "not an E.164 number (+ and 8 to 15 digits) or a short code",
            |text| is_sender_number(text).then(|| text.to_owned()),
        );
        let service = self.parsed(
            "TWILIO_MESSAGING_SERVICE_SID",
            "not MG followed by 32 hex digits",
            |text| is_sid(text, "MG").then(|| text.to_owned()),
        );
        let api_base = self
            .url("TWILIO_API_BASE")
            .unwrap_or_else(|| DEFAULT_TWILIO_API_BASE.to_owned());

        let both_senders =
            self.get("TWILIO_FROM").is_some() && self.get("TWILIO_MESSAGING_SERVICE_SID").is_some();
        if both_senders {
            self.problems.push(Problem::Conflict {
                keys: "TWILIO_FROM and TWILIO_MESSAGING_SERVICE_SID".to_owned(),
                reason: "set exactly one: replies come from a number or a messaging service",
            });
        }
        if needed {
            const WHY: &str = "to receive and send SMS";
            if self.get("TWILIO_ACCOUNT_SID").is_none() {
                self.missing("TWILIO_ACCOUNT_SID", WHY);
            }
            if auth_token.is_none() {
                self.missing("TWILIO_AUTH_TOKEN", WHY);
            }
            if self.get("TWILIO_FROM").is_none()
                && self.get("TWILIO_MESSAGING_SERVICE_SID").is_none()
            {
                self.missing(
                    "TWILIO_FROM",
                    "(or TWILIO_MESSAGING_SERVICE_SID) to send replies",
                );
            }
        }
        let sender = match (from, service) {
            (Some(number), None) if !both_senders => Sender::From(number),
            (None, Some(sid)) if !both_senders => Sender::MessagingService(sid),
            _ => return None,
        };
        Some(TwilioConfig {
            account_sid: account_sid?,
            auth_token: auth_token?,
            sender,
            api_base,
        })
    }
}

/// Whether `text` is `prefix` followed by 32 hex digits, the shape of every Twilio SID.
pub(super) fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == prefix.len() + 32
        && text.starts_with(prefix)
        && text
            .bytes()
            .skip(prefix.len())
            .all(|b| b.is_ascii_hexdigit())
}

/// An E.164 number (`+`, 8 to 15 digits, no leading zero) or a short code (3 to 8 digits).
pub(super) fn is_sender_number(text: &str) -> bool {
    let all_digits = |digits: &str| digits.bytes().all(|b| b.is_ascii_digit());
    match text.strip_prefix('+') {
        Some(digits) => {
            (8..=15).contains(&digits.len()) && all_digits(digits) && !digits.starts_with('0')
        }
        None => (3..=8).contains(&text.len()) && all_digits(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_numbers() {
        for good in ["+15005550006", "+447700900123", "12345", "898211"] {
            assert!(is_sender_number(good), "{good}");
        }
        for bad in [
            "",
            "+",
            "+0123456789",
            "+1234567",
            "5005550006a",
            "+1 500 555",
            "123456789",
        ] {
            assert!(!is_sender_number(bad), "{bad}");
        }
    }
}
