//! How the store's values are kept as SQLite text, and the rows it reads back as the contract's
//! types.

use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use soul_engine::{Memory, MemoryId, Region, Role, UNREGIONED};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::StoreError;
use crate::driver::Result;
use crate::types::{
    Address, DeliveryStatus, Line, OutboundMessage, ScheduledEvent, Session, SessionId,
};

/// Times are stored as fixed-width UTC text so that comparing text compares time; PostgreSQL
/// keeps microseconds, and so does this.
pub(super) fn ts(time: DateTime<Utc>) -> String {
    time.trunc_subsecs(6)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

pub(super) fn parse_ts(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| StoreError::Corrupt(format!("stored time {text:?}: {error}")).into())
}

pub(super) fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|error| StoreError::Corrupt(format!("stored id: {error}")).into())
}

pub(super) fn parse_json(text: &str) -> Result<Value> {
    Ok(serde_json::from_str(text)?)
}

pub(super) fn json_text(value: &Value) -> String {
    value.to_string()
}

pub(super) fn region_name(region: Option<&Region>) -> &str {
    region.map_or(UNREGIONED, Region::as_str)
}

pub(super) struct SessionRow {
    pub(super) id: String,
    pub(super) lease_token: Option<String>,
    pub(super) lease_expires_at: Option<String>,
    pub(super) lease_inbound_id: Option<String>,
}

pub(super) fn session_row(row: &SqliteRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: row.try_get("id")?,
        lease_token: row.try_get("lease_token")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        lease_inbound_id: row.try_get("lease_inbound_id")?,
    })
}

pub(super) fn lease_live(row: &SessionRow, now: &str) -> bool {
    row.lease_token.is_some()
        && row
            .lease_expires_at
            .as_deref()
            .is_some_and(|until| until > now)
}

pub(super) fn session_from(row: &SqliteRow) -> Result<Session> {
    Ok(Session {
        id: SessionId(parse_uuid(&row.try_get::<String, _>("id")?)?),
        address: Address::new(row.try_get::<String, _>("phone_number")?),
        line: Line::new(row.try_get::<String, _>("line")?),
        persona: row.try_get("assigned_persona")?,
        first_contact_at: parse_ts(&row.try_get::<String, _>("first_contact_at")?)?,
        last_active_at: parse_ts(&row.try_get::<String, _>("last_active_at")?)?,
        total_messages: row.try_get("total_messages")?,
        metadata: parse_json(&row.try_get::<String, _>("metadata")?)?,
        opted_out: row.try_get::<Option<String>, _>("opted_out_at")?.is_some(),
        version: row.try_get("version")?,
    })
}

pub(super) fn memory_from(row: &SqliteRow) -> Result<Memory> {
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

pub(super) fn outbound_from(row: &SqliteRow) -> Result<OutboundMessage> {
    let status: String = row.try_get("status")?;
    Ok(OutboundMessage {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        session_id: SessionId(parse_uuid(&row.try_get::<String, _>("session_id")?)?),
        address: Address::new(row.try_get::<String, _>("phone_number")?),
        line: Line::new(row.try_get::<String, _>("line")?),
        body: row.try_get("body")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
        provider_id: row.try_get("provider_id")?,
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
    })
}

pub(super) fn event_from(row: &SqliteRow) -> Result<ScheduledEvent> {
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
