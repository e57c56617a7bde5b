//! The PostgreSQL schema: the files of `migrations/`, embedded, and a runner for databases that
//! are not managed by the Supabase CLI.
//!
//! Applied migrations are recorded where the Supabase CLI records them
//! (`supabase_migrations.schema_migrations`), so `supabase db push` and this runner
//! ([`PgStore`](crate::PgStore)'s `migrate`) agree on what a database already has.

use sqlx::PgConnection;

use crate::StoreError;
use crate::driver::Result;
use crate::error::DatabaseError;

/// One migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The timestamp part of the file name.
    pub version: &'static str,
    /// The rest of the file name, without `.sql`.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order. Keep in step with `migrations/` (a test checks).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "20260101000000",
        name: "roles",
        sql: include_str!("../../../migrations/20260101000000_roles.sql"),
    },
    Migration {
        version: "20260101000100",
        name: "schema",
        sql: include_str!("../../../migrations/20260101000100_schema.sql"),
    },
    Migration {
        version: "20260101000200",
        name: "functions",
        sql: include_str!("../../../migrations/20260101000200_functions.sql"),
    },
    Migration {
        version: "20260103000000",
        name: "pending_for_processes",
        sql: include_str!("../../../migrations/20260103000000_pending_for_processes.sql"),
    },
    Migration {
        version: "20260103000100",
        name: "data_requests",
        sql: include_str!("../../../migrations/20260103000100_data_requests.sql"),
    },
    Migration {
        version: "20260104000000",
        name: "lines",
        sql: include_str!("../../../migrations/20260104000000_lines.sql"),
    },
    Migration {
        version: "20260104000100",
        name: "turn_log",
        sql: include_str!("../../../migrations/20260104000100_turn_log.sql"),
    },
    Migration {
        version: "20260104000200",
        name: "inspector",
        sql: include_str!("../../../migrations/20260104000200_inspector.sql"),
    },
];

/// An arbitrary constant identifying this runner's advisory lock.
const LOCK_KEY: i64 = 0x5011_7ab1_e000_0001;

/// Applies the migrations `conn`'s database does not have yet, each in its own transaction.
/// Concurrent runners wait for each other (an advisory lock).
pub(crate) async fn apply(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("select pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let result = apply_locked(conn).await;
    let unlock = sqlx::query("select pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    result?;
    unlock?;
    Ok(())
}

async fn apply_locked(conn: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::raw_sql(
        "create schema if not exists supabase_migrations;
         create table if not exists supabase_migrations.schema_migrations (
           version text not null primary key, statements text[], name text);",
    )
    .execute(&mut *conn)
    .await?;
    let applied: Vec<String> =
        sqlx::query_scalar("select version from supabase_migrations.schema_migrations")
            .fetch_all(&mut *conn)
            .await?;
    for migration in MIGRATIONS {
        if applied.iter().any(|version| version == migration.version) {
            continue;
        }
        let failed = |source| StoreError::Migration {
            version: migration.version.to_owned(),
            source: DatabaseError::new(source),
        };
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(
            "insert into supabase_migrations.schema_migrations (version, name) values ($1, $2)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
    }
    Ok(())
}
