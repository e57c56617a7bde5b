//! A Twilio double, and helpers for tests that play Twilio toward the gateway.
//!
//! [`TwilioDouble`] serves the Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`)
//! on a loopback port: it checks Basic auth and the form the way Twilio does, records every
//! accepted message in order, answers with Twilio-shaped JSON, can be scripted to fail the
//! next sends ([`Failure`]), and can answer slowly, as Twilio's API does
//! ([`TwilioDouble::answer_within`]). The test numbers Twilio documents behave as they do with test
//! credentials: `To` +15005550001 is invalid (21211), +15005550004 has opted out (21610).
//!
//! [`InboundSmsWebhook`] and [`StatusCallbackWebhook`] build the form posts Twilio sends,
//! signed with `X-Twilio-Signature`. The signing here is written independently of the
//! gateway's, so that a mistake in one is caught by the other.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The longest body Twilio accepts.
const MAX_BODY_CHARS: usize = 1600;

/// A scripted failure for the next send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429 with Twilio error 20429, and `Retry-After` in seconds if given.
    RateLimited {
        /// The `Retry-After` header's value, in seconds.
        retry_after: Option<u64>,
    },
    /// This HTTP status with a Twilio-shaped error body without a code (e.g. 500, 503).
    Status(u16),
    /// A Twilio error: this code and HTTP status (e.g. 21610 with 400).
    Twilio {
        /// The HTTP status.
        status: u16,
        /// Twilio's error code.
        code: u32,
    },
    /// No answer for this long (then a 500), for client time-outs.
    Hang(Duration),
    /// The message is accepted and recorded, but the answer comes only after this long: the
    /// client times out not knowing that Twilio took it.
    AcceptSlowly(Duration),
}

impl Failure {
    /// Twilio error `code` with HTTP 400, as Twilio sends its validation errors.
    pub fn twilio(code: u32) -> Self {
        Failure::Twilio { status: 400, code }
    }
}

/// A message the double accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The SID the double gave it.
    pub sid: String,
    /// `To`.
    pub to: String,
    /// `From`, if sent from a number.
    pub from: Option<String>,
    /// `MessagingServiceSid`, if sent through a messaging service.
    pub messaging_service_sid: Option<String>,
    /// `Body`.
    pub body: String,
    /// `StatusCallback`, if given.
    pub status_callback: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    failures: VecDeque<Failure>,
    messages: Vec<SentMessage>,
    /// When each message was created, as Twilio's `date_created` gives it.
    created: Vec<chrono::DateTime<chrono::Utc>>,
    requests: usize,
    list_requests: usize,
    /// Every answer comes after a delay drawn from this range (empty: at once).
    answer_delay: Range<Duration>,
}

impl State {
    /// The delay before the next answer.
    fn answer_delay(&self) -> Duration {
        let Range { start, end } = self.answer_delay;
        if end <= start {
            return start;
        }
        let spread = u64::try_from((end - start).as_micros()).unwrap_or(u64::MAX);
        start + Duration::from_micros(fastrand::u64(0..spread))
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running Twilio double on a loopback port.
#[derive(Debug)]
pub struct TwilioDouble {
    server: MockServer,
    state: Shared,
    account_sid: String,
    auth_token: String,
}

impl TwilioDouble {
    /// Starts the double for the account `account_sid`, authenticating with `auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> Self {
        let server = MockServer::start().await;
        let state = Shared::default();
        let endpoint = || MessagesEndpoint {
            state: state.clone(),
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
        };
        Mock::given(method("POST"))
            .and(path_regex(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"))
            .respond_with(endpoint())
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path_regex(r"^/2010-04-01/Accounts/[^/]+/Messages\.json$"))
            .respond_with(MessageList(endpoint()))
            .mount(&server)
            .await;
        TwilioDouble {
            server,
            state,
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
        }
    }

    /// The API base URL to configure the client with (`TWILIO_API_BASE`).
    pub fn base_url(&self) -> String {
        self.server.uri()
    }

    /// The account SID the double serves.
    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// The auth token the double expects, which also signs webhooks.
    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }

    /// Makes the next send fail with `failure`; failures queue in order.
    pub fn push_failure(&self, failure: Failure) -> &Self {
        lock(&self.state).failures.push_back(failure);
        self
    }

    /// Answers every request after a delay drawn anew from `delay` each time, as Twilio's API
    /// takes 100–300 ms: a message is recorded (and listed) when its request arrives, and its
    /// sender hears so only after the delay, so that a test can act between the two.
    pub fn answer_within(&self, delay: Range<Duration>) -> &Self {
        lock(&self.state).answer_delay = delay;
        self
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<SentMessage> {
        lock(&self.state).messages.clone()
    }

    /// How many send requests arrived, refused ones included.
    pub fn request_count(&self) -> usize {
        lock(&self.state).requests
    }

    /// How many message list requests arrived.
    pub fn list_count(&self) -> usize {
        lock(&self.state).list_requests
    }

    /// Waits until at least `count` messages were accepted and returns them all; panics after
    /// `timeout`, listing what did arrive.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<SentMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} message(s) at the Twilio double within {timeout:?}, got {}: \
                 {messages:#?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An inbound SMS webhook for this account (sign it with [`TwilioDouble::auth_token`]).
    pub fn inbound_sms(&self, from: &str, to: &str, body: &str) -> InboundSmsWebhook {
        InboundSmsWebhook::new(&self.account_sid, from, to, body)
    }

    /// A status callback webhook for `message` (sign it with [`TwilioDouble::auth_token`]).
    pub fn status_callback(&self, message: &SentMessage, status: &str) -> StatusCallbackWebhook {
        StatusCallbackWebhook::new(&self.account_sid, &message.sid, status)
            .with_param("To", &message.to)
            .with_param("From", message.from.as_deref().unwrap_or_default())
    }
}

struct MessagesEndpoint {
    state: Shared,
    account_sid: String,
    auth_token: String,
}

impl Respond for MessagesEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = lock(&self.state);
        state.requests += 1;
        // A scripted slow answer keeps its own delay.
        let scripted_delay = matches!(
            state.failures.front(),
            Some(Failure::Hang(_) | Failure::AcceptSlowly(_))
        );
        let delay = state.answer_delay();
        let answer = self.answer(&mut state, request);
        if scripted_delay {
            answer
        } else {
            answer.set_delay(delay)
        }
    }
}

impl MessagesEndpoint {
    /// The answer to a send, recording the message if it is accepted.
    fn answer(&self, state: &mut State, request: &Request) -> ResponseTemplate {
        if !self.authorized(request) {
            return twilio_error(401, 20003, "Authenticate");
        }
        let path_account = request.url.path().split('/').nth(3).unwrap_or_default();
        if path_account != self.account_sid {
            return twilio_error(404, 20404, "The requested resource was not found");
        }
        let accept_after = match state.failures.pop_front() {
            Some(Failure::AcceptSlowly(delay)) => Some(delay),
            Some(failure) => return refusal(&failure),
            None => None,
        };
        let form: BTreeMap<String, String> = form_urlencoded::parse(&request.body)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let field = |name: &str| form.get(name).filter(|value| !value.is_empty()).cloned();
        let Some(to) = field("To") else {
            return twilio_error(400, 21604, "A 'To' phone number is required.");
        };
        let from = field("From");
        let messaging_service_sid = field("MessagingServiceSid");
        if from.is_none() && messaging_service_sid.is_none() {
            return twilio_error(400, 21603, "A 'From' phone number is required.");
        }
        let Some(body) = field("Body") else {
            return twilio_error(400, 21602, "Message body is required.");
        };
        if body.chars().count() > MAX_BODY_CHARS {
            return twilio_error(
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit.",
            );
        }
        match to.as_str() {
            "+15005550001" => return twilio_error(400, 21211, "Invalid 'To' Phone Number"),
            "+15005550004" => {
                return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient");
            }
            _ => {}
        }
        let message = SentMessage {
            sid: new_sid("SM"),
            to,
            from,
            messaging_service_sid,
            body,
            status_callback: field("StatusCallback"),
        };
        let created = chrono::Utc::now();
        let resource = self.resource(&message, created);
        state.messages.push(message);
        state.created.push(created);
        let answer = ResponseTemplate::new(201).set_body_json(resource);
        match accept_after {
            Some(delay) => answer.set_delay(delay),
            None => answer,
        }
    }
}

/// `GET …/Messages.json`: the account's messages, newest first, filtered by `To` and `From`,
/// in pages of `PageSize` (default 50) numbered by `Page`, as Twilio lists them.
struct MessageList(MessagesEndpoint);

impl Respond for MessageList {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let endpoint = &self.0;
        let mut state = lock(&endpoint.state);
        state.list_requests += 1;
        let delay = state.answer_delay();
        endpoint.list(&state, request).set_delay(delay)
    }
}

impl MessagesEndpoint {
    /// The answer to a list request: the messages recorded by now.
    fn list(&self, state: &State, request: &Request) -> ResponseTemplate {
        if !self.authorized(request) {
            return twilio_error(401, 20003, "Authenticate");
        }
        let query: BTreeMap<String, String> = request
            .url
            .query_pairs()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let matches = |message: &SentMessage| {
            query.get("To").is_none_or(|to| *to == message.to)
                && query
                    .get("From")
                    .is_none_or(|from| message.from.as_ref() == Some(from))
        };
        let page_size: usize = query
            .get("PageSize")
            .and_then(|size| size.parse().ok())
            .unwrap_or(50)
            .clamp(1, 1000);
        let page: usize = query
            .get("Page")
            .and_then(|page| page.parse().ok())
            .unwrap_or(0);
        let listed: Vec<Value> = state
            .messages
            .iter()
            .zip(&state.created)
            .rev()
            .filter(|(message, _)| matches(message))
            .skip(page * page_size)
            .take(page_size + 1)
            .map(|(message, created)| self.resource(message, *created))
            .collect();
        let more = listed.len() > page_size;
        let path = request.url.path();
        let page_uri = |page: usize| {
            let mut uri = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in &query {
                if name != "Page" && name != "PageToken" {
                    uri.append_pair(name, value);
                }
            }
            uri.append_pair("Page", &page.to_string());
            format!("{path}?{}", uri.finish())
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "messages": listed.into_iter().take(page_size).collect::<Vec<_>>(),
            "page": page,
            "page_size": page_size,
            "uri": page_uri(page),
            "first_page_uri": page_uri(0),
            "previous_page_uri": page.checked_sub(1).map(page_uri),
            "next_page_uri": more.then(|| page_uri(page + 1)),
            "start": page * page_size,
            "end": page * page_size + page_size.saturating_sub(1),
        }))
    }

    fn authorized(&self, request: &Request) -> bool {
        let expected = format!("{}:{}", self.account_sid, self.auth_token);
        request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| BASE64.decode(encoded.trim()).ok())
            .is_some_and(|decoded| decoded == expected.as_bytes())
    }

    /// The message resource Twilio answers a successful create with.
    fn resource(&self, message: &SentMessage, created: chrono::DateTime<chrono::Utc>) -> Value {
        // Through a messaging service without a number, Twilio answers `accepted`: the service
        // picks the sender later.
        let status = if message.from.is_none() {
            "accepted"
        } else {
            "queued"
        };
        let uri = format!(
            "/2010-04-01/Accounts/{}/Messages/{}",
            self.account_sid, message.sid
        );
        json!({
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": message.body,
            "date_created": created.to_rfc2822(),
            "date_sent": null,
            "date_updated": created.to_rfc2822(),
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": message.from,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": message.sid,
            "status": status,
            "subresource_uris": { "media": format!("{uri}/Media.json") },
            "to": message.to,
            "uri": format!("{uri}.json"),
        })
    }
}

/// The answer to a send that `failure` refuses.
fn refusal(failure: &Failure) -> ResponseTemplate {
    match failure {
        Failure::RateLimited { retry_after } => {
            let template = twilio_error(429, 20429, "Too Many Requests");
            match retry_after {
                Some(seconds) => {
                    template.insert_header("retry-after", seconds.to_string().as_str())
                }
                None => template,
            }
        }
        Failure::Status(status) => ResponseTemplate::new(*status).set_body_json(json!({
            "code": null,
            "message": format!("scripted status {status}"),
            "more_info": null,
            "status": status,
        })),
        Failure::Twilio { status, code } => {
            twilio_error(*status, *code, &format!("scripted Twilio error {code}"))
        }
        Failure::Hang(delay) => twilio_error(500, 20500, "Internal Server Error").set_delay(*delay),
        // Not a refusal: a slow 201, which `respond` builds.
        Failure::AcceptSlowly(delay) => ResponseTemplate::new(201).set_delay(*delay),
    }
}

/// A Twilio REST error: `{code, message, more_info, status}`.
fn twilio_error(status: u16, code: u32, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }))
}

/// A Twilio SID: the two-letter prefix and 32 lower-case hex digits.
pub fn new_sid(prefix: &str) -> String {
    let mut sid = prefix.to_owned();
    for _ in 0..32 {
        sid.push(char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'));
    }
    sid
}

/// The `X-Twilio-Signature` Twilio sends for a form POST of `params` to `url`.
///
/// Base64 of HMAC-SHA1 keyed with the auth token, over the URL followed by each name and value
/// with names in order and a repeated name's values in order.
pub fn signature(url: &str, params: &[(String, String)], auth_token: &str) -> String {
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in params {
        by_name.entry(name).or_default().push(value);
    }
    let mut data = String::from(url);
    for (name, mut values) in by_name {
        values.sort();
        for value in values {
            data.push_str(name);
            data.push_str(value);
        }
    }
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(data.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// A webhook POST as Twilio sends it, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The URL Twilio calls (and signs).
    pub url: String,
    /// The form parameters, in the order sent.
    pub params: Vec<(String, String)>,
    /// The form-encoded body.
    pub body: String,
    /// The `X-Twilio-Signature` header's value.
    pub signature: String,
}

impl SignedRequest {
    fn new(url: &str, params: Vec<(String, String)>, auth_token: &str) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        SignedRequest {
            signature: signature(url, &params, auth_token),
            url: url.to_owned(),
            params,
            body,
        }
    }

    /// The path and query of [`SignedRequest::url`] (`/` when it has no path), for requests
    /// sent to a router directly.
    pub fn path_and_query(&self) -> String {
        let after_scheme = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest);
        match after_scheme.find(['/', '?']) {
            Some(start) if after_scheme[start..].starts_with('/') => {
                after_scheme[start..].to_owned()
            }
            Some(start) => format!("/{}", &after_scheme[start..]),
            None => "/".to_owned(),
        }
    }

    /// The request with the origin-form target ([`SignedRequest::path_and_query`]) and the
    /// headers Twilio sends, for `tower::ServiceExt::oneshot` against a router.
    pub fn to_http_request(&self) -> http::Request<String> {
        let host = self
            .url
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        let target = self.path_and_query();
        http::Request::post(target)
            .header(http::header::HOST, host)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .header(http::header::USER_AGENT, "TwilioProxy/1.1")
            .header("X-Twilio-Signature", &self.signature)
            .body(self.body.clone())
            .expect("a webhook request from a valid URL is a valid request")
    }
}

/// The form parameters of a webhook, with builders for variations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Params(Vec<(String, String)>);

impl Params {
    fn set(&mut self, name: &str, value: &str) {
        self.0.retain(|(key, _)| key != name);
        self.0.push((name.to_owned(), value.to_owned()));
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An inbound SMS webhook, with the parameters Twilio sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSmsWebhook {
    params: Params,
    media: usize,
}

impl InboundSmsWebhook {
    /// A text message from `from` to `to` on `account_sid`, with a fresh `MessageSid`.
    pub fn new(account_sid: &str, from: &str, to: &str, body: &str) -> Self {
        let sid = new_sid("SM");
        let params = [
            ("ToCountry", "US"),
            ("ToState", "CA"),
            ("SmsMessageSid", sid.as_str()),
            ("NumMedia", "0"),
            ("ToCity", ""),
            ("FromZip", ""),
            ("SmsSid", sid.as_str()),
            ("FromState", "CA"),
            ("SmsStatus", "received"),
            ("FromCity", ""),
            ("Body", body),
            ("FromCountry", "US"),
            ("To", to),
            ("ToZip", ""),
            ("NumSegments", "1"),
            ("MessageSid", sid.as_str()),
            ("AccountSid", account_sid),
            ("From", from),
            ("ApiVersion", "2010-04-01"),
        ];
        InboundSmsWebhook {
            params: Params(
                params
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect(),
            ),
            media: 0,
        }
    }

    /// The message's SID.
    pub fn message_sid(&self) -> &str {
        self.params.get("MessageSid").unwrap_or_default()
    }

    /// Uses `sid` as the message's SID (to replay a message Twilio retried).
    pub fn with_message_sid(mut self, sid: &str) -> Self {
        for name in ["MessageSid", "SmsSid", "SmsMessageSid"] {
            self.params.set(name, sid);
        }
        self
    }

    /// Adds a media item, making the message an MMS (`MM…` SID).
    pub fn with_media(mut self, url: &str, content_type: &str) -> Self {
        if self.media == 0 {
            let sid = format!(
                "MM{}",
                &self.message_sid()[2.min(self.message_sid().len())..]
            );
            self = self.with_message_sid(&sid);
        }
        self.params.set(&format!("MediaUrl{}", self.media), url);
        self.params
            .set(&format!("MediaContentType{}", self.media), content_type);
        self.media += 1;
        self.params.set("NumMedia", &self.media.to_string());
        self
    }

    /// Sets `name` to `value`, replacing it if present (also for fields Twilio may add).
    pub fn with_param(mut self, name: &str, value: &str) -> Self {
        self.params.set(name, value);
        self
    }

    /// Removes `name` (for malformed webhooks).
    pub fn without_param(mut self, name: &str) -> Self {
        self.params.0.retain(|(key, _)| key != name);
        self
    }

    /// The webhook POSTed to `url`, signed with `auth_token`.
    pub fn sign(&self, url: &str, auth_token: &str) -> SignedRequest {
        SignedRequest::new(url, self.params.0.clone(), auth_token)
    }
}

/// A message status callback, with the parameters Twilio sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCallbackWebhook {
    params: Params,
}

impl StatusCallbackWebhook {
    /// `message_sid` reached `status` (`sent`, `delivered`, `failed`, …).
    pub fn new(account_sid: &str, message_sid: &str, status: &str) -> Self {
        let params = [
            ("SmsSid", message_sid),
            ("SmsStatus", status),
            ("MessageStatus", status),
            ("MessageSid", message_sid),
            ("AccountSid", account_sid),
            ("ApiVersion", "2010-04-01"),
        ];
        StatusCallbackWebhook {
            params: Params(
                params
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect(),
            ),
        }
    }

    /// Adds Twilio's `ErrorCode` (for `failed` and `undelivered`).
    pub fn with_error_code(self, code: u32) -> Self {
        self.with_param("ErrorCode", &code.to_string())
    }

    /// Sets `name` to `value`, replacing it if present.
    pub fn with_param(mut self, name: &str, value: &str) -> Self {
        self.params.set(name, value);
        self
    }

    /// The callback POSTed to `url`, signed with `auth_token`.
    pub fn sign(&self, url: &str, auth_token: &str) -> SignedRequest {
        SignedRequest::new(url, self.params.0.clone(), auth_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn signature_matches_twilios_published_example() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            signature(
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params,
                "12345"
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn inbound_webhook_is_signed_over_its_body() {
        let webhook = InboundSmsWebhook::new("AC1", "+14158675309", "+15005550006", "Hi & bye +1")
            .with_media("https://api.twilio.com/m0", "image/png");
        let signed = webhook.sign("https://soul.example/twilio/sms?x=1", "token");
        assert!(webhook.message_sid().starts_with("MM"));
        let decoded: Vec<(String, String)> = form_urlencoded::parse(signed.body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(decoded, signed.params);
        assert_eq!(signed.signature, signature(&signed.url, &decoded, "token"));
        assert_eq!(signed.path_and_query(), "/twilio/sms?x=1");
        let request = signed.to_http_request();
        assert_eq!(request.uri(), "/twilio/sms?x=1");
        assert_eq!(request.headers()["host"], "soul.example");
        assert_eq!(
            request.headers()["x-twilio-signature"],
            signed.signature.as_str()
        );
    }

    #[test]
    fn path_and_query_of_bare_hosts() {
        let signed =
            StatusCallbackWebhook::new("AC1", "SM1", "sent").sign("https://h.example", "t");
        assert_eq!(signed.path_and_query(), "/");
        let signed =
            StatusCallbackWebhook::new("AC1", "SM1", "sent").sign("https://h.example?a=b", "t");
        assert_eq!(signed.path_and_query(), "/?a=b");
        assert_eq!(signed.to_http_request().uri(), "/?a=b");
    }

    #[test]
    fn sids_have_twilios_shape() {
        let sid = new_sid("SM");
        assert_eq!(sid.len(), 34);
        assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
