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
        name: "turn_functions",
        sql: include_str!("../../../migrations/20260101000200_turn_functions.sql"),
    },
    Migration {
        version: "20260102000000",
        name: "inline_sql_helpers",
        sql: include_str!("../../../migrations/20260102000000_inline_sql_helpers.sql"),
    },
    Migration {
        version: "20260102000100",
        name: "session_outbox",
        sql: include_str!("../../../migrations/20260102000100_session_outbox.sql"),
    },
    Migration {
        version: "20260102000200",
        name: "update_in_place",
        sql: include_str!("../../../migrations/20260102000200_update_in_place.sql"),
    },
    Migration {
        version: "20260102000300",
        name: "enqueue_turn",
        sql: include_str!("../../../migrations/20260102000300_enqueue_turn.sql"),
    },
    Migration {
        version: "20260102000400",
        name: "commit_updates_session_once",
        sql: include_str!("../../../migrations/20260102000400_commit_updates_session_once.sql"),
    },
    Migration {
        version: "20260102000500",
        name: "begin_locks_known_session_first",
        sql: include_str!("../../../migrations/20260102000500_begin_locks_known_session_first.sql"),
    },
    Migration {
        version: "20260102000600",
        name: "apply_changes_skips_empty_lists",
        sql: include_str!("../../../migrations/20260102000600_apply_changes_skips_empty_lists.sql"),
    },
    Migration {
        version: "20260102000700",
        name: "start_reads_less",
        sql: include_str!("../../../migrations/20260102000700_start_reads_less.sql"),
    },
    Migration {
        version: "20260102000800",
        name: "fewer_index_entries_per_turn",
        sql: include_str!("../../../migrations/20260102000800_fewer_index_entries_per_turn.sql"),
    },
    Migration {
        version: "20260102000900",
        name: "snapshot_compression_lz4",
        sql: include_str!("../../../migrations/20260102000900_snapshot_compression_lz4.sql"),
    },
    Migration {
        version: "20260102001000",
        name: "resume_does_not_wait_for_the_disk",
        sql: include_str!(
            "../../../migrations/20260102001000_resume_does_not_wait_for_the_disk.sql"
        ),
    },
    Migration {
        version: "20260102001100",
        name: "delivery_updates_do_not_wait_for_the_disk",
        sql: include_str!(
            "../../../migrations/20260102001100_delivery_updates_do_not_wait_for_the_disk.sql"
        ),
    },
    Migration {
        version: "20260102001200",
        name: "fewer_wal_records_per_turn",
        sql: include_str!("../../../migrations/20260102001200_fewer_wal_records_per_turn.sql"),
    },
    Migration {
        version: "20260102001300",
        name: "one_column_checks_as_domains",
        sql: include_str!("../../../migrations/20260102001300_one_column_checks_as_domains.sql"),
    },
    Migration {
        version: "20260102001400",
        name: "commit_reads_the_outbox",
        sql: include_str!("../../../migrations/20260102001400_commit_reads_the_outbox.sql"),
    },
    Migration {
        version: "20260102001500",
        name: "delivery_updates_together",
        sql: include_str!("../../../migrations/20260102001500_delivery_updates_together.sql"),
    },
    Migration {
        version: "20260102001600",
        name: "reply_claims",
        sql: include_str!("../../../migrations/20260102001600_reply_claims.sql"),
    },
    Migration {
        version: "20260102001700",
        name: "keywords_opt_with_begin",
        sql: include_str!("../../../migrations/20260102001700_keywords_opt_with_begin.sql"),
    },
    Migration {
        version: "20260102001800",
        name: "turn_attempts",
        sql: include_str!("../../../migrations/20260102001800_turn_attempts.sql"),
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
