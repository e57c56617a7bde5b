//! Committing: a turn's outcome (its changes, its replies into the outbox, the hand-over to the
//! next waiting message) and a subprocess's changes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use soul_engine::{Memory, Role};
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;
use uuid::Uuid;

use super::rows::{json_text, region_name, session_row, ts};
use super::start::start_next;
use super::turn_log;
use crate::driver::Result;
use crate::types::{
    Changes, CommitOutcome, MemoryChange, OutboxAtCommit, SubprocessCommit, SubprocessOutcome,
    TurnCommit, TurnSettings,
};
use crate::{StoreError, wire};

/// What `public.soul_commit_turn` does in PostgreSQL; see there.
pub(super) async fn commit(
    conn: &mut SqliteConnection,
    commit: &TurnCommit,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<CommitOutcome> {
    let session = commit.session_id.0.to_string();
    // Read before this commit's replies are stored: what sending them needs to know.
    let row = sqlx::query(
        "select *, exists (select 1 from outbound_messages o
                           where o.session_id = s.id and o.status = 'pending') as earlier_pending
         from user_sessions s where id = ?",
    )
    .bind(&session)
    .fetch_optional(&mut *conn)
    .await?;
    let (row, outbox) = match row {
        Some(row) => (
            session_row(&row)?,
            OutboxAtCommit {
                opted_out: row.try_get::<Option<String>, _>("opted_out_at")?.is_some(),
                earlier_pending: row.try_get("earlier_pending")?,
                claimed_until: wire::reply_claim_until(settings, now),
            },
        ),
        None => return Err(StoreError::LeaseLost.into()),
    };
    if row.lease_token.as_deref() != Some(commit.lease_token.to_string().as_str()) {
        return Err(StoreError::LeaseLost.into());
    }
    apply_changes(conn, &session, &commit.changes, settings, now).await?;
    let now_text = ts(now);
    let claimed_until_text = ts(outbox.claimed_until);
    for reply in &commit.replies {
        let reply = Memory {
            role: Role::Assistant,
            ..reply.clone()
        };
        insert_memory(conn, &session, &reply).await?;
        sqlx::query(
            "insert into outbound_messages
               (id, session_id, body, created_at, updated_at, claimed_until)
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(reply.id.0.to_string())
        .bind(&session)
        .bind(&reply.content)
        .bind(&now_text)
        .bind(&now_text)
        .bind(&claimed_until_text)
        .execute(&mut *conn)
        .await?;
    }
    let inbound_id = row.lease_inbound_id.as_deref().ok_or_else(|| {
        StoreError::Corrupt("a leased session without the message it runs".to_owned())
    })?;
    // The turn's record goes on the message it answered, numbered after the latest turn.
    sqlx::query(
        "update inbound_messages set status = 'done', finished_at = ?1, record = ?2,
           turn = (select turns + 1 from user_sessions where id = ?3)
         where id = ?4",
    )
    .bind(&now_text)
    .bind(wire::stored_record(commit)?)
    .bind(&session)
    .bind(inbound_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "update user_sessions set total_messages = total_messages + ?, last_active_at = ?,
           turns = turns + 1
         where id = ?",
    )
    .bind(i64::try_from(commit.replies.len()).unwrap_or(i64::MAX))
    .bind(&now_text)
    .bind(&session)
    .execute(&mut *conn)
    .await?;
    Ok(CommitOutcome {
        outbound: commit.replies.iter().map(|reply| reply.id.0).collect(),
        next: start_next(conn, &session, settings, now, false).await?,
        outbox,
    })
}

/// What `public.soul_commit_subprocess` does in PostgreSQL: applies the changes only while no
/// newer turn has begun.
pub(super) async fn commit_subprocess(
    conn: &mut SqliteConnection,
    commit: &SubprocessCommit,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<SubprocessOutcome> {
    let session = commit.session_id.0.to_string();
    let version: Option<i64> = sqlx::query_scalar("select version from user_sessions where id = ?")
        .bind(&session)
        .fetch_optional(&mut *conn)
        .await?;
    if version != Some(commit.version) {
        return Ok(SubprocessOutcome::Stale);
    }
    apply_changes(conn, &session, &commit.changes, settings, now).await?;
    turn_log::add_subprocesses(conn, &session, commit).await?;
    Ok(SubprocessOutcome::Applied)
}

/// What `public.soul_apply_changes` does in PostgreSQL.
async fn apply_changes(
    conn: &mut SqliteConnection,
    session: &str,
    changes: &Changes,
    settings: &TurnSettings,
    now: DateTime<Utc>,
) -> Result<()> {
    settings.validate()?;
    let now_text = ts(now);
    for memory in &changes.memories {
        insert_memory(conn, session, memory).await?;
    }
    for change in last_per_key(changes.soul_memory.iter().map(|c| (c.key(), c))).into_values() {
        match change {
            MemoryChange::Set { key, value } => {
                sqlx::query(
                    "insert into soul_memories (session_id, key, value, updated_at)
                     values (?, ?, ?, ?)
                     on conflict (session_id, key)
                     do update set value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(session)
                .bind(key)
                .bind(json_text(value))
                .bind(&now_text)
                .execute(&mut *conn)
                .await?;
            }
            MemoryChange::Remove { key } => {
                sqlx::query("delete from soul_memories where session_id = ? and key = ?")
                    .bind(session)
                    .bind(key)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    let process_changes = last_per_key(
        changes
            .process_memory
            .iter()
            .map(|c| ((c.process.as_str(), c.change.key()), &c.change)),
    );
    for ((process, _), change) in process_changes {
        match change {
            MemoryChange::Set { key, value } => {
                sqlx::query(
                    "insert into process_memories (session_id, process_name, key, value, updated_at)
                     values (?, ?, ?, ?, ?)
                     on conflict (session_id, process_name, key)
                     do update set value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(session)
                .bind(process)
                .bind(key)
                .bind(json_text(value))
                .bind(&now_text)
                .execute(&mut *conn)
                .await?;
            }
            MemoryChange::Remove { key } => {
                sqlx::query(
                    "delete from process_memories
                     where session_id = ? and process_name = ? and key = ?",
                )
                .bind(session)
                .bind(process)
                .bind(key)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    if let Some(state) = &changes.process_state {
        // The seed's validation on save: an unregistered name falls back to the initial process.
        let name = if settings.processes.contains(&state.name) {
            &state.name
        } else {
            &settings.processes.initial
        };
        sqlx::query(
            "insert into mental_process_state
               (session_id, process_name, params, invocation_count, previous_process, updated_at)
             values (?, ?, ?, ?, ?, ?)
             on conflict (session_id) do update set process_name = excluded.process_name,
               params = excluded.params, invocation_count = excluded.invocation_count,
               previous_process = excluded.previous_process, updated_at = excluded.updated_at",
        )
        .bind(session)
        .bind(name)
        .bind(json_text(&state.params))
        .bind(i64::from(state.invocation_count))
        .bind(&state.previous)
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(snapshot) = &changes.snapshot {
        sqlx::query("delete from working_memory_snapshots where session_id = ?")
            .bind(session)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "insert into working_memory_snapshots (session_id, snapshot, created_at)
             values (?, ?, ?)",
        )
        .bind(session)
        .bind(json_text(&snapshot.to_json()))
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    let mut schedule = BTreeMap::new();
    for event in &changes.schedule {
        schedule.insert(event.key.as_str(), event);
    }
    for event in schedule.into_values() {
        sqlx::query(
            "insert into scheduled_events (id, session_id, key, kind, payload, due_at, created_at)
             values (?, ?, ?, ?, ?, ?, ?)
             on conflict (session_id, key) do update set kind = excluded.kind,
               payload = excluded.payload, due_at = excluded.due_at, claimed_until = null",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(session)
        .bind(&event.key)
        .bind(&event.kind)
        .bind(json_text(&event.payload))
        .bind(ts(event.due_at))
        .bind(&now_text)
        .execute(&mut *conn)
        .await?;
    }
    for key in &changes.cancel_events {
        sqlx::query("delete from scheduled_events where session_id = ? and key = ?")
            .bind(session)
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The last change per key wins, as `distinct on` does in PostgreSQL.
fn last_per_key<'a, K: Ord>(
    changes: impl IntoIterator<Item = (K, &'a MemoryChange)>,
) -> BTreeMap<K, &'a MemoryChange> {
    changes.into_iter().collect()
}

async fn insert_memory(conn: &mut SqliteConnection, session: &str, memory: &Memory) -> Result<()> {
    sqlx::query(
        "insert into messages (id, session_id, role, content, region, name, metadata, created_at)
         values (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(memory.id.0.to_string())
    .bind(session)
    .bind(memory.role.as_str())
    .bind(&memory.content)
    .bind(region_name(memory.region.as_ref()))
    .bind(&memory.name)
    .bind(json_text(&memory.metadata))
    .bind(ts(memory.timestamp))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
