//! Opening a store's file, and its schema.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::SqliteStore;
use crate::driver::{self, Result};

/// The schema, step by step: step `n` takes a file from `pragma user_version` `n` to `n + 1`. The
/// first creates it; a change to the schema is a step added here, so that a file made by an
/// earlier version is brought up to date when opened.
const SCHEMA_STEPS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_2_inspector_audit.sql"),
];

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> crate::Result<Self> {
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
            .await
            .map_err(driver::store_error)?;
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
