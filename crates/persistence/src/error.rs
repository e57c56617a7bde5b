//! The one error type of every store.

use crate::supabase::{RestError, TransportError};

/// What went wrong in a store operation.
///
/// [`StoreError::is_retryable`] separates the transient (the database is unreachable, busy or
/// chose this transaction as a deadlock victim: try the same operation again) from the permanent
/// (retrying the same input fails the same way).
///
/// The SQL stores report the database's errors as [`StoreError::Unavailable`] and
/// [`StoreError::Database`] (holding `sqlx`'s error); the REST store ([`crate::SupabaseStore`])
/// reports PostgREST's answers as [`StoreError::Rest`] and requests without an answer as
/// [`StoreError::RestUnavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, timed out, or was busy. The operation was applied
    /// as a whole or not at all; when the connection broke or timed out mid-call it is unknown
    /// which (repeating a turn's commit is safe: it is guarded by the lease; so is repeating a
    /// begin whose message carries its provider id).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database rejected the operation.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The turn's lease is no longer this worker's: it expired and another worker took the
    /// session over. The commit was not applied.
    #[error("the turn's lease was lost: another worker took the session over")]
    LeaseLost,
    /// An argument the store cannot accept.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A stored value or a database answer does not have the expected shape.
    #[error("unexpected data from the store: {0}")]
    Corrupt(String),
    /// Applying the schema failed.
    #[error("migration {version} failed: {source}")]
    Migration {
        /// The migration's version (its file name's timestamp).
        version: String,
        /// Why it failed.
        #[source]
        source: sqlx::Error,
    },
    /// The REST API answered with an error (a refusal, or a failure of the server or the
    /// database behind it). [`RestError::problem`] says what it means.
    #[error("REST API error: {source}")]
    Rest {
        /// Whether repeating the call is harmless (a read, or a write whose repetition leaves
        /// the same state). A 5xx leaves the outcome unknown, so it is retryable only then.
        idempotent: bool,
        /// PostgREST's answer.
        #[source]
        source: RestError,
    },
    /// A request to the REST API got no usable answer (no connection, a timeout, a body cut
    /// short). Its outcome is unknown: it may have been applied.
    #[error("REST API unavailable: {source}")]
    RestUnavailable {
        /// Whether repeating the call is harmless; only then is the error retryable.
        idempotent: bool,
        /// What failed.
        #[source]
        source: TransportError,
    },
}

impl StoreError {
    /// Whether the same operation may succeed if tried again. A REST call whose outcome is
    /// unknown (no answer, a 5xx, a serialization failure) is retryable only when it is
    /// idempotent.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Rest { idempotent, source } => *idempotent && source.is_transient(),
            StoreError::RestUnavailable { idempotent, .. } => *idempotent,
            _ => false,
        }
    }
}

impl StoreError {
    /// What kind of error this is, in words fit for a log line: unlike its `Display`, never a
    /// database's message, which may quote the values it refused.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store unavailable",
            StoreError::Database(_) => "database error",
            StoreError::LeaseLost => "lease lost to another worker",
            StoreError::Invalid(_) => "invalid input",
            StoreError::Corrupt(_) => "unexpected stored data",
            StoreError::Migration { .. } => "migration failed",
            StoreError::Rest { .. } => "REST API error",
            StoreError::RestUnavailable { .. } => "REST API unavailable",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Database(error)
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: serialization failure, deadlock, lock timeout, shutdown, connection
            // exceptions (class 08), too many connections. SQLite: BUSY and LOCKED (with their
            // extended codes).
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300"
            ) || code.starts_with("08")
                || matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517" | "773")
        }),
        _ => false,
    }
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
