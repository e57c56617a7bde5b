//! Twilio's webhooks: an inbound message and a message status callback, parsed from the raw
//! form body.
//!
//! The raw parameters are kept as [`FormParams`] (every pair, repeated names and unknown fields
//! included) because the signature covers all of them; the typed views take what the gateway
//! uses. Parsing never panics: any bytes give either a value or a [`WebhookError`].

use std::fmt;

/// MMS carries at most ten media items; `NumMedia` beyond that is not believed.
const MAX_MEDIA: u32 = 10;

/// Why a webhook body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WebhookError {
    /// A required parameter is absent.
    #[error("the webhook has no {0} parameter")]
    Missing(&'static str),
    /// `MessageSid` is not `SM` or `MM` followed by 32 hex digits.
    #[error("the webhook's MessageSid is not a message SID")]
    InvalidMessageSid,
    /// A parameter is present but not of the expected form.
    #[error("the webhook's {field} parameter is malformed: {reason}")]
    Malformed {
        /// The parameter's name.
        field: &'static str,
        /// What is wrong with it (never its value, which may be personal).
        reason: &'static str,
    },
    /// `MessageStatus` names a status this gateway does not know.
    #[error("unknown message status {0:?}")]
    UnknownStatus(String),
}

/// Every parameter of a form-encoded body, in order, repeated names and unknown fields kept.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct FormParams(Vec<(String, String)>);

impl FormParams {
    /// Decodes `application/x-www-form-urlencoded` bytes; invalid UTF-8 is replaced, so any
    /// input decodes (a replaced byte then fails the signature, as it should).
    pub(crate) fn parse(body: &[u8]) -> Self {
        FormParams(
            form_urlencoded::parse(body)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every pair, in the order received: what the signature is computed over.
    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

impl fmt::Debug for FormParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: values include phone numbers and message text.
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// One media item of an MMS.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Media {
    /// Where Twilio serves the item (authenticated with the account's credentials).
    pub(crate) url: String,
    /// Its MIME type, when Twilio gave one.
    pub(crate) content_type: Option<String>,
}

impl fmt::Debug for Media {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Media")
            .field("url", &"<redacted>")
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// An inbound SMS or MMS.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct InboundSms {
    /// Twilio's ID for the message (`SM…` or `MM…`): the key for deduplication.
    pub(crate) message_sid: String,
    /// The account the message arrived on.
    pub(crate) account_sid: Option<String>,
    /// The messaging service the receiving number belongs to, if any.
    pub(crate) messaging_service_sid: Option<String>,
    /// The sender's number.
    pub(crate) from: String,
    /// The number that received the message.
    pub(crate) to: String,
    /// The text; empty for an MMS that carries only media.
    pub(crate) body: String,
    /// How many media items Twilio announced.
    pub(crate) num_media: u32,
    /// The media items present in the webhook.
    pub(crate) media: Vec<Media>,
    /// How many segments the message arrived in, if Twilio said.
    pub(crate) num_segments: Option<u32>,
}

impl InboundSms {
    /// Parses the raw body of an inbound message webhook.
    #[cfg(test)]
    pub(crate) fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        Self::from_params(&FormParams::parse(body))
    }

    /// Reads an inbound message from decoded parameters.
    pub(crate) fn from_params(params: &FormParams) -> Result<Self, WebhookError> {
        let message_sid = required(params, "MessageSid")?;
        if !is_message_sid(message_sid) {
            return Err(WebhookError::InvalidMessageSid);
        }
        let from = required(params, "From")?;
        if !is_phone_number(from) {
            return Err(WebhookError::Malformed {
                field: "From",
                reason: "not a phone number in E.164 form (+ and 7 to 15 digits); this gateway \
                         answers SMS and MMS from phone numbers only",
            });
        }
        let to = required(params, "To")?;
        // Present but empty is an MMS without text; absent is a malformed webhook.
        let body = required(params, "Body")?;
        let num_media = optional_number(params, "NumMedia")?.unwrap_or(0);
        let media = (0..num_media.min(MAX_MEDIA))
            .filter_map(|index| {
                let url = params.get(&format!("MediaUrl{index}"))?;
                Some(Media {
                    url: url.to_owned(),
                    content_type: params
                        .get(&format!("MediaContentType{index}"))
                        .map(str::to_owned),
                })
            })
            .collect();
        Ok(InboundSms {
            message_sid: message_sid.to_owned(),
            account_sid: non_empty(params, "AccountSid"),
            messaging_service_sid: non_empty(params, "MessagingServiceSid"),
            from: from.to_owned(),
            to: to.to_owned(),
            body: body.to_owned(),
            num_media,
            media,
            num_segments: optional_number(params, "NumSegments")?,
        })
    }
}

impl fmt::Debug for InboundSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundSms")
            .field("message_sid", &self.message_sid)
            .field("account_sid", &self.account_sid)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("from", &"<redacted>")
            .field("to", &"<redacted>")
            .field("body_chars", &self.body.chars().count())
            .field("num_media", &self.num_media)
            .field("media", &self.media)
            .field("num_segments", &self.num_segments)
            .finish()
    }
}

/// Where an outbound message is in its delivery, as a status callback reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MessageStatus {
    /// Accepted by a messaging service, before a sender is chosen.
    Accepted,
    /// Scheduled for later sending.
    Scheduled,
    /// Queued at Twilio.
    Queued,
    /// Being handed to the carrier.
    Sending,
    /// Handed to the carrier.
    Sent,
    /// The carrier confirmed delivery.
    Delivered,
    /// The carrier could not deliver it.
    Undelivered,
    /// Twilio could not send it.
    Failed,
    /// The recipient read it (channels with read receipts).
    Read,
    /// A scheduled message was canceled.
    Canceled,
}

impl MessageStatus {
    /// Parses Twilio's lower-case status name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "accepted" => Self::Accepted,
            "scheduled" => Self::Scheduled,
            "queued" => Self::Queued,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "undelivered" => Self::Undelivered,
            "failed" => Self::Failed,
            "read" => Self::Read,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Twilio's name for the status.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Read => "read",
            Self::Canceled => "canceled",
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusCallback {
    /// The message the status is about.
    pub(crate) message_sid: String,
    /// Its new status.
    pub(crate) status: MessageStatus,
    /// Twilio's error code for `failed` or `undelivered` (e.g. 30003 unreachable).
    pub(crate) error_code: Option<u32>,
}

impl StatusCallback {
    /// Parses the raw body of a status callback.
    #[cfg(test)]
    pub(crate) fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        Self::from_params(&FormParams::parse(body))
    }

    /// Reads a status callback from decoded parameters.
    pub(crate) fn from_params(params: &FormParams) -> Result<Self, WebhookError> {
        let message_sid = required(params, "MessageSid")?;
        if !is_message_sid(message_sid) {
            return Err(WebhookError::InvalidMessageSid);
        }
        // `SmsStatus` is the older name Twilio still sends alongside `MessageStatus`.
        let status_name = params
            .get("MessageStatus")
            .or_else(|| params.get("SmsStatus"))
            .ok_or(WebhookError::Missing("MessageStatus"))?;
        let status = MessageStatus::parse(status_name)
            .ok_or_else(|| WebhookError::UnknownStatus(status_name.chars().take(32).collect()))?;
        Ok(StatusCallback {
            message_sid: message_sid.to_owned(),
            status,
            error_code: optional_number(params, "ErrorCode")?,
        })
    }
}

/// Whether `sid` is a message SID: `SM` (SMS) or `MM` (MMS) and 32 hex digits.
pub(crate) fn is_message_sid(sid: &str) -> bool {
    let bytes = sid.as_bytes();
    bytes.len() == 34
        && (bytes.starts_with(b"SM") || bytes.starts_with(b"MM"))
        && bytes[2..].iter().all(u8::is_ascii_hexdigit)
}

/// Whether `from` can be the sender of a message this gateway answers: a phone number in E.164
/// form, `+` and 7 to 15 digits, the first not 0, as Twilio gives SMS and MMS senders. Replies
/// go out as SMS from `TWILIO_FROM` (or the messaging service), so another channel's address
/// (`whatsapp:+1…`, `messenger:…`) or a short code could not be answered, and an empty, overlong
/// or non-numeric value cannot be anyone's number.
pub(crate) fn is_phone_number(from: &str) -> bool {
    from.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

fn required<'a>(params: &'a FormParams, name: &'static str) -> Result<&'a str, WebhookError> {
    params.get(name).ok_or(WebhookError::Missing(name))
}

fn non_empty(params: &FormParams, name: &str) -> Option<String> {
    params
        .get(name)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// A decimal parameter; absent or empty is `None` (Twilio sends `ErrorCode=` on success).
fn optional_number(params: &FormParams, name: &'static str) -> Result<Option<u32>, WebhookError> {
    match params.get(name).map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| WebhookError::Malformed {
            field: name,
            reason: "not a non-negative integer",
        }),
    }
}

/// The property the `webhook` fuzz target checks (`docs/fuzzing.md`); the tests replay the
/// corpus in `fuzz/corpus/webhook` through it.
///
/// `data` is a raw form body, or `URL \n X-Twilio-Signature \n body` when it holds two line
/// feeds. Parsing never panics and what it reads agrees with the parameters; `Debug` is the
/// same whatever the numbers, text and media URLs; the body signed with the auth token
/// validates, in any parameter order, while the same signature with one bit flipped, or under
/// another token, does not; and no header validates under two tokens.
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz_check(data: &[u8]) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;

    use crate::twilio::signature::{self, SignatureError};

    const TOKEN: &str = "fuzz-auth-token";
    const OTHER_TOKEN: &str = "another-auth-token";

    let mut parts = data.splitn(3, |&byte| byte == b'\n');
    let (url, header, body) = match (parts.next(), parts.next(), parts.next()) {
        (Some(url), Some(header), Some(body)) => (
            String::from_utf8_lossy(url),
            String::from_utf8_lossy(header),
            body,
        ),
        _ => ("https://soul.example/twilio/sms".into(), "".into(), data),
    };
    let params = FormParams::parse(body);

    if let Ok(sms) = InboundSms::from_params(&params) {
        assert!(is_message_sid(&sms.message_sid));
        assert_eq!(params.get("MessageSid"), Some(sms.message_sid.as_str()));
        assert_eq!(params.get("From"), Some(sms.from.as_str()));
        assert_eq!(params.get("To"), Some(sms.to.as_str()));
        assert_eq!(params.get("Body"), Some(sms.body.as_str()));
        assert!(u32::try_from(sms.media.len()).is_ok_and(|n| n <= sms.num_media.min(MAX_MEDIA)));
        let anonymous = InboundSms {
            from: "+1".to_owned(),
            to: "+2".to_owned(),
            body: "x".repeat(sms.body.chars().count()),
            media: sms
                .media
                .iter()
                .map(|media| Media {
                    url: "u".to_owned(),
                    content_type: media.content_type.clone(),
                })
                .collect(),
            ..sms.clone()
        };
        assert_eq!(format!("{sms:?}"), format!("{anonymous:?}"));
    }
    if let Ok(callback) = StatusCallback::from_params(&params) {
        assert!(is_message_sid(&callback.message_sid));
        let status = params
            .get("MessageStatus")
            .or_else(|| params.get("SmsStatus"));
        assert_eq!(status, Some(callback.status.as_str()));
    }

    let pairs = params.pairs();
    let signed = signature::sign(&url, pairs, TOKEN);
    assert_eq!(signature::validate(&url, pairs, TOKEN, &signed), Ok(()));
    let reversed: Vec<(String, String)> = pairs.iter().rev().cloned().collect();
    assert_eq!(signature::validate(&url, &reversed, TOKEN, &signed), Ok(()));
    assert_eq!(
        signature::validate(&url, pairs, OTHER_TOKEN, &signed),
        Err(SignatureError::Mismatch)
    );
    let mut mac = BASE64.decode(&signed).expect("a signature is base64");
    let bit = data.len() % (mac.len() * 8);
    mac[bit / 8] ^= 1 << (bit % 8);
    assert_eq!(
        signature::validate(&url, pairs, TOKEN, &BASE64.encode(&mac)),
        Err(SignatureError::Mismatch)
    );
    if signature::validate(&url, pairs, TOKEN, &header).is_ok() {
        assert_eq!(
            signature::validate(&url, pairs, OTHER_TOKEN, &header),
            Err(SignatureError::Mismatch)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "SM0123456789abcdef0123456789ABCDEF";

    fn inbound_body() -> String {
        format!(
            "ToCountry=US&ToState=CA&SmsMessageSid={SID}&NumMedia=0&ToCity=&FromZip=94105\
             &SmsSid={SID}&FromState=CA&SmsStatus=received&FromCity=SAN+FRANCISCO\
             &Body=Hello+there%21+%F0%9F%98%80&FromCountry=US&To=%2B15005550006\
             &MessagingServiceSid=MG0123456789abcdef0123456789abcdef&ToZip=\
             &NumSegments=1&MessageSid={SID}&AccountSid=AC0123456789abcdef0123456789abcdef\
             &From=%2B14158675309&ApiVersion=2010-04-01"
        )
    }

    #[test]
    fn parses_a_real_shaped_inbound_sms() {
        let sms = InboundSms::parse(inbound_body().as_bytes()).unwrap();
        assert_eq!(sms.message_sid, SID);
        assert_eq!(sms.from, "+14158675309");
        assert_eq!(sms.to, "+15005550006");
        assert_eq!(sms.body, "Hello there! 😀");
        assert_eq!(sms.num_media, 0);
        assert!(sms.media.is_empty());
        assert_eq!(sms.num_segments, Some(1));
        assert_eq!(
            sms.messaging_service_sid.as_deref(),
            Some("MG0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            sms.account_sid.as_deref(),
            Some("AC0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn keeps_every_pair_for_signing() {
        let params = FormParams::parse(b"A=1&B=2&A=3&Unknown=x&Empty=");
        assert_eq!(
            params.pairs(),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned()),
                ("A".to_owned(), "3".to_owned()),
                ("Unknown".to_owned(), "x".to_owned()),
                ("Empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(params.get("A"), Some("1"));
        assert_eq!(params.get("Missing"), None);
    }

    #[test]
    fn mms_without_text_has_an_empty_body_and_media() {
        let body = format!(
            "MessageSid=MM{}&From=%2B14155550100&To=%2B1500&Body=&NumMedia=2\
             &MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm0&MediaContentType0=image%2Fjpeg\
             &MediaUrl1=https%3A%2F%2Fapi.twilio.com%2Fm1",
            "a".repeat(32)
        );
        let sms = InboundSms::parse(body.as_bytes()).unwrap();
        assert_eq!(sms.body, "");
        assert_eq!(sms.num_media, 2);
        assert_eq!(
            sms.media,
            [
                Media {
                    url: "https://api.twilio.com/m0".to_owned(),
                    content_type: Some("image/jpeg".to_owned())
                },
                Media {
                    url: "https://api.twilio.com/m1".to_owned(),
                    content_type: None
                },
            ]
        );
    }

    #[test]
    fn missing_fields_are_typed_errors() {
        let full = format!("MessageSid={SID}&From=%2B14155550100&To=%2B2&Body=hi");
        for (field, name) in [
            ("MessageSid", "MessageSid"),
            ("From", "From"),
            ("To", "To"),
            ("Body", "Body"),
        ] {
            let without: Vec<&str> = full
                .split('&')
                .filter(|pair| !pair.starts_with(&format!("{field}=")))
                .collect();
            assert_eq!(
                InboundSms::parse(without.join("&").as_bytes()),
                Err(WebhookError::Missing(name)),
                "{field}"
            );
        }
        assert!(InboundSms::parse(full.as_bytes()).is_ok());
    }

    #[test]
    fn message_sid_shape_is_checked() {
        for bad in [
            "",
            "SM123",
            "XX0123456789abcdef0123456789abcdef",
            "SM0123456789abcdef0123456789abcdeg",
            "SM0123456789abcdef0123456789abcdef0",
            "sm0123456789abcdef0123456789abcdef",
            "SMé123456789abcdef0123456789abcde",
        ] {
            assert!(!is_message_sid(bad), "{bad}");
            let body = format!("MessageSid={bad}&From=%2B14155550100&To=%2B2&Body=hi");
            assert_eq!(
                InboundSms::parse(body.as_bytes()),
                Err(WebhookError::InvalidMessageSid),
                "{bad}"
            );
        }
        assert!(is_message_sid(SID));
        assert!(is_message_sid(&format!("MM{}", "F".repeat(32))));
    }

    #[test]
    fn a_sender_must_be_a_phone_number() {
        for good in [
            "+14155550100",
            "+447700900123",
            "+6834002",
            "+123456789012345",
        ] {
            assert!(is_phone_number(good), "{good}");
            let body = format!(
                "MessageSid={SID}&From={}&To=%2B2&Body=hi",
                good.replace('+', "%2B")
            );
            assert_eq!(
                InboundSms::parse(body.as_bytes()).map(|sms| sms.from),
                Ok(good.to_owned())
            );
        }
        let digits = "9".repeat(5000);
        for bad in [
            "",
            "+",
            "14155550100",
            "+1415555010a",
            "+0123456789",
            "+123456",
            "+1234567890123456",
            digits.as_str(),
            "+1415\u{0}5550100",
            "+14155550100\u{0}",
            "whatsapp:+14155550100",
            "messenger:1234567890",
            "12345",
            " +14155550100",
            "+1 415 555 0100",
            "+١٤١٥٥٥٥٠١٠٠",
        ] {
            assert!(!is_phone_number(bad), "{bad:?}");
            let body: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("MessageSid", SID)
                .append_pair("From", bad)
                .append_pair("To", "+15005550006")
                .append_pair("Body", "hi")
                .finish();
            let error = InboundSms::parse(body.as_bytes()).unwrap_err();
            assert!(
                matches!(error, WebhookError::Malformed { field: "From", .. }),
                "{bad:?}: {error:?}"
            );
            // The value is personal: the error never quotes it.
            assert_eq!(
                error.to_string(),
                "the webhook's From parameter is malformed: not a phone number in E.164 form (+ \
                 and 7 to 15 digits); this gateway answers SMS and MMS from phone numbers only"
            );
        }
    }

    #[test]
    fn malformed_numbers_are_typed_errors() {
        let body = format!("MessageSid={SID}&From=%2B14155550100&To=%2B2&Body=hi&NumMedia=lots");
        assert_eq!(
            InboundSms::parse(body.as_bytes()),
            Err(WebhookError::Malformed {
                field: "NumMedia",
                reason: "not a non-negative integer"
            })
        );
    }

    #[test]
    fn huge_num_media_is_bounded() {
        let body =
            format!("MessageSid={SID}&From=%2B14155550100&To=%2B2&Body=&NumMedia=4000000000");
        let sms = InboundSms::parse(body.as_bytes()).unwrap();
        assert_eq!(sms.num_media, 4_000_000_000);
        assert!(sms.media.is_empty());
    }

    #[test]
    fn debug_redacts_numbers_and_text() {
        let sms = InboundSms::parse(inbound_body().as_bytes()).unwrap();
        let debug = format!("{sms:?} {:?}", FormParams::parse(inbound_body().as_bytes()));
        for secret in ["4158675309", "5005550006", "Hello", "SAN FRANCISCO"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(debug.contains(SID));
    }

    #[test]
    fn status_callbacks_parse() {
        let body = format!(
            "SmsSid={SID}&SmsStatus=delivered&MessageStatus=delivered&To=%2B1&MessageSid={SID}\
             &AccountSid=AC1&From=%2B2&ApiVersion=2010-04-01"
        );
        assert_eq!(
            StatusCallback::parse(body.as_bytes()),
            Ok(StatusCallback {
                message_sid: SID.to_owned(),
                status: MessageStatus::Delivered,
                error_code: None,
            })
        );
        let failed = format!("MessageSid={SID}&MessageStatus=undelivered&ErrorCode=30003");
        let callback = StatusCallback::parse(failed.as_bytes()).unwrap();
        assert_eq!(callback.status, MessageStatus::Undelivered);
        assert_eq!(callback.error_code, Some(30003));
        let legacy = format!("MessageSid={SID}&SmsStatus=sent&ErrorCode=");
        let callback = StatusCallback::parse(legacy.as_bytes()).unwrap();
        assert_eq!(callback.status, MessageStatus::Sent);
        assert_eq!(callback.error_code, None);
    }

    #[test]
    fn status_callback_errors() {
        assert_eq!(
            StatusCallback::parse(format!("MessageSid={SID}").as_bytes()),
            Err(WebhookError::Missing("MessageStatus"))
        );
        assert_eq!(
            StatusCallback::parse(format!("MessageSid={SID}&MessageStatus=teleported").as_bytes()),
            Err(WebhookError::UnknownStatus("teleported".to_owned()))
        );
        assert_eq!(
            StatusCallback::parse(b"MessageStatus=sent"),
            Err(WebhookError::Missing("MessageSid"))
        );
    }

    #[test]
    fn every_status_round_trips() {
        use MessageStatus::*;
        for status in [
            Accepted,
            Scheduled,
            Queued,
            Sending,
            Sent,
            Delivered,
            Undelivered,
            Failed,
            Read,
            Canceled,
        ] {
            assert_eq!(MessageStatus::parse(status.as_str()), Some(status));
        }
    }

    /// Webhooks built and signed by the testkit's independent implementation validate and parse
    /// here, whatever their text.
    #[test]
    fn testkit_webhooks_validate_and_parse() {
        use crate::twilio::signature;
        use soul_testkit::twilio::{InboundSmsWebhook, StatusCallbackWebhook};

        let url = "https://soul.example/twilio/sms?tenant=a&x=%20y";
        let token = "f00dfeed";
        let mut rng = fastrand::Rng::with_seed(99);
        const PIECES: &[&str] = &["hi", " ", "&", "=", "+", "%", "é", "😀", "\n", "?", "#"];
        for _ in 0..200 {
            let text: String = (0..rng.usize(0..30))
                .map(|_| PIECES[rng.usize(..PIECES.len())])
                .collect();
            let webhook = InboundSmsWebhook::new("AC1", "+14158675309", "+15005550006", &text)
                .with_media("https://api.twilio.com/m0", "image/jpeg")
                .with_param("SomeNewField", &text);
            let signed = webhook.sign(url, token);
            let params = FormParams::parse(signed.body.as_bytes());
            assert_eq!(
                signature::validate(url, params.pairs(), token, &signed.signature),
                Ok(())
            );
            let sms = InboundSms::from_params(&params).unwrap();
            assert_eq!(sms.message_sid, webhook.message_sid());
            assert_eq!(sms.body, text);
            assert_eq!(sms.from, "+14158675309");
            assert_eq!(sms.media.len(), 1);
        }

        let callback = StatusCallbackWebhook::new("AC1", SID, "failed")
            .with_error_code(30003)
            .sign(url, token);
        let params = FormParams::parse(callback.body.as_bytes());
        assert_eq!(
            signature::validate(url, params.pairs(), token, &callback.signature),
            Ok(())
        );
        let status = StatusCallback::from_params(&params).unwrap();
        assert_eq!(status.status, MessageStatus::Failed);
        assert_eq!(status.error_code, Some(30003));
    }

    /// Arbitrary bytes never panic the parsers.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pieces: &[&[u8]] = &[
            b"MessageSid=",
            SID.as_bytes(),
            b"&",
            b"=",
            b"From=",
            b"Body=",
            b"NumMedia=",
            b"MediaUrl0=",
            b"MessageStatus=",
            b"ErrorCode=",
            b"%",
            b"%F0%9F",
            b"\xff\xfe",
            b"+",
            b"99999999999999999999",
            b"1",
        ];
        for _ in 0..2000 {
            let mut body = Vec::new();
            for _ in 0..rng.usize(0..20) {
                if rng.bool() {
                    body.extend_from_slice(pieces[rng.usize(..pieces.len())]);
                } else {
                    body.push(rng.u8(..));
                }
            }
            let _ = InboundSms::parse(&body);
            let _ = StatusCallback::parse(&body);
        }
    }

    #[test]
    fn fuzz_corpus_passes_the_fuzz_checks() {
        crate::replay_fuzz_corpus("webhook", fuzz_check);
    }
}
