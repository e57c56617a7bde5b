//! The operator's inspector: the conversations a store holds, one conversation with its turns
//! as the turn log holds them (steps, changes, replies), working memory by region, memories,
//! process and replies; a conversation rewound to after one of its turns, or a turn re-run with
//! the current build (where the inspector has a turn driver); a person's data exported (JSON)
//! or erased after a confirmation; and, for authors, a chat with the soul in the browser.
//!
//! [`router`] serves server-rendered pages (a little JavaScript for the chat only; the
//! stylesheet and script are embedded, so no network is needed) and a JSON API for the same
//! data under `/api/`. Everything but the login page and the assets needs a login
//! ([`Access`], failed logins limited by [`LoginLimit`]): a session cookie, signed under a key
//! derived from the token and expiring, `HttpOnly`, `SameSite=Strict` (and `Secure` when asked),
//! and on every action (every `POST`) the session's CSRF token; the JSON API also takes the token
//! as `Authorization: Bearer`. Numbers are masked unless revealed, and every reveal, export,
//! erasure, rewind and re-run is recorded in the store's audit table first; rewind and re-run
//! are also JSON actions for scripts. `docs/inspector.md` is the guide.

mod auth;
mod chat;
mod html;
mod limit;
mod mask;
mod pages;
mod state;
mod timeline;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use chrono::Duration;
use soul_engine::Clock;
use soul_engine::process::ReplyStream;
use soul_persistence::{Address, Inspect};
use soul_turns::TurnDriver;

pub use auth::Access;
pub use limit::LoginLimit;

use crate::state::Shared;

/// How long a login lasts when [`Inspector::with_session_lifetime`] is not called.
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::hours(8);

/// A message the browser chat hands to the soul: what runs its turn (the gateway's turn
/// driver, as for an SMS) and marks its replies delivered.
pub trait Chat: Send + Sync + fmt::Debug {
    /// Runs the turn of `text` from `from` to its end (its replies committed); errors are the
    /// implementation's to log. The turn's replies are written to `stream` while the model writes
    /// them (where it streams), for the page to show before they are committed.
    fn send(
        &self,
        from: Address,
        text: String,
        stream: Arc<dyn ReplyStream>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The inspector over one store.
#[derive(Debug)]
pub struct Inspector {
    store: Arc<dyn Inspect>,
    access: Access,
    clock: Arc<dyn Clock>,
    chat: Option<Arc<dyn Chat>>,
    driver: Option<Arc<TurnDriver>>,
    lifetime: Duration,
    login_limit: LoginLimit,
    secure_cookie: bool,
    /// The browser chat's replies while they are written, per address.
    streams: Arc<chat::Streams>,
}

impl Inspector {
    /// An inspector over `store` for those `access` lets in, with "now" from `clock`.
    pub fn new(store: Arc<dyn Inspect>, access: Access, clock: Arc<dyn Clock>) -> Self {
        Inspector {
            store,
            access,
            clock,
            chat: None,
            driver: None,
            lifetime: DEFAULT_SESSION_LIFETIME,
            login_limit: LoginLimit::default(),
            secure_cookie: false,
            streams: Arc::default(),
        }
    }

    /// Adds the browser chat (`/chat`), whose messages `chat` runs.
    pub fn with_chat(mut self, chat: Arc<dyn Chat>) -> Self {
        self.chat = Some(chat);
        self
    }

    /// Offers re-running a logged turn with `driver` (its runtime and model, on the same store):
    /// the difference is shown, nothing is stored.
    pub fn with_driver(mut self, driver: Arc<TurnDriver>) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Logins last `lifetime`.
    pub fn with_session_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Failed logins are limited by `limit` instead of [`LoginLimit::default`]. The limit per
    /// address needs the router served with the client's address
    /// (`into_make_service_with_connect_info::<SocketAddr>()`); without it every client counts
    /// as one.
    pub fn with_login_limit(mut self, limit: LoginLimit) -> Self {
        self.login_limit = limit;
        self
    }

    /// Marks the session cookie `Secure` (browsers send it over HTTPS only) when `secure`: for
    /// an inspector reached over TLS (a proxy in front of it), not on the loopback. Off unless
    /// set.
    pub fn with_secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }
}

/// The inspector's routes.
pub fn router(inspector: Inspector) -> Router {
    let has_chat = inspector.chat.is_some();
    let shared = Arc::new(Shared::new(inspector));
    let protected = Router::new()
        .route("/", get(pages::conversations))
        .route("/conversations/{id}", get(pages::conversation))
        .route("/conversations/{id}/reveal", post(pages::reveal))
        .route("/conversations/{id}/export", post(pages::export))
        .route("/conversations/{id}/erase", post(pages::erase))
        .route("/conversations/{id}/rewind", post(pages::rewind))
        .route("/conversations/{id}/rerun", post(pages::rerun))
        .route("/audit", get(pages::audit))
        .route("/logout", post(pages::logout))
        .route("/api/conversations", get(pages::api_conversations))
        .route("/api/conversations/{id}", get(pages::api_conversation))
        .route("/api/conversations/{id}/export", post(pages::api_export))
        .route("/api/conversations/{id}/turns", get(pages::api_turns))
        .route("/api/conversations/{id}/rewind", post(pages::api_rewind))
        .route("/api/conversations/{id}/rerun", post(pages::api_rerun))
        .route("/api/audit", get(pages::api_audit));
    let protected = if has_chat {
        protected
            .route("/chat", get(chat::page).post(chat::send))
            .route("/chat/messages", get(chat::messages))
            .route("/chat/stream", get(chat::stream))
    } else {
        protected
    };
    let protected = protected.layer(axum::middleware::from_fn_with_state(
        shared.clone(),
        state::require_login,
    ));
    Router::new()
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/assets/style.css", get(pages::style))
        .route("/assets/chat.js", get(pages::chat_js))
        .merge(protected)
        .with_state(shared)
}
