//! A session and its conversation, read by address or id, and the opt-out.

use chrono::{DateTime, Utc};
use soul_engine::Memory;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;

use super::rows::{memory_from, session_from, ts};
use crate::driver::Result;
use crate::types::{Address, Line, Session};

pub(super) async fn load_session(conn: &mut SqliteConnection, id: &str) -> Result<Session> {
    let row = sqlx::query("select * from user_sessions where id = ?")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    session_from(&row)
}

pub(super) async fn history(
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

/// The session of `address` on `line`, or `None`.
pub(super) async fn session(
    pool: &SqlitePool,
    address: &Address,
    line: &Line,
) -> Result<Option<Session>> {
    let row = sqlx::query("select * from user_sessions where phone_number = ? and line = ?")
        .bind(address.as_str())
        .bind(line.as_str())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(session_from).transpose()
}

/// The latest `limit` (0: all) messages of `address`, oldest first; none for an unknown address.
pub(super) async fn history_of(
    pool: &SqlitePool,
    address: &Address,
    region: Option<&str>,
    limit: u32,
) -> Result<Vec<Memory>> {
    let mut conn = pool.acquire().await?;
    let id: Option<String> =
        sqlx::query_scalar("select id from user_sessions where phone_number = ? and line = ''")
            .bind(address.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    match id {
        Some(id) => history(&mut conn, &id, region, limit).await,
        None => Ok(Vec::new()),
    }
}

/// Sets or clears `address`'s opt-out (the first opt-out time is kept); whether it is known.
pub(super) async fn set_opt_out(
    conn: &mut SqliteConnection,
    address: &Address,
    opted_out: bool,
    now: DateTime<Utc>,
) -> Result<bool> {
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
}
