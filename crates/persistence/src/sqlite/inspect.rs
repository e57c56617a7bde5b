//! The inspector's reads and its audit on SQLite: the same answers as
//! `soul_inspect_conversations` and `soul_inspect_audit*` in `migrations/`.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqlitePool};

use super::rows::{parse_ts, parse_uuid, ts};
use crate::StoreError;
use crate::driver::Result;
use crate::inspect::{AuditAction, AuditEntry, Conversation, ConversationQuery};
use crate::types::SessionId;

/// The conversations `query` selects, built as JSON by SQLite so that they decode as the SQL
/// function's answer does.
pub(super) async fn conversations(
    pool: &SqlitePool,
    query: &ConversationQuery,
    now: DateTime<Utc>,
) -> Result<Vec<Conversation>> {
    let rows = sqlx::query(
        "select json_object(
           'id', s.id,
           'address', s.phone_number,
           'line', s.line,
           'persona', s.assigned_persona,
           'first_contact_at', s.first_contact_at,
           'last_active_at', s.last_active_at,
           'total_messages', s.total_messages,
           'opted_out', json(case when s.opted_out_at is null then 'false' else 'true' end),
           'process', (select p.process_name from mental_process_state p where p.session_id = s.id),
           'pending_replies', (select count(*) from outbound_messages o
              where o.session_id = s.id and o.status = 'pending'),
           'failed_replies', (select count(*) from outbound_messages o
              where o.session_id = s.id and o.status in ('failed', 'undelivered')),
           'due_events', (select count(*) from scheduled_events e
              where e.session_id = s.id and e.due_at <= ?1),
           'next_event_at', (select min(e.due_at) from scheduled_events e where e.session_id = s.id)
         ) as conversation
         from user_sessions s
         where (?2 is null or s.id = ?2)
           and (?3 is null
                or instr(lower(s.phone_number), lower(?3)) > 0
                or exists (select 1 from messages m
                             where m.session_id = s.id and instr(lower(m.content), lower(?3)) > 0))
           and (?4 is null or exists (select 1 from mental_process_state p
                                        where p.session_id = s.id and p.process_name = ?4))
           and (not ?5 or s.opted_out_at is not null)
           and (not ?6 or exists (select 1 from outbound_messages o
                                    where o.session_id = s.id
                                      and o.status in ('pending', 'failed', 'undelivered')))
           and (not ?7 or exists (select 1 from scheduled_events e
                                    where e.session_id = s.id and e.due_at <= ?1))
         order by s.last_active_at desc, s.id
         limit ?8",
    )
    .bind(ts(now))
    .bind(query.session.map(|id| id.0.to_string()))
    .bind(query.search.as_deref())
    .bind(query.process.as_deref())
    .bind(query.opted_out)
    .bind(query.undelivered)
    .bind(query.due_events)
    .bind(i64::from(query.effective_limit()))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get("conversation")?;
            Ok(serde_json::from_str(&text)?)
        })
        .collect()
}

/// Appends one audit entry.
pub(super) async fn record_audit(pool: &SqlitePool, entry: &AuditEntry) -> Result<()> {
    sqlx::query(
        "insert into inspector_audit (id, at, actor, action, session_id) values (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(ts(entry.at))
    .bind(&entry.actor)
    .bind(entry.action.as_str())
    .bind(entry.session.0.to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// The latest `limit` audit entries, newest first.
pub(super) async fn audit_log(pool: &SqlitePool, limit: u32) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "select at, actor, action, session_id from inspector_audit order by at desc, id desc limit ?",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let action: String = row.try_get("action")?;
            let action = match action.as_str() {
                "reveal" => AuditAction::Reveal,
                "export" => AuditAction::Export,
                "erase" => AuditAction::Erase,
                "rewind" => AuditAction::Rewind,
                "rerun" => AuditAction::Rerun,
                other => {
                    return Err(StoreError::Corrupt(format!("audit action {other:?}")).into());
                }
            };
            Ok(AuditEntry {
                at: parse_ts(&row.try_get::<String, _>("at")?)?,
                actor: row.try_get("actor")?,
                action,
                session: SessionId(parse_uuid(&row.try_get::<String, _>("session_id")?)?),
            })
        })
        .collect()
}
