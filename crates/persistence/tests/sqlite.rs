//! The conformance suite on the embedded SQLite store: a new database file per test.

use std::sync::Arc;

use soul_persistence::conformance::Harness;
use soul_persistence::{Address, Inspect, SqliteStore, Store, StoreFuture};
use sqlx::{Connection, SqliteConnection};

struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl Harness for SqliteHarness {
    fn open(&self) -> StoreFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = SqliteStore::open(self.dir.path().join("souls.db")).await?;
            Ok(Arc::new(store) as Arc<dyn Store>)
        })
    }

    fn open_inspect(&self) -> StoreFuture<'_, Arc<dyn Inspect>> {
        Box::pin(async move {
            let store = SqliteStore::open(self.dir.path().join("souls.db")).await?;
            Ok(Arc::new(store) as Arc<dyn Inspect>)
        })
    }

    fn overwrite_snapshot<'a>(
        &'a self,
        address: &'a Address,
        json: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let url = format!("sqlite://{}", self.dir.path().join("souls.db").display());
            let mut conn = SqliteConnection::connect(&url).await.expect("connect");
            sqlx::query(
                "update working_memory_snapshots set snapshot = ?1
                   where session_id = (select id from user_sessions where phone_number = ?2)",
            )
            .bind(json)
            .bind(address.as_str())
            .execute(&mut conn)
            .await
            .expect("overwrite the snapshot");
            drop(conn.close().await);
            Ok(())
        })
    }
}

async fn harness() -> SqliteHarness {
    SqliteHarness {
        dir: tempfile::tempdir().expect("temporary directory"),
    }
}

soul_persistence::conformance_suite!(harness());

#[tokio::test]
async fn reopening_keeps_data_and_schema() {
    use chrono::Utc;
    use soul_persistence::{Inbound, Processes, TurnSettings};
    let harness = harness().await;
    let from = Address::new("+15550000001");
    {
        let store = harness.open().await.expect("open");
        let message = Inbound {
            from: from.clone(),
            line: Default::default(),
            persona: None,
            body: "hi".into(),
            external_id: None,
            received_at: Utc::now(),
            opt_out: None,
        };
        let settings = TurnSettings::new("aria", Processes::new("initial", ["initial"]));
        store
            .begin_turn(&message, &settings, Utc::now())
            .await
            .expect("begin");
    }
    let store = harness.open().await.expect("reopen");
    let session = store.session(&from).await.expect("session").expect("kept");
    assert_eq!(session.total_messages, 1);
}

/// A file made by another build (here: one with the first schema's version and no turn log on
/// its messages) is refused when opened, with the reason, and left as it was; before, it opened
/// and failed at its first turn.
#[tokio::test]
async fn a_file_from_another_build_is_refused_at_open_and_left_alone() {
    let harness = harness().await;
    let path = harness.dir.path().join("souls.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await.expect("create");
    sqlx::raw_sql(
        "create table user_sessions (id text primary key, phone_number text not null);
         pragma user_version = 1;",
    )
    .execute(&mut conn)
    .await
    .expect("an earlier build's file");
    conn.close().await.expect("close");

    let refused = SqliteStore::open(&path).await.expect_err("refused");
    assert!(
        matches!(
            refused,
            soul_persistence::StoreError::SchemaVersion {
                found: 1,
                expected: 3
            }
        ),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("another build"), "{refused}");

    let mut conn = SqliteConnection::connect(&url).await.expect("reopen");
    let version: i64 = sqlx::query_scalar("pragma user_version")
        .fetch_one(&mut conn)
        .await
        .expect("version");
    let tables: Vec<String> =
        sqlx::query_scalar("select name from sqlite_master where type = 'table'")
            .fetch_all(&mut conn)
            .await
            .expect("tables");
    assert_eq!((version, tables), (1, vec!["user_sessions".to_owned()]));
}
