//! Sending messages through Twilio's Messages API.
//!
//! `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Messages.json` with Basic auth (account
//! SID : auth token) and the form fields `To`, `From` or `MessagingServiceSid`, `Body` and
//! optionally `StatusCallback`. Each attempt's answer is classified ([`SendError`]): accepted,
//! retryable (HTTP 429, 5xx, Twilio 20429 and 21611, time-outs and connection failures),
//! opted out (21610: never retried, the number must be marked) or permanent (every other
//! refusal). [`TwilioClient::send`] retries retryable attempts with the engine's retry policy
//! ([`soul_engine::retry`]: exponential backoff with full jitter, `Retry-After` honoured when the
//! budget can hold it), at most four attempts within 30 s.
//!
//! Phone numbers, bodies and the auth token are never logged, and `Debug` redacts them.
//! Twilio's error messages are not kept either: they quote the phone number.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use soul_engine::retry::{Failure, RetryPolicy, Verdict, parse_retry_after, retry};
use soul_persistence::Line;

use super::webhook::MessageStatus;
use crate::config::{Secret, Sender, TwilioConfig};

/// Twilio's code for a recipient who has opted out (replied STOP).
pub(crate) const OPTED_OUT: u32 = 21610;
/// Twilio's code for too many requests (sent with HTTP 429).
const TOO_MANY_REQUESTS: u32 = 20429;
/// Twilio's code for a sender whose queue is full: try again later.
const QUEUE_FULL: u32 = 21611;

/// How a send retries its failed attempts: at most four, 500 ms apart at first, doubling to at
/// most 8 s (full jitter), within 30 s, waits included; a `Retry-After` the 30 s cannot hold ends
/// the send at once. A reply that is minutes late is worse than an error the outbox can act on.
fn send_retry() -> RetryPolicy {
    let budget = Duration::from_secs(30);
    RetryPolicy::default()
        .with_max_attempts(4)
        .with_base_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(8))
        .with_max_retry_after(budget)
        .with_budget(budget)
}

/// A message to send.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct OutboundSms {
    /// The recipient (E.164).
    pub(crate) to: String,
    /// The line it goes out from: a number, a messaging service (`MG…`), or the default line
    /// (the configured sender).
    pub(crate) line: Line,
    /// The text, at most 1,600 characters (see [`crate::segments::split_reply`]).
    pub(crate) body: String,
    /// Where Twilio reports delivery status, if anywhere.
    pub(crate) status_callback: Option<String>,
}

impl fmt::Debug for OutboundSms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSms")
            .field("to", &"<redacted>")
            .field("body_chars", &self.body.chars().count())
            .field("status_callback", &self.status_callback)
            .finish()
    }
}

/// A message Twilio accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// Twilio's ID for the message (`SM…`).
    pub(crate) sid: String,
    /// Its status when accepted (`queued`, or `accepted` through a messaging service);
    /// `None` if Twilio named a status this gateway does not know.
    pub(crate) status: Option<MessageStatus>,
}

/// Why an attempt may succeed if repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RetryCause {
    /// Twilio answered with a retryable status (429, 5xx) or code (20429, 21611).
    Status {
        /// The HTTP status.
        status: u16,
        /// Twilio's error code, if the body had one.
        code: Option<u32>,
    },
    /// No answer within the attempt's time limit. Twilio may have accepted the message, so a
    /// retry can duplicate it; a duplicate is judged better than a lost reply.
    Timeout,
    /// The connection failed or broke.
    Connection,
}

impl fmt::Display for RetryCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryCause::Status {
                status,
                code: Some(code),
            } => write!(f, "HTTP {status}, Twilio error {code}"),
            RetryCause::Status { status, code: None } => write!(f, "HTTP {status}"),
            RetryCause::Timeout => f.write_str("timed out"),
            RetryCause::Connection => f.write_str("connection failed"),
        }
    }
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// Every attempt allowed failed with a retryable cause; the outbox may try again later.
    #[error("Twilio did not take the message after {attempts} attempt(s): {cause}")]
    Retryable {
        /// The last attempt's cause.
        cause: RetryCause,
        /// How long Twilio asked to wait, if it said.
        retry_after: Option<Duration>,
        /// Attempts made.
        attempts: u32,
    },
    /// The recipient has opted out (21610): mark the number and never retry.
    #[error("the recipient has opted out (Twilio error 21610)")]
    OptedOut,
    /// Twilio refused the message for good (invalid or unreachable number, body too long,
    /// bad credentials, …).
    #[error("Twilio refused the message (HTTP {status}, Twilio error {code:?})")]
    Permanent {
        /// The HTTP status.
        status: u16,
        /// Twilio's error code, if the body had one (21211, 21612, 21614, 21408, 21617, …).
        code: Option<u32>,
    },
    /// Twilio answered success with a body that is not a message: whether it was queued is
    /// unknown, so it is not retried.
    #[error("Twilio's answer (HTTP {status}) is not a message resource")]
    InvalidResponse {
        /// The HTTP status.
        status: u16,
    },
}

impl SendError {
    /// Whether sending again later may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, SendError::Retryable { .. })
    }
}

/// The HTTP client could not be built (e.g. TLS initialisation failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for Twilio")]
pub(crate) struct BuildError(#[source] reqwest::Error);

/// Sends messages as one account and sender.
#[derive(Clone)]
pub(crate) struct TwilioClient {
    http: reqwest::Client,
    api_base: String,
    messages_url: String,
    account_sid: String,
    auth_token: Secret,
    sender: Sender,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for TwilioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient")
            .field("messages_url", &self.messages_url)
            .field("auth_token", &self.auth_token)
            .field("sender", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The JSON error body Twilio sends with a refusal.
#[derive(Deserialize)]
struct ErrorBody {
    code: Option<u32>,
}

/// The part of a message resource the gateway uses.
#[derive(Deserialize)]
struct MessageResource {
    sid: String,
    status: Option<String>,
}

impl TwilioClient {
    /// A client for `config`'s account and sender, with a 10 s limit per attempt, retried by
    /// [`send_retry`].
    pub(crate) fn new(config: &TwilioConfig) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(BuildError)?;
        Ok(TwilioClient {
            http,
            api_base: config.api_base.trim_end_matches('/').to_owned(),
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                config.api_base.trim_end_matches('/'),
                config.account_sid
            ),
            account_sid: config.account_sid.clone(),
            auth_token: config.auth_token.clone(),
            sender: config.sender.clone(),
            request_timeout: Duration::from_secs(10),
            retry: send_retry(),
        })
    }

    /// Uses `retry` for failed attempts.
    #[cfg(test)]
    pub(crate) fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Limits each attempt, answer included, to `timeout`.
    #[cfg(test)]
    pub(crate) fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sends `message`, retrying retryable failures within the client's [`RetryPolicy`]. Each
    /// attempt has the client's own time limit: the policy's budget decides whether another
    /// attempt starts, not how long one may take.
    pub(crate) async fn send(&self, message: &OutboundSms) -> Result<Accepted, SendError> {
        let since = chrono::Utc::now() - CLOCK_SKEW;
        let mut attempt = 0;
        let sent = retry(&self.retry, "Twilio send", |_| {
            attempt += 1;
            let attempt = attempt;
            async move {
                let error = match self.attempt(message).await {
                    Ok(accepted) => return Ok(accepted),
                    Err(error) => error,
                };
                // An attempt that got no answer may have been taken: ask before repeating it.
                if let Unsent::Retry {
                    cause: cause @ (RetryCause::Timeout | RetryCause::Connection),
                    ..
                } = &error
                    && let Ok(Some(sid)) = self
                        .sent_since(&message.to, &message.line, &message.body, since)
                        .await
                {
                    tracing::info!(attempt, %cause, "Twilio had taken the unanswered attempt");
                    return Ok(Accepted { sid, status: None });
                }
                Err(error)
            }
        })
        .await;
        sent.map_err(|error| {
            let attempts = error.attempts();
            match error.into_last() {
                Unsent::Final(error) => error,
                Unsent::Retry { cause, retry_after } => SendError::Retryable {
                    cause,
                    retry_after,
                    attempts,
                },
            }
        })
    }

    /// One attempt, classified.
    async fn attempt(&self, message: &OutboundSms) -> Result<Accepted, Unsent> {
        let mut form: Vec<(&str, &str)> = vec![("To", &message.to)];
        match self.sender_for(&message.line) {
            Sender::From(number) => form.push(("From", number)),
            Sender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        form.push(("Body", &message.body));
        if let Some(url) = &message.status_callback {
            form.push(("StatusCallback", url));
        }
        let sent = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .timeout(self.request_timeout)
            .form(&form)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Err(Unsent::transport(&error)),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Err(Unsent::transport(&error)),
        };
        classify(status, &body, retry_after)
    }
}

/// The part of a message list page reconciliation reads.
#[derive(Deserialize)]
struct MessagePage {
    #[serde(default)]
    messages: Vec<ListedMessage>,
    next_page_uri: Option<String>,
}

/// One message of a list page.
#[derive(Deserialize)]
struct ListedMessage {
    sid: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    direction: Option<String>,
    /// RFC 2822, to the second.
    date_created: Option<String>,
}

/// Why Twilio's list of sent messages could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ListError {
    /// No answer.
    #[error("could not list messages at Twilio: {0}")]
    Transport(RetryCause),
    /// A refusal.
    #[error("Twilio refused to list messages (HTTP {0})")]
    Status(u16),
    /// An answer that is not a message list.
    #[error("Twilio's answer is not a message list")]
    Invalid,
}

impl TwilioClient {
    /// Who a message on `line` is sent as: the line's own number or messaging service, or the
    /// configured sender for the default line.
    fn sender_for<'a>(&'a self, line: &'a Line) -> Sender<&'a str> {
        match &self.sender {
            _ if line.as_str().starts_with("MG") => Sender::MessagingService(line.as_str()),
            _ if !line.is_default() => Sender::From(line.as_str()),
            Sender::From(number) => Sender::From(number.as_str()),
            Sender::MessagingService(sid) => Sender::MessagingService(sid.as_str()),
        }
    }

    /// The SID of a message already created at Twilio to `to`, from `line`'s sender, with exactly
    /// `body`, created at or after `since`: whether an earlier attempt whose answer was lost (the
    /// process died, or the attempt timed out) was in fact taken. Twilio keys messages by SID
    /// only and has no idempotency key for creating one, so its own record is the only witness.
    /// Pages are followed, newest first, until one holds nothing created since `since`.
    pub(crate) async fn sent_since(
        &self,
        to: &str,
        line: &Line,
        body: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, ListError> {
        let mut query: Vec<(&str, &str)> = vec![("To", to), ("PageSize", "100")];
        if let Sender::From(number) = self.sender_for(line) {
            query.push(("From", number));
        }
        let mut request = self.http.get(&self.messages_url).query(&query);
        for _ in 0..MAX_LIST_PAGES {
            let response = request
                .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
                .timeout(self.request_timeout)
                .send()
                .await
                .map_err(|error| ListError::Transport(transport_cause(&error)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(ListError::Status(status.as_u16()));
            }
            let page: MessagePage = response.json().await.map_err(|_| ListError::Invalid)?;
            let mut any_recent = false;
            for message in &page.messages {
                let created = message
                    .date_created
                    .as_deref()
                    .and_then(|date| chrono::DateTime::parse_from_rfc2822(date).ok());
                // Twilio's dates are whole seconds: a message created in the same second as
                // `since` counts. An unreadable date counts too (matching the text is what matters).
                let recent = created.is_none_or(|created| created.timestamp() >= since.timestamp());
                any_recent |= recent;
                let outbound = message
                    .direction
                    .as_deref()
                    .is_none_or(|direction| direction.starts_with("outbound"));
                if recent && outbound && message.body.as_deref() == Some(body) {
                    return Ok(Some(message.sid.clone()));
                }
            }
            let next = match page.next_page_uri.filter(|_| any_recent) {
                Some(next) if !next.is_empty() => next,
                _ => return Ok(None),
            };
            request = self.http.get(format!("{}{next}", self.api_base));
        }
        Ok(None)
    }
}

/// How far Twilio's clock may be ahead of ours: its `date_created` is compared with ours.
pub(crate) const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(60);

/// Pages of sent messages read when looking for an earlier attempt's message.
const MAX_LIST_PAGES: usize = 5;

/// Why an attempt did not send the message: for good, or worth repeating.
#[derive(Debug)]
enum Unsent {
    Final(SendError),
    Retry {
        cause: RetryCause,
        retry_after: Option<Duration>,
    },
}

impl Unsent {
    fn transport(error: &reqwest::Error) -> Self {
        Unsent::Retry {
            cause: transport_cause(error),
            retry_after: None,
        }
    }
}

/// What the retry logs: codes and causes only, never a number or a body.
impl fmt::Display for Unsent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsent::Final(error) => error.fmt(f),
            Unsent::Retry { cause, .. } => cause.fmt(f),
        }
    }
}

impl Failure for Unsent {
    fn verdict(&self) -> Verdict {
        match self {
            Unsent::Final(_) => Verdict::Final,
            Unsent::Retry { retry_after, .. } => Verdict::Retry {
                after: *retry_after,
            },
        }
    }
}

/// Why a request got no answer. The error's text includes the URL, which holds only the
/// account SID: safe to log, but the cause is all a caller needs.
fn transport_cause(error: &reqwest::Error) -> RetryCause {
    if error.is_timeout() {
        RetryCause::Timeout
    } else {
        RetryCause::Connection
    }
}

/// Classifies Twilio's answer.
fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Result<Accepted, Unsent> {
    if (200..300).contains(&status) {
        return serde_json::from_slice::<MessageResource>(body)
            .ok()
            .filter(|resource| !resource.sid.is_empty())
            .map(|resource| Accepted {
                status: resource.status.as_deref().and_then(MessageStatus::parse),
                sid: resource.sid,
            })
            .ok_or(Unsent::Final(SendError::InvalidResponse { status }));
    }
    let code = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|error| error.code);
    let retryable =
        status == 429 || status >= 500 || matches!(code, Some(TOO_MANY_REQUESTS | QUEUE_FULL));
    Err(if code == Some(OPTED_OUT) {
        Unsent::Final(SendError::OptedOut)
    } else if retryable {
        Unsent::Retry {
            cause: RetryCause::Status { status, code },
            retry_after,
        }
    } else {
        Unsent::Final(SendError::Permanent { status, code })
    })
}

/// `Retry-After` in seconds or as an HTTP date, read as the model client reads it.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, chrono::Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use soul_testkit::twilio::{Failure, TwilioDouble};

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "double-auth-token";
    const FROM: &str = "+15005550006";

    /// [`send_retry`] with short waits.
    fn fast_retry(max_attempts: u32) -> RetryPolicy {
        send_retry()
            .with_max_attempts(max_attempts)
            .with_base_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(20))
            .with_max_retry_after(Duration::from_secs(10))
            .with_budget(Duration::from_secs(10))
    }

    fn client(double: &TwilioDouble, sender: Sender) -> TwilioClient {
        let config = TwilioConfig {
            account_sid: ACCOUNT.to_owned(),
            auth_token: Secret::new(TOKEN),
            sender,
            api_base: double.base_url(),
        };
        TwilioClient::new(&config)
            .unwrap()
            .with_retry(fast_retry(3))
            .with_request_timeout(Duration::from_secs(5))
    }

    fn message(body: &str) -> OutboundSms {
        OutboundSms {
            to: "+14158675309".to_owned(),
            line: Line::DEFAULT,
            body: body.to_owned(),
            status_callback: Some("https://soul.example/twilio/status".to_owned()),
        }
    }

    #[tokio::test]
    async fn a_reply_goes_out_from_the_line_of_its_conversation() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        let client = client(&double, Sender::From(FROM.to_owned()));
        let service = "MG0123456789abcdef0123456789abcdef";
        for line in ["+15005550042", service, ""] {
            let message = OutboundSms {
                line: Line::new(line),
                ..message(&format!("from the line {line:?}"))
            };
            client.send(&message).await.unwrap();
        }
        let sent = double.messages();
        assert_eq!(sent[0].from.as_deref(), Some("+15005550042"));
        assert_eq!(sent[1].from, None, "a messaging service picks the number");
        assert_eq!(sent[1].messaging_service_sid.as_deref(), Some(service));
        assert_eq!(sent[2].from.as_deref(), Some(FROM), "the default line");
    }

    #[tokio::test]
    async fn accepted_message_reaches_the_double() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        let client = client(&double, Sender::From(FROM.to_owned()));
        let accepted = client.send(&message("Hello 😀 there")).await.unwrap();
        assert!(accepted.sid.starts_with("SM") && accepted.sid.len() == 34);
        assert_eq!(accepted.status, Some(MessageStatus::Queued));
        let sent = double.messages();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].sid, accepted.sid);
        assert_eq!(sent[0].to, "+14158675309");
        assert_eq!(sent[0].from.as_deref(), Some(FROM));
        assert_eq!(sent[0].messaging_service_sid, None);
        assert_eq!(sent[0].body, "Hello 😀 there");
        assert_eq!(
            sent[0].status_callback.as_deref(),
            Some("https://soul.example/twilio/status")
        );
        assert_eq!(double.request_count(), 1);
    }

    #[tokio::test]
    async fn messaging_service_sender() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        let service = "MG0123456789abcdef0123456789abcdef";
        let client = client(&double, Sender::MessagingService(service.to_owned()));
        let mut sms = message("hi");
        sms.status_callback = None;
        client.send(&sms).await.unwrap();
        let sent = double.messages();
        assert_eq!(sent[0].from, None);
        assert_eq!(sent[0].messaging_service_sid.as_deref(), Some(service));
        assert_eq!(sent[0].status_callback, None);
    }

    #[tokio::test]
    async fn rate_limited_then_accepted_in_exactly_two_requests() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::RateLimited { retry_after: None });
        let client = client(&double, Sender::From(FROM.to_owned()));
        client.send(&message("retry me")).await.unwrap();
        assert_eq!(double.request_count(), 2);
        assert_eq!(double.messages().len(), 1);
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::RateLimited {
            retry_after: Some(1),
        });
        let client = client(&double, Sender::From(FROM.to_owned()));
        client.send(&message("later")).await.unwrap();
        assert_eq!(double.request_count(), 2);
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_as_a_date() {
        let header = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::RETRY_AFTER,
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
            retry_after(&headers)
        };
        assert_eq!(header("7"), Some(Duration::from_secs(7)));
        let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let waited = header(&in_an_hour).unwrap();
        assert!(
            waited > Duration::from_secs(3500) && waited <= Duration::from_secs(3600),
            "{waited:?}"
        );
        assert_eq!(
            header("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(header("soon"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn retry_after_beyond_the_budget_gives_up_at_once() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::RateLimited {
            retry_after: Some(3600),
        });
        let client = client(&double, Sender::From(FROM.to_owned()));
        let error = client.send(&message("later")).await.unwrap_err();
        assert_eq!(
            error,
            SendError::Retryable {
                cause: RetryCause::Status {
                    status: 429,
                    code: Some(20429)
                },
                retry_after: Some(Duration::from_secs(3600)),
                attempts: 1,
            }
        );
        assert_eq!(double.request_count(), 1);
    }

    #[tokio::test]
    async fn persistent_server_errors_exhaust_the_attempts() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        for _ in 0..5 {
            double.push_failure(Failure::Status(500));
        }
        let client = client(&double, Sender::From(FROM.to_owned()));
        let error = client.send(&message("doomed")).await.unwrap_err();
        assert!(error.is_retryable());
        assert!(
            matches!(
                error,
                SendError::Retryable {
                    cause: RetryCause::Status { status: 500, .. },
                    attempts: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(double.request_count(), 3);
        assert!(double.messages().is_empty());
    }

    #[tokio::test]
    async fn opted_out_is_not_retried() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::twilio(OPTED_OUT));
        let client = client(&double, Sender::From(FROM.to_owned()));
        let error = client.send(&message("hello?")).await.unwrap_err();
        assert_eq!(error, SendError::OptedOut);
        assert!(!error.is_retryable());
        assert_eq!(double.request_count(), 1);
    }

    #[tokio::test]
    async fn invalid_number_is_permanent() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::twilio(21211));
        let client = client(&double, Sender::From(FROM.to_owned()));
        let error = client.send(&message("hello?")).await.unwrap_err();
        assert_eq!(
            error,
            SendError::Permanent {
                status: 400,
                code: Some(21211)
            }
        );
        assert_eq!(double.request_count(), 1);
    }

    #[tokio::test]
    async fn wrong_credentials_are_permanent() {
        let double = TwilioDouble::start(ACCOUNT, "another-token").await;
        let client = client(&double, Sender::From(FROM.to_owned()));
        let error = client.send(&message("hello?")).await.unwrap_err();
        assert_eq!(
            error,
            SendError::Permanent {
                status: 401,
                code: Some(20003)
            }
        );
        assert!(double.messages().is_empty());
    }

    #[tokio::test]
    async fn a_slow_answer_times_out_and_is_retried() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::Hang(Duration::from_secs(30)));
        // Generous enough that the second, prompt answer never times out on a loaded machine.
        let client = client(&double, Sender::From(FROM.to_owned()))
            .with_request_timeout(Duration::from_secs(1));
        client.send(&message("eventually")).await.unwrap();
        assert_eq!(double.request_count(), 2);
        assert_eq!(double.messages().len(), 1);
    }

    #[tokio::test]
    async fn an_attempt_taken_but_unanswered_is_not_repeated() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        double.push_failure(Failure::AcceptSlowly(Duration::from_secs(30)));
        let client = client(&double, Sender::From(FROM.to_owned()))
            .with_request_timeout(Duration::from_secs(1));
        let accepted = client.send(&message("only once")).await.unwrap();
        let sent = double.messages();
        assert_eq!(sent.len(), 1, "{sent:#?}");
        assert_eq!(accepted.sid, sent[0].sid);
        assert_eq!(double.request_count(), 1, "no second attempt");
        assert_eq!(double.list_count(), 1);
    }

    #[tokio::test]
    async fn sent_since_matches_recipient_sender_text_and_time() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        let client = client(&double, Sender::From(FROM.to_owned()));
        let before = chrono::Utc::now() - chrono::Duration::seconds(2);
        let accepted = client.send(&message("the words")).await.unwrap();
        let to = "+14158675309";
        assert_eq!(
            client
                .sent_since(to, &Line::DEFAULT, "the words", before)
                .await
                .unwrap(),
            Some(accepted.sid)
        );
        assert_eq!(
            client
                .sent_since(to, &Line::DEFAULT, "other words", before)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            client
                .sent_since("+14158675300", &Line::DEFAULT, "the words", before)
                .await
                .unwrap(),
            None
        );
        let later = chrono::Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(
            client
                .sent_since(to, &Line::DEFAULT, "the words", later)
                .await
                .unwrap(),
            None
        );
        let other_sender = self::client(&double, Sender::From("+15005550009".to_owned()));
        assert_eq!(
            other_sender
                .sent_since(to, &Line::DEFAULT, "the words", before)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn sent_since_follows_pages() {
        let double = TwilioDouble::start(ACCOUNT, TOKEN).await;
        let client = client(&double, Sender::From(FROM.to_owned()));
        let before = chrono::Utc::now() - chrono::Duration::seconds(2);
        let first = client.send(&message("the first")).await.unwrap();
        for n in 0..120 {
            client.send(&message(&format!("filler {n}"))).await.unwrap();
        }
        assert_eq!(
            client
                .sent_since("+14158675309", &Line::DEFAULT, "the first", before)
                .await
                .unwrap(),
            Some(first.sid)
        );
        assert_eq!(double.list_count(), 2, "two pages of 100");
    }

    #[tokio::test]
    async fn connection_failure_is_retryable() {
        // A port nothing listens on: bind one, note it, and close it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let config = TwilioConfig {
            account_sid: ACCOUNT.to_owned(),
            auth_token: Secret::new(TOKEN),
            sender: Sender::From(FROM.to_owned()),
            api_base: format!("http://{address}"),
        };
        let client = TwilioClient::new(&config)
            .unwrap()
            .with_retry(fast_retry(2));
        let error = client.send(&message("anyone?")).await.unwrap_err();
        assert!(
            matches!(
                error,
                SendError::Retryable {
                    cause: RetryCause::Connection,
                    attempts: 2,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn classification_table() {
        let retry = |status: u16, body: &str| match classify(status, body.as_bytes(), None) {
            Err(Unsent::Retry { cause, .. }) => Some(cause),
            _ => None,
        };
        let done = |status: u16, body: &str| match classify(status, body.as_bytes(), None) {
            Ok(accepted) => Some(Ok(accepted)),
            Err(Unsent::Final(error)) => Some(Err(error)),
            Err(Unsent::Retry { .. }) => None,
        };
        assert!(retry(429, "").is_some());
        assert!(retry(500, "<html>").is_some());
        assert!(retry(503, r#"{"code": 20503}"#).is_some());
        assert!(retry(400, r#"{"code": 21611}"#).is_some());
        assert!(retry(400, r#"{"code": 20429}"#).is_some());
        assert_eq!(
            done(400, r#"{"code": 21610, "message": "x", "status": 400}"#),
            Some(Err(SendError::OptedOut))
        );
        for code in [21211, 21612, 21614, 21408, 21617] {
            let body =
                format!(r#"{{"code": {code}, "message": "m", "more_info": "u", "status": 400}}"#);
            assert_eq!(
                done(400, &body),
                Some(Err(SendError::Permanent {
                    status: 400,
                    code: Some(code)
                })),
                "{code}"
            );
        }
        assert_eq!(
            done(404, "not json"),
            Some(Err(SendError::Permanent {
                status: 404,
                code: None
            }))
        );
        assert_eq!(
            done(201, r#"{"status": "queued"}"#),
            Some(Err(SendError::InvalidResponse { status: 201 }))
        );
        assert_eq!(
            done(201, r#"{"sid": "SMx", "status": "accepted"}"#),
            Some(Ok(Accepted {
                sid: "SMx".to_owned(),
                status: Some(MessageStatus::Accepted)
            }))
        );
    }

    #[test]
    fn debug_redacts() {
        let sms = message("very private words");
        let debug = format!("{sms:?}");
        assert!(
            !debug.contains("4158675309") && !debug.contains("private"),
            "{debug}"
        );
        let config = TwilioConfig {
            account_sid: ACCOUNT.to_owned(),
            auth_token: Secret::new(TOKEN),
            sender: Sender::From(FROM.to_owned()),
            api_base: "https://api.twilio.com".to_owned(),
        };
        let debug = format!("{:?}", TwilioClient::new(&config).unwrap());
        assert!(
            !debug.contains(TOKEN) && !debug.contains("5550006"),
            "{debug}"
        );
    }
}
