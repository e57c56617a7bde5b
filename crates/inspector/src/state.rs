//! What every handler shares, the login every protected route requires, and how a failure is
//! answered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use soul_persistence::StoreError;

use crate::Inspector;
use crate::auth::{self, Access, Keys, Login};
use crate::html;
use crate::limit::Limiter;

/// The inspector and its keys.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inspector: Inspector,
    pub(crate) keys: Keys,
    /// The failed logins counted.
    pub(crate) logins: Limiter,
}

impl Shared {
    pub(crate) fn new(inspector: Inspector) -> Self {
        Shared {
            keys: Keys::new(
                &inspector.access,
                inspector.lifetime,
                inspector.secure_cookie,
            ),
            logins: Limiter::new(inspector.login_limit),
            inspector,
        }
    }

    /// The navigation bar for `csrf`'s session: a logout unless access is open.
    pub(crate) fn nav<'a>(&self, csrf: &'a str) -> html::Nav<'a> {
        html::Nav {
            logout: (!matches!(self.inspector.access, Access::Open)).then_some(csrf),
            chat: self.inspector.chat.is_some(),
        }
    }
}

/// Who a protected request comes from.
#[derive(Debug, Clone)]
pub(crate) struct Authed {
    /// The login.
    pub(crate) login: Login,
    /// The token came as `Authorization: Bearer` (a script, not a browser): no cookie is sent
    /// with it by a third party's page, so actions need no CSRF token.
    pub(crate) bearer: bool,
}

impl Authed {
    /// Refuses an action whose CSRF token is not the session's (unless by bearer token).
    pub(crate) fn check_csrf(&self, keys: &Keys, offered: Option<&str>) -> Result<(), Failure> {
        if self.bearer || offered.is_some_and(|csrf| keys.csrf_ok(&self.login, csrf)) {
            Ok(())
        } else {
            Err(Failure::Csrf)
        }
    }
}

/// Lets a request through with its [`Authed`] when it carries a valid session cookie (or, to
/// the API, the bearer token); with open access a browser without one gets a new session.
/// Otherwise pages redirect to the login and the API answers 401.
pub(crate) async fn require_login(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = shared.inspector.clock.now();
    let headers = request.headers();
    let from_cookie = cookie_login(&shared.keys, headers, now);
    // A bearer token is a login attempt as much as the form's: the same limit on wrong ones.
    let bearer = match bearer_token(headers) {
        None => None,
        Some(token) => {
            let client = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(address)| address.ip());
            if let Err(wait) = shared.logins.check(client, now) {
                tracing::warn!("inspector: a bearer token refused, too many wrong tokens");
                let seconds = wait.num_seconds().max(1);
                let mut response =
                    (StatusCode::TOO_MANY_REQUESTS, "too many wrong tokens\n").into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                return response;
            }
            if shared.inspector.access.accepts(token) {
                Some(Authed {
                    login: Login {
                        id: auth::API_LOGIN.to_owned(),
                        expires_at: now,
                    },
                    bearer: true,
                })
            } else {
                shared.logins.failed(client, now);
                tracing::warn!("inspector: a request with a wrong bearer token");
                None
            }
        }
    };
    let authed = from_cookie
        .map(|login| Authed {
            login,
            bearer: false,
        })
        .or(bearer);
    if let Some(authed) = authed {
        request.extensions_mut().insert(authed);
        return next.run(request).await;
    }
    if matches!(shared.inspector.access, Access::Open) {
        let login = shared.keys.login(now);
        let cookie = shared.keys.set_cookie(&login);
        request.extensions_mut().insert(Authed {
            login,
            bearer: false,
        });
        let mut response = next.run(request).await;
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        return response;
    }
    if request.uri().path().starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            "log in, or send the token as Authorization: Bearer\n",
        )
            .into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

fn cookie_login(
    keys: &Keys,
    headers: &HeaderMap,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Login> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(auth::cookie_in)
        .find_map(|value| keys.verify(value, now))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Why a request failed, as the page or the API answers it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// No such conversation.
    #[error("there is no such conversation (it may have been erased)")]
    NotFound,
    /// An action without the session's CSRF token.
    #[error("this action needs the form's CSRF token: reload the page and try again")]
    Csrf,
    /// A confirmation that did not match.
    #[error("{0}")]
    Refused(String),
    /// Something the request names is not there (a turn to rewind to or re-run, re-running on
    /// an inspector without a turn driver).
    #[error("{0}")]
    Missing(String),
    /// The person's turn is running: erasure, rewinding and re-running wait.
    #[error("a turn of this person is running; nothing was done, try again in a moment")]
    TurnRunning,
    /// The conversation changed while the action read it.
    #[error("{0}")]
    Changed(String),
    /// The store failed.
    #[error("the store could not answer ({})", .0.kind())]
    Store(#[from] StoreError),
}

impl Failure {
    /// The status it is answered with (a store failure logged by its kind).
    fn status(&self) -> StatusCode {
        match self {
            Failure::NotFound | Failure::Missing(_) => StatusCode::NOT_FOUND,
            Failure::Csrf => StatusCode::FORBIDDEN,
            Failure::Refused(_) => StatusCode::BAD_REQUEST,
            Failure::TurnRunning | Failure::Changed(_) => StatusCode::CONFLICT,
            Failure::Store(error) => {
                tracing::warn!(error = error.kind(), "inspector: the store failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Its name in a JSON error.
    fn code(&self) -> &'static str {
        match self {
            Failure::NotFound | Failure::Missing(_) => "not_found",
            Failure::Csrf => "csrf",
            Failure::Refused(_) => "bad_request",
            Failure::TurnRunning => "turn_running",
            Failure::Changed(_) => "changed",
            Failure::Store(_) => "store",
        }
    }
}

/// A [`Failure`] answered as JSON, for the API's actions: `{"error": <code>, "message": <text>}`
/// with the page's status.
#[derive(Debug)]
pub(crate) struct ApiFailure(pub(crate) Failure);

impl From<Failure> for ApiFailure {
    fn from(failure: Failure) -> Self {
        ApiFailure(failure)
    }
}

impl From<StoreError> for ApiFailure {
    fn from(error: StoreError) -> Self {
        ApiFailure(Failure::Store(error))
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.0.code(),
            "message": self.0.to_string(),
        });
        (self.0.status(), axum::Json(body)).into_response()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = html::page(
            "Error",
            html::Nav::default(),
            &format!(
                r#"<p class="error" id="error">{}</p><p><a href="/">Back to the conversations</a></p>"#,
                html::esc(&self.to_string())
            ),
        );
        (status, axum::response::Html(body)).into_response()
    }
}
