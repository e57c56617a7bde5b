//! The turn log: the record a commit writes, the subprocesses' part a subprocess commit adds,
//! the log read back, and a session's whole state read and restored (a rewind).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::rows::{json_text, lease_live, parse_json, parse_ts, parse_uuid, session_row, ts};
use super::start::inbound_kind;
use crate::StoreError;
use crate::driver::Result;
use crate::turn_log::{
    ClearedState, EventValue, LoggedReply, LoggedTurn, Restore, Rewind, SessionState, StoredEvent,
};
use crate::types::{DeliveryStatus, ProcessState, QueuedInbound, SessionId, SubprocessCommit};

/// Adds the subprocesses' part to the record of the turn they ran after (on the message it
/// answered: their commit applies only while no newer turn has begun).
pub(super) async fn add_subprocesses(
    conn: &mut SqliteConnection,
    session: &str,
    commit: &SubprocessCommit,
) -> Result<()> {
    sqlx::query(
        "update inbound_messages set record = json_set(record, '$.sub', json(?1))
         where id = ?2 and session_id = ?3 and record is not null",
    )
    .bind(serde_json::to_string(&commit.record)?)
    .bind(commit.inbound_id.to_string())
    .bind(session)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What `public.soul_turn_log` answers.
pub(super) async fn turn_log(
    pool: &SqlitePool,
    session: SessionId,
    from: u32,
    to: Option<u32>,
) -> Result<Vec<LoggedTurn>> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(
        "select turn, id, finished_at, rewound, record, external_id, body, received_at, event
         from inbound_messages
         where session_id = ?1 and turn >= ?2 and (?3 is null or turn <= ?3)
         order by seq",
    )
    .bind(session.0.to_string())
    .bind(i64::from(from))
    .bind(to.map(i64::from))
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = Vec::with_capacity(rows.len());
    let mut reply_ids = Vec::new();
    for row in &rows {
        let record = parse_json(&row.try_get::<String, _>("record")?)?;
        let ids: Vec<Uuid> = match record.get("r") {
            Some(ids) => serde_json::from_value(ids.clone())?,
            None => Vec::new(),
        };
        reply_ids.extend(ids.iter().map(Uuid::to_string));
        stored.push((record, ids));
    }
    // Every turn's replies in one read.
    let mut found = HashMap::new();
    for reply in sqlx::query(
        "select id, body, status, error from outbound_messages
         where id in (select value from json_each(?))",
    )
    .bind(serde_json::to_string(&reply_ids)?)
    .fetch_all(&mut *conn)
    .await?
    {
        let status: String = reply.try_get("status")?;
        let id = parse_uuid(&reply.try_get::<String, _>("id")?)?;
        found.insert(
            id,
            LoggedReply {
                id,
                body: reply.try_get("body")?,
                status: DeliveryStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
                error: reply.try_get("error")?,
            },
        );
    }
    let mut turns = Vec::with_capacity(rows.len());
    for (row, (mut record, ids)) in rows.iter().zip(stored) {
        let replies: Vec<LoggedReply> =
            ids.iter().filter_map(|id| found.get(id).cloned()).collect();
        crate::turn_log::restore_spoken_answers(&mut record, |id| {
            replies
                .iter()
                .find(|reply| reply.id.to_string() == id)
                .map(|reply| reply.body.clone())
        });
        turns.push(LoggedTurn {
            turn: u32::try_from(row.try_get::<i64, _>("turn")?).unwrap_or(u32::MAX),
            committed_at: parse_ts(&row.try_get::<String, _>("finished_at")?)?,
            rewound: row.try_get("rewound")?,
            record: serde_json::from_value(record)?,
            perception: QueuedInbound {
                id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                external_id: row.try_get("external_id")?,
                body: row.try_get("body")?,
                received_at: parse_ts(&row.try_get::<String, _>("received_at")?)?,
                kind: inbound_kind(row.try_get::<Option<String>, _>("event")?.as_deref())?,
            },
            replies,
        });
    }
    Ok(turns)
}

/// What `public.soul_session_state` answers.
pub(super) async fn session_state(
    conn: &mut SqliteConnection,
    session: SessionId,
) -> Result<Option<SessionState>> {
    let id = session.0.to_string();
    let row = sqlx::query(
        "select version, lease_token, lease_expires_at, turns, assigned_persona from user_sessions
         where id = ?",
    )
    .bind(&id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let turns = u32::try_from(row.try_get::<i64, _>("turns")?).unwrap_or(u32::MAX);
    let lease_expires_at = match row.try_get::<Option<String>, _>("lease_token")? {
        Some(_) => row
            .try_get::<Option<String>, _>("lease_expires_at")?
            .as_deref()
            .map(parse_ts)
            .transpose()?,
        None => None,
    };
    let mut soul_memories = Map::new();
    for (key, value) in sqlx::query_as::<_, (String, String)>(
        "select key, value from soul_memories where session_id = ? order by key",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await?
    {
        soul_memories.insert(key, parse_json(&value)?);
    }
    let ClearedState {
        process_memories,
        process,
        snapshot,
    } = ephemeral_state(conn, &id).await?;
    let mut events = Vec::new();
    for row in sqlx::query(
        "select id, key, kind, payload, due_at from scheduled_events where session_id = ?
         order by key",
    )
    .bind(&id)
    .fetch_all(&mut *conn)
    .await?
    {
        events.push(StoredEvent {
            id: parse_uuid(&row.try_get::<String, _>("id")?)?,
            key: row.try_get("key")?,
            value: EventValue {
                kind: row.try_get("kind")?,
                payload: parse_json(&row.try_get::<String, _>("payload")?)?,
                due_at: parse_ts(&row.try_get::<String, _>("due_at")?)?,
            },
        });
    }
    Ok(Some(SessionState {
        version: row.try_get("version")?,
        lease_expires_at,
        turn: turns,
        persona: row.try_get("assigned_persona")?,
        soul_memories,
        process_memories,
        process,
        snapshot,
        events,
    }))
}

/// What the session timeout clears of `session` (every process memory, the process state, the
/// snapshot), as it is now.
pub(super) async fn ephemeral_state(conn: &mut SqliteConnection, id: &str) -> Result<ClearedState> {
    let mut process_memories: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (process, key, value) in sqlx::query_as::<_, (String, String, String)>(
        "select process_name, key, value from process_memories where session_id = ?
         order by process_name, key",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    {
        process_memories
            .entry(process)
            .or_default()
            .insert(key, parse_json(&value)?);
    }
    let process = sqlx::query(
        "select process_name, params, invocation_count, previous_process
         from mental_process_state where session_id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| -> Result<ProcessState> {
        Ok(ProcessState {
            name: row.try_get("process_name")?,
            params: parse_json(&row.try_get::<String, _>("params")?)?,
            invocation_count: u32::try_from(row.try_get::<i64, _>("invocation_count")?)
                .unwrap_or(u32::MAX),
            previous: row.try_get("previous_process")?,
        })
    })
    .transpose()?;
    let snapshot: Option<String> = sqlx::query_scalar(
        "select snapshot from working_memory_snapshots where session_id = ?
         order by seq desc limit 1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(ClearedState {
        process_memories,
        process,
        snapshot: snapshot.as_deref().map(parse_json).transpose()?,
    })
}

/// What `public.soul_restore_session` does.
pub(super) async fn restore(
    conn: &mut SqliteConnection,
    restore: &Restore,
    now: DateTime<Utc>,
) -> Result<Rewind> {
    let id = restore.session.0.to_string();
    let row = sqlx::query("select * from user_sessions where id = ?")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(Rewind::UnknownTurn);
    };
    let session = session_row(&row)?;
    let now_text = ts(now);
    if lease_live(&session, &now_text) {
        let until = session.lease_expires_at.as_deref().unwrap_or_default();
        return Ok(Rewind::TurnRunning {
            lease_expires_at: parse_ts(until)?,
        });
    }
    if row.try_get::<i64, _>("version")? != restore.version {
        return Ok(Rewind::Changed);
    }
    let state = &restore.state;
    for statement in [
        "delete from soul_memories where session_id = ?",
        "delete from process_memories where session_id = ?",
        "delete from mental_process_state where session_id = ?",
        "delete from working_memory_snapshots where session_id = ?",
        "delete from scheduled_events where session_id = ?",
    ] {
        sqlx::query(statement).bind(&id).execute(&mut *conn).await?;
    }
    for (key, value) in &state.soul_memories {
        sqlx::query(
            "insert into soul_memories (session_id, key, value, updated_at) values (?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(key)
        .bind(json_text(value))
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    for (process, memory) in &state.process_memories {
        for (key, value) in memory {
            sqlx::query(
                "insert into process_memories (session_id, process_name, key, value, updated_at)
                 values (?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(process)
            .bind(key)
            .bind(json_text(value))
            .bind(&now_text)
            .execute(&mut *conn)
            .await?;
        }
    }
    if let Some(process) = &state.process {
        sqlx::query(
            "insert into mental_process_state
               (session_id, process_name, params, invocation_count, previous_process, updated_at)
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(&process.name)
        .bind(json_text(&process.params))
        .bind(i64::from(process.invocation_count))
        .bind(&process.previous)
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(snapshot) = &state.snapshot {
        sqlx::query(
            "insert into working_memory_snapshots (session_id, snapshot, created_at)
             values (?, ?, ?)",
        )
        .bind(&id)
        .bind(json_text(snapshot))
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    for event in &state.events {
        sqlx::query(
            "insert into scheduled_events (id, session_id, key, kind, payload, due_at, created_at)
             values (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id.to_string())
        .bind(&id)
        .bind(&event.key)
        .bind(&event.value.kind)
        .bind(json_text(&event.value.payload))
        .bind(ts(event.value.due_at))
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    let rewound = sqlx::query(
        "update inbound_messages set rewound = 1 where session_id = ? and turn > ? and rewound = 0",
    )
    .bind(&id)
    .bind(i64::from(restore.after_turn))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("update user_sessions set version = version + 1, turns = ? where id = ?")
        .bind(i64::from(restore.after_turn))
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    Ok(Rewind::Rewound {
        rewound: u32::try_from(rewound).unwrap_or(u32::MAX),
    })
}
