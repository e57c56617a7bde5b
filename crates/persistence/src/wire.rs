//! The JSON the SQL functions in `migrations/` take and return. Shared by every store that runs
//! the turn contract in PostgreSQL (directly, or over Supabase's REST API).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use soul_engine::{Memory, WorkingMemory};
use uuid::Uuid;

use crate::turn_log::{Restore, Rewind};
use crate::types::{
    Address, BeginOutcome, CommitOutcome, DeliveryUpdate, Erasure, EventOutcome, Inbound, Lease,
    Line, OutboundRef, OutboxAtCommit, PendingEvent, ProcessState, QueuedInbound, ScheduledEvent,
    Session, SessionId, SubprocessCommit, SubprocessOutcome, TurnCommit, TurnContext, TurnSettings,
};
use crate::{Result, Store, StoreError};

fn millis(duration: Duration) -> i64 {
    duration.num_milliseconds()
}

/// Until when a commit at `now` claims its replies: in whole milliseconds, as the SQL functions
/// receive the duration.
pub(crate) fn reply_claim_until(settings: &TurnSettings, now: DateTime<Utc>) -> DateTime<Utc> {
    now + Duration::milliseconds(millis(settings.reply_claim_for))
}

/// `soul_renew_lease`'s request.
pub(crate) fn renew_request(
    session: SessionId,
    lease: Lease,
    lease_for: Duration,
    now: DateTime<Utc>,
) -> Value {
    json!({ "session_id": session, "lease_token": lease.token, "lease_ms": millis(lease_for), "now": now })
}

/// `soul_resume_turn`'s request.
pub(crate) fn resume_request(
    session: SessionId,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Value> {
    Ok(json!({ "session_id": session, "now": now, "settings": self::settings(settings)? }))
}

/// `soul_stalled_sessions`' request.
pub(crate) fn stalled_request(now: DateTime<Utc>, limit: u32) -> Value {
    json!({ "now": now, "limit": limit })
}

/// `soul_claim_pending_deliveries`' request.
pub(crate) fn claim_pending_request(
    now: DateTime<Utc>,
    claim_until: DateTime<Utc>,
    limit: u32,
) -> Value {
    json!({ "now": now, "claim_until": claim_until, "limit": limit })
}

/// `soul_claim_session_outbox`'s request.
pub(crate) fn claim_session_outbox_request(
    session: SessionId,
    through: Uuid,
    now: DateTime<Utc>,
    claim_until: DateTime<Utc>,
) -> Value {
    json!({ "session_id": session, "through": through, "now": now, "claim_until": claim_until })
}

/// `soul_set_opt_out`'s request.
pub(crate) fn opt_out_request(address: &Address, opted_out: bool, now: DateTime<Utc>) -> Value {
    json!({ "address": address.as_str(), "opted_out": opted_out, "now": now })
}

/// `soul_claim_due_events`' request.
pub(crate) fn claim_request(now: DateTime<Utc>, limit: u32, claim_for: Duration) -> Value {
    json!({ "now": now, "limit": limit, "claim_ms": millis(claim_for) })
}

/// `soul_complete_event`'s request: the `due_at` it was claimed with, so that a turn that
/// rescheduled the key meanwhile keeps its event.
pub(crate) fn complete_event_request(event: &ScheduledEvent) -> Value {
    json!({ "id": event.id, "due_at": event.due_at })
}

/// `soul_delete_old_messages`' request.
pub(crate) fn delete_old_request(
    address: Option<&Address>,
    days: u32,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "address": address.map(Address::as_str),
        "before": now - Duration::days(i64::from(days)),
    })
}

/// `soul_delete_old_messages`' answer: how many messages went.
pub(crate) fn deleted_count(answer: &Value) -> Result<u64> {
    answer
        .get("deleted")
        .and_then(Value::as_u64)
        .ok_or_else(|| StoreError::Corrupt("answer without `deleted`".to_owned()))
}

pub(crate) fn settings(settings: &TurnSettings) -> Result<Value> {
    settings.validate()?;
    Ok(json!({
        "persona": settings.persona,
        "known_processes": settings.processes.known,
        "initial_process": settings.processes.initial,
        "subprocesses": settings.subprocesses,
        "session_timeout_ms": millis(settings.session_timeout),
        "lease_ms": millis(settings.lease_for),
        "reply_claim_ms": millis(settings.reply_claim_for),
        "history_limit": settings.history_limit,
        "history_region": settings.history_region,
        "pending_limit": settings.pending_limit,
        "souls": settings
            .souls
            .iter()
            .map(|(persona, soul)| {
                let processes = json!({
                    "known_processes": soul.processes.known,
                    "initial_process": soul.processes.initial,
                    "subprocesses": soul.subprocesses,
                });
                (persona.clone(), processes)
            })
            .collect::<serde_json::Map<_, _>>(),
    }))
}

pub(crate) fn begin_request(
    inbound: &Inbound,
    turn: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Value> {
    Ok(json!({
        "address": inbound.from.as_str(),
        "line": inbound.line.as_str(),
        "persona": inbound.persona,
        "body": inbound.body,
        "external_id": inbound.external_id,
        "received_at": inbound.received_at,
        "opt_out": inbound.opt_out,
        "now": now,
        "settings": settings(turn)?,
    }))
}

/// `soul_begin_turn`'s request for [`crate::Store::enqueue_turn`]: stored, not started.
pub(crate) fn enqueue_request(
    inbound: &Inbound,
    turn: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Value> {
    let mut request = begin_request(inbound, turn, now)?;
    request["defer"] = Value::Bool(true);
    Ok(request)
}

pub(crate) fn begin_event_request(
    event: &ScheduledEvent,
    turn: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Value> {
    Ok(json!({
        "event_id": event.id,
        "session_id": event.session_id,
        "due_at": event.due_at,
        "now": now,
        "settings": settings(turn)?,
    }))
}

pub(crate) fn commit_request(
    commit: &TurnCommit,
    turn: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Value> {
    Ok(json!({
        "session_id": commit.session_id,
        "lease_token": commit.lease_token,
        "replies": commit.replies,
        "changes": serde_json::to_value(&commit.changes)?,
        "record": stored_record(commit)?,
        "now": now,
        "settings": settings(turn)?,
    }))
}

/// The record a commit stores, as compact JSON text: the driver's, with the commit's own reply
/// ids.
pub(crate) fn stored_record(commit: &TurnCommit) -> Result<String> {
    let mut record = serde_json::to_value(&commit.record)?;
    if let Some(fields) = record.as_object_mut() {
        if commit.replies.is_empty() {
            fields.remove("r");
        } else {
            let ids = commit
                .replies
                .iter()
                .map(|reply| json!(reply.id.0))
                .collect();
            fields.insert("r".to_owned(), Value::Array(ids));
        }
        // A step's answer that is a reply's text (a step that speaks) is stored once, with the
        // reply: its place among the replies instead (`turn_log::restore_spoken_answers`).
        if let Some(steps) = fields.get_mut("s").and_then(Value::as_array_mut) {
            for step in steps.iter_mut().filter_map(Value::as_object_mut) {
                let spoken = step.get("a").and_then(Value::as_str).and_then(|answer| {
                    commit
                        .replies
                        .iter()
                        .position(|reply| reply.content == answer)
                });
                if let Some(place) = spoken {
                    step.remove("a");
                    step.insert("ra".to_owned(), json!(place));
                }
            }
        }
    }
    Ok(record.to_string())
}

pub(crate) fn subprocess_request(
    commit: &SubprocessCommit,
    turn: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Value> {
    Ok(json!({
        "session_id": commit.session_id,
        "version": commit.version,
        "inbound_id": commit.inbound_id,
        "changes": serde_json::to_value(&commit.changes)?,
        "record": serde_json::to_string(&commit.record)?,
        "now": now,
        "settings": settings(turn)?,
    }))
}

pub(crate) fn delivery_request(update: &DeliveryUpdate) -> Value {
    let (id, provider_id) = match &update.target {
        OutboundRef::Id(id) => (Some(*id), update.provider_id.clone()),
        OutboundRef::ProviderId(provider_id) => (None, Some(provider_id.clone())),
    };
    json!({
        "id": id,
        "provider_id": provider_id,
        "status": update.status.as_str(),
        "error": update.error,
        "now": update.at,
    })
}

/// `soul_update_deliveries`' request.
pub(crate) fn deliveries_request(updates: &[DeliveryUpdate]) -> Value {
    json!({ "updates": updates.iter().map(delivery_request).collect::<Vec<_>>() })
}

/// `soul_update_deliveries`' answer: one flag per update.
pub(crate) fn applied_flags(value: &Value, updates: usize) -> Result<Vec<bool>> {
    let flags = value
        .get("applied")
        .and_then(Value::as_array)
        .ok_or_else(|| StoreError::Corrupt("answer without `applied`".to_owned()))?;
    if flags.len() != updates {
        return Err(StoreError::Corrupt(format!(
            "{} flags for {updates} delivery updates",
            flags.len()
        )));
    }
    flags
        .iter()
        .map(|flag| {
            flag.as_bool().ok_or_else(|| {
                StoreError::Corrupt("a delivery flag that is not a boolean".to_owned())
            })
        })
        .collect()
}

/// `soul_session`'s request: a number's conversation on a line.
pub(crate) fn session_request(address: &Address, line: &Line) -> Value {
    json!({ "address": address.as_str(), "line": line.as_str() })
}

pub(crate) fn address_request(address: &Address) -> Value {
    json!({ "address": address.as_str() })
}

/// `soul_erase_user`'s request.
pub(crate) fn erase_request(address: &Address, now: DateTime<Utc>) -> Value {
    json!({ "address": address.as_str(), "now": now })
}

/// `soul_erase_user`'s answer.
pub(crate) fn erasure(value: &Value) -> Result<Erasure> {
    match outcome(value)? {
        "unknown" => Ok(Erasure::Unknown),
        "erased" => Ok(Erasure::Erased {
            opt_out_kept: flag(value, "opt_out_kept")?,
        }),
        "turn_running" => {
            let lease_expires_at = value
                .get("lease_expires_at")
                .cloned()
                .map(serde_json::from_value::<DateTime<Utc>>)
                .transpose()?
                .ok_or_else(|| {
                    StoreError::Corrupt("turn_running without `lease_expires_at`".to_owned())
                })?;
            Ok(Erasure::TurnRunning { lease_expires_at })
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown erase outcome {other:?}"
        ))),
    }
}

/// `soul_turn_log`'s request.
pub(crate) fn turn_log_request(session: SessionId, from: u32, to: Option<u32>) -> Value {
    json!({ "session_id": session, "from": from, "to": to })
}

/// `soul_restore_session`'s request.
pub(crate) fn restore_request(restore: &Restore, now: DateTime<Utc>) -> Result<Value> {
    Ok(json!({
        "session_id": restore.session,
        "version": restore.version,
        "after_turn": restore.after_turn,
        "state": serde_json::to_value(&restore.state)?,
        "now": now,
    }))
}

/// `soul_restore_session`'s answer.
pub(crate) fn rewind(value: &Value) -> Result<Rewind> {
    match outcome(value)? {
        "rewound" => Ok(Rewind::Rewound {
            rewound: value
                .get("rewound")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| StoreError::Corrupt("rewound without a count".to_owned()))?,
        }),
        "unknown_turn" => Ok(Rewind::UnknownTurn),
        "changed" => Ok(Rewind::Changed),
        "turn_running" => {
            let lease_expires_at = value
                .get("lease_expires_at")
                .cloned()
                .map(serde_json::from_value::<DateTime<Utc>>)
                .transpose()?
                .ok_or_else(|| {
                    StoreError::Corrupt("turn_running without `lease_expires_at`".to_owned())
                })?;
            Ok(Rewind::TurnRunning { lease_expires_at })
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown restore outcome {other:?}"
        ))),
    }
}

/// `soul_history`'s request.
pub(crate) fn history_request(address: &Address, region: Option<&str>, limit: u32) -> Value {
    json!({ "address": address.as_str(), "region": region, "limit": limit })
}

/// An answer that is a list; `null` (a function that found nothing) is empty.
pub(crate) fn list<T: serde::de::DeserializeOwned>(value: Value) -> Result<Vec<T>> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_value(value)?)
}

#[derive(Deserialize)]
struct TurnWire {
    session: Session,
    inbound: QueuedInbound,
    lease: Lease,
    new_session: bool,
    session_reset: bool,
    cleared: Option<crate::turn_log::ClearedState>,
    resumed: bool,
    attempt: u32,
    process: ProcessState,
    corrected_from: Option<String>,
    soul_memories: serde_json::Map<String, Value>,
    process_memories: serde_json::Map<String, Value>,
    subprocess_memories: BTreeMap<String, serde_json::Map<String, Value>>,
    history: Vec<Memory>,
    snapshot: Option<Value>,
    pending_events: Vec<PendingEvent>,
    waiting: Vec<QueuedInbound>,
}

/// Reads a started turn; `null` (nothing waiting) is `None`.
pub(crate) fn turn(value: Value) -> Result<Option<Box<TurnContext>>> {
    if value.is_null() {
        return Ok(None);
    }
    let wire: TurnWire = serde_json::from_value(value)?;
    let stored_snapshot = wire.snapshot.is_some();
    let snapshot = wire
        .snapshot
        .and_then(|json| read_snapshot(wire.session.id, json));
    let context = TurnContext {
        session: wire.session,
        inbound: wire.inbound,
        lease: wire.lease,
        new_session: wire.new_session,
        session_reset: wire.session_reset,
        cleared: wire.cleared,
        resumed: wire.resumed,
        attempt: wire.attempt,
        process: wire.process,
        corrected_from: wire.corrected_from,
        soul_memories: wire.soul_memories,
        process_memories: wire.process_memories,
        subprocess_memories: wire.subprocess_memories,
        history: wire.history,
        history_missing: stored_snapshot && snapshot.is_none(),
        snapshot,
        pending_events: wire.pending_events,
        waiting: wire.waiting,
    };
    warn_if_corrected(&context);
    Ok(Some(Box::new(context)))
}

/// Loads the history of a started turn that came without it (see
/// [`TurnContext::history_missing`]): one more round trip, only when a stored snapshot did not
/// parse.
pub(crate) async fn load_missing_history<S: Store + ?Sized>(
    store: &S,
    context: Option<&mut TurnContext>,
    settings: &TurnSettings,
) -> Result<()> {
    if let Some(context) = context.filter(|context| context.history_missing) {
        context.history = store
            .history(
                &context.session.address,
                settings.history_region.as_deref(),
                settings.history_limit,
            )
            .await?;
        context.history_missing = false;
    }
    Ok(())
}

/// [`load_missing_history`] for the turn a commit handed over. The commit itself is stored by
/// then and its replies must go out, so a failure here does not fail it: the next turn, without
/// the history it needs, is let go and runs again once its lease expires.
pub(crate) async fn load_next_turns_history<S: Store + ?Sized>(
    store: &S,
    outcome: &mut CommitOutcome,
    settings: &TurnSettings,
) {
    if let Err(error) = load_missing_history(store, outcome.next.as_deref_mut(), settings).await {
        // The error's text is not logged: a database's may quote the values it refused.
        tracing::warn!(
            retryable = error.is_retryable(),
            "could not load the history of the turn a commit handed over; it runs when its lease expires"
        );
        outcome.next = None;
    }
}

/// The turn a begin started, if it started one.
pub(crate) fn begun(outcome: &mut BeginOutcome) -> Option<&mut TurnContext> {
    match outcome {
        BeginOutcome::Started(context) => Some(context),
        _ => None,
    }
}

/// The turn an event's begin started, if it started one.
pub(crate) fn event_begun(outcome: &mut EventOutcome) -> Option<&mut TurnContext> {
    match outcome {
        EventOutcome::Started(context) => Some(context),
        _ => None,
    }
}

/// A snapshot that no longer parses is dropped rather than failing the turn: the turn rebuilds
/// its working memory from the history (see [`load_missing_history`]), and the next commit
/// writes a fresh snapshot.
pub(crate) fn read_snapshot(session: SessionId, json: Value) -> Option<WorkingMemory> {
    match WorkingMemory::from_json(json) {
        Ok(memory) => Some(memory),
        Err(error) => {
            tracing::warn!(%session, %error, "stored working-memory snapshot is unreadable; ignored");
            None
        }
    }
}

pub(crate) fn warn_if_corrected(context: &TurnContext) {
    if let Some(stored) = &context.corrected_from {
        tracing::warn!(
            session = %context.session.id,
            stored = %stored,
            corrected_to = %context.process.name,
            "stored process state names an unregistered process; corrected to the initial process"
        );
    }
}

fn outcome(value: &Value) -> Result<&str> {
    value
        .get("outcome")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Corrupt("answer without an outcome".to_owned()))
}

fn uuid_field(value: &Value, field: &str) -> Result<Uuid> {
    value
        .get(field)
        .and_then(Value::as_str)
        .and_then(|text| Uuid::parse_str(text).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("answer without a valid `{field}`")))
}

pub(crate) fn begin_outcome(mut value: Value) -> Result<BeginOutcome> {
    match outcome(&value)? {
        "duplicate" => Ok(BeginOutcome::Duplicate {
            inbound_id: uuid_field(&value, "inbound_id")?,
        }),
        "queued" => Ok(BeginOutcome::Queued {
            inbound_id: uuid_field(&value, "inbound_id")?,
        }),
        "waiting" => Ok(BeginOutcome::Waiting {
            inbound_id: uuid_field(&value, "inbound_id")?,
            session: SessionId(uuid_field(&value, "session_id")?),
        }),
        "started" => turn(value["turn"].take())?
            .map(BeginOutcome::Started)
            .ok_or_else(|| StoreError::Corrupt("started without a turn".to_owned())),
        other => Err(StoreError::Corrupt(format!(
            "unknown begin outcome {other:?}"
        ))),
    }
}

pub(crate) fn event_outcome(mut value: Value) -> Result<EventOutcome> {
    match outcome(&value)? {
        "duplicate" => Ok(EventOutcome::Duplicate {
            inbound_id: uuid_field(&value, "inbound_id")?,
        }),
        "queued" => Ok(EventOutcome::Queued {
            inbound_id: uuid_field(&value, "inbound_id")?,
        }),
        "started" => turn(value["turn"].take())?
            .map(EventOutcome::Started)
            .ok_or_else(|| StoreError::Corrupt("started without a turn".to_owned())),
        "opted_out" => Ok(EventOutcome::OptedOut),
        "gone" => Ok(EventOutcome::Gone),
        other => Err(StoreError::Corrupt(format!(
            "unknown event begin outcome {other:?}"
        ))),
    }
}

pub(crate) fn commit_outcome(
    mut value: Value,
    commit: &TurnCommit,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<CommitOutcome> {
    match outcome(&value)? {
        "committed" => Ok(CommitOutcome {
            outbound: commit.replies.iter().map(|reply| reply.id.0).collect(),
            outbox: OutboxAtCommit {
                opted_out: flag(&value, "opted_out")?,
                earlier_pending: flag(&value, "earlier_pending")?,
                claimed_until: reply_claim_until(settings, now),
            },
            next: turn(value["next"].take())?,
        }),
        "lease_lost" => Err(StoreError::LeaseLost),
        other => Err(StoreError::Corrupt(format!(
            "unknown commit outcome {other:?}"
        ))),
    }
}

pub(crate) fn subprocess_outcome(value: &Value) -> Result<SubprocessOutcome> {
    match outcome(value)? {
        "applied" => Ok(SubprocessOutcome::Applied),
        "stale" => Ok(SubprocessOutcome::Stale),
        other => Err(StoreError::Corrupt(format!(
            "unknown subprocess outcome {other:?}"
        ))),
    }
}

pub(crate) fn resume_outcome(mut value: Value) -> Result<Option<Box<TurnContext>>> {
    match outcome(&value)? {
        "started" => turn(value["turn"].take()),
        "busy" | "idle" => Ok(None),
        other => Err(StoreError::Corrupt(format!(
            "unknown resume outcome {other:?}"
        ))),
    }
}

pub(crate) fn flag(value: &Value, field: &str) -> Result<bool> {
    value
        .get(field)
        .and_then(Value::as_bool)
        .ok_or_else(|| StoreError::Corrupt(format!("answer without `{field}`")))
}

pub(crate) fn renew_outcome(value: Value, lease: Lease) -> Result<Lease> {
    match outcome(&value)? {
        "renewed" => {
            let expires_at = value
                .get("expires_at")
                .cloned()
                .map(serde_json::from_value::<DateTime<Utc>>)
                .transpose()?
                .ok_or_else(|| StoreError::Corrupt("renewed without `expires_at`".to_owned()))?;
            Ok(Lease {
                token: lease.token,
                expires_at,
            })
        }
        "lease_lost" => Err(StoreError::LeaseLost),
        other => Err(StoreError::Corrupt(format!(
            "unknown renew outcome {other:?}"
        ))),
    }
}
