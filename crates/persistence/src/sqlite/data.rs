//! What a person or an operator asks of their data: export, erasure and retention.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};
use soul_engine::Memory;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use uuid::Uuid;

use super::rows::{lease_live, parse_json, parse_ts, session_from, session_row, ts};
use super::sessions::history;
use crate::driver::Result;
use crate::types::{Address, Erasure, Session};

/// Everything stored about `address`, as `public.soul_export_user` answers: one entry per
/// conversation (per line), by line; `None` if unknown.
pub(super) async fn export(
    conn: &mut SqliteConnection,
    address: &Address,
) -> Result<Option<Value>> {
    let rows = sqlx::query("select * from user_sessions where phone_number = ? order by line")
        .bind(address.as_str())
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut conversations = Vec::with_capacity(rows.len());
    for row in &rows {
        conversations.push(export_conversation(conn, row).await?);
    }
    Ok(Some(Value::Array(conversations)))
}

/// One conversation's part of an export.
async fn export_conversation(conn: &mut SqliteConnection, row: &SqliteRow) -> Result<Value> {
    use ColumnKind::{Boolean, Integer, Json, Text};
    let session = session_from(row)?;
    let id = session.id.0.to_string();
    let messages: Vec<Memory> = history(conn, &id, None, 0).await?;
    let process_state = sqlx::query("select * from mental_process_state where session_id = ?")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    let process_state = match process_state {
        Some(row) => json!({
            "name": row.try_get::<String, _>("process_name")?,
            "params": parse_json(&row.try_get::<String, _>("params")?)?,
            "invocation_count": row.try_get::<i64, _>("invocation_count")?,
            "previous": row.try_get::<Option<String>, _>("previous_process")?,
            "updated_at": row.try_get::<String, _>("updated_at")?,
        }),
        None => Value::Null,
    };
    let opted_out_at = row
        .try_get::<Option<String>, _>("opted_out_at")?
        .as_deref()
        .map(parse_ts)
        .transpose()?;
    let mut session_json = serde_json::to_value(SessionJson(&session))?;
    session_json["opted_out_at"] = serde_json::to_value(opted_out_at)?;
    Ok(json!({
        "session": session_json,
        "messages": with_message_sids(conn, &id, serde_json::to_value(&messages)?).await?,
        "soul_memories": rows_as_json(conn,
            "select key, value, updated_at from soul_memories where session_id = ? order by key",
            &id, &[("key", Text), ("value", Json), ("updated_at", Text)]).await?,
        "process_memories": rows_as_json(conn,
            "select process_name as process, key, value, updated_at from process_memories
             where session_id = ? order by process_name, key",
            &id, &[("process", Text), ("key", Text), ("value", Json), ("updated_at", Text)]).await?,
        "mental_process_state": process_state,
        "working_memory_snapshots": rows_as_json(conn,
            "select snapshot, created_at from working_memory_snapshots where session_id = ?
             order by seq",
            &id, &[("snapshot", Json), ("created_at", Text)]).await?,
        "inbound_messages": rows_as_json(conn,
            "select id, external_id, body, received_at, status, attempts, started_at, finished_at,
               kind, event, turn, rewound, record
             from inbound_messages where session_id = ? order by seq",
            &id, &[("id", Text), ("external_id", Text), ("body", Text), ("received_at", Text),
                ("status", Text), ("attempts", Integer), ("started_at", Text),
                ("finished_at", Text), ("kind", Text), ("event", Json), ("turn", Integer),
                ("rewound", Boolean), ("record", Json)])
            .await?,
        "outbound_messages": rows_as_json(conn,
            "select id, body, status, claimed_until, provider_id, error, created_at, updated_at
             from outbound_messages where session_id = ? order by seq",
            &id, &[("id", Text), ("body", Text), ("status", Text), ("claimed_until", Text),
                ("provider_id", Text), ("error", Text), ("created_at", Text),
                ("updated_at", Text)]).await?,
        "scheduled_events": rows_as_json(conn,
            "select id, key, kind, payload, due_at, claimed_until, created_at
             from scheduled_events where session_id = ? order by key",
            &id, &[("id", Text), ("key", Text), ("kind", Text), ("payload", Json),
                ("due_at", Text), ("claimed_until", Text), ("created_at", Text)]).await?,
    }))
}

/// `messages` (the session's conversation, as the history reads it) as
/// `public.soul_export_user` writes them: with each message's `message_sid`, and with the
/// fields a memory's JSON leaves out when empty.
async fn with_message_sids(
    conn: &mut SqliteConnection,
    session: &str,
    mut messages: Value,
) -> Result<Value> {
    let sids: HashMap<String, Option<String>> =
        sqlx::query_as("select id, message_sid from messages where session_id = ?")
            .bind(session)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    for message in messages.as_array_mut().into_iter().flatten() {
        let sid = message["id"]
            .as_str()
            .and_then(|id| sids.get(id).cloned().flatten());
        message["message_sid"] = sid.map_or(Value::Null, Value::String);
        if let Some(fields) = message.as_object_mut() {
            for (field, empty) in [
                ("name", Value::Null),
                ("region", Value::Null),
                ("metadata", json!({})),
            ] {
                fields.entry(field).or_insert(empty);
            }
        }
    }
    Ok(messages)
}

async fn rows_as_json(
    conn: &mut SqliteConnection,
    sql: &'static str,
    session: &str,
    columns: &[(&str, ColumnKind)],
) -> Result<Value> {
    let rows = sqlx::query(sql).bind(session).fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut object = Map::new();
        for (column, kind) in columns {
            let value = match kind {
                ColumnKind::Integer => row
                    .try_get::<Option<i64>, _>(*column)?
                    .map_or(Value::Null, Value::from),
                ColumnKind::Boolean => row
                    .try_get::<Option<bool>, _>(*column)?
                    .map_or(Value::Null, Value::Bool),
                ColumnKind::Json => match row.try_get::<Option<String>, _>(*column)? {
                    Some(text) => parse_json(&text)?,
                    None => Value::Null,
                },
                ColumnKind::Text => row
                    .try_get::<Option<String>, _>(*column)?
                    .map_or(Value::Null, Value::String),
            };
            object.insert((*column).to_owned(), value);
        }
        out.push(Value::Object(object));
    }
    Ok(Value::Array(out))
}

#[derive(Clone, Copy)]
enum ColumnKind {
    Text,
    Integer,
    Boolean,
    Json,
}

/// The session as `public.soul_session_json` writes it.
struct SessionJson<'a>(&'a Session);

impl serde::Serialize for SessionJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        json!({
            "id": s.id,
            "address": s.address,
            "line": s.line,
            "persona": s.persona,
            "first_contact_at": s.first_contact_at,
            "last_active_at": s.last_active_at,
            "total_messages": s.total_messages,
            "metadata": s.metadata,
            "opted_out": s.opted_out,
            "version": s.version,
        })
        .serialize(serializer)
    }
}

/// Retention, as `public.soul_delete_old_messages` does it: the messages older than `days`
/// before `now`, of `address` or of everyone, counted; inbound messages whose turn is done,
/// replies no longer pending and turn records, as old; and the snapshot, process state and process memories of
/// the sessions with no turn since then.
pub(super) async fn delete_messages_older_than(
    conn: &mut SqliteConnection,
    address: Option<&Address>,
    days: u32,
    now: DateTime<Utc>,
) -> Result<u64> {
    let before = ts(now - Duration::days(i64::from(days)));
    let address = address.map(Address::as_str);
    let mut deleted = 0;
    for (index, statement) in [
        "delete from messages where created_at < ?1 and session_id in
           (select id from user_sessions where ?2 is null or phone_number = ?2)",
        "delete from inbound_messages where received_at < ?1 and status = 'done' and session_id in
           (select id from user_sessions where ?2 is null or phone_number = ?2)",
        "delete from outbound_messages where created_at < ?1 and status <> 'pending'
           and session_id in (select id from user_sessions where ?2 is null or phone_number = ?2)",
        "delete from working_memory_snapshots where session_id in (select id from user_sessions
           where last_active_at < ?1 and (?2 is null or phone_number = ?2))",
        "delete from mental_process_state where session_id in (select id from user_sessions
           where last_active_at < ?1 and (?2 is null or phone_number = ?2))",
        "delete from process_memories where session_id in (select id from user_sessions
           where last_active_at < ?1 and (?2 is null or phone_number = ?2))",
    ]
    .into_iter()
    .enumerate()
    {
        let done = sqlx::query(statement)
            .bind(&before)
            .bind(address)
            .execute(&mut *conn)
            .await?;
        // The count is of the conversation's messages, the first statement's.
        if index == 0 {
            deleted = done.rows_affected();
        }
    }
    Ok(deleted)
}

/// Erases `address`, as `public.soul_erase_user` does: refused while a turn of any of its
/// conversations runs at `now`; otherwise every conversation of the number goes, on every
/// line, and every other table with them, and each conversation the person opted out of keeps
/// a session row with the number, the line and the opt-out time alone, under a new id and at
/// version 0.
pub(super) async fn erase_user(
    conn: &mut SqliteConnection,
    address: &Address,
    now: DateTime<Utc>,
) -> Result<Erasure> {
    let rows = sqlx::query("select * from user_sessions where phone_number = ? order by line")
        .bind(address.as_str())
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(Erasure::Unknown);
    }
    let now_text = ts(now);
    let mut kept = Vec::new();
    for row in &rows {
        let session = session_row(row)?;
        if lease_live(&session, &now_text) {
            let until = session.lease_expires_at.as_deref().unwrap_or_default();
            return Ok(Erasure::TurnRunning {
                lease_expires_at: parse_ts(until)?,
            });
        }
        if let Some(opted_out_at) = row.try_get::<Option<String>, _>("opted_out_at")? {
            let line: String = row.try_get("line")?;
            let persona: String = row.try_get("assigned_persona")?;
            kept.push((line, persona, opted_out_at));
        }
    }
    sqlx::query("delete from user_sessions where phone_number = ?")
        .bind(address.as_str())
        .execute(&mut *conn)
        .await?;
    for (line, persona, opted_out_at) in &kept {
        sqlx::query(
            "insert into user_sessions (id, phone_number, line, assigned_persona,
               first_contact_at, last_active_at, opted_out_at) values (?1, ?2, ?3, ?4, ?5, ?5, ?5)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(address.as_str())
        .bind(line)
        .bind(persona)
        .bind(opted_out_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Erasure::Erased {
        opt_out_kept: !kept.is_empty(),
    })
}
