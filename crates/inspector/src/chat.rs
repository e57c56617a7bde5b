//! The browser chat: the web as a channel. Each browser session talks as the address
//! `web:<its id>`; a message runs its turn through the [`Chat`](crate::Chat) (the same turn
//! driver as an SMS), and the page shows the conversation as the store holds it, asking for it
//! again until the reply is committed.
//!
//! Where the model streams, the reply shows as it is written: the turn runs with a
//! [`ReplyStream`] of the session's address, and `GET /chat/stream` (server-sent events, which
//! the page's `EventSource` opens before it sends) passes on what it hears: `writing` (the reply
//! so far, whole), `discard` (that text is void: a failed attempt, tried again), `spoken` (the
//! reply as said) and `committed` (the turn is stored; the stream ends there and the page reads
//! the conversation, whose committed replies replace the provisional text).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Extension;
use axum::Json;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use soul_engine::process::ReplyStream;
use soul_persistence::Address;
use tokio::sync::broadcast;

use crate::html::{self, csrf_field, esc};
use crate::state::{Authed, Failure, Shared};

/// The address a browser session chats as.
fn address(authed: &Authed) -> Address {
    Address::new(format!(
        "web:{}",
        authed.login.id.get(..12).unwrap_or(&authed.login.id)
    ))
}

/// `GET /chat`: the conversation so far and a box to type in.
pub(crate) async fn page(
    State(shared): State<Arc<Shared>>,
    Extension(authed): Extension<Authed>,
) -> Result<Html<String>, Failure> {
    let csrf = shared.keys.csrf(&authed.login);
    let (messages, session) = conversation(&shared, &authed).await?;
    let mut lines = String::new();
    for message in &messages {
        let _ = write!(
            lines,
            r#"<li class="{role}">{content}</li>"#,
            role = esc(message["role"].as_str().unwrap_or("")),
            content = esc(message["content"].as_str().unwrap_or("")),
        );
    }
    let link = session
        .map(|id| {
            format!(r#"<a id="inspect" href="/conversations/{id}">Inspect this conversation</a>"#)
        })
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Chat with the soul</h1>
<div class="chat"><ol id="messages">{lines}</ol>
<p id="status" class="meta"></p>
<form method="post" action="/chat" id="chat">{csrf}<input name="text" id="text" autocomplete="off" placeholder="Say something" autofocus> <button>Send</button></form>
<p id="link">{link}</p></div>
<script src="/assets/chat.js"></script>"#,
        csrf = csrf_field(&csrf),
    );
    Ok(Html(html::page("Chat", shared.nav(&csrf), &body)))
}

/// The stored conversation of the session's address (user messages and replies, no other
/// regions) and its session id.
async fn conversation(
    shared: &Shared,
    authed: &Authed,
) -> Result<(Vec<Value>, Option<String>), Failure> {
    let address = address(authed);
    let store = &shared.inspector.store;
    let session = store.session(&address).await?;
    let history = store.history(&address, Some("default"), 0).await?;
    let messages = history
        .iter()
        .map(|memory| json!({"role": memory.role.as_str(), "content": memory.content}))
        .collect();
    Ok((messages, session.map(|session| session.id.to_string())))
}

/// A message typed in the chat.
#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    csrf: Option<String>,
    text: String,
}

/// `POST /chat`: starts the message's turn and answers at once (202 to the script, a redirect
/// back to the page without it); the reply shows as it is written (`/chat/stream`) and once
/// committed.
pub(crate) async fn send(
    State(shared): State<Arc<Shared>>,
    Extension(authed): Extension<Authed>,
    headers: axum::http::HeaderMap,
    Form(message): Form<Message>,
) -> Result<Response, Failure> {
    authed.check_csrf(&shared.keys, message.csrf.as_deref())?;
    let text = message.text.trim().to_owned();
    let Some(chat) = shared.inspector.chat.clone() else {
        return Err(Failure::NotFound);
    };
    if !text.is_empty() {
        let address = address(&authed);
        let streams = shared.inspector.streams.clone();
        let stream = Arc::new(streams.reply(&address));
        tokio::spawn(async move {
            chat.send(address.clone(), text, stream).await;
            streams.send(&address, Shown::Committed);
        });
    }
    if headers.contains_key("x-chat-script") {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Ok(Redirect::to("/chat").into_response())
    }
}

/// `GET /chat/messages`: the conversation so far, for the page's script.
pub(crate) async fn messages(
    State(shared): State<Arc<Shared>>,
    Extension(authed): Extension<Authed>,
) -> Result<Json<Value>, Failure> {
    let (messages, session) = conversation(&shared, &authed).await?;
    Ok(Json(json!({"messages": messages, "session": session})))
}

/// What the page is told of a reply being written.
#[derive(Debug, Clone)]
enum Shown {
    Writing(String),
    Discard,
    Spoken(String),
    Committed,
}

/// How many events a slow page may fall behind by; one that falls further misses some, and
/// the next `writing` (always the whole text) or the commit puts it right.
const BACKLOG: usize = 256;

/// The replies being written, per address: what each `/chat/stream` listens to.
#[derive(Debug, Default)]
pub(crate) struct Streams(Mutex<HashMap<String, broadcast::Sender<Shown>>>);

impl Streams {
    fn sender(&self, address: &Address) -> broadcast::Sender<Shown> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(address.as_str().to_owned())
            .or_insert_with(|| broadcast::channel(BACKLOG).0)
            .clone()
    }

    fn send(&self, address: &Address, shown: Shown) {
        // Nobody listening is fine: the page reads the committed reply anyway.
        let _ = self.sender(address).send(shown);
    }

    fn reply(&self, address: &Address) -> BrowserReply {
        BrowserReply(self.sender(address))
    }
}

/// A turn's replies on their way to the pages of its address.
#[derive(Debug)]
struct BrowserReply(broadcast::Sender<Shown>);

impl ReplyStream for BrowserReply {
    fn writing(&self, text: &str) {
        let _ = self.0.send(Shown::Writing(text.to_owned()));
    }

    fn discard(&self) {
        let _ = self.0.send(Shown::Discard);
    }

    fn spoken(&self, text: &str) {
        let _ = self.0.send(Shown::Spoken(text.to_owned()));
    }
}

fn event(shown: &Shown) -> Event {
    let (name, text) = match shown {
        Shown::Writing(text) => ("writing", Some(text)),
        Shown::Discard => ("discard", None),
        Shown::Spoken(text) => ("spoken", Some(text)),
        Shown::Committed => ("committed", None),
    };
    // As JSON, so that any text is one line of data; `null` for none, as an `EventSource`
    // drops an event whose data is empty.
    Event::default()
        .event(name)
        .json_data(text)
        .unwrap_or_else(|_| Event::default().event(name).data("null"))
}

/// `GET /chat/stream`: the session's replies as they are written (server-sent events), until
/// its turn is committed.
pub(crate) async fn stream(
    State(shared): State<Arc<Shared>>,
    Extension(authed): Extension<Authed>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = shared
        .inspector
        .streams
        .sender(&address(&authed))
        .subscribe();
    let events = futures_util::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        loop {
            match receiver.recv().await {
                Ok(shown) => {
                    let next = (!matches!(shown, Shown::Committed)).then_some(receiver);
                    return Some((Ok(event(&shown)), next));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
