//! Opening a store's file, and its schema.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::SqliteStore;
use crate::driver::{self, Result};

/// The schema of a new file. No release has made files yet, so it is the whole schema, changed in
/// place; the `pragma user_version` it sets ([`SCHEMA_VERSION`]) names its shape, and is raised
/// with each change, so that a file of another shape is refused when opened. Once a release has
/// made files, a change is a step from one version to the next, applied when such a file opens.
const SCHEMA: &str = include_str!("schema.sql");

/// The `pragma user_version` [`SCHEMA`] sets.
const SCHEMA_VERSION: i64 = 3;

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
        // A new file gets the schema. Any other version than this build's is refused before
        // anything is read or written: the tables would not be the ones this build queries, and
        // it would fail at the first turn instead of saying why.
        if version == 0 {
            sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        } else if version != SCHEMA_VERSION {
            return Err(crate::StoreError::SchemaVersion {
                found: version,
                expected: SCHEMA_VERSION,
            }
            .into());
        }
        tx.commit().await?;
        Ok(())
    }
}
