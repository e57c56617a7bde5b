//! A conversation's turns as the turn log holds them: each turn's perception, cognitive steps
//! (kind, name, duration, tokens, answer), process before and after, memory changes, scheduled
//! and cancelled events, replies with their delivery, and how it ended; rewound turns marked.
//! As HTML (a `<details>` per turn, with its rewind and re-run forms) and as JSON; and a re-run
//! beside the turn it re-ran.

use std::fmt::Write as _;

use serde_json::{Value, json};
use soul_persistence::turn_log::{
    ChangeLog, EventChange, EventValue, KeyChange, LoggedTurn, ProcessChange, StepLog, TurnEnd,
};
use soul_persistence::{InboundKind, ProcessState};
use soul_turns::{Rerun, TurnOutcome};

use crate::html::{csrf_field, esc};

/// What the turn forms need: where they post, the session's CSRF token, the latest turn that
/// is not rewound (rewinding to it would change nothing) and whether re-running is offered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forms<'a> {
    /// `/conversations/{id}`.
    pub(crate) action: &'a str,
    /// The session's CSRF token.
    pub(crate) csrf: &'a str,
    /// The latest turn that is not rewound (0: none).
    pub(crate) latest: u32,
    /// The inspector has a turn driver.
    pub(crate) rerun: bool,
}

/// The turns section.
pub(crate) fn html(turns: &[LoggedTurn], forms: Forms<'_>, running: bool) -> String {
    let mut out = String::from(r#"<section id="turns"><h2>Turns</h2>"#);
    if running {
        out.push_str(
            r#"<p class="meta" id="running">A turn of this person is running: rewinding waits until it ends.</p>"#,
        );
    }
    if turns.is_empty() {
        out.push_str("<p>No turn logged yet.</p>");
    }
    for turn in turns {
        out.push_str(&turn_html(turn, forms));
    }
    out.push_str("</section>");
    out
}

fn turn_html(turn: &LoggedTurn, forms: Forms<'_>) -> String {
    let n = turn.turn;
    let record = &turn.record;
    let mut out = format!(
        r#"<details class="turn{rewound_class}" id="turn-{n}"><summary><span class="n">#{n}</span> <span class="time">{at}</span> <span class="said">{said}</span>{end}{rewound}</summary><div class="turn-body">"#,
        rewound_class = if turn.rewound { " rewound" } else { "" },
        at = turn.committed_at.format("%Y-%m-%d %H:%M:%S"),
        said = esc(&perception(turn)),
        end = match record.end {
            TurnEnd::Ok => String::new(),
            _ => format!(
                r#" <span class="flag bad">{}</span>"#,
                esc(&end(&record.end))
            ),
        },
        rewound = if turn.rewound {
            r#" <span class="flag rewound">rewound</span>"#
        } else {
            ""
        },
    );
    if !record.processes_run.is_empty() {
        let _ = write!(
            out,
            r#"<p class="processes-run">Processes run: {}</p>"#,
            esc(&record.processes_run.join(" → "))
        );
    }
    out.push_str(&steps_html(n, "Steps", &record.steps));
    let mut changes = String::new();
    changes_html(&mut changes, &record.changes, "");
    if let Some(sub) = &record.subprocesses {
        out.push_str(&steps_html(n, "Subprocess steps", &sub.steps));
        if !sub.failed.is_empty() {
            let _ = write!(
                out,
                r#"<p class="failed">Subprocesses failed (their changes dropped): {}</p>"#,
                esc(&sub.failed.join(", "))
            );
        }
        changes_html(&mut changes, &sub.changes, " (subprocesses)");
    }
    if changes.is_empty() {
        out.push_str(r#"<p class="changes">No change stored.</p>"#);
    } else {
        let _ = write!(out, r#"<h3>Changes</h3><ul class="changes">{changes}</ul>"#);
    }
    out.push_str(r#"<h3>Replies</h3><ul class="replies">"#);
    for reply in &turn.replies {
        let _ = write!(
            out,
            r#"<li class="reply"><span class="flag status">{status}</span> {body}{error}</li>"#,
            status = reply.status.as_str(),
            body = esc(&reply.body),
            error = reply
                .error
                .as_deref()
                .map(|error| format!(r#" <span class="meta">({})</span>"#, esc(error)))
                .unwrap_or_default(),
        );
    }
    if turn.replies.is_empty() {
        out.push_str("<li>None.</li>");
    }
    let _ = write!(
        out,
        r#"</ul><p class="end">Ended: {}</p>"#,
        esc(&end(&record.end))
    );
    if !turn.rewound {
        out.push_str(r#"<div class="actions">"#);
        if n < forms.latest {
            let _ = write!(
                out,
                r#"<form method="post" action="{action}/rewind" class="inline rewind">{csrf}<input type="hidden" name="turn" value="{n}"><label><input type="checkbox" name="confirm" value="yes" required id="confirm-rewind-{n}"> undo every later turn's changes</label> <button id="rewind-{n}" class="danger">Rewind to after turn {n}</button></form>"#,
                action = forms.action,
                csrf = csrf_field(forms.csrf),
            );
        }
        if forms.rerun {
            let _ = write!(
                out,
                r#"<form method="post" action="{action}/rerun" class="inline">{csrf}<input type="hidden" name="turn" value="{n}"><button id="rerun-{n}">Re-run with this build</button></form>"#,
                action = forms.action,
                csrf = csrf_field(forms.csrf),
            );
        }
        out.push_str("</div>");
    }
    out.push_str("</div></details>");
    out
}

fn steps_html(n: u32, title: &str, steps: &[StepLog]) -> String {
    if steps.is_empty() {
        return String::new();
    }
    let class = title.to_lowercase().replace(' ', "-");
    let mut out = format!(r#"<h3>{}</h3><ol class="{class}">"#, esc(title));
    for (i, step) in steps.iter().enumerate() {
        let _ = write!(
            out,
            r#"<li class="step" id="turn-{n}-{class}-{i}"><b class="name">{name}</b> <i class="kind">{kind}</i> <span class="meta">{ms} ms · {prompt} + {completion} tokens</span><pre class="answer">{answer}</pre></li>"#,
            i = i + 1,
            name = esc(&step.name),
            kind = kind(step),
            ms = step.duration_ms,
            prompt = step.tokens[0],
            completion = step.tokens[1],
            answer = esc(&step.answer),
        );
    }
    out.push_str("</ol>");
    out
}

fn kind(step: &StepLog) -> &'static str {
    if step.structured {
        "structured"
    } else {
        "text"
    }
}

/// Appends `changes` as list items, `from` saying whose they were.
fn changes_html(out: &mut String, changes: &ChangeLog, from: &str) {
    let from = esc(from);
    if let Some(process) = &changes.process {
        let _ = write!(
            out,
            r#"<li class="process-change">Process{from}: {}</li>"#,
            esc(&process_change(process))
        );
    }
    for change in &changes.soul_memory {
        let _ = write!(
            out,
            r#"<li class="memory-change">Soul memory{from} <code>{}</code>: {}</li>"#,
            esc(&change.key),
            esc(&key_change(change))
        );
    }
    for change in &changes.process_memory {
        let _ = write!(
            out,
            r#"<li class="memory-change">Process memory{from} <code>{}.{}</code>: {}</li>"#,
            esc(&change.process),
            esc(&change.change.key),
            esc(&key_change(&change.change))
        );
    }
    for change in &changes.events {
        let _ = write!(
            out,
            r#"<li class="event-change">Event{from} <code>{}</code>: {}</li>"#,
            esc(&change.key),
            esc(&event_change(change))
        );
    }
    if changes.working_memory.is_some() {
        let _ = write!(
            out,
            r#"<li class="snapshot-change">Working memory{from}: a new snapshot</li>"#
        );
    }
}

fn perception(turn: &LoggedTurn) -> String {
    let inbound = &turn.perception;
    match &inbound.kind {
        InboundKind::Message => inbound.body.clone(),
        InboundKind::Event {
            key, kind, payload, ..
        } => format!("event {kind} ({key}) {payload}"),
    }
}

fn end(end: &TurnEnd) -> String {
    match end {
        TurnEnd::Ok => "answered".to_owned(),
        TurnEnd::Fallback { error } => format!("fallback reply ({error})"),
        TurnEnd::GivenUp => "given up".to_owned(),
        TurnEnd::OptedOut => "opted out, not answered".to_owned(),
    }
}

fn value(value: Option<&Value>) -> String {
    value.map_or_else(|| "(absent)".to_owned(), Value::to_string)
}

fn key_change(change: &KeyChange) -> String {
    format!(
        "{} → {}",
        value(change.before.as_ref()),
        value(change.after.as_ref())
    )
}

fn process(state: Option<&ProcessState>) -> String {
    match state {
        None => "(none)".to_owned(),
        Some(state) => format!("{} {}", state.name, state.params),
    }
}

fn process_change(change: &ProcessChange) -> String {
    format!(
        "{} → {}",
        process(change.before.as_ref()),
        process(Some(&change.after))
    )
}

fn event(event: &EventValue) -> String {
    format!(
        "{} due {} {}",
        event.kind,
        event.due_at.format("%Y-%m-%d %H:%M"),
        event.payload
    )
}

fn event_change(change: &EventChange) -> String {
    match (&change.before, &change.after) {
        (None, Some(after)) => format!("scheduled: {}", event(after)),
        (Some(before), None) => format!("cancelled (or answered): {}", event(before)),
        (Some(before), Some(after)) => format!("moved: {} → {}", event(before), event(after)),
        (None, None) => "none".to_owned(),
    }
}

/// One turn as the JSON API answers it.
pub(crate) fn json(turn: &LoggedTurn) -> Value {
    let record = &turn.record;
    let inbound = &turn.perception;
    json!({
        "turn": turn.turn,
        "inbound_id": inbound.id,
        "committed_at": turn.committed_at,
        "rewound": turn.rewound,
        "perception": match &inbound.kind {
            InboundKind::Message => json!({"kind": "message", "body": inbound.body, "received_at": inbound.received_at}),
            InboundKind::Event { key, kind, payload, .. } => json!({
                "kind": "event", "key": key, "event": kind, "payload": payload, "due_at": inbound.received_at,
            }),
        },
        "end": end_json(&record.end),
        "session_reset": record.session_reset,
        "processes_run": record.processes_run,
        "steps": record.steps.iter().map(step_json).collect::<Vec<_>>(),
        "changes": changes_json(&record.changes),
        "subprocesses": record.subprocesses.as_ref().map(|sub| json!({
            "failed": sub.failed,
            "steps": sub.steps.iter().map(step_json).collect::<Vec<_>>(),
            "changes": changes_json(&sub.changes),
        })),
        "replies": turn.replies.iter().map(|reply| json!({
            "id": reply.id,
            "body": reply.body,
            "status": reply.status.as_str(),
            "error": reply.error,
        })).collect::<Vec<_>>(),
    })
}

fn end_json(end: &TurnEnd) -> Value {
    match end {
        TurnEnd::Ok => json!({"kind": "ok"}),
        TurnEnd::Fallback { error } => json!({"kind": "fallback", "error": error}),
        TurnEnd::GivenUp => json!({"kind": "given_up"}),
        TurnEnd::OptedOut => json!({"kind": "opted_out"}),
    }
}

fn step_json(step: &StepLog) -> Value {
    json!({
        "name": step.name,
        "kind": kind(step),
        "duration_ms": step.duration_ms,
        "tokens": {"prompt": step.tokens[0], "completion": step.tokens[1]},
        "answer": step.answer,
    })
}

fn event_json(event: Option<&EventValue>) -> Value {
    event.map_or(
        Value::Null,
        |event| json!({"kind": event.kind, "payload": event.payload, "due_at": event.due_at}),
    )
}

fn process_json(state: Option<&ProcessState>) -> Value {
    state.map_or(Value::Null, |state| json!(state))
}

fn key_json(change: &KeyChange) -> Value {
    json!({"key": change.key, "before": change.before, "after": change.after})
}

fn changes_json(changes: &ChangeLog) -> Value {
    json!({
        "process": changes.process.as_ref().map(|change| json!({
            "before": process_json(change.before.as_ref()),
            "after": process_json(Some(&change.after)),
        })),
        "soul_memory": changes.soul_memory.iter().map(key_json).collect::<Vec<_>>(),
        "process_memory": changes.process_memory.iter().map(|change| {
            let mut value = key_json(&change.change);
            value["process"] = json!(change.process);
            value
        }).collect::<Vec<_>>(),
        "events": changes.events.iter().map(|change| json!({
            "key": change.key,
            "before": event_json(change.before.as_ref()),
            "after": event_json(change.after.as_ref()),
        })).collect::<Vec<_>>(),
        "new_snapshot": changes.working_memory.is_some(),
    })
}

/// A re-run beside the turn it re-ran: each part of what they did, and whether it differs.
pub(crate) fn rerun_html(rerun: &Rerun) -> String {
    let (was, now) = (&rerun.recorded, &rerun.rerun);
    let verdict = if rerun.differs() {
        r#"<p id="rerun-verdict" class="flag bad">The re-run differs from the turn.</p>"#
    } else {
        r#"<p id="rerun-verdict" class="flag">The re-run did what the turn did.</p>"#
    };
    let mut out = format!(
        r#"<section id="rerun"><h2>Re-run of turn {n}</h2><p class="meta">With this build and model, on the state before the turn; nothing was stored.</p>{verdict}<table><thead><tr><th></th><th>The turn</th><th>The re-run</th></tr></thead><tbody>"#,
        n = rerun.turn
    );
    let rows: [(&str, Shown); 7] = [
        ("Ended", |o| end(&o.end)),
        ("Replies", |o| o.replies.join("\n")),
        ("Next process", |o| {
            o.process
                .as_ref()
                .map_or_else(|| "(unchanged)".to_owned(), |p| process(Some(p)))
        }),
        ("Soul memory", |o| {
            lines(
                o.soul_memory
                    .iter()
                    .map(|c| format!("{}: {}", c.key, key_change(c))),
            )
        }),
        ("Process memory", |o| {
            lines(
                o.process_memory
                    .iter()
                    .map(|c| format!("{}.{}: {}", c.process, c.change.key, key_change(&c.change))),
            )
        }),
        ("Scheduled", |o| lines(o.scheduled.iter().map(event))),
        ("Cancelled", |o| lines(o.cancelled.iter().map(event))),
    ];
    for (name, show) in rows {
        let (before, after) = (show(was), show(now));
        let _ = write!(
            out,
            r#"<tr class="{class}"><th>{name}</th><td class="recorded">{before}</td><td class="rerun">{after}</td></tr>"#,
            class = if before == after { "same" } else { "differs" },
            before = esc(&before),
            after = esc(&after),
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

/// One part of what a turn did, as text.
type Shown = fn(&TurnOutcome) -> String;

fn lines(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join("\n")
}

/// A re-run as the JSON API answers it: what the turn did and what the re-run did, each in the
/// form of the turn log's changes, and whether they differ.
pub(crate) fn rerun_json(rerun: &Rerun) -> Value {
    json!({
        "turn": rerun.turn,
        "differs": rerun.differs(),
        "recorded": outcome_json(&rerun.recorded),
        "rerun": outcome_json(&rerun.rerun),
    })
}

fn outcome_json(outcome: &TurnOutcome) -> Value {
    json!({
        "end": end_json(&outcome.end),
        "replies": outcome.replies,
        "process": process_json(outcome.process.as_ref()),
        "soul_memory": outcome.soul_memory.iter().map(key_json).collect::<Vec<_>>(),
        "process_memory": outcome.process_memory.iter().map(|change| {
            let mut value = key_json(&change.change);
            value["process"] = json!(change.process);
            value
        }).collect::<Vec<_>>(),
        "scheduled": outcome.scheduled.iter().map(|e| event_json(Some(e))).collect::<Vec<_>>(),
        "cancelled": outcome.cancelled.iter().map(|e| event_json(Some(e))).collect::<Vec<_>>(),
    })
}
