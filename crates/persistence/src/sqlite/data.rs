//! What a person or an operator asks of their data: export, erasure and retention.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value, json};
use soul_engine::Memory;
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::rows::{parse_json, session_from, ts};
use super::sessions::history;
use crate::driver::Result;
use crate::types::{Address, Session};

/// Everything stored about `address`, as `public.soul_export_user` answers; `None` if unknown.
pub(super) async fn export(
    conn: &mut SqliteConnection,
    address: &Address,
) -> Result<Option<Value>> {
    use ColumnKind::{Json, Text};
    let row = sqlx::query("select * from user_sessions where phone_number = ?")
        .bind(address.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let session = session_from(&row)?;
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
    Ok(Some(json!({
        "session": serde_json::to_value(SessionJson(&session))?,
        "messages": serde_json::to_value(&messages)?,
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
            "select external_id, body, received_at, status, kind, event from inbound_messages
             where session_id = ? order by seq",
            &id, &[("external_id", Text), ("body", Text), ("received_at", Text), ("status", Text),
                ("kind", Text), ("event", Json)])
            .await?,
        "outbound_messages": rows_as_json(conn,
            "select id, body, status, provider_id, created_at from outbound_messages
             where session_id = ? order by seq",
            &id, &[("id", Text), ("body", Text), ("status", Text), ("provider_id", Text),
                ("created_at", Text)]).await?,
        "scheduled_events": rows_as_json(conn,
            "select key, kind, payload, due_at from scheduled_events where session_id = ?
             order by key",
            &id, &[("key", Text), ("kind", Text), ("payload", Json), ("due_at", Text)]).await?,
    })))
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
            let text: Option<String> = row.try_get(*column)?;
            let value = match (text, kind) {
                (None, _) => Value::Null,
                (Some(text), ColumnKind::Json) => parse_json(&text)?,
                (Some(text), ColumnKind::Text) => Value::String(text),
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

/// Deletes the messages older than `days` before `now`, of `address` or of everyone; how many.
pub(super) async fn delete_messages_older_than(
    conn: &mut SqliteConnection,
    address: Option<&Address>,
    days: u32,
    now: DateTime<Utc>,
) -> Result<u64> {
    let done = sqlx::query(
        "delete from messages where created_at < ?1 and (?2 is null or session_id =
           (select id from user_sessions where phone_number = ?2))",
    )
    .bind(ts(now - Duration::days(i64::from(days))))
    .bind(address.map(Address::as_str))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes `address`'s session, and with it (cascades) everything else; whether it existed.
pub(super) async fn erase_user(conn: &mut SqliteConnection, address: &Address) -> Result<bool> {
    let done = sqlx::query("delete from user_sessions where phone_number = ?")
        .bind(address.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
