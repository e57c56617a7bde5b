//! Scheduled events: claiming the due ones, completing them, and beginning an event's turn.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;
use uuid::Uuid;

use super::rows::{event_from, json_text, lease_live, parse_json, parse_uuid, session_row, ts};
use super::start::start_next;
use crate::StoreError;
use crate::driver::Result;
use crate::types::{EventOutcome, ScheduledEvent, TurnSettings};

/// What `public.soul_begin_event_turn` does in PostgreSQL; see there.
pub(super) async fn begin_event(
    conn: &mut SqliteConnection,
    event: &ScheduledEvent,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<EventOutcome> {
    settings.validate()?;
    let session = event.session_id.0.to_string();
    let row = sqlx::query("select * from user_sessions where id = ?")
        .bind(&session)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(EventOutcome::Gone);
    };
    let opted_out = row.try_get::<Option<String>, _>("opted_out_at")?.is_some();
    let row = session_row(&row)?;
    let external_id = format!("event:{}", event.id);
    let seen: Option<String> = sqlx::query_scalar(
        "select id from inbound_messages where session_id = ? and external_id = ?",
    )
    .bind(&session)
    .bind(&external_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(seen) = seen {
        return Ok(EventOutcome::Duplicate {
            inbound_id: parse_uuid(&seen)?,
        });
    }
    // Matching due_at, as `complete_event` does: a reschedule since the claim fires later.
    let stored = sqlx::query(
        "delete from scheduled_events where id = ? and session_id = ? and due_at = ?
         returning key, kind, payload, due_at",
    )
    .bind(event.id.to_string())
    .bind(&session)
    .bind(ts(event.due_at))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(stored) = stored else {
        return Ok(EventOutcome::Gone);
    };
    if opted_out {
        return Ok(EventOutcome::OptedOut);
    }
    let payload = json!({
        "event_id": event.id,
        "key": stored.try_get::<String, _>("key")?,
        "kind": stored.try_get::<String, _>("kind")?,
        "payload": parse_json(&stored.try_get::<String, _>("payload")?)?,
    });
    let inbound_id = Uuid::new_v4();
    sqlx::query(
        "insert into inbound_messages (id, session_id, external_id, body, received_at, kind, event)
         values (?, ?, ?, '', ?, 'event', ?)",
    )
    .bind(inbound_id.to_string())
    .bind(&session)
    .bind(&external_id)
    .bind(stored.try_get::<String, _>("due_at")?)
    .bind(json_text(&payload))
    .execute(&mut *conn)
    .await?;
    if lease_live(&row, &ts(now)) {
        return Ok(EventOutcome::Queued { inbound_id });
    }
    start_next(conn, &session, settings, now, false)
        .await?
        .map(EventOutcome::Started)
        .ok_or_else(|| StoreError::Corrupt("the stored event turn vanished".to_owned()).into())
}

/// Hands out up to `limit` due events and hides them for `claim_for`.
pub(super) async fn claim_due_events(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    limit: u32,
    claim_for: Duration,
) -> Result<Vec<ScheduledEvent>> {
    let now_text = ts(now);
    let rows = sqlx::query(
        "select e.*, s.phone_number from scheduled_events e
         join user_sessions s on s.id = e.session_id
         where e.due_at <= ?1 and (e.claimed_until is null or e.claimed_until <= ?1)
         order by e.due_at, e.id limit ?2",
    )
    .bind(&now_text)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let events = rows.iter().map(event_from).collect::<Result<Vec<_>>>()?;
    for event in &events {
        sqlx::query("update scheduled_events set claimed_until = ? where id = ?")
            .bind(ts(now + claim_for))
            .bind(event.id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(events)
}

/// Deletes a claimed event unless it was rescheduled meanwhile; whether it was.
pub(super) async fn complete_event(
    conn: &mut SqliteConnection,
    event: &ScheduledEvent,
) -> Result<bool> {
    // Matching due_at too: a turn that rescheduled the same key keeps its new event.
    let done = sqlx::query("delete from scheduled_events where id = ? and due_at = ?")
        .bind(event.id.to_string())
        .bind(ts(event.due_at))
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
