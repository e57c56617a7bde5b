//! `sqlx`, the driver of the PostgreSQL and SQLite stores, kept inside the crate: its errors
//! become [`StoreError`]s here, so that no public conversion or signature names it.

use std::future::Future;

use crate::error::DatabaseError;
use crate::{StoreError, StoreFuture};

/// The store's error for a driver error: [`StoreError::Unavailable`] (retryable) when the
/// database could not be reached or could not take the operation now, else
/// [`StoreError::Database`].
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        StoreError::Unavailable(DatabaseError::new(error))
    } else {
        StoreError::Database(DatabaseError::new(error))
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

/// The error of the code that drives `sqlx`: a [`StoreError`] that `?` also makes from a driver
/// error (through [`store_error`]).
#[derive(Debug)]
pub(crate) struct SqlError(StoreError);

/// The result of the code that drives `sqlx`.
pub(crate) type Result<T, E = SqlError> = std::result::Result<T, E>;

impl From<sqlx::Error> for SqlError {
    fn from(error: sqlx::Error) -> Self {
        SqlError(store_error(error))
    }
}

impl From<StoreError> for SqlError {
    fn from(error: StoreError) -> Self {
        SqlError(error)
    }
}

impl From<serde_json::Error> for SqlError {
    fn from(error: serde_json::Error) -> Self {
        SqlError(error.into())
    }
}

impl From<SqlError> for StoreError {
    fn from(error: SqlError) -> Self {
        error.0
    }
}

/// An operation written against `sqlx`, as [`crate::Store`] returns it.
pub(crate) fn operation<'a, T>(
    operation: impl Future<Output = Result<T>> + Send + 'a,
) -> StoreFuture<'a, T> {
    Box::pin(async move { operation.await.map_err(StoreError::from) })
}
