//! The browser chat: the web as a channel. Each browser session talks as the address
//! `web:<its id>`; a message runs its turn through the [`Chat`](crate::Chat) (the same turn
//! driver as an SMS), and the page shows the conversation as the store holds it, asking for it
//! again until the reply is committed. Replies appear once committed, whole (not streamed).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use soul_persistence::Address;

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
/// back to the page without it); the reply shows once committed.
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
        tokio::spawn(chat.send(address(&authed), text));
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
