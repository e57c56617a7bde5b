//! The SQL-connection transport: each call is one statement, `select public.soul_*($1)`, on
//! PostgreSQL connections the store keeps itself, so a turn's begin and commit are one round trip
//! each.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::Semaphore;

use super::{Call, SqlFunctionStore, Transport};
use crate::{Result, StoreError, driver, migrations};

/// How long one operation (connecting included) may take before it is given up on, unless
/// [`SqlFunctionStore::with_operation_timeout`] says otherwise: a server that accepts connections but no
/// longer answers must not hold a webhook past Twilio's 15 s, nor a turn for ever.
pub const DEFAULT_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections reserved for [`Store::enqueue_turn`](crate::Store::enqueue_turn), beyond the `max_connections` every other
/// operation shares: a webhook's acknowledgement waits for its insert, and must not queue behind
/// turns when they have taken every other connection.
pub const INTAKE_CONNECTIONS: usize = 4;

/// The store on PostgreSQL (including Supabase's database, through its connection string): the
/// SQL functions called over connections of its own ([`PgConnections`]).
pub type PgStore = SqlFunctionStore<PgConnections>;

/// [`PgStore`]'s transport: a small set of PostgreSQL connections.
///
/// It keeps its own connections rather than a `sqlx` pool: the pool pings every connection when
/// it is returned, an extra round trip per operation that would also delay the connection's next
/// use. A connection whose call failed on the wire, or was cancelled, is dropped instead of
/// reused, and so are the idle ones: they lead to the same server, which has most likely
/// restarted, so the next calls open fresh connections instead of failing in turn.
pub struct PgConnections {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    permits: Semaphore,
    intake_permits: Semaphore,
    operation_timeout: std::time::Duration,
}

impl fmt::Debug for PgConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The options hold the password.
        f.debug_struct("PgConnections")
            .field("available", &self.permits.available_permits())
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl SqlFunctionStore<PgConnections> {
    /// Connects to the PostgreSQL database at `url` (a connection string) with up to
    /// `max_connections` connections, and [`INTAKE_CONNECTIONS`] more for
    /// [`Store::enqueue_turn`](crate::Store::enqueue_turn). One connection is opened now, to fail
    /// early on a wrong address or password. Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(driver::store_error)?;
        let first = within(
            DEFAULT_OPERATION_TIMEOUT,
            PgConnection::connect_with(&options),
        )
        .await
        .map_err(driver::store_error)?;
        let max = usize::try_from(max_connections.max(1)).unwrap_or(1);
        Ok(SqlFunctionStore {
            transport: PgConnections {
                options,
                idle: Mutex::new(vec![first]),
                permits: Semaphore::new(max),
                intake_permits: Semaphore::new(INTAKE_CONNECTIONS),
                operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            },
        })
    }

    /// Gives up on an operation after `timeout` instead of [`DEFAULT_OPERATION_TIMEOUT`]. The
    /// error is [`StoreError::Unavailable`]: the operation was applied as a whole or not at all,
    /// and it is unknown which.
    #[must_use]
    pub fn with_operation_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.transport.operation_timeout = timeout;
        self
    }

    /// Applies the migrations the database does not have yet (see [`migrations`]): each in its
    /// own transaction, under an advisory lock that concurrent runners wait for.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = within(
            self.transport.operation_timeout,
            PgConnection::connect_with(&self.transport.options),
        )
        .await
        .map_err(driver::store_error)?;
        let result = migrations::apply(&mut conn).await;
        drop(conn.close().await);
        Ok(result?)
    }
}

impl PgConnections {
    fn take_idle(&self) -> Option<PgConnection> {
        self.idle.lock().map_or(None, |mut idle| idle.pop())
    }

    fn give_back(&self, conn: PgConnection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    fn forget_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

impl Transport for PgConnections {
    /// One statement, one round trip (once the connection has prepared it). An intake call takes
    /// a reserved intake connection or a shared one, whichever is free first: the reserve is a
    /// floor for the acknowledgements, not a ceiling.
    async fn call(&self, call: Call, request: Value) -> Result<Value> {
        let permit = if call.intake() {
            tokio::select! {
                biased;
                permit = self.intake_permits.acquire() => permit,
                permit = self.permits.acquire() => permit,
            }
        } else {
            self.permits.acquire().await
        };
        let _permit = permit.map_err(|_| StoreError::Invalid("the store is closed".to_owned()))?;
        // A timed-out call drops its connection with the future: its state is unknown.
        let answer = within(self.operation_timeout, async {
            let mut conn = match self.take_idle() {
                Some(conn) => conn,
                None => PgConnection::connect_with(&self.options).await?,
            };
            let answer = sqlx::query_scalar::<_, Option<Value>>(call.statement())
                .bind(request)
                .fetch_one(&mut conn)
                .await;
            if !breaks_connections(&answer) {
                // The server answered: the connection is in a known state and stays.
                self.give_back(conn);
            }
            answer
        })
        .await;
        if breaks_connections(&answer) {
            self.forget_idle();
        }
        match answer {
            Ok(answer) => Ok(answer.unwrap_or(Value::Null)),
            Err(error) => Err(driver::store_error(error)),
        }
    }
}

/// Whether `answer` says the connection is gone or unusable: no answer on the wire (or none in
/// time), or the server shutting down or dropping it (SQLSTATE classes 57P and 08).
fn breaks_connections<T>(answer: &Result<T, sqlx::Error>) -> bool {
    match answer {
        Ok(_) => false,
        Err(sqlx::Error::Database(error)) => error
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        Err(_) => true,
    }
}

/// `operation`, or an I/O time-out error once `timeout` has passed.
async fn within<T>(
    timeout: std::time::Duration,
    operation: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(timeout, operation)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("PostgreSQL did not answer within {timeout:?}"),
            )))
        })
}
