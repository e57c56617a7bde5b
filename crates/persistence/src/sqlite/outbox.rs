//! The outbox: delivery updates and the send claims on pending replies.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;
use uuid::Uuid;

use super::rows::{outbound_from, ts};
use crate::StoreError;
use crate::driver::Result;
use crate::types::{
    DeliveryStatus, DeliveryUpdate, OutboundMessage, OutboundRef, SessionId, SessionOutbox,
};

/// Applies `updates` in order, each as alone; per update, whether it moved a status.
pub(super) async fn update_deliveries(
    conn: &mut SqliteConnection,
    updates: &[DeliveryUpdate],
) -> Result<Vec<bool>> {
    let mut applied = Vec::with_capacity(updates.len());
    for update in updates {
        applied.push(update_delivery(&mut *conn, update).await?);
    }
    Ok(applied)
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

/// Claims until `claim_until` up to `limit` pending replies whose claim expired by `now`, oldest
/// first, and returns them; the write transaction keeps two claimers' sets disjoint.
pub(super) async fn claim_pending_deliveries(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    claim_until: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<OutboundMessage>> {
    let rows = sqlx::query(
        "select o.*, s.phone_number, s.line from outbound_messages o
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
}

/// What `public.soul_claim_session_outbox` does in PostgreSQL: the session's opt-out and its
/// replies pending up to `through`, those whose claim expired by `now` claimed until
/// `claim_until`; `None` for an unknown session.
pub(super) async fn claim_session_outbox(
    conn: &mut SqliteConnection,
    session: SessionId,
    through: Uuid,
    now: DateTime<Utc>,
    claim_until: DateTime<Utc>,
) -> Result<Option<SessionOutbox>> {
    let opted_out: Option<bool> =
        sqlx::query_scalar("select opted_out_at is not null from user_sessions where id = ?")
            .bind(session.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let Some(opted_out) = opted_out else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "select o.*, s.phone_number, s.line from outbound_messages o
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
    Ok(Some(SessionOutbox {
        opted_out,
        pending,
        claimed,
    }))
}
