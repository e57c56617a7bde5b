//! The HTTP surface: Twilio's webhooks, health, readiness and metrics.
//!
//! Webhook handlers take the raw body so that the signature is checked over exactly the
//! parameters Twilio sent, against the configured public URL plus the request's path and query
//! (never the `Host` header, which a TLS-terminating proxy rewrites). A missing signature is 401,
//! a wrong one 403, and nothing is stored for either; a body over 64 KiB is 413 before it is
//! read whole; a webhook missing a required field is 400. A request not answered within
//! `REQUEST_TIMEOUT` of its headers (its body included) is 408.
//!
//! `/healthz` is open to anyone, for liveness probes. `/metrics` and `/readyz` are open too
//! unless `METRICS_TOKEN` is set; then they need `Authorization: Bearer <token>`, compared in
//! constant time, and are 401 without it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest as _, Sha256};
use soul_persistence::{Address, DeliveryStatus, DeliveryUpdate, OutboundRef};
use subtle::ConstantTimeEq as _;
use tower_http::timeout::TimeoutLayer;

use crate::app::App;
use crate::twilio::client::OPTED_OUT;
use crate::twilio::signature::{self, SignatureError};
use crate::twilio::webhook::{FormParams, InboundSms, MessageStatus, StatusCallback};

/// The largest webhook body accepted; Twilio's are a few KiB.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The empty TwiML answer: no reply from Twilio (replies go through the REST API).
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

/// How long storing an inbound message may take before the webhook gives up with 503: Twilio
/// waits 15 s for an answer, and an answer in time lets it go on to its fallback URL. A message
/// cut off part-way was stored or not; Twilio's retry of it is recognised by its MessageSid.
const INBOUND_DEADLINE: Duration = Duration::from_secs(10);

/// How long readiness waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The gateway's routes.
pub(crate) fn router(app: Arc<App>) -> Router {
    let request_timeout = app.config.http.request_timeout;
    Router::new()
        .route("/twilio/sms", post(inbound))
        .route("/twilio/status", post(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A client that sends headers and then a body slowly, or never, would otherwise hold its
        // connection (and a handler) for as long as it likes: the body is read inside the handler.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(app)
}

/// `None` when the request may read the operations endpoints: no `METRICS_TOKEN` is set, or
/// it carries `Authorization: Bearer <token>`; else the 401 to answer. The comparison is of
/// the two values' SHA-256 digests in constant time, so that neither the token's bytes nor its
/// length show in the time taken.
fn unauthorized(app: &App, headers: &HeaderMap) -> Option<Response> {
    let token = app.config.http.metrics_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, given)| given.trim());
    let matches = Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(token.expose()));
    if bool::from(matches) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this endpoint needs Authorization: Bearer with the METRICS_TOKEN\n",
        )
            .into_response(),
    )
}

/// Checks the request's signature; the parameters when it is Twilio's.
fn verified(
    app: &App,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<FormParams, SignatureError> {
    let params = FormParams::parse(body);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = signature::request_url(&app.public_url, path);
    headers
        .get(signature::HEADER)
        .ok_or(SignatureError::Missing)
        .and_then(|given| given.to_str().map_err(|_| SignatureError::Malformed))
        .and_then(|given| {
            signature::validate(&url, params.pairs(), app.auth_token.expose(), given)
        })?;
    Ok(params)
}

/// The answer to a webhook whose signature was refused: 401 without one, 403 for a wrong one.
fn refused(uri: &Uri, error: &SignatureError) -> Response {
    tracing::warn!(%error, path = uri.path(), "refused a webhook");
    let status = match error {
        SignatureError::Missing => StatusCode::UNAUTHORIZED,
        SignatureError::Malformed | SignatureError::Mismatch => StatusCode::FORBIDDEN,
    };
    (status, format!("{error}\n")).into_response()
}

fn twiml() -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
}

/// `POST /twilio/sms`: an inbound message, acknowledged once stored.
async fn inbound(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified(&app, &uri, &headers, &body) {
        Ok(params) => params,
        Err(error) => {
            app.metrics.inbound.inc("rejected");
            return refused(&uri, &error);
        }
    };
    let sms = match InboundSms::from_params(&params) {
        Ok(sms) => sms,
        Err(error) => {
            app.metrics.inbound.inc("rejected");
            tracing::warn!(%error, "refused a malformed inbound webhook");
            return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
        }
    };
    let route = app
        .config
        .routing
        .route(&sms.from, &sms.to, sms.messaging_service_sid.as_deref());
    let Some(route) = route else {
        // Refused, not dropped: Twilio shows the refusal in its console (error 11200), and the
        // count and the log line say which gateway refused what.
        app.metrics.inbound.inc("unrouted");
        tracing::warn!(
            message_sid = sms.message_sid,
            "refused a message to a number on no line (LINES), with no SOUL for other numbers"
        );
        return (
            StatusCode::NOT_FOUND,
            "no soul answers the number texted: it is on no line (LINES), and SOUL is not set\n",
        )
            .into_response();
    };
    let message_sid = sms.message_sid.clone();
    let error = match tokio::time::timeout(INBOUND_DEADLINE, app.receive(sms, route)).await {
        Ok(Ok(outcome)) => {
            app.metrics.inbound.inc(outcome.label());
            tracing::info!(message_sid, outcome = outcome.label(), "inbound message");
            return twiml();
        }
        Ok(Err(error)) => error.kind(),
        Err(_) => "the store did not answer in time",
    };
    // Not acknowledged: Twilio then tries its fallback URL, and nothing was promised.
    app.metrics.inbound.inc("error");
    tracing::error!(message_sid, error, "could not store an inbound message");
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// The stored delivery status a Twilio message status maps to (the store keeps fewer steps).
fn delivery_status(status: MessageStatus) -> DeliveryStatus {
    match status {
        MessageStatus::Accepted
        | MessageStatus::Scheduled
        | MessageStatus::Queued
        | MessageStatus::Sending => DeliveryStatus::Accepted,
        MessageStatus::Sent => DeliveryStatus::Sent,
        MessageStatus::Delivered | MessageStatus::Read => DeliveryStatus::Delivered,
        MessageStatus::Undelivered => DeliveryStatus::Undelivered,
        MessageStatus::Failed | MessageStatus::Canceled => DeliveryStatus::Failed,
    }
}

/// `POST /twilio/status`: a delivery status callback, recorded only if it moves forward.
async fn status(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified(&app, &uri, &headers, &body) {
        Ok(params) => params,
        Err(error) => return refused(&uri, &error),
    };
    let callback = match StatusCallback::from_params(&params) {
        Ok(callback) => callback,
        Err(error) => {
            tracing::warn!(%error, "refused a malformed status callback");
            return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
        }
    };
    let status = delivery_status(callback.status);
    app.metrics.delivery_status.inc(status.as_str());
    let now = app.clock.now();
    if callback.error_code == Some(OPTED_OUT)
        && let Some(to) = params.get("To").filter(|to| !to.is_empty())
        && let Err(error) = app.store.set_opt_out(&Address::new(to), true, now).await
    {
        tracing::warn!(error = error.kind(), "could not record an opt-out");
    }
    let update = DeliveryUpdate {
        target: OutboundRef::ProviderId(callback.message_sid.clone()),
        status,
        provider_id: None,
        error: callback
            .error_code
            .map(|code| format!("twilio error {code}")),
        at: now,
    };
    match app.store.update_delivery(&update).await {
        Ok(moved) => {
            tracing::info!(
                message_sid = callback.message_sid,
                status = callback.status.as_str(),
                recorded = moved,
                "delivery status"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => {
            tracing::warn!(error = error.kind(), "could not record a delivery status");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// `GET /healthz`: the process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the store answers.
async fn readyz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&app, &headers) {
        return refused;
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store_reachable()).await {
        Ok(true) => "ready\n".into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response(),
    }
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&app, &headers) {
        return refused;
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::Request;
    use soul_testkit::openai::OpenAiDouble;
    use soul_testkit::twilio::{SignedRequest, TwilioDouble, new_sid};
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::{Config, Level};

    /// The public URL has a path prefix a proxy strips: the router sees `/twilio/sms`.
    const PUBLIC_URL: &str = "https://soul.example/gateway";

    struct Fixture {
        _dir: tempfile::TempDir,
        _model: OpenAiDouble,
        twilio: TwilioDouble,
        router: Router,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::TempDir::new().unwrap();
        let model = OpenAiDouble::start().await;
        let twilio = TwilioDouble::start(&new_sid("AC"), "router-token").await;
        let values: BTreeMap<String, String> = [
            ("PUBLIC_URL", PUBLIC_URL.to_owned()),
            ("TWILIO_ACCOUNT_SID", twilio.account_sid().to_owned()),
            ("TWILIO_AUTH_TOKEN", twilio.auth_token().to_owned()),
            ("TWILIO_FROM", "+15005550006".to_owned()),
            ("TWILIO_API_BASE", twilio.base_url()),
            ("OPENAI_BASE_URL", model.base_url()),
            ("OPENAI_API_KEY", "key".to_owned()),
            ("SOUL", "pip".to_owned()),
            (
                "DATABASE_URL",
                format!("sqlite://{}/soul.db", dir.path().display()),
            ),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let config = Config::from_values(&values, Level::Serve).unwrap();
        let app = App::build(config).await.unwrap();
        Fixture {
            _dir: dir,
            _model: model,
            twilio,
            router: router(app),
        }
    }

    /// `signed` as it reaches the router: at `target`, from a proxy with its own `Host`.
    fn request(target: &str, signed: &SignedRequest) -> Request<Body> {
        Request::post(target)
            .header(header::HOST, "10.0.0.7:8080")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(signature::HEADER, &signed.signature)
            .body(Body::from(signed.body.clone()))
            .unwrap()
    }

    async fn status_of(router: &Router, request: Request<Body>) -> (StatusCode, String) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn signatures_are_checked_against_the_configured_url_not_the_host() {
        let fx = fixture().await;
        // A HELP needs no model: the handler's whole path runs without scripting one.
        let help = fx
            .twilio
            .inbound_sms("+14155550301", "+15005550006", "HELP");
        let signed = help.sign(
            &format!("{PUBLIC_URL}/twilio/sms?tenant=a"),
            fx.twilio.auth_token(),
        );
        let (status, body) = status_of(&fx.router, request("/twilio/sms?tenant=a", &signed)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, EMPTY_TWIML);

        // Signed for the URL the proxy saw: not what Twilio called.
        let internal = help.sign("http://10.0.0.7:8080/twilio/sms", fx.twilio.auth_token());
        let (status, _) = status_of(&fx.router, request("/twilio/sms", &internal)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // The query string is signed too.
        let (status, _) = status_of(&fx.router, request("/twilio/sms?tenant=b", &signed)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn oversize_and_incomplete_webhooks_are_refused() {
        let fx = fixture().await;
        let url = format!("{PUBLIC_URL}/twilio/sms");
        let huge = "x".repeat(MAX_BODY_BYTES);
        let oversize = fx
            .twilio
            .inbound_sms("+14155550302", "+15005550006", &huge)
            .sign(&url, fx.twilio.auth_token());
        let (status, _) = status_of(&fx.router, request("/twilio/sms", &oversize)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        let no_body = fx
            .twilio
            .inbound_sms("+14155550302", "+15005550006", "hi")
            .without_param("Body")
            .sign(&url, fx.twilio.auth_token());
        let (status, body) = status_of(&fx.router, request("/twilio/sms", &no_body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("Body"), "{body}");

        let mut unsigned = request("/twilio/status", &no_body);
        unsigned.headers_mut().remove(signature::HEADER);
        let (status, _) = status_of(&fx.router, unsigned).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn twilio_statuses_map_forward() {
        assert_eq!(
            delivery_status(MessageStatus::Queued),
            DeliveryStatus::Accepted
        );
        assert_eq!(delivery_status(MessageStatus::Sent), DeliveryStatus::Sent);
        assert_eq!(
            delivery_status(MessageStatus::Read),
            DeliveryStatus::Delivered
        );
        assert_eq!(
            delivery_status(MessageStatus::Canceled),
            DeliveryStatus::Failed
        );
        assert_eq!(
            delivery_status(MessageStatus::Undelivered),
            DeliveryStatus::Undelivered
        );
    }
}
