//! Starting turns: a begin (which stores the message), a resume, the start itself, and the lease
//! a running turn holds.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::{Map, Value, json};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use super::rows::{
    SessionRow, json_text, lease_live, parse_json, parse_ts, parse_uuid, session_from, session_row,
    ts,
};
use super::sessions::{history, load_session};
use crate::driver::Result;
use crate::types::{
    BeginOutcome, Inbound, InboundKind, Lease, PendingEvent, ProcessState, QueuedInbound,
    SessionId, TurnContext, TurnSettings, session_number,
};
use crate::{StoreError, wire};

/// What `public.soul_begin_turn` does in PostgreSQL; with `defer`, what it does for
/// [`crate::Store::enqueue_turn`].
pub(super) async fn begin(
    conn: &mut SqliteConnection,
    inbound: &Inbound,
    settings: &TurnSettings,
    now: DateTime<Utc>,
    defer: bool,
) -> Result<BeginOutcome> {
    settings.validate()?;
    let now_text = ts(now);
    let existing = sqlx::query("select * from user_sessions where phone_number = ? and line = ?")
        .bind(inbound.from.as_str())
        .bind(inbound.line.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    // The session's first turn is new, whichever call created the session.
    let (row, new_session) = match existing {
        Some(row) => (session_row(&row)?, row.try_get::<i64, _>("version")? == 0),
        None => {
            let id = Uuid::new_v4().to_string();
            let metadata =
                json!({ "session_number": 1, "last_session_started_at": ts(inbound.received_at) });
            sqlx::query(
                "insert into user_sessions (id, phone_number, line, assigned_persona,
                   first_contact_at, last_active_at, metadata) values (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(inbound.from.as_str())
            .bind(inbound.line.as_str())
            .bind(inbound.persona.as_ref().unwrap_or(&settings.persona))
            .bind(&now_text)
            .bind(&now_text)
            .bind(json_text(&metadata))
            .execute(&mut *conn)
            .await?;
            let row = SessionRow {
                id,
                lease_token: None,
                lease_expires_at: None,
                lease_inbound_id: None,
            };
            (row, true)
        }
    };

    if let Some(external_id) = &inbound.external_id {
        let seen: Option<String> = sqlx::query_scalar(
            "select id from inbound_messages where session_id = ? and external_id = ?",
        )
        .bind(&row.id)
        .bind(external_id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(seen) = seen {
            return Ok(BeginOutcome::Duplicate {
                inbound_id: parse_uuid(&seen)?,
            });
        }
    }

    if let Some(opted_out) = inbound.opt_out {
        sqlx::query(
            "update user_sessions set opted_out_at =
               case when ?1 then coalesce(opted_out_at, ?2) end
             where id = ?3",
        )
        .bind(opted_out)
        .bind(&now_text)
        .bind(&row.id)
        .execute(&mut *conn)
        .await?;
    }

    let inbound_id = Uuid::new_v4();
    sqlx::query(
        "insert into inbound_messages (id, session_id, external_id, body, received_at)
         values (?, ?, ?, ?, ?)",
    )
    .bind(inbound_id.to_string())
    .bind(&row.id)
    .bind(&inbound.external_id)
    .bind(&inbound.body)
    .bind(ts(inbound.received_at))
    .execute(&mut *conn)
    .await?;

    if lease_live(&row, &now_text) {
        return Ok(BeginOutcome::Queued { inbound_id });
    }
    if defer {
        return Ok(BeginOutcome::Waiting {
            inbound_id,
            session: SessionId(parse_uuid(&row.id)?),
        });
    }
    start_next(conn, &row.id, settings, now, new_session)
        .await?
        .map(BeginOutcome::Started)
        .ok_or_else(|| StoreError::Corrupt("the stored inbound message vanished".to_owned()).into())
}

/// What `public.soul_resume_turn` does in PostgreSQL: takes over a session whose lease is free or
/// expired and starts its oldest waiting message.
pub(super) async fn resume(
    conn: &mut SqliteConnection,
    session: SessionId,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<Option<Box<TurnContext>>> {
    let id = session.0.to_string();
    let row = sqlx::query("select * from user_sessions where id = ?")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    if lease_live(&session_row(&row)?, &ts(now)) {
        return Ok(None);
    }
    // No turn has started in it yet: what a deferred first message leaves.
    let new_session = row.try_get::<i64, _>("version")? == 0;
    start_next(conn, &id, settings, now, new_session).await
}

/// What a turn loads besides the session and its history, read in one statement: each
/// statement is a hand-off to the connection's thread and back, which costs more here than the
/// reading. Values stay the text they were stored as until parsed.
struct TurnMemories {
    soul: Map<String, Value>,
    process: Map<String, Value>,
    /// By process and key; a subprocess that holds none is absent.
    subprocesses: BTreeMap<String, Map<String, Value>>,
    snapshot: Option<String>,
    /// Soonest first, at most `pending_limit`.
    pending_events: Vec<PendingEvent>,
    /// Oldest first, at most `pending_limit`.
    waiting: Vec<QueuedInbound>,
}

async fn turn_memories(
    conn: &mut SqliteConnection,
    session: &str,
    process: &str,
    settings: &TurnSettings,
) -> Result<TurnMemories> {
    // The subprocess names go in as one JSON array, so the statement is the same for any number.
    // The waiting messages are the queued ones (this turn's own is started by now); `status <>
    // 'done'` repeats the condition of the queue's partial index, which SQLite uses only when the
    // query states it (without it, it reads every message of the session by the unique key).
    let row = sqlx::query(
        "select
           (select json_group_array(json_array(key, value)) from soul_memories
             where session_id = ?1) as soul,
           (select json_group_array(json_array(key, value)) from process_memories
             where session_id = ?1 and process_name = ?2) as process,
           (select json_group_array(json_array(process_name, key, value)) from process_memories
             where session_id = ?1 and process_name in (select value from json_each(?3)))
             as subprocesses,
           (select snapshot from working_memory_snapshots where session_id = ?1
             order by seq desc limit 1) as snapshot,
           (select json_group_array(json_array(id, key, kind, payload, due_at)
                      order by due_at, key)
              from (select id, key, kind, payload, due_at from scheduled_events
                     where session_id = ?1 order by due_at, key limit ?4)) as pending_events,
           (select json_group_array(json_array(id, external_id, body, received_at, event)
                      order by seq)
              from (select seq, id, external_id, body, received_at, event from inbound_messages
                     where session_id = ?1 and status <> 'done' and status = 'queued'
                     order by seq limit ?4)) as waiting",
    )
    .bind(session)
    .bind(process)
    .bind(json_text(&json!(settings.subprocesses)))
    .bind(i64::from(settings.pending_limit))
    .fetch_one(&mut *conn)
    .await?;
    let keyed = |column: &str| -> Result<Map<String, Value>> {
        let pairs: Vec<(String, String)> =
            serde_json::from_str(&row.try_get::<String, _>(column)?)?;
        pairs
            .into_iter()
            .map(|(key, value)| Ok((key, parse_json(&value)?)))
            .collect()
    };
    let mut by_process: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let triples: Vec<(String, String, String)> =
        serde_json::from_str(&row.try_get::<String, _>("subprocesses")?)?;
    for (name, key, value) in triples {
        by_process
            .entry(name)
            .or_default()
            .insert(key, parse_json(&value)?);
    }
    type EventRow = (String, String, String, String, String);
    let events: Vec<EventRow> = serde_json::from_str(&row.try_get::<String, _>("pending_events")?)?;
    let pending_events = events
        .into_iter()
        .map(|(id, key, kind, payload, due_at)| {
            Ok(PendingEvent {
                id: parse_uuid(&id)?,
                key,
                kind,
                payload: parse_json(&payload)?,
                due_at: parse_ts(&due_at)?,
            })
        })
        .collect::<Result<_>>()?;
    type WaitingRow = (String, Option<String>, String, String, Option<String>);
    let waiting: Vec<WaitingRow> = serde_json::from_str(&row.try_get::<String, _>("waiting")?)?;
    let waiting = waiting
        .into_iter()
        .map(|(id, external_id, body, received_at, event)| {
            Ok(QueuedInbound {
                id: parse_uuid(&id)?,
                external_id,
                body,
                received_at: parse_ts(&received_at)?,
                kind: inbound_kind(event.as_deref())?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(TurnMemories {
        soul: keyed("soul")?,
        process: keyed("process")?,
        subprocesses: by_process,
        snapshot: row.try_get("snapshot")?,
        pending_events,
        waiting,
    })
}

/// What a queue row answers, from its `event` column: a message, or the event stored there.
pub(super) fn inbound_kind(event: Option<&str>) -> Result<InboundKind> {
    let Some(event) = event else {
        return Ok(InboundKind::Message);
    };
    let mut event = parse_json(event)?;
    event
        .as_object_mut()
        .ok_or_else(|| StoreError::Corrupt("stored event is not an object".to_owned()))?
        .insert("type".to_owned(), json!("event"));
    Ok(serde_json::from_value(event)?)
}

/// What `public.soul_start_next` does in PostgreSQL; see there. The caller holds the write lock.
pub(super) async fn start_next(
    conn: &mut SqliteConnection,
    session: &str,
    settings: &TurnSettings,
    now: DateTime<Utc>,
    new_session: bool,
) -> Result<Option<Box<TurnContext>>> {
    settings.validate()?;
    let now_text = ts(now);
    let next = sqlx::query(
        "select * from inbound_messages where session_id = ? and status <> 'done'
         order by seq limit 1",
    )
    .bind(session)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(next) = next else {
        sqlx::query(
            "update user_sessions set lease_token = null, lease_expires_at = null,
               lease_inbound_id = null where id = ?",
        )
        .bind(session)
        .execute(&mut *conn)
        .await?;
        return Ok(None);
    };
    let inbound_id: String = next.try_get("id")?;
    let kind = inbound_kind(next.try_get::<Option<String>, _>("event")?.as_deref())?;
    let is_event = matches!(kind, InboundKind::Event { .. });
    let inbound = QueuedInbound {
        id: parse_uuid(&inbound_id)?,
        external_id: next.try_get("external_id")?,
        body: next.try_get("body")?,
        received_at: parse_ts(&next.try_get::<String, _>("received_at")?)?,
        kind,
    };
    let resumed = next.try_get::<String, _>("status")? == "started";
    let mut attempt: i64 = next.try_get("attempts")?;
    if resumed {
        // A re-start: the worker that started it stopped. Counted with the message, so that a
        // turn that keeps failing can be given up; a first start writes nothing for it.
        attempt = sqlx::query_scalar(
            "update inbound_messages set attempts = attempts + 1 where id = ? returning attempts",
        )
        .bind(&inbound_id)
        .fetch_one(&mut *conn)
        .await?;
    }

    let stored = load_session(conn, session).await?;
    let mut metadata = stored.metadata.clone();
    let mut reset = false;
    let mut cleared = None;
    if !resumed && is_event {
        // Not the person talking: no user message, and the timeout neither fires nor restarts.
        sqlx::query("update inbound_messages set status = 'started', started_at = ? where id = ?")
            .bind(&now_text)
            .bind(&inbound_id)
            .execute(&mut *conn)
            .await?;
    } else if !resumed {
        let last: Option<String> = sqlx::query_scalar(
            "select created_at from messages where session_id = ? and role = 'user'
             order by seq desc limit 1",
        )
        .bind(session)
        .fetch_optional(&mut *conn)
        .await?;
        let mut number = session_number(&metadata);
        if let Some(last) = last {
            reset = inbound.received_at - parse_ts(&last)? >= settings.session_timeout;
        }
        if !metadata.is_object() {
            metadata = json!({});
        }
        if reset {
            number += 1;
            metadata["last_session_started_at"] = json!(ts(inbound.received_at));
            // What the timeout clears, for the turn's record: undoing the turn restores it.
            cleared = Some(super::turn_log::ephemeral_state(conn, session).await?);
            for sql in [
                "delete from process_memories where session_id = ?",
                "delete from mental_process_state where session_id = ?",
                "delete from working_memory_snapshots where session_id = ?",
            ] {
                sqlx::query(sql).bind(session).execute(&mut *conn).await?;
            }
        }
        metadata["session_number"] = json!(number);
        // The stored user message has the inbound message's id, so the turn can tell it apart.
        sqlx::query(
            "insert into messages (id, session_id, message_sid, role, content, created_at)
             values (?, ?, ?, 'user', ?, ?)",
        )
        .bind(&inbound_id)
        .bind(session)
        .bind(&inbound.external_id)
        .bind(&inbound.body)
        .bind(ts(inbound.received_at))
        .execute(&mut *conn)
        .await?;
        sqlx::query("update inbound_messages set status = 'started', started_at = ? where id = ?")
            .bind(&now_text)
            .bind(&inbound_id)
            .execute(&mut *conn)
            .await?;
    }

    let lease = Lease {
        token: Uuid::new_v4(),
        expires_at: (now + settings.lease_for).trunc_subsecs(6),
    };
    let session_row = sqlx::query(
        "update user_sessions set metadata = ?, last_active_at = ?,
           total_messages = total_messages + ?, version = version + 1,
           lease_token = ?, lease_expires_at = ?, lease_inbound_id = ?
         where id = ? returning *",
    )
    .bind(json_text(&metadata))
    .bind(&now_text)
    .bind(if resumed || is_event { 0_i64 } else { 1 })
    .bind(lease.token.to_string())
    .bind(ts(lease.expires_at))
    .bind(&inbound_id)
    .bind(session)
    .fetch_one(&mut *conn)
    .await?;
    let session_now = session_from(&session_row)?;
    // The conversation's own soul: a soul no longer deployed has no processes here, so its
    // conversation goes on in the default soul from its initial process (corrected below).
    let settings = &*settings.for_persona(&session_now.persona);

    let state = sqlx::query("select * from mental_process_state where session_id = ?")
        .bind(session)
        .fetch_optional(&mut *conn)
        .await?;
    let mut corrected_from = None;
    let process = match state {
        Some(row) => {
            let name: String = row.try_get("process_name")?;
            let stored = ProcessState {
                name: name.clone(),
                params: parse_json(&row.try_get::<String, _>("params")?)?,
                invocation_count: u32::try_from(row.try_get::<i64, _>("invocation_count")?)
                    .unwrap_or(u32::MAX),
                previous: row.try_get("previous_process")?,
            };
            if settings.processes.contains(&name) {
                stored
            } else {
                sqlx::query(
                    "update mental_process_state set process_name = ?, updated_at = ?
                     where session_id = ?",
                )
                .bind(&settings.processes.initial)
                .bind(&now_text)
                .bind(session)
                .execute(&mut *conn)
                .await?;
                corrected_from = Some(name);
                ProcessState {
                    name: settings.processes.initial.clone(),
                    ..stored
                }
            }
        }
        None => ProcessState::new(settings.processes.initial.clone(), json!({})),
    };

    let memories = turn_memories(conn, session, &process.name, settings).await?;
    let snapshot = match memories.snapshot {
        Some(text) => wire::read_snapshot(session_now.id, parse_json(&text)?),
        None => None,
    };
    // With a readable snapshot the working memory already holds the conversation.
    let history = match snapshot {
        Some(_) => Vec::new(),
        None => {
            history(
                conn,
                session,
                settings.history_region.as_deref(),
                settings.history_limit,
            )
            .await?
        }
    };
    let context = TurnContext {
        session: session_now,
        inbound,
        lease,
        new_session,
        session_reset: reset,
        cleared,
        resumed,
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        process,
        corrected_from,
        soul_memories: memories.soul,
        process_memories: memories.process,
        subprocess_memories: memories.subprocesses,
        history,
        snapshot,
        pending_events: memories.pending_events,
        waiting: memories.waiting,
        history_missing: false,
    };
    wire::warn_if_corrected(&context);
    Ok(Some(Box::new(context)))
}

/// Extends a running turn's lease; `LeaseLost` once another worker has taken the session over.
pub(super) async fn renew_lease(
    conn: &mut SqliteConnection,
    session: SessionId,
    lease: Lease,
    lease_for: Duration,
    now: DateTime<Utc>,
) -> Result<Lease> {
    let expires_at = (now + lease_for).trunc_subsecs(6);
    let done = sqlx::query(
        "update user_sessions set lease_expires_at = ? where id = ? and lease_token = ?",
    )
    .bind(ts(expires_at))
    .bind(session.0.to_string())
    .bind(lease.token.to_string())
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::LeaseLost.into());
    }
    Ok(Lease {
        token: lease.token,
        expires_at,
    })
}

/// Sessions with messages not done and no live lease: work a crashed worker left behind, or an
/// enqueued message nobody resumed.
pub(super) async fn stalled_sessions(
    pool: &SqlitePool,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<SessionId>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "select s.id from user_sessions s
         where (s.lease_token is null or s.lease_expires_at <= ?)
           and exists (select 1 from inbound_messages i
                       where i.session_id = s.id and i.status <> 'done')
         order by s.last_active_at limit ?",
    )
    .bind(ts(now))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    ids.iter()
        .map(|id| Ok(SessionId(parse_uuid(id)?)))
        .collect()
}
