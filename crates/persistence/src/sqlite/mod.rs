//! The embedded store: one SQLite file in WAL mode. Each operation is one `BEGIN IMMEDIATE`
//! transaction implementing, in Rust, what the SQL functions of `migrations/` do in PostgreSQL;
//! the conformance suite holds the two to the same behaviour.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::{Map, Value, json};
use soul_engine::{Memory, MemoryId, Region, Role, memory::UNREGIONED};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::types::{
    Address, BeginOutcome, Changes, CommitOutcome, DeliveryStatus, DeliveryUpdate, EventOutcome,
    Inbound, InboundKind, Lease, MemoryChange, OutboundMessage, OutboundRef, OutboxAtCommit,
    ProcessState, QueuedInbound, ScheduledEvent, Session, SessionId, SessionOutbox,
    SubprocessCommit, SubprocessOutcome, TurnCommit, TurnContext, TurnSettings, session_number,
};
use crate::{Result, Store, StoreError, StoreFuture, wire};

/// Runs `$body` (a block evaluating to a `Result`) in one `BEGIN IMMEDIATE` transaction: the
/// write lock is taken up front, so two operations never both read and then both write. An early
/// `return` from the body rolls back.
macro_rules! write_tx {
    ($store:ident, $conn:ident => $body:block) => {{
        let _writer = $store.writer.lock().await;
        let mut tx = $store.pool.begin_with("BEGIN IMMEDIATE").await?;
        let $conn: &mut SqliteConnection = &mut tx;
        let value: Result<_> = $body;
        let value = value?;
        tx.commit().await?;
        Ok(value)
    }};
}

/// The schema, step by step: step `n` takes a file from `pragma user_version` `n` to `n + 1`. The
/// first creates it; a change to the schema is a step added here, so that a file made by an
/// earlier version is brought up to date when opened.
const SCHEMA_STEPS: &[&str] = &[include_str!("schema.sql")];

/// The store in one local SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// This process's writers take turns here, first come first served, before they ask SQLite
    /// for the write lock: SQLite's busy handler would make them poll for it with growing sleeps
    /// (milliseconds of idle lock and a long tail). Another process on the same file still meets
    /// the busy handler.
    writer: Arc<Mutex<()>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// Times are stored as fixed-width UTC text so that comparing text compares time; PostgreSQL
/// keeps microseconds, and so does this.
fn ts(time: DateTime<Utc>) -> String {
    time.trunc_subsecs(6)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| StoreError::Corrupt(format!("stored time {text:?}: {error}")))
}

fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|error| StoreError::Corrupt(format!("stored id: {error}")))
}

fn parse_json(text: &str) -> Result<Value> {
    Ok(serde_json::from_str(text)?)
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

fn region_name(region: Option<&Region>) -> &str {
    region.map_or(UNREGIONED, Region::as_str)
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: each commit syncs the WAL, so an acknowledged message and a reply about to be
            // sent survive a power loss or a crash of the machine, as on PostgreSQL. NORMAL is
            // durable only across crashes of the process: after a power loss the last commits may
            // roll back, the insert of a message Twilio was told is stored among them.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Writers queue on the file lock: several stores (processes) may share one file.
            .busy_timeout(StdDuration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = SqliteStore {
            pool,
            writer: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("pragma user_version")
            .fetch_one(&mut *tx)
            .await?;
        // A file from a newer version (more steps than this one knows) is left as it is.
        for step in SCHEMA_STEPS
            .iter()
            .copied()
            .skip(usize::try_from(version).unwrap_or(usize::MAX))
        {
            sqlx::raw_sql(step).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

struct SessionRow {
    id: String,
    lease_token: Option<String>,
    lease_expires_at: Option<String>,
    lease_inbound_id: Option<String>,
}

fn session_row(row: &SqliteRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: row.try_get("id")?,
        lease_token: row.try_get("lease_token")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        lease_inbound_id: row.try_get("lease_inbound_id")?,
    })
}

fn lease_live(row: &SessionRow, now: &str) -> bool {
    row.lease_token.is_some()
        && row
            .lease_expires_at
            .as_deref()
            .is_some_and(|until| until > now)
}

fn session_from(row: &SqliteRow) -> Result<Session> {
    Ok(Session {
        id: SessionId(parse_uuid(&row.try_get::<String, _>("id")?)?),
        address: Address::new(row.try_get::<String, _>("phone_number")?),
        persona: row.try_get("assigned_persona")?,
        first_contact_at: parse_ts(&row.try_get::<String, _>("first_contact_at")?)?,
        last_active_at: parse_ts(&row.try_get::<String, _>("last_active_at")?)?,
        total_messages: row.try_get("total_messages")?,
        metadata: parse_json(&row.try_get::<String, _>("metadata")?)?,
        opted_out: row.try_get::<Option<String>, _>("opted_out_at")?.is_some(),
        version: row.try_get("version")?,
    })
}

fn memory_from(row: &SqliteRow) -> Result<Memory> {
    let role: String = row.try_get("role")?;
    let region: String = row.try_get("region")?;
    Ok(Memory {
        id: MemoryId(parse_uuid(&row.try_get::<String, _>("id")?)?),
        role: Role::from_str(&role).map_err(|error| StoreError::Corrupt(error.to_string()))?,
        content: row.try_get("content")?,
        name: row.try_get("name")?,
        region: if region == UNREGIONED {
            None
        } else {
            Some(Region::new(&region).map_err(|error| StoreError::Corrupt(error.to_string()))?)
        },
        metadata: parse_json(&row.try_get::<String, _>("metadata")?)?,
        timestamp: parse_ts(&row.try_get::<String, _>("created_at")?)?,
    })
}

async fn load_session(conn: &mut SqliteConnection, id: &str) -> Result<Session> {
    let row = sqlx::query("select * from user_sessions where id = ?")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    session_from(&row)
}

async fn history(
    conn: &mut SqliteConnection,
    session: &str,
    region: Option<&str>,
    limit: u32,
) -> Result<Vec<Memory>> {
    // SQLite reads a negative LIMIT as "no limit".
    let limit = if limit == 0 { -1 } else { i64::from(limit) };
    let rows = sqlx::query(
        "select * from (
           select * from messages where session_id = ?1 and (?2 is null or region = ?2)
           order by seq desc limit ?3
         ) order by seq",
    )
    .bind(session)
    .bind(region)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(memory_from).collect()
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
}

async fn turn_memories(
    conn: &mut SqliteConnection,
    session: &str,
    process: &str,
    subprocesses: &[String],
) -> Result<TurnMemories> {
    // The subprocess names go in as one JSON array, so the statement is the same for any number.
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
             order by seq desc limit 1) as snapshot",
    )
    .bind(session)
    .bind(process)
    .bind(json_text(&json!(subprocesses)))
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
    Ok(TurnMemories {
        soul: keyed("soul")?,
        process: keyed("process")?,
        subprocesses: by_process,
        snapshot: row.try_get("snapshot")?,
    })
}

/// What `public.soul_start_next` does in PostgreSQL; see there. The caller holds the write lock.
async fn start_next(
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
    let kind = match next.try_get::<Option<String>, _>("event")? {
        Some(event) => {
            let mut event = parse_json(&event)?;
            event
                .as_object_mut()
                .ok_or_else(|| StoreError::Corrupt("stored event is not an object".to_owned()))?
                .insert("type".to_owned(), json!("event"));
            serde_json::from_value(event)?
        }
        None => InboundKind::Message,
    };
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

    let memories = turn_memories(conn, session, &process.name, &settings.subprocesses).await?;
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
        resumed,
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        process,
        corrected_from,
        soul_memories: memories.soul,
        process_memories: memories.process,
        subprocess_memories: memories.subprocesses,
        history,
        snapshot,
        history_missing: false,
    };
    wire::warn_if_corrected(&context);
    Ok(Some(Box::new(context)))
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

/// What `public.soul_begin_turn` does in PostgreSQL; with `defer`, what it does for
/// [`Store::enqueue_turn`].
async fn begin(
    conn: &mut SqliteConnection,
    inbound: &Inbound,
    settings: &TurnSettings,
    now: DateTime<Utc>,
    defer: bool,
) -> Result<BeginOutcome> {
    settings.validate()?;
    let now_text = ts(now);
    let existing = sqlx::query("select * from user_sessions where phone_number = ?")
        .bind(inbound.from.as_str())
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
                "insert into user_sessions (id, phone_number, assigned_persona, first_contact_at,
                   last_active_at, metadata) values (?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(inbound.from.as_str())
            .bind(&settings.persona)
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
        .ok_or_else(|| StoreError::Corrupt("the stored inbound message vanished".to_owned()))
}

/// What `public.soul_begin_event_turn` does in PostgreSQL; see there.
async fn begin_event(
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
        .ok_or_else(|| StoreError::Corrupt("the stored event turn vanished".to_owned()))
}

async fn commit(
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
        None => return Err(StoreError::LeaseLost),
    };
    if row.lease_token.as_deref() != Some(commit.lease_token.to_string().as_str()) {
        return Err(StoreError::LeaseLost);
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
    sqlx::query("update inbound_messages set status = 'done', finished_at = ? where id = ?")
        .bind(&now_text)
        .bind(&row.lease_inbound_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "update user_sessions set total_messages = total_messages + ?, last_active_at = ?
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

/// Moves one outbound message's status forward, in the caller's transaction.
async fn update_delivery(conn: &mut SqliteConnection, update: &DeliveryUpdate) -> Result<bool> {
    let row = match &update.target {
        OutboundRef::Id(id) => {
            sqlx::query("select id, status from outbound_messages where id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await?
        }
        OutboundRef::ProviderId(provider_id) => {
            sqlx::query("select id, status from outbound_messages where provider_id = ?")
                .bind(provider_id)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    let Some(row) = row else { return Ok(false) };
    let stored: String = row.try_get("status")?;
    let stored = DeliveryStatus::parse(&stored)
        .ok_or_else(|| StoreError::Corrupt(format!("delivery status {stored:?}")))?;
    if stored.rank() >= update.status.rank() {
        return Ok(false);
    }
    sqlx::query(
        "update outbound_messages set status = ?,
           provider_id = coalesce(?, provider_id), error = coalesce(?, error),
           updated_at = ? where id = ?",
    )
    .bind(update.status.as_str())
    .bind(&update.provider_id)
    .bind(&update.error)
    .bind(ts(update.at))
    .bind(row.try_get::<String, _>("id")?)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

fn outbound_from(row: &SqliteRow) -> Result<OutboundMessage> {
    let status: String = row.try_get("status")?;
    Ok(OutboundMessage {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        session_id: SessionId(parse_uuid(&row.try_get::<String, _>("session_id")?)?),
        address: Address::new(row.try_get::<String, _>("phone_number")?),
        body: row.try_get("body")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
        provider_id: row.try_get("provider_id")?,
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
    })
}

fn event_from(row: &SqliteRow) -> Result<ScheduledEvent> {
    Ok(ScheduledEvent {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        session_id: SessionId(parse_uuid(&row.try_get::<String, _>("session_id")?)?),
        address: Address::new(row.try_get::<String, _>("phone_number")?),
        key: row.try_get("key")?,
        kind: row.try_get("kind")?,
        payload: parse_json(&row.try_get::<String, _>("payload")?)?,
        due_at: parse_ts(&row.try_get::<String, _>("due_at")?)?,
    })
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

async fn export(conn: &mut SqliteConnection, address: &Address) -> Result<Option<Value>> {
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

impl Store for SqliteStore {
    fn begin_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        Box::pin(async move {
            write_tx!(self, conn => { begin(conn, inbound, settings, now, false).await })
        })
    }

    fn enqueue_turn<'a>(
        &'a self,
        inbound: &'a Inbound,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, BeginOutcome> {
        Box::pin(async move {
            write_tx!(self, conn => { begin(conn, inbound, settings, now, true).await })
        })
    }

    fn begin_event_turn<'a>(
        &'a self,
        event: &'a ScheduledEvent,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, EventOutcome> {
        Box::pin(async move {
            write_tx!(self, conn => { begin_event(conn, event, settings, now).await })
        })
    }

    fn commit_turn<'a>(
        &'a self,
        turn: &'a TurnCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, CommitOutcome> {
        Box::pin(
            async move { write_tx!(self, conn => { commit(conn, turn, settings, now).await }) },
        )
    }

    fn commit_subprocess<'a>(
        &'a self,
        commit: &'a SubprocessCommit,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, SubprocessOutcome> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let session = commit.session_id.0.to_string();
                let version: Option<i64> =
                    sqlx::query_scalar("select version from user_sessions where id = ?")
                        .bind(&session)
                        .fetch_optional(&mut *conn)
                        .await?;
                if version != Some(commit.version) {
                    return Ok(SubprocessOutcome::Stale);
                }
                apply_changes(conn, &session, &commit.changes, settings, now).await?;
                Ok(SubprocessOutcome::Applied)
            })
        })
    }

    fn renew_lease(
        &self,
        session: SessionId,
        lease: Lease,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> StoreFuture<'_, Lease> {
        Box::pin(async move {
            write_tx!(self, conn => {
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
                    return Err(StoreError::LeaseLost);
                }
                Ok(Lease { token: lease.token, expires_at })
            })
        })
    }

    fn resume_turn<'a>(
        &'a self,
        session: SessionId,
        settings: &'a TurnSettings,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, Option<Box<TurnContext>>> {
        Box::pin(async move {
            write_tx!(self, conn => {
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
            })
        })
    }

    fn stalled_sessions(&self, now: DateTime<Utc>, limit: u32) -> StoreFuture<'_, Vec<SessionId>> {
        Box::pin(async move {
            let ids: Vec<String> = sqlx::query_scalar(
                "select s.id from user_sessions s
                 where (s.lease_token is null or s.lease_expires_at <= ?)
                   and exists (select 1 from inbound_messages i
                               where i.session_id = s.id and i.status <> 'done')
                 order by s.last_active_at limit ?",
            )
            .bind(ts(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            ids.iter()
                .map(|id| Ok(SessionId(parse_uuid(id)?)))
                .collect()
        })
    }

    fn session<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, Option<Session>> {
        Box::pin(async move {
            let row = sqlx::query("select * from user_sessions where phone_number = ?")
                .bind(address.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(session_from).transpose()
        })
    }

    fn history<'a>(
        &'a self,
        address: &'a Address,
        region: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Memory>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            let id: Option<String> =
                sqlx::query_scalar("select id from user_sessions where phone_number = ?")
                    .bind(address.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
            match id {
                Some(id) => history(&mut conn, &id, region, limit).await,
                None => Ok(Vec::new()),
            }
        })
    }

    fn update_deliveries<'a>(
        &'a self,
        updates: &'a [DeliveryUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let mut applied = Vec::with_capacity(updates.len());
                for update in updates {
                    applied.push(update_delivery(&mut *conn, update).await?);
                }
                Ok(applied)
            })
        })
    }

    fn claim_pending_deliveries(
        &self,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OutboundMessage>> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let rows = sqlx::query(
                    "select o.*, s.phone_number from outbound_messages o
                     join user_sessions s on s.id = o.session_id
                     where o.status = 'pending'
                       and (o.claimed_until is null or o.claimed_until <= ?)
                     order by o.seq limit ?",
                )
                .bind(ts(now))
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?;
                let claimed = rows.iter().map(outbound_from).collect::<Result<Vec<_>>>()?;
                let until = ts(claim_until);
                for reply in &claimed {
                    sqlx::query("update outbound_messages set claimed_until = ? where id = ?")
                        .bind(&until)
                        .bind(reply.id.to_string())
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(claimed)
            })
        })
    }

    fn claim_session_outbox(
        &self,
        session: SessionId,
        through: Uuid,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
    ) -> StoreFuture<'_, Option<SessionOutbox>> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let opted_out: Option<bool> = sqlx::query_scalar(
                    "select opted_out_at is not null from user_sessions where id = ?",
                )
                .bind(session.to_string())
                .fetch_optional(&mut *conn)
                .await?;
                let Some(opted_out) = opted_out else {
                    return Ok(None);
                };
                let rows = sqlx::query(
                    "select o.*, s.phone_number from outbound_messages o
                     join user_sessions s on s.id = o.session_id
                     where o.session_id = ?1 and o.status = 'pending'
                       and o.seq <= (select seq from outbound_messages where id = ?2)
                     order by o.seq",
                )
                .bind(session.to_string())
                .bind(through.to_string())
                .fetch_all(&mut *conn)
                .await?;
                let now = ts(now);
                let until = ts(claim_until);
                let mut pending = Vec::with_capacity(rows.len());
                let mut claimed = Vec::new();
                for row in &rows {
                    let reply = outbound_from(row)?;
                    let claim: Option<String> = row.try_get("claimed_until")?;
                    if claim.is_none_or(|claim| claim <= now) {
                        sqlx::query("update outbound_messages set claimed_until = ? where id = ?")
                            .bind(&until)
                            .bind(reply.id.to_string())
                            .execute(&mut *conn)
                            .await?;
                        claimed.push(reply.id);
                    }
                    pending.push(reply);
                }
                Ok(Some(SessionOutbox { opted_out, pending, claimed }))
            })
        })
    }

    fn set_opt_out<'a>(
        &'a self,
        address: &'a Address,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let done = sqlx::query(
                    "update user_sessions set opted_out_at =
                       case when ?1 then coalesce(opted_out_at, ?2) end
                     where phone_number = ?3",
                )
                .bind(opted_out)
                .bind(ts(now))
                .bind(address.as_str())
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() > 0)
            })
        })
    }

    fn claim_due_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        claim_for: Duration,
    ) -> StoreFuture<'_, Vec<ScheduledEvent>> {
        Box::pin(async move {
            write_tx!(self, conn => {
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
            })
        })
    }

    fn complete_event<'a>(&'a self, event: &'a ScheduledEvent) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            write_tx!(self, conn => {
                // Matching due_at too: a turn that rescheduled the same key keeps its new event.
                let done = sqlx::query("delete from scheduled_events where id = ? and due_at = ?")
                    .bind(event.id.to_string())
                    .bind(ts(event.due_at))
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() > 0)
            })
        })
    }

    fn delete_messages_older_than<'a>(
        &'a self,
        address: Option<&'a Address>,
        days: u32,
        now: DateTime<Utc>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let done = sqlx::query(
                    "delete from messages where created_at < ?1 and (?2 is null or session_id =
                       (select id from user_sessions where phone_number = ?2))",
                )
                .bind(ts(now - Duration::days(i64::from(days))))
                .bind(address.map(Address::as_str))
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected())
            })
        })
    }

    fn export_user<'a>(
        &'a self,
        address: &'a Address,
    ) -> StoreFuture<'a, Option<serde_json::Value>> {
        // A write transaction for a read: the export must be one consistent picture.
        Box::pin(async move { write_tx!(self, conn => { export(conn, address).await }) })
    }

    fn erase_user<'a>(&'a self, address: &'a Address) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            write_tx!(self, conn => {
                let done = sqlx::query("delete from user_sessions where phone_number = ?")
                    .bind(address.as_str())
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() > 0)
            })
        })
    }
}
