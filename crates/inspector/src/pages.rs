//! The pages and the JSON API: the conversations, one conversation, its reveal, export,
//! erasure, rewind and re-run, the audit, and the login.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use soul_engine::WorkingMemory;
use soul_persistence::turn_log::{self, LoggedTurn, Rewind, SessionState};
use soul_persistence::{
    Address, AuditAction, AuditEntry, Conversation, ConversationQuery, Erasure, SessionId, Store,
};
use soul_turns::{DriverError, Rerun};
use uuid::Uuid;

use crate::auth::Access;
use crate::html::{self, csrf_field, esc};
use crate::mask::mask;
use crate::state::{ApiFailure, Authed, Failure, Shared};
use crate::timeline;

type SharedState = State<Arc<Shared>>;

/// The list's filters, from the query string (checkboxes send `on`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filters {
    q: Option<String>,
    crisis: Option<String>,
    opted_out: Option<String>,
    undelivered: Option<String>,
    due: Option<String>,
}

impl Filters {
    fn query(&self) -> ConversationQuery {
        ConversationQuery {
            search: self
                .q
                .as_deref()
                .map(str::trim)
                .filter(|q| !q.is_empty())
                .map(str::to_owned),
            process: self.crisis.as_ref().map(|_| "crisis".to_owned()),
            opted_out: self.opted_out.is_some(),
            undelivered: self.undelivered.is_some(),
            due_events: self.due.is_some(),
            ..ConversationQuery::default()
        }
    }
}

fn checked(flag: &Option<String>) -> &'static str {
    if flag.is_some() { " checked" } else { "" }
}

fn time(value: &Value) -> String {
    value
        .as_str()
        .map(|text| text.get(..19).unwrap_or(text).replace('T', " "))
        .unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `GET /`: the conversations, filtered.
pub(crate) async fn conversations(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, Failure> {
    let inspector = &shared.inspector;
    let found = inspector
        .store
        .conversations(&filters.query(), inspector.clock.now())
        .await?;
    let mut body = format!(
        r#"<h1>Conversations</h1>
<form method="get" action="/" class="filters" id="filters">
<input type="search" name="q" placeholder="number or words" value="{q}">
<label><input type="checkbox" name="crisis"{crisis}> in crisis mode</label>
<label><input type="checkbox" name="opted_out"{opted_out}> opted out</label>
<label><input type="checkbox" name="undelivered"{undelivered}> failed or pending replies</label>
<label><input type="checkbox" name="due"{due}> check-ins due</label>
<button>Filter</button></form>
<table id="conversations"><thead><tr><th>Number</th><th>Persona</th><th>Process</th><th>Last active</th><th>Messages</th><th>Attention</th></tr></thead><tbody>"#,
        q = esc(filters.q.as_deref().unwrap_or("")),
        crisis = checked(&filters.crisis),
        opted_out = checked(&filters.opted_out),
        undelivered = checked(&filters.undelivered),
        due = checked(&filters.due),
    );
    for c in &found {
        let _ = write!(
            body,
            r#"<tr><td><a class="conversation" href="/conversations/{id}">{number}</a></td><td>{persona}</td><td>{process}</td><td>{active}</td><td>{messages}</td><td>{flags}</td></tr>"#,
            id = c.id,
            number = esc(&mask(c.address.as_str())),
            persona = esc(&c.persona),
            process = esc(c.process.as_deref().unwrap_or("—")),
            active = c.last_active_at.format("%Y-%m-%d %H:%M:%S"),
            messages = c.total_messages,
            flags = flags(c),
        );
    }
    if found.is_empty() {
        body.push_str(r#"<tr><td colspan="6" id="none">No conversation matches.</td></tr>"#);
    }
    body.push_str("</tbody></table>");
    Ok(Html(html::page(
        "Conversations",
        shared.nav(&shared.keys.csrf(&authed.login)),
        &body,
    )))
}

fn flags(c: &Conversation) -> String {
    let mut flags = Vec::new();
    if c.process.as_deref() == Some("crisis") {
        flags.push(r#"<span class="flag crisis">crisis</span>"#.to_owned());
    }
    if c.opted_out {
        flags.push(r#"<span class="flag">opted out</span>"#.to_owned());
    }
    if c.failed_replies > 0 {
        flags.push(format!(
            r#"<span class="flag bad">{} failed</span>"#,
            c.failed_replies
        ));
    }
    if c.pending_replies > 0 {
        flags.push(format!(
            r#"<span class="flag">{} pending</span>"#,
            c.pending_replies
        ));
    }
    if c.due_events > 0 {
        flags.push(format!(
            r#"<span class="flag">{} check-in due</span>"#,
            c.due_events
        ));
    }
    flags.join(" ")
}

/// The conversation `id`.
async fn find(shared: &Shared, id: Uuid) -> Result<Conversation, Failure> {
    let inspector = &shared.inspector;
    let query = ConversationQuery {
        session: Some(SessionId(id)),
        limit: 1,
        ..ConversationQuery::default()
    };
    inspector
        .store
        .conversations(&query, inspector.clock.now())
        .await?
        .into_iter()
        .next()
        .ok_or(Failure::NotFound)
}

/// The conversation `id` and everything stored about its person (every line's conversation).
async fn load(shared: &Shared, id: Uuid) -> Result<(Conversation, Value), Failure> {
    let inspector = &shared.inspector;
    let conversation = find(shared, id).await?;
    let export = inspector
        .store
        .export_user(&conversation.address)
        .await?
        .ok_or(Failure::NotFound)?;
    Ok((conversation, export))
}

/// The part of a person's export (one entry per conversation, by line) that is conversation
/// `id`'s.
fn part_of(export: &Value, id: SessionId) -> &Value {
    let id = id.to_string();
    export
        .as_array()
        .and_then(|parts| {
            parts
                .iter()
                .find(|part| part["session"]["id"].as_str() == Some(id.as_str()))
        })
        .unwrap_or(&Value::Null)
}

/// The turn log of conversation `id` and its current state.
async fn timeline_of(
    shared: &Shared,
    id: SessionId,
) -> Result<(Vec<LoggedTurn>, Option<SessionState>), Failure> {
    let store = &shared.inspector.store;
    let turns = store.turn_log(id, 1, None).await?;
    let state = store.session_state(id).await?;
    Ok((turns, state))
}

/// What a conversation page shows besides the stored data.
#[derive(Default)]
struct View {
    /// The number unmasked.
    revealed: bool,
    /// What an action did.
    notice: Option<String>,
    /// A re-run to show beside its turn.
    rerun: Option<Rerun>,
}

/// `GET /conversations/{id}`.
pub(crate) async fn conversation(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
) -> Result<Html<String>, Failure> {
    let (conversation, export) = load(&shared, id).await?;
    render_conversation(&shared, &authed, &conversation, &export, View::default()).await
}

async fn render_conversation(
    shared: &Shared,
    authed: &Authed,
    c: &Conversation,
    export: &Value,
    view: View,
) -> Result<Html<String>, Failure> {
    let (turns, state) = timeline_of(shared, c.id).await?;
    let now = shared.inspector.clock.now();
    let csrf = shared.keys.csrf(&authed.login);
    let number = if view.revealed {
        c.address.as_str().to_owned()
    } else {
        mask(c.address.as_str())
    };
    let line = if c.line.is_default() {
        "the default line".to_owned()
    } else {
        format!("line {}", c.line.as_str())
    };
    let mut body = format!(
        r#"<h1>Conversation <span id="number">{number}</span></h1>
<p class="meta"><span id="line">{line}</span> · soul <span id="soul">{persona}</span> · first contact {first} · last active {last} · {messages} messages {flags}</p>
<div class="actions">"#,
        number = esc(&number),
        line = esc(&line),
        persona = esc(&c.persona),
        first = c.first_contact_at.format("%Y-%m-%d %H:%M"),
        last = c.last_active_at.format("%Y-%m-%d %H:%M"),
        messages = c.total_messages,
        flags = flags(c),
    );
    let action = format!("/conversations/{}", c.id);
    if !view.revealed {
        let _ = write!(
            body,
            r#"<form method="post" action="{action}/reveal" class="inline">{}<button id="reveal">Reveal number</button></form>"#,
            csrf_field(&csrf)
        );
    }
    let _ = write!(
        body,
        r#"<form method="post" action="{action}/export" class="inline">{f}<button id="export">Export (JSON)</button></form>
<form method="post" action="{action}/erase" class="inline erase">{f}<label>Type the number's last four characters to erase everything stored about this person: <input name="confirm" id="confirm" autocomplete="off" size="6"></label> <button id="erase" class="danger">Erase</button></form>
</div>"#,
        f = csrf_field(&csrf)
    );
    if let Some(notice) = &view.notice {
        let _ = write!(body, r#"<p class="notice" id="notice">{}</p>"#, esc(notice));
    }
    if let Some(rerun) = &view.rerun {
        body.push_str(&timeline::rerun_html(rerun));
    }
    let running = state
        .as_ref()
        .and_then(|state| state.lease_expires_at)
        .is_some_and(|until| until > now);
    let forms = timeline::Forms {
        action: &action,
        csrf: &csrf,
        latest: state.as_ref().map_or(0, |state| state.turn),
        rerun: shared.inspector.driver.is_some(),
    };
    body.push_str(&timeline::html(&turns, forms, running));
    let export = part_of(export, c.id);
    body.push_str(&working_memory(export));
    body.push_str(&process(export));
    body.push_str(&memories(export));
    body.push_str(&replies(export));
    body.push_str(&events(export));
    Ok(Html(html::page("Conversation", shared.nav(&csrf), &body)))
}

/// The latest working-memory snapshot, region by region.
fn working_memory(export: &Value) -> String {
    let mut out = String::from(r#"<section id="working-memory"><h2>Working memory</h2>"#);
    let latest = export["working_memory_snapshots"]
        .as_array()
        .and_then(|snapshots| snapshots.last());
    let Some(latest) = latest else {
        out.push_str("<p>No snapshot stored.</p></section>");
        return out;
    };
    let snapshot = match &latest["snapshot"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    match WorkingMemory::from_json(snapshot) {
        Ok(memory) => {
            let mut regions: Vec<(String, Vec<String>)> = Vec::new();
            for item in memory.iter() {
                let region = item
                    .region
                    .as_ref()
                    .map_or_else(|| "conversation".to_owned(), |r| r.as_str().to_owned());
                let line = format!(
                    "<li><b>{}</b> {}</li>",
                    esc(item.role.as_str()),
                    esc(&item.content)
                );
                match regions.iter_mut().find(|(name, _)| *name == region) {
                    Some((_, lines)) => lines.push(line),
                    None => regions.push((region, vec![line])),
                }
            }
            let _ = write!(
                out,
                "<p class=\"meta\">As of {}</p>",
                esc(&time(&latest["created_at"]))
            );
            for (region, lines) in regions {
                let _ = write!(
                    out,
                    r#"<details class="region" id="region-{}"><summary>{} ({})</summary><ul>{}</ul></details>"#,
                    esc(&region),
                    esc(&region),
                    lines.len(),
                    lines.concat()
                );
            }
        }
        Err(_) => out.push_str("<p>The stored snapshot is not readable by this version.</p>"),
    }
    out.push_str("</section>");
    out
}

fn process(export: &Value) -> String {
    let state = &export["mental_process_state"];
    if state.is_null() {
        return r#"<section id="process"><h2>Mental process</h2><p>The soul's first process (none stored yet).</p></section>"#.to_owned();
    }
    format!(
        r#"<section id="process"><h2>Mental process</h2><p><b>{}</b> (before: {}), invoked {} times, params <code>{}</code></p></section>"#,
        esc(&text(&state["name"])),
        esc(state["previous"].as_str().unwrap_or("—")),
        esc(&text(&state["invocation_count"])),
        esc(&text(&state["params"])),
    )
}

fn rows(export: &Value, key: &str, columns: &[&str]) -> String {
    let empty = Vec::new();
    let rows = export[key].as_array().unwrap_or(&empty);
    if rows.is_empty() {
        return "<p>None.</p>".to_owned();
    }
    let mut out = String::from("<table><thead><tr>");
    for column in columns {
        let _ = write!(out, "<th>{}</th>", esc(column));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for column in columns {
            let _ = write!(
                out,
                r#"<td class="{}">{}</td>"#,
                esc(column),
                esc(&text(&row[*column]))
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

fn memories(export: &Value) -> String {
    format!(
        r#"<section id="memories"><h2>Soul memory</h2>{}<h2>Process memory</h2>{}</section>"#,
        rows(export, "soul_memories", &["key", "value", "updated_at"]),
        rows(
            export,
            "process_memories",
            &["process", "key", "value", "updated_at"]
        ),
    )
}

fn replies(export: &Value) -> String {
    format!(
        r#"<section id="replies"><h2>Replies</h2>{}<h2>Inbound queue</h2>{}</section>"#,
        rows(
            export,
            "outbound_messages",
            &["created_at", "status", "error", "body"]
        ),
        rows(
            export,
            "inbound_messages",
            &["received_at", "kind", "status", "attempts", "body"]
        ),
    )
}

fn events(export: &Value) -> String {
    format!(
        r#"<section id="events"><h2>Scheduled events</h2>{}</section>"#,
        rows(
            export,
            "scheduled_events",
            &["due_at", "key", "kind", "payload"]
        ),
    )
}

/// An action's form: its CSRF token, for an erasure or a rewind the confirmation, and for a
/// rewind or re-run the turn.
#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
    confirm: Option<String>,
    turn: Option<u32>,
}

async fn audit_action(
    shared: &Shared,
    authed: &Authed,
    action: AuditAction,
    session: SessionId,
) -> Result<(), Failure> {
    let entry = AuditEntry {
        at: shared.inspector.clock.now(),
        actor: authed.login.actor(),
        action,
        session,
    };
    shared.inspector.store.record_audit(&entry).await?;
    Ok(())
}

/// `POST /conversations/{id}/reveal`: the page with the number shown, audited first.
pub(crate) async fn reveal(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Html<String>, Failure> {
    authed.check_csrf(&shared.keys, form.csrf.as_deref())?;
    let (conversation, export) = load(&shared, id).await?;
    audit_action(&shared, &authed, AuditAction::Reveal, conversation.id).await?;
    let view = View {
        revealed: true,
        ..View::default()
    };
    render_conversation(&shared, &authed, &conversation, &export, view).await
}

/// The export as a download.
fn download(id: Uuid, export: &Value) -> Response {
    let body = serde_json::to_string_pretty(export).unwrap_or_default();
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"export-{id}.json\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /conversations/{id}/export`: everything stored about the person, as JSON, audited
/// first.
pub(crate) async fn export(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    authed.check_csrf(&shared.keys, form.csrf.as_deref())?;
    let (conversation, export) = load(&shared, id).await?;
    audit_action(&shared, &authed, AuditAction::Export, conversation.id).await?;
    Ok(download(id, &export))
}

/// The last four characters of an address: what an erasure's confirmation must repeat.
fn last_four(address: &Address) -> String {
    let chars: Vec<char> = address.as_str().chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// `POST /conversations/{id}/erase`: after the confirmation, audited first.
pub(crate) async fn erase(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Html<String>, Failure> {
    authed.check_csrf(&shared.keys, form.csrf.as_deref())?;
    let (conversation, _) = load(&shared, id).await?;
    if form.confirm.as_deref().map(str::trim) != Some(last_four(&conversation.address).as_str()) {
        return Err(Failure::Refused(
            "The confirmation did not match the number's last four characters: nothing was erased."
                .to_owned(),
        ));
    }
    audit_action(&shared, &authed, AuditAction::Erase, conversation.id).await?;
    let outcome = shared
        .inspector
        .store
        .erase_user(&conversation.address, shared.inspector.clock.now())
        .await?;
    let said = match outcome {
        Erasure::TurnRunning { .. } => return Err(Failure::TurnRunning),
        Erasure::Erased { opt_out_kept: true } => {
            "Erased. The person had opted out: their number and opt-out are kept, so that nothing is sent to them."
        }
        _ => "Erased: nothing is stored about this person any more.",
    };
    Ok(Html(html::page(
        "Erased",
        shared.nav(&shared.keys.csrf(&authed.login)),
        &format!(
            r#"<p id="erased">{}</p><p><a href="/">Back to the conversations</a></p>"#,
            esc(said)
        ),
    )))
}

/// The turn an action names, or why it cannot be taken.
fn turn_of(turn: Option<u32>, what: &str) -> Result<u32, Failure> {
    turn.ok_or_else(|| Failure::Refused(format!("Which turn to {what} is missing.")))
}

/// Refuses an action on `session` while a turn of its person runs (a live lease).
async fn refuse_while_running(shared: &Shared, session: SessionId) -> Result<(), Failure> {
    let now = shared.inspector.clock.now();
    let state = shared.inspector.store.session_state(session).await?;
    if state
        .and_then(|state| state.lease_expires_at)
        .is_some_and(|until| until > now)
    {
        return Err(Failure::TurnRunning);
    }
    Ok(())
}

/// Rewinds `conversation` to after `turn` (`soul_persistence::turn_log::rewind`), later turns
/// marked rewound: refused while a turn runs, audited first. How many turns it marked.
async fn rewind_conversation(
    shared: &Shared,
    authed: &Authed,
    conversation: &Conversation,
    turn: u32,
) -> Result<u32, Failure> {
    refuse_while_running(shared, conversation.id).await?;
    audit_action(shared, authed, AuditAction::Rewind, conversation.id).await?;
    let store: &dyn Store = &*shared.inspector.store;
    let now = shared.inspector.clock.now();
    match turn_log::rewind(store, conversation.id, turn, now).await? {
        Rewind::Rewound { rewound } => Ok(rewound),
        Rewind::TurnRunning { .. } => Err(Failure::TurnRunning),
        Rewind::Changed => Err(Failure::Changed(
            "The conversation changed meanwhile: nothing was rewound; reload and try again."
                .to_owned(),
        )),
        Rewind::AcrossSessionReset { turn: reset } => Err(Failure::Refused(format!(
            "Turn {reset} began a new session after its first start was cut short, so its record does not hold what the session timeout cleared: a rewind cannot go back across it. Nothing was rewound."
        ))),
        _ => Err(Failure::Missing(format!(
            "There is no turn {turn} to rewind to (never run, rewound, or deleted by retention): nothing was rewound."
        ))),
    }
}

/// Re-runs `turn` of `conversation` with the driver's build and model, on the state before it,
/// with the conversation's own soul; nothing is stored. Refused while a turn runs, audited
/// first.
async fn rerun_turn(
    shared: &Shared,
    authed: &Authed,
    conversation: &Conversation,
    turn: u32,
) -> Result<Rerun, Failure> {
    let Some(driver) = shared.inspector.driver.clone() else {
        return Err(Failure::Missing(
            "This inspector cannot re-run turns (it has no turn driver).".to_owned(),
        ));
    };
    refuse_while_running(shared, conversation.id).await?;
    audit_action(shared, authed, AuditAction::Rerun, conversation.id).await?;
    match driver.rerun(conversation.id, turn).await {
        Ok(Some(rerun)) => Ok(rerun),
        Ok(None) => Err(Failure::Missing(format!(
            "Turn {turn} cannot be re-run: there is no such turn (never run, rewound, or deleted by retention), or a later turn began a new session after its first start was cut short."
        ))),
        Err(DriverError::Store(error)) => Err(Failure::Store(error)),
        Err(_) => Err(Failure::Refused(format!(
            "Turn {turn} could not be re-run."
        ))),
    }
}

/// `POST /conversations/{id}/rewind`: after the confirmation, the conversation rewound to after
/// the form's turn ([`rewind_conversation`]), shown with what it did.
pub(crate) async fn rewind(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Html<String>, Failure> {
    authed.check_csrf(&shared.keys, form.csrf.as_deref())?;
    let conversation = find(&shared, id).await?;
    let turn = turn_of(form.turn, "rewind to")?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(Failure::Refused(
            "Tick the confirmation to rewind: nothing was rewound.".to_owned(),
        ));
    }
    let rewound = rewind_conversation(&shared, &authed, &conversation, turn).await?;
    let view = View {
        notice: Some(format!(
            "Rewound to after turn {turn}: {rewound} later turns are marked rewound."
        )),
        ..View::default()
    };
    show(&shared, &authed, id, view).await
}

/// `POST /conversations/{id}/rerun`: the form's turn re-run ([`rerun_turn`]), shown beside what
/// the turn did.
pub(crate) async fn rerun(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    Form(form): Form<ActionForm>,
) -> Result<Html<String>, Failure> {
    authed.check_csrf(&shared.keys, form.csrf.as_deref())?;
    let conversation = find(&shared, id).await?;
    let turn = turn_of(form.turn, "re-run")?;
    let rerun = rerun_turn(&shared, &authed, &conversation, turn).await?;
    let view = View {
        rerun: Some(rerun),
        ..View::default()
    };
    show(&shared, &authed, id, view).await
}

/// Conversation `id`'s page as it is now, with `view`.
async fn show(
    shared: &Shared,
    authed: &Authed,
    id: Uuid,
    view: View,
) -> Result<Html<String>, Failure> {
    let (conversation, export) = load(shared, id).await?;
    render_conversation(shared, authed, &conversation, &export, view).await
}

/// An API action's body: the turn.
#[derive(Debug, Deserialize)]
struct TurnRequest {
    turn: u32,
}

/// The turn an API action's JSON body names, after its CSRF check (a browser session sends the
/// token as `X-CSRF-Token`; the bearer token needs none).
fn api_turn(
    shared: &Shared,
    authed: &Authed,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<u32, Failure> {
    let offered = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok());
    authed.check_csrf(&shared.keys, offered)?;
    serde_json::from_slice::<TurnRequest>(body)
        .map(|request| request.turn)
        .map_err(|_| {
            Failure::Refused(
                r#"The body must be JSON naming the turn, as {"turn": 3} (turns count from 1)."#
                    .to_owned(),
            )
        })
}

/// `POST /api/conversations/{id}/rewind` with `{"turn": N}`: the conversation rewound to after
/// turn N, as the page's rewind does (audited first; 409 while a turn runs).
pub(crate) async fn api_rewind(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiFailure> {
    let turn = api_turn(&shared, &authed, &headers, &body)?;
    let conversation = find(&shared, id).await?;
    let rewound = rewind_conversation(&shared, &authed, &conversation, turn).await?;
    Ok(Json(json!({
        "conversation": conversation.id,
        "rewound_to": turn,
        "rewound_turns": rewound,
    })))
}

/// `POST /api/conversations/{id}/rerun` with `{"turn": N}`: turn N re-run, as the page's re-run
/// does (audited first; 409 while a turn runs), what the turn did beside what the re-run did.
pub(crate) async fn api_rerun(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiFailure> {
    let turn = api_turn(&shared, &authed, &headers, &body)?;
    let conversation = find(&shared, id).await?;
    let rerun = rerun_turn(&shared, &authed, &conversation, turn).await?;
    Ok(Json(timeline::rerun_json(&rerun)))
}

/// `GET /audit`.
pub(crate) async fn audit(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
) -> Result<Html<String>, Failure> {
    let log = shared.inspector.store.audit_log(200).await?;
    let mut body = String::from(
        r#"<h1>Audit</h1><p>Every reveal, export, erasure, rewind and re-run, newest first.</p><table id="audit"><thead><tr><th>When</th><th>Who</th><th>What</th><th>Conversation</th></tr></thead><tbody>"#,
    );
    for entry in &log {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            entry.at.format("%Y-%m-%d %H:%M:%S"),
            esc(&entry.actor),
            entry.action.as_str(),
            entry.session
        );
    }
    body.push_str("</tbody></table>");
    Ok(Html(html::page(
        "Audit",
        shared.nav(&shared.keys.csrf(&authed.login)),
        &body,
    )))
}

/// `POST /logout`: the cookie cleared.
pub(crate) async fn logout(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    authed.check_csrf(&shared.keys, form.csrf.as_deref())?;
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&shared.keys.clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `GET /login`.
pub(crate) async fn login_form(State(shared): SharedState) -> Response {
    if matches!(shared.inspector.access, Access::Open) {
        return Redirect::to("/").into_response();
    }
    Html(login_page(None)).into_response()
}

fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|error| format!(r#"<p class="error" id="error">{}</p>"#, esc(error)))
        .unwrap_or_default();
    html::page(
        "Log in",
        html::Nav::default(),
        &format!(
            r#"<h1>Log in</h1>{error}<form method="post" action="/login" id="login"><label>Token <input type="password" name="token" id="token" autocomplete="current-password"></label> <button>Log in</button></form>"#
        ),
    )
}

/// The login form.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: a session cookie for the right token. Refused (429, with `Retry-After`)
/// without looking at the token once the failed logins from the client's address, or from
/// everyone, reached the [`crate::LoginLimit`].
pub(crate) async fn login(
    State(shared): SharedState,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let client = client.map(|Extension(ConnectInfo(address))| address.ip());
    let now = shared.inspector.clock.now();
    if let Err(wait) = shared.logins.check(client, now) {
        tracing::warn!("inspector: a login refused, too many wrong tokens");
        let seconds = wait.num_seconds().max(1);
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Html(login_page(Some(&format!(
                "Too many wrong tokens: try again in {seconds} seconds."
            )))),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    if !shared.inspector.access.accepts(&form.token) {
        shared.logins.failed(client, now);
        tracing::warn!("inspector: a login with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_page(Some("That is not the token."))),
        )
            .into_response();
    }
    shared.logins.succeeded(client);
    let login = shared.keys.login(shared.inspector.clock.now());
    let cookie = shared.keys.set_cookie(&login);
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /assets/style.css`.
pub(crate) async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css")], html::STYLE)
}

/// `GET /assets/chat.js`.
pub(crate) async fn chat_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript")], html::CHAT_JS)
}

fn masked(conversation: &Conversation) -> Value {
    let mut value = serde_json::to_value(conversation).unwrap_or(Value::Null);
    value["address"] = json!(mask(conversation.address.as_str()));
    value
}

/// `GET /api/conversations`: the list's filters as query parameters; numbers masked.
pub(crate) async fn api_conversations(
    State(shared): SharedState,
    Query(filters): Query<Filters>,
) -> Result<Json<Value>, Failure> {
    let found = shared
        .inspector
        .store
        .conversations(&filters.query(), shared.inspector.clock.now())
        .await?;
    Ok(Json(Value::Array(found.iter().map(masked).collect())))
}

/// `GET /api/conversations/{id}`: the conversation and what is stored about it, the number
/// masked.
pub(crate) async fn api_conversation(
    State(shared): SharedState,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, Failure> {
    let (conversation, export) = load(&shared, id).await?;
    let mut stored = part_of(&export, conversation.id).clone();
    if stored.is_object() {
        stored["session"]["address"] = json!(mask(conversation.address.as_str()));
    }
    Ok(Json(json!({
        "conversation": masked(&conversation),
        "stored": stored,
    })))
}

/// `POST /api/conversations/{id}/export`: the person's export, audited first. A browser
/// session sends its CSRF token as `X-CSRF-Token`.
pub(crate) async fn api_export(
    State(shared): SharedState,
    Extension(authed): Extension<Authed>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let offered = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok());
    authed.check_csrf(&shared.keys, offered)?;
    let (conversation, export) = load(&shared, id).await?;
    audit_action(&shared, &authed, AuditAction::Export, conversation.id).await?;
    Ok(download(id, &export))
}

/// `GET /api/audit`.
pub(crate) async fn api_audit(State(shared): SharedState) -> Result<Json<Value>, Failure> {
    let log = shared.inspector.store.audit_log(200).await?;
    Ok(Json(serde_json::to_value(log).unwrap_or(Value::Null)))
}

/// `GET /api/conversations/{id}/turns`: the conversation (number masked), its turn log, oldest
/// first, and where it stands (the latest turn not rewound, whether a turn runs).
pub(crate) async fn api_turns(
    State(shared): SharedState,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, Failure> {
    let conversation = find(&shared, id).await?;
    let (turns, state) = timeline_of(&shared, conversation.id).await?;
    let now = shared.inspector.clock.now();
    Ok(Json(json!({
        "conversation": masked(&conversation),
        "latest_turn": state.as_ref().map_or(0, |state| state.turn),
        "turn_running": state
            .and_then(|state| state.lease_expires_at)
            .is_some_and(|until| until > now),
        "turns": turns.iter().map(timeline::json).collect::<Vec<_>>(),
    })))
}
