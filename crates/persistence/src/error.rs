//! The one error type of every store, and what it carries from each way of reaching a database:
//! a SQL driver's error ([`DatabaseError`]) or a REST API's answer ([`RestError`],
//! [`TransportError`]). The stores build these; this module depends on none of them.

mod rest;

use std::error::Error as StdError;
use std::fmt;

pub use self::rest::{RestError, RestProblem, TransportError};

/// What went wrong in a store operation.
///
/// [`StoreError::is_retryable`] separates the transient (the database is unreachable, busy or
/// chose this transaction as a deadlock victim: try the same operation again) from the permanent
/// (retrying the same input fails the same way).
///
/// The stores that speak SQL to the database ([`crate::PgStore`], [`crate::SqliteStore`]) report
/// its errors as [`StoreError::Unavailable`] and [`StoreError::Database`]; the REST store
/// ([`crate::SupabaseStore`]) reports PostgREST's answers as [`StoreError::Rest`] and requests
/// without an answer as [`StoreError::RestUnavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, timed out, or was busy. The operation was applied
    /// as a whole or not at all; when the connection broke or timed out mid-call it is unknown
    /// which (repeating a turn's commit is safe: it is guarded by the lease; so is repeating a
    /// begin whose message carries its provider id).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DatabaseError),
    /// The database rejected the operation.
    #[error("database error: {0}")]
    Database(#[source] DatabaseError),
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
        source: DatabaseError,
    },
    /// The SQLite file's schema is not the one this build makes: the file was made by another
    /// build, which this one cannot bring up to date. Nothing in the file was changed.
    #[error(
        "the database file's schema is version {found}, this build's is {expected}: it was made \
         by another build of the gateway; open it with that build, or move the file away to \
         start a new one"
    )]
    SchemaVersion {
        /// The file's `pragma user_version`.
        found: i64,
        /// This build's.
        expected: i64,
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
            StoreError::SchemaVersion { .. } => "database file from another build",
            StoreError::Rest { .. } => "REST API error",
            StoreError::RestUnavailable { .. } => "REST API unavailable",
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

/// An error the SQL driver reported, kept opaque so that the driver is no part of this crate's
/// interface: it shows the driver's message, and its [`source`](StdError::source) is the
/// driver's own cause (an I/O error, say).
pub struct DatabaseError(Box<dyn StdError + Send + Sync>);

impl DatabaseError {
    pub(crate) fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        DatabaseError(Box::new(error))
    }
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for DatabaseError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
